"""The numerical-null cutoff shared by every score that inverts, whitens, standardises or takes logs of a spectrum.

Scores built on a Gram or covariance matrix of ``[N, D]`` features (FᵀF, FFᵀ, the covariance of PCA
coordinates, per-column variances) see its eigenvalues σ only up to an absolute error of about
``eps · max(N, D) · σ_max``: forming the matrix sums ``max(N, D)`` products and the eigensolver is backward
stable with respect to ``‖G‖ = σ_max`` (Golub & Van Loan, *Matrix Computations*, §8.1). An eigenvalue below
that is indistinguishable from zero, and a direction whose variance is below it is round-off, not data:
dividing by it (standardising, whitening, inverting) or taking its log turns round-off into an O(1) change
of the score. Every such score therefore treats the eigenvalues (variances) at or below

    cutoff = eps(float64) · max(N, D) · σ_max

as exactly zero. The same rule in singular values s = √σ keeps s > √(eps · max(N, D)) · s_max (8.4e-8 ·
s_max at max(N, D) = 32), so a direction that a relative perturbation of 1e-9 of the features creates out
of an exact rank deficiency (a duplicated column, the centring of N ≤ D samples) stays null.
"""

from __future__ import annotations

import numpy as np


def significant(eigenvalues: np.ndarray, n: int, d: int) -> np.ndarray:
    """Mask of the eigenvalues (variances) above ``eps · max(n, d) · max(eigenvalues)``.

    Args:
      eigenvalues: ``[k]`` float64 eigenvalues of a Gram/covariance matrix of ``[n, d]`` data, or per-column
        variances (any order; negative values are round-off and never significant).
      n, d: the data's shape.

    Returns:
      ``[k]`` bool.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    largest = max(float(eigenvalues.max(initial=0.0)), 0.0)
    return eigenvalues > largest * max(n, d) * np.finfo(np.float64).eps
