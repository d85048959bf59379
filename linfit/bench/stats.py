"""Uncertainty of the benchmark's task-averaged ranking metrics: bootstrap intervals, paired differences, the
exact expectation of the Random baseline, and trivial baseline scores.

The benchmark reports, per score, the mean over target tasks of a ranking metric (``linfit.bench.metrics``):
Spearman ρ, weighted τ, trials-to-best and top-k gain over the reference model. Its ground truth is noisy: each
task has one (or a few) fine-tuning seeds and a test set of a few hundred images, and there are few tasks. This
module says how much of a difference between two scores that noise can produce.

Resampling scheme (``bootstrap``). The data of task ``t`` are its scores ``[S, M]`` (S score names, M models),
the index of its reference model, and its ground truth: per-image test correctness ``[M, R, I_t]`` (R fine-tuning
seeds, I_t test images), whose mean over seeds and images is a model's test accuracy (in percent, the store's
unit). One bootstrap replicate

1. draws T tasks with replacement from the T tasks (``resample_tasks=True``), so that the interval also covers
   "which tasks happened to be in the benchmark". Tasks that share a ``TaskData.cluster`` (the k-shot draws of one
   target task: they share its test set and its classes) are drawn together: C clusters are drawn with replacement
   from the C clusters and every task of a drawn cluster enters the replicate with weight 1/(its cluster's size)
   (a cluster bootstrap; Davison & Hinkley 1997, §3.8), so that correlated tasks do not count as independent ones
   and a target task with three draws weighs as much as one with a single draw;
2. (``resample_images=True``) for every drawn task (each copy of a task drawn twice independently) draws I_t test
   images with replacement and R seeds with replacement. The same image indices and the same seeds are used for
   every model of the task (a *paired* resample): models are evaluated on one shared test set, so easy and hard
   images move all accuracies together, and only that shared test set's sampling noise is represented. The tasks
   of one cluster whose per-image data have the same number of images are taken to share their test set (the
   k-shot draws of a target task do): their images are drawn with the same indices, their seeds separately;
3. recomputes every model's accuracy from the drawn images and seeds, every metric of every score on the task
   from these accuracies, and averages each metric over the drawn clusters, a cluster's value being the mean over
   its tasks.

Held fixed: the scores (they are computed on a scoring subset drawn from the training split, independent of the
test set; their own sampling noise would need recomputing them and is *not* in the intervals), the reference
model, the models, and the ranking metrics' definitions (``linfit.bench.metrics``, same tie rules).

Which levels to resample. Each task's observed metric already carries its test-set and seed noise, so the
spread of the observed per-task metrics over tasks contains that noise once: resampling tasks alone
(``resample_images=False``) is the two-stage bootstrap that mimics the data (Davison & Hinkley 1997, §3.8), the
interval for the mean over a new draw of tasks measured the same way. Resampling images as well adds the test-set
noise a second time, which for a linear metric only widens the interval, but for a rank correlation of nearly
tied accuracies also *attenuates* it: the replicates' Spearman sits closer to 0 than the observed one, and the
percentile interval with it (on the embedded evidence store's first three 20-shot task groups, near their accuracy
ceiling, the replicates' mean was 0.05–0.13 closer to 0 for 17 of 18 scores, about the interval's half-width).
``resample_tasks=False, resample_images=True`` holds the T given tasks fixed and asks only what test-set (and
seed) noise does to the numbers on them: the only scheme with meaning for very few tasks, and attenuated in the
same way. With one seed
(R = 1) the seed resample is the identity. A task whose ground truth is given as plain accuracies ``[M]`` (no
per-image data) is held fixed in step 2: only task resampling then moves it, and the result's ``scheme`` says
so.

Intervals are percentile bootstrap intervals (Efron & Tibshirani 1993, ch. 13) at ``confidence`` from ``replicates``
replicates; when tasks are resampled they are *expanded* percentile intervals (Hesterberg 2015, The American
Statistician 69(4)): the percentile interval of a mean of T values is as wide as z·s·sqrt((T−1)/T) / √T, a normal
interval with the plug-in deviation, which covers far less than its nominal level for few tasks (≈ 85 % for a nominal
95 % at T = 5, ≈ 93 % at T = 20), so the quantiles are taken at the level α' whose normal quantile is
sqrt(T/(T−1))·t_{T−1}, the t interval's (with clusters, T is the number of clusters C). ``stderr`` is the replicates'
standard deviation. A paired difference between two scores (``difference``) uses the same replicates for both, so that
the task and image draws shared by the two scores cancel.

The Random baseline enters as its exact expectation over a uniformly random ordering of the models (row
``RANDOM``), recomputed on every replicate: Spearman 0, trials-to-best (M + 1)/(b + 1), top-k gain from order
statistics; weighted τ is exactly 0 without tied accuracies, and with ties (where it is not 0 and has no closed
form we know) the average over ``random_orderings`` fixed random orderings (Monte Carlo; the result's ``scheme``
states the largest per-task standard error), or over all M! orderings when there are no more of them.

All computations are numpy, vectorised over replicates: 2000 replicates × 8 tasks × 17 models × 500 images ×
16 scores take 0.7 s of one CPU core, 3.7 s with the Random row (measured on the development machine, one BLAS
thread).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from linfit.bench.metrics import score_order
from linfit.errors import ConfigError, NonFiniteError, ShapeError

RANDOM = "random (expectation)"
"""Name of the row holding the Random baseline's exact expectation in a ``BootstrapResult``."""

# --------------------------------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True, eq=False)
class TaskData:
    """One target task's scores and ground truth.

    Attributes:
      name: the task's name (used in messages and in ``BootstrapResult.scheme``).
      scores: ``[S, M]`` float, score ``s`` of model ``m`` (higher = predicted better); rows follow the
        ``score_names`` given to ``bootstrap``.
      reference: index in ``0..M-1`` of the reference (generalist) model the top-k gains are measured against,
        or ``None`` for a zoo without one: the gains are then over the mean accuracy of the M models (what a
        uniformly random pick gets on average).
      correct: ``[M, R, I]`` bool (or 0/1), whether model ``m`` fine-tuned with seed ``r`` classifies test image
        ``i`` correctly; ``None`` when only accuracies are known.
      accuracies: ``[M]`` float, test accuracy in percent; used only when ``correct`` is ``None``.
      cluster: the label of the tasks that ``bootstrap`` resamples together (e.g. the target task whose k-shot
        draws these are); ``None``: the task is a cluster of its own.

    Raises:
      ShapeError: inconsistent shapes, fewer than 2 models, neither or both of ``correct``/``accuracies``, or a
        reference index outside ``0..M-1``.
      NonFiniteError: NaN or inf in ``scores`` or ``accuracies``.
      ConfigError: ``correct`` holds values other than 0 and 1.
    """

    name: str
    scores: np.ndarray
    reference: int | None
    correct: np.ndarray | None = None
    accuracies: np.ndarray | None = None
    cluster: str | None = None

    def __post_init__(self):
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] < 2:
            raise ShapeError(f"task {self.name!r}: scores must be [S, M] with M >= 2 models; got {scores.shape}")
        if not np.all(np.isfinite(scores)):
            raise NonFiniteError(f"task {self.name!r}: scores must be finite (a score returned NaN or inf?)")
        m = scores.shape[1]
        if (self.correct is None) == (self.accuracies is None):
            raise ShapeError(f"task {self.name!r}: give exactly one of correct [M, R, I] and accuracies [M]")
        if self.correct is not None:
            correct = np.asarray(self.correct)
            if correct.ndim != 3 or correct.shape[0] != m or 0 in correct.shape:
                raise ShapeError(f"task {self.name!r}: correct must be [M={m}, R, I] with R, I >= 1; "
                                 f"got {correct.shape}")
            if correct.dtype != bool and not np.all((correct == 0) | (correct == 1)):
                raise ConfigError(f"task {self.name!r}: correct must hold 0/1 (or bool) per image")
            object.__setattr__(self, "correct", correct.astype(bool))
        else:
            accuracies = np.asarray(self.accuracies, dtype=np.float64)
            if accuracies.shape != (m,):
                raise ShapeError(f"task {self.name!r}: accuracies must be [M={m}]; got {accuracies.shape}")
            if not np.all(np.isfinite(accuracies)):
                raise NonFiniteError(f"task {self.name!r}: accuracies must be finite")
            object.__setattr__(self, "accuracies", accuracies)
        if self.reference is not None:
            if not 0 <= int(self.reference) < m:
                raise ShapeError(f"task {self.name!r}: reference must be a model index in 0..{m - 1} or None; "
                                 f"got {self.reference}")
            object.__setattr__(self, "reference", int(self.reference))
        object.__setattr__(self, "scores", scores)

    @property
    def accuracy(self) -> np.ndarray:
        """``[M]`` observed test accuracy in percent (mean over seeds and images of ``correct``)."""
        if self.correct is None:
            return self.accuracies
        return 100.0 * self.correct.mean(axis=(1, 2))


# ----------------------------------------------------------------------------- vectorised ranking metrics
# Each takes scores [S, M] and accuracies [N, M] (N replicates) and returns [N, S]; each agrees with
# linfit.bench.metrics.ranking_metrics on every (s, n) pair, ties included.


def _spearman(scores: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Pearson correlation of average ranks; 0 when a side is constant."""
    rs = sps.rankdata(scores, axis=-1)
    ra = sps.rankdata(acc, axis=-1)
    rs -= rs.mean(-1, keepdims=True)
    ra -= ra.mean(-1, keepdims=True)
    den = np.sqrt((ra**2).sum(-1))[:, None] * np.sqrt((rs**2).sum(-1))[None, :]
    num = ra @ rs.T
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _lexicographic_weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Hyperbolic weights ``1 / (r + 1)`` of the rank r in decreasing lexicographic order of (x, y), full ties in
    decreasing index order, as ``scipy.stats.weightedtau(x, y, rank=None)``. ``x, y [..., M] -> [..., M]``."""
    order = np.lexsort((y, x), axis=-1)[..., ::-1]
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(x.shape[-1]), order.shape), axis=-1)
    return 1.0 / (rank + 1.0)


def _weighted_tau(scores: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """``scipy.stats.weightedtau(score, accuracy)``: the additive hyperbolic weighted τ of Vigna ("A weighted
    correlation index for rankings with ties", WWW 2015), the mean of the
    values ranked by (score, accuracy) and by (accuracy, score); 0 when a side is constant.

    With pair weights ``w_i + w_j`` and ``σx_ij = sign(x_i - x_j)``, the sums over pairs reduce to sums over
    models: ``Σ_ij (w_i + w_j) σx_ij σy_ij = 2 Σ_i w_i c_i`` with ``c_i = Σ_j σx_ij σy_ij``, and likewise the
    untied-pair weights with ``Σ_j [x_i != x_j]``; only the weights depend on which ranking is used."""
    sx = np.sign(scores[:, :, None] - scores[:, None, :])  # [S, M, M]
    sy = np.sign(acc[:, :, None] - acc[:, None, :])  # [N, M, M]
    concordance = np.matmul(sx.transpose(1, 0, 2), sy.transpose(1, 2, 0)).transpose(2, 1, 0)  # [N, S, M]
    untied_x = (sx != 0).sum(-1)[None, :, :]  # [1, S, M]
    untied_y = (sy != 0).sum(-1)[:, None, :]  # [N, 1, M]
    x = np.broadcast_to(scores[None, :, :], concordance.shape)
    y = np.broadcast_to(acc[:, None, :], concordance.shape)
    tau = np.zeros(concordance.shape[:2])
    for weight in (_lexicographic_weights(x, y), _lexicographic_weights(y, x)):
        num = (weight * concordance).sum(-1)
        den = np.sqrt((weight * untied_x).sum(-1) * (weight * untied_y).sum(-1))
        tau += np.divide(num, den, out=np.zeros_like(num), where=den > 0) / 2
    return tau


def _trials_to_best(scores: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Expected trials until a best model, random order within equal scores (``metrics.trials_to_best``)."""
    best = acc == acc.max(-1, keepdims=True)  # [N, M]
    same = scores[:, :, None] == scores[:, None, :]  # [S, M, M]
    before = (scores[:, None, :] > scores[:, :, None]).sum(-1)  # [S, M] models scored strictly higher
    group = same.sum(-1)  # [S, M]
    best_in_group = np.einsum("smn,kn->ksm", same.astype(np.float64), best.astype(np.float64))
    value = before + (group + 1) / (best_in_group + 1)  # [N, S, M]; equal over a group, increasing over groups
    return np.where(best[:, None, :], value, np.inf).min(-1)


def _reference_accuracy(acc: np.ndarray, reference: int | None) -> np.ndarray:
    """``[N, M] -> [N]``: the reference model's accuracy, or the models' mean accuracy without one."""
    return acc.mean(-1) if reference is None else acc[:, reference]


def _top_k_gain(scores: np.ndarray, acc: np.ndarray, reference: int | None, k: int) -> np.ndarray:
    """Best accuracy among the k top-scored models (stable ties, ``metrics.top_k_accuracy``) minus the
    reference's (``_reference_accuracy``)."""
    top = np.stack([score_order(row)[:k] for row in scores])  # [S, k]
    return acc[:, top].max(-1) - _reference_accuracy(acc, reference)[:, None]


def _metric_names(ks: Sequence[int]) -> tuple[str, ...]:
    return ("spearman", "weighted_tau", "trials_to_best", *(f"top{k}_gain" for k in ks))


def _metrics(scores: np.ndarray, acc: np.ndarray, reference: int | None, ks: Sequence[int]) -> np.ndarray:
    """``[N, S, K]``: the metrics of ``_metric_names(ks)`` for every score row and accuracy row."""
    columns = [_spearman(scores, acc), _weighted_tau(scores, acc), _trials_to_best(scores, acc)]
    columns += [_top_k_gain(scores, acc, reference, k) for k in ks]
    return np.stack(columns, axis=-1)


def _expected_top_k_max(acc: np.ndarray, k: int) -> np.ndarray:
    """``[N, M] -> [N]``: expected maximum of k of the M values drawn without replacement. The i-th smallest
    value (1-based) is the maximum with probability C(i-1, k-1) / C(M, k)."""
    m = acc.shape[-1]
    coef = np.array([math.comb(i - 1, k - 1) for i in range(1, m + 1)], dtype=np.float64) / math.comb(m, k)
    return np.sort(acc, axis=-1) @ coef


def _exact(m: int, samples: int) -> bool:
    """Whether Random's expectations over orderings of M models enumerate all M! of them: when that is no more
    than the ``samples`` random orderings a Monte Carlo mean would take."""
    return math.factorial(m) <= samples


def _orderings(m: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``[P, M]`` float orderings of M models: all M! permutations when ``_exact(m, samples)``, else ``samples``
    uniformly random ones."""
    if _exact(m, samples):
        return np.array(list(itertools.permutations(range(m))), dtype=np.float64)
    return rng.permuted(np.tile(np.arange(m, dtype=np.float64), (samples, 1)), axis=1)


_ORDERING_BUDGET = 4_000_000
"""Elements of one ``[U, P, M]`` block of ``_expected_weighted_tau``; tie patterns are processed in chunks."""


def _expected_weighted_tau(acc: np.ndarray, orderings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, M] -> ([N], [N])``: mean and standard error of the weighted τ between the orderings ``[P, M]`` and
    each accuracy row. Exactly 0 (standard error 0) for rows without ties (``expected_weighted_tau``); the
    expectation depends only on the tie pattern (sorted dense ranks), so each pattern is evaluated once."""
    mean, stderr = np.zeros(acc.shape[0]), np.zeros(acc.shape[0])
    pattern = np.sort(sps.rankdata(acc, method="dense", axis=-1), axis=-1)
    tied = (np.diff(pattern, axis=-1) == 0).any(-1)
    if not tied.any():
        return mean, stderr
    unique, inverse = np.unique(pattern[tied], axis=0, return_inverse=True)
    chunk = max(1, _ORDERING_BUDGET // orderings.size)
    taus = np.concatenate([_weighted_tau(orderings, unique[i:i + chunk]) for i in range(0, len(unique), chunk)])
    mean[tied] = taus.mean(-1)[inverse.reshape(-1)]
    stderr[tied] = (taus.std(-1, ddof=1) / np.sqrt(taus.shape[1]))[inverse.reshape(-1)]
    return mean, stderr


def _random_metrics(acc: np.ndarray, reference: int | None, ks: Sequence[int],
                    orderings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([N, K], [N])``: each metric's expectation over a uniformly random ordering of the models, and the
    standard error of its weighted τ (the mean over ``orderings [P, M]``; exact when they are all M!
    permutations, whose spread the returned standard error then does not describe)."""
    tau, tau_stderr = _expected_weighted_tau(acc, orderings)
    columns = [np.zeros(acc.shape[0]), tau, _expected_trials_to_best(acc)]
    columns += [_expected_top_k_max(acc, k) - _reference_accuracy(acc, reference) for k in ks]
    return np.stack(columns, axis=-1), tau_stderr


# ---------------------------------------------------------------------------- Random's exact expectations


def _check_accuracies(accuracies) -> np.ndarray:
    a = np.asarray(accuracies, dtype=np.float64)
    if a.ndim != 1 or a.size < 2:
        raise ShapeError(f"accuracies must be an [M] vector with M >= 2; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise NonFiniteError("accuracies must be finite")
    return a


def expected_spearman(accuracies) -> float:
    """Expected Spearman ρ between a uniformly random ordering of the models and ``accuracies [M]``: exactly 0.

    The numerator of ρ is linear in the permuted ranks and averages to 0 over permutations; the denominator does
    not depend on the permutation (tied accuracies included). A constant side gives 0 by convention.
    """
    _check_accuracies(accuracies)
    return 0.0


def expected_weighted_tau(accuracies, *, samples: int = 20_000,
                          rng: np.random.Generator | int = 0) -> tuple[float, float]:
    """Expected weighted τ (``scipy.stats.weightedtau``, hyperbolic additive weights) between a uniformly
    random ordering of the models and ``accuracies [M]``; returns ``(expectation, standard_error)``.

    Without tied accuracies it is exactly 0 (swapping two models' places flips the sign of their pair's term
    and leaves the normalisation unchanged) and ``(0.0, 0.0)`` is returned. With ties the normalisation depends
    on where the tied models land, and the expectation is not 0: it is the exact mean over all M! orderings
    when M! <= ``samples`` (standard error 0; M <= 7 by default), else a Monte Carlo mean over ``samples``
    random orderings from ``rng`` with its standard error (the rule ``bootstrap`` follows for its Random row).

    Raises:
      ShapeError: ``accuracies`` is not an ``[M]`` vector with M >= 2.
      NonFiniteError: NaN or inf accuracies.
      ConfigError: ``samples < 2``.
    """
    a = _check_accuracies(accuracies)
    exact = _exact(a.size, samples)
    if not exact and samples < 2:
        raise ConfigError(f"samples must be at least 2 for a Monte Carlo estimate; got {samples}")
    mean, stderr = _expected_weighted_tau(a[None, :], _orderings(a.size, samples, np.random.default_rng(rng)))
    return float(mean[0]), 0.0 if exact else float(stderr[0])


def expected_trials_to_best(accuracies) -> float:
    """Expected trials-to-best of a uniformly random ordering: ``(M + 1) / (b + 1)`` for b best models (the
    expected position of the first of b marked items in a random permutation of M)."""
    return float(_expected_trials_to_best(_check_accuracies(accuracies)[None, :])[0])


def _expected_trials_to_best(acc: np.ndarray) -> np.ndarray:
    """``[N, M] -> [N]``: ``expected_trials_to_best`` of each accuracy row."""
    best = (acc == acc.max(-1, keepdims=True)).sum(-1)
    return (acc.shape[-1] + 1) / (best + 1.0)


def expected_top_k_gain(accuracies, reference_accuracy: float, k: int) -> float:
    """Expected top-k gain of a uniformly random ordering: E[max of k accuracies drawn without replacement]
    minus ``reference_accuracy``. With ``a_(1) <= ... <= a_(M)`` sorted, ``E[max] = Σ_i C(i-1, k-1) / C(M, k)
    · a_(i)`` (the i-th smallest is the maximum of a k-subset iff the other k-1 are among the i-1 smaller)."""
    a = _check_accuracies(accuracies)
    if not 1 <= k <= a.size:
        raise ShapeError(f"k must lie in 1..M={a.size}; got {k}")
    return float(_expected_top_k_max(a[None, :], k)[0]) - float(reference_accuracy)


# ---------------------------------------------------------------------------------------------- bootstrap


@dataclasses.dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Bootstrap distribution of task-averaged ranking metrics (see the module docstring for the scheme).

    Attributes:
      scores: the S' score names (the given ones, then ``RANDOM`` when included).
      metrics: the K metric names (``spearman``, ``weighted_tau``, ``trials_to_best``, ``top{k}_gain``).
      estimate: ``[S', K]`` mean over the given tasks on the observed data (no resampling); with clusters
        (``TaskData.cluster``) the mean over clusters of the mean over each cluster's tasks.
      replicates: ``[B, S', K]`` the metric means of each bootstrap replicate.
      confidence: coverage of the percentile intervals, e.g. 0.95.
      resampled_tasks: C, the number of clusters (``TaskData.cluster``; T without clusters), when tasks were
        resampled (the intervals are then expanded for C, see the module docstring), 0 when they were held fixed.
      seed: the integer seed given, or ``None`` when a ``Generator`` was passed.
      scheme: what was resampled and what was held fixed, in words (for the report).
    """

    scores: tuple[str, ...]
    metrics: tuple[str, ...]
    estimate: np.ndarray
    replicates: np.ndarray
    confidence: float
    resampled_tasks: int
    seed: int | None
    scheme: str

    @property
    def alpha(self) -> float:
        """The two-sided tail mass at which the percentile bounds are read: ``1 - confidence``, expanded
        (Hesterberg 2015) when ``resampled_tasks`` > 1."""
        return expanded_alpha(1 - self.confidence, self.resampled_tasks)

    def _quantiles(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low, high = np.quantile(values, [self.alpha / 2, 1 - self.alpha / 2], axis=0)
        return low, high

    @property
    def low(self) -> np.ndarray:
        """``[S', K]`` lower percentile bound."""
        return self._quantiles(self.replicates)[0]

    @property
    def high(self) -> np.ndarray:
        """``[S', K]`` upper percentile bound."""
        return self._quantiles(self.replicates)[1]

    @property
    def stderr(self) -> np.ndarray:
        """``[S', K]`` bootstrap standard error (standard deviation of the replicates)."""
        return self.replicates.std(axis=0, ddof=1)

    def frame(self) -> pd.DataFrame:
        """Long table: one row per (score, metric) with ``estimate``, ``low``, ``high``, ``stderr``."""
        low, high = self._quantiles(self.replicates)
        rows = [{"score": s, "metric": k, "estimate": self.estimate[i, j], "low": low[i, j], "high": high[i, j],
                 "stderr": self.stderr[i, j]}
                for i, s in enumerate(self.scores) for j, k in enumerate(self.metrics)]
        return pd.DataFrame(rows)

    def _index(self, names: Sequence[str], name: str, what: str) -> int:
        if name not in names:
            raise ShapeError(f"unknown {what} {name!r}; this result has {', '.join(names)}")
        return list(names).index(name)


@dataclasses.dataclass(frozen=True)
class Difference:
    """Paired difference ``first - second`` of one task-averaged metric, with its percentile interval."""

    first: str
    second: str
    metric: str
    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def bootstrap(tasks: Sequence[TaskData], score_names: Sequence[str], *, replicates: int = 2000,
              rng: np.random.Generator | int = 0, confidence: float = 0.95, ks: Sequence[int] = (1, 3),
              resample_tasks: bool = True, resample_images: bool = True, random_baseline: bool = True,
              random_orderings: int = 2000) -> BootstrapResult:
    """Percentile bootstrap of the task-averaged Spearman, weighted τ, trials-to-best and top-k gains.

    Args:
      tasks: T ``TaskData``, each with ``scores [S, M_t]`` in the order of ``score_names``.
      score_names: the S score names.
      replicates: B, the number of bootstrap replicates (2000 gives percentile bounds stable to ~1 % of the
        interval width at 95 %).
      rng: a ``numpy.random.Generator``, or an integer seed for ``numpy.random.default_rng``; the result is a
        deterministic function of it.
      confidence: coverage of the two-sided percentile intervals, in (0, 1).
      ks: the k of the top-k gains (each ``1 <= k <= M_t``).
      resample_tasks: draw tasks with replacement (step 1 of the module docstring); ``False`` holds the T tasks
        fixed.
      resample_images: draw each task's test images and fine-tuning seeds with replacement (step 2); ``False``
        keeps every task's observed accuracies (see "Which levels to resample" in the module docstring).
      random_baseline: append the row ``RANDOM`` with Random's expectation on every replicate.
      random_orderings: P, the random orderings (fixed per task) whose mean weighted τ stands for Random's
        expectation when accuracies tie; when M! <= P all M! orderings are used instead (exact).

    Returns:
      ``BootstrapResult`` with ``estimate [S', K]`` and ``replicates [B, S', K]``.

    Raises:
      ShapeError: no tasks, a task with a number of score rows other than S, or a k outside ``1..M_t``.
      ConfigError: ``replicates < 2``, ``confidence`` outside (0, 1), or ``random_orderings < 2``.
    """
    names = tuple(score_names)
    ks = tuple(int(k) for k in ks)
    if not tasks:
        raise ShapeError("bootstrap needs at least one task")
    if replicates < 2:
        raise ConfigError(f"replicates must be at least 2; got {replicates}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence}")
    if random_orderings < 2:
        raise ConfigError(f"random_orderings must be at least 2; got {random_orderings}")
    for task in tasks:
        if task.scores.shape[0] != len(names):
            raise ShapeError(f"task {task.name!r} has {task.scores.shape[0]} score rows but {len(names)} score "
                             "names were given")
        if not all(1 <= k <= task.scores.shape[1] for k in ks):
            raise ShapeError(f"task {task.name!r}: every k must lie in 1..M={task.scores.shape[1]}; got {ks}")
    seed = rng if isinstance(rng, (int, np.integer)) else None
    rng = np.random.default_rng(rng)
    cluster_of = clusters(tasks)
    n_clusters = max(cluster_of) + 1
    size = np.bincount(cluster_of)
    drawn = (rng.integers(0, n_clusters, (replicates, n_clusters)) if resample_tasks
             else np.tile(np.arange(n_clusters), (replicates, 1)))  # [B, C] cluster indices
    rows = len(names) + int(random_baseline)
    sums = np.zeros((replicates, rows, len(_metric_names(ks))))  # per replicate: weighted sum over drawn tasks
    observed, monte_carlo_stderr = [], [0.0]
    shared_images = {}  # (cluster, I) -> [copies, I] image counts: the tasks of a cluster share one test set
    for t, task in enumerate(tasks):
        m = task.scores.shape[1]
        exact = _exact(m, random_orderings)
        orderings = _orderings(m, random_orderings, rng) if random_baseline else None

        def evaluate(acc: np.ndarray) -> np.ndarray:
            values = _metrics(task.scores, acc, task.reference, ks)
            if orderings is None:
                return values
            expected, stderr = _random_metrics(acc, task.reference, ks, orderings)
            if not exact:
                monte_carlo_stderr.append(float(stderr.max()))
            return np.concatenate([values, expected[:, None]], axis=1)

        weight = 1.0 / size[cluster_of[t]]  # every cluster weighs 1: the mean of its tasks
        observed.append(weight * evaluate(task.accuracy[None, :])[0])
        copies = np.nonzero(drawn == cluster_of[t])[0]  # the replicate of each copy of this task's cluster
        if task.correct is None or not resample_images:
            np.add.at(sums, copies, observed[-1])
        else:
            images = task.correct.shape[2]
            key = (cluster_of[t], images)
            if key not in shared_images:
                shared_images[key] = _counts(rng.integers(0, images, (copies.size, images)), images)
            np.add.at(sums, copies, weight * evaluate(_resampled_accuracies(task.correct, shared_images[key], rng)))
    return BootstrapResult(
        scores=names + ((RANDOM,) if random_baseline else ()),
        metrics=_metric_names(ks),
        estimate=np.sum(observed, axis=0) / n_clusters,
        replicates=sums / n_clusters,
        confidence=float(confidence),
        resampled_tasks=n_clusters if resample_tasks else 0,
        seed=None if seed is None else int(seed),
        scheme=_scheme(replicates, resample_tasks, resample_images, tasks)
        + (f"; Random's weighted τ per task within ±{max(monte_carlo_stderr):.3f} (one Monte Carlo standard "
           f"error over {random_orderings} orderings)" if max(monte_carlo_stderr) > 0 else ""),
    )


def clusters(tasks: Sequence[TaskData]) -> list[int]:
    """The cluster index of each task (``TaskData.cluster``), numbered in first-seen order; a task without a
    cluster label is a cluster of its own."""
    labels = [(None, t) if task.cluster is None else (task.cluster, None) for t, task in enumerate(tasks)]
    index = {label: c for c, label in enumerate(dict.fromkeys(labels))}
    return [index[label] for label in labels]


def expanded_alpha(alpha: float, n: int) -> float:
    """Hesterberg's (2015) expanded percentile level: the tail mass ``α'`` whose normal quantile is
    ``sqrt(n / (n - 1)) · t_{n-1}(1 - α/2)``, so that the percentile interval of a mean of ``n`` resampled values
    is as wide as the t interval (``α`` unchanged for ``n < 2``: nothing is resampled then)."""
    if n < 2:
        return alpha
    return float(2 * sps.norm.sf(math.sqrt(n / (n - 1)) * sps.t.ppf(1 - alpha / 2, n - 1)))


def _resampled_accuracies(correct: np.ndarray, image_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[n, M]`` accuracies (percent) of n paired resamples of ``correct [M, R, I]``: the images of
    ``image_counts [n, I]`` (how often each was drawn) and seeds drawn here with replacement, the same draws for
    every model. Integer counts are summed exactly, so equal accuracies stay exactly equal."""
    m, r, i = correct.shape
    n = image_counts.shape[0]
    seed_counts = _counts(rng.integers(0, r, (n, r)), r)  # [n, R]
    per_seed = (image_counts @ correct.reshape(m * r, i).T.astype(np.float64)).reshape(n, m, r)
    return 100.0 * np.einsum("nmr,nr->nm", per_seed, seed_counts) / (r * i)


def _counts(indices: np.ndarray, size: int) -> np.ndarray:
    """``[n, k]`` drawn indices -> ``[n, size]`` float how often each index was drawn in each row."""
    n = indices.shape[0]
    flat = (indices + size * np.arange(n)[:, None]).ravel()
    return np.bincount(flat, minlength=n * size).reshape(n, size).astype(np.float64)


def _scheme(replicates: int, resample_tasks: bool, resample_images: bool, tasks: Sequence[TaskData]) -> str:
    """The resampling scheme in words, for the report (see the module docstring)."""
    fixed = [task.name for task in tasks if task.correct is None]
    seeds = {task.correct.shape[1] for task in tasks if task.correct is not None}
    grouped = any(task.cluster is not None for task in tasks)
    n = len(set(clusters(tasks)))
    expanded = (f" expanded for {n} {'clusters of tasks' if grouped else 'tasks'} (Hesterberg 2015)"
                if resample_tasks and n > 1 else "")
    resampled = (f"clusters of tasks resampled with replacement ({n} per replicate, each with all its tasks, "
                 "weighted so that every cluster counts once)" if grouped
                 else f"tasks resampled with replacement ({n} per replicate)")
    clauses = [f"percentile bootstrap{expanded}, {replicates} replicates",
               resampled if resample_tasks else
               "the task held fixed" if len(tasks) == 1 else f"the {len(tasks)} tasks held fixed"]
    per_image = len(fixed) < len(tasks)
    if per_image and resample_images:
        clauses.append("test images and fine-tuning seeds resampled with replacement, paired across models"
                       + (" (one seed: seed-to-seed variance not included)" if seeds == {1} else ""))
    elif per_image:
        clauses.append("each task's accuracies as measured on its test images and fine-tuning seeds (their noise "
                       "is in the spread of the per-task metrics that the task resample draws from)")
    if fixed and (resample_images or not per_image):  # else every task is held as measured anyway
        clauses.append(f"no per-image data for {', '.join(fixed)}: their accuracies held fixed"
                       + (", so only task resampling moves them" if resample_tasks else ""))
    clauses.append("scores held fixed")
    return "; ".join(clauses)


# ---------------------------------------------------------------------------------------- paired differences


def difference(result: BootstrapResult, first: str, second: str, metric: str) -> Difference:
    """Paired difference ``first - second`` of ``metric`` over the same replicates (so task and image draws
    shared by both scores cancel), with its percentile interval at ``result.confidence``.

    Raises:
      ShapeError: an unknown score or metric name.
    """
    i = result._index(result.scores, first, "score")
    j = result._index(result.scores, second, "score")
    k = result._index(result.metrics, metric, "metric")
    low, high = result._quantiles(result.replicates[:, i, k] - result.replicates[:, j, k])
    return Difference(first, second, metric, float(result.estimate[i, k] - result.estimate[j, k]), float(low),
                      float(high))


def separated_pairs(result: BootstrapResult, metric: str) -> list[Difference]:
    """Every unordered pair of scores whose paired difference in ``metric`` has an interval excluding zero,
    each oriented so that ``estimate > 0`` (``first`` has the larger mean; for ``trials_to_best`` that is the
    worse score), sorted by decreasing ``estimate``. Note: with many pairs some exclude zero by chance (about
    ``1 - confidence`` of the pairs without a real difference)."""
    found = []
    for first, second in itertools.combinations(result.scores, 2):
        d = difference(result, first, second, metric)
        if d.estimate < 0:
            d = difference(result, second, first, metric)
        if d.excludes_zero:
            found.append(d)
    return sorted(found, key=lambda d: -d.estimate)


# -------------------------------------------------------------------------------------------- trivial baselines


BASELINES = {
    "from_generalist": ("kind", lambda m: float(m["kind"] in ("generalist", "from-generalist"))),
    "source_images": ("source_images", lambda m: float(m["source_images"])),
    "source_accuracy": ("source_accuracy", lambda m: float(m["source_accuracy"])),
    "reference_first": ("reference", lambda m: float(bool(m["reference"]))),
}
"""Each trivial baseline of ``baseline_scores``: the model-metadata key it reads and its score of one model."""

BASELINE_KEYS = tuple(key for key, _ in BASELINES.values())
"""The model-metadata keys ``baseline_scores`` reads (see there)."""


def share_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval ``(low, high)`` in [0, 1] of a share observed as ``k`` of ``n``.

    Raises:
      ConfigError: not ``0 <= k <= n`` with ``n >= 1``.
    """
    if not 0 <= k <= n or n < 1:
        raise ConfigError(f"a share needs 0 <= k <= n and n >= 1; got k={k}, n={n}")
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def baseline_scores(models: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Score vectors of trivial model-selection rules, to be ranked like any score.

    Args:
      models: M dicts, one per model in the task's model order, all with the same keys of ``BASELINE_KEYS``
        (a zoo records what applies to it): ``kind`` (str: ``"generalist"``, ``"scratch"``,
        ``"from-generalist"`` or ``"multibn"``, as ``linfit.zoo.spec.KINDS``), ``reference`` (bool: the
        generalist the gains are measured against), ``source_images`` (int: labelled source images of the model's
        last training stage) and ``source_accuracy`` (float: top-1 accuracy on its own source test split, e.g.
        the zoo manifest's, or an ImageNet backbone's published ImageNet top-1).

    Returns:
      ``{name: [M] float}``, one entry per key present (``BASELINES``):
      ``from_generalist`` (1 for the generalist and the experts initialised from it, else 0),
      ``source_images`` (more source data = predicted better), ``source_accuracy`` (better on its own source =
      predicted better; for an ImageNet zoo, ranking by ImageNet top-1) and ``reference_first``
      (1 for the reference, 0 for the others: "always fine-tune the generalist first").
      These scores tie many models: trials-to-best averages over the ties, top-k keeps the given model order
      among them (``linfit.bench.metrics``).

    Raises:
      ShapeError: fewer than 2 models, no key of ``BASELINE_KEYS``, or models that differ in which they have.
      NonFiniteError: a non-finite ``source_images`` or ``source_accuracy``.
    """
    if len(models) < 2:
        raise ShapeError(f"baseline scores need at least 2 models; got {len(models)}")
    keys = [tuple(key for key in BASELINE_KEYS if key in model) for model in models]
    if not keys[0] or len(set(keys)) != 1:
        i = next((i for i, k in enumerate(keys) if k != keys[0]), 0)
        raise ShapeError(f"every model dict needs the same keys of {', '.join(BASELINE_KEYS)} (at least one); "
                         f"model 0 ({models[0].get('name', '?')}) has {list(keys[0])}, model {i} "
                         f"({models[i].get('name', '?')}) has {list(keys[i])}")
    out = {name: np.array([rule(m) for m in models]) for name, (key, rule) in BASELINES.items() if key in keys[0]}
    if not all(np.all(np.isfinite(v)) for v in out.values()):
        raise NonFiniteError("source_images and source_accuracy must be finite for every model")
    return out


def zoo_baseline_metadata(manifest: Mapping, names: Sequence[str]) -> list[dict]:
    """The ``baseline_scores`` metadata of the zoo models ``names`` from a zoo ``manifest`` (``linfit.zoo``).

    ``source_images`` is the manifest's ``train_config.per_domain`` times the number of source domains of the
    model's last training stage: all of them for the generalist (its union) and the multi-BN candidates (shared
    convolutions), one for the single-domain experts (from scratch or from the generalist).

    Raises:
      UnknownNameError: a name not in the manifest.
      ConfigError: the manifest's ``per_domain`` is null (the images per domain are then not recorded).
    """
    from linfit.errors import UnknownNameError
    from linfit.zoo import spec

    per_domain = manifest["train_config"].get("per_domain")
    if per_domain is None:
        raise ConfigError("the zoo manifest's train_config.per_domain is null: the number of source images per "
                          "model is not recorded; pass source_images to baseline_scores yourself")
    entries = {entry["name"]: entry for entry in manifest["models"]}
    n_domains = len(spec.source_domains())
    out = []
    for name in names:
        if name not in entries:
            raise UnknownNameError(f"zoo model {name!r} is not in the manifest; it has e.g. "
                                   f"{', '.join(list(entries)[:4])}")
        entry = entries[name]
        domains = n_domains if entry["kind"] in ("generalist", "multibn") else 1
        out.append({"name": name, "kind": entry["kind"], "reference": bool(entry["reference"]),
                    "source_images": per_domain * domains, "source_accuracy": float(entry["source_accuracy"])})
    return out
