"""How many random head rows the NTK-based scores need: the k-row estimate against the exact head average.

``linfit.scores.lgc.lgc_kernel(head_samples=k)`` replaces the average over the new head's initialisation by k
random head rows (an unbiased estimate, k backward passes per sample instead of D). This script scores the whole
embedded zoo on embedded tasks with the exact average (``head_samples=None``) and with k = 1, 2, 4, 8 rows under
several head draws (the scoring subset fixed), and reports, per k and score, the Spearman correlation of the
zoo's ranking with the exact ranking (smallest and largest over draws and tasks) and the relative Frobenius
error of the kernels (median over models and draws), as a Markdown table (``benchmarks/RESULTS.md`` §7c). The
choice of ``linfit select``'s default ``head_samples`` rests on it.

Usage: ``python experiments/head_samples.py [--tasks T ...] [--draws 3] [--out experiments/head_samples.json]
[--report-only]`` (resumable: finished (task, model) entries are kept in ``--out`` and skipped).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np
from scipy.stats import spearmanr

from linfit.data import load_task
from linfit.models import param_subsets
from linfit.models.compiled import penultimate_features
from linfit.scores.lgc import lgc, lgc_kernel
from linfit.scores.linearized import linearized_loss
from linfit.zoo.source import load_zoo

ROWS = (1, 2, 4, 8)


def kernel_fn(entry, x):
    """``kernels(rows, key) -> (all-parameter kernel, last-conv kernel)`` of one zoo model on ``x``: the model is
    loaded and its features computed once."""
    model, variables = entry.load()
    phi = penultimate_features(model, variables, x)
    last_conv = param_subsets(model, variables["params"])["last_conv"]

    def kernels(rows, key):
        options = dict(head_samples=rows, key=key, features=phi)
        return (lgc_kernel(model, variables, x, **options),
                lgc_kernel(model, variables, x, params_filter=last_conv, **options))

    return kernels


def scores(full, last, y):
    return {"lgc": lgc(last, y), "lgc_all": lgc(full, y), "linearized_loss": linearized_loss(full, y)}


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["font_digits:20shot", "fashion_rot:20shot"])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "head_samples.json"))
    parser.add_argument("--report-only", action="store_true", help="print the table of the tasks already done")
    args = parser.parse_args()
    done = json.load(open(args.out)) if os.path.exists(args.out) else {}
    zoo = load_zoo("embedded")
    for task in [] if args.report_only else args.tasks:
        subset = load_task(task, seed=0).scoring_set(per_class=25, seed=0)
        for entry in zoo:
            name = f"{task}|{entry.name}"
            if name in done:
                continue
            kernels = kernel_fn(entry, entry.preprocessing.prepare(subset.x))
            full, last = kernels(None, jax.random.PRNGKey(0))
            record = {"exact": scores(full, last, subset.y)}
            for rows in ROWS:
                for draw in range(args.draws):
                    f_k, l_k = kernels(rows, jax.random.PRNGKey(draw))
                    record[f"{rows}/{draw}"] = {**scores(f_k, l_k, subset.y),
                                                "err_full": rel(f_k, full), "err_last": rel(l_k, last)}
            done[name] = record
            with open(args.out + ".tmp", "w") as fh:
                json.dump(done, fh, indent=1, sort_keys=True)
            os.replace(args.out + ".tmp", args.out)
            print(name, flush=True)
    report(done, args.tasks, args.draws)


def report(done, tasks, draws) -> None:
    """A markdown table: per k and score, Spearman with the exact ranking [min, max] over draws and tasks, and
    the median relative kernel error."""
    print("| k | score | Spearman ρ with the exact ranking, [min, max] | median kernel error |")
    print("|---|---|---|---|")
    for rows in ROWS:
        for score in ("lgc", "linearized_loss", "lgc_all"):
            rhos, errs = [], []
            for task in tasks:
                entries = [v for k, v in done.items() if k.startswith(task + "|")]
                exact = [e["exact"][score] for e in entries]
                for draw in range(draws):
                    rhos.append(spearmanr(exact, [e[f"{rows}/{draw}"][score] for e in entries]).statistic)
                errs += [e[f"{rows}/{d}"]["err_last" if score == "lgc" else "err_full"] for e in entries
                         for d in range(draws)]
            print(f"| {rows} | {score} | [{min(rhos):.3f}, {max(rhos):.3f}] | {np.median(errs):.3f} |")


if __name__ == "__main__":
    main()
