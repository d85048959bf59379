"""linfit's command line: a thin layer that parses arguments and calls the library.

    linfit select [--task T] [--scores S ...] [--json] [--plot FILE]   rank the zoo for a task (the main job)
    linfit tasks                                                       the embedded tasks, one a line
    linfit zoo list | build                                            the embedded model zoo
    linfit bench --db FILE [--tasks ...] [--shard i/n]                 scores + fine-tuning ground truth to SQLite
    linfit report --db FILE|GLOB ... --out DIR [--setting ID]          Markdown report and figures from the stores
"""

from __future__ import annotations

import argparse
import json
import sys


def _select(args: argparse.Namespace) -> int:
    from linfit.select import format_table, plot_curves, select

    result = select(args.task, args.scores, models=args.models or None, per_class=args.per_class, seed=args.seed,
                    head_samples=None if args.head_samples == 0 else args.head_samples, progress=not args.quiet)
    if args.json:
        print(json.dumps({"task": result.task, "num_samples": result.num_samples,
                          "models": result.table.to_dict(orient="records")}, indent=1))
    else:
        print(format_table(result))
    if args.plot and result.curves:
        plot_curves(result, args.plot)
        if not args.json:
            print(f"predicted linearized loss curves: {args.plot}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from linfit.bench.grid import BenchConfig, run_bench
    from linfit.bench.store import ResultStore, parse_shard

    config = BenchConfig(models=tuple(args.models) if args.models else None, tasks=tuple(args.tasks),
                         regimes=tuple(args.regimes), seeds=tuple(args.seeds), scores=tuple(args.scores),
                         per_class=args.per_class, epochs=args.epochs, max_train_per_class=args.max_train_per_class)
    with ResultStore(args.db) as store:
        done = run_bench(config, store, shard=parse_shard(args.shard), progress=not args.quiet)
    print(f"{done} units computed into {args.db}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from linfit.bench.report import write_report
    from linfit.bench.store import read_stores

    with read_stores(args.db) as store:
        path = write_report(store, args.out, accuracy=args.accuracy, settings=args.setting)
    print(f"report written to {path}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from linfit.data import tasks

    print("\n".join(tasks()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from linfit.select import DEFAULT_SCORES, DEFAULT_TASK
    from linfit.zoo.cli import add_commands as add_zoo_commands

    parser = argparse.ArgumentParser(prog="linfit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    sel = commands.add_parser("select", help="rank the model zoo for a target task without fine-tuning")
    sel.add_argument("--task", default=DEFAULT_TASK, help=f"an embedded task spec (default {DEFAULT_TASK})")
    sel.add_argument("--scores", nargs="+", default=list(DEFAULT_SCORES), help="score names (linfit.scores.names())")
    sel.add_argument("--models", nargs="*", help="zoo model names (default: the whole zoo)")
    sel.add_argument("--per-class", type=int, default=25, help="scoring images per class (paper: 25)")
    sel.add_argument("--head-samples", type=int, default=8,
                     help="random head rows for NTK scores; 0 = exact head average (slower)")
    sel.add_argument("--seed", type=int, default=0)
    sel.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sel.add_argument("--plot", default="linfit_loss_curves.png", help="where to save the loss-curve plot ('' = none)")
    sel.add_argument("--quiet", action="store_true", help="no progress bar")
    sel.set_defaults(run=_select)

    tasks = commands.add_parser("tasks", help="list the embedded target tasks, one a line")
    tasks.set_defaults(run=_tasks)

    bench = commands.add_parser("bench", help="scores and fine-tuning ground truth on a grid, into SQLite")
    bench.add_argument("--db", required=True,
                       help="SQLite result store (created if missing; reruns resume). One file per host or shard, "
                            "on a local disk (SQLite locking fails on network file systems): e.g. --shard 1/4 "
                            "--db results/shard1.sqlite, then linfit report --db 'results/*.sqlite'")
    bench.add_argument("--models", nargs="*", help="zoo model names (default: the whole zoo)")
    bench.add_argument("--tasks", nargs="+", default=["font_digits"], help="embedded target datasets")
    bench.add_argument("--regimes", nargs="+", default=["20shot"], help="5shot, 20shot, full, <k>shot")
    bench.add_argument("--seeds", nargs="+", type=int, default=[0])
    bench.add_argument("--scores", nargs="+", default=list(DEFAULT_SCORES))
    bench.add_argument("--per-class", type=int, default=25)
    bench.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs (paper: 30)")
    bench.add_argument("--max-train-per-class", type=int, default=None, help="cap the full regime (CPU budget)")
    bench.add_argument("--shard", default="0/1", help="i/n: this process's share of the grid (own --db each)")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(run=_bench)

    report = commands.add_parser("report", help="Markdown report and figures from a benchmark store")
    report.add_argument("--db", required=True, nargs="+",
                        help="result stores, merged: existing files or quoted globs ('results/*.sqlite')")
    report.add_argument("--out", required=True, help="output folder")
    report.add_argument("--accuracy", default="accuracy", choices=["accuracy", "oracle_accuracy"],
                        help="ground truth: lr chosen on validation (default) or on test (the paper)")
    report.add_argument("--setting", action="append", default=None,
                        help="report this setting id (repeat: one per kind) when a store holds several")
    report.set_defaults(run=_report)

    add_zoo_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
