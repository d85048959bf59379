"""Held-out probe accuracies: a multinomial logistic-regression probe and k-nearest neighbours.

Both split the given (training-side) samples with ``stratified_split`` into a fitting part and a
held-out part of about ``holdout`` of every class, fit on the first part, and return the accuracy on
the held-out part (higher is better). They are the cheap "train a head and look" references that
every transferability score tries to approximate.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.linear_model import LogisticRegression

from linfit.errors import ConfigError
from linfit.scores.registry import register
from linfit.scores.spectrum import significant
from linfit.scores.validation import check_features


def stratified_split(labels, *, holdout: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices per class into fitting and held-out parts.

    Args:
      labels: ``[N]`` integer labels (validated by the callers; every class needs >= 2 samples).
      holdout: fraction of each class held out: ``round(holdout * N_c)`` clipped to ``[1, N_c - 1]``.
      seed: seed of the numpy ``Generator`` that shuffles all samples once; each class holds out its
        first samples in that order, so renaming the classes does not change the split.

    Returns:
      ``(train_idx, test_idx)``, sorted disjoint int arrays covering ``0..N-1``.
    """
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout must lie in (0, 1); got {holdout}")
    y = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(y.size)  # one shuffle of all samples
    train, test = [], []
    for c in np.unique(y):
        idx = order[y[order] == c]  # class c in shuffled order: the split ignores label names
        n_test = int(np.clip(round(holdout * idx.size), 1, idx.size - 1))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@register(
    "linear_probe",
    needs=("features",),
    reference="held-out accuracy of a multinomial logistic-regression probe on frozen features",
    cost="forward",
)
def linear_probe(features, labels, *, holdout: float = 0.3, seed: int = 0, l2: float = 1e-3) -> float:
    """Held-out accuracy of an L2-regularised multinomial logistic regression on ``features [N, D]``.

    The features are standardised with the fitting part's mean and standard deviation (columns whose
    variance is numerically zero, :func:`linfit.scores.spectrum.significant`, are only centred); the probe
    minimises ``mean_i CE(W f_i + b, y_i) + (l2 / 2) ||W||^2`` (sklearn ``LogisticRegression``, lbfgs,
    ``C = 1 / (l2 * N_fit)``).

    Args:
      features: ``[N, D]``, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names, every
        class with >= 2 samples.
      holdout, seed: see ``stratified_split``.
      l2: weight-decay strength of the mean loss, > 0.

    Returns:
      Accuracy in ``[0, 1]`` on the held-out samples, as a Python ``float``.

    Raises:
      ConfigError: ``l2`` not positive (or NaN), or ``holdout`` not in ``(0, 1)``.
      ShapeError: ``features`` not 2-D or not numeric; labels not 1-D or not N long.
      NonFiniteError: ``features`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``); a class with fewer than 2 samples.

    References:
      No paper: a held-out-accuracy reference (module docstring), registered with a description, not a citation.
    """
    if not l2 > 0:  # NaN too
        raise ConfigError(f"l2 must be positive; got {l2}")
    f, y, _ = check_features(features, labels, min_per_class=2)
    train, test = stratified_split(y, holdout=holdout, seed=seed)
    x = np.asarray(f, dtype=np.float64)
    mean, var = x[train].mean(axis=0), x[train].var(axis=0)
    varying = significant(var, train.size, x.shape[1])  # numerically constant columns are not scaled up
    x = (x - mean) / np.where(varying, np.sqrt(np.where(varying, var, 1.0)), 1.0)
    model = LogisticRegression(C=1.0 / (l2 * train.size), max_iter=2000)
    model.fit(x[train], y[train])
    return float(np.mean(model.predict(x[test]) == y[test]))


def _knn_predict(distances: np.ndarray, train_labels: np.ndarray, k: int) -> np.ndarray:
    """Majority vote over the ``k`` nearest (stable order); a tie goes to the tied class whose member
    ranks nearest. ``distances [M, N_fit]`` -> predictions ``[M]``."""
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    neighbour_labels = train_labels[order]  # [M, k]
    classes = np.arange(int(train_labels.max()) + 1)
    votes = np.sum(neighbour_labels[:, :, None] == classes, axis=1)  # [M, C]
    tied = votes == votes.max(axis=1, keepdims=True)  # [M, C]
    first_tied = np.argmax(tied[np.arange(len(order))[:, None], neighbour_labels], axis=1)
    return neighbour_labels[np.arange(len(order)), first_tied]


@register(
    "knn",
    needs=("features",),
    reference="held-out accuracy of a k-nearest-neighbour classifier on frozen features",
    cost="forward",
)
def knn(features, labels, *, k: int = 5, holdout: float = 0.3, seed: int = 0) -> float:
    """Held-out accuracy of Euclidean k-nearest-neighbour classification of ``features [N, D]``.

    Args:
      features: ``[N, D]``, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names, every
        class with >= 2 samples.
      k: neighbours that vote, >= 1 (clipped to the size of the fitting part).
      holdout, seed: see ``stratified_split``.

    Returns:
      Accuracy in ``[0, 1]`` on the held-out samples, as a Python ``float``.

    Raises:
      ConfigError: ``k < 1``, or ``holdout`` not in ``(0, 1)``.
      ShapeError, NonFiniteError, LabelError: as :func:`linear_probe`.

    References:
      No paper: a held-out-accuracy reference (module docstring), registered with a description, not a citation.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1; got {k}")
    f, y, _ = check_features(features, labels, min_per_class=2)
    train, test = stratified_split(y, holdout=holdout, seed=seed)
    x = np.asarray(f, dtype=np.float64)
    predictions = _knn_predict(cdist(x[test], x[train]), y[train], min(k, train.size))
    return float(np.mean(predictions == y[test]))
