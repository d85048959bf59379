"""Shared score inputs, computed once per (model, task) and handed to every score that declares them.

Ten scores on one model cost one forward pass: ``extract_inputs`` computes only the inputs that the requested
scores need (``Score.needs``, vocabulary in ``linfit.scores.registry``), once, and times each so the benchmark can
charge every score the cost of what it used (the paper's Table 3).

Task-level inputs that do not depend on the candidate model (the RSA probe network's features) are computed once
per task by ``TaskInputs`` and reused for every model.

Example::

    inputs, seconds = extract_inputs(model, variables, x_subset, {"features", "ntk"})
    lfc_value = scores.get("lfc")(labels, **inputs)
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from linfit.errors import ConfigError, UnknownNameError
from linfit.models import create, features_fn, init, param_subsets
from linfit.models.compiled import head_logits, penultimate_features
from linfit.scores.lgc import PAPER_PROJECTION_DIM, lgc_kernel
from linfit.scores.registry import INPUT_NAMES, SOURCE_INPUTS
from linfit.timing import Stopwatch


def batched_apply(apply_fn: Callable, params: Any, x, batch_size: int = 256) -> np.ndarray:
    """``apply_fn(params, x)`` over ``x [N, ...]`` in batches of ``batch_size``, jit-compiled, to host."""
    fn = jax.jit(apply_fn)
    x = jnp.asarray(x)
    return np.concatenate([np.asarray(fn(params, x[i : i + batch_size])) for i in range(0, x.shape[0], batch_size)])


@dataclasses.dataclass
class TaskInputs:
    """Inputs that depend on the task only (computed lazily, once): the RSA probe network's features.

    Attributes:
      x: ``[N, H, W, C]`` scoring subset; labels: ``[N]``.
      probe_model: registered model name of the small probe network trained on the target (RSA; the paper
        uses a ResNet-18, scaled down here).
      probe_epochs: training epochs of the probe.
      seed: PRNG seed for the probe's initialisation and data order.
    """

    x: Any
    labels: np.ndarray
    probe_model: str = "small_cnn"
    probe_epochs: int = 30
    seed: int = 0
    _probe_features: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)
    _probe_seconds: float = dataclasses.field(default=0.0, init=False, repr=False)

    def take_probe_seconds(self) -> float:
        """The probe's training time (compilation excluded), returned once (charged to the first model scored),
        then 0."""
        seconds, self._probe_seconds = self._probe_seconds, 0.0
        return seconds

    def probe_features(self) -> np.ndarray:
        """``[N, Dp]`` penultimate features of a small network trained on (x, labels) from scratch."""
        if self._probe_features is None:
            from linfit.finetune import FinetuneConfig, finetune

            watch = Stopwatch().start()
            num_classes = int(np.max(self.labels)) + 1
            model = create(self.probe_model, num_classes)
            variables = init(model, jax.random.PRNGKey(self.seed), jnp.asarray(self.x[:1]))
            config = FinetuneConfig(epochs=self.probe_epochs, learning_rate=0.01, milestones=(), seed=self.seed,
                                    eval_every_epoch=False, head_init=None)
            trained = finetune(model, variables, self.x, self.labels, config=config).variables
            apply_features, params = features_fn(model, trained)
            self._probe_features = batched_apply(apply_features, params, self.x)
            self._probe_seconds = watch.stop().run_seconds
        return self._probe_features


def source_sample(domain: str, *, per_class: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x [M, 28, 28, 1], y [M])``: at most ``per_class`` training images per class of an embedded source
    domain (``"union"``: all source domains, the generalist's data), for Domain Similarity's source statistics."""
    from linfit.data import embedded, scoring_subset

    data = embedded.load_union() if domain == "union" else embedded.load(domain)
    idx = scoring_subset(data.y_train, per_class=per_class, seed=seed)
    return data.x_train[idx], data.y_train[idx]


def _source_statistics(model, variables, source_x, source_y, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    phi = penultimate_features(model, variables, source_x, batch_size).astype(np.float64)
    y = np.asarray(source_y)
    counts = np.bincount(y)
    means = np.stack([phi[y == c].mean(axis=0) if counts[c] else np.zeros(phi.shape[1]) for c in range(counts.size)])
    return means, counts


def draw_key(seed: int, model_name: str, task_name: str = "") -> jax.Array:
    """The ``"key"`` score input: ``PRNGKey(seed)`` with the CRC-32s of ``model_name`` and ``task_name`` folded in.

    One key per (model, task, seed): a Random ranking is drawn afresh on every task instead of repeating one
    ordering of the zoo (which would make its averages over tasks a single draw)."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(model_name.encode()))
    return jax.random.fold_in(key, zlib.crc32(task_name.encode()))


# Inputs computed from the penultimate features of the scoring subset; the first one needed is charged the pass.
_FORWARD_USERS = ("features", "source_probs", "ntk", "ntk_last_conv", "ntk_last_conv_projected")


def extract_inputs(
    model,
    variables,
    x,
    needs: Iterable[str],
    *,
    task: TaskInputs | None = None,
    source_data: tuple[Any, Any] | None = None,
    seed: int = 0,
    model_name: str = "",
    task_name: str = "",
    head_samples: int | None = None,
    batch_size: int = 256,
    memory_budget_bytes: int = 2**30,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Compute the requested score inputs for one pre-trained model on one task's scoring subset.

    Args:
      model, variables: a ``linfit.models`` backbone with its pre-trained (source) head.
      x: ``[N, H, W, C]`` the task's scoring subset (training split only).
      needs: input names (``linfit.scores.registry.INPUT_NAMES``), e.g. the union of the scores' ``needs``.
      task: task-level inputs (required for ``"probe_features"``).
      source_data: ``(x_source [M, ...], y_source [M])`` of the model's source domain (required for
        ``"source_class_means"`` / ``"source_class_counts"``: Domain Similarity).
      seed: seeds the ``"key"`` input and the random heads of ``head_samples``.
      model_name, task_name: folded into the ``"key"`` input (``draw_key``), so that each (model, task) pair
        draws its own random numbers (the Random baseline: an independent ordering of the zoo on every task)
        while the draw stays reproducible.
      head_samples: ``None`` for the exact head-averaged NTKs (D backward passes per sample), or k random head
        rows (k backward passes; an unbiased estimate, see ``linfit.scores.lgc``).
      batch_size: forward-pass batch size.
      memory_budget_bytes: memory per device for the NTK (``linfit.ntk.kernel``).

    Returns:
      ``(inputs, seconds)``: arrays by input name, and the wall seconds spent on each, JAX tracing and XLA
      compilation excluded (``linfit.timing.Stopwatch``): every forward pass and kernel is compiled once per
      architecture and input shape, and that one-off cost, paid by whichever model comes first, is no score's;
      time it around the calls with a ``Stopwatch``. The penultimate features are computed once and shared;
      their forward pass is charged to the first of ``features``, ``source_probs``, ``ntk``, ``ntk_last_conv``,
      ``ntk_last_conv_projected`` needed.
    """
    needs = set(needs)
    unknown = needs - set(INPUT_NAMES)
    if unknown:
        raise UnknownNameError(f"unknown score inputs {sorted(unknown)}; known: {list(INPUT_NAMES)}")
    if "probe_features" in needs and task is None:
        raise ConfigError("the input 'probe_features' (RSA) needs the task-level inputs: pass task=TaskInputs(...)")
    if needs & SOURCE_INPUTS and source_data is None:
        raise ConfigError("Domain Similarity's inputs need the model's source data: pass source_data=(x, y)")
    inputs: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, compute: Callable[[], Any]) -> None:
        with Stopwatch() as watch:
            inputs[name] = compute()
        seconds[name] = seconds.get(name, 0.0) + watch.run_seconds

    phi = None
    forward_users = [name for name in _FORWARD_USERS if name in needs]
    if forward_users:  # one forward pass shared by the features, the source head and the kernels' head term
        with Stopwatch() as watch:
            phi = penultimate_features(model, variables, x, batch_size)
        seconds[forward_users[0]] = watch.run_seconds
        if "features" in needs:
            inputs["features"] = phi
    if "source_probs" in needs:
        timed("source_probs", lambda: np.asarray(jax.nn.softmax(head_logits(model, variables, phi)
                                                                .astype(np.float64), axis=-1)))
    kernel_options = dict(head_samples=head_samples, key=jax.random.PRNGKey(seed), batch_size=batch_size,
                          memory_budget_bytes=memory_budget_bytes, features=phi)
    if "ntk" in needs:
        timed("ntk", lambda: lgc_kernel(model, variables, x, **kernel_options))
    if needs & {"ntk_last_conv", "ntk_last_conv_projected"}:
        last_conv = param_subsets(model, variables["params"])["last_conv"]
    if "ntk_last_conv" in needs:
        timed("ntk_last_conv", lambda: lgc_kernel(model, variables, x, params_filter=last_conv, **kernel_options))
    if "ntk_last_conv_projected" in needs:
        timed("ntk_last_conv_projected", lambda: lgc_kernel(model, variables, x, params_filter=last_conv,
                                                            projection_dim=PAPER_PROJECTION_DIM, **kernel_options))
    if needs & SOURCE_INPUTS:
        with Stopwatch() as watch:
            inputs["source_class_means"], inputs["source_class_counts"] = _source_statistics(
                model, variables, *source_data, batch_size)
        seconds["source_class_means"] = seconds["source_class_counts"] = watch.run_seconds
    if "probe_features" in needs:
        inputs["probe_features"] = task.probe_features()
        seconds["probe_features"] = task.take_probe_seconds()
    if "key" in needs:
        timed("key", lambda: draw_key(seed, model_name, task_name))
    return inputs, seconds
