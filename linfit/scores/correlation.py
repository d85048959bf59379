"""Label–kernel correlation scores: LFC (and the kernel-level correlation behind LGC).

Deshpande et al. 2021, *A linearized framework and a new benchmark for model selection for
fine-tuning* (arXiv:2102.00084), eq. (8): the Pearson correlation between the N² entries of a
kernel ``K`` (the empirical NTK Θ for LGC, the feature Gram Θ_F = ΦΦᵀ for LFC) and the entries of
the label-similarity matrix ``K_Y`` with ``(K_Y)_ij = +1`` if ``y_i = y_j`` and ``-1`` otherwise::

    S = (K − μ_K)·(K_Y − μ_Y) / (‖K − μ_K‖_F ‖K_Y − μ_Y‖_F)

``μ`` is one scalar mean over all N² entries (diagonal included; no double centering) and the norms
are Frobenius norms (some public code uses the spectral norm, which is not a correlation).

``K_Y`` is never formed: with ``n_c`` the class sizes, ``P = Σ_c n_c²`` same-class pairs and
``W = Σ_c Σ_{i,j∈c} K_ij``, one has ``Σ K_ij (K_Y)_ij = 2W − Σ K_ij``, ``μ_Y = 2P/N² − 1`` and
``‖K_Y − μ_Y‖_F² = N²(1 − μ_Y²)``. Computation is float64 numpy.

Example::

    >>> import numpy as np
    >>> phi = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> round(lfc(phi, np.array([0, 0, 1, 1])), 3)
    0.988
"""

from __future__ import annotations

import functools

import numpy as np

from linfit.scores.registry import register
from linfit.scores.validation import check_features, check_kernel

_REFERENCE = "Deshpande et al. 2021, arXiv:2102.00084, eq. (8)"


def correlation_from_sums(total: float, total_sq: float, same_class: float, counts: np.ndarray) -> float:
    """Pearson correlation of K's entries with K_Y's from sums over K.

    Args:
      total: ``Σ_ij K_ij``.
      total_sq: ``Σ_ij K_ij²``.
      same_class: ``W = Σ_c Σ_{i,j∈c} K_ij``.
      counts: ``[C]`` class sizes ``n_c``.
    """
    n2 = float(np.sum(counts)) ** 2
    mean_k = total / n2
    mean_y = 2.0 * float(np.sum(counts.astype(np.float64) ** 2)) / n2 - 1.0
    cov = (2.0 * same_class - total) / n2 - mean_k * mean_y
    var_k = max(total_sq / n2 - mean_k**2, 0.0)
    var_y = 1.0 - mean_y**2
    if var_k == 0.0:
        return 0.0  # a constant kernel carries no label information
    return float(cov / np.sqrt(var_k * var_y))


def kernel_label_correlation(kernel, labels) -> float:
    """Pearson correlation between a kernel's entries and the ±1 label-similarity matrix (eq. (8)).

    ``kernel_label_correlation(ntk, y)`` is the paper's LGC; ``kernel_label_correlation(Φ Φᵀ, y)``
    is LFC (see :func:`lfc`, which avoids forming the N×N Gram).

    Args:
      kernel: ``[N, N]`` kernel matrix (any real matrix; symmetry is not required), any real numeric dtype (numpy
        or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.

    Returns:
      The correlation in ``[-1, 1]`` (0 for a constant kernel) as a Python ``float``; higher is better.

    Shape:
      kernel ``[N, N]``, labels ``[N]`` → scalar.

    Raises:
      ShapeError: ``kernel`` not 2-D, not square or not numeric; labels not 1-D or not N long.
      NonFiniteError: ``kernel`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).

    References:
      Deshpande et al. 2021 (arXiv:2102.00084), eq. (8), the normalised form of eq. (7); with the NTK Θ of
      eq. (2) it is LGC, with the feature kernel Θ_F of eq. (6) LFC.
    """
    k, y, c = check_kernel(kernel, labels)
    k = k.astype(np.float64)
    k = k - k.mean()  # Pearson is shift-invariant; centering first avoids cancellation
    onehot = np.eye(c)[y]
    same_class = float(np.einsum("ic,ij,jc->", onehot, k, onehot))
    counts = np.bincount(y, minlength=c)
    return correlation_from_sums(float(k.sum()), float(np.sum(k * k)), same_class, counts)


@register("lfc", needs=("features",), reference=_REFERENCE, cost="forward")
def lfc(features, labels, *, center: bool = False) -> float:
    """Label-Feature Correlation: ``kernel_label_correlation(Φ Φᵀ, y)`` on the raw features.

    Deshpande et al. 2021 (arXiv:2102.00084), Sec. 3.3, eq. (8) with Θ_F = ΦΦᵀ (eq. (6)). The paper does not
    center or normalise the features; ``center=True`` subtracts the feature mean first (an
    ablation, registered as ``"lfc_centered"``).

    Computed from feature-space sums, without the N×N Gram: ``Σ K = ‖Φᵀ1‖²``,
    ``Σ K² = ‖ΦᵀΦ‖_F²`` (or ``‖ΦΦᵀ‖_F²`` when N < D), ``W = Σ_c ‖Φ_cᵀ 1‖²``.

    Args:
      features: ``[N, D]`` penultimate features Φ, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.
      center: subtract the per-dimension feature mean before forming the Gram.

    Returns:
      The correlation in ``[-1, 1]`` (0 for a constant Gram) as a Python ``float``; higher is better.

    Shape:
      features ``[N, D]``, labels ``[N]`` → scalar.

    Raises:
      ShapeError: ``features`` not 2-D or not numeric; labels not 1-D or not N long.
      NonFiniteError: ``features`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).
    """
    phi, y, c = check_features(features, labels)
    phi = phi.astype(np.float64)
    if center:
        phi = phi - phi.mean(axis=0)
    n, d = phi.shape
    gram = phi.T @ phi if n >= d else phi @ phi.T
    class_sums = np.eye(c)[y].T @ phi  # [C, D]
    total = float(np.sum(class_sums.sum(axis=0) ** 2))
    same_class = float(np.sum(class_sums**2))
    counts = np.bincount(y, minlength=c)
    return correlation_from_sums(total, float(np.sum(gram * gram)), same_class, counts)


register("lfc_centered", needs=("features",), reference=_REFERENCE + " (centered-feature ablation)", cost="forward")(
    functools.partial(lfc, center=True)
)
