"""Tiled empirical NTK: the kernel computed in (rows x cols) sample tiles, streamed to host or disk.

For ``x2=None`` only the upper-triangle tiles are computed and the lower ones mirrored with
``Theta(x2, x1) = transpose(Theta(x1, x2))``. Every tile has the same shape (the last rows/cols are padded
by repeating the last sample and sliced off), so each tile shape compiles once and ``N`` need not be a
multiple of the tile. Results go to a host ``numpy`` array or to a caller-provided array such as a
``np.memmap``, so kernels larger than memory stream to disk.

Tile size from a memory budget (``B`` bytes): the largest ``t`` with

    itemsize * (2 * t * O * P + t**2 * K) <= B

i.e. the two tiles' Jacobians (``t`` samples x ``O`` outputs x ``P`` selected parameters each, the
Jacobian-contraction peak) plus the kernel tile (``K`` numbers per sample pair, e.g. ``O**2`` untraced).
``O`` and ``P`` come from ``ntk_fn.outputs_per_sample`` / ``ntk_fn.num_params`` when it has them
(:class:`linfit.ntk.empirical.NtkFn` does); otherwise ``O = ceil(sqrt(K))`` and ``P`` = all parameters.

Extension points: :func:`tile_grid` lists the tiles (a sharded version can deal them over a
``jax.sharding.Mesh``), and ``on_tile(rows, cols)`` is called after each finished tile (to record
progress for resuming an interrupted run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from linfit.errors import ShapeError

DEFAULT_MEMORY_BUDGET_BYTES = 2**30


def tile_grid(
    n1: int, n2: int, t1: int, t2: int, symmetric: bool
) -> list[tuple[slice, slice]]:
    """``(rows, cols)`` slices of every tile; ``symmetric`` keeps the upper triangle (needs ``t1 == t2``)."""
    return [
        (slice(r, min(r + t1, n1)), slice(c, min(c + t2, n2)))
        for i, r in enumerate(range(0, n1, t1))
        for j, c in enumerate(range(0, n2, t2))
        if not symmetric or j >= i
    ]


def tile_size_for_budget(
    n: int,
    *,
    outputs_per_sample: int,
    num_params: int,
    pair_size: int,
    itemsize: int,
    budget_bytes: int,
) -> int:
    """Largest ``t <= n`` with ``itemsize * (2 t O P + t^2 K) <= budget_bytes`` (at least 1)."""
    a = itemsize * pair_size
    b = itemsize * 2 * outputs_per_sample * num_params
    # positive root of a t^2 + b t = budget
    t = (-b + math.sqrt(b * b + 4 * a * budget_bytes)) / (2 * a)
    return int(max(1, min(n, math.floor(t))))


def _pad_to(x: jax.Array, n: int) -> jax.Array:
    return x[np.minimum(np.arange(n), x.shape[0] - 1)]


def ntk_tiled(
    ntk_fn: Callable[[Any, Any, Any], jax.Array],
    x1: Any,
    x2: Any | None,
    params: Any,
    *,
    tile_size: int | None = None,
    memory_budget_bytes: int | None = None,
    out: np.ndarray | None = None,
    progress: bool = False,
    on_tile: Callable[[slice, slice], None] | None = None,
) -> np.ndarray:
    """Compute ``ntk_fn(x1, x2, params)`` tile by tile into a host array.

    Args:
      ntk_fn: a kernel function ``(x1, x2 | None, params) -> [N1, N2, ...]`` (e.g. from
        :func:`linfit.ntk.empirical_ntk_fn`); samples must be independent (``vmap_axes=0`` semantics).
      x1: ``[N1, ...]``; x2: ``[N2, ...]`` or ``None`` for ``x1`` (upper triangle only, mirrored via
        ``ntk_fn.transpose``; a callable without ``transpose`` gets every tile computed).
      params: parameters passed to ``ntk_fn``.
      tile_size: samples per tile side; if ``None``, chosen from ``memory_budget_bytes`` (default 1 GiB)
        by the estimate in the module docstring.
      out: optional destination ``[N1, N2, ...]`` (e.g. ``np.memmap``); a new ``np.ndarray`` otherwise.
      progress: show a tqdm bar over tiles.
      on_tile: called as ``on_tile(rows, cols)`` after each tile (and its mirror) is written.

    Returns:
      ``out``, the full kernel ``[N1, N2, ...]``.
    """
    x1 = jnp.asarray(x1)
    symmetric = x2 is None
    x2 = x1 if symmetric else jnp.asarray(x2)
    if x1.shape[1:] != x2.shape[1:]:
        raise ShapeError(
            f"x1 and x2 feature shapes differ: {x1.shape[1:]} vs {x2.shape[1:]}"
        )
    n1, n2 = x1.shape[0], x2.shape[0]
    pair = jax.eval_shape(ntk_fn, x1[:1], x2[:1], params)
    pair_shape = pair.shape[2:]
    if tile_size is None:
        tile_size = budget_tile_size(
            ntk_fn,
            x1,
            params,
            max(n1, n2),
            math.prod(pair_shape),
            pair.dtype.itemsize,
            memory_budget_bytes or DEFAULT_MEMORY_BUDGET_BYTES,
        )
    if tile_size < 1:
        raise ShapeError(f"tile_size must be >= 1; got {tile_size}")
    t1, t2 = min(tile_size, n1), min(tile_size, n2)
    if out is None:
        out = np.empty((n1, n2, *pair_shape), dtype=pair.dtype)
    elif tuple(out.shape) != (n1, n2, *pair_shape):
        raise ShapeError(
            f"out must have shape {(n1, n2, *pair_shape)}; got {tuple(out.shape)}"
        )

    transpose = getattr(ntk_fn, "transpose", None)
    mirror = symmetric and transpose is not None
    x1p = _pad_to(x1, -(-n1 // t1) * t1)
    x2p = x1p if symmetric else _pad_to(x2, -(-n2 // t2) * t2)
    tiles = tile_grid(n1, n2, t1, t2, mirror)
    for rows, cols in tqdm(tiles, disable=not progress, desc="NTK tiles"):
        xr = x1p[rows.start : rows.start + t1]
        same = symmetric and rows == cols
        tile = np.asarray(
            ntk_fn(xr, None if same else x2p[cols.start : cols.start + t2], params)
        )
        tile = tile[: rows.stop - rows.start, : cols.stop - cols.start]
        out[rows, cols] = tile
        if mirror and not same:
            out[cols, rows] = transpose(tile)
        if on_tile is not None:
            on_tile(rows, cols)
    return out


def budget_tile_size(ntk_fn, x, params, n, pair_size, itemsize, budget) -> int:
    """Tile side for ``ntk_fn`` on inputs like ``x`` from a byte budget (``tile_size_for_budget`` with ``O`` and
    ``P`` read off ``ntk_fn`` when it knows them)."""
    if hasattr(ntk_fn, "outputs_per_sample") and hasattr(ntk_fn, "num_params"):
        o, p = ntk_fn.outputs_per_sample(x, params), ntk_fn.num_params(params)
    else:
        o = math.isqrt(pair_size - 1) + 1 if pair_size > 1 else 1
        p = sum(
            math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)
        )
    return tile_size_for_budget(
        n,
        outputs_per_sample=o,
        num_params=p,
        pair_size=pair_size,
        itemsize=itemsize,
        budget_bytes=budget,
    )
