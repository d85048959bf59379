"""Empirical NTK by Jacobian contraction.

    Theta(x1, x2) = sum_leaves  J_leaf(x1) . J_leaf(x2)          (contracted over the leaf's axes)

with ``J_leaf(x) = d f(params, x) / d leaf`` of shape ``[N, *out, *leaf_shape]``. Per-sample Jacobians
come from ``jax.jacrev`` under ``jax.vmap`` when samples are independent (``vmap_axes=0``), or from one
``jax.jacrev`` of the whole batch (``vmap_axes=None``). Memory: ``(N1 + N2) * O * P`` numbers for ``O``
outputs per sample and ``P`` parameters (``N1 * O * P`` when ``x2 is None``: the Jacobian is reused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from linfit.ntk._contract import Axes, contract_jacobians


def jacobians(
    f: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x: Any,
    vmap_axes: int | None,
) -> Any:
    """Pytree (shaped like ``params``) of Jacobians ``[N, *out, *leaf_shape]`` of ``f(params, x)``."""
    if vmap_axes == 0:
        per_sample = jax.jacrev(lambda p, xi: f(p, jax.tree_util.tree_map(lambda a: a[None], xi))[0])
        return jax.vmap(per_sample, in_axes=(None, 0))(params, x)
    return jax.jacrev(f)(params, x)


def jacobian_ntk(
    f: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x1: jax.Array,
    x2: jax.Array | None,
    *,
    trace: Axes,
    diag: Axes,
    vmap_axes: int | None,
) -> jax.Array:
    """Kernel ``Theta(x1, x2)`` in the layout of :mod:`linfit.ntk._contract` (``x2=None``: ``x2 = x1``).

    Args:
      f: ``f(params, x [N, ...]) -> [N, *out]`` (already restricted to the selected parameters); ``x`` an
        array or a pytree of arrays with a shared batch axis.
      trace, diag: output axes normalised by :func:`linfit.ntk._contract.normalize_axes`.
    """
    out_shape = jax.eval_shape(f, params, x1).shape
    j1 = jacobians(f, params, x1, vmap_axes)
    j2 = j1 if x2 is None else jacobians(f, params, x2, vmap_axes)
    return contract_jacobians(j1, j2, out_shape, trace, diag)
