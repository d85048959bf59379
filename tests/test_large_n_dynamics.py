"""Matrix-free large-N path: traced NTK-vector product, Krylov loss curve, streamed kernel-label correlation."""

import jax.numpy as jnp
import numpy as np
import pytest

from linfit.dynamics import linearized_loss_curve
from linfit.errors import ShapeError
from linfit.ntk import empirical_ntk_fn, ntk_vp_fn
from linfit.ntk.large_n import (
    batched_apply,
    matrix_free_loss_curve,
    streamed_kernel_label_correlation,
    traced_ntk_vp_fn,
)
from tests._ntk_models import brute_full_ntk, make

N, N2, O = 13, 6, 3


@pytest.fixture(scope="module")
def mlp():
    f, params, x1, x2 = make("mlp", n1=N, n2=N2)
    return f, params, x1, x2, brute_full_ntk(f, params, x1, x1), brute_full_ntk(f, params, x1, x2)


def traced(full):
    return np.trace(full, axis1=2, axis2=3) / full.shape[-1]


@pytest.mark.parametrize("batch_size", [1, 4, 100])  # 13 = 3*4 + 1: ragged last chunk
def test_traced_product_matches_dense_kernel(mlp, batch_size):
    f, params, x1, x2, full, full12 = mlp
    v = np.random.default_rng(0).normal(size=N)
    got = traced_ntk_vp_fn(f, params, x1, batch_size=batch_size)(v)
    np.testing.assert_allclose(got, traced(full) @ v, rtol=1e-4, atol=1e-5 * np.abs(traced(full) @ v).max())
    w = np.random.default_rng(1).normal(size=N2)
    got12 = traced_ntk_vp_fn(f, params, x1, x2, batch_size=batch_size)(w)
    np.testing.assert_allclose(got12, traced(full12) @ w, rtol=1e-4, atol=1e-5 * np.abs(traced(full12) @ w).max())


def test_traced_product_is_not_the_broadcast_product(mlp):
    """Theta_tr v = mean_o [Theta (v e_o^T)][:, o]; broadcasting v to all outputs adds the o != o' blocks."""
    f, params, x1, _, full, _ = mlp
    v = np.random.default_rng(2).normal(size=N)
    untraced = ntk_vp_fn(f, params, x1)
    per_output = np.mean([np.asarray(untraced(v[:, None] * np.eye(O)[o]))[:, o] for o in range(O)], axis=0)
    broadcast = np.asarray(untraced(np.repeat(v[:, None], O, axis=1))).mean(axis=1)
    want = traced(full) @ v
    got = traced_ntk_vp_fn(f, params, x1)(v)
    np.testing.assert_allclose(per_output, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(got, per_output, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.abs(broadcast - want).max() > 1e-2 * np.abs(want).max()


def test_params_filter_restricts_the_kernel(mlp):
    f, params, x1, *_ = mlp
    head = "Dense_1"
    f_head = lambda h, x: f({**params, head: h}, x)
    sub = brute_full_ntk(f_head, params[head], x1, x1)
    v = np.linspace(-1, 1, N)
    got = traced_ntk_vp_fn(f, params, x1, params_filter=f"^{head}/", batch_size=5)(v)
    np.testing.assert_allclose(got, traced(sub) @ v, rtol=1e-4, atol=1e-5 * np.abs(traced(sub) @ v).max())


@pytest.mark.parametrize("lr", [1.0, 0.1])
def test_krylov_loss_matches_eigendecomposition(mlp, lr):
    f, params, x1, _, full, _ = mlp
    y = np.eye(O)[np.arange(N) % O]
    times = np.array([0.0, 0.5, 5.0, 50.0, np.inf])
    f0 = np.asarray(f(params, x1), np.float64)
    # the dense reference, written out: ½ Σ_o r0_oᵀ V exp(-2 η Λ t) Vᵀ r0_o with the brute-force traced kernel
    lam, vec = np.linalg.eigh(traced(full))
    proj = vec.T @ (y - f0)
    with np.errstate(invalid="ignore"):
        decay = np.where(lam > 1e-9 * lam.max(), np.exp(-2 * lr * np.outer(times, np.maximum(lam, 0))), 1.0)
    want = 0.5 * decay @ np.sum(proj**2, axis=1)
    got = matrix_free_loss_curve(f, params, x1, y, times, learning_rate=lr, num_iters=N, batch_size=4)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * want[0])
    np.testing.assert_allclose(got, linearized_loss_curve(traced(full), y, f0, times, lr), rtol=2e-4,
                               atol=1e-6 * want[0])


def test_streamed_correlation_matches_dense_pearson(mlp):
    f, params, x1, _, full, _ = mlp
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 1, 2, 2, 0])
    k_y = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    want = np.corrcoef(traced(full).ravel(), k_y.ravel())[0, 1]
    for tile_size in (2, 5, None):
        got = streamed_kernel_label_correlation(empirical_ntk_fn(f), x1, labels, params, tile_size=tile_size)
        assert abs(got - want) < 1e-5


def test_batched_apply_matches_one_call(mlp):
    f, params, x1, *_ = mlp
    np.testing.assert_allclose(batched_apply(f, params, x1, 4), f(params, x1), rtol=1e-6, atol=1e-6)


def test_errors(mlp):
    f, params, x1, x2, *_ = mlp
    vp = traced_ntk_vp_fn(f, params, x1, x2)
    with pytest.raises(ShapeError, match=r"\[N2\]"):
        vp(np.ones(N))
    with pytest.raises(ShapeError, match="logits"):
        traced_ntk_vp_fn(lambda p, x: f(p, x)[..., None], params, x1)
    with pytest.raises(ShapeError, match="traced kernel"):
        streamed_kernel_label_correlation(empirical_ntk_fn(f, trace_axes=()), x1, np.arange(N) % 3, params)
    with pytest.raises(ShapeError, match="shaped like"):
        matrix_free_loss_curve(f, params, x1, jnp.ones((N, 2)), [1.0])
    with pytest.raises(ShapeError, match=r"\[N, 1\]"):  # was an IndexError from slicing the residual's columns
        matrix_free_loss_curve(lambda p, x: f(p, x)[:, 0], params, x1, jnp.ones(N), [1.0])
