"""Model selection: rank a model zoo for a target task with transferability scores, without fine-tuning.

The main job of linfit (Deshpande et al. 2021, §3-4): for every candidate model, compute the requested scores
on the task's scoring subset (at most 25 training images per class; the test split is never touched), and rank
the zoo. The shared inputs (features, source-head probabilities, fine-tuning NTKs) are extracted once per model
(``linfit.extract``). When the fine-tuning NTK is available the predicted linearized fine-tuning loss curve of
every model (``linfit.dynamics``) comes with the ranking.

Example::

    >>> result = select(task="font_digits:20shot", scores=("lfc", "logme"))    # doctest: +SKIP
    >>> result.table.head()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from linfit import scores as score_registry
from linfit._text import counted
from linfit.data import Dataset, TaskSpec, load_data, load_task, parse_regime
from linfit.data.detect import require_classes
from linfit.defaults import DEFAULT_HEAD_SAMPLES, DEFAULT_REGIME, DEFAULT_SCORES, DEFAULT_TASK
from linfit.errors import ConfigError, NonFiniteError, check_known, is_count
from linfit.extract import TaskInputs, extract_inputs, source_sample
from linfit.scores.linearized import loss_ratio
from linfit.scores.registry import SOURCE_INPUTS
from linfit.zoo.source import ZooEntry, check_source_domains, load_zoo
from linfit.timing import Stopwatch

__all__ = ["CURVE_TIMES", "CURVE_TAU", "DEFAULT_SCORES", "DEFAULT_TASK", "Selection", "curve_scores",
           "format_profile", "format_table", "plot_curves", "select"]

#: Normalised times (units of the mean kernel eigenvalue, see ``linfit.scores.linearized``) of the loss curves.
CURVE_TIMES = np.logspace(-2, 2, 41)
#: The normalised time at which the ``linearized_loss`` score reads the curve (its default ``tau``).
CURVE_TAU = float(inspect.signature(score_registry.linearized_loss).parameters["tau"].default)


def curve_scores() -> list[str]:
    """The registered scores that compute the fine-tuning NTK, so that :func:`select` returns loss curves."""
    return [name for name in score_registry.names() if "ntk" in score_registry.get(name).needs]


@dataclasses.dataclass(frozen=True)
class Selection:
    """The result of :func:`select`.

    Attributes:
      task: the task spec.
      table: one row per model, best first by the primary (first) score: ``model``, ``reference``, each score,
        ``rank_<score>`` (1 = best) and ``seconds_<score>`` (seconds of the score itself, its inputs excluded).
      curves: ``{model: [T] predicted linearized training loss L_τ / L_0}`` at ``CURVE_TIMES``.
      num_samples: N, the size of the scoring subset.
      scores: the score names, the first one orders ``table``.
      input_seconds: ``{input: seconds}`` summed over models for each shared input (``features``, ``ntk``, ...;
        ``linfit.scores.registry``), computed once per model whatever the number of scores reading it; JAX
        compilation excluded (``compile_seconds``).
      wall_seconds: wall time of the whole selection (loading models and data included).
      compile_seconds: wall time of JAX tracing and XLA compilation (``linfit.timing``): once per architecture
        and input shape, not per model.
      compilations: the number of XLA compilations.
      cached_compilations: how many of them were read from the persistent compilation cache (the command
        line's, ``linfit.cli.compile_cache_dir``) instead of compiled.
      load_seconds: loading the task, the models and any source data (compilation excluded).
      cpu_seconds: CPU time of the process during the selection, user + system, all threads.
      head_samples: random head rows of the NTK-based scores (``None``: the exact head average).
    """

    task: str
    table: pd.DataFrame
    curves: dict[str, np.ndarray]
    num_samples: int
    scores: tuple[str, ...] = ()
    input_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    wall_seconds: float = 0.0
    compile_seconds: float = 0.0
    compilations: int = 0
    cached_compilations: int = 0
    load_seconds: float = 0.0
    cpu_seconds: float = 0.0
    head_samples: int | None = None

    def recommended(self, k: int = 3) -> list[str]:
        """The ``k`` best models by the primary score (fewer if the zoo is smaller)."""
        return list(self.table.model[:k])

    def agreement(self) -> pd.DataFrame:
        """``[S, S]`` Spearman rank correlation between the rankings of the models by each pair of scores
        (NaN where a score is constant over the models)."""
        return self.table[list(self.scores)].corr(method="spearman")


def _check_named_once(names: Sequence[str], what: str, noun: str) -> None:
    """``ConfigError`` naming every entry of ``names`` given more than once (``what``: the names' kind, plural)."""
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ConfigError(f"{what} named more than once: {', '.join(repeated)}; name each {noun} once")


def select(
    task: str | None = None,
    scores: Sequence[str] = DEFAULT_SCORES,
    *,
    data=None,
    regime: str | None = None,
    zoo: str | os.PathLike | Sequence[ZooEntry] = "embedded",
    models: Sequence[str] | None = None,
    per_class: int = 25,
    seed: int = 0,
    head_samples: int | None = DEFAULT_HEAD_SAMPLES,
    weights_dir=None,
    progress: bool = False,
) -> Selection:
    """Score every model of a zoo on a task and rank them.

    Every name and option is checked, and the zoo file read, before any data is loaded or model scored. Each
    model sees the scoring images at its own input size and normalisation (``ZooEntry.preprocessing``).

    Args:
      task: an embedded task spec ``"<target>:<regime>"`` (``linfit.data.tasks()``; default ``DEFAULT_TASK``);
        not with ``data``.
      scores: registered score names (``linfit.scores.names()``); the first one orders the table.
      data: your own labelled images instead of an embedded task: a path (``linfit.data.load_data``: image
        folder, ``.npz``, IDX folder, tfds ``data_dir``) or a ``linfit.data.Dataset``.
      regime: with ``data``: ``"5shot"``, ``"20shot"`` (default, ``DEFAULT_REGIME``) or ``"full"`` (any
        ``"<k>shot"``).
      zoo: ``"embedded"`` (default), ``"imagenet"``, the path of a TOML zoo file (``linfit.zoo.source``), or a
        list of ``ZooEntry``.
      models: names of zoo models to score (default ``None``: the whole zoo).
      per_class: at most this many training images per class are scored (the paper: 25), ``>= 1``.
      seed: seeds the k-shot sample, the scoring subset, the random heads and a split of ``data`` without one.
      head_samples: random (Rademacher) head rows for the NTK-based scores (``linfit.scores.lgc``): an unbiased
        estimate at k >= 1 backward passes per sample (default ``DEFAULT_HEAD_SAMPLES``); ``None`` for the exact
        head average (D passes per sample).
      weights_dir: a build of the embedded zoo other than the committed one.
      progress: show a progress bar over models.

    Returns:
      A :class:`Selection`.

    Raises:
      ConfigError: no score; a score or model named twice; ``seed`` not an integer ``>= 0`` (a ``bool`` is
        refused); an empty ``models`` or zoo; ``per_class`` or ``head_samples`` not a positive integer; both
        ``task`` and ``data``; ``regime`` without ``data``; a zoo that is neither a known name nor a file,
        ``weights_dir`` with a zoo other than ``"embedded"``, or a zoo file breaking its rules
        (:func:`linfit.zoo.source.load_zoo`); Domain Similarity asked for models without an embedded source
        domain.
      UnknownNameError: an unknown score, model or task dataset (all unknown names are listed).
      DatasetError: a malformed task spec or regime, unreadable ``data``, ``data`` with fewer than two classes,
        or a regime asking for more images than a class has.
      CheckpointError: a weight file that is missing, altered (sha256), non-finite or does not fit its
        architecture; an unreadable manifest of the embedded zoo.
      NonFiniteError: a model's score inputs or scores meet NaN or inf although its weights loaded cleanly (its
        forward pass overflows); re-raised with the model's name and checkpoint path.
    """
    clock = Stopwatch().start()
    if not scores:
        raise ConfigError("select needs at least one score (linfit.scores.names())")
    check_known("score", scores, score_registry.names(), "linfit.scores.names()")
    _check_named_once(scores, "scores", "score")
    if not is_count(seed, 0):
        raise ConfigError(f"seed must be an integer >= 0 (it seeds numpy's SeedSequence); got {seed!r}")
    if data is not None and task is not None:
        raise ConfigError("give either task (an embedded task) or data (your own images), not both")
    if data is None and regime is not None:
        raise ConfigError(f"regime goes with data; an embedded task names its own regime, e.g. '{DEFAULT_TASK}'")
    entries = list(zoo) if not isinstance(zoo, (str, os.PathLike)) else load_zoo(zoo, weights_dir=weights_dir)
    if not entries:
        raise ConfigError("the zoo has no model to score")
    by_name = {e.name: e for e in entries}
    if models is not None:
        models = list(models)
        if not models:
            raise ConfigError("no model to score: name at least one zoo model, or none at all for the whole zoo")
        check_known("zoo model", models, by_name, "linfit.zoo.source.load_zoo(...)")
        _check_named_once(models, "zoo models", "model")
        entries = [by_name[name] for name in models]
    for option, value in (("per_class", per_class), ("head_samples", head_samples)):
        if value is not None and not is_count(value):
            exact = " (or None for the exact head average, the command line's --head-samples 0)"
            raise ConfigError(f"{option} must be a positive integer{exact if option == 'head_samples' else ''}; "
                              f"got {value!r}")
    registered = [score_registry.get(name) for name in scores]
    needs = set().union(*(s.needs for s in registered))
    check_source_domains(entries, registered)
    with Stopwatch() as loading:
        if data is None:
            target = load_task(task or DEFAULT_TASK, seed=seed)
        else:
            regime = parse_regime(regime or DEFAULT_REGIME, " (regime)")
            dataset = (require_classes(data, f"the dataset {data.name!r}") if isinstance(data, Dataset)
                       else load_data(data, seed=seed))
            target = load_task(TaskSpec(dataset.name, regime), seed=seed, dataset=dataset)
        subset = target.scoring_set(per_class=per_class, seed=seed)
    load_seconds = loading.run_seconds
    task_name = str(target.spec)
    task_inputs = TaskInputs(subset.x, subset.y, seed=seed)
    rows, curves, input_seconds, prepared = [], {}, {}, {}
    for entry in tqdm(entries, desc="models", disable=not progress):
        with Stopwatch() as loading:
            model, variables = entry.load()
            if entry.preprocessing not in prepared:
                prepared[entry.preprocessing] = entry.preprocessing.prepare(subset.x)
            source = None
            if needs & SOURCE_INPUTS:
                source_x, source_y = source_sample(entry.source_domain, seed=seed)
                source = (entry.preprocessing.prepare(source_x), source_y)
        load_seconds += loading.run_seconds
        try:
            inputs, seconds = extract_inputs(model, variables, prepared[entry.preprocessing], needs, task=task_inputs,
                                             source_data=source, seed=seed, model_name=entry.name,
                                             task_name=task_name, head_samples=head_samples)
            row = {"model": entry.name, "reference": entry.reference}
            for score in registered:
                with Stopwatch() as scoring:
                    row[score.name] = score(subset.y, **inputs)
                row[f"seconds_{score.name}"] = scoring.run_seconds
        except NonFiniteError as err:
            raise NonFiniteError(f"model {entry.name} (checkpoint {entry.path}): {err}. Its weights passed the load "
                                 "checks, so they overflow in its forward pass: the file is probably damaged - "
                                 "restore it, and record its sha256 in the zoo file to catch any change") from err
        seconds.pop("source_class_counts", None)  # computed together with the class means, timed once
        for key, value in seconds.items():
            input_seconds[key] = input_seconds.get(key, 0.0) + value
        rows.append(row)
        if "ntk" in inputs:
            curves[entry.name] = loss_ratio(inputs["ntk"], subset.y, CURVE_TIMES)
    table = pd.DataFrame(rows)
    for score in registered:
        table[f"rank_{score.name}"] = table[score.name].rank(ascending=False, method="min").astype(int)
    table = table.sort_values(f"rank_{registered[0].name}", kind="stable").reset_index(drop=True)
    clock.stop()
    return Selection(task=task_name, table=table, curves=curves, num_samples=int(subset.y.size),
                     scores=tuple(scores), input_seconds=input_seconds, wall_seconds=clock.wall_seconds,
                     compile_seconds=clock.compile_seconds, compilations=clock.compilations,
                     cached_compilations=clock.cached_compilations,
                     load_seconds=load_seconds, cpu_seconds=clock.cpu_seconds, head_samples=head_samples)


def plot_curves(selection: Selection, path, *, top: int = 3) -> None:
    """Save the predicted linearized loss curves as an image: the ``top`` recommended models in colour and
    labelled (drawn best on top), the other reference (generalist) models dashed, every other model thin grey; a vertical line marks the τ at
    which ``linearized_loss`` reads the curve.

    Raises:
      ConfigError: the selection has no curves (none of its scores computes the fine-tuning NTK).
    """
    if not selection.curves:
        raise ConfigError(f"no loss curves to plot: none of the scores {list(selection.scores)} computes the "
                          f"fine-tuning NTK; add one of {', '.join(curve_scores())}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recommended = [m for m in selection.recommended(top) if m in selection.curves]
    reference = set(selection.table.model[selection.table.reference])
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curve in selection.curves.items():
        if name not in recommended and name not in reference:
            ax.plot(CURVE_TIMES, curve, color="0.75", linewidth=0.6, zorder=1)
    others = len(set(selection.curves) - set(recommended) - reference)
    if others:
        ax.plot([], [], color="0.75", linewidth=0.6, label=f"other models ({others})")
    for name in sorted(reference - set(recommended)):
        if name in selection.curves:
            ax.plot(CURVE_TIMES, selection.curves[name], "--", color="black", linewidth=1.2, zorder=2,
                    label=f"{name} (reference)")
    colours = plt.get_cmap("tab10").colors
    for rank, name in enumerate(recommended, 1):
        ax.plot(CURVE_TIMES, selection.curves[name], color=colours[rank - 1], linewidth=2.2, zorder=3 + 1 / rank,
                label=f"#{rank} {name}" + (" (reference)" if name in reference else ""))
        at_tau = np.interp(np.log(CURVE_TAU), np.log(CURVE_TIMES), selection.curves[name])
        ax.plot([CURVE_TAU], [at_tau], "o", color=colours[rank - 1], zorder=4 + 1 / rank)
    ax.axvline(CURVE_TAU, color="0.3", linestyle=":", linewidth=1)
    ax.annotate(f"τ = {CURVE_TAU:g}: linearized_loss reads −L_τ/L_0 here", (CURVE_TAU, 1.0),
                xycoords=("data", "axes fraction"), xytext=(4, -12), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("normalised time τ = η t tr(Θ)/N")
    ax.set_ylabel("predicted training loss L_τ / L_0")
    ax.set_title(f"linearized fine-tuning on {selection.task} (N={selection.num_samples}); "
                 f"top {len(recommended)} by {selection.scores[0]} in colour", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _column_width(name: str) -> int:
    return max(11, len(name) + 1)


def format_table(selection: Selection, *, top: int = 3, timing: bool = True) -> str:
    """A plain-text report: the recommendation, the ranking (each score with its rank), a legend of the
    scores, how much their rankings agree (Spearman) and, with ``timing``, where the time went in short
    (:func:`format_profile` has it phase by phase)."""
    table, names = selection.table, list(selection.scores)
    primary = names[0]
    best = selection.recommended(top)
    model_width = max(34, *(len(m) + 3 for m in table.model))
    which = f"the top {len(best)} by {primary}" if len(best) < len(table) else f"every model scored, in {primary}'s order"
    lines = [f"task {selection.task}: {counted(len(table), 'model')} scored on N={selection.num_samples} training images, "
             f"ordered by {primary} (higher is better for every score).",
             f"Recommendation: fine-tune {_join(best)} first ({which}).", ""]
    lines.append(f"{'model':{model_width}s}" + "".join(f"{n:>{_column_width(n)}s} rank" for n in names))
    for _, row in table.iterrows():
        label = row.model + (" *" if row.reference else "")
        cells = "".join(f"{row[n]:>{_column_width(n)}.4f} #{row[f'rank_{n}']:<3d}" for n in names)
        lines.append(f"{label:{model_width}s}{cells}".rstrip())
    if table.reference.any():
        lines.append("* the reference model (e.g. the generalist)")
    lines += ["", "Scores:"]
    name_width = max(len(n) for n in names)
    for n in names:
        score = score_registry.get(n)
        lines.append(f"  {n:{name_width}s}  {score.summary} [{score.reference}]")
    ntk_scores = [n for n in names if any(need.startswith("ntk") for need in score_registry.get(n).needs)]
    if ntk_scores:
        rows = ("the exact head average" if selection.head_samples is None
                else f"{selection.head_samples} random head rows (--head-samples; 0 = the exact head average)")
        lines.append(f"  ({_join(ntk_scores)}: fine-tuning NTK from {rows})")
    if len(names) > 1:
        agreement = selection.agreement()
        lines += ["", f"Agreement of the score rankings (Spearman ρ over the {len(table)} models):",
                  " " * (name_width + 2) + "".join(f"{n:>{_column_width(n)}s}" for n in names[1:])]
        for i, a in enumerate(names[:-1]):
            cells = "".join(" " * _column_width(b) if j <= i else f"{agreement.loc[a, b]:>{_column_width(b)}.2f}"
                            for j, b in enumerate(names[1:], 1))
            lines.append(f"  {a:{name_width}s}{cells}")
    if not timing:
        return "\n".join(lines)
    lines += ["", f"Time: {selection.wall_seconds:.1f} s in all."]
    users = {key: [n for n in names if key in score_registry.get(n).needs] for key in selection.input_seconds}
    shared = [f"{key} {sec:.1f} s ({', '.join(users[key])})" for key, sec in selection.input_seconds.items()]
    if shared:
        lines.append("  inputs, computed once per model and shared by the scores in brackets: " + "; ".join(shared))
    own = [f"{n} {table[f'seconds_{n}'].sum():.1f} s" for n in names]
    lines.append("  the scores themselves, given their inputs: " + "; ".join(own))
    lines.append(f"  compiling (once per architecture and input shape) {selection.compile_seconds:.1f} s; loading the "
                 f"models and the task {selection.load_seconds:.1f} s; the rest, {_rest_seconds(selection):.1f} s")
    return "\n".join(lines)


def _rest_seconds(selection: Selection) -> float:
    """Wall time outside every timed phase, at least 0 (the phases' timers overlap by milliseconds)."""
    own = selection.table[[f"seconds_{n}" for n in selection.scores]].to_numpy().sum()
    return max(0.0, selection.wall_seconds - selection.compile_seconds - selection.load_seconds
            - sum(selection.input_seconds.values()) - own)


def format_profile(selection: Selection) -> str:
    """Where the wall time of ``selection`` went, phase by phase (``linfit select --profile``): loading,
    compiling (JAX tracing + XLA, once per architecture and input shape), each shared input, each score, the
    rest (loss curves, bookkeeping); and the process's CPU time over the same span (on a machine shared with
    other work the CPU time, divided by the cores the work can use, estimates the wall time on an idle one)."""
    table, wall = selection.table, selection.wall_seconds
    cached = f", {selection.cached_compilations} read from the cache" if selection.cached_compilations else ""
    phases = [("load", selection.load_seconds, "task, models and source data"),
              ("compile", selection.compile_seconds, f"{selection.compilations} XLA compilations{cached}")]
    phases += [(key, sec, "shared input") for key, sec in selection.input_seconds.items()]
    phases += [(f"score {n}", table[f"seconds_{n}"].sum(), "given its inputs") for n in selection.scores]
    phases.append(("rest", _rest_seconds(selection), "loss curves, ranking, bookkeeping"))
    width = max(len(name) for name, _, _ in phases)
    cores = selection.cpu_seconds / wall if wall > 0 else 0.0
    lines = [f"Profile of {len(table)} models (wall seconds; {selection.cpu_seconds:.1f} s of CPU, user + system, "
             f"in {wall:.1f} s of wall time: {cores:.2f} cores busy on average):"]
    lines += [f"  {name:{width}s} {sec:8.2f} s {100 * sec / wall if wall > 0 else 0.0:5.1f} %  {what}"
              for name, sec, what in phases]
    lines.append(f"  {'total':{width}s} {wall:8.2f} s")
    return "\n".join(lines)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
