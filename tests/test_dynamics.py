"""Tests of linfit.dynamics against independent computations.

A linear model ``f(x; w) = Φ(x) w`` is its own linearization with NTK ``Θ = Φ Φᵀ``; its training is simulated
directly in weight space (``scipy.integrate.solve_ivp`` on the weights, explicit gradient-descent loops) and
compared with the closed forms, as are ``scipy.linalg.expm`` of the kernel and kernel (ridge) regression.
"""

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from linfit.dynamics import (
    LinearizedDynamics,
    gradient_descent_mse,
    kernel_eigh,
    linearized_loss_curve,
    spectral_factors,
)
from linfit.errors import ConfigError, KernelError, LabelError, LinfitError, NonFiniteError, ShapeError

N, M, P, O = 6, 4, 10, 3
TIMES = np.array([0.0, 0.05, 0.3, 1.5])


@pytest.fixture()
def problem():
    rng = np.random.default_rng(0)
    phi, phi_test = rng.normal(size=(N, P)) / np.sqrt(P), rng.normal(size=(M, P)) / np.sqrt(P)
    w0 = rng.normal(size=(P, O))
    y = rng.normal(size=(N, O))
    return phi, phi_test, w0, y


def flow_weights(phi, w0, y, lr, mu, times, mean_over=1.0):
    """Integrate ẇ = -η ∇[½ Σ‖Φw - y‖² / mean_over + ½ μ ‖w - w0‖²] on the weights; returns [T, P, O]."""
    shape = w0.shape

    def rhs(_, w):
        w = w.reshape(shape)
        return (-lr * (phi.T @ (phi @ w - y) / mean_over + mu * (w - w0))).ravel()

    sol = solve_ivp(rhs, (0.0, times[-1]), w0.ravel(), t_eval=times, rtol=1e-11, atol=1e-12, method="DOP853")
    return sol.y.T.reshape((len(times),) + shape)


@pytest.mark.parametrize("mu", [0.0, 0.4])
def test_flow_matches_weight_space_ode(problem, mu):
    phi, phi_test, w0, y = problem
    lr = 0.7
    ws = flow_weights(phi, w0, y, lr, mu, TIMES)
    dyn = LinearizedDynamics.from_kernel(phi @ phi.T, y, phi @ w0, learning_rate=lr, weight_decay=mu)
    np.testing.assert_allclose(dyn.train_predictions(TIMES), phi @ ws, atol=1e-8)
    test = dyn.test_predictions(TIMES, phi_test @ phi.T, phi_test @ w0)
    np.testing.assert_allclose(test, phi_test @ ws, atol=1e-8)
    expected_loss = 0.5 * np.sum((phi @ ws - y) ** 2, axis=(1, 2))
    np.testing.assert_allclose(dyn.train_loss(TIMES), expected_loss, rtol=1e-8)


def test_residual_is_matrix_exponential(problem):
    phi, _, w0, y = problem
    theta, r0, lr = phi @ phi.T, y - phi @ w0, 0.3
    dyn = LinearizedDynamics.from_kernel(theta, y, phi @ w0, learning_rate=lr)
    for t in TIMES:
        np.testing.assert_allclose(dyn.train_residuals(t), expm(-lr * theta * t) @ r0, atol=1e-12)
    # The paper's eq. (1) with the module's ½: L_t = ½ Σ_o r0ᵀ exp(-2ηΘt) r0, for every output column.
    expected = [0.5 * np.trace(r0.T @ expm(-2 * lr * theta * t) @ r0) for t in TIMES]
    np.testing.assert_allclose(linearized_loss_curve(theta, y, phi @ w0, TIMES, lr), expected, rtol=1e-10)


def test_infinite_time_is_kernel_regression(problem):
    phi, phi_test, w0, y = problem
    theta, k_test, r0 = phi @ phi.T, phi_test @ phi.T, y - phi @ w0
    dyn = LinearizedDynamics.from_kernel(theta, y, phi @ w0, learning_rate=0.5)
    np.testing.assert_allclose(dyn.train_predictions(np.inf), y, atol=1e-10)
    np.testing.assert_allclose(dyn.train_loss(np.inf), 0.0, atol=1e-20)
    expected = phi_test @ w0 + k_test @ np.linalg.solve(theta, r0)
    np.testing.assert_allclose(dyn.test_predictions(np.inf, k_test, phi_test @ w0), expected, atol=1e-9)
    far = dyn.test_predictions(1e7, k_test, phi_test @ w0)
    np.testing.assert_allclose(far, expected, atol=1e-7)


def test_weight_decay_infinite_time_is_kernel_ridge(problem):
    phi, phi_test, w0, y = problem
    theta, k_test, r0, mu = phi @ phi.T, phi_test @ phi.T, y - phi @ w0, 0.25
    dyn = LinearizedDynamics.from_kernel(theta, y, phi @ w0, learning_rate=2.0, weight_decay=mu)
    ridge = np.linalg.solve(theta + mu * np.eye(N), r0)
    np.testing.assert_allclose(dyn.test_predictions(np.inf, k_test, phi_test @ w0),
                               phi_test @ w0 + k_test @ ridge, atol=1e-10)
    np.testing.assert_allclose(dyn.train_residuals(np.inf), mu * ridge, atol=1e-10)
    # Same point as the closed-form minimiser of the penalised loss in weight space.
    w_star = w0 + np.linalg.solve(phi.T @ phi + mu * np.eye(P), phi.T @ r0)
    np.testing.assert_allclose(dyn.train_predictions(np.inf), phi @ w_star, atol=1e-10)


@pytest.mark.parametrize("lr,mu", [(0.3, 0.0), (0.3, 0.5), (0.9, 0.0)])
def test_discrete_gradient_descent_matches_explicit_loop(problem, lr, mu):
    phi, phi_test, w0, y = problem
    theta = phi @ phi.T
    if lr == 0.9:  # some eigenvalues with 1 < ηλ < 2: oscillating but convergent steps
        assert np.any(lr * np.linalg.eigvalsh(theta) > 1) and np.all(lr * np.linalg.eigvalsh(theta) < 2)
    steps = np.array([0, 1, 2, 7, 30])
    w, ws = w0.copy(), []
    for k in range(steps[-1] + 1):
        if k in steps:
            ws.append(w.copy())
        w = w - lr * (phi.T @ (phi @ w - y) + mu * (w - w0))
    ws = np.stack(ws)
    dyn = LinearizedDynamics.from_kernel(theta, y, phi @ w0, learning_rate=lr, weight_decay=mu, discrete=True)
    np.testing.assert_allclose(dyn.train_predictions(steps), phi @ ws, atol=1e-10)
    np.testing.assert_allclose(dyn.test_predictions(steps, phi_test @ phi.T, phi_test @ w0), phi_test @ ws,
                               atol=1e-10)
    np.testing.assert_allclose(dyn.train_loss(steps), 0.5 * np.sum((phi @ ws - y) ** 2, axis=(1, 2)),
                               rtol=1e-9)


def test_rank_deficient_kernel_matches_weight_space():
    """N > P: Θ is singular. Flow matches the weight ODE; t = ∞ gives the minimum-norm least-squares fit."""
    rng = np.random.default_rng(1)
    phi, phi_test = rng.normal(size=(8, 3)), rng.normal(size=(4, 3))
    w0, y = rng.normal(size=(3, 2)), rng.normal(size=(8, 2))
    theta = (phi @ phi.T).astype(np.float32)  # float32 round-off: null-space eigenvalues ~ ±1e-6
    eigh = kernel_eigh(theta)
    assert np.count_nonzero(eigh.evals) == 3 and np.all(eigh.evals >= 0)
    dyn = LinearizedDynamics.from_eigh(eigh, y, phi @ w0, learning_rate=0.2)
    k_test = phi_test @ phi.T
    ws = flow_weights(phi, w0, y, 0.2, 0.0, TIMES)
    np.testing.assert_allclose(dyn.train_predictions(TIMES), phi @ ws, atol=2e-5)
    np.testing.assert_allclose(dyn.test_predictions(TIMES, k_test, phi_test @ w0), phi_test @ ws, atol=2e-5)
    w_inf = w0 + np.linalg.pinv(phi) @ (y - phi @ w0)
    np.testing.assert_allclose(dyn.test_predictions(np.inf, k_test, phi_test @ w0), phi_test @ w_inf, atol=2e-5)
    np.testing.assert_allclose(dyn.train_predictions(np.inf), phi @ w_inf, atol=2e-5)
    assert dyn.train_loss(np.inf) > 0.1  # the residual outside the column space of Φ never decays


def test_float32_kernel_cast_to_float64_keeps_its_null_space_at_infinite_time():
    """linfit's kernels are float32 device computations that often arrive as float64 (``lgc_kernel``): their
    round-off eigenvalues (~1e-7 · λ_max) must still count as null space, or at t = ∞ they get gains 1/λ and
    the predictions blow up. Checked against the minimum-norm least-squares fit of the float64 features."""
    rng = np.random.default_rng(3)
    phi, phi_test = rng.normal(size=(60, 20)), rng.normal(size=(10, 20))
    r0 = rng.normal(size=(60, 1))
    f32 = phi.astype(np.float32)
    theta = (f32 @ f32.T).astype(np.float64)  # rank 20, computed in float32, handed over as float64
    k_test = (phi_test.astype(np.float32) @ f32.T).astype(np.float64)
    eigh = kernel_eigh(theta)
    assert np.count_nonzero(eigh.evals) == 20
    expected = phi_test @ np.linalg.pinv(phi) @ r0  # w_∞ − w0 = Φ⁺ r0
    got = LinearizedDynamics.from_eigh(eigh, r0, learning_rate=1.0).test_predictions(np.inf, k_test)
    # float32 features: relative error ~ κ(Φ)² · eps32 with κ(Φ) ≈ 4 here
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
    # the loss left at t = ∞ is the residual outside the column space of Φ, whatever dtype the kernel arrives in
    left = 0.5 * np.sum((r0 - phi @ np.linalg.pinv(phi) @ r0) ** 2)
    np.testing.assert_allclose(linearized_loss_curve(theta, r0, 0.0, np.inf), left, rtol=1e-4)


def test_small_eigenvalue_gain_is_stable():
    """The gain (1 - e^{-ηλt})/λ tends to η t as λ → 0; it is computed without cancellation for tiny λ."""
    lam = np.array([0.0, 1e-13, 1e-6, 1.0])
    dyn = LinearizedDynamics.from_eigh(kernel_eigh(np.diag(lam), rcond=0.0), np.ones((4, 1)),
                                       learning_rate=0.5)
    got = dyn.test_predictions(2.0, np.eye(4))[:, 0]  # k_test = I and r0 = 1: the gains themselves; η t = 1
    series = 1 - lam / 2 + lam**2 / 6 - lam**3 / 24  # (1 - e^{-λ})/λ, exact to 1e-25 for the small λ
    np.testing.assert_allclose(got, [1.0, series[1], series[2], 1 - np.exp(-1.0)], rtol=1e-14)


@pytest.mark.parametrize("mu", [0.0, 0.1])
def test_spectral_factors_match_scalar_dual_iteration(mu):
    """One eigendirection: the dual weight a (w - w0 = Jᵀ a) follows a_{k+1} = a_k + η (1 - (λ + μ) a_k) from 0,
    the residual is ρ = 1 - λ a; flow is the same ODE, integrated by solve_ivp. Unit initial residual."""
    lam, lr, steps = np.array([0.0, 0.3, 2.0, 7.0]), 0.25, 12  # η(λ + μ) up to 1.775: the last one oscillates
    a = np.zeros((steps + 1, lam.size))
    for k in range(steps):
        a[k + 1] = a[k] + lr * (1.0 - (lam + mu) * a[k])
    rho, gain = spectral_factors(lam, np.arange(steps + 1), lr, mu, discrete=True)
    np.testing.assert_allclose(gain, a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rho, 1.0 - lam * a, rtol=1e-12, atol=1e-15)
    times = np.array([0.0, 0.4, 3.0])
    ode = solve_ivp(lambda _, v: lr * (1.0 - (lam + mu) * v), (0.0, times[-1]), np.zeros(lam.size),
                    t_eval=times, rtol=1e-11, atol=1e-13).y.T
    rho, gain = spectral_factors(lam, times, lr, mu)
    np.testing.assert_allclose(gain, ode, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(rho, 1.0 - lam * ode, rtol=1e-8, atol=1e-11)
    rho, gain = spectral_factors(lam, np.inf, lr, mu)  # the fixed point a = 1/(λ + μ); 0 where λ + μ = 0
    expected = np.where(lam + mu > 0, 1.0 / np.where(lam + mu > 0, lam + mu, 1.0), 0.0)
    np.testing.assert_allclose(gain, expected, rtol=1e-15)
    np.testing.assert_allclose(rho, np.where(lam + mu > 0, mu * expected, 1.0), rtol=1e-15)


def test_time_axes_follow_t_shape(problem):
    phi, phi_test, w0, y = problem
    dyn = LinearizedDynamics.from_kernel(phi @ phi.T, y, phi @ w0)
    assert dyn.train_loss(0.5).shape == ()
    assert dyn.train_predictions(0.5).shape == (N, O)
    assert dyn.train_predictions(np.ones((2, 3))).shape == (2, 3, N, O)
    assert dyn.test_predictions(TIMES, phi_test @ phi.T, 0.0).shape == (4, M, O)


def test_accuracy_is_argmax_of_predictions(problem):
    phi, phi_test, w0, y = problem
    dyn = LinearizedDynamics.from_kernel(phi @ phi.T, y, phi @ w0, learning_rate=0.5)
    labels = np.array([0, 2, 1, 2])
    ws = flow_weights(phi, w0, y, 0.5, 0.0, TIMES)
    expected = np.mean(np.argmax(phi_test @ ws, axis=-1) == labels, axis=-1)
    np.testing.assert_allclose(dyn.test_accuracy(TIMES, phi_test @ phi.T, phi_test @ w0, labels), expected)
    binary = LinearizedDynamics.from_kernel(phi @ phi.T, np.sign(y[:, :1]), learning_rate=0.5)
    pred = phi_test @ phi.T @ np.linalg.solve(phi @ phi.T, np.sign(y[:, :1]))
    np.testing.assert_allclose(binary.test_accuracy(np.inf, phi_test @ phi.T, 0.0, np.array([1, 0, 0, 1])),
                               np.mean((pred[:, 0] > 0) == np.array([1, 0, 0, 1])))


# ---- neural-tangents semantics -------------------------------------------------------------------------


@pytest.mark.parametrize("diag_reg,absolute", [(0.0, False), (0.1, False), (0.05, True)])
def test_gradient_descent_mse_formula(problem, diag_reg, absolute):
    """NT: loss ½ mean over y.size, so r_t = exp(-η K_reg t / (N·O)) r0; test via K* K_reg⁻¹ (I - e) r0."""
    phi, phi_test, w0, y = problem
    theta, k_test, f0, f0_test, lr = phi @ phi.T, phi_test @ phi.T, phi @ w0, phi_test @ w0, 2.0
    reg = diag_reg * (1.0 if absolute else np.mean(np.diag(theta)))
    k_reg = theta + reg * np.eye(N)
    predict = gradient_descent_mse(theta, y, lr, diag_reg, absolute)
    times = np.array([0.0, 3.0, 40.0])
    train, test = predict(times, f0, f0_test, k_test)
    for i, t in enumerate(times):
        decay = expm(-lr * k_reg * t / y.size)
        np.testing.assert_allclose(train[i], y - decay @ (y - f0), atol=1e-12)
        expected = f0_test + k_test @ np.linalg.solve(k_reg, (np.eye(N) - decay) @ (y - f0))
        np.testing.assert_allclose(test[i], expected, atol=1e-10)
    train_inf, test_inf = predict(None, f0, f0_test, k_test)
    np.testing.assert_allclose(train_inf, y, atol=1e-10)
    np.testing.assert_allclose(test_inf, f0_test + k_test @ np.linalg.solve(k_reg, y - f0), atol=1e-10)
    # fx_train_0=None: train outputs are taken as 0 and not returned (as in neural-tangents)
    np.testing.assert_allclose(predict(None, None, f0_test, k_test), f0_test + k_test @ np.linalg.solve(k_reg, y),
                               atol=1e-10)
    np.testing.assert_allclose(predict(3.0, f0), train[1])


def test_gradient_descent_mse_time_is_sum_loss_time_over_size(problem):
    phi, _, w0, y = problem
    dyn = LinearizedDynamics.from_kernel(phi @ phi.T, y, phi @ w0, learning_rate=1.0)
    predict = gradient_descent_mse(phi @ phi.T, y, learning_rate=1.0)
    times = np.array([1.0, 10.0, 100.0])
    np.testing.assert_allclose(predict(times, phi @ w0), dyn.train_predictions(times / y.size), atol=1e-12)
    # and against the weight ODE of the mean loss ½ Σ‖Φw - y‖² / (N·O)
    ws = flow_weights(phi, w0, y, 1.0, 0.0, np.concatenate([[0.0], times]), mean_over=y.size)
    np.testing.assert_allclose(predict(times, phi @ w0), phi @ ws[1:], atol=1e-8)


def test_gradient_descent_mse_untraced_kernel():
    """trace_axes=(): a full [N, N, O, O] kernel from a multi-output linear model f(x)_o = J[x, o] · w."""
    rng = np.random.default_rng(2)
    n, m, p, o = 5, 3, 12, 2
    jac, jac_test = rng.normal(size=(n, o, p)), rng.normal(size=(m, o, p))
    w0, y = rng.normal(size=p), rng.normal(size=(n, o))
    k = np.einsum("aop,bqp->aboq", jac, jac)
    k_test = np.einsum("aop,bqp->aboq", jac_test, jac)
    lr, times = 1.5, np.array([0.5, 4.0])
    predict = gradient_descent_mse(k, y, lr, trace_axes=())
    train, test = predict(times, jac @ w0, jac_test @ w0, k_test)

    def rhs(_, w):
        return -lr * np.einsum("nop,no->p", jac, jac @ w - y) / y.size

    sol = solve_ivp(rhs, (0.0, times[-1]), w0, t_eval=times, rtol=1e-11, atol=1e-12, method="DOP853")
    ws = sol.y.T
    np.testing.assert_allclose(train, np.einsum("nop,tp->tno", jac, ws), atol=1e-8)
    np.testing.assert_allclose(test, np.einsum("nop,tp->tno", jac_test, ws), atol=1e-8)
    # A block-diagonal kernel K ⊗ I is the same as the traced K.
    theta = rng.normal(size=(n, 7)) @ rng.normal(size=(7, n))
    theta = theta @ theta.T
    block = np.einsum("ab,op->abop", theta, np.eye(o))
    traced = gradient_descent_mse(theta, y)(times, 0.3)
    np.testing.assert_allclose(gradient_descent_mse(block, y, trace_axes=())(times, 0.3), traced, atol=1e-12)


# ---- input validation -----------------------------------------------------------------------------------


def test_errors(problem):
    phi, _, w0, y = problem
    theta = phi @ phi.T
    with pytest.raises(ShapeError, match="square"):
        kernel_eigh(theta[:, :3])
    with pytest.raises(ShapeError, match="rows"):
        LinearizedDynamics.from_kernel(theta, y[:4])
    with pytest.raises(ShapeError, match="f0_train"):
        LinearizedDynamics.from_kernel(theta, y, np.zeros((N, O + 1)))
    bad = theta.copy()
    bad[0, 1] = np.nan
    with pytest.raises(NonFiniteError):
        LinearizedDynamics.from_kernel(bad, y)
    dyn = LinearizedDynamics.from_kernel(theta, y)
    with pytest.raises(ConfigError, match=">= 0"):
        dyn.train_loss(-1.0)
    with pytest.raises(ShapeError, match="k_test_train"):
        dyn.test_predictions(1.0, np.zeros((3, N + 1)))
    with pytest.raises(LabelError):
        dyn.test_accuracy(1.0, np.zeros((3, N)), 0.0, np.array([0, 1, 5]))
    steps = LinearizedDynamics.from_kernel(theta, y, discrete=True)
    with pytest.raises(ConfigError, match="integers"):
        steps.train_loss(1.5)
    predict = gradient_descent_mse(theta, y)
    with pytest.raises(LinfitError, match="k_test_train"):
        predict(1.0, 0.0, np.zeros((2, O)))
    with pytest.raises(LinfitError, match="nothing"):
        predict(1.0, None)
    with pytest.raises(LinfitError, match="trace_axes"):
        gradient_descent_mse(theta, y, trace_axes=(0,))
    with pytest.raises(ConfigError, match="learning_rate must be finite and >= 0; got -1"):  # at construction,
        gradient_descent_mse(theta, y, learning_rate=-1.0)  # the value given (not the per-entry -1/(N·O))
    with pytest.raises(ShapeError, match=r"\[6, 6, 3, 3\]"):
        gradient_descent_mse(theta, y, trace_axes=())


# ---- kernels that are not NTKs, untraced kernels in the loss curve ----------------------------------------


def test_negated_kernel_is_rejected_not_clipped(problem):
    # -Θ has every eigenvalue <= 0: clipping them all to 0 used to give a constant loss curve.
    phi, _, _, y = problem
    theta = phi @ phi.T
    with pytest.raises(KernelError, match="not positive semi-definite"):
        LinearizedDynamics.from_kernel(-theta, y)
    with pytest.raises(KernelError):
        linearized_loss_curve(-theta, y, 0.0, TIMES)
    with pytest.raises(KernelError):
        gradient_descent_mse(-theta, y)
    # one eigenvalue at -1e-3 of the largest: beyond sqrt(eps32) = 3.5e-4, so rejected
    lam, vecs = np.linalg.eigh(theta)
    indefinite = (vecs * np.concatenate([[-1e-3 * lam[-1]], lam[1:]])) @ vecs.T
    with pytest.raises(KernelError):
        kernel_eigh(indefinite)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_off_negative_eigenvalues_are_accepted(dtype):
    # A float32 Gram of a rank-deficient Jacobian (N = 200 > rank 20): its null eigenvalues come out of the
    # float32 product as about ±1e-8 · λ_max, which is round-off, not a sign of a non-NTK; the same kernel
    # cast to float64 (as linfit's device kernels arrive) is accepted too.
    rng = np.random.default_rng(5)
    jac = (rng.normal(size=(200, 20)) + 3.0 * rng.normal(size=(1, 20))).astype(np.float32)
    kernel = (jac @ jac.T).astype(dtype)
    lam = np.linalg.eigvalsh(kernel.astype(np.float64))
    assert lam[0] < 0  # the case being tested: round-off negatives exist
    assert np.all(kernel_eigh(kernel).evals >= 0)
    # Against the exact float64 Gram: L_t = ½ Σ_k e^{−2λ_k t} (u_kᵀ r0)², its null space keeping its energy. The
    # float32 product differs from it by E; to first order that moves the energy in the null space by at most
    # 2‖P0 r0‖·‖E‖₂·‖r0‖ / λ_20 (Davis–Kahan, λ_20 the smallest non-zero eigenvalue, ≈ 100 here), and the decaying
    # part by less at these times; twice that bound is the tolerance.
    jac64 = jac.astype(np.float64)
    lam64, vecs = np.linalg.eigh(jac64 @ jac64.T)
    r0 = np.ones(200)
    coeff = vecs.T @ r0
    expected = 0.5 * (np.exp(-2.0 * np.outer(TIMES, np.clip(lam64, 0.0, None))) * coeff**2).sum(axis=1)
    error = np.linalg.norm(kernel.astype(np.float64) - jac64 @ jac64.T, 2)
    bound = 2.0 * np.linalg.norm(coeff[:-20]) * error * np.linalg.norm(r0) / lam64[-20]
    got = linearized_loss_curve(kernel, r0[:, None], 0.0, TIMES)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2.0 * bound)


def test_loss_curve_accepts_untraced_kernel():
    """[N, N, O, O] from trace_axes=(): L_t = ½ r0ᵀ expm(-2ηΘt) r0 on the flattened kernel (row i·O + o)."""
    rng = np.random.default_rng(7)
    n, o, p = 5, 3, 9
    jac = rng.normal(size=(n, o, p)) / np.sqrt(p)
    k = np.einsum("aop,bqp->aboq", jac, jac)  # outputs coupled: not K ⊗ I
    y, f0 = rng.normal(size=(n, o)), rng.normal(size=(n, o))
    lr, times = 0.7, np.array([0.0, 0.2, 1.0, 6.0])
    flat = np.zeros((n * o, n * o))
    for i in range(n):
        for j in range(n):
            for a in range(o):
                for b in range(o):
                    flat[i * o + a, j * o + b] = k[i, j, a, b]
    r0 = (y - f0).reshape(-1)
    expected = [0.5 * r0 @ expm(-2.0 * lr * flat * t) @ r0 for t in times]
    np.testing.assert_allclose(linearized_loss_curve(k, y, f0, times, lr), expected, rtol=1e-10)
    with pytest.raises(ShapeError, match=r"\[5, 5, 3, 3\]"):
        linearized_loss_curve(k[:, :, :2, :2], y, f0, times)
