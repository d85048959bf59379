"""Closed-form linearized fine-tuning: MSE gradient flow and gradient descent from one ``eigh``.

Deshpande et al. 2021 (arXiv 2102.00084), Proposition 1 / eq. (1), after Lee et al. 2019 ("Wide neural
networks of any depth evolve as linear models under gradient descent", arXiv 1902.06720).

Convention (one for the whole module, except :func:`gradient_descent_mse`, see below). The linearized
model is ``f_lin(x; w) = f0(x) + J(x) (w - w0)`` with traced NTK ``Θ = J Jᵀ`` (``[N, N]``, the same kernel
for every output column) and targets ``Y [N, O]``. It is trained on

    L(w) = ½ Σ_i ‖f_lin(x_i; w) - y_i‖²  +  ½ μ ‖w - w0‖²      (sum over samples and outputs, weight decay μ)

either by gradient flow ``ẇ = -η ∇L`` for a time ``t`` or by gradient descent ``w ← w - η ∇L`` for ``t``
steps. Writing ``r0 = Y - f0(X)`` and ``Θ = V diag(λ) Vᵀ``, the weights stay ``w - w0 = Jᵀ a_t`` with

    a_t = (Θ + μI)⁻¹ (I - D_t) r0,   D_t = exp(-η(Θ + μI) t)   (flow)   or   (I - η(Θ + μI))^t   (steps),

which gives, in the eigenbasis (one matrix product for a whole vector of times):

    train residual     r_t = Y - f_t(X)  = (μI + Θ D_t)(Θ + μI)⁻¹ r0        (μ = 0:  exp(-ηΘt) r0)
    test predictions   f_t(X*) = f0(X*) + Θ*  a_t                            (Θ* = Θ_test,train [M, N])
    train loss         L_t = ½ ‖r_t‖²  (the data term; μ = 0 and flow: ½ r0ᵀ exp(-2ηΘt) r0)

For μ = 0 and flow this is the paper's eq. (1) up to its factor ½ (the paper's constants are not consistent
between the main text and the appendix). With μ > 0 and t = ∞ it is kernel ridge regression:
``f_∞(X*) = f0(X*) + Θ* (Θ + μI)⁻¹ r0``. The gain ``(1 - e^{-η x t}) / x`` (``x = λ + μ``) is computed as
``-expm1(-η x t) / x`` and equals its limit ``η t`` (``η t`` steps for descent) where ``x = 0``.

:func:`gradient_descent_mse` reproduces ``neural_tangents.predict.gradient_descent_mse`` one to one. There
the loss is ``½ mean`` over the ``y_train.size = N·O`` entries, so its time ``t`` equals time
``t / y_train.size`` in the convention above (equivalently, learning rate ``η / y_train.size``).

Numerics. Everything is computed on the host in float64 numpy (kernels come from the device in float32, but an
eigendecomposition of an ill-conditioned kernel needs the extra precision, and N is at most a few thousand
here). Eigenvalues are clipped: negative ones (round-off of a positive semi-definite kernel) and positive
ones at or below ``rcond · λ_max`` (default ``rcond = eps`` of float32, or of the kernel's dtype if coarser: the
relative precision of a kernel computed on the device in float32, even when it arrives cast to float64;
numpy's ``matrix_rank`` tolerance ``N · eps`` would zero many genuine small eigenvalues of a float32 NTK, and
with them the slow part of the loss curve) are set to exactly 0. Those directions form the
kernel's null space: the residual there never decays, and at ``t = ∞`` (with μ = 0) they get gain 0, i.e. a
pseudo-inverse. That is the exact limit whenever ``Θ*`` comes from the same Jacobian as ``Θ`` (then
``Θ* v = 0`` for ``Θ v = 0``).

Cross-entropy has no closed form: :func:`linearized_ce_trajectory` runs gradient descent on the linearized model
under softmax cross-entropy as an iteration in function space on the same kernels (same convention, loss summed
over samples).

Example::

    dyn = LinearizedDynamics.from_kernel(ntk_train, y_onehot, f0_train, learning_rate=1e-3)
    times = np.logspace(0, 4, 50)
    loss = dyn.train_loss(times)                                   # [50]
    acc = dyn.test_accuracy(times, ntk_test_train, f0_test, labels_test)  # [50]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp, softmax

from linfit.errors import ConfigError, KernelError, LabelError, NonFiniteError, ShapeError

__all__ = [
    "KernelEigh",
    "kernel_eigh",
    "spectral_factors",
    "LinearizedDynamics",
    "linearized_loss_curve",
    "gradient_descent_mse",
    "CETrajectory",
    "linearized_ce_trajectory",
]


def _finite_array(x, name: str, ndim: int | None = None) -> np.ndarray:
    """``x`` as a float64 array, checking its rank and that it is finite."""
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.number):
        raise ShapeError(f"{name} must be numeric; got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(f"{name} must have {ndim} axes; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise NonFiniteError(f"{name} contains {bad} NaN or infinite values")
    return a.astype(np.float64)


def _check_rates(**rates) -> None:
    """``ConfigError`` unless every rate given (learning rate, weight decay) is finite and >= 0."""
    for name, value in rates.items():
        if not np.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be finite and >= 0; got {value}")


def _rows(x, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A scalar or ``[N, O]`` array broadcast to ``shape``, with a clear error if it does not fit."""
    a = _finite_array(x, name)
    if a.ndim != 0 and a.shape != shape:
        raise ShapeError(f"{name} must be a scalar or have shape {shape}; got shape {a.shape}")
    return np.broadcast_to(a, shape)


class KernelEigh(NamedTuple):
    """Eigendecomposition ``Θ = V diag(λ) Vᵀ`` of a train kernel, clipped (see the module docstring).

    Attributes:
      evals: ``[N]`` float64, ascending, ``>= 0``; exact zeros mark the null space.
      evecs: ``[N, N]`` float64, orthonormal columns.
    """

    evals: np.ndarray
    evecs: np.ndarray


def _kernel_eps(dtype) -> float:
    """The relative precision of a kernel of ``dtype``: eps of float32, or of ``dtype`` if coarser (linfit's
    kernels are float32 device computations even when they arrive as float64)."""
    dtype = dtype if np.issubdtype(dtype, np.floating) else np.float64
    return max(float(np.finfo(dtype).eps), float(np.finfo(np.float32).eps))


def kernel_eigh(kernel, rcond: float | None = None) -> KernelEigh:
    """One float64 ``eigh`` of a symmetric kernel ``[N, N]`` with tiny and negative eigenvalues set to 0.

    An NTK ``Θ = J Jᵀ`` is positive semi-definite; only round-off makes eigenvalues negative. Eigenvalues
    down to ``-√ε · max|λ|`` are accepted as round-off and clipped to 0, with ``ε`` the machine epsilon of the
    coarser of the kernel's dtype and float32 (so ``√ε ≈ 3.5e-4`` for float32 and float64 kernels alike):
    linfit's kernels are float32 device computations even when they arrive as float64 (``lgc_kernel``,
    ``linfit.ntk.kernel``), and their round-off negatives are far smaller (measured: ``-1.5e-8 · λ_max`` for float32
    Grams ``J Jᵀ`` of 50 to 1000 samples), so the margin is four orders of magnitude. A kernel with a more
    negative eigenvalue (e.g. ``-Θ``, or a test-train block passed as the train kernel) is not an NTK, and
    clipping its spectrum would silently return a wrong, typically constant, loss curve.

    Args:
      kernel: ``[N, N]`` symmetric positive semi-definite (up to round-off), any float dtype.
      rcond: eigenvalues ``<= rcond · λ_max`` become 0. Default ``ε`` as above (``eps(float32)`` for float32
        and float64 kernels alike: a float32 kernel cast to float64 keeps its float32 round-off, whose
        eigenvalues would otherwise get gains ``1/λ`` at ``t = ∞``); pass ``eps(float64)`` for a kernel
        computed in float64 throughout.

    Raises:
      ShapeError: the kernel is not square; NonFiniteError: it has NaN/inf; KernelError: it has an
      eigenvalue below ``-√ε · max|λ|``.
    """
    raw = np.asarray(kernel)
    k = _finite_array(raw, "kernel", ndim=2)
    if k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ShapeError(f"kernel must be square [N, N] with N >= 1; got shape {k.shape}")
    eps = _kernel_eps(raw.dtype)
    if rcond is None:
        rcond = eps
    symmetric = k + k.T  # one [N, N] temporary: the kernel may be a 10k x 10k memmap
    symmetric *= 0.5
    evals, evecs = np.linalg.eigh(symmetric)
    scale = max(abs(float(evals[0])), abs(float(evals[-1])))
    tolerance = np.sqrt(eps) * scale
    if evals[0] < -tolerance:
        raise KernelError(
            f"the kernel has eigenvalue {evals[0]:.3g} (largest {evals[-1]:.3g}), below the round-off "
            f"tolerance -{tolerance:.3g} = -sqrt(eps)·max|λ|: it is not positive semi-definite, so it is not an "
            "NTK. Pass the train-train kernel Θ = J Jᵀ itself (not its negative, a difference of kernels, or a "
            "test-train block)"
        )
    cutoff = rcond * max(float(evals[-1]), 0.0)
    return KernelEigh(np.where(evals > cutoff, evals, 0.0), evecs)


def spectral_factors(evals, t, learning_rate: float, weight_decay: float = 0.0,
                     discrete: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-eigenvalue factors ``(ρ, g)`` of linearized fine-tuning, each ``[*T, K]`` float64.

    With ``Θ = V diag(λ) Vᵀ`` the module's dynamics act on each eigendirection separately: the train residual
    is ``r_t = V (ρ ⊙ Vᵀ r0)`` and the dual weights ``a_t = (Θ + μI)⁻¹ (I - D_t) r0 = V (g ⊙ Vᵀ r0)``, with
    ``x = λ + μ``, ``d = exp(-η x t)`` (flow) or ``(1 - η x)^t`` (steps), ``ρ = (μ + λ d) / x`` and
    ``g = (1 - d) / x`` (Deshpande et al. 2021, eq. (1)). ``1 - d`` is computed
    without cancellation (``expm1``/``log1p``); where ``x = 0`` the limits are ``ρ = 1`` and ``g = η t``
    (``g = 0`` at ``t = ∞``: a pseudo-inverse). The matrix-free dynamics (``linfit.krylov``) use the same
    factors on Ritz values.

    Args:
      evals: ``[K]`` eigenvalues ``λ >= 0``, with the null space already set to exactly 0 (:func:`kernel_eigh`),
        or ``[*T, K]``, one spectrum per time.
      t: ``[*T]`` times ``>= 0`` (flow; ``np.inf`` allowed) or step counts (``discrete``), already validated.
      learning_rate: η; weight_decay: μ; discrete: gradient descent steps instead of gradient flow.

    Returns:
      ``(ρ, g)``, each ``[*T, K]`` float64.
    """
    lam = np.asarray(evals, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)[..., None]
    x = lam + weight_decay
    z = learning_rate * x
    if not discrete:
        with np.errstate(invalid="ignore"):  # 0 * inf where x = 0 and t = inf: the decay there is 1
            e = np.where(z > 0, -z * t, 0.0)
        d, one_minus_d = np.exp(e), -np.expm1(e)
    else:
        small = z < 1  # then (1 - z)^t = exp(t log1p(-z)) is computed stably
        e = t * np.log1p(-np.where(small, z, 0.0))
        with np.errstate(over="ignore"):  # |1 - z| > 1 diverges, as gradient descent itself does
            power = np.power(1.0 - z, t)
        d, one_minus_d = np.where(small, np.exp(e), power), np.where(small, -np.expm1(e), 1.0 - power)
    pos = x > 0
    xs = np.where(pos, x, 1.0)
    limit = np.where(np.isinf(t), 0.0, learning_rate * t)  # x = 0: η t; t = ∞: 0
    gain = np.where(pos, one_minus_d / xs, limit)
    residual = np.where(pos, (weight_decay + lam * d) / xs, 1.0)
    return residual, gain


@dataclasses.dataclass(frozen=True, eq=False)
class LinearizedDynamics:
    """Linearized fine-tuning under the module's convention, from one eigendecomposition of ``Θ``.

    Every method takes ``t``: a scalar or an array of times (gradient-flow time, or integer step counts
    when ``discrete``), ``np.inf`` allowed for flow; outputs get ``t``'s shape as leading axes ``[*T]``.

    Attributes:
      eigh: the clipped eigendecomposition of ``Θ_train [N, N]``.
      y_train: ``[N, O]`` targets.
      r0_eig: ``[N, O]`` the initial residual in the eigenbasis, ``Vᵀ (Y - f0(X))``.
      learning_rate: η.
      weight_decay: μ, the strength of the penalty ``½ μ ‖w - w0‖²`` (0 for none).
      discrete: ``False``: gradient flow for time t; ``True``: t steps of gradient descent with step η.
    """

    eigh: KernelEigh
    y_train: np.ndarray
    r0_eig: np.ndarray
    learning_rate: float = 1.0
    weight_decay: float = 0.0
    discrete: bool = False

    @classmethod
    def from_eigh(cls, eigh: KernelEigh, y_train, f0_train=0.0, *, learning_rate: float = 1.0,
                  weight_decay: float = 0.0, discrete: bool = False) -> "LinearizedDynamics":
        """Dynamics for targets ``y_train [N, O]`` and initial outputs ``f0_train`` (scalar or ``[N, O]``).

        ``eigh`` (from :func:`kernel_eigh`) is used as given; arrays are stored as float64.

        Raises:
          ShapeError: ``y_train`` not a numeric ``[N, O]`` with ``N`` the kernel's size, or ``f0_train`` neither a
            scalar nor ``[N, O]``.
          NonFiniteError: NaN/inf in ``y_train`` or ``f0_train``.
          ConfigError: ``learning_rate`` or ``weight_decay`` negative or not finite.
        """
        n = eigh.evecs.shape[0]
        y = _finite_array(y_train, "y_train", ndim=2)
        if y.shape[0] != n:
            raise ShapeError(f"y_train has N={y.shape[0]} rows but the kernel is [{n}, {n}]")
        f0 = _rows(f0_train, "f0_train", y.shape)
        _check_rates(learning_rate=learning_rate, weight_decay=weight_decay)
        return cls(eigh, y, eigh.evecs.T @ (y - f0), float(learning_rate), float(weight_decay),
                   bool(discrete))

    @classmethod
    def from_kernel(cls, k_train_train, y_train, f0_train=0.0, *, learning_rate: float = 1.0,
                    weight_decay: float = 0.0, discrete: bool = False,
                    rcond: float | None = None) -> "LinearizedDynamics":
        """Dynamics from a traced train kernel ``Θ [N, N]`` (see :func:`kernel_eigh` for ``rcond``).

        Raises:
          ShapeError: the kernel is not a numeric square ``[N, N]`` with ``N >= 1``, or as :meth:`from_eigh`.
          NonFiniteError: NaN/inf in the kernel, ``y_train`` or ``f0_train``.
          KernelError: the kernel is not positive semi-definite (:func:`kernel_eigh`).
          ConfigError: as :meth:`from_eigh`.
        """
        return cls.from_eigh(kernel_eigh(k_train_train, rcond), y_train, f0_train,
                             learning_rate=learning_rate, weight_decay=weight_decay, discrete=discrete)

    def _times(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        if np.any(np.isnan(t)) or np.any(t < 0):
            raise ConfigError(f"times must be >= 0 (np.inf allowed for gradient flow); got {t}")
        if self.discrete and (np.any(np.isinf(t)) or np.any(t != np.round(t))):
            raise ConfigError(f"with discrete=True, t counts gradient steps: finite integers; got {t}")
        return t

    def _factors(self, t) -> tuple[np.ndarray, np.ndarray]:
        """``(ρ, g)``, each ``[*T, N]``: residual ``r_t = V (ρ ⊙ r0_eig)`` and ``a_t = V (g ⊙ r0_eig)``."""
        return spectral_factors(self.eigh.evals, self._times(t), self.learning_rate, self.weight_decay,
                                self.discrete)

    def train_residuals(self, t) -> np.ndarray:
        """``Y - f_t(X_train)``, shape ``[*T, N, O]`` float64.

        Raises:
          ConfigError: a negative or NaN time, or with ``discrete`` an infinite or non-integer one.
        """
        residual, _ = self._factors(t)
        return np.einsum("in,...n,no->...io", self.eigh.evecs, residual, self.r0_eig)

    def train_predictions(self, t) -> np.ndarray:
        """``f_t(X_train)``, shape ``[*T, N, O]`` float64.

        Raises:
          ConfigError: a negative or NaN time, or with ``discrete`` an infinite or non-integer one.
        """
        return self.y_train - self.train_residuals(t)

    def train_loss(self, t) -> np.ndarray:
        """``L_t = ½ ‖Y - f_t(X_train)‖²`` (data term), shape ``[*T]`` float64: one ``[*T, N] @ [N]`` product.

        Raises:
          ConfigError: a negative or NaN time, or with ``discrete`` an infinite or non-integer one.
        """
        residual, _ = self._factors(t)
        return 0.5 * (residual**2) @ np.sum(self.r0_eig**2, axis=1)

    def test_predictions(self, t, k_test_train, f0_test=0.0) -> np.ndarray:
        """``f_t(X*) = f0(X*) + Θ* a_t``, shape ``[*T, M, O]`` float64.

        Args:
          k_test_train: ``Θ* [M, N]``, the traced kernel between test and train inputs.
          f0_test: ``[M, O]`` (or a scalar) outputs of the initial model on the test inputs.

        Raises:
          ShapeError: ``k_test_train`` not a numeric ``[M, N]``, or ``f0_test`` neither a scalar nor ``[M, O]``.
          NonFiniteError: NaN/inf in ``k_test_train`` or ``f0_test``.
          ConfigError: a negative or NaN time, or with ``discrete`` an infinite or non-integer one.
        """
        k = _finite_array(k_test_train, "k_test_train", ndim=2)
        n, n_out = self.r0_eig.shape
        if k.shape[1] != n:
            raise ShapeError(f"k_test_train must be [M, {n}] (N={n} training samples); got {k.shape}")
        f0 = _rows(f0_test, "f0_test", (k.shape[0], n_out))
        _, gain = self._factors(t)
        return f0 + np.einsum("mn,...n,no->...mo", k @ self.eigh.evecs, gain, self.r0_eig)

    def test_accuracy(self, t, k_test_train, f0_test, labels) -> np.ndarray:
        """Accuracy of :meth:`test_predictions` against integer ``labels [M]``, shape ``[*T]``.

        ``O >= 2`` (one-hot targets): the predicted class is the argmax over outputs, labels in
        ``0..O-1``. ``O = 1`` (targets ±1): the predicted class is ``f > 0``, labels in ``{0, 1}``.

        Raises:
          ShapeError: ``labels`` not ``[M]``, or as :meth:`test_predictions`.
          LabelError: ``labels`` not of an integer dtype, or outside ``0..O-1`` (``{0, 1}`` for ``O = 1``).
          NonFiniteError, ConfigError: as :meth:`test_predictions`.
        """
        pred = self.test_predictions(t, k_test_train, f0_test)
        y = np.asarray(labels)
        if y.shape != pred.shape[-2:-1]:
            raise ShapeError(f"labels must have shape [M]={pred.shape[-2:-1]}; got {y.shape}")
        n_classes = max(pred.shape[-1], 2)
        if not np.issubdtype(y.dtype, np.integer) or np.any(y < 0) or np.any(y >= n_classes):
            raise LabelError(f"labels must be integers in 0..{n_classes - 1}; got {np.unique(y)[:10]}")
        guess = (pred[..., 0] > 0).astype(int) if pred.shape[-1] == 1 else np.argmax(pred, axis=-1)
        return np.mean(guess == y, axis=-1)


def linearized_loss_curve(kernel, y, f0, times, learning_rate: float = 1.0,
                          weight_decay: float = 0.0) -> np.ndarray:
    """The paper's training loss ``L_t = ½ ‖Y - f_t(X)‖²`` under gradient flow at each time, ``[*T]``.

    With an untraced kernel (what ``empirical_ntk_fn(..., trace_axes=())`` returns) the outputs are coupled:
    the kernel is flattened to ``Θ [N·O, N·O]`` (row ``i·O + o`` is sample i, output o; neural-tangents'
    ``make_2d`` layout) and ``L_t = ½ r0ᵀ exp(-2ηΘt) r0`` with ``r0 = vec(Y - f0)`` (for μ = 0).

    Args:
      kernel: ``Θ [N, N]`` traced train NTK (the same kernel for every output), or ``[N, N, O, O]`` untraced.
      y: ``[N, O]`` targets; f0: ``[N, O]`` initial outputs (or scalar);
      times: scalar or ``[T]`` gradient-flow times (``np.inf`` allowed); learning_rate: η;
      weight_decay: μ (see :class:`LinearizedDynamics`).

    Returns:
      ``[*T]`` float64 losses.

    Raises:
      ShapeError: ``y`` not a numeric ``[N, O]``, the kernel neither ``[N, N]`` nor ``[N, N, O, O]`` for it, or
        ``f0`` neither a scalar nor ``[N, O]``.
      NonFiniteError: NaN/inf in ``kernel``, ``y`` or ``f0``.
      KernelError: the kernel is not positive semi-definite (:func:`kernel_eigh`).
      ConfigError: ``learning_rate`` or ``weight_decay`` negative or not finite, or a negative or NaN time.
    """
    y = _finite_array(y, "y", ndim=2)
    n, n_out = y.shape
    raw = np.asarray(kernel)
    traced = raw.ndim == 2
    k = _flatten_kernel(raw, n, n_out, traced, "kernel", rows=n)  # float64 from here on
    if not traced:
        f0 = np.reshape(_rows(f0, "f0", y.shape), (-1, 1))
        y = y.reshape(-1, 1)
    dyn = LinearizedDynamics.from_kernel(k, y, f0, learning_rate=learning_rate, weight_decay=weight_decay,
                                         rcond=_kernel_eps(raw.dtype))  # k is float64: the dtype given decides
    return dyn.train_loss(times)


def _canonical_traced(trace_axes) -> bool:
    """``True`` for ``trace_axes = (-1,)`` (kernel ``[N, N]``), ``False`` for ``()`` (``[N, N, O, O]``)."""
    axes = (trace_axes,) if isinstance(trace_axes, int) else tuple(trace_axes)
    if axes in ((-1,), (1,)):
        return True
    if axes == ():
        return False
    raise ConfigError(f"trace_axes must be (-1,) or () for targets [N, O]; got {trace_axes}")


def _flatten_kernel(k, n: int, n_out: int, traced: bool, name: str, rows: int | None = None) -> np.ndarray:
    """``[R, N]`` traced kernel, or ``[R, N, O, O] -> [R·O, N·O]`` (neural-tangents' ``make_2d`` layout).

    ``rows`` is the expected R (``None``: any).
    """
    a = _finite_array(k, name)
    tail = (n,) if traced else (n, n_out, n_out)
    r = a.shape[0] if rows is None and a.ndim == len(tail) + 1 else rows
    if a.shape != (r,) + tail:
        rows_txt = "M" if rows is None else str(rows)
        raise ShapeError(f"{name} must have shape [{rows_txt}, {', '.join(map(str, tail))}] "
                         f"(trace_axes={'(-1,)' if traced else '()'}); got {a.shape}")
    if traced:
        return a
    return a.transpose(0, 2, 1, 3).reshape(r * n_out, n * n_out)


def gradient_descent_mse(k_train_train, y_train, learning_rate: float = 1.0, diag_reg: float = 0.0,
                         diag_reg_absolute_scale: bool = False, trace_axes=(-1,),
                         rcond: float | None = None) -> Callable:
    """Closed-form MSE gradient flow with neural-tangents' semantics (``nt.predict.gradient_descent_mse``).

    Loss ``½ mean`` over the ``y_train.size`` entries, so the residual is ``exp(-η K t / y_train.size) r0``
    (``K`` possibly regularised). ``K + diag_reg · s · I`` is decomposed once, with ``s = trace(K) / (N·O')``
    (the mean diagonal of the 2-D kernel) or ``s = 1`` when ``diag_reg_absolute_scale``. As in
    neural-tangents, the regularised kernel drives the train predictions too (plain gradient flow on
    ``K + reg I``, not the weight-decay dynamics of :class:`LinearizedDynamics`).

    Args:
      k_train_train: ``[N, N]`` (``trace_axes=(-1,)``: ``K ⊗ I_O``) or ``[N, N, O, O]`` (``trace_axes=()``).
      y_train: ``[N, O]`` targets.
      learning_rate: η; time and η are interchangeable (only ``η t`` matters).
      diag_reg, diag_reg_absolute_scale: diagonal regularisation, as above.
      trace_axes: ``(-1,)`` or ``()``.
      rcond: eigenvalues ``<= rcond · λ_max`` count as null space (:func:`kernel_eigh`). Default ``N · eps`` of the
        kernel's dtype (float32 at the coarsest), not :func:`kernel_eigh`'s ``eps(float32)``: neural-tangents
        truncates nothing (its ``t = ∞`` is a Cholesky solve), so a float64 kernel keeps its small eigenvalues.

    Returns:
      ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)``. ``t``: scalar or array
      (leading output axes), ``None`` means ``t = ∞``. ``fx_train_0``: scalar or ``[N, O]``, or ``None`` to
      skip train predictions (then taken as 0). ``fx_test_0``: ``[M, O]`` (or scalar) with ``k_test_train``
      ``[M, N]`` / ``[M, N, O, O]``. Returns ``fx_train_t [*T, N, O]``, ``fx_test_t [*T, M, O]``, or both as
      a tuple when both are asked for. Everything is float64. ``predict_fn`` raises ``ConfigError`` when
      ``fx_train_0`` and ``fx_test_0`` are both ``None``, ``fx_test_0`` comes without ``k_test_train``, or ``t`` is
      negative or NaN; ``ShapeError`` or
      ``NonFiniteError`` for a misshapen or non-finite ``fx_train_0``, ``fx_test_0`` or ``k_test_train``.

    Raises:
      ShapeError: ``y_train`` not a numeric ``[N, O]``, or ``k_train_train`` not shaped for ``trace_axes`` and it.
      NonFiniteError: NaN/inf in ``y_train``, ``k_train_train`` or ``diag_reg``.
      ConfigError: ``trace_axes`` other than ``(-1,)`` or ``()``, or ``learning_rate`` negative or not finite.
      KernelError: ``K`` plus its diagonal regularisation is not positive semi-definite (:func:`kernel_eigh`).
    """
    y = _finite_array(y_train, "y_train", ndim=2)
    n, n_out = y.shape
    _check_rates(learning_rate=learning_rate)  # here, as given, not as the per-entry rate predict_fn uses
    traced = _canonical_traced(trace_axes)
    k = _flatten_kernel(k_train_train, n, n_out, traced, "k_train_train", rows=n)
    reg = float(diag_reg) * (1.0 if diag_reg_absolute_scale else np.trace(k) / k.shape[0])
    if rcond is None:  # the tolerance of the kernel's own dtype (k itself is float64 from here on)
        dtype = np.result_type(np.asarray(k_train_train).dtype, np.float32)
        rcond = k.shape[0] * float(np.finfo(dtype).eps)
    eigh = kernel_eigh(k + reg * np.eye(k.shape[0]), rcond)
    y2 = y if traced else y.reshape(-1, 1)
    lr = float(learning_rate) / y.size

    def unflatten(a: np.ndarray) -> np.ndarray:
        return a if traced else a.reshape(a.shape[:-2] + (-1, n_out))

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        if fx_train_0 is None and fx_test_0 is None:
            raise ConfigError("both fx_train_0 and fx_test_0 are None: nothing to predict")
        if fx_test_0 is not None and k_test_train is None:
            raise ConfigError("test predictions (fx_test_0 given) need k_test_train")
        f0 = 0.0 if fx_train_0 is None else _rows(fx_train_0, "fx_train_0", y.shape)
        f0 = f0 if traced else np.reshape(np.broadcast_to(f0, y.shape), (-1, 1))
        dyn = LinearizedDynamics.from_eigh(eigh, y2, f0, learning_rate=lr)
        times = np.inf if t is None else t
        out = []
        if fx_train_0 is not None:
            out.append(unflatten(dyn.train_predictions(times)))
        if fx_test_0 is not None:
            kt = _flatten_kernel(k_test_train, n, n_out, traced, "k_test_train")
            m = kt.shape[0] // (1 if traced else n_out)
            f0_test = _rows(fx_test_0, "fx_test_0", (m, n_out))
            f0_test = f0_test if traced else f0_test.reshape(-1, 1)
            out.append(unflatten(dyn.test_predictions(times, kt, f0_test)))
        return out[0] if len(out) == 1 else tuple(out)

    return predict_fn


class CETrajectory(NamedTuple):
    """Gradient descent on the linearized model under softmax cross-entropy, step by step.

    Attributes:
      train_logits: ``[T+1, N, O]`` ``f_k(X)`` for ``k = 0..T`` steps.
      test_logits: ``[T+1, M, O]`` ``f_k(X*)``, or ``None`` when no test kernel was given.
      train_loss: ``[T+1]`` ``L_k = Σ_i CE(f_k(x_i), y_i)`` (summed over samples, the module's convention).
    """

    train_logits: np.ndarray
    test_logits: np.ndarray | None
    train_loss: np.ndarray


def _kernel_operator(k: np.ndarray, traced: bool, n_out: int) -> Callable:
    """``a [..., N, O] -> Θ a [..., R, O]`` for a kernel from :func:`_flatten_kernel` (traced ``[R, N]``, or
    untraced flattened ``[R·O, N·O]``)."""
    if traced:
        return lambda a: np.einsum("rn,...no->...ro", k, a)
    return lambda a: (a.reshape(a.shape[:-2] + (-1,)) @ k.T).reshape(a.shape[:-2] + (-1, n_out))


def linearized_ce_trajectory(k_train_train, k_test_train, y_onehot, f0_train=0.0, f0_test=0.0, *,
                             learning_rate: float, steps: int, weight_decay: float = 0.0,
                             trace_axes=(-1,)) -> CETrajectory:
    """``steps`` gradient-descent steps on the linearized model under softmax cross-entropy, in function space.

    Cross-entropy has no closed form, but gradient descent on ``f_lin(w) = f0 + J (w − w0)`` keeps
    ``w_k − w0 = Jᵀ a_k`` (dual coefficients ``a_k [N, O]``), so with the loss
    ``L(w) = Σ_i CE(f_lin(x_i; w), y_i) + ½ μ ‖w − w0‖²`` (summed over samples, as in the module's convention)
    and ``∇_f CE = softmax(f) − y``:

        a_{k+1} = (1 − ημ) a_k − η (softmax(f_k(X)) − Y),   f_k(X) = f0(X) + Θ a_k,   f_k(X*) = f0(X*) + Θ* a_k.

    With μ = 0 this is ``f_{k+1} = f_k − η Θ (softmax(f_k) − Y)`` (Deshpande et al. 2021 linearize fine-tuning;
    Lee et al. 2019 the function-space view). For the MEAN cross-entropy with step η use ``learning_rate = η / N``.
    Float64 numpy on the host; one ``[N·O, N·O]`` mat-vec per step. Kernels in the layout of
    :func:`gradient_descent_mse` (neural-tangents' ``empirical_ntk_fn`` outputs).

    Args:
      k_train_train: ``Θ``: ``[N, N]`` with ``trace_axes=(-1,)`` (the kernel ``Θ ⊗ I_O``) or ``[N, N, O, O]``
        with ``trace_axes=()``.
      k_test_train: ``Θ*`` in the same layout, ``[M, N]`` or ``[M, N, O, O]``; ``None`` for no test predictions.
      y_onehot: ``[N, O]`` target distributions (one-hot rows, or any rows that are non-negative and sum to 1).
      f0_train: ``[N, O]`` (or scalar) initial logits; f0_test: ``[M, O]`` (or scalar).
      learning_rate: η >= 0; steps: T >= 0; weight_decay: μ >= 0.
      trace_axes: ``(-1,)`` or ``()``, as in :func:`gradient_descent_mse`.

    Returns:
      :class:`CETrajectory` with the logits and the loss at steps ``0..T``.

    Raises:
      ShapeError: ``y_onehot`` not 2-D; ``y_onehot``, a kernel or an ``f0`` not numeric; a kernel whose shape
        does not match ``trace_axes`` and ``y_onehot [N, O]``; ``f0_train`` (``f0_test``) neither a scalar nor
        ``[N, O]`` (``[M, O]``).
      NonFiniteError: NaN or inf in ``y_onehot``, ``k_train_train``, ``k_test_train``, ``f0_train`` or
        ``f0_test``.
      LabelError: ``y_onehot`` rows are not probability vectors (a negative entry, or a sum off 1 by more than
        ``1e-6``).
      ConfigError: a negative or non-finite ``learning_rate`` or ``weight_decay``; ``steps`` negative or not
        integral; ``trace_axes`` other than ``(-1,)``/``()``.
    """
    y = _finite_array(y_onehot, "y_onehot", ndim=2)
    n, n_out = y.shape
    if np.any(y < 0) or not np.allclose(y.sum(axis=1), 1.0, atol=1e-6):
        raise LabelError("y_onehot rows must be probability vectors (non-negative, summing to 1)")
    _check_rates(learning_rate=learning_rate, weight_decay=weight_decay)
    if not np.isfinite(steps) or int(steps) != steps or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0; got {steps}")
    traced = _canonical_traced(trace_axes)
    theta = _kernel_operator(_flatten_kernel(k_train_train, n, n_out, traced, "k_train_train", rows=n),
                             traced, n_out)
    f0 = _rows(f0_train, "f0_train", y.shape)
    a = np.zeros((int(steps) + 1, n, n_out))
    logits = np.empty_like(a)
    for k in range(int(steps) + 1):
        logits[k] = f0 + theta(a[k])
        if k < steps:
            a[k + 1] = (1.0 - learning_rate * weight_decay) * a[k] - learning_rate * (softmax(logits[k], axis=1) - y)
    loss = np.sum(logsumexp(logits, axis=2) - np.sum(y * logits, axis=2), axis=1)
    test = None
    if k_test_train is not None:
        theta_test = _kernel_operator(_flatten_kernel(k_test_train, n, n_out, traced, "k_test_train"), traced,
                                      n_out)
        test = theta_test(a)
        test = test + _rows(f0_test, "f0_test", test.shape[1:])
    return CETrajectory(logits, test, loss)
