"""LGC's fine-tuning NTK and the linearized-dynamics scores against brute-force computations."""

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.linalg import expm

from linfit import models
from linfit.errors import ConfigError, LabelError
from linfit.scores.lgc import lgc, lgc_kernel, rows_per_call
from linfit.scores.linearized import linearized_cv_accuracy, linearized_loss
from linfit.tree import path_str

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def small():
    model = models.create("small_cnn", num_classes=3, width=4, depth=2)
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1))
    variables = models.init(model, jax.random.PRNGKey(0), x)
    return model, variables, x


def _identity_head_jacobian(model, variables, x, leaf_regex=None) -> np.ndarray:
    """``[N, D, P]`` float64 Jacobian of the logits of a D-way head with W = I (the features plus the bias) w.r.t.
    every parameter, the columns of leaves outside ``leaf_regex`` zeroed."""
    dim = variables["params"]["head"]["kernel"].shape[0]
    model_d, vars_d = models.replace_head(model, variables, dim, jax.random.PRNGKey(0), init="zeros")
    vars_d["params"]["head"]["kernel"] = jnp.eye(dim)
    apply_fn, params = models.logits_fn(model_d, vars_d)
    flat, unravel = ravel_pytree(params)
    jac = jax.jit(jax.jacrev(lambda v: apply_fn(unravel(v), x)))(flat)  # [N, D, P]
    if leaf_regex is not None:
        keep = lambda path, leaf: jnp.full(leaf.shape, re.search(leaf_regex, path_str(path)) is not None)  # noqa: E731
        jac = jac * ravel_pytree(jax.tree_util.tree_map_with_path(keep, params))[0]
    return np.asarray(jac, np.float64)


def _traced(jac: np.ndarray) -> np.ndarray:
    """``[N, N]`` NTK averaged over the D outputs of a Jacobian ``jac [N, D, P]``."""
    return np.einsum("iop,jop->ij", jac, jac) / jac.shape[1]


def _brute_force_identity_head_kernel(model, variables, x, leaf_regex=None):
    """Traced NTK of the logits of a D-way head with W = I (then WᵀW/C = I/D exactly, the average over heads)."""
    return _traced(_identity_head_jacobian(model, variables, x, leaf_regex))


def test_all_parameter_kernel_is_the_head_averaged_fine_tuning_ntk(small):
    model, variables, x = small
    expected = _brute_force_identity_head_kernel(model, variables, x)
    got = lgc_kernel(model, variables, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_last_conv_kernel_matches_brute_force(small):
    model, variables, x = small
    last_conv = models.param_subsets(model, variables["params"])["last_conv"]
    expected = _brute_force_identity_head_kernel(model, variables, x, leaf_regex=last_conv)
    got = lgc_kernel(model, variables, x, params_filter=last_conv)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_head_only_kernel_is_the_feature_gram_plus_one(small):
    model, variables, x = small
    apply_features, params = models.features_fn(model, variables)
    phi = np.asarray(apply_features(params, x), dtype=np.float64)
    got = lgc_kernel(model, variables, x, params_filter="^head/")
    np.testing.assert_allclose(got, phi @ phi.T + 1.0, rtol=1e-5)


def test_rows_per_call_keeps_all_samples_jacobian_rows_in_half_the_budget():
    row = 4 * 200 * 80_000  # float32 Jacobian rows of N = 200 samples, P = 80 k parameters: one head row
    assert [rows_per_call(8, 200, 80_000, 2 * row * r) for r in (8, 3, 1)] == [8, 3, 1]
    assert rows_per_call(8, 200, 80_000, 2 * row * 3 - 1) == 2
    assert rows_per_call(8, 200, 80_000, 10**12) == 8 and rows_per_call(8, 200, 80_000, 1) == 1


@pytest.mark.parametrize("rows_fitting", [3, 2, 1])
def test_head_samples_kernel_is_the_traced_ntk_of_those_head_rows(small, monkeypatch, rows_fitting):
    """k = 3 random head rows, in one call, grouped 2 + 1 (weighted 2/3 and 1/3) or one call per row (as
    ``rows_per_call`` would give for smaller budgets): the traced NTK of phi(x) H [N, k] w.r.t. every backbone
    parameter, by one jacrev of the flat backbone."""
    lgc_module = importlib.import_module("linfit.scores.lgc")  # the package exports a function of that name
    monkeypatch.setattr(lgc_module, "rows_per_call", lambda *args: rows_fitting)
    model, variables, x = small
    key = jax.random.PRNGKey(7)
    dim = variables["params"]["head"]["kernel"].shape[0]
    heads = jax.random.rademacher(jax.random.split(key)[1], (dim, 3), jnp.result_type(float))  # lgc_kernel's draw
    heads = heads / jnp.sqrt(dim)
    body = {k: v for k, v in variables["params"].items() if k != "head"}
    flat, unravel = ravel_pytree(body)
    phi_h = lambda v: model.apply({**variables, "params": {**unravel(v), "head": variables["params"]["head"]}},  # noqa: E731
                                  x, method="features") @ heads
    jac = jax.jacrev(phi_h)(flat)  # [N, 3, P]
    expected = np.einsum("iop,jop->ij", jac, jac) / 3
    got = lgc_kernel(model, variables, x, params_filter="^(?!head/)", head_samples=3, key=key)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["small_cnn", "cifar_resnet8", "small_densenet"])
def test_rademacher_rows_give_the_exact_last_conv_kernel_at_any_k(name):
    """Each last-convolution filter feeds one feature through per-channel operations only (BatchNorm, ReLU, pooling),
    so the D x D matrix of feature-gradient products is diagonal and Rademacher rows (h_k² = 1/D) average it
    exactly: one row gives the brute-force head average. (Gaussian rows give a 20–40 % kernel error at k = 1.)"""
    narrow = {"small_cnn": {"width": 4, "depth": 2}, "cifar_resnet8": {"width": 4},
              "small_densenet": {"growth_rate": 4, "num_init_features": 8}}[name]
    model = models.create(name, num_classes=3, **narrow)
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1))
    variables = models.init(model, jax.random.PRNGKey(0), x)
    last_conv = models.param_subsets(model, variables["params"])["last_conv"]
    expected = _brute_force_identity_head_kernel(model, variables, x, leaf_regex=last_conv)
    for rows, seed in ((1, 0), (1, 1)):
        got = lgc_kernel(model, variables, x, params_filter=last_conv, head_samples=rows, key=jax.random.PRNGKey(seed))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("blocks", [1, 3])
def test_projected_kernel_is_the_brute_force_jacobian_times_the_documented_projection(small, blocks):
    """The paper's projected LGC (§3.2): the selected columns of the brute-force Jacobian (W = I head), in the
    parameters' leaf order, times R = normal(key, [P_sel, dim]) / sqrt(dim), then Σ_o g_io·g_jo / D; under a
    memory budget that holds a third of R, R's column blocks are drawn from fold_in(key, c)."""
    model, variables, x = small
    last_conv = models.param_subsets(model, variables["params"])["last_conv"]
    dim, key = 51, jax.random.PRNGKey(7)
    size = sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
               if re.search(last_conv, path_str(path)))
    budget = 4 * size * (dim // blocks)
    got = lgc_kernel(model, variables, x, params_filter=last_conv, projection_dim=dim, key=key,
                     memory_budget_bytes=budget)

    width = variables["params"]["head"]["kernel"].shape[0]
    model_d, vars_d = models.replace_head(model, variables, width, jax.random.PRNGKey(0), init="zeros")
    vars_d["params"]["head"]["kernel"] = jnp.eye(width)
    apply_fn, params = models.logits_fn(model_d, vars_d)
    flat, unravel = ravel_pytree(params)
    jac = np.asarray(jax.jacrev(lambda v: apply_fn(unravel(v), x))(flat), np.float64)  # [N, D, P]
    keep = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.full(leaf.shape, re.search(last_conv, path_str(path)) is not None), params)
    columns = np.flatnonzero(np.asarray(ravel_pytree(keep)[0]))
    assert columns.size == size
    if blocks == 1:
        projection = np.asarray(jax.random.normal(key, (size, dim)), np.float64) / np.sqrt(dim)
    else:
        projection = np.concatenate([np.asarray(jax.random.normal(jax.random.fold_in(key, c), (size, dim // blocks)),
                                                np.float64) for c in range(blocks)], axis=1) / np.sqrt(dim)
    g = jac[:, :, columns] @ projection  # [N, D, dim]
    expected = np.einsum("iod,jod->ij", g, g) / width
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def _monte_carlo_stddev(jac: np.ndarray, option: dict) -> np.ndarray:
    """``[N, N]`` standard deviation of each entry of lgc_kernel's estimate of Θ = Σ_o a_io·a_jo / D, from the
    Jacobian ``jac [N, D, P]`` (rows a_io) and the Gram blocks G[i, j, o, o'] = a_io·a_jo'.

    k Rademacher head rows h (h_d = ±1/√D): one row gives Σ_{d,e} h_d h_e G_ij[d, e], whose off-diagonal terms are
    uncorrelated with variance (G_ij[d, e] + G_ij[e, d])² / D² per pair d < e; the estimate averages k rows.
    A Gaussian projection R [P, m] with entries N(0, 1/m): Cov(aᵀRRᵀb, cᵀRRᵀd) = ((a·c)(b·d) + (a·d)(b·c)) / m,
    so Var = Σ_{o,o'} (G_ii[o, o'] G_jj[o, o'] + G_ij[o, o'] G_ji[o, o']) / (m D²)."""
    gram = np.einsum("iop,jqp->ijoq", jac, jac)
    d = jac.shape[1]
    if "head_samples" in option:
        pair = gram + gram.transpose(0, 1, 3, 2)
        off = ~np.eye(d, dtype=bool)
        return np.sqrt(0.5 * (pair[:, :, off] ** 2).sum(axis=-1) / d**2 / option["head_samples"])
    diag = np.einsum("iioq->ioq", gram)
    var = (np.einsum("ioq,joq->ij", diag, diag) + np.einsum("ijoq,jioq->ij", gram, gram)) / (
        option["projection_dim"] * d**2)
    return np.sqrt(var)


@pytest.mark.parametrize("option", [{"head_samples": 250}, {"projection_dim": 20000}])
def test_monte_carlo_variants_approximate_the_exact_kernel(small, option):
    """Random head rows over the whole backbone (where one row is not exact, unlike the last convolution) and a
    random projection of the last convolution's parameters, each within 6 standard deviations of its estimator
    (computed from the brute-force Jacobian; N² = 36 entries, so a false alarm has probability ~1e-7) plus float32
    round-off."""
    model, variables, x = small
    last_conv = models.param_subsets(model, variables["params"])["last_conv"]
    subset = "^(?!head/)" if "head_samples" in option else last_conv
    jac = _identity_head_jacobian(model, variables, x, leaf_regex=subset)
    exact = _traced(jac)
    approx = lgc_kernel(model, variables, x, params_filter=subset, key=jax.random.PRNGKey(3), **option)
    bound = 6 * _monte_carlo_stddev(jac, option) + 1e-5 * np.abs(exact).max()
    assert bound.max() < 0.05 * np.abs(exact).max()  # the check has power: a 5 % error anywhere fails it
    assert np.all(np.abs(approx - exact) <= bound), np.abs(approx - exact).max() / np.abs(exact).max()
    with pytest.raises(ConfigError, match="PRNG key"):
        lgc_kernel(model, variables, x, params_filter=last_conv, **option)
    (name,) = option
    for bad in (0, -2, 2.5, True):  # was a NameError (projection_dim=0) or a kernel from a meaningless count
        with pytest.raises(ConfigError, match=f"{name} must be a positive integer"):
            lgc_kernel(model, variables, x, params_filter=last_conv, key=jax.random.PRNGKey(3), **{name: bad})


def test_lgc_is_the_pearson_correlation_with_label_similarity():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    a = rng.normal(size=(8, 3)) + np.eye(3)[labels]
    kernel = a @ a.T
    same = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    assert lgc(kernel, labels) == pytest.approx(np.corrcoef(kernel.ravel(), same.ravel())[0, 1])


def _toy(seed=0, n_per_class=8, classes=3, noise=1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    phi = noise * rng.normal(size=(labels.size, 6)) + 2 * np.eye(6)[labels]
    return phi @ phi.T, labels


@pytest.mark.parametrize("tau", [0.05, 1.0, 20.0])
def test_linearized_loss_matches_matrix_exponential(tau):
    kernel, labels = _toy()
    y = np.eye(3)[labels]
    t = tau * labels.size / np.trace(kernel)
    expected = 0.5 * np.trace(y.T @ expm(-2 * t * kernel) @ y) / (0.5 * labels.size)
    assert linearized_loss(kernel, labels, tau=tau) == pytest.approx(-expected, rel=1e-8)


def test_linearized_cv_accuracy_matches_explicit_folds():
    kernel, labels = _toy(noise=2.0)
    tau, folds, seed = 5.0, 4, 1
    rng = np.random.default_rng(seed)
    fold = np.empty(labels.size, dtype=int)
    offset = 0
    for c in range(3):  # the documented stratified round-robin assignment
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (np.arange(members.size) + offset) % folds
        offset += members.size
    correct = 0
    for f in range(folds):
        tr, te = fold != f, fold == f
        k = kernel[np.ix_(tr, tr)]
        t = tau * tr.sum() / np.trace(k)
        coef = np.linalg.pinv(k) @ (np.eye(tr.sum()) - expm(-t * k)) @ np.eye(3)[labels[tr]]
        correct += np.sum(np.argmax(kernel[np.ix_(te, tr)] @ coef, axis=1) == labels[te])
    expected = correct / labels.size
    assert linearized_cv_accuracy(kernel, labels, tau=tau, folds=folds, seed=seed) == pytest.approx(expected)


def test_linearized_scores_rank_separable_above_noise():
    clean, labels = _toy(noise=0.1)
    noisy, _ = _toy(noise=5.0)
    assert linearized_loss(clean, labels) > linearized_loss(noisy, labels)
    assert linearized_cv_accuracy(clean, labels) == 1.0 > linearized_cv_accuracy(noisy, labels)


def test_linearized_bad_inputs():
    kernel, labels = _toy()
    with pytest.raises(ConfigError):
        linearized_loss(kernel, labels, tau=0.0)
    with pytest.raises(ConfigError):
        linearized_cv_accuracy(kernel, labels, folds=1)
    with pytest.raises(LabelError):
        linearized_cv_accuracy(kernel[:9, :9], np.array([0, 0, 0, 0, 0, 0, 0, 0, 1]))
