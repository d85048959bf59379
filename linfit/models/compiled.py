"""Forward passes compiled once per architecture: the weights are arguments of the jitted function.

``jax.jit`` of a fresh closure over a model's weights compiles again for every model (and bakes the weights into
the program as constants); scoring a zoo of M models of one architecture would compile M times. Here the jitted
functions are cached per ``(module, method)`` and take the variables as an argument, so every zoo model of an
architecture (and input shape) reuses one executable. The backbone is taken without its head, so the source
head's class count does not split the cache either.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from linfit import models
    >>> model = models.create("small_cnn", num_classes=10)
    >>> variables = models.init(model, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    >>> phi = penultimate_features(model, variables, jnp.zeros((4, 28, 28, 1)))        # [4, D] float32
    >>> head_logits(model, variables, phi).shape
    (4, 10)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def headless(model: nn.Module, variables: Mapping[str, Any]) -> tuple[nn.Module, dict]:
    """The backbone without its head: ``(model.clone(num_classes=1), variables without params["head"])``, one
    module per architecture whatever the source classes (``features`` never reads the head)."""
    params = {name: leaf for name, leaf in variables["params"].items() if name != "head"}
    return model.clone(num_classes=1), {**variables, "params": params}


def _features(module: nn.Module, x: jax.Array) -> jax.Array:
    return module.features(x, train=False)


def _head(module: nn.Module, phi: jax.Array) -> jax.Array:
    return module.head(phi)


@functools.lru_cache(maxsize=64)
def compiled_apply(model: nn.Module, method: Callable) -> Callable:
    """``jit(lambda variables, x: model.apply(variables, x, method=method))``, built once per ``(model, method)``
    (Flax modules compare and hash by their configuration, so equal architectures share it)."""
    return jax.jit(lambda variables, x: model.apply(variables, x, method=method))


def penultimate_features(model: nn.Module, variables: Mapping[str, Any], x: Any, batch_size: int = 256) -> np.ndarray:
    """``phi [N, D]`` float32: the backbone's penultimate features of ``x [N, H, W, C]`` in evaluation mode, in
    batches of ``batch_size``, by one executable per architecture and batch shape."""
    body, variables = headless(model, variables)
    fn = compiled_apply(body, _features)
    x = jnp.asarray(x)
    return np.concatenate([np.asarray(fn(variables, x[i : i + batch_size])) for i in range(0, x.shape[0], batch_size)])


def head_logits(model: nn.Module, variables: Mapping[str, Any], phi: Any) -> np.ndarray:
    """``logits [N, C]`` float32 of the model's own head (``variables["params"]["head"]``, an ``nn.Dense``) on
    precomputed features ``phi [N, D]``: ``model(x) == head_logits(model, variables, features(x))``."""
    return np.asarray(compiled_apply(model, _head)({"params": {"head": variables["params"]["head"]}}, jnp.asarray(phi)))
