"""Ranking metrics: how well a score's ordering of a model zoo predicts fine-tuned accuracy.

For one target task there are M candidate models with a score ``s [M]`` each (higher = predicted better) and a
fine-tuned test accuracy ``a [M]`` each. The paper (Deshpande et al. 2021, §4 "Evaluation metrics") uses

* the Spearman rank correlation between ``s`` and ``a`` (Fig. 6b);
* trials-to-best: how many models one fine-tunes, in score order, until the single best model is reached
  (Fig. 6a);
* top-k gain: the best accuracy among the k top-scored models minus the accuracy of a reference ("generalist",
  the paper's ImageNet expert) model (Figs. 4-5).

The field additionally reports Kendall τ, weighted Kendall τ (``scipy.stats.weightedtau``, hyperbolic weights
emphasising the top of the ranking; SFDA, LogME), Pearson, regret and relative top accuracy (stable_transfer).

Ties. Trials-to-best is the expectation over a uniformly random order among equally scored models: a constant
score therefore needs (M + 1)/2 trials, like the Random baseline. Top-k selections break score ties by the order
in which the models were given (a stable sort), which the docstrings state.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from linfit.errors import NonFiniteError, ShapeError


def _check_pair(scores, accuracies) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(accuracies, dtype=np.float64)
    if s.ndim != 1 or a.ndim != 1 or s.shape != a.shape:
        raise ShapeError(f"scores and accuracies must both be [M] vectors; got {s.shape} and {a.shape}")
    if s.size < 2:
        raise ShapeError(f"ranking metrics need at least 2 models; got M={s.size}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(a))):
        raise NonFiniteError("scores and accuracies must be finite (a score returned NaN or inf?)")
    return s, a


def score_order(scores) -> np.ndarray:
    """Model indices by decreasing score; ties keep the given order (stable). ``[M] -> [M]``."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def trials_to_best(scores, accuracies) -> float:
    """Expected number of models fine-tuned in decreasing-score order until a best model is found.

    A "best" model is any model with the maximum accuracy. Within a group of equally scored models the order is
    uniformly random: if the first group containing a best model starts after ``p`` models, has ``g`` members and
    ``b`` of them are best, the expected count is ``p + (g + 1) / (b + 1)`` (the expected position of the first
    success in a random permutation). Returns a value in ``[1, M]``.
    """
    s, a = _check_pair(scores, accuracies)
    best = a == a.max()
    before = 0
    for value in np.unique(s)[::-1]:
        group = s == value
        g, b = int(group.sum()), int((group & best).sum())
        if b:
            return before + (g + 1) / (b + 1)
        before += g
    raise AssertionError("unreachable: some model has the maximum accuracy")


def top_k_accuracy(scores, accuracies, k: int) -> float:
    """Best accuracy among the ``k`` top-scored models (the paper fine-tunes the top-3 and keeps the best)."""
    s, a = _check_pair(scores, accuracies)
    if not 1 <= k <= s.size:
        raise ShapeError(f"k must lie in 1..M={s.size}; got {k}")
    return float(a[score_order(s)[:k]].max())


def top_k_gain(scores, accuracies, reference_accuracy: float, k: int) -> float:
    """``top_k_accuracy - reference_accuracy``: the paper's gain over the generalist (ImageNet) expert."""
    return top_k_accuracy(scores, accuracies, k) - float(reference_accuracy)


@dataclasses.dataclass(frozen=True)
class RankingMetrics:
    """All ranking metrics of one score on one task (accuracies in the units given, e.g. percent)."""

    spearman: float
    pearson: float
    kendall: float
    weighted_tau: float
    trials_to_best: float
    top1_gain: float
    top3_gain: float
    regret: float
    relative_top_accuracy: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _correlation(fn, s: np.ndarray, a: np.ndarray) -> float:
    """A correlation that is 0 (no information) when either side is constant, instead of NaN."""
    if np.ptp(s) == 0 or np.ptp(a) == 0:
        return 0.0
    return float(fn(s, a)[0])


def ranking_metrics(scores, accuracies, reference_accuracy: float) -> RankingMetrics:
    """Every ranking metric for one task.

    Args:
      scores: ``[M]`` score per model, higher = predicted better.
      accuracies: ``[M]`` fine-tuned test accuracy per model.
      reference_accuracy: accuracy of the reference (generalist) model for the gains.

    Returns:
      ``RankingMetrics``: Spearman ρ, Pearson r, Kendall τ-b, weighted τ (``scipy.stats.weightedtau(scores,
      accuracies)``, the field's standard), expected trials-to-best, top-1/top-3 gain over the reference,
      regret (best accuracy minus the top-1 pick's) and relative top accuracy (top-1 pick / best).
      Correlations with a constant side are reported as 0; the top-3 gain is NaN when M < 3 (there is no
      top 3; ``linfit.bench.stats`` leaves k = 3 out for such zoos too).

    Raises:
      ShapeError: ``scores`` and ``accuracies`` are not ``[M]`` vectors of one length M >= 2.
      NonFiniteError: a NaN or infinite score or accuracy.
    """
    s, a = _check_pair(scores, accuracies)
    top1 = top_k_accuracy(s, a, 1)
    return RankingMetrics(
        spearman=_correlation(stats.spearmanr, s, a),
        pearson=_correlation(stats.pearsonr, s, a),
        kendall=_correlation(stats.kendalltau, s, a),
        weighted_tau=_correlation(stats.weightedtau, s, a),
        trials_to_best=trials_to_best(s, a),
        top1_gain=top1 - float(reference_accuracy),
        top3_gain=top_k_gain(s, a, reference_accuracy, 3) if s.size >= 3 else float("nan"),
        regret=float(a.max()) - top1,
        relative_top_accuracy=top1 / float(a.max()) if a.max() != 0 else 0.0,
    )
