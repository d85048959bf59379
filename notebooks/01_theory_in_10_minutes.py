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
# # The linearized framework in 10 minutes
#
# Deshpande et al. 2021 ("A linearized framework and a new benchmark for model selection for fine-tuning",
# arXiv 2102.00084) predict how well a pre-trained network fine-tunes on a task by replacing it with its
# first-order Taylor expansion around the pre-trained weights $w_0$:
#
# $$f_\text{lin}(x; w) = f(x; w_0) + J(x)\,(w - w_0), \qquad J(x) = \partial f(x; w)/\partial w\,|_{w_0}.$$
#
# Trained with the squared loss, the linearized model has closed-form dynamics that depend on the data only
# through the **empirical neural tangent kernel** $\Theta = J J^\top$ and the initial residual
# $r_0 = Y - f(X; w_0)$. This notebook builds each piece on a small CNN and checks it numerically:
#
# 1. `linfit.linearize`: the linearized model, one `jax.jvp` per call;
# 2. `linfit.empirical_ntk_fn`: the kernel, against a brute-force `jax.jacrev` contraction;
# 3. `linfit.dynamics.LinearizedDynamics`: the closed-form loss $L_t$, against real gradient descent on the
#    linearized model (they must agree to round-off) and on the real network (they agree early on; how long they
#    agree is what the framework relies on).
#
# Run it with `python notebooks/01_theory_in_10_minutes.py`; `LINFIT_NOTEBOOK_SMALL=1` switches to tiny sizes.

# %%
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import jax
import jax.numpy as jnp
import numpy as np

import linfit
from linfit import models
from linfit.data import load_task
from linfit.dynamics import LinearizedDynamics
from linfit.finetune import FinetuneConfig, finetune

SMALL = os.environ.get("LINFIT_NOTEBOOK_SMALL") == "1"
OUT = os.environ.get("LINFIT_NOTEBOOK_OUT", os.path.join(tempfile.gettempdir(), "linfit_notebooks"))
os.makedirs(OUT, exist_ok=True)
WIDTH, PER_CLASS, STEPS = (4, 2, 30) if SMALL else (16, 5, 300)

# %% [markdown]
# ## A model and a few-shot task
#
# `small_cnn` is three 3x3 convolutions with max pooling, global average pooling and a dense head. Its weights
# here are random: the theory holds at any $w_0$ (pre-trained weights come in notebook 02). The task is the
# embedded `font_digits` target (28x28 grey images of digits in various fonts), `PER_CLASS` images per class.

# %%
task = load_task("font_digits:5shot", seed=0)
subset = task.scoring_set(per_class=PER_CLASS, seed=0)
x, labels = jnp.asarray(subset.x), np.asarray(subset.y)
num_classes = task.num_classes
model = models.create("small_cnn", num_classes=num_classes, width=WIDTH)
variables = models.init(model, jax.random.PRNGKey(0), x[:1])
apply_fn, params0 = models.logits_fn(model, variables)
n, o = x.shape[0], num_classes
num_params = sum(p.size for p in jax.tree.leaves(params0))
print(f"N = {n} images, O = {o} logits, P = {num_params} parameters")

# %% [markdown]
# ## 1. The linearized model
#
# `linearize(apply_fn, params0)` returns $f_\text{lin}$. At $w_0$ it equals the network; for a small step
# $\delta$ it differs from the network by $O(\|\delta\|^2)$: halving a small enough step quarters the gap.

# %%
f_lin = linfit.linearize(apply_fn, params0)
assert np.allclose(f_lin(params0, x), apply_fn(params0, x), atol=1e-5)
direction = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(1), p.shape) * 0.05, params0)
gaps = []
for scale in (1.0, 0.5, 0.25):
    moved = jax.tree.map(lambda p, d: p + scale * d, params0, direction)
    gaps.append(float(jnp.max(jnp.abs(f_lin(moved, x) - apply_fn(moved, x)))))
print("max |f_lin - f| for steps 1, 1/2, 1/4:", ["%.2e" % g for g in gaps])
ratios = [a / b for a, b in zip(gaps[:-1], gaps[1:])]
print("ratios (second order: tend to 4 as the step shrinks; a first-order error would give 2):",
      [round(r, 2) for r in ratios])
assert min(ratios) > 2.5

# %% [markdown]
# ## 2. The empirical NTK
#
# $\Theta(x, x')_{ab} = \langle \partial f_a(x)/\partial w, \partial f_b(x')/\partial w \rangle$.
# `empirical_ntk_fn(apply_fn, trace_axes=())` gives the full `[N, N, O, O]` kernel; the default
# `trace_axes=(-1,)` gives the `[N, N]` kernel *averaged* over the logits (neural-tangents' convention), the one
# the scores use. We check both against a brute-force contraction of the Jacobian from `jax.jacrev`.

# %%
ntk_full = np.asarray(linfit.empirical_ntk_fn(apply_fn, trace_axes=())(x, None, params0))  # [N, N, O, O]
ntk_traced = np.asarray(linfit.empirical_ntk_fn(apply_fn)(x, None, params0))  # [N, N]

jac = jax.jacrev(lambda p: apply_fn(p, x))(params0)  # tree of [N, O, *leaf shape]
jac = np.concatenate([np.asarray(j).reshape(n, o, -1) for j in jax.tree.leaves(jac)], axis=-1)  # [N, O, P]
brute_full = np.einsum("iap,jbp->ijab", jac, jac)
brute_traced = np.einsum("iap,jap->ij", jac, jac) / o
scale = np.abs(brute_full).max()
print("max |NTK - brute force| / max|NTK|:", np.abs(ntk_full - brute_full).max() / scale)
assert np.allclose(ntk_full, brute_full, rtol=1e-4, atol=1e-5 * scale)
assert np.allclose(ntk_traced, brute_traced, rtol=1e-4, atol=1e-5 * scale)

# %% [markdown]
# ## 3. Closed-form dynamics vs gradient descent
#
# Full-batch gradient descent with step $\eta$ on the mean loss $\frac{1}{N}\sum_i \frac12\|f(x_i) - y_i\|^2$
# is, for the linearized model, a linear recursion on the residual: $r_{t} = (I - \frac{\eta}{N} K)^t r_0$
# with $K$ the full kernel flattened to `[N·O, N·O]`. `LinearizedDynamics` evaluates it for every $t$ at once
# from one eigendecomposition (`discrete=True`: $t$ counts steps; its loss is the sum $\frac12\|r_t\|^2$, so we
# divide by $N$). The scores use the cheaper traced kernel, i.e. the approximation $K \approx \Theta \otimes I_O$
# (dashed).
#
# The step is a quarter of the largest stable one for the linearized model, $\eta = N / (2\lambda_\max(K))$.
#
# One numerical choice matters over hundreds of steps. `LinearizedDynamics` treats eigenvalues at or below
# $\epsilon_\text{float32} \cdot \lambda_\max$ as round-off of a float32 kernel and freezes those directions (its
# null space). A tolerance of numpy's rank kind, $N \cdot \epsilon \cdot \lambda_\max$, would also freeze small but
# genuine eigenvalues along which gradient descent keeps making slow progress; the printout counts the eigenvalues
# below the threshold.

# %%
targets = np.eye(o)[labels]  # [N, O]
f0 = np.asarray(apply_fn(params0, x))  # [N, O]
k2 = ntk_full.transpose(0, 2, 1, 3).reshape(n * o, n * o)
evals = np.linalg.eigvalsh(k2)  # [N·O] ascending
lr = n / (2 * evals[-1])
steps = np.arange(STEPS)
exact = LinearizedDynamics.from_kernel(k2, targets.reshape(-1, 1), f0.reshape(-1, 1), learning_rate=lr / n,
                                       discrete=True)
traced = LinearizedDynamics.from_kernel(ntk_traced, targets, f0, learning_rate=lr / n, discrete=True)
clip = np.finfo(np.float32).eps * evals[-1]
print(f"eigenvalues in [{evals[0]:.2e}, {evals[-1]:.2e}]; {np.sum(evals <= clip)} of {n * o} lie at or below the "
      f"null-space threshold {clip:.2e} ({np.sum(exact.eigh.evals == 0)} frozen); numpy's rank tolerance "
      f"{n * o * clip:.2e} would freeze {np.sum(evals <= n * o * clip)}")
loss_closed = exact.train_loss(steps) / n
loss_traced = traced.train_loss(steps) / n

# The same run with linfit's training loop: plain full-batch GD (no momentum, no weight decay), MSE loss.
gd = FinetuneConfig(epochs=STEPS, batch_size=n, learning_rate=float(lr), momentum=0.0, nesterov=False,
                    weight_decay=0.0, milestones=(), loss="mse", bn="frozen", eval_every_epoch=False)
run_lin = finetune(model, variables, x, labels, config=gd.replace(mode="linearized"))
run_real = finetune(model, variables, x, labels, config=gd.replace(mode="full"))
# train_loss[k] is the loss of step k's batch, i.e. before update k: L at t = k.
rel = np.abs(run_lin.train_loss - loss_closed) / loss_closed
print(f"closed form vs GD on the linearized model: max relative difference {rel.max():.2e}")
assert rel.max() < 1e-4, rel.max()
print(f"loss after {STEPS} steps: closed form {loss_closed[-1]:.4f}, linearized GD {run_lin.train_loss[-1]:.4f}, "
      f"real network GD {run_real.train_loss[-1]:.4f}")

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(steps, loss_closed, "k-", lw=2.5, alpha=0.4, label="closed form (full kernel)")
ax.plot(steps, loss_traced, "k--", lw=1, label="closed form (traced kernel, what scores use)")
ax.plot(steps, run_lin.train_loss, "C0.", ms=3, label="GD on the linearized model")
ax.plot(steps, run_real.train_loss, "C3-", lw=1, label="GD on the real network")
ax.set_xlabel("gradient-descent step t")
ax.set_ylabel("mean training loss")
ax.set_yscale("log")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "01_dynamics.png"), dpi=110)
plt.close(fig)
print("figure:", os.path.join(OUT, "01_dynamics.png"))

# %% [markdown]
# **Reading the plot.** The dots sit on the closed form: the linearized model's gradient descent *is* the
# eigen-decomposed recursion, so the kernel alone predicts the whole loss curve without training. The real
# network follows it early on and then departs: its Jacobian moves away from $J(w_0)$, and (with the default
# sizes) its curvature grows during training until full-batch descent at this fixed step becomes intermittently
# unstable, which shows as loss spikes; the linearized model, whose curvature is frozen, cannot do that.
# Directions of large kernel eigenvalues are learned first; a kernel whose top eigenvectors align with the labels
# (high LGC/LFC) gives a fast-decaying loss, which is why kernel-label alignment predicts fine-tuning
# (notebook 02).
