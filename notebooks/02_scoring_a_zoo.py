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
# # Scoring a model zoo
#
# Model selection for fine-tuning (Deshpande et al. 2021, arXiv 2102.00084): given a target task and a zoo of
# pre-trained models, rank the models by how well they *would* fine-tune, without fine-tuning them.
# `linfit.select.select` does it in one call on the embedded zoo (small ResNet-8 / DenseNet experts trained on
# 28x28 glyph domains; `linfit.zoo.names()`). This notebook
#
# 1. scores a few zoo models on a few-shot target with LFC, LGC, LogME and the predicted linearized loss;
# 2. recomputes LFC by hand from the features (the paper's eq. (8)) to see what the number is;
# 3. plots the predicted linearized fine-tuning loss curves (`linfit.select.plot_curves`);
# 4. splits one model's NTK into per-layer kernels $\Theta = \sum_l \Theta_l$ (`linfit.ntk.per_layer_ntk_fn`,
#    the paper's Appendix A) to see which layers dominate it.
#
# `LINFIT_NOTEBOOK_SMALL=1` switches to tiny sizes.

# %%
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import jax
import numpy as np
from scipy import stats

import linfit
from linfit import models, zoo
from linfit.data import load_task
from linfit.select import format_table, plot_curves, select

SMALL = os.environ.get("LINFIT_NOTEBOOK_SMALL") == "1"
OUT = os.environ.get("LINFIT_NOTEBOOK_OUT", os.path.join(tempfile.gettempdir(), "linfit_notebooks"))
os.makedirs(OUT, exist_ok=True)
TASK = "font_digits:5shot" if SMALL else "font_digits:20shot"
PER_CLASS = 3 if SMALL else 10
MODELS = ["resnet8/generalist", "resnet8/mnist/from-generalist", "resnet8/shapes/scratch"]
if not SMALL:
    MODELS += ["resnet8/mnist/scratch", "resnet8/latin/from-generalist", "resnet8/arrows/scratch"]
SCORES = ("lfc", "lgc", "logme", "linearized_loss")

# %% [markdown]
# ## 1. One call: `select`
#
# For each model, `select` extracts only what the requested scores need, once (`linfit.extract`): penultimate
# features for LFC and LogME, the NTK of the last convolution for LGC, the full fine-tuning NTK for the
# predicted loss. Every score is "higher is better"; `rank_*` columns give each score's ranking, `seconds_*`
# the time of the score itself and `result.input_seconds` that of the shared inputs (once per model). The
# scoring subset holds at most `PER_CLASS` training images per class; the test split is never touched.

# %%
result = select(task=TASK, scores=SCORES, models=MODELS, per_class=PER_CLASS, seed=0)
print(format_table(result))
result.table[["model", *SCORES]]

# %% [markdown]
# ## 2. What LFC measures
#
# Label-Feature Correlation is the Pearson correlation between the entries of the feature Gram matrix
# $\Phi\Phi^\top$ and of the label-similarity matrix $K_Y$ ($+1$ for a pair of the same class, $-1$ otherwise):
# a model whose features already place same-class images close together needs less fine-tuning.
# We recompute it for every model from the features, with a plain `np.corrcoef` over all $N^2$ entries.

# %%
subset = load_task(TASK, seed=0).scoring_set(per_class=PER_CLASS, seed=0)
k_y = np.where(subset.y[:, None] == subset.y[None, :], 1.0, -1.0)
for name in MODELS:
    candidate = zoo.load(name)
    apply_features, params = models.features_fn(candidate.model, candidate.variables)
    phi = np.asarray(apply_features(params, subset.x), np.float64)  # [N, D]
    by_hand = np.corrcoef((phi @ phi.T).ravel(), k_y.ravel())[0, 1]
    from_select = float(result.table.set_index("model").loc[name, "lfc"])
    print(f"{name:34s} LFC by hand {by_hand:.5f}   select {from_select:.5f}")
    assert abs(by_hand - from_select) < 1e-4

# %% [markdown]
# ## 3. LFC vs LGC vs LogME, and the predicted loss curves
#
# LGC is the same correlation with the NTK of the last convolution instead of the feature Gram (how similar the
# *gradients* of same-class images are); LogME is the log marginal evidence of a Bayesian linear model on the
# features. They look at different objects but usually agree on the ordering. On the right, the
# linearized fine-tuning loss $L_\tau / L_0$ predicted in closed form from each model's NTK: a curve that drops
# earlier belongs to a model that fits the task faster.

# %%
table = result.table.set_index("model").loc[MODELS]
fig, ax = plt.subplots(figsize=(7, 3.5))
width = 0.8 / 3
for i, score in enumerate(("lfc", "lgc", "logme")):
    values = table[score].to_numpy()
    spread = np.ptp(values) or 1.0
    ax.bar(np.arange(len(MODELS)) + (i - 1) * width, (values - values.min()) / spread, width, label=score)
ax.set_xticks(np.arange(len(MODELS)), [m.replace("resnet8/", "") for m in MODELS], rotation=20, fontsize=8)
ax.set_ylabel("score, min-max scaled")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "02_scores.png"), dpi=110)
plt.close(fig)
plot_curves(result, os.path.join(OUT, "02_curves.png"))
for a, b in (("lfc", "lgc"), ("lfc", "logme"), ("lgc", "logme")):
    print(f"Spearman({a}, {b}) over the {len(MODELS)} models: {stats.spearmanr(table[a], table[b])[0]:+.2f}")
assert set(result.curves) == set(MODELS)
for curve in result.curves.values():  # a gradient-flow loss never increases
    assert curve[0] <= 1.0 + 1e-9 and np.all(np.diff(curve) <= 1e-9)

# %% [markdown]
# ## 4. Which layers dominate the NTK? (Appendix A)
#
# The NTK is a sum over parameters, hence over layers: $\Theta = \sum_l J_l J_l^\top$. `per_layer_ntk_fn`
# returns each layer's kernel (computed from activations and cotangents, without per-sample gradients). Two
# shares per layer: of the trace (how much of the linearized dynamics the layer drives at all) and of the
# label alignment $Y^\top \Theta Y = \Theta \cdot K_Y$ (the unnormalised LGC, eq. (7)). The paper's
# Appendix A argues that each layer's alignment is weighted by the norm of its mean back-propagated gradient,
# which tends to shrink towards the input, so later layers should dominate; here we can look.

# %%
candidate = zoo.load(MODELS[0])
apply_fn, params = models.logits_fn(candidate.model, candidate.variables)
n_layer = 8 if SMALL else 40
x, k_y_sub = subset.x[:n_layer], k_y[:n_layer, :n_layer]
per_layer = {k: np.asarray(v, np.float64) for k, v in linfit.per_layer_ntk_fn(apply_fn)(x, None, params).items()}
total = np.asarray(linfit.empirical_ntk_fn(apply_fn)(x, None, params), np.float64)
assert np.allclose(sum(per_layer.values()), total, rtol=1e-3, atol=1e-4 * np.abs(total).max())
trace_share = {k: np.trace(v) / np.trace(total) for k, v in per_layer.items()}
align_share = {k: np.sum(v * k_y_sub) / np.sum(total * k_y_sub) for k, v in per_layer.items()}
print(f"{'layer':36s} {'% tr Θ':>8s} {'% Θ·K_Y':>9s}")
for k in per_layer:
    print(f"{k:36s} {100 * trace_share[k]:8.1f} {100 * align_share[k]:9.1f}")

fig, ax = plt.subplots(figsize=(7, 3.5))
pos = np.arange(len(per_layer))
ax.bar(pos - 0.2, [100 * trace_share[k] for k in per_layer], 0.4, label="share of tr Θ")
ax.bar(pos + 0.2, [100 * align_share[k] for k in per_layer], 0.4, label="share of Θ·K_Y")
ax.set_xticks(pos, list(per_layer), rotation=70, fontsize=6)
ax.set_ylabel("%")
ax.set_title(f"per-layer NTK of {MODELS[0]}")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "02_per_layer_ntk.png"), dpi=110)
plt.close(fig)
print("figures in", OUT)
