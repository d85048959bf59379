"""Empirical NTK by Jacobian contraction.

    Theta(x1, x2) = J(x1) . J(x2)          (contracted over the parameter axis and the traced output axes)

with ``J(x) = d f(params, x) / d theta`` of shape ``[N, *out, P]`` held as one block ``[N, *out, P_leaf]`` per
parameter leaf and contracted by :func:`linfit.ntk._contract.contract_jacobians` (a few large products over
groups of leaves; no raveled copy of ``J``). Per-sample Jacobians come from ``jax.jacrev`` under ``jax.vmap``
when samples are independent (``vmap_axes=0``), with the convolution and max-pool derivative rules of
:mod:`linfit.ntk.vjp_rules`, or from one ``jax.jacrev`` of the whole batch (``vmap_axes=None``).

``x2=None`` (``Theta(x1, x1)``, symmetric) and an output axis left untraced: only the row blocks on or above
the diagonal are multiplied (:data:`linfit.ntk._contract.SYMMETRIC_MAX_BLOCKS`; 37.5 % fewer multiply-adds
from 256 samples). Memory: ``(N1 + N2) * O * P`` numbers for ``O`` outputs per sample and ``P`` parameters
(``N1 * O * P`` when ``x2 is None``), and up to as much again for the contraction's concatenated groups
(:func:`linfit.ntk.cost.jacobian_cost` counts both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from linfit.ntk._contract import Axes, contract_jacobians
from linfit.ntk.vjp_rules import per_sample_vjps


def jacobians(
    f: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x: Any,
    vmap_axes: int | None,
) -> list[jax.Array]:
    """Jacobian blocks ``[N, *out, P_leaf]`` of ``f(params, x) [N, *out]``, one per leaf of ``params`` in
    ``jax.tree_util.tree_leaves`` order, each in its leaf's dtype. Per-sample (``vmap_axes=0``) convolution
    kernel gradients are patch products and max-pool gradients masks (:mod:`linfit.ntk.vjp_rules`)."""
    if vmap_axes == 0:
        g = per_sample_vjps(f)
        per_sample = jax.jacrev(lambda p, xi: g(p, jax.tree_util.tree_map(lambda a: a[None], xi))[0])
        jac = jax.vmap(per_sample, in_axes=(None, 0))(params, x)
    else:
        jac = jax.jacrev(f)(params, x)
    return [
        block.reshape(*block.shape[: block.ndim - leaf.ndim], -1)
        for block, leaf in zip(jax.tree_util.tree_leaves(jac), jax.tree_util.tree_leaves(params), strict=True)
    ]


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
    j2 = None if x2 is None else jacobians(f, params, x2, vmap_axes)
    return contract_jacobians(jacobians(f, params, x1, vmap_axes), j2, out_shape, trace, diag)
