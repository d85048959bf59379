"""Time ``finetune_grid`` with the (lr × seed) runs in one vmapped program against the same runs one after another.

Usage::

    JAX_PLATFORMS=cpu python benchmarks/finetune_vmap.py                       # resnet8/generalist, font_digits:20shot
    JAX_PLATFORMS=cpu python benchmarks/finetune_vmap.py --model resnet8/latin/scratch --task greek:20shot

All strategies run the same protocol in one process: the search over L learning rates × S seeds on the fit split
and the refit of the S seeds on the whole training set, with a fixed step budget (``patience`` as long as the budget and no
grid extension, so every run takes exactly ``--steps`` steps and every strategy does identical work). Each strategy
first runs once with a budget of one window (a warm-up that compiles every function of the timed run, since shapes
do not depend on the budget); then the timed runs alternate between the strategies ``--repeats`` times. Reported:
the median wall time of each, its ratio to ``"sequential"``, and each warm-up's compile estimate (warm-up time
minus its one window's share of the timed run). The per-image test correctness of the strategies is compared as a
check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

from linfit import zoo
from linfit.data import load_task
from linfit.finetune import FinetuneConfig, GridProtocol, finetune_grid

STRATEGIES = ("vmap", "sequential")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet8/generalist")
    parser.add_argument("--task", default="font_digits:20shot")
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.03, 0.01, 0.003, 0.001])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50, help="SGD steps of every run (a multiple of --window)")
    parser.add_argument("--window", type=int, default=25, help="steps per compiled call")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    task = load_task(args.task, seed=0)
    candidate = zoo.load(args.model)
    config = FinetuneConfig.paper(batch_size=args.batch_size, milestones=())

    def run(strategy: str, steps: int):
        protocol = GridProtocol(window=args.window, max_steps=steps, patience=steps // args.window, max_extensions=0)
        start = time.perf_counter()
        result = finetune_grid(candidate.model, candidate.variables, task.train.x, task.train.y, task.test.x,
                               task.test.y, config=config, lrs=args.lrs, seeds=args.seeds, protocol=protocol,
                               num_classes=task.num_classes, strategy=strategy)
        return time.perf_counter() - start, result

    load_start = os.getloadavg()
    warm = {s: run(s, args.window)[0] for s in STRATEGIES}
    times = {s: [] for s in STRATEGIES}
    results = {}
    for _ in range(args.repeats):
        for s in STRATEGIES:
            seconds, results[s] = run(s, args.steps)
            times[s].append(seconds)
    median = {s: statistics.median(times[s]) for s in STRATEGIES}
    share = args.window / args.steps
    runs = len(args.lrs) * len(args.seeds) + len(args.seeds)

    print(f"{args.model} on {args.task}: N={task.train.y.shape[0]} train, M={task.test.y.shape[0]} test, "
          f"{len(args.lrs)} lrs x {len(args.seeds)} seeds + {len(args.seeds)} refits = {runs} runs x {args.steps} "
          f"steps of batch {args.batch_size}; window {args.window}; jax {jax.__version__} on "
          f"{jax.default_backend()}; load average (1/5/15 min) at start "
          + " ".join(f"{v:.2f}" for v in load_start) + ", at end " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"| strategy | wall (s, median of {args.repeats}) | ms per run-step | sequential / this "
          "| compile (s, est.) |")
    print("|---|---|---|---|---|")
    for s in STRATEGIES:
        compile_s = warm[s] - share * median[s]
        print(f"| {s} | {median[s]:.2f} | {1e3 * median[s] / (runs * args.steps):.1f} | "
              f"{median['sequential'] / median[s]:.2f} | {compile_s:.1f} |")
    agree = [np.mean(results[s].test_correct == results["sequential"].test_correct) for s in STRATEGIES]
    print("per-image test correctness equal to sequential's: "
          + ", ".join(f"{s} {100 * a:.1f} %" for s, a in zip(STRATEGIES, agree, strict=True))
          + "; chosen lr: " + ", ".join(f"{s} {results[s].chosen_lr:g}" for s in STRATEGIES))


if __name__ == "__main__":
    main()
