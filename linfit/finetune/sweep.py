"""Fine-tuning ground truth for one (model, task): a learning-rate grid × seeds, trained to convergence together.

``finetune_grid`` runs the protocol below; every run is the training step of ``loop.py`` (same loss, same
PyTorch-style SGD direction, same modes and BatchNorm handling) at a constant step size η:

1. **Split.** ``stratified_split(y_train, val_fraction, fold_in(PRNGKey(config.seed), 2))`` carves a validation
   split from the training set (the split of ``select_learning_rate``).
2. **Search.** Every (η, seed) pair of the grid is trained on the fit split until the convergence criterion
   holds or the step budget runs out, then evaluated on the validation and test sets.
3. **Bracketing.** η is ranked by the mean validation accuracy over the seeds (an η at which any seed diverged
   ranks last; ties: lower mean validation loss, then the smaller η). While the best η is the smallest (largest)
   of the grid, η_min / factor (η_max · factor) is added and trained, at most ``max_extensions`` times per side.
4. **Refit.** Every seed is trained again with the chosen η on the whole training set (same criterion) and its
   per-image test correctness is returned, so intervals can be bootstrapped over images and seeds exactly.

**Steps and convergence.** Training is measured in SGD steps and checked once per window of K = ``window``
steps. L_j is the mean over window j of the minibatch losses that its K steps compute before their updates (the
data loss of ``config.loss`` in the mode's training forward pass, BatchNorm on the minibatch in ``"train"`` mode;
weight decay is not in it). B_j is the best window mean so far: B_0 = L_0, and B_j = L_j when L_j *improves* on
it, ``L_j < B_{j−1} − (rel_tol · |B_{j−1}| + abs_tol)``, else B_{j−1}. A run reaches a *plateau* after the
``patience``-th consecutive window without an improvement; at its first ``decays`` plateaus its step size is
multiplied by ``decay_factor`` (and the count of windows without an improvement restarts, B kept), and at the
next it has *converged* (reduce-on-plateau, then early stopping, both on the training loss). A run whose loss is
not finite has *diverged*; one that reaches neither stops at ``max_steps`` (a plateau in the budget's last window
counts as converged). A stopped run keeps its parameters from then on.

Why the decay: at the large η that validation often picks, SGD can hold a loss level for several windows and then
leave it. Stopping there left one unit in six to nine of the 20-shot evidence grid (resnet8, window 25) with a
refit seed 5.6–50 points of test accuracy below its best sibling, mostly at 3–100× its training loss: 9 of 55 units
with ``patience = 3`` and no decay, 10 of 86 when runs stopped at two windows of equal loss. Rerun with one decay
by 0.1 and ``patience = 2``, six of them (gaps of 5.6–44.6 points before) refit all three seeds within 0.9 points of
each other.

**Data order.** Seed s trains from the head ``fold_in(PRNGKey(s), 0)`` (when ``config.head_init`` is set) on
minibatches of B = min(batch_size, N) samples: step k takes the ``(k mod E)``-th block of B indices of
``permutation(fold_in(fold_in(PRNGKey(s), 1), k // E), N)`` with E = ⌊N / B⌋ (each epoch reshuffles; the last N − E·B
indices of an epoch's permutation are skipped in that epoch, as ``DataLoader(shuffle=True, drop_last=True)``).

**One program.** With ``strategy="vmap"`` the R = (#η × #seeds) runs of a round are one ``jax.vmap`` of the step
over stacked parameters, optimiser and BatchNorm states (each run normalises by its own minibatch and keeps its
own running statistics), with the K steps of a window in a ``jax.lax.scan``: one jit compilation per architecture,
input shapes and R, one device call per window. ``strategy="sequential"`` trains the runs one after another with
the compiled step of ``loop.py`` called from Python: the reference that the vmapped program reproduces to
round-off, and the faster on CPU, where XLA runs both parts of the program slowly: a convolution vmapped over
per-run inputs and kernels becomes one grouped convolution (``feature_group_count = R``, 5× slower than R plain
ones for R = 8), and a convolutional step inside ``lax.scan`` ran 4–5× slower than the same compiled step called
from Python (``benchmarks/RESULTS.md``). The default picks ``"sequential"`` on the CPU backend, ``"vmap"`` on
accelerators.

Example::

    cfg = FinetuneConfig.paper(milestones=())
    result = finetune_grid(model, variables, x_train, y_train, x_test, y_test, config=cfg,
                           lrs=(0.01, 0.005, 0.001), seeds=(0, 1, 2))
    result.chosen_lr, result.bracketed
    result.test_correct          # [3, M] bool, one row per seed (refit with the chosen lr)
    result.test_accuracy         # [3]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from linfit.errors import ConfigError
from linfit.finetune.config import FinetuneConfig
from linfit.finetune.loop import (COMPILE_CACHE_SIZE, _check_against_head, _check_data, _make_trainer, _variables,
                                 prepare)
from linfit.finetune.protocol import lr_order, stratified_split

STRATEGIES = ("vmap", "sequential")


@dataclasses.dataclass(frozen=True)
class GridProtocol:
    """How long each run trains, how the grid is extended and how much of the training set validates.

    Attributes:
      window: K, the steps between two convergence checks (and the steps of one compiled call).
      max_steps: the step budget of every run; a positive multiple of ``window``.
      rel_tol, abs_tol: a window improves on the best window-mean loss B when its mean is below
        ``B − (rel_tol · |B| + abs_tol)`` (loss units: nats for ``"ce"``).
      patience: the consecutive windows without an improvement that make a plateau. To train every run for
        exactly ``max_steps`` (a fixed budget), give ``patience >= max_steps // window``: the first window always
        improves, so no plateau can be reached.
      decays: how many plateaus multiply the step size by ``decay_factor`` before the next one ends the run
        (0: the first plateau ends it).
      decay_factor: the step-size factor (in (0, 1)) at each decay.
      extend_factor: the ratio (> 1) between an edge η and the η added beyond it.
      max_extensions: at most this many η added below the grid, and as many above.
      val_fraction: the share of each class held out for choosing η.
    """

    window: int = 25
    max_steps: int = 1000
    rel_tol: float = 1e-2
    abs_tol: float = 1e-3
    patience: int = 2
    decays: int = 1
    decay_factor: float = 0.1
    extend_factor: float = 3.0
    max_extensions: int = 4
    val_fraction: float = 0.2

    def __post_init__(self):
        if self.window < 1 or self.max_steps < self.window or self.max_steps % self.window:
            raise ConfigError(
                f"max_steps must be a positive multiple of window; got max_steps={self.max_steps}, "
                f"window={self.window}"
            )
        if not (self.rel_tol >= 0 and self.abs_tol >= 0):
            raise ConfigError(f"rel_tol and abs_tol must be >= 0; got {self.rel_tol}, {self.abs_tol}")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1 window; got {self.patience}")
        if self.decays < 0 or not 0.0 < self.decay_factor < 1.0:
            raise ConfigError(f"need decays >= 0 and 0 < decay_factor < 1; got {self.decays}, {self.decay_factor}")
        if not self.extend_factor > 1 or self.max_extensions < 0:
            raise ConfigError(
                f"need extend_factor > 1 and max_extensions >= 0; got {self.extend_factor}, {self.max_extensions}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in (0, 1); got {self.val_fraction}")


@dataclasses.dataclass(frozen=True)
class GridResult:
    """The outcome of ``finetune_grid``; L learning rates, S seeds, M test images.

    Attributes:
      lrs: ``[L]`` float, every η trained in the search, ascending (the given grid plus the extensions).
      seeds: the S seeds.
      chosen_lr: the η chosen on validation and used for the refit.
      extensions: ``(below, above)``, how many η were added on each side of the given grid.
      bracketed: the chosen η is neither the smallest nor the largest of ``lrs`` (false only when
        ``max_extensions`` stopped the extension, or a single η was given with ``max_extensions=0``).
      val_accuracy, val_loss: ``[L, S]`` of the search runs (accuracy a fraction in [0, 1], loss the mean
        per-sample loss; NaN for a diverged run).
      search_steps: ``[L, S]`` int, steps taken; search_converged, search_diverged: ``[L, S]`` bool.
      search_test_correct: ``[L, S, M]`` bool, per-image test correctness of the search runs (trained on the fit
        split only; for oracle comparisons).
      test_correct: ``[S, M]`` bool, per-image test correctness of the refit runs (all False for a diverged run).
      steps: ``[S]`` int; converged, diverged: ``[S]`` bool; train_loss: ``[S]`` the last window-mean
        training loss, all of the refit runs.
      variables: S dicts ``{"params", "batch_stats"?}``, the refit runs' final variables (for mode
        ``"linearized"`` the parameters of the linearised model, as in ``FinetuneResult``).
      fit_indices, val_indices: the split of the training set used by the search.
      wall_time: seconds spent in ``finetune_grid``, compilation included.
      config, protocol: what was run.
    """

    lrs: np.ndarray
    seeds: tuple[int, ...]
    chosen_lr: float
    extensions: tuple[int, int]
    bracketed: bool
    val_accuracy: np.ndarray
    val_loss: np.ndarray
    search_steps: np.ndarray
    search_converged: np.ndarray
    search_diverged: np.ndarray
    search_test_correct: np.ndarray
    test_correct: np.ndarray
    steps: np.ndarray
    converged: np.ndarray
    diverged: np.ndarray
    train_loss: np.ndarray
    variables: tuple[dict, ...]
    fit_indices: np.ndarray
    val_indices: np.ndarray
    wall_time: float
    config: FinetuneConfig
    protocol: GridProtocol

    @property
    def test_accuracy(self) -> np.ndarray:
        """``[S]`` top-1 test accuracy of each refit run, a fraction in [0, 1] (the store records percent)."""
        return self.test_correct.mean(axis=1)


def batch_indices(data_key: jax.Array, step, n: int, batch_size: int) -> jax.Array:
    """``[batch_size]`` int32 sample indices of SGD step ``step`` (0-based, may be traced) of one run.

    Step k takes block ``k mod E`` of ``permutation(fold_in(data_key, k // E), n)``, E = ⌊n / batch_size⌋.
    """
    per_epoch = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(data_key, step // per_epoch), n)
    return jax.lax.dynamic_slice_in_dim(perm, (step % per_epoch) * batch_size, batch_size)


def improves(best: np.ndarray, current: np.ndarray, rel_tol: float, abs_tol: float) -> np.ndarray:
    """``current < best − (rel_tol·|best| + abs_tol)`` elementwise; True where ``best`` is +inf (no window yet)."""
    with np.errstate(invalid="ignore"):
        return np.isposinf(best) | (current < best - (rel_tol * np.abs(best) + abs_tol))


@dataclasses.dataclass
class _Runs:
    """R runs: stacked ``(theta, batch_stats, opt_state)`` states and ``(params0, theta0)`` anchors (leading axis
    R), with each run's step size ``lrs [R]``, data key ``keys [R, 2]`` and seed index ``seed_index [R]``."""

    state: Any
    anchor: Any
    lrs: np.ndarray
    keys: jax.Array
    seed_index: np.ndarray


def _stack(trees: Sequence) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _take(tree, r: int) -> Any:
    return jax.tree.map(lambda leaf: leaf[r], tree)


@functools.lru_cache(maxsize=COMPILE_CACHE_SIZE)
def _vmapped_window(step: Callable, batch_size: int, window: int) -> Callable:
    """``(state, anchor, lrs [R], keys [R, 2], x [N, ...], y [N], k0, active [R]) -> (state, losses [R, K])``:
    K steps of every run, in one jit; runs with ``active`` False keep their state."""

    def one_run(state, anchor, lr, key, x, y, k0):
        def body(carry, k):
            idx = batch_indices(key, k, x.shape[0], batch_size)
            return step(carry, anchor, x[idx], y[idx], lr)

        return jax.lax.scan(body, state, k0 + jnp.arange(window))

    def run_window(state, anchor, lrs, keys, x, y, k0, active):
        every_run = jax.vmap(one_run, in_axes=(0, 0, 0, 0, None, None, None))
        new_state, losses = every_run(state, anchor, lrs, keys, x, y, k0)

        def keep(new, old):
            return jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)

        return jax.tree.map(keep, new_state, state), losses

    return jax.jit(run_window)


@functools.lru_cache(maxsize=COMPILE_CACHE_SIZE)
def _vmapped_logits(logits: Callable) -> Callable:
    """``(theta, anchor, batch_stats, x [B, ...]) -> [R, B, C]`` for R stacked runs, in one jit."""
    return jax.jit(jax.vmap(logits, in_axes=(0, 0, 0, None)))


@functools.partial(jax.jit, static_argnums=4)
def _minibatch(data_key: jax.Array, step, x, y, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``(x[idx], y[idx])`` for ``idx = batch_indices(data_key, step, N, batch_size)``: one compiled call per step
    (indexing outside a jit costs two more dispatches)."""
    idx = batch_indices(data_key, step, x.shape[0], batch_size)
    return x[idx], y[idx]


def _train(run_window: Callable, num_runs: int, protocol: GridProtocol) -> dict[str, np.ndarray]:
    """Drive ``run_window(k0, active [R], scale [R]) -> losses [R, K]`` window by window under the convergence
    criterion; ``scale`` is each run's step size relative to its η (``decay_factor ** decays so far``)."""
    previous = np.full(num_runs, np.nan)
    best = np.full(num_runs, np.inf)
    stale = np.zeros(num_runs, np.int64)  # consecutive windows without an improvement
    steps = np.zeros(num_runs, np.int64)
    converged = np.zeros(num_runs, bool)
    diverged = np.zeros(num_runs, bool)
    active = np.ones(num_runs, bool)
    scale = np.ones(num_runs)  # each run's step size relative to its η
    decayed = np.zeros(num_runs, np.int64)
    for k0 in range(0, protocol.max_steps, protocol.window):
        current = np.asarray(run_window(k0, active, scale), np.float64).mean(axis=1)
        now_diverged = active & ~np.isfinite(current)
        better = active & improves(best, current, protocol.rel_tol, protocol.abs_tol)
        best = np.where(better, current, best)
        stale = np.where(better, 0, stale + active)
        plateau = active & ~now_diverged & (stale >= protocol.patience)
        decay = plateau & (decayed < protocol.decays)
        scale = np.where(decay, scale * protocol.decay_factor, scale)
        decayed += decay
        stale = np.where(decay, 0, stale)
        now_converged = plateau & ~decay
        steps[active] += protocol.window
        previous = np.where(active, current, previous)
        diverged |= now_diverged
        converged |= now_converged
        active &= ~(now_diverged | now_converged)
        if not active.any():
            break
    return {"steps": steps, "converged": converged, "diverged": diverged, "train_loss": previous}


def _fit(trainer, runs: _Runs, x, y, batch_size: int, protocol: GridProtocol, strategy: str):
    """Train ``runs`` on ``(x [N, ...], y [N])``; returns (final stacked states, ``_train``'s record)."""
    num_runs = len(runs.lrs)
    if strategy == "vmap":
        run_window = _vmapped_window(trainer.step, batch_size, protocol.window)
        state = runs.state
        lrs = jnp.asarray(runs.lrs, jnp.float32)

        def window_fn(k0, active, scale):
            nonlocal state
            state, losses = run_window(state, runs.anchor, lrs * jnp.asarray(scale, jnp.float32), runs.keys, x, y,
                                       k0, jnp.asarray(active))
            return losses

        record = _train(window_fn, num_runs, protocol)  # before reading ``state``, which it advances
        return state, record

    states, records = [], []
    for r in range(num_runs):
        state, anchor, lr, key = _take(runs.state, r), _take(runs.anchor, r), float(runs.lrs[r]), runs.keys[r]

        def window_fn(k0, active, scale):
            nonlocal state
            losses = []
            for k in range(k0, k0 + protocol.window):
                state, loss = trainer.step(state, anchor, *_minibatch(key, k, x, y, batch_size),
                                           lr * float(scale[0]))
                losses.append(loss)
            return jnp.stack(losses)[None]

        records.append(_train(window_fn, 1, protocol))
        states.append(state)
    return _stack(states), {k: np.concatenate([rec[k] for rec in records]) for k in records[0]}


def _eval_batches(x, batch_size: int):
    """Consecutive slices of ``x [M, ...]`` of one shape ``[min(batch_size, M), ...]`` (the last one padded with
    copies of its first row, so one compilation serves every slice), each with its count of real rows."""
    size = min(batch_size, x.shape[0])
    for i in range(0, x.shape[0], size):
        xb = x[i : i + size]
        valid = xb.shape[0]
        if valid < size:
            xb = jnp.concatenate([xb, jnp.broadcast_to(xb[:1], (size - valid, *xb.shape[1:]))])
        yield xb, valid


def _evaluate(trainer, runs: _Runs, state, x, y: np.ndarray, eval_batch_size: int, strategy: str):
    """Per-image correctness ``[R, M]`` bool and mean loss ``[R]`` of R trained runs (evaluation mode); a run with
    a non-finite logit counts every image wrong and has NaN loss."""
    theta, batch_stats, _ = state
    if strategy == "vmap":
        logits_fn = functools.partial(_vmapped_logits(trainer.logits), theta, runs.anchor, batch_stats)
    else:
        def logits_fn(xb):
            return jnp.stack([trainer.logits(_take(theta, r), _take(runs.anchor, r), _take(batch_stats, r), xb)
                              for r in range(len(runs.lrs))])
    logits = jnp.concatenate([logits_fn(xb)[:, :valid] for xb, valid in _eval_batches(x, eval_batch_size)], axis=1)
    finite = np.asarray(jnp.all(jnp.isfinite(logits), axis=(1, 2)))
    correct = (np.asarray(jnp.argmax(logits, axis=-1)) == y[None]) & finite[:, None]
    loss = np.asarray(jax.vmap(trainer.loss_fn, in_axes=(0, None))(logits, jnp.asarray(y)), np.float64)
    return correct, np.where(finite, loss, np.nan)


def _check_grid(lrs, seeds) -> tuple[list[float], tuple[int, ...]]:
    lrs = [float(lr) for lr in lrs]
    if not lrs or not all(math.isfinite(lr) and lr > 0 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise ConfigError(f"lrs must be a non-empty list of distinct positive finite learning rates; got {lrs}")
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers; got {list(seeds)}")
    return sorted(lrs), seeds


def finetune_grid(
    model,
    variables: Mapping,
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    config: FinetuneConfig,
    lrs: Sequence[float],
    seeds: Sequence[int],
    protocol: GridProtocol = GridProtocol(),
    num_classes: int | None = None,
    strategy: str | None = None,
) -> GridResult:
    """Fine-tune every (η, seed) of a grid to convergence, choose η on validation, refit, and score every test image.

    The protocol, the convergence criterion and the data order are in the module docstring.

    Args:
      model, variables: as ``finetune`` (a ``flax.linen`` module with a ``head`` and ``{"params",
        "batch_stats"?}``).
      x_train, y_train: ``[N, ...]`` inputs and ``[N]`` integer labels in ``0..C-1``.
      x_test, y_test: ``[M, ...]`` and ``[M]``, scored image by image.
      config: the optimiser, loss, mode, BatchNorm handling, head init, ``batch_size`` and ``eval_batch_size``
        (``FinetuneConfig.paper(milestones=())`` for the paper's optimiser). ``config.seed`` seeds the validation
        split; ``learning_rate``, ``epochs`` and ``eval_every_epoch`` are not used (η comes from ``lrs``, the
        length and the evaluation windows from ``protocol``).
      lrs: the initial grid of constant step sizes η (extended at an edge, see ``GridProtocol``).
      seeds: the S seeds; each gives one run per η (its own new head and data order).
      protocol: convergence, bracketing and validation settings.
      num_classes: C of the new head when ``config.head_init`` is set (default ``max(y_train) + 1``).
      strategy: ``"vmap"`` (every run of a round in one compiled, vmapped program) or ``"sequential"`` (one run
        after another); ``None``: ``"sequential"`` on the CPU backend, else ``"vmap"`` (see the module docstring).

    Returns:
      A ``GridResult``.

    Raises:
      ConfigError: empty or repeated ``lrs``/``seeds``, a non-positive η, ``config.milestones`` set (the step size
        is constant: pass ``milestones=()``), an unknown ``strategy``.
      ShapeError, LabelError, NonFiniteError, DatasetError: as ``finetune`` and ``stratified_split``.
    """
    start = time.perf_counter()
    if strategy is None:
        strategy = "sequential" if jax.default_backend() == "cpu" else "vmap"
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {list(STRATEGIES)}; got {strategy!r}")
    if config.milestones:
        raise ConfigError(
            f"finetune_grid trains at a constant step size until convergence, so learning-rate milestones have no "
            f"epoch to refer to; got milestones={config.milestones}: pass config.replace(milestones=())"
        )
    grid, seeds = _check_grid(lrs, seeds)
    x_train, y_all = _check_data(x_train, y_train, None, "training")

    trainers = []
    for seed in seeds:
        seed_model, seed_variables = prepare(model, variables, config.replace(seed=seed), num_classes, y_all)
        trainers.append(_make_trainer(seed_model, seed_variables, config))
    trainer = trainers[0]  # the compiled functions are shared: the seeds differ only in their starting point
    x_train, y_all, checked = _check_against_head(trainer, x_train, y_all, {"test": (x_test, y_test)})
    x_test, y_test = checked["test"]
    x_train, x_test = jnp.asarray(x_train), jnp.asarray(x_test)
    fit_idx, val_idx = stratified_split(y_all, protocol.val_fraction,
                                        jax.random.fold_in(jax.random.PRNGKey(config.seed), 2))
    data_keys = [jax.random.fold_in(jax.random.PRNGKey(seed), 1) for seed in seeds]

    def make_runs(run_lrs: Sequence[float]) -> _Runs:
        pairs = [(lr, s) for lr in run_lrs for s in range(len(seeds))]
        return _Runs(
            state=_stack([trainers[s].init_state for _, s in pairs]),
            anchor=_stack([trainers[s].anchor for _, s in pairs]),
            lrs=np.array([lr for lr, _ in pairs]),
            keys=jnp.stack([data_keys[s] for _, s in pairs]),
            seed_index=np.array([s for _, s in pairs]),
        )

    def train_and_score(run_lrs, x, y, eval_sets):
        runs = make_runs(run_lrs)
        state, record = _fit(trainer, runs, x, jnp.asarray(y), min(config.batch_size, x.shape[0]), protocol,
                             strategy)
        scores = {name: _evaluate(trainer, runs, state, ex, ey, config.eval_batch_size, strategy)
                  for name, (ex, ey) in eval_sets.items()}
        return runs, state, record, scores

    search_sets = {"val": (x_train[val_idx], y_all[val_idx]), "test": (x_test, y_test)}
    searched: dict[float, dict[str, np.ndarray]] = {}

    def search(run_lrs):
        _, _, record, scores = train_and_score(run_lrs, x_train[fit_idx], y_all[fit_idx], search_sets)
        val_correct, val_loss = scores["val"]
        failed = record["diverged"] | np.isnan(val_loss)
        per_run = {**record, "val_accuracy": np.where(failed, np.nan, val_correct.mean(axis=1)),
                   "val_loss": val_loss, "test_correct": scores["test"][0]}
        for i, lr in enumerate(run_lrs):
            searched[lr] = {k: v[i * len(seeds) : (i + 1) * len(seeds)] for k, v in per_run.items()}

    def best_lr() -> float:
        tried = sorted(searched)
        order = lr_order(tried, [searched[lr]["val_accuracy"] for lr in tried],
                         [searched[lr]["val_loss"] for lr in tried])
        return tried[order[0]]

    search(grid)
    below = above = 0
    while True:
        best, tried = best_lr(), sorted(searched)
        added = []
        if best == tried[0] and below < protocol.max_extensions:
            added.append(tried[0] / protocol.extend_factor)
            below += 1
        if best == tried[-1] and above < protocol.max_extensions:
            added.append(tried[-1] * protocol.extend_factor)
            above += 1
        if not added:
            break
        search(sorted(added))

    tried = sorted(searched)
    runs, state, record, scores = train_and_score([best], x_train, y_all, {"test": (x_test, y_test)})
    refit_variables = []
    for r, s in enumerate(runs.seed_index):
        refit_variables.append(_variables(trainers[s], *_take(state, r)[:2]))

    def table(key):
        return np.stack([searched[lr][key] for lr in tried])

    return GridResult(
        lrs=np.asarray(tried),
        seeds=seeds,
        chosen_lr=best,
        extensions=(below, above),
        bracketed=tried[0] < best < tried[-1],
        val_accuracy=table("val_accuracy"),
        val_loss=table("val_loss"),
        search_steps=table("steps"),
        search_converged=table("converged"),
        search_diverged=table("diverged"),
        search_test_correct=table("test_correct"),
        test_correct=scores["test"][0],
        steps=record["steps"],
        converged=record["converged"],
        diverged=record["diverged"],
        train_loss=record["train_loss"],
        variables=tuple(refit_variables),
        fit_indices=fit_idx,
        val_indices=val_idx,
        wall_time=time.perf_counter() - start,
        config=config,
        protocol=protocol,
    )
