"""Deterministic stratified subsampling: k-shot training sets and the scoring subset.

Each class ``c`` gets its own permutation of its sample indices, drawn from
``np.random.SeedSequence([seed, c])``; a k-shot subset takes the first ``k`` of it. Consequences:
the same seed always gives the same indices, subsets are nested (the 5-shot set is inside the
20-shot set for one seed), and a class's draw does not depend on the other classes.
"""

from __future__ import annotations

import numpy as np

from linfit.errors import ConfigError, DatasetError, LabelError, is_count


def _labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise LabelError(f"labels must be a 1-D integer array [N]; got shape {labels.shape}, dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise LabelError(f"labels must be >= 0; got minimum {labels.min()}")
    return labels


def kshot_indices(labels, k: int, *, seed: int, allow_fewer: bool = False) -> np.ndarray:
    """Indices of a stratified subset with ``k`` samples of every class present in ``labels``.

    Args:
      labels: ``[N]`` class labels, any integer dtype, ``>= 0`` (need not be contiguous: every value present is a
        class).
      k: samples per class (``k >= 1``).
      seed: integer seed >= 0; the result is a pure function of ``(labels, k, seed)``.
      allow_fewer: if True, a class with fewer than ``k`` samples contributes all of them; if False
        (default) that is a :class:`~linfit.errors.DatasetError`.

    Returns:
      ``[K]`` int64 indices into ``labels``, sorted ascending, ``K = sum_c min(k, n_c)`` (shape ``[0]`` for empty
      ``labels``).

    Raises:
      LabelError: ``labels`` not 1-D or not of an integer dtype; a negative label.
      ConfigError: ``k`` not a positive integer or ``seed`` not an integer ``>= 0`` (a ``bool`` is refused for
        either).
      DatasetError: without ``allow_fewer``, a class with fewer than ``k`` samples (the message lists them).
    """
    labels = _labels(labels)
    if not is_count(k):
        raise ConfigError(f"k must be a positive integer; got {k!r}")
    if not is_count(seed, 0):
        raise ConfigError(f"seed must be an integer >= 0 (it seeds numpy's SeedSequence); got {seed!r}")
    classes, counts = np.unique(labels, return_counts=True)
    short = {int(c): int(n) for c, n in zip(classes, counts) if n < k}
    if short and not allow_fewer:
        raise DatasetError(
            f"{k} samples per class were asked for but some classes have fewer "
            f"(class: count) {short}; pass allow_fewer=True to take all of them"
        )
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(c)]))
        chosen.append(rng.permutation(members)[:k])
    if not chosen:
        return np.zeros((0,), np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def scoring_subset(labels, *, per_class: int = 25, seed: int = 0) -> np.ndarray:
    """Indices of the images a model-selection score is computed on: at most ``per_class`` per class.

    Deshpande et al. 2021, Sec. 4: scores use "at most 25 images per class" of the target's
    *training* data. Pass the training labels (e.g. ``task.train.y``); the test split is never used
    for selection.

    Args:
      labels: ``[N]`` class labels, any integer dtype, ``>= 0``.
      per_class: the most samples taken from one class (``>= 1``); smaller classes give all of theirs.
      seed: integer seed >= 0 (:func:`kshot_indices`).

    Returns:
      ``[K]`` int64 sorted indices into ``labels``, ``K = sum_c min(per_class, n_c)``.

    Raises:
      LabelError: ``labels`` not 1-D or not of an integer dtype; a negative label.
      DatasetError: ``per_class`` not a positive integer, or ``seed`` not an integer ``>= 0``.
    """
    return kshot_indices(labels, per_class, seed=seed, allow_fewer=True)
