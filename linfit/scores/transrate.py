"""TransRate: the coding-rate reduction of the features by the labels (Huang et al. 2022).

Huang, Huang, Rong, Yang, Wei, *Frustratingly Easy Transferability Estimation*, ICML 2022
(arXiv:2106.09362). TransRate approximates the mutual information between features and labels by the
rate–distortion coding rate of Ma et al. 2007 (as in MCR², Yu et al. 2020). For the globally centred
features Z ``[N, D]`` and distortion ε:

    R(Z, ε)     = ½ logdet(I_D + D / (N ε²) ZᵀZ),
    R(Z, ε | Y) = Σ_c (n_c / N) · ½ logdet(I_D + D / (n_c ε²) Z_cᵀ Z_c),
    TransRate   = R(Z, ε) − R(Z, ε | Y),

with Z_c ``[n_c, D]`` the rows of class c (not re-centred). ``class_weighting="size"`` (default) is
the class-size weighting n_c / N above; ``"uniform"`` averages the class rates with weight 1/C as the
tllib (community) implementation does. tllib also scales ZᵀZ by 1/(N ε_tllib) instead of
D/(N ε²): ``transrate(f, y, eps=sqrt(D * ε_tllib), class_weighting="uniform")`` reproduces it.
The log-determinants are sums over the eigenvalues of the smaller Gram matrix; float64 numpy.

Example::

    >>> import numpy as np
    >>> f = np.array([[0.0, 1.0], [0.2, 0.9], [1.0, 0.1], [1.1, 0.0]])
    >>> round(transrate(f, np.array([0, 0, 1, 1]), eps=0.1), 3)
    0.003
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from linfit.errors import ConfigError, UnknownNameError
from linfit.scores.registry import register
from linfit.scores.spectrum import significant
from linfit.scores.validation import check_features

_WEIGHTINGS = ("size", "uniform")


def coding_rate(z: np.ndarray, eps: float) -> float:
    """``½ logdet(I_D + D / (n ε²) ZᵀZ)`` for ``z [n, D]``, via the eigenvalues of the smaller Gram.

    Eigenvalues at or below ``eps64 · max(n, D) · λ_max`` (:func:`linfit.scores.spectrum.significant`) count
    as 0: they are round-off of an exact rank deficiency (the centring when n ≤ D, duplicated columns), which
    the factor ``D / (n ε²)`` (1e8·D/n at ε = 1e-4) would otherwise turn into nats of coding rate.
    """
    n, d = z.shape
    gram = z.T @ z if n >= d else z @ z.T
    eig = scipy.linalg.eigh(gram, eigvals_only=True, check_finite=False, driver="evd")
    eig = np.where(significant(eig, n, d), eig, 0.0)
    return float(0.5 * np.sum(np.log1p(d / (n * eps**2) * eig)))


@register("transrate", needs=("features",), reference="Huang et al. 2022, ICML, arXiv:2106.09362", cost="forward")
def transrate(features, labels, *, eps: float = 1e-4, class_weighting: str = "size") -> float:
    """TransRate ``R(Z, ε) − R(Z, ε | Y)`` on the centred features.

    Args:
      features: ``[N, D]`` penultimate features, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.
      eps: distortion ε > 0.
      class_weighting: ``"size"`` (n_c / N, the paper) or ``"uniform"`` (1 / C, tllib).

    Returns:
      The coding-rate reduction in nats as a Python ``float``; higher is better.

    Shape:
      features ``[N, D]``, labels ``[N]`` → scalar.

    Raises:
      UnknownNameError: ``class_weighting`` is not ``"size"`` or ``"uniform"``.
      ConfigError: ``eps`` is not > 0.
      ShapeError: ``features`` not 2-D or not numeric; labels not 1-D or not N long.
      NonFiniteError: ``features`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).

    References:
      Huang et al. 2022 (ICML, arXiv:2106.09362); formula in the module docstring.
    """
    if class_weighting not in _WEIGHTINGS:
        raise UnknownNameError(f"class_weighting must be one of {_WEIGHTINGS}; got {class_weighting!r}")
    if not eps > 0:
        raise ConfigError(f"eps must be positive; got {eps}")
    z, y, c = check_features(features, labels)
    z = z.astype(np.float64)
    z = z - z.mean(axis=0)
    counts = np.bincount(y, minlength=c)
    weights = counts / y.shape[0] if class_weighting == "size" else np.full(c, 1.0 / c)
    class_rates = np.array([coding_rate(z[y == k], eps) for k in range(c)])
    return coding_rate(z, eps) - float(np.sum(weights * class_rates))
