"""k-shot sampling and the scoring subset: determinism, stratification, nesting, errors."""

import numpy as np
import pytest

from linfit.data import kshot_indices, scoring_subset
from linfit.errors import ConfigError, DatasetError, LabelError

LABELS = np.repeat(np.arange(5), [30, 12, 40, 25, 7])[np.random.default_rng(0).permutation(114)]


def test_same_seed_same_indices_different_seed_different():
    a, b = kshot_indices(LABELS, 5, seed=3), kshot_indices(LABELS, 5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, kshot_indices(LABELS, 5, seed=4))


@pytest.mark.parametrize("k", [1, 5, 7])
def test_exactly_k_per_class_unique_sorted(k):
    idx = kshot_indices(LABELS, k, seed=0)
    np.testing.assert_array_equal(np.bincount(LABELS[idx], minlength=5), [k] * 5)
    assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)


def test_subsets_are_nested_across_k():
    assert set(kshot_indices(LABELS, 5, seed=1)) <= set(kshot_indices(LABELS, 7, seed=1))


def test_class_draw_independent_of_other_classes():
    kept = LABELS != 4  # removing a class leaves the draws of the others unchanged
    full = kshot_indices(LABELS, 5, seed=2)
    part = np.flatnonzero(kept)[kshot_indices(LABELS[kept], 5, seed=2)]
    np.testing.assert_array_equal(np.sort(full[LABELS[full] != 4]), part)


def test_k_larger_than_a_class():
    with pytest.raises(DatasetError, match=r"20 samples per class.*\{1: 12, 4: 7\}"):
        kshot_indices(LABELS, 20, seed=0)
    idx = kshot_indices(LABELS, 20, seed=0, allow_fewer=True)
    np.testing.assert_array_equal(np.bincount(LABELS[idx]), [20, 12, 20, 20, 7])


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k(k):
    with pytest.raises(ConfigError, match="positive integer"):
        kshot_indices(LABELS, k, seed=0)


@pytest.mark.parametrize("seed", [-1, 1.7, True])
def test_bad_seed(seed):  # -1 was numpy's ValueError, 1.7 silently drew seed 1
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        kshot_indices(LABELS, 2, seed=seed)


@pytest.mark.parametrize("labels", [np.zeros((3, 2), int), np.array([0.0, 1.0]), np.array([-1, 0])])
def test_bad_labels(labels):
    with pytest.raises(LabelError):
        kshot_indices(labels, 1, seed=0)


def test_scoring_subset_at_most_25_per_class():
    idx = scoring_subset(LABELS)
    counts = np.bincount(LABELS[idx], minlength=5)
    np.testing.assert_array_equal(counts, np.minimum(np.bincount(LABELS), 25))
    np.testing.assert_array_equal(idx, scoring_subset(LABELS, seed=0))
    assert np.bincount(LABELS[scoring_subset(LABELS, per_class=3, seed=1)]).max() == 3
