"""PARC: Pairwise Annotation Representation Comparison (Bolya et al., NeurIPS 2021).

"Scalable Diverse Model Selection for Accessible Transfer Learning". The features are reduced to
``pca_dim`` principal components and standardised per dimension; the score is the Spearman
correlation between the upper triangles of two RDMs (see ``linfit.scores.rsa.rdm``):

    PARC = Spearman(1 - corrcoef(F_pca), 1 - corrcoef(onehot(y)))

i.e. how far samples that share a label are represented alike. The public reference multiplies the
correlation by 100; linfit returns the plain correlation in ``[-1, 1]`` (a positive rescaling changes
no ranking). The reference uses randomised PCA; linfit uses the exact SVD. Row-wise correlations are
not invariant to flipping the sign of a principal axis, so PARC depends on the PCA sign convention;
linfit uses sklearn's (see ``pca_reduce``).

The label RDM is computed in closed form (0 within a class, ``C / (C - 1)`` across) so that its ties
are exact: a floating-point ``corrcoef`` of one-hot rows breaks them by round-off, which changes the
ranks. ``pca_reduce`` (exact PCA to a number of components or to a fraction of the variance) is
shared with NLEEP.
"""

from __future__ import annotations

import numpy as np

from linfit.errors import ConfigError, InputValueError, ShapeError
from linfit.scores.registry import register
from linfit.scores.rsa import rdm, rdm_spearman
from linfit.scores.spectrum import significant
from linfit.scores.validation import check_features


def pca_reduce(features, n_components: int | float | None) -> np.ndarray:
    """Project centred features onto their leading principal components (exact SVD, float64).

    Components whose variance is numerically zero (energy ``s²`` at or below ``eps · max(N, D) · s_max²``,
    :func:`linfit.scores.spectrum.significant`) are never kept: they are round-off (e.g. the direction the
    centring removes when N ≤ D, or a duplicated feature column), and a caller that standardises the
    components (PARC) would scale that round-off to unit variance.

    Args:
      features: ``[N, D]``.
      n_components: an ``int`` k keeps ``min(k, r)`` components, r the number of numerically non-zero ones
        (r ≤ min(N - 1, D)); a ``float`` in ``(0, 1]`` keeps the fewest components whose explained-variance
        ratio sums to at least that fraction; ``None`` returns the centred features unchanged.

    Returns:
      ``[N, k]`` principal-component scores; each principal axis is signed so that its
      largest-magnitude loading is positive (sklearn's convention; row-wise correlations such as
      PARC's depend on these signs).

    Raises:
      InputValueError: the features have zero variance.
      ConfigError: ``n_components`` neither an int ``>= 1`` nor a float in ``(0, 1]``.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    if n_components is None:
        return x
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    # Fix each axis' sign: its largest-magnitude loading is positive (sklearn's PCA convention).
    vt = vt * np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])[:, None]
    energy = s**2
    rank = int(np.count_nonzero(significant(energy, *x.shape)))  # s is descending: the first `rank` axes
    if rank == 0:
        raise InputValueError("features have zero variance (every row the same), so PCA is undefined; check the layer "
                              "they come from")
    energy = energy[:rank]
    if isinstance(n_components, (int, np.integer)) and not isinstance(n_components, bool):
        if n_components < 1:
            raise ConfigError(f"n_components must be >= 1; got {n_components}")
        k = min(int(n_components), rank)
    elif isinstance(n_components, (float, np.floating)) and 0.0 < n_components <= 1.0:
        ratio = np.cumsum(energy) / energy.sum()
        k = int(np.searchsorted(ratio, n_components - 1e-12) + 1)
        k = min(k, rank)
    else:
        raise ConfigError(f"n_components must be an int >= 1 (components) or a float in (0, 1] (a share of the "
                          f"variance); got {n_components!r}")
    return x @ vt[:k].T


@register(
    "parc",
    needs=("features",),
    reference="Bolya et al., Scalable Diverse Model Selection for Accessible Transfer Learning, "
    "NeurIPS 2021",
    cost="forward",
)
def parc(features, labels, *, pca_dim: int = 32) -> float:
    """PARC score of ``features [N, D]`` for ``labels [N]`` (``N >= 3``).

    Args:
      features: ``[N, D]`` penultimate features, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names, ``C >= 2``.
      pca_dim: number of principal components kept (``min(pca_dim, r)`` with r the numerically non-zero
        ones, see ``pca_reduce``; at least 2 must remain). Each kept component is standardised to unit
        variance, so a numerically null one would turn round-off into a full-weight random axis.

    Returns:
      The Spearman correlation of the two RDMs' upper triangles, in ``[-1, 1]`` (not x100), as a Python ``float``.

    Raises:
      ConfigError: ``pca_dim`` is not an int >= 1, a float in ``(0, 1]`` or ``None`` (``pca_reduce``).
      ShapeError: ``features`` not 2-D or not numeric; labels not 1-D or not N long; fewer than 2 principal
        components remain, or ``N < 3``.
      InputValueError: the features have zero variance.
      NonFiniteError: ``features`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).

    References:
      Bolya et al. 2021 (NeurIPS); formula and the differences from the public code in the module docstring.
    """
    f, y, c = check_features(features, labels)
    z = pca_reduce(f, pca_dim)
    if z.shape[1] < 2:
        raise ShapeError(f"PARC needs at least 2 PCA dimensions; got {z.shape[1]} (pca_dim={pca_dim})")
    std = z.std(axis=0)
    z = z / np.where(std > 0, std, 1.0)
    # rdm(onehot(y)) in closed form (exact ties for the ranks): 0 within a class, C/(C-1) across.
    label_rdm = np.where(y[:, None] == y[None, :], 0.0, c / (c - 1.0))
    return rdm_spearman(rdm(z), label_rdm)
