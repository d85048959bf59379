"""The one training loop behind every fine-tuning mode: full, linear probe, parameter subset, linearised.

Every mode trains a sub-tree θ of the parameters (``linfit.tree.split_params`` with the mode's filter; the
other leaves stay at their pre-trained values) with one jit-compiled step::

    g_k = ∇_θ loss(f(θ_k; x_batch), y_batch)          (losses.py: mean over the batch)
    d_k = sgd_direction(config)(g_k)                  (weight decay + momentum, PyTorch's SGD rule)
    θ_{k+1} = θ_k − η_k d_k,   η_k = learning_rate_schedule(config, steps_per_epoch)(k)

and only the function f differs:

* ``"full"`` / ``"subset"`` / ``"linear_probe"``: the network itself, ``model.apply`` with BatchNorm in
  train mode (batch statistics, running averages updated) when ``bn="train"``, else in evaluation mode;
* ``"linearized"``: f_lin(θ; x) = f(θ0; x) + J_θ f(θ0; x)(θ − θ0) (``linfit.linearize.linearize``, one
  ``jax.jvp``) with the BatchNorm statistics frozen at their pre-trained values, the model around which
  ``linfit.dynamics`` predicts the fine-tuning curve in closed form.

The compiled step and logits are cached by (flax module, the config fields that shape the computation) in
``compiled_functions``: later runs on the same architecture and input shapes (other pre-trained variables, other
learning rates, schedules or seeds) reuse one compilation.

Data order: epoch e visits the training set in the order ``jax.random.permutation(fold_in(k_data, e), N)``
with ``k_data = fold_in(PRNGKey(seed), 1)``; equal seeds give identical runs.

Example::

    cfg = FinetuneConfig.paper(epochs=3, batch_size=16, learning_rate=0.005)
    result = finetune(model, variables, x_train, y_train, config=cfg, x_test=x_test, y_test=y_test)
    result.train_loss          # [3] mean training loss of each epoch
    result.test_accuracy       # [3] top-1 test accuracy after each epoch
    logits = result.predict(x_test)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from linfit.errors import ConfigError, LabelError, NonFiniteError, ShapeError
from linfit.finetune.config import FinetuneConfig, learning_rate_schedule, sgd_direction
from linfit.finetune.losses import LOSS_FUNCTIONS
from linfit.linearize import linearize
from linfit.tree import split_params

HEAD_FILTER = r"^head/"
"""The leaves of the ``head`` sub-module (the contract of ``linfit.models``), trained by ``"linear_probe"``."""


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """The outcome of one run.

    Attributes:
      variables: the final ``{"params", "batch_stats"?}``; in mode ``"linearized"`` these are the
        parameters of the linearised model (use ``predict``: ``model.apply`` would evaluate the
        non-linear network at them).
      predict: ``x [M, ...] -> logits [M, C]`` of the trained model in evaluation mode (the linearised model
        in mode ``"linearized"``), batched by ``config.eval_batch_size``.
      train_loss: ``[epochs]`` sample-weighted mean of the batch losses of each epoch (NaN after divergence).
      eval_epochs: ``[E]`` the epochs (1-based) after which the evaluation sets were evaluated.
      metrics: ``{set name: {"accuracy": [E], "loss": [E]}}``, e.g. ``"test"`` and ``"val"``.
      steps: SGD steps taken.
      wall_time: seconds spent in ``finetune`` (compilation included).
      diverged: the training loss became NaN/inf; training stopped after that epoch.
      config: the configuration of the run.
    """

    variables: dict
    predict: Callable[[Any], jax.Array]
    train_loss: np.ndarray
    eval_epochs: np.ndarray
    metrics: Mapping[str, Mapping[str, np.ndarray]]
    steps: int
    wall_time: float
    diverged: bool
    config: FinetuneConfig

    @property
    def test_accuracy(self) -> np.ndarray:
        """``[E]`` top-1 accuracy on the test set at ``eval_epochs`` (empty without a test set)."""
        return self.metrics.get("test", {}).get("accuracy", np.zeros(0))

    @property
    def test_loss(self) -> np.ndarray:
        """``[E]`` mean test loss (the training loss function) at ``eval_epochs``."""
        return self.metrics.get("test", {}).get("loss", np.zeros(0))


class _Compiled(NamedTuple):
    """The jit-compiled functions of one (architecture, computation-shaping config); no array is closed over."""

    step: Callable  # (state, anchor, x [B,...], y [B], lr) -> (state, batch loss)
    logits: Callable  # (theta, anchor, batch_stats, x [B,...]) -> logits [B, C], evaluation mode


class _Trainer(NamedTuple):
    """``_Compiled`` functions plus the starting point of one run; serves any learning rate."""

    step: Callable
    logits: Callable
    init_state: tuple  # (theta0, batch_stats0, opt_state0)
    anchor: tuple  # (params0, theta0): the tree θ is merged into, and the linearisation point
    merge: Callable  # theta -> full params
    loss_fn: Callable


_RUNTIME_FIELDS = ("epochs", "batch_size", "learning_rate", "milestones", "gamma", "head_init", "seed",
                   "eval_every_epoch", "eval_batch_size")
"""``FinetuneConfig`` fields that do not enter the compiled functions (the step size is an argument)."""

COMPILE_CACHE_SIZE = 32
"""How many (architecture, config) pairs keep their compiled functions (least recently used dropped first)."""


def _params_filter(config: FinetuneConfig):
    if config.mode == "full":
        return None
    if config.mode == "linear_probe":
        return HEAD_FILTER if config.params_filter is None else config.params_filter
    return config.params_filter


def _computation_config(config: FinetuneConfig) -> FinetuneConfig:
    """``config`` with the fields in ``_RUNTIME_FIELDS`` reset to their defaults and the mode's params filter
    resolved: two runs whose configs map to equal values here compile to the same functions."""
    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig) if f.name in _RUNTIME_FIELDS}
    return dataclasses.replace(config, params_filter=_params_filter(config), **defaults)


def _split_variables(variables: Mapping) -> tuple[Any, Any]:
    """``(params, batch_stats or None)``."""
    if "params" not in variables:
        raise ShapeError(f"variables must hold 'params' (and optionally 'batch_stats'); got keys {list(variables)}")
    return variables["params"], variables.get("batch_stats")


def _apply(model, params, batch_stats, x, train: bool):
    """``model.apply`` in train (running statistics returned updated) or evaluation mode."""
    variables = {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}
    if train:
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]
    return model.apply(variables, x, train=False), batch_stats


def _compile(model, config: FinetuneConfig) -> _Compiled:
    """Build the jitted step and logits of ``model`` under ``config`` (a ``_computation_config``).

    Everything that varies between runs of one architecture (θ, the anchor ``(params0, θ0)``, the BatchNorm
    statistics, the optimizer state, the step size η_k, the batch) is an argument, so one compilation per input
    shape serves every run; ``jax.jit`` retraces by itself when shapes, dtypes or tree structures change.
    """
    params_filter = config.params_filter
    loss_fn = LOSS_FUNCTIONS[config.loss]
    tx = sgd_direction(config)
    train_modes = config.bn == "train" and config.mode in ("full", "subset")

    def forward(theta, anchor, batch_stats, x, train):
        # The frozen leaves and θ0 are arguments (not closed-over constants) so XLA does not embed them.
        anchor_params, anchor_theta = anchor
        merge_traced = split_params(anchor_params, params_filter)[1]
        if config.mode == "linearized":
            f_lin = linearize(lambda th, xb: _apply(model, merge_traced(th), batch_stats, xb, False)[0], anchor_theta)
            return f_lin(theta, x), batch_stats
        return _apply(model, merge_traced(theta), batch_stats, x, train)

    def step(state, anchor, x, y, lr):
        theta, batch_stats, opt_state = state
        train_bn = train_modes and batch_stats is not None  # static: None is a tree structure, not a value

        def objective(th):
            logits, new_stats = forward(th, anchor, batch_stats, x, train_bn)
            return loss_fn(logits, y), new_stats

        (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(theta)
        decayed = theta if config.weight_decay_center == "zero" else jax.tree.map(jnp.subtract, theta, anchor[1])
        direction, opt_state = tx.update(grads, opt_state, decayed)
        theta = jax.tree.map(lambda w, d: w - lr * d, theta, direction)
        return (theta, new_stats, opt_state), loss

    def logits(theta, anchor, batch_stats, x):
        return forward(theta, anchor, batch_stats, x, False)[0]

    return _Compiled(step=jax.jit(step), logits=jax.jit(logits))


_compile_cached = lru_cache(maxsize=COMPILE_CACHE_SIZE)(_compile)


def compiled_functions(model, config: FinetuneConfig) -> _Compiled:
    """The compiled functions for ``(model, config)``, shared by every run with an equal key.

    The key is ``(model, _computation_config(config))``: the flax module (a dataclass, equal when its fields
    are) and every config field that shapes the computation (mode, loss, params filter, bn, optimizer
    settings). A callable params filter enters the key by its own hash (a new lambda is a new key). If the key
    is not hashable (e.g. a module field or filter that is a list) the functions are built afresh, uncached.
    """
    config = _computation_config(config)
    try:
        hash((model, config))
    except TypeError:
        return _compile(model, config)
    return _compile_cached(model, config)


def clear_compile_cache() -> None:
    """Drop every cached compiled function (the next run of each architecture compiles again)."""
    _compile_cached.cache_clear()


def _make_trainer(model, variables: Mapping, config: FinetuneConfig) -> _Trainer:
    params0, batch_stats0 = _split_variables(variables)
    theta0, merge = split_params(params0, _params_filter(config))
    compiled = compiled_functions(model, config)
    return _Trainer(
        step=compiled.step,
        logits=compiled.logits,
        init_state=(theta0, batch_stats0, sgd_direction(config).init(theta0)),
        anchor=(params0, theta0),
        merge=merge,
        loss_fn=LOSS_FUNCTIONS[config.loss],
    )


def _batched(fn: Callable, x, batch_size: int) -> jax.Array:
    """``fn`` applied to consecutive slices of ``x`` of at most ``batch_size`` rows, concatenated."""
    return jnp.concatenate([fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _metrics(logits: jax.Array, labels, loss_fn: Callable) -> dict[str, float]:
    """Top-1 accuracy and mean loss of ``logits [M, C]`` on ``labels [M]``; both NaN if any logit is not finite."""
    if not bool(jnp.all(jnp.isfinite(logits))):
        return {"accuracy": math.nan, "loss": math.nan}
    labels = jnp.asarray(labels)
    return {
        "accuracy": float(jnp.mean(jnp.argmax(logits, axis=-1) == labels)),
        "loss": float(loss_fn(logits, labels)),
    }


def _check_data(x, y, num_classes: int | None, name: str) -> tuple[Any, np.ndarray]:
    """Validate inputs ``x [N, ...]`` and labels ``y [N]`` in ``0..num_classes-1`` (integers >= 0 while the
    head's size is not known yet: ``num_classes=None``); returns (x, y as int32)."""
    if not hasattr(x, "shape") or len(x.shape) < 1:
        raise ShapeError(f"{name} inputs must be an array [N, ...]; got {type(x).__name__}")
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ShapeError(f"{name} labels must be one-dimensional [N]; got shape {labels.shape}")
    if labels.shape[0] != x.shape[0]:
        raise ShapeError(f"{name} has {x.shape[0]} inputs but {labels.shape[0]} labels")
    if labels.shape[0] == 0:
        raise ShapeError(f"the {name} set is empty (N=0)")
    if not np.issubdtype(labels.dtype, np.integer) and not np.all(labels == np.round(labels)):
        raise LabelError(f"{name} labels must be integers 0..C-1; got dtype {labels.dtype} with fractions")
    labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= (np.inf if num_classes is None else num_classes))]
    if bad.size:
        expected = "be >= 0" if num_classes is None else f"lie in 0..C-1 with C={num_classes} (the head's output size)"
        raise LabelError(f"{name} labels must {expected}; got values {sorted(set(bad.tolist()))[:5]}")
    if jnp.issubdtype(x.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(jnp.asarray(x)))):
        raise NonFiniteError(f"{name} inputs contain NaN or infinite values")
    return x, labels.astype(np.int32)


def _check_against_head(trainer: _Trainer, x_train, y_train, eval_sets: Mapping[str, tuple[Any, Any]]):
    """``_check_data`` of the training set and of every evaluation set ``{name: (x, y)}`` against the output
    size of ``trainer``'s head; returns ``(x_train, y_train, eval_sets)`` with int32 labels."""
    theta0, batch_stats0, _ = trainer.init_state
    num_classes = _num_outputs(lambda xb: trainer.logits(theta0, trainer.anchor, batch_stats0, xb), x_train)
    x_train, y_train = _check_data(x_train, y_train, num_classes, "training")
    return x_train, y_train, {name: _check_data(x, y, num_classes, name) for name, (x, y) in eval_sets.items()}


def _variables(trainer: _Trainer, theta, batch_stats) -> dict:
    """The Flax variables of trained leaves ``theta`` (the frozen ones merged back) and BatchNorm statistics."""
    variables = {"params": trainer.merge(theta)}
    if batch_stats is not None:
        variables["batch_stats"] = batch_stats
    return variables


def _num_outputs(logits_fn: Callable, x) -> int:
    """C of ``logits_fn(x[:1]) -> [1, C]``, from shapes only."""
    out = jax.eval_shape(logits_fn, x[:1])
    if len(out.shape) != 2:
        raise ShapeError(f"the model must return logits [N, C]; got shape {out.shape} for one sample")
    return int(out.shape[-1])


def _run(
    trainer: _Trainer,
    x_train,
    y_train,
    config: FinetuneConfig,
    eval_sets: Mapping[str, tuple[Any, Any]],
    progress: bool,
) -> FinetuneResult:
    """Train from ``trainer.init_state`` with ``config`` (its learning-rate fields may differ from the
    trainer's: they are not compiled in) and evaluate ``eval_sets`` ({name: (x, y)}) along the way."""
    start = time.perf_counter()
    theta0, batch_stats0, _ = trainer.init_state
    x_train, y_train, eval_sets = _check_against_head(trainer, x_train, y_train, eval_sets)

    n = y_train.shape[0]
    batch_size = min(config.batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total = config.epochs * steps_per_epoch
    lrs = np.broadcast_to(np.asarray(learning_rate_schedule(config, steps_per_epoch)(np.arange(total))), (total,))
    data_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)

    state = trainer.init_state
    train_loss = np.full(config.epochs, np.nan)
    history: dict[str, dict[str, list[float]]] = {name: {"accuracy": [], "loss": []} for name in eval_sets}
    eval_epochs: list[int] = []
    step = 0
    diverged = False

    def predict_fn(current_state):
        theta, batch_stats, _ = current_state
        return lambda x: _batched(
            lambda xb: trainer.logits(theta, trainer.anchor, batch_stats, xb), x, config.eval_batch_size
        )

    bar = tqdm(range(config.epochs), desc=f"{config.mode} lr={config.learning_rate:g}", disable=not progress)
    for epoch in bar:
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), n))
        weighted = []
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            state, loss = trainer.step(state, trainer.anchor, x_train[idx], y_train[idx], float(lrs[step]))
            weighted.append(loss * idx.shape[0])
            step += 1
        train_loss[epoch] = float(jnp.sum(jnp.stack(weighted))) / n
        diverged = not np.isfinite(train_loss[epoch])
        if eval_sets and (config.eval_every_epoch or diverged or epoch == config.epochs - 1):
            predict = predict_fn(state)
            for name, (x, y) in eval_sets.items():
                for key, value in _metrics(predict(x), y, trainer.loss_fn).items():
                    history[name][key].append(value)
            eval_epochs.append(epoch + 1)
        bar.set_postfix(loss=f"{train_loss[epoch]:.4f}")
        if diverged:
            break

    return FinetuneResult(
        variables=_variables(trainer, *state[:2]),
        predict=predict_fn(state),
        train_loss=train_loss,
        eval_epochs=np.asarray(eval_epochs, dtype=np.int64),
        metrics={name: {k: np.asarray(v) for k, v in m.items()} for name, m in history.items()},
        steps=step,
        wall_time=time.perf_counter() - start,
        diverged=diverged,
        config=config,
    )


def prepare(model, variables: Mapping, config: FinetuneConfig, num_classes: int | None, y_train) -> tuple[Any, dict]:
    """Replace the head by a fresh ``num_classes``-way one when ``config.head_init`` asks for it.

    ``num_classes`` defaults to ``max(y_train) + 1``; the head's key is ``fold_in(PRNGKey(seed), 0)``. Without
    ``head_init`` the model and its head are returned as given and ``num_classes`` is not used. Raises
    ``ShapeError`` when ``num_classes`` must come from an empty ``y_train``.
    """
    if config.head_init is None:
        return model, dict(variables)
    from linfit.models import replace_head

    if num_classes is None:
        labels = np.asarray(y_train)
        if labels.size == 0:
            raise ShapeError("the training set is empty (N=0)")
        num_classes = int(labels.max()) + 1
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    return replace_head(model, variables, num_classes, key, init=config.head_init)


def finetune(
    model,
    variables: Mapping,
    x_train,
    y_train,
    *,
    config: FinetuneConfig,
    x_test=None,
    y_test=None,
    num_classes: int | None = None,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune ``model`` from ``variables`` on ``(x_train [N, ...], y_train [N])``.

    Args:
      model: a ``flax.linen`` module with ``__call__(x, train=False) -> logits [N, C]`` and a ``head``
        sub-module (``linfit.models`` backbones).
      variables: ``{"params", "batch_stats"?}``.
      x_train, y_train: training inputs and integer labels in ``0..C-1`` (C = the head's output size).
      config: see ``FinetuneConfig``; ``FinetuneConfig.paper()`` is the paper's protocol.
      x_test, y_test: optional test set, evaluated after every epoch (``config.eval_every_epoch``) or
        after the last one.
      num_classes: C of the new head when ``config.head_init`` is set (default ``max(y_train) + 1``).
      progress: show a tqdm bar over epochs.

    Returns:
      A ``FinetuneResult``.

    Raises:
      ShapeError: mismatched lengths, an empty set, labels not ``[N]``, logits not ``[N, C]``.
      LabelError: labels outside ``0..C-1``.
      NonFiniteError: NaN or infinite float inputs.
      ParamsFilterError: the mode's params filter selects nothing.
    """
    if (x_test is None) != (y_test is None):
        raise ShapeError("give both x_test and y_test, or neither")
    model, variables = prepare(model, variables, config, num_classes, y_train)
    eval_sets = {} if x_test is None else {"test": (x_test, y_test)}
    return _run(_make_trainer(model, variables, config), x_train, y_train, config, eval_sets, progress)


def evaluate(model, variables: Mapping, x, y, *, batch_size: int = 256, loss: str = "ce") -> dict[str, float]:
    """Top-1 accuracy and mean loss (``"ce"`` or ``"mse"``, see ``losses``) of ``model`` in evaluation mode.

    ``x [N, ...]``, ``y [N]`` integer labels. Returns ``{"accuracy": float, "loss": float}``.

    Raises:
      ConfigError: an unknown ``loss`` or ``batch_size < 1``.
      ShapeError, LabelError, NonFiniteError: as ``finetune`` for its test set.
    """
    if loss not in LOSS_FUNCTIONS:
        raise ConfigError(f"loss must be one of {list(LOSS_FUNCTIONS)}; got {loss!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}")
    apply = jax.jit(lambda p, s, xb: _apply(model, p, s, xb, False)[0])
    logits_fn = partial(apply, *_split_variables(variables))
    x, labels = _check_data(x, y, _num_outputs(logits_fn, x), "evaluation")
    return _metrics(_batched(logits_fn, x, batch_size), labels, LOSS_FUNCTIONS[loss])
