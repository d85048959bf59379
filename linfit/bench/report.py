"""Reports computed from a benchmark store: ranking metrics per task, their averages, costs, and figures.

The store holds two kinds of units (see ``linfit.bench.grid``), each with ``config`` keys ``model``, ``task``
(the target task name), ``regime`` (``5shot``/``20shot``/``full``), ``seed`` and ``reference`` (true for the
generalist model the gains are measured against, the paper's ImageNet expert):

* ``"scores"``: ``record["scores"] = {score_name: value}``, ``record["timings"] = {score_name: seconds}``;
* ``"finetune"``: ``record["accuracy"]`` (test accuracy with the learning rate chosen on validation),
  ``record["oracle_accuracy"]`` (the paper's choice: the best test accuracy over learning rates), and
  ``record["seconds"]`` (wall time of the whole learning-rate sweep), and, in stores written since the Fig. 8
  section exists, ``record["gram"]`` (``linfit.bench.grid.gram_record``: the feature Grams before and after
  fine-tuning of a small class-sorted test sample, with their LFC), and in stores written since the report has
  intervals, ``record["test_correct"]`` (the chosen lr's per-image test correctness, ``store.pack_bools``: one
  vector, or since the ground truth has several fine-tuning seeds a list of one vector per seed).

Each regime's headline table gives the mean of every ranking metric over tasks with bootstrap intervals, Random
as its exact expectation, trivial baselines and per-cluster results (``linfit.bench.uncertainty``); the paired
differences that the noise cannot explain follow it.

Every number in a report is recomputed from the store, so a report can be regenerated at any time, including
while a benchmark is still running (tasks with missing units are reported as incomplete and left out of the
averages).

Configurations. Every unit has a *setting* (``linfit.bench.store.setting``: its config without the grid
coordinates, e.g. the epochs of a fine-tuning, the scoring subset size of a score) with a short id. A report
compares one fine-tuning setting with one scoring setting and says which (with the linfit versions that wrote
them); a store holding several settings of a kind is refused with the list of them, and ``settings=[id, ...]``
(``linfit report --setting ID``) chooses one for each kind that has several. The frames ``scores_frame`` and ``finetune_frame`` keep
every setting, in their ``setting`` column.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from linfit._text import counted
from linfit.bench.metrics import ranking_metrics
from linfit.bench.store import ResultStore, setting, setting_id, unpack_bools
from linfit.errors import LinfitError

GROUP = ["task", "regime", "seed"]
GROUND_TRUTHS = {"accuracy": "lr chosen on validation, then refit on the whole training split",
                 "oracle_accuracy": "the best test accuracy over the lr searched, as the paper; in stores of "
                                    "`finetune_grid` those runs trained on the fit split only"}
"""The two ground truths a report can rank against, as the report names them."""
KINDS = {"finetune": "fine-tuning", "scores": "scoring"}
ONE_DRAW = "random (one draw)"  # the report's label of the stored single draw of the `random` score


def scores_frame(store: ResultStore) -> pd.DataFrame:
    """Long table: one row per (model, task, regime, seed, setting, score) with ``value`` and ``seconds``."""
    rows = []
    for unit in store.units("scores"):
        cfg, rec = unit["config"], unit["record"]
        for name, value in rec["scores"].items():
            rows.append({**_ids(cfg, "scores"), "score": name, "value": value,
                         "seconds": rec["timings"].get(name, np.nan),
                         "compile_seconds": rec.get("compile_seconds", np.nan)})
    return pd.DataFrame(rows, columns=[*_ID_COLUMNS, "score", "value", "seconds", "compile_seconds"])


def finetune_frame(store: ResultStore) -> pd.DataFrame:
    """One row per fine-tuned (model, task, regime, seed, setting): accuracy, oracle accuracy (NaN in a record
    without one), seconds, and
    ``test_correct`` (``[R, I]`` bool: per fine-tuning seed, per test image; ``R = 1`` for records of one run;
    ``None`` in stores written before it was recorded); the protocol's outcome where the record has it
    (``linfit.bench.grid.finetune_record``; NaN or ``None`` otherwise): ``lr`` (the chosen η), ``bracketed``,
    per refit run ``accuracy_per_seed`` (percent), ``steps`` and ``converged`` (``[R]`` arrays), and
    ``search_converged`` (``[L·R]``, every search run).

    Raises ``LinfitError`` when a unit's per-image correctness does not average to its accuracy."""
    rows = []
    for unit in store.units("finetune"):
        cfg, rec = unit["config"], unit["record"]
        correct = _test_correct(rec)
        # the accuracy was averaged in float32; one image more or less moves it by 100 / I percent
        if correct is not None and not math.isclose(100.0 * correct.mean(), rec["accuracy"],
                                                    abs_tol=50.0 / max(correct.shape[1], 1)):
            raise LinfitError(f"unit {unit['key']!r}: its per-image test correctness gives "
                              f"{100 * correct.mean():.4f} % but its accuracy is {rec['accuracy']:.4f} %; the "
                              "record is inconsistent: delete the unit and recompute it")
        rows.append(
            {
                **_ids(cfg, "finetune"),
                "accuracy": rec["accuracy"],
                "oracle_accuracy": rec.get("oracle_accuracy", np.nan),
                "seconds": rec["seconds"],
                "compile_seconds": rec.get("compile_seconds", np.nan),
                "test_correct": correct,
                "lr": rec.get("lr", np.nan),
                "bracketed": rec.get("bracketed"),
                **{key: None if key not in rec else np.ravel(rec[key]) for key in _PER_RUN},
            }
        )
    return pd.DataFrame(rows, columns=[*_ID_COLUMNS, "accuracy", "oracle_accuracy", "seconds", "compile_seconds",
                                       "test_correct", "lr", "bracketed", *_PER_RUN])


_PER_RUN = ("accuracy_per_seed", "steps", "converged", "search_converged")
"""Per-run fields of a ``finetune_grid`` record that ``finetune_frame`` keeps as flat arrays."""


def _test_correct(record: dict) -> np.ndarray | None:
    """``[R, I]`` bool from a record's ``"test_correct"``: one packed vector (a single run) or a list of R of them
    (one per fine-tuning seed, ``linfit.bench.grid.finetune_record``); ``None`` when absent."""
    if "test_correct" not in record:
        return None
    packed = record["test_correct"]
    rows = [unpack_bools(p) for p in (packed if isinstance(packed, list) else [packed])]
    if not rows or len({row.size for row in rows}) != 1:
        raise LinfitError(f"a record's test_correct must hold one or more packed vectors of one length; got "
                          f"lengths {[row.size for row in rows]}")
    return np.stack(rows)


_ID_COLUMNS = ["model", "architecture", "task", "regime", "seed", "reference", "setting"]


def _ids(cfg: dict, kind: str) -> dict:
    """The identity columns of a unit; ``architecture`` is the model's name in stores that predate it."""
    return {"model": cfg["model"], "architecture": cfg.get("architecture", cfg["model"]), "task": cfg["task"],
            "regime": cfg["regime"], "seed": cfg.get("seed", 0), "reference": bool(cfg.get("reference", False)),
            "setting": setting_id(kind, cfg)}


def settings_frame(store: ResultStore) -> pd.DataFrame:
    """One row per (kind, setting) of the store's ``"scores"`` and ``"finetune"`` units: ``kind``, ``setting``
    (the id), ``config`` (the setting as sorted JSON), ``units`` (stored rows) and ``versions`` (the linfit
    versions that wrote them, comma-separated)."""
    found: dict[tuple[str, str], dict] = {}
    for unit in store.units():
        if unit["kind"] in KINDS:
            kind, cfg = unit["kind"], unit["config"]
            ident = setting_id(kind, cfg)
            entry = found.setdefault((kind, ident), {"kind": kind, "setting": ident, "units": 0, "versions": set(),
                                                     "config": json.dumps(setting(cfg), sort_keys=True)})
            entry["units"] += 1
            entry["versions"].add(unit["version"])
    rows = [{**entry, "versions": ", ".join(sorted(entry["versions"]))} for _, entry in sorted(found.items())]
    return pd.DataFrame(rows, columns=["kind", "setting", "config", "units", "versions"])


def _one_setting(frame: pd.DataFrame, kind: str, known: pd.DataFrame,
                 settings: Collection[str] | None) -> pd.DataFrame:
    """The rows of ``frame`` (units of ``kind``) in the chosen setting (all rows when ``settings`` names none of
    this kind); ``LinfitError`` when several settings remain."""
    chosen = frame.setting.isin(list(settings or ()))
    if chosen.any():
        frame = frame[chosen]
    found = sorted(frame.setting.unique())
    if len(found) <= 1:
        return frame
    table = known[(known.kind == kind) & known.setting.isin(found)]
    configs = {row.setting: json.loads(row.config) for row in table.itertuples()}
    fields = sorted({k for c in configs.values() for k in c})
    differ = [k for k in fields if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    listed = "; ".join(f"{row.setting} ({', '.join(f'{k}={configs[row.setting].get(k)}' for k in differ)}, "
                       f"{row.units} units)" for row in table.itertuples())
    raise LinfitError(f"the store holds {len(found)} {KINDS[kind]} configurations, differing in "
                      f"{', '.join(differ)}: {listed}. A report never averages across configurations: choose one "
                      f"with `linfit report --setting ID` (write_report(..., settings=[ID]))")


def _frames(store: ResultStore, settings: Collection[str] | None,
            known: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(scores_frame, finetune_frame)`` reduced to one setting each (see the module docstring); ``known``:
    the store's ``settings_frame`` if already computed."""
    known = settings_frame(store) if known is None else known
    unknown = sorted(set(settings or ()) - set(known.setting))
    if unknown:
        raise LinfitError(f"no unit of the store has setting {', '.join(unknown)}; its settings: "
                          + "; ".join(f"{r.kind} {r.setting} {r.config}" for r in known.itertuples()))
    return (_one_setting(scores_frame(store), "scores", known, settings),
            _one_setting(finetune_frame(store), "finetune", known, settings))


def ranking_frame(store: ResultStore, *, accuracy: str = "accuracy", settings: Collection[str] | None = None,
                  models: Collection[str] | None = None) -> pd.DataFrame:
    """Ranking metrics of every score on every complete (task, regime, seed) group (``complete_groups``: the zoo
    is ``models``, or every model fine-tuned in the store), for one fine-tuning and one scoring setting
    (``settings``: ids choosing them; ``LinfitError`` when a kind has several, see the module docstring).

    A group is ranked when, besides, at most one reference model is among its models; the gains are over its
    accuracy, or over the mean accuracy of the group's models when there is none (a zoo without a generalist, such
    as the ImageNet zoo). ``accuracy`` picks the ground truth column (``"accuracy"``: lr chosen on validation;
    ``"oracle_accuracy"``: the paper's lr chosen on test). Oracle rows ``best`` and ``worst`` carry the
    best/worst gain in ``top1_gain``/``top3_gain``. Raises ``LinfitError`` when a unit of a complete group does
    not record that ground truth.
    """
    scores, finetune, *_ = complete_groups(*_frames(store, settings), models)
    return _ranking(scores, finetune, accuracy)


def complete_groups(scores: pd.DataFrame, finetune: pd.DataFrame, models: Collection[str] | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The rows of the complete (task, regime, seed) groups of ``scores_frame`` / ``finetune_frame``, and one
    sentence per group and per score left out.

    The zoo is ``models`` (a grid's planned models: give it while the grid is running, or the group being
    computed looks complete with the models it has so far), else every model fine-tuned anywhere in
    ``finetune``; rows of models outside it are dropped. A group is complete when every model of the zoo is
    fine-tuned in it and every score stored for any model of the group is stored for all of them. A score whose
    stored value is NaN or infinite for some model of a complete group (a score that failed on that input) is
    dropped from every group, so that every table of a report ranks the same scores.

    Returns ``(scores, finetune, groups_left_out, scores_left_out)``.
    """
    zoo = set(finetune.model) if models is None else set(models)
    finetune = finetune[finetune.model.isin(zoo)]
    scores = scores[scores.model.isin(zoo)]
    keep, left_out = [], []
    scores_of = dict(tuple(scores.groupby(GROUP)))
    for key, ft in finetune.groupby(GROUP):
        sc = scores_of.get(key, scores.iloc[:0])
        tuned = set(ft.model)
        scored = [set(group.model) for _, group in sc.groupby("score")]
        unscored = tuned - set.intersection(*scored) if scored else set()
        if tuned == zoo and not unscored:
            keep.append(key)
            continue
        left_out.append(f"{'/'.join(map(str, key))} ({len(tuned)} of {len(zoo)} models fine-tuned"
                        + (f", {len(unscored)} of them without every score)" if unscored else ")"))
    kept = pd.MultiIndex.from_tuples(keep, names=GROUP) if keep else None

    def rows(frame):
        if kept is None:
            return frame.iloc[:0]
        return frame[pd.MultiIndex.from_frame(frame[GROUP]).isin(kept)]

    scores = rows(scores)
    finite = np.isfinite(pd.to_numeric(scores.value, errors="coerce").astype(np.float64))
    failed = {name: sorted({"/".join(map(str, key)) for key in zip(*(group[c] for c in GROUP))})
              for name, group in scores[~finite].groupby("score")}
    dropped = [f"score `{name}` (not finite in {', '.join(where)})" for name, where in sorted(failed.items())]
    return scores[~scores.score.isin(failed)], rows(finetune), left_out, dropped


def _ranking(scores: pd.DataFrame, finetune: pd.DataFrame, accuracy: str) -> pd.DataFrame:
    missing = finetune[finetune[accuracy].isna()]
    if len(missing):
        raise LinfitError(f"{counted(len(missing), 'fine-tuning unit')} of the complete task groups "
                          f"({', '.join(sorted(set(missing.model)))}) record no `{accuracy}`: rank against a ground "
                          f"truth every unit records (`{next(a for a in GROUND_TRUTHS if a != accuracy)}`) or "
                          "recompute those units")
    rows = []
    for key, ft in finetune.groupby(GROUP):
        refs = ft[ft.reference]
        sc = scores.merge(ft[["model", *GROUP]], on=["model", *GROUP])
        if len(refs) > 1 or sc.empty:
            continue
        acc = ft.set_index("model")[accuracy]
        reference = float(refs[accuracy].iloc[0]) if len(refs) else float(acc.mean())
        ident = dict(zip(GROUP, key))
        for name, group in sc.groupby("score"):
            if set(group.model) != set(acc.index):
                continue
            values = group.set_index("model").loc[acc.index, "value"].to_numpy()
            rows.append({**ident, "score": name, **ranking_metrics(values, acc.to_numpy(), reference).as_dict()})
        for oracle, pick in (("best", acc.max()), ("worst", acc.min())):
            rows.append({**ident, "score": oracle, "top1_gain": pick - reference, "top3_gain": pick - reference})
    return pd.DataFrame(rows)


def summary_frame(ranking: pd.DataFrame) -> pd.DataFrame:
    """Mean over target tasks of each metric, per (regime, score), a task's k-shot draws (``seed``) averaged
    first, as the bootstrap's clusters weigh them (``linfit.bench.stats.bootstrap``): the paper's Fig. 4 Avg and
    Fig. 6. Raises ``LinfitError`` when ``ranking`` is empty."""
    if ranking.empty:
        raise LinfitError("the store holds no complete (task, regime) group yet: nothing to summarise")
    metrics = ["spearman", "weighted_tau", "kendall", "pearson", "trials_to_best", "top1_gain", "top3_gain",
               "regret"]
    per_task = ranking.groupby(["regime", "score", "task"])[metrics].mean()
    return per_task.groupby(["regime", "score"]).mean().reset_index()


COMPILE_ROWS = {"scores": "compile: scores", "finetune": "compile: fine-tuning"}
"""The cost table's rows of JAX tracing and XLA compilation, charged once per architecture (``cost_frame``)."""


def cost_frame(store: ResultStore, *, settings: Collection[str] | None = None,
               models: Collection[str] | None = None) -> pd.DataFrame:
    """Selection cost over the whole zoo relative to fine-tuning the reference model once (the paper's Table 3),
    per regime: one row per score (``relative_cost``: the summed seconds of that score over the zoo's models on a
    task, inputs included, mean over the (task, seed) groups, divided by the mean seconds of one fine-tuning of
    the reference model, or of any model in a zoo without one), ``brute_force`` (fine-tuning every model), and,
    in stores that keep compilation apart (records with ``compile_seconds``; their ``seconds`` then exclude it),
    ``COMPILE_ROWS``: compilation charged once per architecture: per group and architecture the largest
    ``compile_seconds`` of its units (the one unit that compiled; parts computed together share one), summed
    over the architectures, mean over the groups, on the same scale. In older stores every unit's seconds include
    whatever it compiled and there are no compile rows. One setting per kind and only complete groups
    (``models``), as ``ranking_frame``.

    Returns:
      Columns ``regime``, ``score``, ``relative_cost``.
    """
    return _costs(*complete_groups(*_frames(store, settings), models)[:2])


def _costs(scores: pd.DataFrame, finetune: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for regime, ft in finetune.groupby("regime"):
        unit = _reference_seconds(ft)
        per_task = ft.groupby(["task", "seed"]).seconds.sum().mean()
        rows.append({"regime": regime, "score": "brute_force", "relative_cost": per_task / unit})
        sc = scores[scores.regime == regime]
        for name, group in sc.groupby("score"):
            rows.append({"regime": regime, "score": name,
                         "relative_cost": group.groupby(["task", "seed"]).seconds.sum().mean() / unit})
        for kind, frame in (("scores", sc), ("finetune", ft)):
            if frame.compile_seconds.notna().any():
                once = frame.groupby(["task", "seed", "architecture"]).compile_seconds.max()
                rows.append({"regime": regime, "score": COMPILE_ROWS[kind],
                             "relative_cost": once.groupby(["task", "seed"]).sum().mean() / unit})
    return pd.DataFrame(rows)


def _reference_seconds(finetune: pd.DataFrame) -> float:
    """Mean seconds of one fine-tuning of the reference model, or of any model in a zoo without a reference."""
    refs = finetune[finetune.reference]
    return float((refs if len(refs) else finetune).seconds.mean())


def _cost_section(costs: pd.DataFrame, finetune: pd.DataFrame) -> list[str]:
    """The report's cost table (``cost_frame``) with what it is relative to and how compilation is charged."""
    table = costs.pivot_table(index="score", columns="regime", values="relative_cost")
    order = [s for s in table.index if s not in COMPILE_ROWS.values()] + [
        s for s in COMPILE_ROWS.values() if s in table.index]
    reference = {regime: _reference_seconds(ft) for regime, ft in finetune.groupby("regime")}
    which = "the reference model" if finetune.reference.any() else "a model (mean over the zoo: it has no reference)"
    lines = ["## Selection cost relative to one fine-tuning of the reference model", "",
             f"Seconds over the whole zoo per task (mean over tasks), divided by one fine-tuning of {which} ("
             + ", ".join(f"{r}: {s:.1f} s" for r, s in reference.items()) + ")."]
    if any(s in table.index for s in COMPILE_ROWS.values()):
        lines[-1] += (" Scores and fine-tuning exclude JAX compilation, shown in the `compile:` rows, charged once "
                      "per architecture and task (it does not grow with the number of models).")
    else:
        lines[-1] += " This store predates separate compile times: each time includes what its unit compiled."
    return lines + ["", _markdown(table.loc[order].round(3)), ""]


def _markdown(table: pd.DataFrame, *, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table of ``table`` (NaN shown as blank)."""
    frame = table.reset_index() if index else table
    header = [str(c) for c in frame.columns]
    body = [["" if isinstance(v, float) and np.isnan(v) else str(v) for v in row] for row in frame.to_numpy()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _plot_bars(table: pd.DataFrame, value: str, title: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pivot = table.pivot_table(index="task", columns="score", values=value)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(pivot.index) + 2), 4))
    pivot.plot.bar(ax=ax, width=0.85)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title(title)
    ax.set_ylabel(value.replace("_", " "))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_summary(summary: pd.DataFrame, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = summary[~summary.score.isin(["best", "worst"])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ["trials_to_best", "spearman"]):
        scored.pivot_table(index="score", columns="regime", values=metric).plot.barh(ax=ax)
        ax.set_title(f"mean {metric.replace('_', ' ')} over tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gram_selection(store: ResultStore, *, settings: Collection[str] | None = None,
                   models: Collection[str] | None = None) -> list[tuple[str, str, list[dict]]]:
    """The Fig. 8 panels: per (task, regime), the fine-tuned units of the lowest seed that hold a ``"gram"``,
    reduced to the reference model and the model with the best fine-tuned accuracy (one unit when they coincide
    or no reference has a Gram). Returns ``[(task, regime, [{"model", "accuracy", "gram"}, ...])]`` sorted by
    (task, regime); units without ``"gram"`` (older stores) are ignored. One fine-tuning setting and only
    complete groups (``models``), as ``ranking_frame``."""
    finetune = complete_groups(*_frames(store, settings), models)[1]
    return _grams(store, set(finetune.setting), _group_keys(finetune))


def _group_keys(frame: pd.DataFrame) -> set[tuple]:
    """The (task, regime, seed) groups of a frame."""
    return set(frame[GROUP].itertuples(index=False, name=None))


def _grams(store: ResultStore, chosen: set[str], groups_kept: set[tuple]) -> list[tuple[str, str, list[dict]]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for unit in store.units("finetune"):
        cfg, rec = unit["config"], unit["record"]
        key = (cfg["task"], cfg["regime"], cfg.get("seed", 0))
        if "gram" in rec and setting_id("finetune", cfg) in chosen and key in groups_kept:
            groups.setdefault((cfg["task"], cfg["regime"]), []).append(
                {**_ids(cfg, "finetune"), "accuracy": rec["accuracy"], "gram": rec["gram"]})
    selection = []
    for (task, regime), found in sorted(groups.items()):
        seed = min(u["seed"] for u in found)
        found = [u for u in found if u["seed"] == seed]
        best = max(found, key=lambda u: u["accuracy"])
        panels = [u for u in found if u["reference"]][:1]
        panels += [best] if best not in panels else []
        selection.append((task, regime, [{k: u[k] for k in ("model", "accuracy", "gram")} for u in panels]))
    return selection


def _plot_grams(panels: list[dict], title: str, path: pathlib.Path) -> None:
    """One row per model: its Gram before and after fine-tuning, class boundaries drawn, LFC in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 2, figsize=(8, 4 * len(panels)), squeeze=False)
    for row, panel in zip(axes, panels):
        gram = panel["gram"]
        labels = np.asarray(gram["labels"])
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])  # first row of each class block
        centers = (starts + np.r_[starts[1:], labels.size] - 1) / 2
        edges = starts[1:] - 0.5
        for ax, stage in zip(row, ("before", "after")):
            image = ax.imshow(np.asarray(gram[stage]), cmap="viridis", interpolation="nearest")
            for edge in edges:
                ax.axhline(edge, color="white", linewidth=0.8)
                ax.axvline(edge, color="white", linewidth=0.8)
            ax.set_xticks(centers, labels[starts], fontsize=7)
            ax.set_yticks(centers, labels[starts], fontsize=7)
            accuracy = f" (test acc. {panel['accuracy']:.1f}%)" if stage == "after" else ""
            ax.set_title(f"{panel['model']}\n{stage} fine-tuning{accuracy}: LFC = {gram[f'lfc_{stage}']:.3f}",
                         fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gram_section(store: ResultStore, out: pathlib.Path, finetune: pd.DataFrame) -> list[str]:
    """The report's Fig. 8 section for the fine-tuning setting and groups of ``finetune`` (empty when no unit holds
    a Gram)."""
    selection = _grams(store, set(finetune.setting), _group_keys(finetune))
    if not selection:
        return []
    lines = ["## Feature Gram matrices before and after fine-tuning (the paper's Fig. 8)", "",
             "Each heatmap is ΦΦᵀ of the penultimate features on a small class-balanced test sample sorted by class "
             "(white lines separate the classes) for the reference model and the best fine-tuned model; LFC in "
             "the titles is the correlation of these entries with the ±1 same-class matrix, so a sharper "
             "block-diagonal pattern after fine-tuning shows up as a higher LFC.", ""]
    rows = []
    for task, regime, panels in selection:
        figure = out / f"fig8_gram_{task}_{regime}.png"
        _plot_grams(panels, f"{task} ({regime})", figure)
        lines += [f"![feature Gram {task} {regime}]({figure.name})", ""]
        rows += [{"task": task, "regime": regime, "model": p["model"], "accuracy": round(p["accuracy"], 2),
                  "lfc_before": round(p["gram"]["lfc_before"], 3), "lfc_after": round(p["gram"]["lfc_after"], 3)}
                 for p in panels]
    return lines + [_markdown(pd.DataFrame(rows), index=False), ""]


def write_report(store: ResultStore, out_dir: str | pathlib.Path, *, accuracy: str = "accuracy",
                 settings: Collection[str] | None = None, manifest: Mapping | None = None,
                 notes: Sequence[str] = (), models: Collection[str] | None = None) -> pathlib.Path:
    """Write ``report.md`` plus the figures (Fig. 4-style top-3 gains per regime, Fig. 6-style summary, Fig. 8-style
    feature Grams when the store holds them) into ``out_dir``, all computed from ``store``, for one fine-tuning
    and one scoring setting (``settings``, see the module docstring), which the report names. Each regime starts
    with the bootstrap intervals and paired differences of ``linfit.bench.uncertainty``; with a zoo
    ``manifest`` (``linfit.zoo.manifest()``) holding every model of the store, also the trivial baselines and the
    per-cluster results. ``notes``: Markdown paragraphs placed under the header (e.g. what the run left out).
    ``models``: the zoo a task group must hold to be reported (``complete_groups``; default: every model fine-tuned
    in the store); the report lists the groups it left out.
    Returns the report's path. Raises ``LinfitError`` (before creating ``out_dir``) when the store has no complete
    task group, holds several settings of a kind, or a unit does not record the ground truth ``accuracy``."""
    from linfit.bench import ground_truth, uncertainty  # both build on this module

    known = settings_frame(store)
    scores, finetune, left_out, dropped = complete_groups(*_frames(store, settings, known), models)
    # the stored single draw of Random keeps one label in every table and figure, apart from its expectation
    ranking = _ranking(scores, finetune, accuracy).replace({"score": {uncertainty.DRAWN_RANDOM: ONE_DRAW}})
    summary = summary_frame(ranking)
    metadata, no_models = uncertainty.model_metadata(manifest, sorted(set(finetune.model)))
    costs = _costs(scores, finetune)
    configs = known[known.setting.isin({*scores.setting, *finetune.setting})].replace({"kind": KINDS})
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    complete = ranking.groupby(["task", "regime", "seed"]).ngroups
    lines = ["# linfit benchmark report", "",
             f"Ground truth: `{accuracy}` ({GROUND_TRUTHS[accuracy]}).",
             f"Store: `{'`, `'.join(pathlib.Path(s).name for s in store.sources)}`; "
             f"{counted(complete, 'complete task group')}.", "",
             "Every number below comes from the units of these settings (the id is part of each unit's key; the "
             "linfit version is recorded with each unit, not part of its identity):", "",
             _markdown(configs, index=False), ""]
    lines += [line for note in notes for line in (note, "")]
    if left_out:
        lines += [f"Left out as incomplete ({counted(len(left_out), 'task group')}): {'; '.join(left_out)}.", ""]
    if dropped:
        lines += [f"Left out of every table: {'; '.join(dropped)}.", ""]
    if no_models:
        lines += [f"No trivial baselines or per-cluster results: {no_models}.", ""]
    lines += ground_truth.section(finetune, GROUP)
    for regime, table in summary.groupby("regime"):
        table = table.drop(columns="regime")
        lines += [f"## Regime `{regime}`: averages over tasks", ""]
        lines += uncertainty.regime_section(scores, finetune, regime, accuracy, metadata)
        lines += [f"### Other metrics (`{regime}`, point estimates)", "",
                  f"Kendall τ, Pearson r and regret are not bootstrapped; `{ONE_DRAW}` is the stored single "
                  "draw of the `random` score, `best`/`worst` the oracle picks.", "",
                  _markdown(table.round(3), index=False), ""]
        figure = out / f"top3_gain_{regime}.png"
        _plot_bars(ranking[ranking.regime == regime], "top3_gain", f"top-3 gain over the reference ({regime})",
                   figure)
        lines += [f"![top-3 gain {regime}]({figure.name})", ""]
        per_task = ranking[ranking.regime == regime].pivot_table(index="task", columns="score", values="top3_gain")
        lines += ["Top-3 gain per task:", "", _markdown(per_task.round(2)), ""]
    _plot_summary(summary, out / "trials_spearman.png")
    lines += ["## Trials-to-best and Spearman", "", "![trials and spearman](trials_spearman.png)", ""]
    lines += _cost_section(costs, finetune)
    lines += _gram_section(store, out, finetune)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
