"""RSA: representational similarity between pre-trained features and a small target-trained probe.

Dwivedi & Roig, "Representation Similarity Analysis for Efficient Task Taxonomy & Transfer
Learning", CVPR 2019. Each representation gives a representational dissimilarity matrix (RDM)

    rdm(i, j) = 1 - corr(f(x_i), f(x_j))                       (Pearson over the feature axis)

and the score is the Spearman rank correlation between the upper triangles (i < j) of the RDM of the
pre-trained features and that of a small network trained on the target task (eqs. 9-11):

    S_RSA = Spearman(rdm_f, rdm_probe).

Training the probe network happens elsewhere; its penultimate features are an input here
(``"probe_features"`` in the score registry). ``rdm`` and ``rdm_spearman`` are shared with PARC.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from linfit.errors import ShapeError
from linfit.scores.registry import register
from linfit.scores.validation import check_labels, check_matrix


def rdm(x) -> np.ndarray:
    """Representational dissimilarity matrix ``1 - corrcoef`` of the rows of ``x``.

    Args:
      x: ``[N, D]`` with ``D >= 2``.

    Returns:
      ``[N, N]`` float64 with ``rdm[i, j] = 1 - pearson(x[i], x[j])``. A constant row has no defined
      correlation; it is given correlation 0 with every other row (dissimilarity 1) and 1 with itself.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ShapeError(f"an RDM needs [N, D] rows with D >= 2 entries; got shape {x.shape}")
    centred = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)
    corr = unit @ unit.T
    np.fill_diagonal(corr, 1.0)
    return 1.0 - corr


def rdm_spearman(rdm_a: np.ndarray, rdm_b: np.ndarray) -> float:
    """Spearman correlation of the strict upper triangles of two ``[N, N]`` RDMs (``N >= 3``).

    Ranks use the average rank for ties (so label RDMs with two values are handled); the result is
    the Pearson correlation of the ranks, in ``[-1, 1]``; 0 when either triangle is constant.
    """
    n = rdm_a.shape[0]
    if n < 3:
        raise ShapeError(f"a Spearman correlation of RDMs needs at least 3 samples; got N={n}")
    upper = np.triu_indices(n, k=1)
    ra = stats.rankdata(rdm_a[upper])
    rb = stats.rankdata(rdm_b[upper])
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / denom) if denom > 0 else 0.0


@register(
    "rsa",
    needs=("features", "probe_features"),
    reference="Dwivedi & Roig, Representation Similarity Analysis for Efficient Task Taxonomy "
    "& Transfer Learning, CVPR 2019",
    cost="probe-training",
)
def rsa(features, probe_features, labels) -> float:
    """RSA score: Spearman correlation between the feature RDM and the probe-network RDM.

    Args:
      features: ``[N, D]`` penultimate features of the pre-trained model, ``D >= 2``, any real numeric dtype
        (numpy or JAX); computed in float64.
      probe_features: ``[N, Dp]`` penultimate features of a small network trained on the target task,
        for the same N samples in the same order, ``Dp >= 2``, any real numeric dtype.
      labels: ``[N]`` target labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names
        (validated; the score itself does not read them).

    Returns:
      ``S_RSA`` in ``[-1, 1]`` as a Python float; higher means the pre-trained representation is
      organised more like the target-trained one.

    Raises:
      ShapeError: ``features`` or ``probe_features`` not 2-D or not numeric, with fewer than 2 columns, or with
        different row counts; labels not 1-D or not N long; ``N < 3``.
      NonFiniteError: ``features`` or ``probe_features`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).

    References:
      Dwivedi & Roig 2019 (CVPR); the RDMs and the Spearman correlation are eqs. (9)–(11) of Deshpande et al.
      2021 (arXiv:2102.00084), which uses RSA as a baseline.
    """
    f = check_matrix(features, "features")
    n = f.shape[0]
    p = check_matrix(probe_features, "probe_features", n=n)
    check_labels(labels, n=n)
    return rdm_spearman(rdm(f), rdm(p))
