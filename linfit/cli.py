"""linfit's command line: a thin layer that parses arguments and calls the library.

    linfit select [--task T] [--scores S ...] [--models M ...] [--top K]   rank the zoo for a task (the main job)
                  [--zoo embedded|imagenet|FILE.toml] [--data PATH --regime R]   ... any zoo, your own images
    linfit scores                                                          the registered scores
    linfit tasks                                                           the embedded and packaged tasks
    linfit zoo list | build | import PATH                                  the model zoos; add a downloaded checkpoint
    linfit bench --db FILE [--tasks T ...] [--shard i/n]                   scores + fine-tuning ground truth to SQLite
                 [--zoo embedded|imagenet|FILE.toml] [--data PATH --regime R]   ... any zoo, your own images
    linfit report --db FILE|GLOB ... --out DIR [--setting ID]              Markdown report and figures from the stores

Tasks are named as `linfit tasks` lists them, <dataset>:<regime> (e.g. font_digits:20shot), by every command.
Errors are one line on stderr and exit status 2; `linfit --debug ...` shows the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys

from linfit.defaults import DEFAULT_HEAD_SAMPLES, DEFAULT_REGIME, DEFAULT_SCORES, DEFAULT_TASK, PAPER_LEARNING_RATES
from linfit.errors import ConfigError, LinfitError

DEFAULT_PLOT = "linfit_loss_curves.png"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, ``linfit: error: ...``, exit status 2 (argparse's own status)."""

    def error(self, message: str):
        hint = self._suggestion(message)
        self.exit(2, f"linfit: error: {message}{hint} (see `{self.prog} --help`)\n")

    def _commands(self) -> dict[str, set[str]]:
        """Every option of the commands below this parser (nested ones too): option -> the commands that take it."""
        owners: dict[str, set[str]] = {}
        pending = [(self.prog, self)]
        while pending:
            prog, parser = pending.pop()
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    pending.extend((f"{prog} {name}", sub) for name, sub in action.choices.items())
            if parser is not self:
                for option in parser._option_string_actions:
                    owners.setdefault(option, set()).add(prog)
        return owners

    def _suggestion(self, message: str) -> str:
        """For an unrecognized option: where it belongs (``linfit`` itself, or other commands), else
        ``"; did you mean --seed (for --sed)?"`` (the closest option of any command)."""
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        owners = self._commands()
        hints = []
        for word in message[len(prefix):].split():
            option = word.split("=")[0]
            if option in self._option_string_actions:  # an option of `linfit` itself, after the command
                return f"; {option} goes before the command: `{self.prog} {word} <command> ...`"
            if option in owners:  # a real option, of another command than the one given
                commands = ", ".join(f"`{c}`" for c in sorted(owners[option]))
                return f"; {option} is an option of {commands} only"
            close = difflib.get_close_matches(option, sorted(owners), n=1, cutoff=0.6)
            if word.startswith("-") and close:
                hints.append(f"{close[0]} (for {word})")
        return f"; did you mean {', '.join(hints)}?" if hints else ""


def _json_numbers(value):
    """``value`` (nested dicts and lists) with every NaN or infinite float as ``None``: strict JSON has no NaN
    (a Spearman with a constant side is undefined, e.g. for a one-model zoo), and jq or ``JSON.parse`` reject it."""
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_numbers(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


_positive_int.__name__ = "positive integer"  # argparse names the type in "invalid <type> value"
_non_negative_int.__name__ = "non-negative integer"
_positive_float.__name__ = "positive number"


def _check_names(*, scores: list[str], tasks: list[str]) -> list:
    """Check every score and task name before any work; returns the parsed task specs."""
    from linfit import scores as registry
    from linfit.data import check_task
    from linfit.errors import check_known

    check_known("score", scores, registry.names(), "`linfit scores`")
    return [check_task(spec) for spec in tasks]


def _zoo_and_data(args: argparse.Namespace) -> list:
    """Check --zoo, --models, --task / --data and --regime before any work; returns the zoo's entries."""
    from linfit.data import parse_regime
    from linfit.data.detect import data_kind
    from linfit.errors import check_known
    from linfit.zoo.source import load_zoo

    if args.data is not None and args.task is not None:
        raise ConfigError("--task names an embedded task and --data your own images; give one of them")
    if args.data is None and args.regime is not None:
        raise ConfigError(f"--regime goes with --data; an embedded --task names its own regime (e.g. {DEFAULT_TASK})")
    entries = load_zoo(args.zoo)
    if args.models is not None:
        listing = "`linfit zoo list`" if args.zoo == "embedded" else f"the zoo {args.zoo!r}"
        check_known("zoo model", args.models, [e.name for e in entries], listing)
    if args.data is not None:
        parse_regime(args.regime or DEFAULT_REGIME, " (--regime)")
        data_kind(args.data)
    return entries


def _select(args: argparse.Namespace) -> int:
    from linfit.select import curve_scores, format_profile, format_table, plot_curves, select

    entries = _zoo_and_data(args)
    _check_names(scores=args.scores, tasks=[] if args.data else [args.task or DEFAULT_TASK])
    makes_curves = any(name in curve_scores() for name in args.scores)
    if args.plot and not makes_curves:
        raise ConfigError(f"--plot draws loss curves, which need a score that computes the fine-tuning NTK; "
                          f"add one of {', '.join(curve_scores())} to --scores, or drop --plot")
    plot_folder = os.path.dirname(os.path.abspath(args.plot or "."))
    if args.plot and not os.path.isdir(plot_folder):
        raise ConfigError(f"--plot {args.plot}: no folder {plot_folder!r} to save the plot in; create it or give "
                          "another path")
    result = select(args.task, args.scores, data=args.data, regime=args.regime, zoo=entries, models=args.models,
                    per_class=args.per_class, seed=args.seed,
                    head_samples=None if args.head_samples == 0 else args.head_samples, progress=not args.quiet)
    # the default plot goes with the table; with --json only where --plot asks for it
    default_plot = "" if args.json else DEFAULT_PLOT
    plot = (default_plot if args.plot is None else args.plot) if makes_curves else ""
    if args.json:
        report = {"task": result.task, "num_samples": result.num_samples, "ordered_by": result.scores[0],
                  "recommended": result.recommended(args.top),
                  "agreement_spearman": result.agreement().to_dict(),
                  "input_seconds": result.input_seconds, "wall_seconds": result.wall_seconds,
                  "compile_seconds": result.compile_seconds,
                  "compilations": result.compilations, "cached_compilations": result.cached_compilations,
                  "load_seconds": result.load_seconds,
                  "cpu_seconds": result.cpu_seconds, "head_samples": result.head_samples,
                  "plot": plot or None, "models": result.table.to_dict(orient="records")}
        print(json.dumps(_json_numbers(report), indent=1, allow_nan=False))
        if plot:
            plot_curves(result, plot, top=args.top)
        return 0
    print(format_table(result, top=args.top, timing=not args.profile))
    if args.profile:
        print("\n" + format_profile(result))
    if plot:  # after the ranking, which the user waits for
        plot_curves(result, plot, top=args.top)
        print(f"predicted linearized loss curves: {plot}")
    elif args.plot is None:
        print(f"no loss-curve plot: none of the scores computes the fine-tuning NTK ({', '.join(curve_scores())})")
    return 0


def _scores(args: argparse.Namespace) -> int:
    from linfit import scores

    rows = [(s.name, s.cost, ", ".join(s.needs), s.summary, s.reference) for s in map(scores.get, scores.names())]
    _print_rows(("score", "cost", "inputs", "what it measures (higher is better)", "reference"), rows)
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from linfit.data import catalog, embedded, packaged, packaged_tasks, parse_task, tasks
    from linfit.errors import DatasetError

    sizes = embedded.manifest()
    rows = []
    for spec in tasks():
        parsed = parse_task(spec)
        info = sizes[parsed.dataset]
        train = info["train"] if parsed.shots is None else parsed.shots * info["num_classes"]
        rows.append((spec, info["num_classes"], train, info["test"], catalog.DOMAINS[parsed.dataset].description))
    for spec in packaged_tasks():
        parsed = parse_task(spec)
        info = catalog.PACKAGED[parsed.dataset]
        train = info.train if parsed.shots is None else parsed.shots * info.num_classes
        try:
            packaged.check_installed(parsed.dataset)
            note = ""
        except DatasetError:
            note = f" (not installed: {info.install})"
        rows.append((spec, info.num_classes, train, info.test, info.description + note))
    _print_rows(("task", "classes", "train images", "test images", "what it is"), rows)
    return 0


def _print_rows(header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(f"{str(v):{w}s}" for v, w in zip(row, widths)) + "  " + str(row[-1]))


def _bench(args: argparse.Namespace) -> int:
    from linfit.bench.grid import BenchConfig, run_bench, units
    from linfit.bench.store import ResultStore, parse_shard
    from linfit.finetune.sweep import GridProtocol

    shard = parse_shard(args.shard)
    if args.data is not None and args.tasks is not None:
        raise ConfigError("--tasks names embedded or packaged tasks and --data your own images; give one of them")
    if args.data is None and args.regime is not None:
        raise ConfigError(f"--regime goes with --data; each of --tasks names its own regime (e.g. {DEFAULT_TASK})")
    common = dict(models=tuple(args.models) if args.models else None, seeds=tuple(args.seeds),
                  scores=tuple(args.scores), per_class=args.per_class, finetune_seeds=tuple(args.finetune_seeds),
                  learning_rates=tuple(args.learning_rates),
                  protocol=GridProtocol(max_steps=args.max_steps),
                  max_train_per_class=args.max_train_per_class, zoo=args.zoo)
    if args.data is not None:
        configs = [BenchConfig(data=args.data, regimes=(args.regime or DEFAULT_REGIME,), **common)]
    else:
        regimes = {}  # one grid per regime: exactly the (dataset, regime) pairs named
        for spec in _check_names(scores=args.scores, tasks=args.tasks or [DEFAULT_TASK]):
            regimes.setdefault(spec.regime, []).append(spec.dataset)
        configs = [BenchConfig(tasks=tuple(datasets), regimes=(regime,), **common)
                   for regime, datasets in regimes.items()]
    for config in configs:  # every name, file and option checked before any work
        units(config)
    done = 0
    with ResultStore(args.db) as store:
        for config in configs:
            done += run_bench(config, store, shard=shard, progress=not args.quiet)
    print(f"{done} units computed into {args.db}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from linfit import zoo
    from linfit.bench.report import write_report
    from linfit.bench.store import read_stores

    with read_stores(args.db) as store:  # the committed zoo's manifest adds baselines and clusters for its models
        path = write_report(store, args.out, accuracy=args.accuracy, settings=args.setting, manifest=zoo.manifest(),
                            models=args.models)
    print(f"report written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from linfit.zoo.cli import add_commands as add_zoo_commands

    parser = _Parser(prog="linfit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    task_help = "a task as `linfit tasks` lists it, <dataset>:<regime>"

    sel = commands.add_parser("select", help="rank the model zoo for a target task without fine-tuning")
    sel.add_argument("--task", default=None, help=f"{task_help} (default {DEFAULT_TASK})")
    sel.add_argument("--data", default=None,
                     help="your own labelled images instead of --task: a folder of class subfolders, an .npz "
                          "(x_train, y_train, x_test, y_test, or x, y), a folder of MNIST-style IDX files or a "
                          "prepared tfds data_dir (linfit.data.load_data)")
    sel.add_argument("--regime", default=None,
                     help=f"with --data: 5shot, 20shot or full (any <k>shot; default {DEFAULT_REGIME})")
    sel.add_argument("--zoo", default="embedded",
                     help="embedded (default), imagenet (checkpoints of installed packages) or a TOML file "
                          "listing your checkpoints (linfit.zoo.source)")
    sel.add_argument("--scores", nargs="+", default=list(DEFAULT_SCORES),
                     help="score names (`linfit scores`); the first orders the ranking "
                          f"(default {' '.join(DEFAULT_SCORES)})")
    sel.add_argument("--models", nargs="+", help="model names of the zoo (`linfit zoo list`; default: all)")
    sel.add_argument("--top", type=_positive_int, default=3, help="how many models to recommend (default 3)")
    sel.add_argument("--per-class", type=_positive_int, default=25, help="scoring images per class (paper: 25)")
    sel.add_argument("--head-samples", type=_non_negative_int, default=DEFAULT_HEAD_SAMPLES,
                     help=f"random (Rademacher) head rows for NTK scores (default {DEFAULT_HEAD_SAMPLES}); "
                          "0 = exact head average (slower)")
    sel.add_argument("--seed", type=_non_negative_int, default=0,
                     help="seeds the k-shot sample, the scoring subset and the NTK's random heads (default 0)")
    sel.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sel.add_argument("--plot", default=None,
                     help=f"where to save the loss-curve plot (default {DEFAULT_PLOT} when a score computes the "
                          "fine-tuning NTK, none with --json; '' = none)")
    sel.add_argument("--quiet", action="store_true", help="no progress bar")
    sel.add_argument("--profile", action="store_true",
                     help="after the ranking, print where the time went: loading, compiling (once per architecture), "
                          "each shared input, each score")
    sel.set_defaults(run=_select)

    scores = commands.add_parser("scores", help="list the registered scores: what they measure, inputs, cost")
    scores.set_defaults(run=_scores)

    tasks = commands.add_parser("tasks", help="list the target tasks (embedded, from installed packages) and sizes")
    tasks.set_defaults(run=_tasks)

    bench = commands.add_parser("bench", help="scores and fine-tuning ground truth on a grid, into SQLite")
    bench.add_argument("--db", required=True,
                       help="SQLite result store (created if missing; reruns resume). One file per host or shard, "
                            "on a local disk (SQLite locking fails on network file systems): e.g. --shard 1/4 "
                            "--db results/shard1.sqlite, then linfit report --db 'results/*.sqlite'")
    bench.add_argument("--zoo", default="embedded",
                       help="embedded (default), imagenet or a TOML file listing your checkpoints (linfit.zoo.source)")
    bench.add_argument("--models", nargs="+", help="zoo model names (`linfit zoo list`; default: the whole zoo)")
    bench.add_argument("--tasks", nargs="+", default=None, help=f"{task_help} (default {DEFAULT_TASK})")
    bench.add_argument("--data", default=None,
                       help="your own labelled images instead of --tasks (as `linfit select --data`; a source without "
                            "a test split is split 80/20 per class with seed 0)")
    bench.add_argument("--regime", default=None,
                       help=f"with --data: 5shot, 20shot or full (any <k>shot; default {DEFAULT_REGIME})")
    bench.add_argument("--seeds", nargs="+", type=_non_negative_int, default=[0],
                       help="k-shot draws of every task: seeds of its training subset and scoring subset (default 0)")
    bench.add_argument("--scores", nargs="+", default=list(DEFAULT_SCORES), help="score names (`linfit scores`)")
    bench.add_argument("--per-class", type=_positive_int, default=25,
                       help="scoring images per class (default 25, the paper's scoring subset)")
    bench.add_argument("--learning-rates", nargs="+", type=_positive_float, default=list(PAPER_LEARNING_RATES),
                       help="initial η grid of the fine-tuning, widened ×3 while the best η sits on an edge "
                            f"(default the paper's {' '.join(map(str, PAPER_LEARNING_RATES))}; "
                            "experiments/reproduce.py's evidence presets start at 0.03 0.09 0.27)")
    bench.add_argument("--finetune-seeds", nargs="+", type=_non_negative_int, default=[0, 1, 2],
                       help="fine-tuning seeds of every unit (its ground truth is their mean)")
    bench.add_argument("--max-steps", type=_positive_int, default=1000,
                       help="SGD step budget of a fine-tuning run that has not converged (a multiple of the "
                            "25-step convergence window; default 1000)")
    bench.add_argument("--max-train-per-class", type=_positive_int, default=None,
                       help="cap the full regime (CPU budget)")
    bench.add_argument("--shard", default="0/1", help="i/n: this process's share of the grid (own --db each)")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(run=_bench)

    report = commands.add_parser("report", help="Markdown report and figures from a benchmark store")
    report.add_argument("--db", required=True, nargs="+",
                        help="result stores, merged: existing files or quoted globs ('results/*.sqlite')")
    report.add_argument("--out", required=True, help="output folder")
    report.add_argument("--accuracy", default="accuracy", choices=["accuracy", "oracle_accuracy"],
                        help="ground truth: lr chosen on validation, then refit (default), or the best test "
                             "accuracy over the lr searched, as the paper (its runs train on the fit split only)")
    report.add_argument("--setting", action="append", default=None,
                        help="report this setting id (repeat: one per kind) when a store holds several")
    report.add_argument("--models", nargs="+", default=None,
                        help="the zoo every reported task group must hold (default: every model fine-tuned in the "
                             "stores); give the grid's models while it is still running")
    report.set_defaults(run=_report)

    add_zoo_commands(commands)
    return parser


COMPILE_CACHE_ENV = "LINFIT_COMPILE_CACHE"


def compile_cache_dir() -> str | None:
    """The folder of the command line's XLA compilation cache, or ``None`` for none.

    ``$LINFIT_COMPILE_CACHE`` when set (``off``, ``0``, ``none`` or empty turn the cache off), else ``$XDG_CACHE_HOME/linfit/xla``
    (``~/.cache/linfit/xla``); ``None`` also when JAX's own ``JAX_COMPILATION_CACHE_DIR`` is set (JAX then
    uses that folder itself)."""
    chosen = os.environ.get(COMPILE_CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else os.path.expanduser(chosen)
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "linfit", "xla")


def use_compile_cache() -> None:
    """Keep XLA's compiled programs between runs: JAX's persistent compilation cache in :func:`compile_cache_dir`,
    every program cached (a second ``linfit select`` reads its programs instead of compiling them). The command
    line and the ``experiments/`` scripts call it. The folder is trusted: a program read from it is run, so keep it
    private (the default is in the user's home)."""
    path = compile_cache_dir()
    if path is None:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def main(argv: list[str] | None = None) -> int:
    """Run a command; a :class:`~linfit.errors.LinfitError` is reported as one line and exit status 2.

    Commands that compute keep XLA's compiled programs in a cache folder between runs
    (:func:`compile_cache_dir`; ``LINFIT_COMPILE_CACHE=off`` turns it off)."""
    args = build_parser().parse_args(argv)
    if args.command in ("select", "bench"):
        use_compile_cache()
    try:
        return args.run(args)
    except LinfitError as err:
        if args.debug:
            raise
        print(f"linfit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
