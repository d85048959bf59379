"""Linearized fine-tuning scores: the closed-form dynamics of the linearized model as a model-selection score.

The point of the linearized framework (Deshpande et al. 2021, §3.1, Proposition 1): under MSE gradient flow the
linearized model's training loss is L_t = ½ r0ᵀ exp(-2ηΘt) r0 (``linfit.dynamics``). With one-hot targets Y and
the new head's outputs zero on average (``linfit.scores.lgc``: the kernel is averaged over the head's random
initialisation), r0 = Y. Two scores follow, both from the fine-tuning NTK ``[N, N]`` of the scoring subset:

* ``linearized_loss``: the fraction of the training loss that remains after a normalised time τ, negated:
  ``-L_τ / L_0``. Time is measured in units of the kernel's mean eigenvalue, ``η t = τ N / tr(Θ)``, so the score
  does not depend on the kernel's scale (which differs between models); small τ recovers the paper's
  initial-speed proxy YᵀΘY / (‖Y‖² tr(Θ)/N) (eq. (3)).
* ``linearized_cv_accuracy``: k-fold cross-validated accuracy of the linearized model's predictions at τ on the
  scoring subset itself: train on k-1 folds with the closed form, predict the held-out fold with
  f_τ(X*) = Θ*,train Θ⁻¹ (I - e^{-ηΘt}) Y — a prediction of fine-tuned accuracy that never touches the test
  set (the subset comes from the training split).

Higher is better for both.
"""

from __future__ import annotations

import numpy as np

from linfit.dynamics import LinearizedDynamics
from linfit.errors import ConfigError
from linfit.scores.registry import register
from linfit.scores.validation import check_kernel, check_labels

_REFERENCE = "Deshpande et al. 2021, arXiv:2102.00084, Prop. 1 / eq. (1) (linearized fine-tuning loss)"


def _normalised_time(kernel: np.ndarray, tau: float) -> float:
    if not tau > 0:
        raise ConfigError(f"the normalised time must be positive (np.inf allowed); got {tau}")
    mean_eigenvalue = np.trace(kernel) / kernel.shape[0]
    if np.isinf(tau):
        return np.inf
    return float(tau / mean_eigenvalue) if mean_eigenvalue > 0 else 0.0


def loss_ratio(kernel, labels, tau) -> np.ndarray:
    """``L_τ / L_0`` of the linearized model trained by MSE gradient flow on one-hot labels, for every ``τ``.

    Args:
      kernel: ``[N, N]`` fine-tuning NTK on the scoring subset, any real numeric dtype (numpy or JAX); computed
        in float64.
      labels: ``[N]`` integers in ``0..C-1`` (integer or integral-float dtype) or class names.
      tau: scalar or ``[*T]`` times in units of the mean eigenvalue of the kernel (``η t = τ N / tr Θ``), > 0
        (``np.inf`` allowed).

    Returns:
      ``[*T]`` float64 array in ``[0, 1]`` (a ``numpy.float64`` scalar for a scalar ``tau``; the curve
      ``linfit select`` plots; ``linearized_loss`` is its negative at one τ).

    Raises:
      ConfigError: a τ that is not positive (or NaN).
      ShapeError: ``kernel`` not 2-D, not square or not numeric; labels not 1-D or not N long.
      NonFiniteError: ``kernel`` contains NaN or inf.
      KernelError: the (symmetrised) kernel has an eigenvalue below the round-off tolerance of
        ``linfit.dynamics.kernel_eigh``: it is not positive semi-definite.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).

    References:
      Deshpande et al. 2021 (arXiv:2102.00084), Prop. 1, eq. (1): the loss of the linearized model under gradient
      flow (see the module docstring for the ½ and the time unit used here).
    """
    k, y, c = check_kernel(kernel, labels)
    targets = np.eye(c)[y]
    times = np.vectorize(lambda t: _normalised_time(k, t), otypes=[np.float64])(tau)
    return LinearizedDynamics.from_kernel(k, targets).train_loss(times) / (0.5 * np.sum(targets**2))


def linearized_loss(kernel, labels, *, tau: float = 1.0) -> float:
    """``-L_τ / L_0`` of the linearized model trained by MSE gradient flow on one-hot labels.

    Args:
      kernel: ``[N, N]`` fine-tuning NTK on the scoring subset, any real numeric dtype (numpy or JAX); computed
        in float64.
      labels: ``[N]`` integers in ``0..C-1`` (integer or integral-float dtype) or class names.
      tau: time in units of the mean eigenvalue of the kernel (``η t = τ N / tr Θ``), > 0 (``np.inf`` allowed).

    Returns:
      A Python ``float`` in ``[-1, 0]``; 0 means the loss is gone by τ.

    Raises:
      As :func:`loss_ratio`.

    References:
      linfit's score built on Deshpande et al. 2021 (arXiv:2102.00084), Prop. 1, eq. (1); at small τ it reduces
      to the initial-speed proxy of eq. (3) (module docstring).
    """
    return -float(loss_ratio(kernel, labels, tau))


def _stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """``[N]`` fold index per sample: each class's samples shuffled and dealt round-robin."""
    rng = np.random.default_rng(seed)
    fold = np.empty(labels.size, dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (np.arange(members.size) + offset) % folds
        offset += members.size
    return fold


def linearized_cv_accuracy(kernel, labels, *, tau: float = 10.0, folds: int = 5, seed: int = 0) -> float:
    """k-fold cross-validated accuracy of the closed-form linearized model at normalised time τ.

    Args:
      kernel: ``[N, N]`` fine-tuning NTK on the scoring subset, any real numeric dtype (numpy or JAX); computed
        in float64.
      labels: ``[N]`` integers in ``0..C-1`` (integer or integral-float dtype) or class names, with at least
        ``min(folds, 2)`` samples per class.
      tau: training time in units of the mean eigenvalue of each fold's training kernel, > 0.
      folds: number of folds (stratified, seeded), >= 2.
      seed: fold assignment seed.

    Returns:
      Mean held-out accuracy over all N samples, in ``[0, 1]``, as a ``numpy.float64``.

    Raises:
      ConfigError: ``folds < 2``, or ``tau`` not positive (or NaN).
      ShapeError: ``kernel`` not 2-D, not square or not numeric; labels not 1-D or not N long.
      NonFiniteError: ``kernel`` contains NaN or inf.
      KernelError: a fold's (symmetrised) training kernel has an eigenvalue below the round-off tolerance of
        ``linfit.dynamics.kernel_eigh``: it is not positive semi-definite.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``); a class with fewer than 2 samples.

    References:
      linfit's score built on Deshpande et al. 2021 (arXiv:2102.00084), Prop. 1, eq. (1), with the closed-form
      gradient-flow solution of its App. A for the held-out predictions (module docstring).
    """
    k, y, c = check_kernel(kernel, labels)
    check_labels(y, min_per_class=2)
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds; got {folds}")
    fold = _stratified_folds(y, folds, seed)
    correct = 0
    for f in range(folds):
        held, train = fold == f, fold != f
        if not held.any():
            continue
        k_train = k[np.ix_(train, train)]
        dynamics = LinearizedDynamics.from_kernel(k_train, np.eye(c)[y[train]])
        accuracy = dynamics.test_accuracy(_normalised_time(k_train, tau), k[np.ix_(held, train)], 0.0, y[held])
        correct += float(accuracy) * held.sum()
    return correct / y.size


register("linearized_loss", needs=("ntk",), reference=_REFERENCE, cost="forward+backward")(linearized_loss)
register("linearized_cv_accuracy", needs=("ntk",), reference=_REFERENCE + "; held-out folds",
         cost="forward+backward")(linearized_cv_accuracy)
