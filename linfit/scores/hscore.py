"""H-score (Bao et al. 2019) and its Ledoit–Wolf-regularised version (Ibrahim et al. 2021).

Bao, Li, Huang, Zheng, Wang, Zhang, *An Information-Theoretic Approach to Transferability in Task
Transfer Learning*, ICIP 2019, Def. 2:

    H(f) = tr( cov(f)⁺ cov(E[f | y]) ),

a **matrix** product (one public TF port multiplies elementwise, which is a different quantity).
Ibrahim, Ponomareva, Mazumder, *Newer is not always better: Rethinking transferability metrics,
their peculiarities, stability and performance*, NeurIPS 2021, replace cov(f) by the Ledoit–Wolf
shrinkage estimate Σ_α = (1 − α) S + α μ I (μ = tr S / D) and use

    H_α(f) = tr( Σ_α⁻¹ (1 − α) cov(E[f | y]) ).

Both covariances use the 1/N (maximum-likelihood) normalisation, so H does not depend on it; the
between-class covariance is Σ_c (n_c/N) (μ_c − μ)(μ_c − μ)ᵀ. Writing the centred features as
X = U diag(√σ) Vᵀ, the class-mean deviations lie in span(V) and

    H_α = (1 − α) Σ_c (n_c/N) Σ_i σ_i (u_iᵀ a_c)² / ((1 − α) σ_i / N + α μ),   a_c = 1_c / n_c,

which needs one ``eigh`` of the smaller Gram (α = 0 gives H with the pseudo-inverse, eigenvalues
below ``σ_max · max(N, D) · eps`` counted as zero). Computation is float64 numpy.

Example::

    >>> import numpy as np
    >>> f = np.array([[0.0, 1.0], [0.2, 0.9], [1.0, 0.1], [1.1, 0.0]])
    >>> round(h_score(f, np.array([0, 0, 1, 1])), 3)
    0.993
"""

from __future__ import annotations

import numpy as np

from linfit.errors import ShapeError
from linfit.scores.logme import spectral_projection
from linfit.scores.registry import register
from linfit.scores.validation import check_features, check_matrix


def _shrinkage(sigma: np.ndarray, row_sq_norms: np.ndarray, d: int) -> float:
    """Ledoit–Wolf (2004) shrinkage intensity of S = XᵀX/N towards μI, for centred X ``[N, D]``.

    With ``‖A‖² = tr(AAᵀ)/D``: ``d² = ‖S − μI‖²``, ``b̄² = N⁻² Σ_i ‖x_i x_iᵀ − S‖²``
    ``= (Σ_i ‖x_i‖⁴ − N ‖S‖_F²) / (N² D)`` and the intensity is ``min(b̄², d²) / d²`` (0 when S = μI).
    Uses only the Gram eigenvalues σ (``‖S‖_F² = Σ σ² / N²``) and the squared row norms.
    """
    n = row_sq_norms.shape[0]
    mu = np.sum(sigma) / (n * d)
    s_frob2 = np.sum(sigma**2) / n**2
    d2 = (s_frob2 - d * mu**2) / d
    b2 = min((np.sum(row_sq_norms**2) - n * s_frob2) / (n**2 * d), d2)
    return 0.0 if d2 <= 0.0 else float(max(b2, 0.0) / d2)


def ledoit_wolf(features) -> tuple[np.ndarray, float]:
    """Ledoit–Wolf shrunk covariance of ``features`` (centred internally) and its intensity α.

    Args:
      features: ``[N, D]`` samples in rows, any real numeric dtype (numpy or JAX); computed in float64.

    Returns:
      ``((1 − α) S + α μ I, α)``: the ``[D, D]`` float64 shrunk covariance, in the squared units of the features,
      with S the 1/N sample covariance and μ = tr S / D; and the intensity α in ``[0, 1]`` as a Python ``float``
      (0 when S is already a multiple of the identity).

    Shape:
      features ``[N, D]`` → ``([D, D], scalar)``.

    Raises:
      ShapeError: ``features`` not 2-D, not numeric, or without a row or a column (N = 0 or D = 0).
      NonFiniteError: ``features`` contains NaN or inf.

    References:
      Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional covariance matrices", Journal of
      Multivariate Analysis 88(2), 365–411: the shrinkage target μI and the intensity ``min(b̄², d²) / d²``
      (:func:`_shrinkage`).
    """
    x = check_matrix(features, "features").astype(np.float64)
    n, d = x.shape
    if n == 0 or d == 0:  # LAPACK's error, or a division by zero, otherwise
        raise ShapeError(f"ledoit_wolf needs at least one sample and one feature; got features of shape {x.shape}")
    x = x - x.mean(axis=0)
    sigma, _, _ = spectral_projection(x, np.zeros((n, 0)))
    alpha = _shrinkage(sigma, np.sum(x * x, axis=1), d)
    s = x.T @ x / n
    return (1 - alpha) * s + alpha * np.trace(s) / d * np.eye(d), alpha


def _between_class_trace(features, labels, *, shrink: bool) -> float:
    """``tr(Σ_α⁺ (1 − α) cov(E[f|y]))`` with α from Ledoit–Wolf if ``shrink`` else α = 0."""
    x, y, c = check_features(features, labels)
    x = x.astype(np.float64)
    x = x - x.mean(axis=0)
    n, d = x.shape
    counts = np.bincount(y, minlength=c)
    sigma, coords, _ = spectral_projection(x, np.eye(c)[y] / counts)  # coords[i, c] = u_iᵀ a_c
    alpha = _shrinkage(sigma, np.sum(x * x, axis=1), d) if shrink else 0.0
    mu = np.sum(sigma) / (n * d)
    inv_eig = 1.0 / ((1 - alpha) * sigma / n + alpha * mu)  # [k] on span(V)
    per_class = np.sum((sigma * inv_eig)[:, None] * coords**2, axis=0)  # [C]
    return float((1 - alpha) * np.sum(counts / n * per_class))


@register("h_score", needs=("features",), reference="Bao et al. 2019, ICIP", cost="forward")
def h_score(features, labels) -> float:
    """H-score ``tr(cov(f)⁺ cov(E[f|y]))`` (matrix product, pseudo-inverse).

    Args:
      features: ``[N, D]`` penultimate features, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.

    Returns:
      The score ≥ 0 (at most min(C − 1, D)) as a Python ``float``; 0 for constant features. Higher is better.

    Shape:
      features ``[N, D]``, labels ``[N]`` → scalar.

    Raises:
      ShapeError: ``features`` not 2-D or not numeric; labels not 1-D or not N long.
      NonFiniteError: ``features`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).

    References:
      Bao et al. 2019 (ICIP); formula and cited definition in the module docstring.
    """
    return _between_class_trace(features, labels, shrink=False)


@register("regularized_h_score", needs=("features",), reference="Ibrahim et al. 2021, NeurIPS", cost="forward")
def regularized_h_score(features, labels) -> float:
    """H-score with the Ledoit–Wolf-shrunk feature covariance: ``tr(Σ_α⁻¹ (1 − α) cov(E[f|y]))``.

    Args:
      features: ``[N, D]`` penultimate features, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.

    Returns:
      The score ≥ 0 as a Python ``float``; higher is better.

    Shape:
      features ``[N, D]``, labels ``[N]`` → scalar.

    Raises:
      As :func:`h_score`.

    References:
      Ibrahim et al. 2021 (NeurIPS); formula in the module docstring.
    """
    return _between_class_trace(features, labels, shrink=True)
