"""NLEEP: Gaussian-mixture LEEP (Li et al., CVPR 2021, "Ranking Neural Checkpoints").

LEEP (Nguyen et al., ICML 2020) needs a source classifier's probabilities ``theta(x)_z``. NLEEP
replaces them by the posteriors of a Gaussian mixture fitted to the (PCA-reduced) target features,
so it needs no source head:

1. ``Z = PCA(F)`` keeping ``pca_variance`` of the variance (the 80% of Shao et al.'s NLEEP; ``None``
   skips the PCA, as in stable_transfer);
2. a full-covariance ``GaussianMixture`` with ``K = components_per_class * C`` components on ``Z``
   (sklearn, EM, seeded); ``theta(x_i)_z = p(z | x_i)``;
3. LEEP (``linfit.scores.leep.leep``) on those posteriors:
   ``P(y, z) = (1/N) sum_{i: y_i = y} theta(x_i)_z``, ``P(y | z) = P(y, z) / sum_y P(y, z)``,
   ``NLEEP = (1/N) sum_i log sum_z P(y_i | z) theta(x_i)_z``.

The log is kept as in the LEEP and NLEEP papers (SFDA's copy drops it). Values are ``<= 0``, higher
is better.
"""

from __future__ import annotations

import numbers

from sklearn.mixture import GaussianMixture

from linfit.errors import ConfigError, LabelError
from linfit.scores.leep import leep
from linfit.scores.parc import pca_reduce
from linfit.scores.registry import register
from linfit.scores.validation import check_features

@register(
    "nleep",
    needs=("features",),
    reference="Li et al., Ranking Neural Checkpoints, CVPR 2021",
    cost="forward",
)
def nleep(
    features,
    labels,
    *,
    components_per_class: int = 5,
    pca_variance: float | None = 0.8,
    seed: int = 0,
) -> float:
    """NLEEP score of ``features [N, D]`` for ``labels [N]``.

    Args:
      features: ``[N, D]`` penultimate features, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.
      components_per_class: mixture components per target class (``K = components_per_class * C``).
      pca_variance: fraction of the variance the PCA keeps, in ``(0, 1]``, or ``None`` for no PCA.
      seed: ``random_state`` of the mixture's k-means initialisation.

    Returns:
      The mean log expected empirical prediction (``<= 0``) as a Python ``float``.

    Raises:
      ConfigError: ``components_per_class`` not an integer >= 1, or ``pca_variance`` not ``None`` and not a real
        number in ``(0, 1]``.
      ShapeError: ``features`` not 2-D or not numeric; labels not 1-D or not N long.
      InputValueError: the features have zero variance (when ``pca_variance`` is not ``None``).
      NonFiniteError: ``features`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``); fewer samples than mixture components (``N < K``).

    References:
      Li et al. 2021 (CVPR, "Ranking Neural Checkpoints"), with LEEP of Nguyen et al. 2020; steps in the module
      docstring.
    """
    if isinstance(components_per_class, bool) or not isinstance(components_per_class, numbers.Integral) or (
            components_per_class < 1):
        raise ConfigError(f"components_per_class must be an integer >= 1; got {components_per_class!r}")
    f, y, c = check_features(features, labels)
    k = components_per_class * c
    if f.shape[0] < k:
        raise LabelError(
            f"NLEEP fits {components_per_class}*C={k} mixture components and needs at least that many "
            f"samples; got N={f.shape[0]}"
        )
    if pca_variance is not None:
        if isinstance(pca_variance, bool) or not isinstance(pca_variance, numbers.Real) or not (
                0.0 < pca_variance <= 1.0):
            raise ConfigError(f"pca_variance must be a share of the variance in (0, 1], or None; got {pca_variance!r}")
        pca_variance = float(pca_variance)  # 1 means all of the variance, not one component
    z = pca_reduce(f, pca_variance)
    gmm = GaussianMixture(n_components=k, covariance_type="full", random_state=seed).fit(z)
    return leep(gmm.predict_proba(z), y)
