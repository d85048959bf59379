"""The paper's projected LGC kernel (last convolution, per-sample gradients projected to 10,000 dimensions)
against the exact last-convolution kernel it estimates, side by side on the embedded zoo.

Usage::

    python benchmarks/lgc_projection.py                       # 3 resnet8 models, font_digits 20-shot, 10/class
    python benchmarks/lgc_projection.py --models resnet8/generalist densenet/generalist --per-class 25

For each model in turn (one process, so the first model of an architecture pays the compilation) it times the
inputs ``ntk_last_conv_projected`` (``lgc_paper``) and ``ntk_last_conv`` (``lgc``) of ``linfit.extract`` with the
evidence grid's settings (8 Rademacher head rows, seed 0) and prints wall and CPU seconds, the ratio projected /
exact, and the relative difference of the two kernels (the projection's Monte Carlo error, not round-off). The
load average is printed before and after: on a shared machine it changes the times.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from linfit.bench import grid
from linfit.data import load_task
from linfit.extract import TaskInputs, extract_inputs


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+",
                        default=["resnet8/generalist", "resnet8/mnist/scratch", "resnet8/latin/scratch"])
    parser.add_argument("--task", default="font_digits:20shot")
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args(argv)
    subset = load_task(args.task, seed=0).scoring_set(per_class=args.per_class, seed=0)
    task = TaskInputs(subset.x, subset.y, seed=0)
    zoo = grid._zoo("embedded", None)
    print(f"load average before: {os.getloadavg()}; N = {len(subset.y)} scoring images of {args.task}\n")
    print("| model | projected: wall s | CPU s | exact: wall s | CPU s | projected / exact (wall) | "
          "max |K_proj − K| / max |K| |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        entry = zoo[name]
        model, variables = entry.load()
        x = entry.preprocessing.prepare(subset.x)

        def kernel(need):
            return extract_inputs(model, variables, x, {need}, task=task, seed=0, head_samples=8)[0][need]

        projected, p_wall, p_cpu = timed(lambda: kernel("ntk_last_conv_projected"))
        exact, e_wall, e_cpu = timed(lambda: kernel("ntk_last_conv"))
        error = np.abs(projected - exact).max() / np.abs(exact).max()
        print(f"| {name} | {p_wall:.1f} | {p_cpu:.1f} | {e_wall:.1f} | {e_cpu:.1f} | {p_wall / e_wall:.2f} | "
              f"{error:.3f} |")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
