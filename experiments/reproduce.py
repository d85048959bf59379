"""Reproduce the paper's benchmark (Figs. 4 and 6, Table 3) on the embedded zoo and tasks.

Runs ``linfit.bench`` over the grid (zoo models × target tasks × regimes), storing every finished unit in an
SQLite store (resumable: rerun the same command to continue an interrupted run), then writes the report and
figures with ``linfit.bench.report``.

    python experiments/reproduce.py                       # the full grid (both architectures, 11 tasks, 3 regimes)
    python experiments/reproduce.py --preset resnet8      # one architecture, 8 tasks, 20-shot (about an hour on 2 cores)
    python experiments/reproduce.py --preset smoke        # 3 models, 2 tasks, 5-shot, 1 epoch (a minute)

Presets only choose the grid; the protocol is the paper's (§5.5) with the epochs scaled down for CPU (see
``--epochs``) and the learning rate chosen on a validation split (the paper's oracle choice on the test set is
stored too: ``--accuracy oracle_accuracy`` reports against it).
"""

from __future__ import annotations

import argparse
import pathlib

from linfit import zoo
from linfit.bench.grid import BenchConfig, run_bench
from linfit.bench.report import write_report
from linfit.bench.store import ResultStore, parse_shard
from linfit.data import embedded

HERE = pathlib.Path(__file__).resolve().parent
SCORES = ("lfc", "lgc", "lgc_all", "linearized_loss", "linearized_cv_accuracy", "logme", "leep", "nce", "h_score",
          "transrate", "gbc", "parc", "sfda", "feature_metrics", "linear_probe", "random")


def preset(name: str, epochs: int) -> BenchConfig:
    """The grid of a preset (see the module docstring)."""
    targets = tuple(embedded.target_domains())
    if name == "full":
        return BenchConfig(tasks=targets, regimes=("5shot", "20shot", "full"), scores=SCORES, epochs=epochs,
                           max_train_per_class=100)
    if name == "resnet8":
        models = tuple(n for n in zoo.names() if n.startswith("resnet8/") and "/multibn/" not in n)
        return BenchConfig(models=models, tasks=targets[:8], regimes=("20shot",), scores=SCORES, epochs=epochs)
    if name == "smoke":
        models = ("resnet8/generalist", "resnet8/mnist/from-generalist", "resnet8/latin/from-generalist")
        return BenchConfig(models=models, tasks=targets[:2], regimes=("5shot",), scores=("lfc", "logme", "leep"),
                           per_class=5, epochs=1, learning_rates=(0.01,))
    raise SystemExit(f"unknown preset {name!r}; choose full, resnet8 or smoke")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="full", choices=["full", "resnet8", "smoke"])
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs (paper: 30)")
    parser.add_argument("--db", default=None, help="SQLite store (default experiments/reproduce_<preset>.sqlite)")
    parser.add_argument("--out", default=None, help="report folder (default experiments/reproduce_<preset>/)")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--accuracy", default="accuracy", choices=["accuracy", "oracle_accuracy"])
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report from the store")
    args = parser.parse_args(argv)
    db = pathlib.Path(args.db or HERE / f"reproduce_{args.preset}.sqlite")
    out = pathlib.Path(args.out or HERE / f"reproduce_{args.preset}")
    with ResultStore(db) as store:
        if not args.report_only:
            done = run_bench(preset(args.preset, args.epochs), store, shard=parse_shard(args.shard), progress=True)
            print(f"{done} units computed into {db}")
        print(f"report: {write_report(store, out, accuracy=args.accuracy)}")


if __name__ == "__main__":
    main()
