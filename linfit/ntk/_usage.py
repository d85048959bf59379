"""Which parameter leaves a function actually reads: the structural test behind "extra leaf" errors and
behind the structured NTK's check that a layer's kernel reaches the output only through that layer.

A leaf is *read* when the output depends on it in the traced program after dead-code elimination
(``jax.make_jaxpr``, then JAX's own ``dce_jaxpr``). The test is structural, not numerical: a leaf that is
read but multiplied by zero counts as read; a leaf that is computed with and then discarded does not.
Primitives without a dead-code rule count all their inputs as read (the safe side for both callers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.interpreters import partial_eval as pe

from linfit.tree import abstract, path_str


def unread_leaves(call: Callable[[Any], Any], params: Any) -> list[str]:
    """Paths (``'a/b/kernel'``) of the leaves of ``params`` on which no output of ``call(params)`` depends.

    Args:
      call: ``params -> output`` (any pytree of arrays); traced abstractly, never run.
      params: the tree handed to ``call`` (arrays, tracers or ``jax.ShapeDtypeStruct`` leaves).
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    closed = jax.make_jaxpr(call)(abstract(params))
    _, used = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return [path_str(path) for (path, _), read in zip(flat, used, strict=True) if not read]
