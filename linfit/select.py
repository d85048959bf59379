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
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from linfit import scores as score_registry
from linfit import zoo
from linfit.data import load_task
from linfit.dynamics import LinearizedDynamics
from linfit.errors import ConfigError
from linfit.extract import TaskInputs, extract_inputs, source_sample

DEFAULT_TASK = "font_digits:20shot"
DEFAULT_SCORES = ("lfc", "lgc", "linearized_loss", "logme", "leep")
#: Normalised times (units of the mean kernel eigenvalue, see ``linfit.scores.linearized``) of the loss curves.
CURVE_TIMES = np.logspace(-2, 2, 41)


@dataclasses.dataclass(frozen=True)
class Selection:
    """The result of :func:`select`.

    Attributes:
      task: the task spec.
      table: one row per model, best first by the primary (first) score: ``model``, ``reference``, each score,
        ``rank_<score>`` (1 = best) and ``seconds_<score>`` (the score plus the inputs it used, computed alone).
      curves: ``{model: [T] predicted linearized training loss L_τ / L_0}`` at ``CURVE_TIMES``.
      num_samples: N, the size of the scoring subset.
    """

    task: str
    table: pd.DataFrame
    curves: dict[str, np.ndarray]
    num_samples: int


def select(
    task: str = DEFAULT_TASK,
    scores: Sequence[str] = DEFAULT_SCORES,
    *,
    models: Sequence[str] | None = None,
    per_class: int = 25,
    seed: int = 0,
    head_samples: int | None = 8,
    weights_dir=None,
    progress: bool = False,
) -> Selection:
    """Score every model of the zoo on ``task`` and rank them.

    Args:
      task: an embedded task spec ``"<target>:<regime>"`` (``linfit.data.tasks()``).
      scores: registered score names (``linfit.scores.names()``); the first one orders the table.
      models: zoo model names (default: the whole zoo, ``linfit.zoo.names()``).
      per_class: at most this many training images per class are scored (the paper: 25).
      seed: seeds the k-shot sample, the scoring subset and the random heads.
      head_samples: random head rows for the NTK-based scores (``linfit.scores.lgc``): an unbiased estimate at
        k backward passes per sample; ``None`` for the exact head average (D passes per sample).
      weights_dir: a zoo build other than the committed one.
      progress: show a progress bar over models.

    Returns:
      A :class:`Selection`.
    """
    if not scores:
        raise ConfigError("select needs at least one score")
    registered = [score_registry.get(name) for name in scores]
    needs = set().union(*(s.needs for s in registered))
    target = load_task(task, seed=seed)
    subset = target.scoring_set(per_class=per_class, seed=seed)
    task_inputs = TaskInputs(subset.x, subset.y, seed=seed)
    rows, curves = [], {}
    for name in tqdm(list(models or zoo.names(weights_dir)), desc="models", disable=not progress):
        candidate = zoo.load(name, weights_dir=weights_dir)
        source = None
        if needs & {"source_class_means", "source_class_counts"}:
            source = source_sample(candidate.source_domain, seed=seed)
        inputs, input_seconds = extract_inputs(candidate.model, candidate.variables, subset.x, needs, task=task_inputs,
                                               source_data=source, seed=seed, model_name=name, task_name=task,
                                               head_samples=head_samples)
        row = {"model": name, "reference": candidate.is_reference}
        for score in registered:
            start = time.perf_counter()
            row[score.name] = score(subset.y, **inputs)
            row[f"seconds_{score.name}"] = time.perf_counter() - start + sum(input_seconds[k] for k in score.needs)
        rows.append(row)
        if "ntk" in inputs:
            curves[name] = _loss_curve(inputs["ntk"], subset.y)
    table = pd.DataFrame(rows)
    for score in registered:
        table[f"rank_{score.name}"] = table[score.name].rank(ascending=False, method="min").astype(int)
    table = table.sort_values(f"rank_{registered[0].name}", kind="stable").reset_index(drop=True)
    return Selection(task=str(target.spec), table=table, curves=curves, num_samples=int(subset.y.size))


def _loss_curve(kernel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``L_τ / L_0`` at ``CURVE_TIMES`` for one-hot targets (the time normalisation of ``linearized_loss``)."""
    targets = np.eye(int(labels.max()) + 1)[labels]
    scale = labels.size / np.trace(kernel)
    return LinearizedDynamics.from_kernel(kernel, targets).train_loss(CURVE_TIMES * scale) / (0.5 * labels.size)


def plot_curves(selection: Selection, path) -> None:
    """Save the predicted linearized loss curves (one line per model, reference dashed) as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = set(selection.table.model[selection.table.reference])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in selection.curves.items():
        ax.plot(CURVE_TIMES, curve, "--" if name in reference else "-", linewidth=1.2 if name in reference else 0.8,
                label=name if name in reference else None)
    ax.set_xscale("log")
    ax.set_xlabel("normalised time τ = η t tr(Θ)/N")
    ax.set_ylabel("predicted training loss L_τ / L_0")
    ax.set_title(f"linearized fine-tuning on {selection.task} (N={selection.num_samples})")
    if reference:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(selection: Selection) -> str:
    """A plain-text ranking: model, each score with its rank, and the seconds each score took."""
    table = selection.table
    score_names = [c for c in table.columns if f"rank_{c}" in table.columns]
    header = f"{'model':34s}" + "".join(f"{name:>22s}" for name in score_names)
    lines = [f"task {selection.task}: {len(table)} models scored on N={selection.num_samples} training images", header]
    for _, row in table.iterrows():
        mark = " *" if row.reference else ""
        cells = "".join(f"{row[name]:>14.4f} (#{row[f'rank_{name}']:<3d})" for name in score_names)
        lines.append(f"{row.model + mark:34s}{cells}")
    seconds = "".join(f"{table[f'seconds_{name}'].sum():>21.1f}s" for name in score_names)
    lines.append(f"{'total seconds per score':34s}{seconds}")
    lines.append("* the generalist (reference) model; higher scores predict better fine-tuning")
    return "\n".join(lines)
