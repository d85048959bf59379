"""How many tasks (and seeds) give a mean-Spearman 95 % interval half-width of at most 0.05? (issue 13, item 4)

Reads a committed benchmark store, takes one regime's complete task groups as the report does
(``linfit.bench.uncertainty.regime_tasks``) and splits the variance of each score's task-averaged Spearman ρ into

* ``v_t``, the measurement noise of task t's ρ: the variance of ρ_t over bootstrap replicates that resample only
  task t's test images (and seeds, where the store has several), paired across models
  (``linfit.bench.stats.bootstrap(..., resample_tasks=False)`` on that task alone);
* ``s²``, the spread of the observed ρ_t over the T tasks (sample variance, T − 1 in the denominator), and
  ``σ²_b = max(s² − mean_t v_t, 0)``, the part of it that is real task-to-task variation.

With several k-shot draws per target task the report resamples target tasks, each with all its draws (a cluster
bootstrap, ``linfit.bench.stats.TaskData.cluster``): T is then the number of target tasks, ρ_t the mean over
task t's draws, and v_t the mean of its draws' noise variances divided by their number (a lower bound: the draws
share the task's test set, whose noise does not average out over them).

The report's interval (tasks resampled, each with its accuracies as measured: ``linfit.bench.stats``, "Which
levels to resample"; expanded percentile bounds) has, for T tasks drawn like these, a half-width of about
``h(T) = t_{T−1} · s / sqrt(T)`` (t_{T−1} the t quantile at 0.975; s² already holds each task's measurement
noise once), so it reaches ``H`` at the smallest such T with ``h(T) ≤ H``. With noise-free ground truth
(infinitely many test images and seeds) s² would be σ²_b: the gap between the two is what more seeds and test
images could buy. The script prints both, per score, with the bootstrap's own half-width at the store's T as a
check of ``h(T)``, and the same for the paired differences against ``PAIRED_WITH``.

    python experiments/size_grid.py --db experiments/reproduce_full.sqlite --regime 20shot
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy.stats import spearmanr
from scipy.stats import t as t_dist

from linfit.bench import stats
from linfit.bench.report import complete_groups, finetune_frame, scores_frame
from linfit.bench.store import read_stores
from linfit.bench.uncertainty import regime_tasks
from linfit.data import load_task

SCORES = ("lfc", "lgc", "lgc_all", "linearized_loss", "linearized_cv_accuracy", "leep", "logme", "h_score")
"""The scores whose intervals the issue asks to size."""

TARGET = 0.05
PAIRED_WITH = "linearized_loss"
"""The score the paired differences are taken against (the issue's question: does it beat LFC and LGC?)."""
REPLICATES = 2000


def with_images(task: stats.TaskData, rows: list[int], regime: str, seed: int) -> stats.TaskData:
    """Task ``task`` reduced to the score ``rows``, with per-image test correctness.

    A store without per-image data (written before it was recorded) gets a stand-in: model m's accuracy p_m on
    the task's I test images as round(p_m I) correct images placed at random, independently per model, so the
    resample draws each accuracy as a binomial proportion independent of the others. Real per-image data are
    paired (easy images are easy for every model), which makes accuracy *differences* less noisy: the stand-in
    overstates the image noise of ρ, and it has no seed-to-seed noise (the store has one seed)."""
    correct = task.correct
    if correct is None:
        images = load_task(f"{task.name.split('/')[0]}:{regime}", seed=0).test.y.size
        rng = np.random.default_rng(seed)
        hits = np.rint(task.accuracies / 100 * images).astype(int)
        correct = np.stack([rng.permutation(np.arange(images) < k) for k in hits])[:, None, :]
    return stats.TaskData(task.name, task.scores[rows], task.reference, correct=correct, cluster=task.cluster)


def task_noise(task: stats.TaskData, names: list[str], seed: int) -> np.ndarray:
    """``[B, S]`` the task's Spearman ρ of each score on B replicates that resample its images (and seeds)."""
    result = stats.bootstrap([task], names, replicates=REPLICATES, rng=seed, ks=(), resample_tasks=False,
                             random_baseline=False)
    return result.replicates[:, :, 0]


def by_target_task(values: np.ndarray, tasks: list[stats.TaskData], noise: bool = False) -> np.ndarray:
    """``[T, ...]``: the mean of ``values [G, ...]`` over the task groups (k-shot draws) of each target task
    (``TaskData.cluster``; a group without one is a target task of its own), in first-seen order; with ``noise``
    the mean divided by the number of draws (the variance of a mean of independent draws)."""
    cluster_of = np.array(stats.clusters(tasks))
    means = []
    for cluster in range(cluster_of.max() + 1):
        members = cluster_of == cluster
        means.append(values[members].mean(axis=0) / (members.sum() if noise else 1))
    return np.array(means)


def half_width(variance: float, n_tasks: int) -> float:
    """``t_{T-1}(0.975) · s / sqrt(T)``: the report's expanded percentile interval of a mean over T tasks."""
    return float(t_dist.ppf(0.975, n_tasks - 1)) * math.sqrt(variance / n_tasks)


def tasks_needed(variance: float) -> int:
    """The smallest T whose ``half_width`` is at most ``TARGET``."""
    n_tasks = 2
    while half_width(variance, n_tasks) > TARGET:
        n_tasks += 1
    return n_tasks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="experiments/reproduce_full.sqlite")
    parser.add_argument("--regime", default="20shot")
    args = parser.parse_args(argv)
    with read_stores(args.db) as store:
        scores, finetune, left_out, dropped = complete_groups(scores_frame(store), finetune_frame(store))
    tasks, names, notes = regime_tasks(scores, finetune, args.regime, "accuracy")
    notes += [f"left out as incomplete: {group}" for group in left_out]
    notes += [f"left out: {score}" for score in dropped]
    rows = [names.index(s) for s in SCORES if s in names]
    chosen = [names[r] for r in rows]
    tasks = [with_images(t, rows, args.regime, i) for i, t in enumerate(tasks)]
    per_group = np.array([[spearmanr(row, t.accuracy).statistic for row in t.scores] for t in tasks])  # [G, S]
    noise_replicates = [task_noise(t, chosen, i) for i, t in enumerate(tasks)]  # G × [B, S]
    per_task = by_target_task(per_group, tasks)  # [T, S]
    noise = by_target_task(np.array([r.var(axis=0, ddof=1) for r in noise_replicates]), tasks, noise=True)
    check = stats.bootstrap(tasks, chosen, replicates=REPLICATES, rng=0, ks=(), random_baseline=False,
                            resample_images=False)
    n_tasks, seeds = len(per_task), {t.correct.shape[1] for t in tasks if t.correct is not None}
    print(f"store {args.db}, regime {args.regime}: T = {n_tasks} target tasks ({len(tasks)} task groups), "
          f"fine-tuning seeds per unit {seeds}")
    print(*notes, sep="\n")
    print("| score | mean ρ | s (task sd) | sqrt(v̄) (noise sd) | σ_b (real task sd) | half-width at T: bootstrap "
          "/ formula | T for ±0.05 | T for ±0.05 with noise-free ground truth |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for j, name in enumerate(chosen):
        s2 = per_task[:, j].var(ddof=1)
        vbar = noise[:, j].mean()
        sigma_b = math.sqrt(max(s2 - vbar, 0.0))
        low, high = check.low[j, 0], check.high[j, 0]
        print(f"| {name} | {per_task[:, j].mean():.2f} | {math.sqrt(s2):.3f} | {math.sqrt(vbar):.3f} | "
              f"{sigma_b:.3f} | {(high - low) / 2:.3f} / {half_width(s2, n_tasks):.3f} | {tasks_needed(s2)} | "
              f"{tasks_needed(sigma_b**2) if sigma_b > 0 else '– (no spread beyond the noise)'} |")

    base = chosen.index(PAIRED_WITH)
    print(f"\nPaired differences ρ({PAIRED_WITH}) − ρ(score): the same decomposition on the per-task differences "
          "(the task-to-task spread that two scores share cancels)")
    print("| score | mean Δρ | s (task sd of Δρ) | sqrt(v̄) | half-width at T: bootstrap / formula | "
          "T for ±0.05 |")
    print("|---|---:|---:|---:|---:|---:|")
    for j, name in enumerate(chosen):
        if j == base:
            continue
        delta = per_task[:, base] - per_task[:, j]
        s2 = delta.var(ddof=1)
        vbar = by_target_task(np.array([np.var(r[:, base] - r[:, j], ddof=1) for r in noise_replicates]), tasks,
                              noise=True).mean()
        gap = stats.difference(check, PAIRED_WITH, name, "spearman")
        low, high = gap.low, gap.high
        print(f"| {name} | {delta.mean():+.3f} | {math.sqrt(s2):.3f} | {math.sqrt(vbar):.3f} | "
              f"{(high - low) / 2:.3f} / {half_width(s2, n_tasks):.3f} | {tasks_needed(s2)} |")


if __name__ == "__main__":
    main()
