# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Reading a benchmark report
#
# A score is only useful if its ranking of the zoo matches the ranking by *real* fine-tuned accuracy. The
# benchmark (`linfit.bench`) measures that: for every (model, task, regime, seed) it stores the scores and the
# result of really fine-tuning the model (the paper's protocol, shortened here) in an SQLite file, one row per
# finished unit; reports are recomputed from that file. This notebook runs a tiny grid, then reads the
# report's metrics one by one, recomputing each by hand on one task.
#
# The numbers of a grid this small are noise (a handful of models, a few SGD steps of fine-tuning): the point is
# how to read them. `LINFIT_NOTEBOOK_SMALL=1` switches to an even tinier grid.

# %%
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from linfit.bench.grid import BenchConfig, run_bench
from linfit.bench.report import finetune_frame, ranking_frame, scores_frame, summary_frame, write_report
from linfit.bench.store import ResultStore
from linfit.finetune import GridProtocol

SMALL = os.environ.get("LINFIT_NOTEBOOK_SMALL") == "1"
OUT = Path(os.environ.get("LINFIT_NOTEBOOK_OUT", os.path.join(tempfile.gettempdir(), "linfit_notebooks")))
OUT.mkdir(parents=True, exist_ok=True)
pd.set_option("display.width", 140)

# %% [markdown]
# ## A tiny grid
#
# `BenchConfig` names the models (exactly one *reference* model per group: the generalist, the paper's
# ImageNet expert against which gains are measured), the target tasks, the regimes (`5shot`: 5 training images
# per class), the scores, and the fine-tuning protocol: `batch_size`, the learning rates of the grid, the
# fine-tuning seeds and the `protocol` (SGD steps between convergence checks, step budget, tolerances): every
# (learning rate, seed) run trains until its loss stops changing, the learning rate with the best mean
# validation accuracy is kept and every seed is refit with it on the whole training split.

# %%
config = BenchConfig(
    models=("resnet8/generalist", "resnet8/mnist/from-generalist", "resnet8/shapes/scratch")
    + (() if SMALL else ("resnet8/latin/from-generalist",)),
    tasks=("font_digits",) if SMALL else ("font_digits", "digits_sk"),
    regimes=("5shot",),
    scores=("lfc", "logme", "leep", "random"),
    per_class=5,
    batch_size=16,
    learning_rates=(0.01,) if SMALL else (0.01, 0.005),
    finetune_seeds=(0,) if SMALL else (0, 1),
    protocol=GridProtocol(window=2, max_steps=4 if SMALL else 8, max_extensions=0),
)
store_path = Path(tempfile.mkdtemp()) / "bench.sqlite"
with ResultStore(store_path) as store:
    computed = run_bench(config, store)
    rerun = run_bench(config, store)  # finished units are skipped
print(f"{computed} units computed, {rerun} on the rerun; store: {store_path}")
assert computed == 2 * len(config.models) * len(config.tasks) and rerun == 0

# %% [markdown]
# ## The raw tables
#
# `scores_frame`: one row per (model, task, score) with the value and the seconds it cost.
# `finetune_frame`: one row per fine-tuned (model, task) with the test accuracy (mean over the refit seeds,
# learning rate chosen on validation) and the oracle accuracy (best test accuracy over the learning rates of the
# search runs: the paper's choice).

# %%
store = ResultStore(store_path)
scores, finetune = scores_frame(store), finetune_frame(store)
print(scores.pivot_table(index=["task", "model"], columns="score", values="value").round(3))
print(finetune[["task", "model", "reference", "accuracy", "oracle_accuracy", "seconds"]].round(2))

# %% [markdown]
# ## Ranking metrics, per task
#
# `ranking_frame` compares, for each task and score, the score vector $s$ `[M]` with the accuracy vector
# $a$ `[M]` of the same M models:
#
# * **spearman**: Spearman's rank correlation of $s$ and $a$ (1: same order, 0: unrelated, -1: reversed).
# * **weighted_tau**: Kendall's τ with hyperbolic weights that emphasise the top of the rankings
#   (`scipy.stats.weightedtau`): swapping the two best models costs more than swapping the two worst, which is
#   what matters when only the top few will be fine-tuned.
# * **trials_to_best**: fine-tune the models in decreasing-score order; how many until the best one is
#   reached (1 is perfect; a random order needs $(M+1)/2$ on average, ties count as random order).
# * **top1_gain / top3_gain**: fine-tune the 1 (3) top-scored models and keep the best; its accuracy minus the
#   reference model's. Positive: the score beats "always use the generalist". Rows `best`/`worst` show the
#   oracle range of these gains.
#
# We recompute the first task's metrics from the raw tables to check what they mean.

# %%
ranking = ranking_frame(store)
print(ranking[["task", "score", "spearman", "weighted_tau", "trials_to_best", "top1_gain", "top3_gain"]].round(3))

task = config.tasks[0]
acc = finetune[finetune.task == task].set_index("model").accuracy
reference = float(finetune[(finetune.task == task) & finetune.reference].accuracy.iloc[0])
for score in ("lfc", "logme"):
    s = scores[(scores.task == task) & (scores.score == score)].set_index("model").value.loc[acc.index]
    row = ranking[(ranking.task == task) & (ranking.score == score)].iloc[0]
    order = np.argsort(-s.to_numpy(), kind="stable")  # models by decreasing score
    a_sorted = acc.to_numpy()[order]
    spearman = stats.spearmanr(s, acc)[0] if np.ptp(acc) > 0 else 0.0
    top3 = a_sorted[:3].max() - reference
    print(f"{task}/{score}: spearman {spearman:+.3f} (report {row.spearman:+.3f}), "
          f"top-3 gain {top3:+.2f} (report {row.top3_gain:+.2f})")
    assert np.isclose(spearman, row.spearman) and np.isclose(top3, row.top3_gain)
    if np.unique(a_sorted).size == a_sorted.size and np.unique(s).size == s.size:  # no ties: first hit of the max
        assert row.trials_to_best == 1 + int(np.argmax(a_sorted == a_sorted.max()))

# %% [markdown]
# ## Averages and the written report
#
# `summary_frame` averages every metric over tasks (and seeds) per (regime, score): the paper's Fig. 4 "Avg"
# and Fig. 6. `write_report` writes `report.md` with those tables, per-task top-3 gains, the figures, and the
# selection cost of each score relative to fine-tuning the reference model once (Table 3: a score is worth it
# when it costs a small fraction of one fine-tuning). Everything is recomputed from the store, so the report
# can be regenerated while a benchmark is still running.

# %%
summary = summary_frame(ranking)
print(summary[["regime", "score", "spearman", "weighted_tau", "trials_to_best", "top3_gain"]].round(3))
report = write_report(store, OUT / "03_report")
store.close()
print(report.read_text()[:1500])
assert report.is_file() and (OUT / "03_report" / "trials_spearman.png").is_file()
