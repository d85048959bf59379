"""Reproduce the paper's benchmark (Figs. 4 and 6, Table 3) on the embedded zoo and tasks.

Runs ``linfit.bench`` over the grid (zoo models × target tasks × regimes), storing every finished unit in an
SQLite store (resumable: rerun the same command to continue an interrupted run), then writes the report and
figures with ``linfit.bench.report``.

    python experiments/reproduce.py --preset evidence20-resnet8    # the converged multi-seed ground truth (issue 13)
    python experiments/reproduce.py --preset evidence20-resnet8 --tasks font_digits hebrew   # a balanced part
    python experiments/reproduce.py --preset evidence20-resnet8 --draws 0   # every task's first k-shot draw
    python experiments/reproduce.py --preset smoke        # 3 models, 2 tasks, 5-shot, a few SGD steps (a minute)
    python experiments/reproduce.py --preset full --report-only   # the report of the committed store

Fine-tuning ground truth (``linfit.bench.grid.BenchConfig``, ``linfit.finetune.finetune_grid``): the paper's
optimiser (SGD with Nesterov momentum), a learning-rate grid (``EVIDENCE_LEARNING_RATES`` on the embedded zoo, the
paper's 0.01, 0.005, 0.001 on the ImageNet zoo) widened ×3 at an edge that wins, up to ``PROTOCOL.max_extensions``
times per side, ``FINETUNE_SEEDS`` seeds per unit, each run trained until its window-mean training loss has not
improved on its best by more than 1 % (+1e-3 nats) for ``PROTOCOL.patience`` windows of ``PROTOCOL.window`` steps
twice, its step size divided by 10 after the first time (reduce-on-plateau, then early stopping), or
``PROTOCOL.max_steps`` steps have passed, η chosen on the mean validation accuracy of the seeds (20 % of the training
split), then every seed refit on the whole training split; per-seed per-image test correctness is stored, so the
report can resample images and seeds as well as tasks (it resamples target tasks, each with its accuracies as
measured, and images and seeds only when there are too few tasks: ``linfit.bench.uncertainty``).

Presets ``evidence20-resnet8`` / ``evidence20-densenet``: one architecture of the embedded zoo (all its models,
the multi-BN experts included; one reference model, its generalist, per task group: an architecture is one
store) × every embedded target task × ``EVIDENCE_KSHOT_SEEDS`` k-shot draws, 20-shot, scores ``SCORES`` on
``EVIDENCE_SCORING_PER_CLASS`` images per class. Each writes ``experiments/evidence_20shot_<architecture>.sqlite``
and its report next to it. ``--tasks`` and ``--draws`` run a part (a rerun with more continues; the report
covers the task groups that hold every model of the preset, and lists the others). Presets
``evidencefull-resnet8`` / ``evidencefull-densenet``: the same in the ``full`` regime, the whole training split of
every task (988–1000 images; 20-shot already takes 520–760 of them on the 26–38-class tasks, 200 on the 10-class
ones), one draw per task (``FULL_DRAWS``), into ``experiments/evidence_full_<architecture>.sqlite``. Measured on
the 2-core development machine, two grid processes side by side: resnet8's full-regime units took 63–123 s on
average per task (26–51 min of one process per task group, compilation excluded; 7.1 hours for all 275 units),
0.39–0.87 of the same tasks' 20-shot units. Densenet's 20-shot units took 416–1137 s on average per task (33 hours
for its 187 units); its full-regime units took 189–354 s on average per task (12.9 hours of one process for all
187 units, font_digits' and box's beside the test suite), 1.7–4.1 times resnet8's on the same tasks.

Preset ``evidence20-imagenet``: the same protocol on the five real ImageNet backbones (``linfit.zoo``'s
``imagenet`` zoo, each model at its own resolution; it has no generalist, so the report's top-k gains are over the
zoo's mean accuracy) × ``IMAGENET_TASKS`` × the k-shot draws, scores ``IMAGENET_SCORES``. It needs an accelerator:
one fine-tuning unit is tens of CPU-hours on a 2-core machine (an epoch of 250 images at 224 px costs
MobileNetV2 219 CPU s, ``benchmarks/RESULTS.md`` §8e, and a unit trains at least 12 runs, 3 η × 3 seeds then 3
refits, 3 more per extension of the η grid, each of up to 1000 steps of 32 images).

Presets ``full`` and ``resnet8`` are the grids of the committed stores ``reproduce_full.sqlite`` and
``reproduce_resnet8.sqlite``, which were fine-tuned with the earlier protocol (a few epochs, one seed, no refit:
their settings record it); rerunning them now computes new units with the protocol above. Preset ``full``: the
resnet8 zoo without the multi-BN models (17 models) × the first 8 target tasks × 5shot / 20shot / full,
``full`` training sets capped at ``FULL_MAX_TRAIN_PER_CLASS`` = 50 images per class, scores on
``FULL_SCORING_PER_CLASS`` = 10 images per class (paper: 25). On more cores run shards in parallel, each into its
own store (``--shard 0/2 --db shard0.sqlite``), and report them together with
``linfit report --db 'shard*.sqlite' --out DIR``. A rerun with other scores computes only the added scores;
other settings are new units, and the report refuses to mix them (``--setting``).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import numpy as np

from linfit import zoo
from linfit.bench import ground_truth
from linfit.bench.grid import BenchConfig, run_bench, units
from linfit.bench.report import finetune_frame, write_report
from linfit.bench.store import ResultStore, parse_shard, part_key, read_stores, setting_id
from linfit.cli import use_compile_cache
from linfit.data import embedded
from linfit.errors import LinfitError
from linfit.finetune import GridProtocol
from linfit.zoo.source import load_zoo

HERE = pathlib.Path(__file__).resolve().parent
SCORES = ("lfc", "lgc", "lgc_paper", "lgc_all", "linearized_loss", "linearized_cv_accuracy", "logme", "leep", "nce",
          "h_score", "transrate", "gbc", "parc", "sfda", "feature_metrics", "linear_probe", "domain_similarity",
          "rsa", "random")
"""The paper's methods (Domain Similarity, RSA and its projected LGC included) and linfit's."""

FINETUNE_SEEDS = (0, 1, 2)
"""Fine-tuning seeds of every unit."""

PROTOCOL = GridProtocol()
"""``linfit.finetune.GridProtocol``'s defaults: convergence checked every 25 SGD steps; after 2 windows (50 steps)
without progress the step size is divided by 10, after 2 more the run has converged; at most 1000 steps (≈ 160
epochs of a 20-shot, 10-class task at batch 32); the η grid widened at most 4 times per side."""

EVIDENCE_LEARNING_RATES = (0.03, 0.09, 0.27)
"""The initial η grid of the embedded-zoo evidence presets. With the paper's (0.01, 0.005, 0.001), 37 of the first 86
resnet8 units chose η = 0.27 after three ×3 extensions, 34 of them with the best search-phase test accuracy there
too, and only 7 chose η ≤ 0.01, while every η ≤ 0.01 run took up to the full 500 steps: this grid starts where the
optimum was found and brackets it with the extensions."""

FULL_MAX_TRAIN_PER_CLASS = 50
"""Training images per class of preset ``full``'s ``full`` regime (the 10-class tasks hold 100)."""

FULL_SCORING_PER_CLASS = 10
"""Scoring images per class of preset ``full`` (paper: 25)."""

EVIDENCE_SCORING_PER_CLASS = 10
"""Scoring images per class of the evidence presets (paper: 25; the NTK scores' cost grows with its square)."""

EVIDENCE_KSHOT_SEEDS = (0, 1, 2)
"""k-shot draws per task of the evidence presets: 11 tasks × 3 = 33 task groups. The report resamples the 11 target
tasks, each with its draws (a cluster bootstrap): the draws average what changes between them (training images,
scoring subset, seeds), not the shared test set's noise; ``experiments/evidence_sizing.md`` bounds what that gives
on the paired differences (±0.04–0.07)."""

FULL_DRAWS = (0,)
"""Draws per task of the full-regime evidence presets: one. The training split is the same for every draw (only
the validation split and the fine-tuning seeds would change), so further draws are not independent task groups and
the report's task resampling would count them as such: 11 task groups per architecture."""

MISSING = (
    "Not in the committed stores `reproduce_full.sqlite` and `reproduce_resnet8.sqlite`: Domain Similarity "
    "(`domain_similarity`), RSA (`rsa`) and the paper's projected LGC (`lgc_paper`: last layer, per-sample gradients "
    "randomly projected to 10,000 dimensions; `lgc` is the same kernel computed exactly). They are in `SCORES` and "
    "in the evidence stores (`evidence_20shot_*.sqlite`).")
"""Said in the report of the committed stores: the scores they lack."""

IMAGENET_SCORES = tuple(s for s in SCORES if s != "domain_similarity")
"""The scores of preset ``evidence20-imagenet``: Domain Similarity reads source-domain images, which the ImageNet
zoo does not ship."""

IMAGENET_TASKS = (*embedded.target_domains(), "lfw_faces")
"""The real-backbone task set without an optional package: the embedded targets as RGB at each model's own
resolution, and scikit-image's faces vs non-faces (add ``elpv`` with ``--tasks`` once ``elpv-dataset`` is
installed)."""

PRESETS = ("evidence20-resnet8", "evidence20-densenet", "evidencefull-resnet8", "evidencefull-densenet",
           "evidence20-imagenet", "full", "resnet8", "smoke")


def architecture_models(architecture: str, *, multibn: bool = True) -> tuple[str, ...]:
    """Every embedded zoo model of ``architecture`` (``"resnet8"`` or ``"densenet"``), optionally without the
    multi-BN experts."""
    return tuple(n for n in zoo.names() if n.startswith(f"{architecture}/") and (multibn or "/multibn/" not in n))


def preset(name: str, tasks: tuple[str, ...] | None = None, draws: tuple[int, ...] | None = None) -> BenchConfig:
    """The grid of a preset (see the module docstring); ``tasks`` replaces the preset's target tasks and ``draws``
    its k-shot draws (a part of the grid: the units' keys do not depend on which part computed them)."""
    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    targets = tuple(embedded.target_domains())
    finetuning = dict(finetune_seeds=FINETUNE_SEEDS, protocol=PROTOCOL)
    if name == "evidence20-imagenet":
        config = BenchConfig(zoo="imagenet", models=tuple(e.name for e in load_zoo("imagenet")),
                             tasks=IMAGENET_TASKS, regimes=("20shot",), seeds=EVIDENCE_KSHOT_SEEDS,
                             scores=IMAGENET_SCORES, per_class=EVIDENCE_SCORING_PER_CLASS, **finetuning)
    elif name.startswith(("evidence20-", "evidencefull-")):
        full = name.startswith("evidencefull-")
        config = BenchConfig(models=architecture_models(name.split("-")[1]), tasks=targets,
                             regimes=("full",) if full else ("20shot",),
                             seeds=FULL_DRAWS if full else EVIDENCE_KSHOT_SEEDS, scores=SCORES,
                             per_class=EVIDENCE_SCORING_PER_CLASS, learning_rates=EVIDENCE_LEARNING_RATES,
                             **finetuning)
    elif name == "full":
        config = BenchConfig(models=architecture_models("resnet8", multibn=False), tasks=targets[:8],
                             regimes=("5shot", "20shot", "full"), scores=SCORES, per_class=FULL_SCORING_PER_CLASS,
                             max_train_per_class=FULL_MAX_TRAIN_PER_CLASS, **finetuning)
    elif name == "resnet8":
        config = BenchConfig(models=architecture_models("resnet8", multibn=False), tasks=targets[:8],
                             regimes=("20shot",), scores=SCORES, **finetuning)
    else:
        models = ("resnet8/generalist", "resnet8/mnist/from-generalist", "resnet8/latin/from-generalist")
        config = BenchConfig(models=models, tasks=targets[:2], regimes=("5shot",), scores=("lfc", "logme", "leep"),
                             per_class=5, learning_rates=(0.01,), finetune_seeds=(0, 1),
                             protocol=GridProtocol(window=5, max_steps=20, max_extensions=0))
    if tasks is not None:
        config = dataclasses.replace(config, tasks=tuple(tasks))
    return config if draws is None else dataclasses.replace(config, seeds=tuple(draws))


def default_paths(name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """``(store, report folder)`` of a preset."""
    if name.startswith("evidence"):
        regime, architecture = name.removeprefix("evidence").split("-")
        stem = f"evidence_{'20shot' if regime == '20' else regime}_{architecture}"
    else:
        stem = f"reproduce_{name}"
    return HERE / f"{stem}.sqlite", HERE / stem


def progress(store, config: BenchConfig) -> list[str]:
    """Markdown lines: how much of the grid ``config`` the store holds (units and score parts), the ground-truth
    summary of the stored fine-tuning units it plans (``linfit.bench.ground_truth``) and each one's protocol
    outcome (chosen η, bracketing, steps, convergence, accuracy per seed, seconds)."""
    planned = units(config)
    parts = [part_key(u.key, p) if u.parts else u.key for u in planned for p in (u.parts or (None,))]
    done = sum(store.has(key) for key in parts)
    tuned = [u for u in planned if u.kind == "finetune"]
    rows, seconds = [], []
    for unit in tuned:
        if store.has(unit.key):
            rec = store.get(unit.key)["record"]
            seconds.append(rec["seconds"])
            rows.append(f"| {unit.config['model']} | {unit.config['task']} | {unit.config['seed']} | {rec['lr']:g} | "
                        f"{'yes' if rec['bracketed'] else 'no'} | {', '.join(map(str, rec['steps']))} | "
                        f"{sum(rec['converged'])}/{len(rec['converged'])} | "
                        f"{', '.join(f'{a:.1f}' for a in rec['accuracy_per_seed'])} | {rec['seconds']:.0f} |")
    left = ""
    if seconds and len(rows) < len(tuned):
        median = float(np.median(seconds))
        left = (f" Median fine-tuning unit: {median:.0f} s (compilation excluded), so the {len(tuned) - len(rows)} "
                f"left need about {median * (len(tuned) - len(rows)) / 3600:.0f} hours of one such process, "
                f"scores not counted.")
    stored = finetune_frame(store)
    planned_ids = {(u.config["model"], u.config["task"], u.config["regime"], u.config["seed"],
                    setting_id("finetune", u.config)) for u in tuned}
    stored = stored.loc[np.array([ids in planned_ids for ids in
                                  zip(stored.model, stored.task, stored.regime, stored.seed, stored.setting)], bool)]
    health = ground_truth.section(stored) if len(stored) else []
    return [f"Stored: {done} of {len(parts)} planned results ({100 * done / len(parts):.1f} %) of the grid "
            f"({len(config.models)} models × {len(config.tasks)} tasks × {len(config.seeds)} draw"
            f"{'s' if len(config.seeds) > 1 else ''} × {' / '.join(config.regimes)}; a scores unit counts once per "
            "score); fine-tuning units "
            f"{len(rows)} of {len(tuned)} ({100 * len(rows) / len(tuned):.1f} %).{left}", "",
            "Every stored fine-tuning unit of the grid, complete task group or not:", "", *health,
            "## Fine-tuning units", "",
            "| model | task | k-shot draw | chosen η | bracketed | refit steps per seed | converged | test accuracy "
            "per seed (%) | seconds |", "|---|---|---:|---:|---|---|---|---|---:|", *rows, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="evidence20-resnet8", choices=PRESETS)
    parser.add_argument("--tasks", nargs="+", default=None, help="run these target tasks only (a part of the grid)")
    parser.add_argument("--draws", nargs="+", type=int, default=None,
                        help="run these k-shot draws only (a part of the grid), e.g. --draws 0")
    parser.add_argument("--db", default=None, help="SQLite store (default: see the module docstring)")
    parser.add_argument("--out", default=None, help="report folder (default: next to the store, same stem)")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--accuracy", default="accuracy", choices=["accuracy", "oracle_accuracy"])
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report from the store")
    args = parser.parse_args(argv)
    default_db, default_out = default_paths(args.preset)
    db, out = pathlib.Path(args.db or default_db), pathlib.Path(args.out or default_out)
    config = preset(args.preset, args.tasks, args.draws)
    if not args.report_only:
        use_compile_cache()
        with ResultStore(db) as store:
            done = run_bench(config, store, shard=parse_shard(args.shard), progress=True)
        print(f"{done} units computed into {db}")
    notes = (MISSING,) if args.preset in ("full", "resnet8") else ()
    with read_stores(db) as store:  # read only: an older committed store is migrated in memory, not rewritten
        out.mkdir(parents=True, exist_ok=True)
        (out / "progress.md").write_text("\n".join([f"# Progress of preset `{args.preset}`", "",
                                                      *progress(store, preset(args.preset))]))
        try:
            path = write_report(store, out, accuracy=args.accuracy, manifest=zoo.manifest(), notes=notes,
                                models=config.models)
        except LinfitError as err:  # no complete task group yet: the progress file says what is there
            print(f"no report yet: {err}")
        else:
            print(f"report: {path}")


if __name__ == "__main__":
    main()
