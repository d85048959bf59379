"""How far a benchmark's fine-tuning ground truth can be trusted: the protocol's outcome over the reported units.

A ranking score is judged against fine-tuned test accuracies, so a report first says how good those are
(issue 13's first item): whether the chosen learning rate is bracketed, whether the runs converged, how far the
fine-tuning seeds of one unit disagree, how noisy a test accuracy is, and how often the best model of a task group
is not clearly the best. ``section`` writes these as Markdown from ``linfit.bench.report.finetune_frame`` rows;
shares carry their exact binomial interval (``linfit.bench.stats.share_interval``).

Definitions, per fine-tuning unit (one model on one task group) with S refit seeds and I test images:

* *standard error* of the unit's accuracy: ``100 · sd(p) / sqrt(I)`` with ``p [I]`` the per-image correctness
  averaged over the seeds (``sd`` with ``ddof = 1``): test images resampled, the seeds held fixed;
* *seed spread*: the largest minus the smallest accuracy of its S seeds, in points; a unit has a *straggler* seed
  when one seed is more than ``STRAGGLER_POINTS`` below its best seed;
* a task group has a *near tie* when another model's accuracy is within one standard error of the best model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from linfit._text import counted
from linfit.bench.report import _markdown
from linfit.bench.stats import share_interval

STRAGGLER_POINTS = 5.0
"""A refit seed more than this many points below its unit's best seed is a straggler."""


def standard_error(correct: np.ndarray) -> float:
    """Standard error, in points, of the accuracy of one unit from its ``[S, I]`` bool per-image test correctness
    (images resampled, seeds fixed; see the module docstring). NaN for fewer than 2 images."""
    p = np.asarray(correct, dtype=float).mean(axis=0)
    return float(100.0 * p.std(ddof=1) / np.sqrt(p.size)) if p.size > 1 else float("nan")


def _share(k: int, n: int) -> str:
    low, high = share_interval(k, n)
    return f"{k}/{n} ({100 * k / n:.0f} %, 95 % CI {100 * low:.0f}–{100 * high:.0f} %)"


def _present(column: pd.Series) -> list:
    return [v for v in column if v is not None and not (isinstance(v, float) and np.isnan(v))]


def section(finetune: pd.DataFrame, groups: Sequence[str] = ("task", "regime", "seed")) -> list[str]:
    """Markdown lines: the ground-truth table of each regime of ``finetune`` (``finetune_frame`` rows of the
    reported task groups ``groups``); a quantity whose records lack the field says "not recorded"."""
    lines = []
    for regime, units in finetune.groupby("regime"):
        n, models, task_groups = len(units), units.model.nunique(), units.groupby(list(groups)).ngroups
        if n == models * task_groups:
            count = f"{n} ({counted(models, 'model')} × {counted(task_groups, 'task group')})"
        else:
            count = (f"{n} ({counted(task_groups, 'task group')}, {counted(models, 'model')}; "
                     "not every model in every group)")
        rows = [("fine-tuning units", count)]
        bracketed = _present(units.bracketed)
        rows.append(("η bracketed (the chosen η is not an edge of the η tried)",
                     _share(sum(map(bool, bracketed)), len(bracketed)) if bracketed else "not recorded"))
        lrs = units.lr.dropna()
        rows.append(("chosen η (units)", ", ".join(f"{lr:g}: {count}" for lr, count in
                                                   lrs.value_counts().sort_index().items()) or "not recorded"))
        converged = _present(units.converged)
        if converged:
            for runs, flags in (("refit", converged), ("search", _present(units.search_converged))):
                flat = np.concatenate(flags).astype(bool) if flags else np.zeros(0, bool)
                if flat.size:
                    rows.append((f"{runs} runs stopped by the convergence criterion (the rest: diverged or the step "
                                 "budget)", _share(int(flat.sum()), flat.size)))
            steps = np.concatenate(_present(units.steps))
            rows.append(("refit steps: median (min–max)", f"{np.median(steps):.0f} ({steps.min()}–{steps.max()})"))
        else:
            rows.append(("refit runs converged", "not recorded"))
        per_seed = _present(units.accuracy_per_seed)
        if per_seed and max(len(a) for a in per_seed) > 1:
            spread = np.array([np.ptp(a) for a in per_seed])
            straggler = int((spread > STRAGGLER_POINTS).sum())
            rows.append(("seed spread of a unit's accuracy: median (max), points",
                         f"{np.median(spread):.1f} ({spread.max():.1f})"))
            rows.append((f"units with a seed > {STRAGGLER_POINTS:g} points below their best seed",
                         _share(straggler, len(per_seed))))
        else:
            rows.append(("seed spread", "one fine-tuning seed per unit"))
        correct = units.test_correct
        if all(c is not None for c in correct):
            se = units.assign(se=[standard_error(c) for c in correct])
            rows.append(("standard error of a unit's accuracy over test images (seeds fixed): median (max), points",
                         f"{se.se.median():.2f} ({se.se.max():.2f})"))
            ties = 0
            for _, group in se.groupby(list(groups)):
                ordered = group.sort_values("accuracy", ascending=False)
                best = ordered.iloc[0]
                ties += bool(len(ordered) > 1 and best.accuracy - ordered.iloc[1].accuracy <= best.se)
            total = se.groupby(list(groups)).ngroups
            rows.append(("task groups whose runner-up is within one such standard error of the best model",
                         _share(ties, total)))
        else:
            rows.append(("standard error of a unit's accuracy", "per-image correctness not recorded"))
        table = _markdown(pd.DataFrame(rows, columns=["quantity", "value"]), index=False)
        lines += [f"## Ground truth (`{regime}`)", "",
                  "How good the fine-tuned accuracies that every score is ranked against are "
                  "(`linfit.bench.ground_truth`; shares with their exact binomial interval).", "", table, ""]
    return lines
