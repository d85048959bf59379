"""Ranking metrics against hand-computed cases and brute-force enumeration."""

import itertools

import numpy as np
import pytest
from scipy import stats

from linfit.bench.metrics import ranking_metrics, top_k_gain, trials_to_best
from linfit.errors import NonFiniteError, ShapeError


def _brute_force_trials(scores, accuracies):
    """Average, over every order consistent with the scores, of the 1-based position of the first best model."""
    scores, accuracies = np.asarray(scores), np.asarray(accuracies)
    best = accuracies == accuracies.max()
    positions = []
    for perm in itertools.permutations(range(len(scores))):
        if all(scores[perm[i]] >= scores[perm[i + 1]] for i in range(len(perm) - 1)):
            positions.append(next(i + 1 for i, m in enumerate(perm) if best[m]))
    return np.mean(positions)


def test_trials_to_best_hand_cases():
    assert trials_to_best([4, 3, 2, 1], [10, 5, 3, 1]) == 1
    assert trials_to_best([4, 3, 2, 1], [1, 3, 5, 10]) == 4  # reversed ranking: the best model comes last
    assert trials_to_best([1, 1, 1, 1], [1, 2, 3, 4]) == 2.5  # constant score = random: (M + 1) / 2


@pytest.mark.parametrize("seed", range(6))
def test_trials_to_best_matches_enumeration_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=6).astype(float)
    accuracies = rng.integers(0, 3, size=6).astype(float)
    assert trials_to_best(scores, accuracies) == pytest.approx(_brute_force_trials(scores, accuracies))


def test_ranking_metrics_perfect_and_reversed():
    acc = np.array([70.0, 80.0, 75.0, 60.0, 90.0])
    perfect = ranking_metrics(acc * 2 + 1, acc, reference_accuracy=75.0)
    assert perfect.spearman == pytest.approx(1) and perfect.kendall == pytest.approx(1)
    assert perfect.weighted_tau == pytest.approx(1) and perfect.pearson == pytest.approx(1)
    assert perfect.trials_to_best == 1 and perfect.regret == 0 and perfect.relative_top_accuracy == 1
    assert perfect.top1_gain == 15 and perfect.top3_gain == 15
    reversed_ = ranking_metrics(-acc, acc, reference_accuracy=75.0)
    assert reversed_.spearman == pytest.approx(-1) and reversed_.trials_to_best == 5
    assert reversed_.top1_gain == -15 and reversed_.top3_gain == 0  # top-3 of reversed: 60, 70, 75
    assert reversed_.regret == 30 and reversed_.relative_top_accuracy == pytest.approx(60 / 90)


def test_ranking_metrics_match_scipy():
    rng = np.random.default_rng(0)
    scores, acc = rng.normal(size=9), rng.normal(size=9)
    m = ranking_metrics(scores, acc, reference_accuracy=0.0)
    assert m.spearman == pytest.approx(stats.spearmanr(scores, acc)[0])
    assert m.kendall == pytest.approx(stats.kendalltau(scores, acc)[0])
    assert m.weighted_tau == pytest.approx(stats.weightedtau(scores, acc)[0])


def test_top_k_gain_and_constant_scores():
    assert top_k_gain([0.9, 0.1, 0.5], [50, 90, 70], reference_accuracy=60, k=2) == 10
    m = ranking_metrics([1, 1, 1], [1, 2, 3], reference_accuracy=2)
    assert m.spearman == 0 and m.trials_to_best == 2
    two = ranking_metrics([0.2, 0.1], [60, 70], reference_accuracy=65)  # a zoo of two models has no top 3
    assert two.top1_gain == -5 and np.isnan(two.top3_gain)


def test_bad_inputs():
    with pytest.raises(ShapeError):
        ranking_metrics([1, 2], [1, 2, 3], 0)
    with pytest.raises(ShapeError):
        ranking_metrics([1], [1], 0)
    with pytest.raises(NonFiniteError):
        ranking_metrics([1, np.nan], [1, 2], 0)
