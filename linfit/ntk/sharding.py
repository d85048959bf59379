"""The empirical NTK over a device mesh: samples sharded, parameters replicated, tile by tile.

One code path from one CPU to a TPU pod slice. The mesh is one-dimensional over all devices
(:func:`sample_mesh`); a *tile* is ``row_tile = D * t`` rows (``t`` per device, ``D`` devices) by
``col_tile`` columns. Each tile runs as one ``jax.shard_map`` program: device ``d`` gets its ``t`` rows of
``x1`` and the whole column block of ``x2`` (replicated) and computes ``ntk_fn`` on them, so the output tile
``[row_tile, col_tile, ...]`` is a ``jax.Array`` sharded by rows, ``NamedSharding(mesh, P(axis))``.
``t`` comes from a per-device memory budget with :func:`linfit.ntk.tiling.tile_size_for_budget` (both
blocks' Jacobians plus the kernel tile must fit one device); ``col_tile = m * t`` with ``m`` the largest
divisor of ``D`` that keeps ``col_tile`` within the budget's tile size.

No divisibility constraint on ``N``: ``x1``/``x2`` are padded by repeating their last sample up to whole tiles
and the padding is never written out (host sinks) or zeroed (device output).

Symmetric kernels (``x2=None``, ``ntk_fn.transpose`` available): a tile lying entirely left of its row block
(``cols.stop <= rows.start``) is skipped, and a tile lying entirely right of it (``cols.start >= rows.stop``)
is also written transposed at ``(cols, rows)``; since ``col_tile`` divides ``row_tile`` the two sets match
exactly, so every entry is written once (about half the work of the full grid).

Where the result goes (``out``):

* ``"host"`` (default) or a caller array ``[N1, N2, ...]`` such as a ``np.memmap`` (kernels beyond memory):
  each process writes the rows its devices own and their mirrored columns (everything on one host);
* ``"device"``: a ``jax.Array`` ``[N1p, N2, ...]`` with ``NamedSharding(mesh, P(axis))``, ``N1p`` = ``N1``
  rounded up to a multiple of ``D`` (``jax.Array`` shards must be equal), rows ``>= N1`` zero;
* a callable ``consume(rows, cols, tile, mirrored)`` receiving host tiles ``[len(rows), len(cols), ...]`` of
  valid entries as they finish (``mirrored``: the transpose at ``(cols, rows)`` is part of the kernel too and
  is not delivered separately), e.g. to accumulate a statistic without holding the kernel.

Example::

    >>> mesh = sample_mesh()                          # all devices, axis "samples"
    >>> k = sharded_ntk(empirical_ntk_fn(f), x, None, params, mesh=mesh, out="device")
    >>> k.sharding.spec
    PartitionSpec('samples',)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from linfit.errors import ShapeError
from linfit.ntk.tiling import DEFAULT_MEMORY_BUDGET_BYTES, budget_tile_size

SAMPLE_AXIS = "samples"
Consumer = Callable[[slice, slice, np.ndarray, bool], None]


def sample_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = SAMPLE_AXIS) -> Mesh:
    """A one-dimensional ``Mesh`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis_name,))


class TileGeometry(NamedTuple):
    """``row_tile`` rows (a multiple of the device count) by ``col_tile`` columns per tile."""

    row_tile: int
    col_tile: int


class Tile(NamedTuple):
    """One tile: global ``rows``/``cols`` slices (clipped to ``N1``/``N2``) and whether it is mirrored."""

    rows: slice
    cols: slice
    mirror: bool


def sharded_tile_grid(n1: int, n2: int, geometry: TileGeometry, symmetric: bool) -> list[Tile]:
    """Tiles in row-major order; ``symmetric`` skips and mirrors as in the module docstring.

    Raises:
      ShapeError: ``symmetric`` and ``col_tile`` does not divide ``row_tile``.
    """
    rt, ct = geometry
    if symmetric and rt % ct:
        raise ShapeError(f"a mirrored grid needs col_tile | row_tile; got {geometry}")
    tiles = []
    for r in range(0, n1, rt):
        rows = slice(r, min(r + rt, n1))
        for c in range(0, n2, ct):
            cols = slice(c, min(c + ct, n2))
            if symmetric and cols.stop <= rows.start:
                continue
            tiles.append(Tile(rows, cols, symmetric and cols.start >= rows.stop))
    return tiles


def plan_tiles(
    ntk_fn: Callable, x1: Any, x2: Any | None, params: Any, num_devices: int, *,
    tile_size: int | None = None, memory_budget_bytes: int | None = None,
) -> TileGeometry:
    """Tile geometry for ``num_devices`` devices.

    ``t`` (rows per device) is ``tile_size`` or the budget's tile size for one device (``memory_budget_bytes``
    per device, default 1 GiB), capped at ``ceil(N1 / D)``; ``col_tile = m t`` for the largest divisor ``m``
    of ``D`` with ``m t <= tile_size`` (capped at ``N2`` when ``x2`` is given).
    """
    x2_ = x1 if x2 is None else x2
    n1, n2 = int(np.shape(x1)[0]), int(np.shape(x2_)[0])
    if tile_size is None:
        pair = jax.eval_shape(ntk_fn, jnp.asarray(x1[:1]), jnp.asarray(x2_[:1]), params)
        tile_size = budget_tile_size(ntk_fn, jnp.asarray(x1[:1]), params, max(n1, n2), math.prod(pair.shape[2:]),
                                 pair.dtype.itemsize, memory_budget_bytes or DEFAULT_MEMORY_BUDGET_BYTES)
    if tile_size < 1:
        raise ShapeError(f"tile_size must be >= 1; got {tile_size}")
    t = min(tile_size, -(-n1 // num_devices))
    m = max(k for k in range(1, num_devices + 1) if num_devices % k == 0 and k * t <= tile_size)
    col = m * t if x2 is None else min(m * t, n2)  # symmetric grids need col | row: keep m t uncapped
    return TileGeometry(num_devices * t, col)


def sharded_ntk(
    ntk_fn: Callable[[Any, Any, Any], jax.Array],
    x1: Any,
    x2: Any | None,
    params: Any,
    *,
    mesh: Mesh | None = None,
    tile_size: int | None = None,
    memory_budget_bytes: int | None = None,
    geometry: TileGeometry | None = None,
    out: str | np.ndarray | Consumer = "host",
    progress: bool = False,
    on_tile: Callable[[slice, slice], None] | None = None,
    skip: Callable[[slice, slice], bool] | None = None,
) -> np.ndarray | jax.Array | None:
    """Compute ``ntk_fn(x1, x2, params)`` over ``mesh`` tile by tile.

    Args:
      ntk_fn: ``(x1 [n1, ...], x2 [n2, ...] | None, params) -> [n1, n2, ...]`` for independent samples
        (e.g. :func:`linfit.ntk.empirical_ntk_fn` with ``vmap_axes=0``); it runs inside ``shard_map`` on
        each device's rows.
      x1: ``[N1, ...]`` host (or replicated) inputs, the same on every process; x2: ``[N2, ...]`` or
        ``None`` for ``x1`` (symmetric: mirrored tiles when ``ntk_fn`` has ``transpose``).
      params: parameters, replicated on every device.
      mesh: a one-axis mesh (default :func:`sample_mesh`).
      tile_size, memory_budget_bytes, geometry: per-device rows ``t`` or a per-device byte budget
        (see :func:`plan_tiles`), or an explicit :class:`TileGeometry` (``row_tile`` divisible by ``D``).
      out: ``"host"``, ``"device"``, an array ``[N1, N2, ...]`` (e.g. ``np.memmap``) or a consumer
        callable; see the module docstring.
      progress: tqdm bar over tiles.
      on_tile: called as ``on_tile(rows, cols)`` after each tile is written.
      skip: ``skip(rows, cols) -> True`` leaves that tile out (already computed by an earlier run).

    Returns:
      The host array (``"host"`` or the given array), the row-sharded ``jax.Array`` (``"device"``), or
      ``None`` for a consumer.
    """
    mesh = sample_mesh() if mesh is None else mesh
    if len(mesh.axis_names) != 1:
        raise ShapeError(f"sharded_ntk needs a one-axis mesh; got axes {mesh.axis_names}")
    axis, n_dev = mesh.axis_names[0], mesh.size
    x1 = np.asarray(x1)
    symmetric = x2 is None
    x2 = x1 if symmetric else np.asarray(x2)
    if x1.shape[1:] != x2.shape[1:]:
        raise ShapeError(f"x1 and x2 feature shapes differ: {x1.shape[1:]} vs {x2.shape[1:]}")
    n1, n2 = x1.shape[0], x2.shape[0]
    if geometry is None:
        geometry = plan_tiles(ntk_fn, x1, None if symmetric else x2, params, n_dev, tile_size=tile_size,
                              memory_budget_bytes=memory_budget_bytes)
    if geometry.row_tile % n_dev or (symmetric and geometry.row_tile % geometry.col_tile):
        raise ShapeError(f"{geometry} needs row_tile divisible by the {n_dev} devices (and by col_tile when "
                         "x2 is None)")
    pair = jax.eval_shape(ntk_fn, jnp.asarray(x1[:1]), jnp.asarray(x2[:1]), params)
    pair_shape, dtype = pair.shape[2:], pair.dtype
    transpose = getattr(ntk_fn, "transpose", None)
    tiles = sharded_tile_grid(n1, n2, geometry, symmetric and transpose is not None)
    rt, ct = geometry
    rows_padded = _pad(x1, -(-n1 // rt) * rt)
    cols_padded = rows_padded if symmetric else _pad(x2, -(-n2 // ct) * ct)  # ct | rt: same length

    sink = _make_sink(out, mesh, (n1, n2), pair_shape, dtype, rows_padded.shape[0], cols_padded.shape[0],
                      transpose)
    row_sharding, replicated = NamedSharding(mesh, P(axis)), NamedSharding(mesh, P())
    params_global = jax.tree_util.tree_map(lambda leaf: _global(np.asarray(leaf), replicated), params)
    for tile in tqdm(tiles, disable=not progress, desc="NTK tiles"):
        if skip is not None and skip(tile.rows, tile.cols):
            continue
        xr = _global(rows_padded[tile.rows.start : tile.rows.start + rt], row_sharding)
        xc = _global(cols_padded[tile.cols.start : tile.cols.start + ct], replicated)
        sink.write(tile, _tile_program(ntk_fn, mesh, xr, xc, params_global))
        if on_tile is not None:
            on_tile(tile.rows, tile.cols)
    return sink.result()


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """``x [N, ...]`` padded to ``n`` rows by repeating its last row."""
    return x[np.minimum(np.arange(n), x.shape[0] - 1)]


def _global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global ``jax.Array`` from a host array every process holds whole (multi-host safe)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _tile_program(ntk_fn: Callable, mesh: Mesh, x_rows: jax.Array, x_cols: jax.Array, params: Any) -> jax.Array:
    """``x_rows [row_tile, ...]`` (row-sharded) x ``x_cols [col_tile, ...]`` -> ``[row_tile, col_tile, ...]``.

    ``ntk_fn`` and ``mesh`` are static, so repeated calls with one kernel function compile once per shape.
    """
    axis = mesh.axis_names[0]
    per_device = jax.shard_map(lambda xr, xc, p: ntk_fn(xr, xc, p), mesh=mesh,
                               in_specs=(P(axis), P(), P()), out_specs=P(axis), check_vma=False)
    return per_device(x_rows, x_cols, params)


def _make_sink(out, mesh, shape, pair_shape, dtype, rows_padded, cols_padded, transpose):
    if isinstance(out, str):
        if out == "device":
            return _DeviceSink(mesh, shape, pair_shape, dtype, rows_padded, cols_padded, transpose)
        if out != "host":
            raise ShapeError(f"out must be 'host', 'device', an array or a callable; got {out!r}")
        out = np.zeros((*shape, *pair_shape), dtype=dtype)  # multi-host: rows of other processes stay 0
    if callable(out):
        return _HostSink(shape, transpose, consume=out)
    if tuple(out.shape) != (*shape, *pair_shape):
        raise ShapeError(f"out must have shape {(*shape, *pair_shape)}; got {tuple(out.shape)}")
    return _HostSink(shape, transpose, array=out)


class _HostSink:
    """Writes the valid part of every addressable row shard to a host array or hands it to a consumer."""

    def __init__(self, shape, transpose, array=None, consume=None):
        self.n1, self.n2 = shape
        self.transpose, self.array, self.consume = transpose, array, consume

    def write(self, tile: Tile, values: jax.Array) -> None:
        width = tile.cols.stop - tile.cols.start
        for shard in values.addressable_shards:
            start = tile.rows.start + (shard.index[0].start or 0)
            stop = min(start + shard.data.shape[0], self.n1)
            if stop <= start:
                continue  # a shard of padding rows
            rows = slice(start, stop)
            block = np.asarray(shard.data)[: stop - start, :width]
            if self.consume is not None:
                self.consume(rows, tile.cols, block, tile.mirror)
                continue
            self.array[rows, tile.cols] = block
            if tile.mirror:
                self.array[tile.cols, rows] = self.transpose(block)

    def result(self):
        return self.array


class _DeviceSink:
    """Accumulates tiles into a row-sharded device buffer with ``dynamic_update_slice``."""

    def __init__(self, mesh, shape, pair_shape, dtype, rows_padded, cols_padded, transpose):
        self.n1, self.n2 = shape
        n_dev = mesh.size
        sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
        # symmetric grids pad columns like rows, so mirrored writes stay inside this buffer
        size = (rows_padded, cols_padded, *pair_shape)
        self.buffer = jax.jit(lambda: jnp.zeros(size, dtype), out_shardings=sharding)()
        tail = (0,) * len(pair_shape)
        self.update = jax.jit(lambda buf, v, r, c: jax.lax.dynamic_update_slice(buf, v, (r, c, *tail)),
                              donate_argnums=0, out_shardings=sharding)
        self.transpose = transpose
        n1p = -(-self.n1 // n_dev) * n_dev

        def finish(buf):
            rows = jnp.arange(n1p).reshape(-1, *(1,) * (buf.ndim - 1))
            return jnp.where(rows < self.n1, buf[:n1p, : self.n2], 0)

        self.finish = jax.jit(finish, out_shardings=sharding)

    def write(self, tile: Tile, values: jax.Array) -> None:
        self.buffer = self.update(self.buffer, values, tile.rows.start, tile.cols.start)
        if tile.mirror:
            self.buffer = self.update(self.buffer, self.transpose(values), tile.cols.start, tile.rows.start)

    def result(self) -> jax.Array:
        return self.finish(self.buffer)
