"""Lanczos dynamics against dense eigendecomposition and scipy's matrix exponential."""

import numpy as np
import pytest
from scipy.linalg import expm

from linfit import krylov
from linfit.errors import ConfigError, NonFiniteError, ShapeError


def _kernel(n, rank, seed=0):
    rng = np.random.default_rng(seed)
    j = rng.normal(size=(n, rank)) * np.logspace(0, -2, rank)
    return j @ j.T  # PSD, rank-deficient when rank < n, spread spectrum


@pytest.mark.parametrize("n,rank", [(40, 40), (60, 15)])
def test_train_loss_matches_expm(n, rank):
    theta = _kernel(n, rank)
    r0 = np.random.default_rng(1).normal(size=(n, 3))
    times = np.array([0.0, 0.3, 2.0, 50.0])
    eta = 0.7
    dense = np.array([0.5 * np.sum(r0 * (expm(-2 * eta * theta * t) @ r0)) for t in times])
    got = krylov.train_loss(lambda v: theta @ v, r0, times, learning_rate=eta, num_iters=n)
    np.testing.assert_allclose(got, dense, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("t", [0.1, 0.5, 5.0])
def test_suggested_iterations_are_enough_well_below_n(t):
    theta = _kernel(300, 300, seed=2)
    r0 = np.random.default_rng(3).normal(size=300)
    lam, vec = np.linalg.eigh(theta)
    dense = 0.5 * np.exp(-2 * t * lam) @ (vec.T @ r0) ** 2
    k = krylov.suggested_iterations(2 * t * lam.max())
    assert k < 300
    got = krylov.train_loss(lambda v: theta @ v, r0, [t], num_iters=k)
    np.testing.assert_allclose(got, [dense], rtol=1e-6)


@pytest.mark.parametrize("t", [0.0, 1.5, np.inf])
def test_predictions_match_dense_kernel_regression(t):
    n, m, eta = 30, 7, 0.5
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n + m, 12))
    full = x @ x.T  # rank 12 < n: singular train kernel
    theta, cross = full[:n, :n], full[n:, :n]
    r0, f0 = rng.normal(size=(n, 2)), rng.normal(size=(m, 2))
    lam, vec = np.linalg.eigh(theta)
    keep = lam > 1e-9 * lam.max()
    if np.isinf(t):
        phi = np.where(keep, 1 / np.where(keep, lam, 1), 0.0)
    else:
        phi = np.where(keep, -np.expm1(-eta * lam * t) / np.where(keep, lam, 1), eta * t)
    dense = f0 + cross @ (vec @ (phi[:, None] * (vec.T @ r0)))
    got = krylov.predict(lambda v: theta @ v, lambda v: cross @ v, r0, f0, t, learning_rate=eta, num_iters=n)
    np.testing.assert_allclose(got, dense, rtol=1e-6, atol=1e-8)


def test_matrix_function_and_zero_vector():
    a = _kernel(20, 20)
    v = np.arange(20.0)
    np.testing.assert_allclose(krylov.matrix_function(lambda x: a @ x, v, np.exp, num_iters=20), expm(a) @ v,
                               rtol=1e-8)
    assert krylov.quadratic_form(lambda x: a @ x, np.zeros(20), np.exp) == 0.0


def test_bad_inputs():
    a = np.eye(3)
    with pytest.raises(ShapeError):
        krylov.lanczos(lambda x: a @ x, np.ones((3, 1)), 2)
    with pytest.raises(NonFiniteError):
        krylov.lanczos(lambda x: a @ x, np.array([1.0, np.nan, 0.0]), 2)
    with pytest.raises(ShapeError):
        krylov.train_loss(lambda x: a @ x, np.ones((3, 1, 1)), [1.0])
    with pytest.raises(ConfigError, match=">= 0"):
        krylov.train_loss(lambda x: a @ x, np.ones(3), [1.0, np.nan])
    with pytest.raises(ConfigError, match=">= 0"):
        krylov.predict(lambda x: a @ x, lambda x: a @ x, np.ones(3), np.zeros(3), -1.0)
    for eta in (-0.1, np.nan, np.inf):  # was a growing, NaN or all-zero loss curve
        with pytest.raises(ConfigError, match="learning_rate"):
            krylov.train_loss(lambda x: a @ x, np.ones(3), [1.0], learning_rate=eta)
        with pytest.raises(ConfigError, match="learning_rate"):
            krylov.predict(lambda x: a @ x, lambda x: a @ x, np.ones(3), np.zeros(3), 1.0, learning_rate=eta)
    with pytest.raises(ConfigError, match="num_iters"):
        krylov.lanczos(lambda x: a @ x, np.ones(3), 0)
    with pytest.raises(NonFiniteError, match="Lanczos step 1"):  # was numpy's LinAlgError on the tridiagonal
        krylov.train_loss(lambda x: np.full(3, np.nan), np.ones(3), [1.0])
    with pytest.raises(ConfigError, match="finite"):
        krylov.suggested_iterations(np.inf)


def test_infinite_time_keeps_the_null_space_energy():
    """diag(0, 1, ..., 100) with r0 = 1: at t = ∞ only the null direction's ½·1² is left (its Ritz value is
    round-off, not a slowly decaying mode)."""
    a = np.diag(np.arange(101.0))
    got = krylov.train_loss(lambda x: a @ x, np.ones(101), [0.0, np.inf], num_iters=101)
    np.testing.assert_allclose(got, [50.5, 0.5], rtol=1e-9)


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_lanczos_breakdown_test_is_relative_to_the_kernel_scale(scale):
    """A kernel scaled by 1e-12 has the same dynamics at time t / 1e-12: Lanczos must not stop after one step
    because its β are small in absolute terms."""
    theta, r0 = _kernel(30, 30), np.random.default_rng(4).normal(size=30)
    times = np.array([0.1, 1.0, 5.0]) / scale
    want = 0.5 * np.array([r0 @ expm(-2.0 * t * scale * theta) @ r0 for t in times])
    got = krylov.train_loss(lambda v: scale * (theta @ v), r0, times, num_iters=30)
    np.testing.assert_allclose(got, want, rtol=1e-8)
