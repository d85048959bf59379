"""GBC: the Gaussian Bhattacharyya Coefficient between target classes (Pándy et al. 2022).

Pándy, Agostinelli, Uijlings, Ferrari, Mensink, *Transferability Estimation using Bhattacharyya
Class Separability*, CVPR 2022 (arXiv:2111.12780), eqs. (2)–(4). Each class c is modelled in feature
space as a Gaussian N(μ_c, Σ_c) with Σ_c diagonal (per-dimension variances) or spherical (one
variance: the mean of the per-dimension variances). With Σ = (Σ_c + Σ_c') / 2,

    BD(c, c') = ⅛ (μ_c − μ_c')ᵀ Σ⁻¹ (μ_c − μ_c') + ½ log( det Σ / sqrt(det Σ_c det Σ_c') ),
    GBC       = − Σ_{c ≠ c'} exp(−BD(c, c'))        (ordered pairs),

so GBC ≤ 0 and well-separated classes give a score near 0. Variances are the 1/n_c (maximum-
likelihood) estimates floored at ``var_floor`` (default 1e-4, the authors' value) so that constant feature
dimensions do not give infinite distances. The spherical case is the Bhattacharyya distance of the two
spherical Gaussians in D dimensions: Σ_c = σ_c² I, so the log-determinant term counts D times, and the floor
applies to σ_c² (the mean of the per-dimension variances). The authors' released code differs in both respects
(its log term counts once, and it floors each dimension before averaging), so its spherical GBC values, and
possibly its rankings, differ from these. The paper optionally reduces the features
with PCA first; this function scores the features it is given. Float64 numpy.

Example::

    >>> import numpy as np
    >>> f = np.array([[0.0, 1.0], [0.2, 0.9], [1.0, 0.1], [1.1, 0.0]])
    >>> round(gbc(f, np.array([0, 0, 1, 1])), 4)
    -0.0
"""

from __future__ import annotations

import numpy as np

from linfit.errors import ConfigError, UnknownNameError
from linfit.scores.registry import register
from linfit.scores.validation import check_features

_GAUSSIAN_TYPES = ("spherical", "diagonal")


def _class_gaussians(f: np.ndarray, y: np.ndarray, c: int, gaussian_type: str, var_floor: float):
    """Per-class means ``[C, D]`` and floored variances ``[C, D]`` (constant across D if spherical)."""
    onehot = np.eye(c)[y]
    counts = onehot.sum(axis=0)[:, None]
    means = onehot.T @ f / counts
    variances = onehot.T @ (f - means[y]) ** 2 / counts  # centred first: no cancellation
    if gaussian_type == "spherical":
        variances = np.broadcast_to(variances.mean(axis=1, keepdims=True), means.shape)
    return means, np.maximum(variances, var_floor)


@register("gbc", needs=("features",), reference="Pándy et al. 2022, CVPR, arXiv:2111.12780", cost="forward")
def gbc(features, labels, *, gaussian_type: str = "spherical", var_floor: float = 1e-4) -> float:
    """Negative sum of pairwise Bhattacharyya coefficients between per-class Gaussians.

    Args:
      features: ``[N, D]`` penultimate features, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names, at least
        2 samples per class.
      gaussian_type: ``"spherical"`` or ``"diagonal"`` class covariances.
      var_floor: lower bound on every variance, > 0.

    Returns:
      GBC ≤ 0 as a Python ``float``; higher (closer to 0) is better.

    Shape:
      features ``[N, D]``, labels ``[N]`` → scalar.

    Raises:
      UnknownNameError: an unknown ``gaussian_type``; ConfigError: ``var_floor <= 0``; ShapeError,
      NonFiniteError, LabelError: features not a finite ``[N, D]`` matrix, labels not ``[N]`` in ``0..C-1``
      with 2 samples per class.

    References:
      Pándy et al. 2022 (CVPR, arXiv:2111.12780); formula, cited equations and the differences from the
      authors' code in the module docstring.
    """
    if gaussian_type not in _GAUSSIAN_TYPES:
        raise UnknownNameError(f"gaussian_type must be one of {_GAUSSIAN_TYPES}; got {gaussian_type!r}")
    if not var_floor > 0:
        raise ConfigError(f"var_floor must be > 0 (a zero variance gives log 0 and 0/0); got {var_floor}")
    f, y, c = check_features(features, labels, min_per_class=2)
    means, variances = _class_gaussians(f.astype(np.float64), y, c, gaussian_type, var_floor)
    log_var = np.log(variances)
    total = 0.0
    for k in range(c):  # row k against all classes: [C, D] temporaries instead of [C, C, D]
        avg = (variances[k] + variances) / 2
        bd = np.sum((means[k] - means) ** 2 / avg, axis=1) / 8 + np.sum(
            np.log(avg) - (log_var[k] + log_var) / 2, axis=1
        ) / 2
        bd[k] = np.inf  # exclude c = c'
        total += np.sum(np.exp(-bd))
    return -float(total)
