"""Compile once per architecture: a second model of the same architecture (other weights, other source classes)
reuses every compiled forward pass and kernel, and its inputs equal those of a direct, uncached computation."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from linfit import models
from linfit.extract import extract_inputs
from linfit.models.compiled import head_logits, penultimate_features
from linfit.ntk.empirical import empirical_ntk_fn
from linfit.scores.lgc import lgc_kernel
from linfit.timing import Stopwatch
from linfit.tree import path_str, split_params
from tests._ntk_models import brute_jacobians, leaf_columns

NEEDS = {"features", "ntk", "ntk_last_conv"}


@pytest.fixture(scope="module")
def two_models():
    """Two small CNNs of one architecture with different weights and head sizes (like two zoo sources)."""
    x = jax.random.uniform(jax.random.PRNGKey(1), (12, 8, 8, 1))
    pairs = []
    for seed, classes in ((0, 4), (1, 6)):
        model = models.create("small_cnn", num_classes=classes, width=4, depth=2)
        pairs.append((model, models.init(model, jax.random.PRNGKey(seed), x)))
    return pairs, x


def _feature_jacobian(model, variables, x, trained, heads=None) -> np.ndarray:
    """``[N, O, P]`` float64 brute-force Jacobian of the penultimate features (``O = D``), or of their projections
    ``phi @ heads`` (``O = k``), with respect to the params leaves whose path ``"a/b"`` satisfies ``trained``."""
    params = variables["params"]

    def f(p, z):
        phi = model.apply({**variables, "params": p}, z, method="features")
        return phi if heads is None else phi @ heads

    (jac,) = brute_jacobians(f, params, x)
    paths = [path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0] if trained(path_str(path))]
    assert paths
    return jac[:, :, leaf_columns(params, *paths)]


def _traced_kernel(jac: np.ndarray) -> np.ndarray:
    """``(1/O) sum_o <d out_o(x_i)/dθ, d out_o(x_j)/dθ>``: the NTK traced (averaged) over the O outputs."""
    return np.einsum("iop,jop->ij", jac, jac) / jac.shape[1]


def test_timing_splits_compilation_from_the_work():
    f = jax.jit(lambda a: jnp.sin(a) @ a.T)
    x = jnp.ones((5, 3))
    with Stopwatch() as first:
        f(x).block_until_ready()
    with Stopwatch() as second:
        f(x).block_until_ready()
    assert first.compilations >= 1 and 0 < first.compile_seconds <= first.wall_seconds
    assert second.compilations == 0 and second.compile_seconds == 0.0
    assert second.run_seconds == second.wall_seconds and first.cpu_seconds >= 0


def test_second_model_of_an_architecture_compiles_nothing(two_models):
    ((model_a, vars_a), (model_b, vars_b)), x = two_models
    extract_inputs(model_a, vars_a, x, NEEDS, head_samples=2)
    with Stopwatch() as watch:
        inputs_b, _ = extract_inputs(model_b, vars_b, x, NEEDS, head_samples=2)
    assert watch.compilations == 0, f"{watch.compilations} compilations for a second model of one architecture"
    assert inputs_b["ntk"].shape == (12, 12)
    # model b's own numbers, not model a's from the shared executables: a fresh jit of b alone (weights closed
    # over as constants) differs from the cached program (weights as arguments) by float32 round-off only
    direct_phi = np.asarray(jax.jit(lambda z: model_b.apply(vars_b, z, method="features"))(x), np.float64)
    np.testing.assert_allclose(inputs_b["features"], direct_phi, rtol=1e-5, atol=1e-6 * np.abs(direct_phi).max())
    assert not np.allclose(inputs_b["features"], penultimate_features(model_a, vars_a, x))
    # head_samples=2: the documented estimate, 2 Rademacher head rows ±1/sqrt(D) drawn from split(PRNGKey(seed))[1]
    # (seed=0), the feature NTK traced over phi @ rows, plus phi phi^T + 1 when the head is trained (lgc docstring)
    heads = jax.random.rademacher(jax.random.split(jax.random.PRNGKey(0))[1], (direct_phi.shape[1], 2),
                                  jnp.float32) / np.sqrt(direct_phi.shape[1])
    theta_all = _traced_kernel(_feature_jacobian(model_b, vars_b, x, lambda p: not p.startswith("head/"), heads))
    expected = theta_all + direct_phi @ direct_phi.T + 1.0
    # "ntk_last_conv": the last convolution's kernel only (conv2 of this depth-2 CNN), no head term
    expected_last = _traced_kernel(_feature_jacobian(model_b, vars_b, x, lambda p: p == "conv2/kernel", heads))
    # float32 Jacobian-vector products summed over ~1e2-1e3 parameters: round-off ~1e-6 of the largest entry
    np.testing.assert_allclose(inputs_b["ntk"], expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())
    np.testing.assert_allclose(inputs_b["ntk_last_conv"], expected_last, rtol=2e-5,
                               atol=2e-5 * np.abs(expected_last).max())


def test_cached_inputs_equal_a_direct_uncached_computation(two_models):
    """Each model's features, logits and fine-tuning NTK from the shared executables equal a fresh jit of that
    model alone (its weights closed over), so the cache never serves one model's numbers for another."""
    pairs, x = two_models
    for model, variables in pairs:
        direct_phi = jax.jit(lambda z: model.apply(variables, z, method="features"))(x)
        direct_logits = jax.jit(lambda z: model.apply(variables, z))(x)
        phi = penultimate_features(model, variables, x)
        scale = float(jnp.max(jnp.abs(direct_phi)))
        # float32 round-off: the direct program folds the weights as constants, the cached one takes arguments
        np.testing.assert_allclose(phi, direct_phi, rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(head_logits(model, variables, phi), direct_logits, rtol=1e-5,
                                   atol=1e-6 * float(jnp.max(jnp.abs(direct_logits))))
        # exact head average (head_samples=None): feature NTK traced over D outputs + head term phi phi^T + 1,
        # the traced kernel contracted from a brute-force jax.jacrev of the features w.r.t. the backbone
        theta_phi = _traced_kernel(_feature_jacobian(model, variables, x, lambda p: not p.startswith("head/")))
        expected = theta_phi + np.asarray(direct_phi, np.float64) @ np.asarray(direct_phi, np.float64).T + 1.0
        kernel = lgc_kernel(model, variables, x)
        np.testing.assert_allclose(kernel, expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())
        np.testing.assert_array_equal(lgc_kernel(model, variables, x, features=phi), kernel)
    assert not np.allclose(penultimate_features(*pairs[0], x), penultimate_features(*pairs[1], x))


def test_kernel_functions_of_one_apply_function_share_its_analyses():
    """The cost model, the layer discovery and the input checks trace ``f`` once per ``f`` and shapes: a second
    kernel function of the same ``f`` (another parameter subset) traces it only for its own kernel, and the
    kernels still equal brute-force Jacobian contractions."""
    model = models.create("small_cnn", num_classes=3, width=4, depth=2)
    x = jax.random.uniform(jax.random.PRNGKey(2), (6, 8, 8, 1))
    params = models.init(model, jax.random.PRNGKey(0), x)["params"]
    traces = []

    def f(p, z):
        traces.append(1)  # runs once per trace of f (and never inside a compiled call)
        return model.apply({"params": p}, z)

    def first_call_traces(params_filter):
        ntk_fn = empirical_ntk_fn(f, params_filter=params_filter)
        traces.clear()
        kernel = ntk_fn(x, None, params)
        return len(traces), np.asarray(kernel, np.float64)

    subsets = ("^head/", "^(?!head/)")
    (first, k_head), (second, k_body) = first_call_traces(subsets[0]), first_call_traces(subsets[1])
    assert second < first / 2, f"{second} traces of f for the second kernel function, {first} for the first"
    for kernel, subset in zip((k_head, k_body), subsets):
        selected, merge = split_params(params, subset)
        flat, unravel = jax.flatten_util.ravel_pytree(selected)
        jac = jax.vmap(lambda z: jax.jacrev(lambda v: f(merge(unravel(v)), z[None])[0])(flat))(x)  # [N, O, P]
        expected = np.einsum("iop,jop->ij", np.asarray(jac, np.float64), np.asarray(jac, np.float64)) / 3
        np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
