"""The report's statistics: bootstrap intervals of the task-averaged ranking metrics, paired differences between
scores, Random's exact expectation, trivial baselines and per-cluster results, all from a benchmark store.

``linfit.bench.stats`` does the statistics; this module turns the store's frames (``linfit.bench.report``) into its
``TaskData`` and the results into Markdown. Per regime, each complete (task, seed) group is one task of the bootstrap
(the k-shot draws of one target task form a cluster that is resampled as a whole, ``stats.TaskData.cluster``): its
models in name order, the scores every group has (a score missing or non-finite in some group is left out and named),
and its ground truth, the per-seed per-image test correctness of the chosen learning rate (``"test_correct"`` of a
fine-tuning record, ``linfit.bench.grid.finetune_record``; ``[R, I]``, R fine-tuning seeds) when every model of the
group has it with one shape and the report's ground truth is ``"accuracy"``, else the stored accuracies. The intervals
resample tasks, each with its accuracies as measured; a regime with fewer than ``FEW_TASKS`` target tasks (and
per-image data) holds its tasks fixed and resamples their test images and seeds instead (``linfit.bench.stats``,
"Which levels to resample"; the section says which).

Model metadata (``model_metadata``: a zoo manifest's records, or the ImageNet backbones' published top-1) adds
the trivial baselines (``linfit.bench.stats.baseline_scores``, rows ``baseline: <name>``) and, for a zoo whose
records give each model's kind, the results within each zoo cluster: the generalist with the experts initialised
from it, the experts trained from scratch, and the multi-BN experts (``CLUSTERS``). Within a cluster the
reference model is not always present, so the cluster tables give Spearman, weighted τ and trials-to-best only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from linfit._text import counted
from linfit.bench import stats
from linfit.bench.report import _markdown as markdown

REPLICATES = 2000
"""Bootstrap replicates of every report (percentile bounds stable to ~1 % of the interval width at 95 %)."""

SEED = 0
"""Seed of the report's bootstrap: a report is a deterministic function of its store."""

CONFIDENCE = 0.95

FEW_TASKS = 5
"""From this many target tasks (clusters of task groups) on, a regime's intervals resample tasks (each with its
accuracies as measured); below it they hold the tasks fixed and resample test images and seeds, and the section
warns that they cannot cover task-to-task variation (``linfit.bench.stats``, "Which levels to resample")."""

KS = (1, 3)
"""The k of the top-k gains (each used when every group has at least k models)."""

BASELINE_PREFIX = "baseline: "

DRAWN_RANDOM = "random"
"""The stored score holding one draw of the Random baseline: replaced by ``stats.RANDOM`` in the intervals."""

CLUSTERS = {"the generalist and the experts initialised from it": ("generalist", "from-generalist"),
            "the experts trained from scratch": ("scratch",),
            "the multi-BN experts (one network, a BatchNorm set per source domain)": ("multibn",)}
"""Zoo clusters: the model kinds (``linfit.zoo.spec.KINDS``) each holds. A report shows the clusters of which the
zoo has models."""

NO_IMAGES = ("no per-image test correctness in the store (units written before it was recorded, or a ground "
             "truth other than the chosen learning rate's accuracy): the intervals resample tasks, each with its "
             "accuracies as measured")
"""Said in the report when no group has per-image data."""

QUESTION = ("linearized_loss", ("lfc", "lgc", "lgc_paper", "lgc_all"))
"""The benchmark's question (issue 13; Deshpande et al. 2021 derive LGC and LFC as cheap proxies of the linearized
fine-tuning loss): does the closed-form linearized loss (first) rank fine-tuning better than LFC and LGC (the
others)? Each report answers it with paired differences, significant or not."""

LABELS = {"spearman": "Spearman", "weighted_tau": "weighted τ", "trials_to_best": "trials-to-best",
          "top1_gain": "top-1 gain", "top3_gain": "top-3 gain"}


def regime_tasks(scores: pd.DataFrame, finetune: pd.DataFrame, regime: str, accuracy: str,
                 models: Mapping[str, Mapping] | None = None,
                 kinds: Sequence[str] | None = None) -> tuple[list[stats.TaskData], tuple[str, ...], list[str]]:
    """The bootstrap tasks of one regime (see the module docstring).

    Args:
      scores, finetune: ``report.scores_frame`` / ``report.finetune_frame`` rows of one setting each.
      regime: e.g. ``"20shot"``.
      accuracy: the ground-truth column (``"accuracy"`` or ``"oracle_accuracy"``).
      models: ``{model name: baseline metadata}`` (``stats.BASELINE_KEYS``) to add the baseline rows; every
        model of the regime must be in it.
      kinds: keep only the models of these kinds (a zoo cluster; needs ``models``).

    A group without a reference model (a cluster without the generalist, a zoo without one such as the ImageNet
    zoo) has ``reference=None``: its top-k gains are over the mean accuracy of its models (``stats.TaskData``).

    The stored score ``DRAWN_RANDOM`` (one random draw) is not among the score names: Random enters the
    bootstrap as its exact expectation.

    Returns:
      ``(tasks, score names, notes)``: ``notes`` are sentences on what was left out.
    """
    ft = finetune[(finetune.regime == regime) & finetune[accuracy].notna()]
    sc = scores[(scores.regime == regime) & (scores.score != DRAWN_RANDOM)]
    groups = []
    for (task, seed), group in ft.groupby(["task", "seed"]):
        group = group.sort_values("model")
        if kinds is not None:
            group = group[[models[m]["kind"] in kinds for m in group.model]]
        if group.reference.sum() > 1 or len(group) < 2:
            continue
        values = (sc[(sc.task == task) & (sc.seed == seed)]
                  .pivot(index="score", columns="model", values="value").reindex(columns=group.model))
        complete = values.index[values.notna().all(axis=1)]
        if len(complete):
            groups.append((task, seed, group, values.loc[complete]))
    notes = []
    if not groups:
        return [], (), notes
    every = set.intersection(*(set(values.index) for *_, values in groups))
    names = tuple(sorted(every))
    left_out = sorted(set().union(*(set(values.index) for *_, values in groups)) - every)
    if left_out:
        notes.append(f"left out of the intervals (missing in some task group): {', '.join(left_out)}")
    several_seeds = len({seed for _, seed, *_ in groups}) > 1
    bases = [stats.baseline_scores([models[m] for m in group.model]) if models is not None else {}
             for _, _, group, _ in groups]
    constant = {name for name in bases[0] if all(np.ptp(base[name]) == 0 for base in bases)}
    baselines = tuple(sorted(set(bases[0]) - constant))
    if constant:
        notes.append(f"left out: {', '.join(BASELINE_PREFIX + name for name in sorted(constant))} (within each task "
                     "group the same value for every model: in Spearman, weighted τ and trials-to-best it ranks them "
                     "as `random (expectation)` does)")
    tasks = []
    for (task, seed, group, values), base in zip(groups, bases):
        rows = values.loc[list(names)].to_numpy(dtype=np.float64)
        if baselines:
            rows = np.vstack([rows, *(base[name][None, :] for name in baselines)])
        correct = list(group.test_correct) if accuracy == "accuracy" else [None]
        if any(c is None for c in correct) or len({c.shape for c in correct}) != 1:
            truth = {"accuracies": group[accuracy].to_numpy(dtype=np.float64)}
        else:
            truth = {"correct": np.stack(correct)}  # [M, R, I]
        reference = int(np.flatnonzero(group.reference.to_numpy())[0]) if group.reference.any() else None
        tasks.append(stats.TaskData(f"{task}/draw{seed}" if several_seeds else str(task), rows, reference,
                                    cluster=str(task) if several_seeds else None, **truth))
    names += tuple(BASELINE_PREFIX + name for name in baselines)
    if several_seeds:
        notes.append("the k-shot draws of one target task share its test set and classes, so they are resampled "
                     "together: a replicate draws target tasks, each with all its draws")
    return tasks, names, notes


def _clusters(tasks: Sequence[stats.TaskData]) -> int:
    """The number of independently resampled units of ``tasks`` (``stats.clusters``)."""
    return len(set(stats.clusters(tasks)))


def _cell(estimate: float, low: float, high: float, digits: int) -> str:
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _digits(metric: str) -> int:
    return 2 if metric in ("spearman", "weighted_tau") else 1


def interval_table(result: stats.BootstrapResult) -> pd.DataFrame:
    """One row per score (sorted by decreasing mean Spearman), one column per metric: ``"mean [low, high]"``."""
    low, high = result.low, result.high
    rows = []
    for i, score in enumerate(result.scores):
        row = {"score": score}
        for j, metric in enumerate(result.metrics):
            row[LABELS.get(metric, metric)] = _cell(result.estimate[i, j], low[i, j], high[i, j], _digits(metric))
        rows.append((-result.estimate[i, 0], score, row))
    return pd.DataFrame([row for *_, row in sorted(rows, key=lambda r: r[:2])])


def difference_lines(result: stats.BootstrapResult) -> list[str]:
    """Markdown: per metric, the pairs of rows whose paired difference excludes zero, one table row per better
    row listing the rows it beats with the gap and its interval (for trials-to-best: the extra trials of the
    worse)."""
    pairs = math.comb(len(result.scores), 2)
    order = {score: -result.estimate[i, 0] for i, score in enumerate(result.scores)}
    lines = []
    for metric in result.metrics:
        found = stats.separated_pairs(result, metric)
        label = LABELS.get(metric, metric)
        lines += [f"**{label}**: {len(found)} of {pairs} pairs differ (interval excludes 0); the other "
                  f"{pairs - len(found)} pairs are not distinguishable at {result.confidence:.0%}.", ""]
        beats: dict[str, list[str]] = {}
        for d in found:  # oriented with estimate > 0: for trials-to-best the first is the worse one
            better, worse = (d.second, d.first) if metric == "trials_to_best" else (d.first, d.second)
            beats.setdefault(better, []).append(f"{worse} {_cell(d.estimate, d.low, d.high, _digits(metric))}")
        if beats:
            rows = [{"better": b, f"than (gap [{result.confidence:.0%} interval])": "; ".join(beats[b])}
                    for b in sorted(beats, key=lambda b: (order[b], b))]
            lines += [_markdown(pd.DataFrame(rows)), ""]
    return lines


def _gap(result: stats.BootstrapResult, better: str, other: str, metric: str) -> stats.Difference:
    """``better - other``, for trials-to-best ``other - better``: positive when ``better`` ranks better."""
    if metric == "trials_to_best":
        return stats.difference(result, other, better, metric)
    return stats.difference(result, better, other, metric)


def _gap_cell(d: stats.Difference) -> str:
    cell = _cell(d.estimate, d.low, d.high, _digits(d.metric))
    return f"**{cell}**" if d.excludes_zero else cell


def question_lines(result: stats.BootstrapResult, regime: str) -> list[str]:
    """Markdown answering the report's two questions with paired differences and their intervals, whether or
    not they exclude zero: the closed-form linearized loss against LFC and LGC (``QUESTION``), and every score
    against every trivial baseline in Spearman. Bold: the interval excludes 0."""
    first, others = QUESTION
    others = [o for o in others if o in result.scores]
    lines = [f"### Paired differences that answer the benchmark's questions (`{regime}`)", "",
             "Positive: the first score ranks fine-tuning better. For trials-to-best the cell is the second score's "
             "trials minus the first's (positive: the first needs fewer). "
             f"{result.confidence:.0%} intervals on the same replicates as above (same resampling, same caution); "
             f"**bold**: the interval excludes 0, which about {1 - result.confidence:.0%} of the pairs without a "
             "real difference do by chance.", ""]
    if first in result.scores and others:
        rows = [{"pair": f"{first} − {other}",
                 **{LABELS.get(m, m): _gap_cell(_gap(result, first, other, m)) for m in result.metrics}}
                for other in others]
        lines += ["Does the closed-form linearized loss rank better than LFC and LGC?", "",
                  _markdown(pd.DataFrame(rows)), ""]
    baselines = [s for s in result.scores if s.startswith(BASELINE_PREFIX)]
    spearman = result.metrics.index("spearman")
    scores = sorted((s for s in result.scores if s not in baselines and s != stats.RANDOM),
                    key=lambda s: (-result.estimate[result.scores.index(s), spearman], s))  # interval_table's order
    if baselines and scores:
        gaps = {s: [_gap(result, s, b, "spearman") for b in baselines] for s in scores}
        rows = [{"score": s, **{f"Spearman − {b}": _gap_cell(d) for b, d in zip(baselines, gaps[s])}}
                for s in scores]
        every = [s for s in scores if all(d.low > 0 for d in gaps[s])]
        lines += ["Does a score beat the trivial baselines (Spearman)?", "", _markdown(pd.DataFrame(rows)), "",
                  f"Above every baseline (each interval excludes 0): {', '.join(every) if every else 'none'}.", ""]
    return lines


def _scheme(tasks: Sequence[stats.TaskData]) -> dict[str, bool]:
    """The ``stats.bootstrap`` levels of a section (``FEW_TASKS``): tasks fixed and images resampled only for
    fewer than ``FEW_TASKS`` target tasks (clusters of task groups) of which some have per-image data (the others
    then stay as measured)."""
    fixed = _clusters(tasks) < FEW_TASKS and any(t.correct is not None for t in tasks)
    return {"resample_tasks": not fixed, "resample_images": fixed}


def regime_section(scores: pd.DataFrame, finetune: pd.DataFrame, regime: str, accuracy: str,
                   models: Mapping[str, Mapping] | None) -> list[str]:
    """The Markdown of one regime's statistics: intervals across the zoo, per cluster, paired differences."""
    tasks, names, notes = regime_tasks(scores, finetune, regime, accuracy, models)
    if not tasks:
        return ["No complete task group: no intervals.", ""]
    ks = tuple(k for k in KS if all(k <= t.scores.shape[1] for t in tasks))
    scheme = _scheme(tasks)
    result = stats.bootstrap(tasks, names, replicates=REPLICATES, rng=SEED, confidence=CONFIDENCE, ks=ks, **scheme)
    clusters = _clusters(tasks)
    groups = (f"{len(tasks)} task groups of {clusters} target tasks" if clusters < len(tasks)
              else counted(len(tasks), "task"))
    lines = [f"Mean over {groups} with {CONFIDENCE:.0%} bootstrap intervals. Resampling: {result.scheme}.", ""]
    if clusters < FEW_TASKS:
        caution = (f"**Caution: {counted(clusters, 'target task')} only.** A bootstrap over so "
                   "few tasks cannot estimate how much the scores' rankings vary from task to task")
        if scheme["resample_images"]:
            caution += (", so these intervals and the paired differences below hold the tasks fixed and resample only "
                        "their test images and fine-tuning seeds: they describe the measurement noise of these tasks, "
                        "not the task population. The observed values already contain that noise once, and "
                        "resampling the images adds it again, which pulls rank correlations towards 0: each interval "
                        "is shifted towards 0, with the point estimate near its end farther from 0.")
        else:
            caution += (": with no per-image data these intervals resample the few tasks themselves, which makes them "
                        "too rough to trust; they describe these tasks, not the population.")
        lines += [caution, ""]
    if all(t.correct is None for t in tasks):
        lines += [f"Per-image data: {NO_IMAGES}.", ""]
    if any(t.reference is None for t in tasks):
        lines += [f"Top-k gains: {'no' if all(t.reference is None for t in tasks) else 'some'} task group has a "
                  "reference model, so there the gains are over the mean accuracy of the group's models (what a "
                  "uniformly random pick gets on average).", ""]
    lines += [f"Note: {note}." for note in notes] + ([""] if notes else [])
    kinds = models is not None and all("kind" in m for m in models.values())  # else the ImageNet backbones
    top1 = "; `source_accuracy` is each backbone's published ImageNet top-1" if models is not None and not kinds else ""
    lines += [f"`{stats.RANDOM}` is the exact expectation of a uniformly random ordering (weighted τ: exact without "
              "tied accuracies); `baseline: …` rows rank the models by metadata only (`linfit.bench.stats."
              f"baseline_scores`{top1}).", "", _markdown(interval_table(result)), ""]
    lines += question_lines(result, regime)
    if kinds:  # zoo clusters are kinds of models
        lines += _cluster_lines(scores, finetune, regime, accuracy, models, shown=notes)
    lines += [f"### Paired differences (`{regime}`)", "",
              "Each difference is computed on the same bootstrap replicates for both rows. With this many pairs, "
              f"about {1 - CONFIDENCE:.0%} of the pairs without a real difference are listed by chance.", ""]
    return lines + difference_lines(result)


def _cluster_lines(scores, finetune, regime, accuracy, models, shown: Sequence[str]) -> list[str]:
    """The per-cluster tables, each with the notes of its own ``regime_tasks`` not already ``shown``."""
    lines = [f"### Within each zoo cluster (`{regime}`)", "",
             "Rankings of the models of one cluster only (top-k gains: see the table across the zoo, the reference "
             "model is not in every cluster).", ""]
    for index, (label, kinds) in enumerate(CLUSTERS.items()):
        if not any(meta["kind"] in kinds for meta in models.values()):
            continue  # e.g. a store of the zoo before it had multi-BN experts
        tasks, names, notes = regime_tasks(scores, finetune, regime, accuracy, models, kinds=kinds)
        if not tasks:
            lines += [f"Models {label}: fewer than 2 in every task group.", ""]
            continue
        result = stats.bootstrap(tasks, names, replicates=REPLICATES, rng=SEED + 1 + index, confidence=CONFIDENCE,
                                 ks=(), **_scheme(tasks))
        lines += [f"Models {label} ({tasks[0].scores.shape[1]} per task):", ""]
        own = [f"Note: {note}." for note in notes if note not in shown]
        lines += own + ([""] if own else []) + [_markdown(interval_table(result)), ""]
    return lines


def model_metadata(manifest: Mapping | None, names: Sequence[str]) -> tuple[dict[str, dict] | None, str | None]:
    """``({name: baseline metadata}, None)`` for the models ``names``, or ``(None, why)``: the packaged ImageNet
    backbones' published top-1 (``linfit.zoo.imagenet.published_top1``, their one baseline) when every name is
    one of them, else a zoo ``manifest``'s records (``stats.zoo_baseline_metadata``) when it holds them all."""
    from linfit.zoo.imagenet import published_top1

    top1 = published_top1()
    if names and all(name in top1 for name in names):
        return {name: {"name": name, "source_accuracy": top1[name]} for name in names}, None
    if manifest is None:
        return None, "no zoo manifest given"
    known = {entry["name"] for entry in manifest["models"]}
    missing = sorted(set(names) - known)
    if missing:
        return None, f"models not in the zoo manifest: {', '.join(missing[:4])}"
    return {m["name"]: m for m in stats.zoo_baseline_metadata(manifest, sorted(set(names)))}, None


def _markdown(table: pd.DataFrame) -> str:
    return markdown(table, index=False)
