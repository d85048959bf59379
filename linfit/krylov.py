"""Matrix-free linearized dynamics for large N: Lanczos approximations of f(Θ) v from kernel-vector products.

For N in the tens of thousands the N×N NTK does not fit, but the kernel-vector product v ↦ Θ v does
(``linfit.ntk.ntk_vp_fn``: one VJP and one JVP). The closed-form linearized dynamics only ever need f(Θ) r for
smooth scalar functions f, which k steps of the Lanczos process approximate from k products:

    Θ Q_k ≈ Q_k T_k,   f(Θ) v ≈ ‖v‖ Q_k f(T_k) e_1,   vᵀ f(Θ) v ≈ ‖v‖² e_1ᵀ f(T_k) e_1   (Gauss quadrature),

with Q_k [N, k] orthonormal and T_k [k, k] tridiagonal (Golub & Meurant, "Matrices, Moments and Quadrature").
Both are exact once k reaches the number of distinct eigenvalues of Θ seen by v, and converge fast for the
smooth exponentials of gradient flow. Full re-orthogonalisation keeps Q_k orthonormal in floating point; memory
is O(N k).

The conventions are those of ``linfit.dynamics`` (loss ½ Σ_i ‖f(x_i) − y_i‖², gradient flow with learning rate η):
residual r_t = exp(−ηΘt) r_0 and loss L_t = ½ r_0ᵀ exp(−2ηΘt) r_0, one column of r per output, all sharing the
traced kernel Θ.

Example::

    >>> import numpy as np
    >>> a = np.diag([1.0, 2.0, 3.0]); v = np.ones(3)
    >>> round(quadratic_form(lambda x: a @ x, v, np.exp, num_iters=3), 8)   # e + e² + e³
    30.19287485
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from linfit.dynamics import _check_rates, spectral_factors
from linfit.errors import ConfigError, NonFiniteError, ShapeError

MatVec = Callable[[np.ndarray], np.ndarray]
_NULL_RCOND = float(np.finfo(np.float32).eps)
"""Ritz values at or below this times the largest are null space (``linfit.dynamics.kernel_eigh``)."""


def _spectrum(lam: np.ndarray, times) -> np.ndarray:
    """Ritz values ``[K]`` clipped at 0, per time ``[*T, K]``: at ``t = ∞`` the null space is set to exactly 0.

    At finite t the decay and gain are smooth in λ and the Ritz values are used as they are; at ``t = ∞`` the
    gain ``1/λ`` is not, and Ritz values ``<= _NULL_RCOND · max`` count as null space (never decayed, gain 0).
    """
    lam = np.maximum(lam, 0.0)
    null = np.isinf(np.asarray(times))[..., None] & (lam <= _NULL_RCOND * lam.max(initial=0.0))
    return np.where(null, 0.0, lam)


def suggested_iterations(tau_lambda_max: float, *, minimum: int = 16) -> int:
    """Lanczos steps that make exp(−τΘ) v accurate to about 1e-8 relative.

    For exp(−τA) with spectrum in [0, λ_max] the Lanczos error decays like exp(−k²/(5 τ λ_max)) once
    k ≥ sqrt(τ λ_max) (Hochbruck & Lubich 1997, Theorem 2), so k = 2·sqrt(5 τ λ_max) suffices for about 1e-8.
    For the loss at time t use τ = 2ηt; λ_max is cheap to bound (a few power iterations, or the trace of Θ).

    Args:
      tau_lambda_max: ``τ λ_max`` (negative values count as 0); minimum: the fewest steps returned.

    Returns:
      ``max(minimum, ceil(2 sqrt(5 τ λ_max)))``.

    Raises:
      ConfigError: a NaN or infinite ``tau_lambda_max``.
    """
    if not np.isfinite(tau_lambda_max):
        raise ConfigError(f"tau_lambda_max must be finite; got {tau_lambda_max}")
    return max(minimum, int(np.ceil(2.0 * np.sqrt(5.0 * max(tau_lambda_max, 0.0)))))


def lanczos(matvec: MatVec, v: np.ndarray, num_iters: int) -> tuple[np.ndarray, np.ndarray, float]:
    """k steps of Lanczos with full re-orthogonalisation, in float64.

    Args:
      matvec: ``x [N] -> A x [N]`` for a symmetric positive semi-definite A (e.g. an NTK).
      v: ``[N]`` start vector (not normalised).
      num_iters: k, the Krylov dimension (stops early when the space is exhausted).

    Returns:
      ``(Q [N, k'], T [k', k'], ‖v‖)`` float64 with k' ≤ k, Q orthonormal and T = Qᵀ A Q tridiagonal;
      ``k' = 0`` when ``v = 0``.

    Raises:
      ShapeError: ``v`` is not one-dimensional.
      ConfigError: ``num_iters < 1``.
      NonFiniteError: ``v``, or a product ``matvec`` returns, contains NaN or infinite values.
    """
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1:
        raise ShapeError(f"lanczos needs a vector [N]; got shape {v.shape}")
    if num_iters < 1:
        raise ConfigError(f"num_iters must be >= 1; got {num_iters}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm):
        raise NonFiniteError("the start vector contains NaN or infinite values")
    if norm == 0.0:
        return np.zeros((v.size, 0)), np.zeros((0, 0)), 0.0
    basis = [v / norm]
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(min(num_iters, v.size)):
        w = np.asarray(matvec(basis[-1]), dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(w)):
            raise NonFiniteError(f"the kernel-vector product returned NaN or infinite values at Lanczos step "
                                 f"{len(alphas) + 1}: check the model's outputs and parameters")
        alphas.append(float(basis[-1] @ w))
        q = np.stack(basis, axis=1)
        w = w - q @ (q.T @ w)  # full re-orthogonalisation (twice is enough, Parlett's "twice is enough")
        w = w - q @ (q.T @ w)
        beta = float(np.linalg.norm(w))
        if beta <= 1e-10 * max(max(map(abs, alphas)), max(betas, default=0.0)):  # relative: any kernel scale
            break
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    t = np.diag(alphas) + np.diag(betas[: k - 1], 1) + np.diag(betas[: k - 1], -1)
    return np.stack(basis[:k], axis=1), t, norm


def _apply_to_tridiagonal(t: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``f(T) e_1`` via the eigendecomposition of the small tridiagonal T, eigenvalues clipped at 0."""
    lam, vec = np.linalg.eigh(t)
    return vec @ (fn(np.maximum(lam, 0.0)) * vec[0])


def matrix_function(matvec: MatVec, v: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], *,
                    num_iters: int = 64) -> np.ndarray:
    """Approximate ``f(A) v [N]`` with ``num_iters`` Lanczos steps (``fn`` acts elementwise on eigenvalues).

    Returns:
      ``[N]`` float64 (zeros for ``v = 0``); Ritz values are clipped at 0 before ``fn``.

    Raises:
      ShapeError, NonFiniteError: ``v`` not ``[N]``, or not finite (:func:`lanczos`).
    """
    q, t, norm = lanczos(matvec, v, num_iters)
    if norm == 0.0:
        return np.zeros_like(np.asarray(v, dtype=np.float64))
    return norm * (q @ _apply_to_tridiagonal(t, fn))


def quadratic_form(matvec: MatVec, v: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], *,
                   num_iters: int = 64) -> float:
    """Approximate ``vᵀ f(A) v`` by Gauss quadrature on ``num_iters`` Lanczos steps.

    Returns:
      A Python ``float`` (0.0 for ``v = 0``); Ritz values are clipped at 0 before ``fn``.

    Raises:
      ShapeError, NonFiniteError: ``v`` not ``[N]``, or not finite (:func:`lanczos`).
    """
    _, t, norm = lanczos(matvec, v, num_iters)
    if norm == 0.0:
        return 0.0
    return float(norm**2 * _apply_to_tridiagonal(t, fn)[0])


def _columns(residual) -> np.ndarray:
    r = np.asarray(residual, dtype=np.float64)
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2:
        raise ShapeError(f"the residual must be [N] or [N, O]; got shape {r.shape}")
    return r


def train_loss(matvec: MatVec, residual0, times, *, learning_rate: float = 1.0, num_iters: int = 64) -> np.ndarray:
    """Linearized training loss ``L_t = ½ Σ_o r0_oᵀ exp(−2ηΘt) r0_o`` for every t, matrix-free.

    Args:
      matvec: ``x [N] -> Θ x [N]`` (traced NTK on the training inputs).
      residual0: ``[N, O]`` (or ``[N]``) initial residual Y − f0(X).
      times: ``[T]`` times (``η t`` is the integrated learning rate).
      learning_rate: η.
      num_iters: Lanczos steps per output column (one Krylov space serves every t); see
        ``suggested_iterations`` for the largest t.

    Returns:
      ``[T]`` losses, float64.

    Raises:
      ShapeError: ``residual0`` not ``[N]`` or ``[N, O]``.
      ConfigError: a negative or NaN time, or ``learning_rate`` negative or not finite.
      NonFiniteError: a column of ``residual0`` contains NaN or infinite values (:func:`lanczos`).

    Each Ritz value decays as in ``linfit.dynamics.spectral_factors``. At ``t = np.inf`` Ritz values at or below
    ``eps(float32) · λ_max`` count as Θ's null space (the rule of ``linfit.dynamics.kernel_eigh``) and the others
    as decayed, which gives the residual's energy in the null space (exact once the Krylov space holds every
    eigenvalue ``r0`` sees; with fewer steps, the small Ritz values are approximate and so is the loss at large
    t: ``suggested_iterations``).
    """
    r = _columns(residual0)
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    _check_rates(learning_rate=learning_rate)
    if not np.all(times >= 0):  # NaN fails the comparison too
        raise ConfigError(f"times must be >= 0 (np.inf allowed); got {times[~(times >= 0)][:3]}")
    losses = np.zeros(times.shape)
    for column in r.T:
        _, t, norm = lanczos(matvec, column, num_iters)
        if norm == 0.0:
            continue
        lam, vec = np.linalg.eigh(t)
        weights = norm**2 * vec[0] ** 2  # Gauss quadrature weights of the spectral measure of column
        residual, _ = spectral_factors(_spectrum(lam, times), times, learning_rate)
        losses += 0.5 * residual**2 @ weights
    return losses


def predict(matvec: MatVec, cross_matvec: MatVec, residual0, f0_test, t: float, *,
            learning_rate: float = 1.0, num_iters: int = 64) -> np.ndarray:
    """Linearized test outputs ``f_t(X*) = f0(X*) + Θ(X*, X) Θ⁻¹ (I − exp(−ηΘt)) r0`` matrix-free.

    ``Θ⁻¹ (I − e^{−ηΘt})`` is evaluated on the Ritz values as the gain of ``linfit.dynamics.spectral_factors``
    (−expm1(−ηλt)/λ, ηt at λ = 0; at ``t = ∞`` with the null-space rule of :func:`train_loss`), so a
    singular Θ needs no regularisation; ``t = np.inf`` gives kernel regression on the range of Θ.

    Args:
      matvec: ``x [N] -> Θ(X, X) x [N]``.
      cross_matvec: ``x [N] -> Θ(X*, X) x [M]``.
      residual0: ``[N, O]`` initial training residual.
      f0_test: ``[M, O]`` test outputs at w0.
      t: one time.

    Returns:
      ``[M, O]`` float64 predicted test outputs at time t.

    Raises:
      ShapeError: ``residual0`` not ``[N]`` or ``[N, O]``.
      ConfigError: ``t`` negative or NaN, or ``learning_rate`` negative or not finite.
      NonFiniteError: a column of ``residual0`` contains NaN or infinite values (:func:`lanczos`).
    """
    if not t >= 0:
        raise ConfigError(f"t must be >= 0 (np.inf allowed); got {t}")
    r = _columns(residual0)
    f0 = np.asarray(f0_test, dtype=np.float64).reshape(-1, r.shape[1])
    _check_rates(learning_rate=learning_rate)
    eta = float(learning_rate)

    def phi(lam: np.ndarray) -> np.ndarray:
        return spectral_factors(_spectrum(lam, t), t, eta)[1]

    out = f0.copy()
    for o in range(r.shape[1]):
        coefficients = matrix_function(matvec, r[:, o], phi, num_iters=num_iters)
        out[:, o] += np.asarray(cross_matvec(coefficients), dtype=np.float64).reshape(-1)
    return out
