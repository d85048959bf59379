"""Empirical NTK by Jacobian contraction.

    Theta(x1, x2) = J(x1) . J(x2)          (contracted over the parameter axis and the traced output axes)

with ``J(x) = d f(params, x) / d theta`` of shape ``[N, *out, P]``, ``theta`` the selected parameters
flattened into one vector (``jax.flatten_util.ravel_pytree``), so the contraction is ONE matrix product
instead of one per parameter leaf plus their sum. Per-sample Jacobians come from ``jax.jacrev`` under
``jax.vmap`` when samples are independent (``vmap_axes=0``), or from one ``jax.jacrev`` of the whole batch
(``vmap_axes=None``).

``x2=None`` (``Theta(x1, x1)``, symmetric) and an output axis left untraced: ``J`` is split into ``B`` row
blocks and only the blocks ``i <= j`` are multiplied; the others are their transposes, which saves
``(B - 1) / (2 B)`` of the contraction's multiply-adds (``B = min(4, N // 64)``: 37.5 % from 256 samples).
Memory: ``(N1 + N2) * O * P`` numbers for ``O`` outputs per sample and ``P`` parameters (``N1 * O * P`` when
``x2 is None``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from linfit.ntk._contract import Axes, contract_jacobians, fully_traced, transpose_kernel
from linfit.ntk.vjp_rules import per_sample_vjps

#: Samples per row block below which ``x2=None`` is contracted as one product (small products lose more
#: to per-call overhead than symmetry saves).
_MIN_BLOCK = 64
_MAX_BLOCKS = 4


def jacobians(
    f: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x: Any,
    vmap_axes: int | None,
) -> jax.Array:
    """Jacobian ``[N, *out, P]`` of ``f(params, x)`` w.r.t. the flattened parameters (``ravel_pytree`` order;
    mixed float dtypes are promoted to a common one). Per-sample (``vmap_axes=0``) convolution kernel
    gradients are patch products and max-pool gradients masks (:mod:`linfit.ntk.vjp_rules`)."""
    theta, unravel = ravel_pytree(params)
    g = lambda t, xb: f(unravel(t), xb)
    if vmap_axes == 0:
        g = per_sample_vjps(g)
        per_sample = jax.jacrev(lambda t, xi: g(t, jax.tree_util.tree_map(lambda a: a[None], xi))[0])
        return jax.vmap(per_sample, in_axes=(None, 0))(theta, x)
    return jax.jacrev(g)(theta, x)


def _symmetric_contract(j: jax.Array, out_shape, trace: Axes, diag: Axes) -> jax.Array:
    """``contract_jacobians(j, j, ...)`` from the row blocks ``a <= b`` only (the rest by transposition).

    A fully traced kernel is one product: its ``[N, O·P]`` contraction is bound by reading ``J``, which row
    blocks read again for every block pair (cnn94k, N = 512: 8.4 s as one product, 9.9 s in 4 x 4 blocks,
    ``benchmarks/RESULTS.md`` §11c)."""
    n = j.shape[0]
    num = min(_MAX_BLOCKS, n // _MIN_BLOCK)
    if num < 2 or fully_traced(len(out_shape), trace):
        return contract_jacobians(j, j, out_shape, trace, diag)
    edges = [n * b // num for b in range(num + 1)]
    rows = [j[edges[b] : edges[b + 1]] for b in range(num)]
    blocks = {}
    for a in range(num):
        for b in range(a, num):
            blocks[a, b] = contract_jacobians(rows[a], rows[b], out_shape, trace, diag)
            if b > a:
                blocks[b, a] = transpose_kernel(blocks[a, b], trace, diag)
    return jnp.concatenate(
        [jnp.concatenate([blocks[a, b] for b in range(num)], axis=1) for a in range(num)], axis=0
    )


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
    if x2 is None:
        return _symmetric_contract(j1, out_shape, trace, diag)
    return contract_jacobians(j1, jacobians(f, params, x2, vmap_axes), out_shape, trace, diag)
