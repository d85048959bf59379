"""Pure functions around a backbone: initialise, evaluate as ``apply_fn(params, x)``, swap the head,
and name parameter subsets.

``apply_fn`` always runs in evaluation mode with the non-trainable collections (BatchNorm
``batch_stats``) closed over, so ``jax.grad``/``jax.jacrev``/the NTK see ``params`` only.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from linfit import models
    >>> model = models.create("small_cnn", num_classes=10)
    >>> variables = models.init(model, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    >>> apply_fn, params = models.logits_fn(model, variables)
    >>> apply_fn(params, jnp.zeros((4, 32, 32, 3))).shape
    (4, 10)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from linfit.errors import TreeMismatchError, UnknownNameError
from linfit.models.layers import check_images
from linfit.models.registry import check_num_classes
from linfit.tree import ParamsFilter, split_params

ApplyFn = Callable[[Any, jax.Array], jax.Array]
HEAD_INITS = ("zeros", "lecun_normal")


def init(model: nn.Module, key: jax.Array, sample_x: jax.Array) -> dict:
    """Initialise ``model`` on a sample batch ``sample_x [N, H, W, C]`` (only its shape matters), under ``jit``.

    Args:
      model: a ``linfit.models`` backbone.
      key: a ``jax.random`` PRNG key.
      sample_x: ``[N, H, W, C]`` float images of the input size the model will see (``N = 1`` suffices).

    Returns:
      ``{"params": ...}`` plus ``"batch_stats"`` iff the model has BatchNorm; float32 leaves.

    Raises:
      ShapeError: ``sample_x`` is not a 4-axis array ``[N, H, W, C]``.
    """
    check_images(sample_x)
    return dict(jax.jit(functools.partial(model.init, train=False))(key, sample_x))


def _split_state(variables: Mapping[str, Any]) -> tuple[Any, dict]:
    if "params" not in variables:
        raise TreeMismatchError(f"variables must contain 'params'; got collections {sorted(variables)}")
    state = {name: tree for name, tree in variables.items() if name != "params"}
    return variables["params"], state


def _apply_fn(model: nn.Module, variables: Mapping[str, Any], method: str) -> tuple[ApplyFn, Any]:
    params, state = _split_state(variables)

    def apply_fn(params: Any, x: jax.Array) -> jax.Array:
        return model.apply({"params": params, **state}, x, train=False, method=method)

    return apply_fn, params


def logits_fn(model: nn.Module, variables: Mapping[str, Any]) -> tuple[ApplyFn, Any]:
    """``(apply_fn, params)`` with ``apply_fn(params, x [N, H, W, C]) -> logits [N, num_classes]`` in
    evaluation mode; every collection other than ``params`` is closed over as a constant.

    ``params`` is ``variables["params"]`` itself (not copied); the logits have the dtype of the computation
    (float32 for float32 weights and inputs). ``apply_fn`` raises ``ShapeError`` for an ``x`` that is not
    ``[N, H, W, C]`` (the backbones' own check).

    Raises:
      TreeMismatchError: ``variables`` has no ``"params"`` collection.
    """
    return _apply_fn(model, variables, "__call__")


def features_fn(model: nn.Module, variables: Mapping[str, Any]) -> tuple[ApplyFn, Any]:
    """``(apply_fn, params)`` with ``apply_fn(params, x [N, H, W, C]) -> phi [N, D]`` (penultimate
    features) in evaluation mode. ``params`` is the full tree; the head does not influence the output.

    As :func:`logits_fn` otherwise: the other collections are closed over, and ``apply_fn`` raises
    ``ShapeError`` for an ``x`` that is not ``[N, H, W, C]``.

    Raises:
      TreeMismatchError: ``variables`` has no ``"params"`` collection.
    """
    return _apply_fn(model, variables, "features")


def replace_head(
    model: nn.Module, variables: Mapping[str, Any], num_classes: int, key: jax.Array, init: str = "zeros"
) -> tuple[nn.Module, dict]:
    """A fresh ``num_classes``-way head on the same backbone.

    Args:
      model, variables: a backbone and its variables (``params["head"]`` = ``{"kernel" [D, C], "bias" [C]}``).
      num_classes: the new ``C'``.
      key: PRNG key for ``init="lecun_normal"`` (unused for ``"zeros"``).
      init: ``"zeros"`` (kernel and bias zero, so ``f(x; w0) = 0``, the paper's ``Y ~ dY`` setting) or
        ``"lecun_normal"`` (Flax's default Dense kernel init, zero bias).

    Returns:
      ``(new_model, new_variables)``: ``model`` cloned with ``num_classes = C'``, and the variables with
      ``params["head"] = {"kernel" [D, C'], "bias" [C']}`` float32; the backbone leaves and other collections
      are shared, not copied.

    Raises:
      UnknownNameError: ``init`` is not one of ``HEAD_INITS``.
      ShapeError: ``num_classes`` is not an integer ``>= 1`` (a ``bool`` is refused).
      TreeMismatchError: ``variables`` has no ``"params"``, or ``params`` has no ``head/kernel``.
    """
    if init not in HEAD_INITS:
        raise UnknownNameError(f"unknown head init {init!r}; known: {list(HEAD_INITS)}")
    check_num_classes(num_classes)
    params, state = _split_state(variables)
    if "head" not in params or "kernel" not in params["head"]:
        raise TreeMismatchError(f"params have no 'head/kernel'; top-level keys: {sorted(params)}")
    dim = params["head"]["kernel"].shape[0]
    if init == "zeros":
        kernel = jnp.zeros((dim, num_classes), jnp.float32)
    else:
        kernel = nn.initializers.lecun_normal()(key, (dim, num_classes), jnp.float32)
    new_params = {**params, "head": {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}}
    return model.clone(num_classes=num_classes), {"params": new_params, **state}


def param_subsets(model: nn.Module, params: Any) -> dict[str, ParamsFilter]:
    """Named params filters (see :mod:`linfit.tree`) for ``model``.

    Keys: ``"head"`` (the classification head), ``"last_conv"`` (the kernel of the last convolution in
    forward order; the paper's LGC takes gradients w.r.t. it), ``"last_block"`` (the last residual /
    dense block, any final norm, and the head), ``"all"`` (``None``, every leaf).

    Raises:
      ParamsFilterError: a filter selects nothing in ``params`` (they do not belong to ``model``).
    """
    filters: dict[str, ParamsFilter] = {"head": "^head/", **model.subset_filters(), "all": None}
    for params_filter in filters.values():
        split_params(params, params_filter)
    return filters
