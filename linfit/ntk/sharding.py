"""The tiles strategy of :func:`linfit.ntk.kernel`: samples sharded, parameters replicated, tile by tile.

One code path from one CPU to a TPU pod slice. The mesh is one-dimensional over all devices
(:func:`sample_mesh`); a *tile* is ``row_tile = D * t`` rows (``t`` per device, ``D`` devices) by
``col_tile`` columns. Each tile runs as one ``jax.shard_map`` program: device ``d`` gets its ``t`` rows of
``x1`` and the whole column block of ``x2`` (replicated) and computes ``ntk_fn`` on them, so the output tile
``[row_tile, col_tile, ...]`` is a ``jax.Array`` sharded by rows, ``NamedSharding(mesh, P(axis))``.
``t`` comes from a per-device memory budget by :func:`plan_tiles`, which measures the compiled tile program
(XLA ``memory_analysis()``); ``col_tile = m * t`` with ``m`` the largest divisor of ``D`` that keeps
``col_tile`` within the budget's tile side (:func:`tile_geometry`). This module also holds the pieces every
strategy shares: the tile grid (:func:`sharded_tile_grid`) and the sinks the tiles are written through.

No divisibility constraint on ``N``: ``x1``/``x2`` are padded by repeating their last sample up to whole tiles
and the padding is never written out (host sinks) or zeroed (device output).

Symmetric kernels (``x2=None``, ``ntk_fn.transpose`` available): a tile lying entirely left of its row block
(``cols.stop <= rows.start``) is skipped, and a tile lying entirely right of it (``cols.start >= rows.stop``)
is also written transposed at ``(cols, rows)``; since ``col_tile`` divides ``row_tile`` the two sets match
exactly, so every entry is written once (about half the work of the full grid).

Where the result goes (``output`` of :func:`linfit.ntk.kernel`):

* ``"host"`` (default) or a caller array ``[N1, N2, ...]`` such as a ``np.memmap`` (kernels beyond memory):
  each process writes the rows its devices own and their mirrored columns (everything on one host);
* ``"device"``: a ``jax.Array`` ``[N1p, N2, ...]`` with ``NamedSharding(mesh, P(axis))``, ``N1p`` = ``N1``
  rounded up to a multiple of ``D`` (``jax.Array`` shards must be equal), rows ``>= N1`` zero;
* a callable ``consume(rows, cols, tile, mirrored)`` receiving host tiles ``[len(rows), len(cols), ...]`` of
  valid entries as they finish (``mirrored``: the transpose at ``(cols, rows)`` is part of the kernel too and
  is not delivered separately), e.g. to accumulate a statistic without holding the kernel.

Example::

    >>> mesh = sample_mesh()                          # all devices, axis "samples"
    >>> k = kernel(empirical_ntk_fn(f), x, None, params, mesh=mesh, strategy="tiles", output="device")
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

from linfit.errors import ShapeError
from linfit.ntk.tiling import DEFAULT_MEMORY_BUDGET_BYTES, budget_tile_size

SAMPLE_AXIS = "samples"


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


class TilePlan(NamedTuple):
    """A tile geometry and the per-device peak bytes of its compiled tile program (``None``: no analysis)."""

    geometry: TileGeometry
    peak_bytes: int | None


def pair_spec(ntk_fn: Callable, x1: np.ndarray, xs: np.ndarray, params: Any) -> jax.ShapeDtypeStruct:
    """Shape and dtype of ``ntk_fn`` on one sample pair, ``[1, 1, ...]``; ``ShapeError`` unless it is one array."""
    pair = jax.eval_shape(ntk_fn, x1[:1], xs[:1], params)
    if not isinstance(pair, jax.ShapeDtypeStruct):
        structure = jax.tree_util.tree_structure(pair)
        raise ShapeError(f"the NTK of any N (linfit.ntk.kernel and its strategies) computes one kernel array, but "
                         f"the kernel function returns a pytree ({structure}: f has several outputs); compute each "
                         "output's kernel with its own kernel function, e.g. "
                         "empirical_ntk_fn(lambda p, x: f(p, x)['head_a'])")
    return pair


def tile_geometry(n1: int, n2: int, symmetric: bool, num_devices: int, side: int) -> TileGeometry:
    """The geometry whose per-device program fits in a ``side x side`` one: ``t = min(side, ceil(N1 / D))``
    rows per device, ``col_tile = m t`` for the largest divisor ``m`` of ``D`` with ``m t <= side`` (capped at
    ``N2`` when ``x2`` is given; symmetric grids keep ``m t`` so that ``col_tile`` divides ``row_tile``)."""
    if side < 1:
        raise ShapeError(f"tile_size must be >= 1; got {side}")
    t = min(side, -(-n1 // num_devices))
    m = max(k for k in range(1, num_devices + 1) if num_devices % k == 0 and k * t <= side)
    return TileGeometry(num_devices * t, m * t if symmetric else min(m * t, n2))


def plan_tiles(
    ntk_fn: Callable, x1: np.ndarray, x2: np.ndarray | None, params: Any, mesh: Mesh, *,
    tile_size: int | None = None, memory_budget_bytes: int | None = None, geometry: TileGeometry | None = None,
) -> TilePlan:
    """The tile geometry for ``mesh`` and its measured per-device memory.

    With ``geometry`` that geometry is measured as given; with ``tile_size`` the square side is given.
    Otherwise it is the largest side ``s`` whose one-device ``s x s`` tile program fits ``memory_budget_bytes``
    (default 1 GiB) by XLA's ``memory_analysis()`` of the compiled program (arguments + output + temporaries): a
    few compilations, starting from the analytic
    estimate of :func:`linfit.ntk.tiling.tile_size_for_budget` (which counts only the two Jacobians and the
    tile, and is several times low: ``benchmarks/RESULTS.md`` section 3) and refined by fitting
    ``a + b s + c s²`` to the measured points. The geometry is :func:`tile_geometry` of that side; its program
    on ``mesh`` is compiled and measured again (and the side shrunk if it is over the budget), so
    ``peak_bytes`` is the measured memory of the very program the tile loop runs.

    Raises:
      ShapeError: the budget cannot hold a one-sample tile.
    """
    symmetric = x2 is None
    xs = x1 if symmetric else x2
    n1, n2, d = x1.shape[0], xs.shape[0], mesh.size
    budget = memory_budget_bytes or DEFAULT_MEMORY_BUDGET_BYTES
    # the largest program a grid runs: the off-diagonal one, unless the grid is one diagonal tile
    peak_of = lambda on, g: program_peak_bytes(tile_program(ntk_fn, on, g, x1, params,
                                                            symmetric and on.size == 1 and g.row_tile >= n1))
    if geometry is None and tile_size is not None:
        geometry = tile_geometry(n1, n2, symmetric, d, tile_size)
    if geometry is not None:
        return TilePlan(geometry, peak_of(mesh, geometry))
    local = Mesh(np.asarray([_local_device(mesh)]), mesh.axis_names)
    measure = lambda s: peak_of(local, TileGeometry(s, s)) if d > 1 else peak_of(mesh, TileGeometry(s, s))
    cap = d * -(-n1 // d) if symmetric else max(-(-n1 // d), n2)
    pair = pair_spec(ntk_fn, x1, xs, params)
    guess = budget_tile_size(ntk_fn, jnp.asarray(x1[:1]), params, cap, math.prod(pair.shape[2:]),
                             pair.dtype.itemsize, budget)
    side = fit_side(measure, cap, guess, budget)
    for _ in range(4):
        geometry = tile_geometry(n1, n2, symmetric, d, side)
        peak = peak_of(mesh, geometry)
        if peak is None or peak <= budget or side == 1:
            break
        side = max(1, int(side * budget / peak))
    if peak is not None and peak > budget:
        raise ShapeError(f"a memory budget of {budget} bytes per device cannot hold a one-sample NTK tile "
                         f"({peak} bytes measured); raise memory_budget_bytes")
    return TilePlan(geometry, peak)


def fit_side(measure: Callable[[int], int | None], cap: int, guess: int, budget: int, probes: int = 6) -> int:
    """The largest side ``s <= cap`` with ``measure(s) <= budget``, from at most ``probes`` measurements.

    ``measure`` is assumed increasing. Each probe moves to the root of ``a + b s + c s² = budget`` fitted to the
    points so far (a line with two points, a proportion with one), kept strictly between the largest fitting
    and the smallest failing side; it stops when they are within 5 % of each other. ``measure`` returning
    ``None`` (no memory analysis on this backend) accepts ``guess``.

    Raises:
      ShapeError: not even a one-sample side fits.
    """
    points: dict[int, int] = {}
    fits, fails = 0, cap + 1
    side = max(1, min(cap, guess))
    for _ in range(probes):
        peak = measure(side)
        if peak is None:
            return side
        points[side] = peak
        if peak <= budget:
            fits = max(fits, side)
        else:
            fails = min(fails, side)
        if fits == cap or fails - fits <= max(1, fits // 20):
            break
        side = min(max(_root(points, budget), fits + 1), fails - 1)
        if side in points:
            break
    if fits == 0:
        if 1 not in points:
            points[1] = measure(1)
        if points[1] > budget:
            raise ShapeError(f"a memory budget of {budget} bytes per device cannot hold a one-sample NTK tile "
                             f"({points[1]} bytes measured); raise memory_budget_bytes")
        fits = 1
    return fits


def _root(points: dict[int, int], budget: int) -> int:
    """Where the polynomial through the measured ``(side, bytes)`` points reaches ``budget``."""
    sides = np.asarray(sorted(points), float)
    peaks = np.asarray([points[s] for s in sorted(points)], float)
    if len(sides) == 1:
        return int(sides[0] * budget / peaks[0])
    degree = min(2, len(sides) - 1)
    coef = np.polyfit(sides, peaks, degree)
    coef[-1] -= budget
    roots = [r.real for r in np.roots(coef) if abs(r.imag) < 1e-9 and r.real > 0]
    return int(max(roots)) if roots else int(sides[-1] * budget / peaks[-1])


def program_peak_bytes(compiled: Any) -> int | None:
    """Per-device bytes of a compiled program by XLA: arguments + output + temporaries (``None``: no analysis)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def tile_program(ntk_fn: Callable, mesh: Mesh, geometry: TileGeometry, x: np.ndarray, params: Any,
                 diagonal: bool = False) -> Any:
    """The compiled tile program for inputs like ``x [N, ...]`` and ``params`` (cached per shapes).

    ``diagonal``: the program of a tile on the diagonal of a symmetric kernel on one device (rows and columns
    the same samples, :func:`diagonal_tile`): it calls ``ntk_fn(x_rows, None, params)``, which a kernel function
    computes from one set of derivatives and half the contraction; it ignores its ``x_cols`` argument.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    signature = tuple((np.shape(leaf), _dtype(leaf)) for leaf in leaves)
    return _compiled_tile(ntk_fn, mesh, tuple(geometry), tuple(np.shape(x)[1:]), _dtype(x), treedef, signature,
                          diagonal)


def diagonal_tile(tile: Tile, geometry: TileGeometry, mesh: Mesh, symmetric: bool) -> bool:
    """Whether ``tile`` of a ``symmetric`` grid has the same samples as rows and columns on every device (one
    device, a tile on the diagonal), so that :func:`tile_program` ``diagonal=True`` computes it."""
    return symmetric and mesh.size == 1 and geometry.row_tile == geometry.col_tile and tile.rows.start == tile.cols.start


def _dtype(x: Any) -> str:
    """The dtype JAX gives ``x`` (read off ``x.dtype`` when it has one: no copy of device arrays)."""
    return str(jax.dtypes.canonicalize_dtype(x.dtype if hasattr(x, "dtype") else np.result_type(x)))


@functools.lru_cache(maxsize=32)
def _compiled_tile(ntk_fn, mesh, geometry, feature_shape, dtype, treedef, signature, diagonal):
    rows, cols = NamedSharding(mesh, P(mesh.axis_names[0])), NamedSharding(mesh, P())
    x_rows = jax.ShapeDtypeStruct((geometry[0], *feature_shape), dtype, sharding=rows)
    x_cols = jax.ShapeDtypeStruct((geometry[1], *feature_shape), dtype, sharding=cols)
    params = jax.tree_util.tree_unflatten(
        treedef, [jax.ShapeDtypeStruct(shape, leaf_dtype, sharding=cols) for shape, leaf_dtype in signature])
    return _tile_program.lower(ntk_fn, mesh, diagonal, x_rows, x_cols, params).compile()


def _local_device(mesh: Mesh) -> jax.Device:
    return next(dev for dev in mesh.devices.flat if dev.process_index == jax.process_index())


def sharded_ntk(ntk_fn, x1, x2, params, *, mesh=None, tile_size=None, memory_budget_bytes=None, geometry=None,
                out="host", progress=False, on_tile=None, skip=None):
    """Deprecated: use :func:`linfit.ntk.kernel` (``strategy="tiles"``); same result. ``geometry`` is
    ``plan=KernelPlan("tiles", geometry, None)`` there, ``out`` is ``output`` and ``skip`` has no public
    counterpart."""
    from linfit.ntk.entry import KernelPlan, deprecated, kernel

    deprecated("linfit.ntk.sharding.sharded_ntk", 'linfit.ntk.kernel(..., strategy="tiles")')
    plan = None if geometry is None else KernelPlan("tiles", geometry, None)
    return kernel(ntk_fn, x1, x2, params, mesh=mesh, tile_size=tile_size, memory_budget_bytes=memory_budget_bytes,
                  strategy="tiles", plan=plan, output=out, progress=progress, on_tile=on_tile, _skip=skip)


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """``x [N, ...]`` padded to ``n`` rows by repeating its last row."""
    return x[np.minimum(np.arange(n), x.shape[0] - 1)]


def host_array(x: Any) -> np.ndarray:
    """``x`` as a host array of the dtype JAX would give it (float64 -> float32 unless x64 is enabled)."""
    x = np.asarray(x)
    return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)


def _global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global ``jax.Array`` from a host array every process holds whole (multi-host safe)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _tile_program(ntk_fn: Callable, mesh: Mesh, diagonal: bool, x_rows: jax.Array, x_cols: jax.Array,
                  params: Any) -> jax.Array:
    """``x_rows [row_tile, ...]`` (row-sharded) x ``x_cols [col_tile, ...]`` -> ``[row_tile, col_tile, ...]``;
    ``diagonal``: ``x_cols`` is ``x_rows`` (:func:`tile_program`).

    ``ntk_fn``, ``mesh`` and ``diagonal`` are static, so repeated calls with one kernel function compile once per
    shape.
    """
    axis = mesh.axis_names[0]
    per_device = jax.shard_map(lambda xr, xc, p: ntk_fn(xr, None if diagonal else xc, p), mesh=mesh,
                               in_specs=(P(axis), P(), P()), out_specs=P(axis), check_vma=False)
    return per_device(x_rows, x_cols, params)


def _make_sink(out, mesh, shape, pair_shape, dtype, rows_padded, cols_padded, transpose):
    if isinstance(out, str):
        if out == "device":
            return _DeviceSink(mesh, shape, pair_shape, dtype, rows_padded, cols_padded, transpose)
        out = np.zeros((*shape, *pair_shape), dtype=dtype)  # multi-host: rows of other processes stay 0
    if callable(out):
        return _HostSink(shape, transpose, consume=out)
    if not hasattr(out, "shape"):
        raise ShapeError(f"output must be 'host', 'device', a file path, an array or a callable; got {out!r}")
    if tuple(out.shape) != (*shape, *pair_shape):
        raise ShapeError(f"output must have shape {(*shape, *pair_shape)}; got {tuple(out.shape)}")
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
