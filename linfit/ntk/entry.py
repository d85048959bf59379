"""One entry point for an empirical NTK of any size: :func:`kernel` plans, then runs one tile loop.

``kernel(ntk_fn, x1, x2, params)`` returns what ``ntk_fn(x1, x2, params)`` returns, ``[N1, N2, ...]`` with
neural-tangents' conventions (``x2=None`` means ``x1``), for any ``N``: a planner (:func:`plan_kernel`) reads the
per-device ``memory_budget_bytes``, the sample counts, the mesh and the output kind and picks a *strategy*:

* ``"whole"``: one tile holds the whole kernel (the program fits the budget);
* ``"tiles"``: ``row_tile x col_tile`` sample tiles, rows sharded over the mesh, both sides' Jacobians computed
  per tile (:mod:`linfit.ntk.sharding`; any kernel function);
* ``"panels"``: tiles ``C x C`` whose row Jacobians are kept a panel of blocks at a time
  (:mod:`linfit.ntk.panels`; needs an :class:`linfit.ntk.NtkFn` with ``vmap_axes=0``).

``strategy="auto"`` takes ``"whole"`` when one measured tile fits, else the one of ``"tiles"`` and ``"panels"``
that computes fewer per-sample Jacobians per device (panels only when a block of Jacobian rows fits the budget).
Every strategy writes through the same loop over the same tile grid (:func:`linfit.ntk.sharding.
sharded_tile_grid`) into the same sinks; a strategy only supplies the order of the tiles and their values.

Where the result goes (``output``): ``"host"`` (``np.ndarray``), ``"device"`` (a ``jax.Array`` sharded by rows,
``N1`` rounded up to a multiple of the device count, extra rows zero), a caller's array ``[N1, N2, ...]``, a
callable ``consume(rows, cols, tile, mirrored)`` receiving host tiles as they finish, or a path: a ``.npy``
memory map plus a progress record (:mod:`linfit.ntk.resumable`), resumed after an interruption when
``resume=True``.

Example::

    >>> ntk_fn = empirical_ntk_fn(apply_fn)                      # traced: [N, N]
    >>> k = kernel(ntk_fn, x, None, params, memory_budget_bytes=2**30)               # host np.ndarray
    >>> k = kernel(ntk_fn, x, None, params, output="ntk.npy", progress=True)        # resumable file
    >>> plan_kernel(ntk_fn, x, None, params).strategy
    'whole'
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from linfit.errors import ShapeError, UnknownNameError, VmapAxesError
from linfit.ntk._checks import check_finite, check_pair
from linfit.ntk.empirical import NtkFn
from linfit.ntk.panels import PanelGeometry, PanelSource, plan_for
from linfit.ntk.sharding import (
    Tile,
    TileGeometry,
    _global,
    _make_sink,
    _pad,
    diagonal_tile,
    host_array,
    pair_spec,
    plan_tiles,
    sample_mesh,
    sharded_tile_grid,
    tile_program,
)
from linfit.ntk.tiling import DEFAULT_MEMORY_BUDGET_BYTES

STRATEGIES = ("auto", "whole", "tiles", "panels")
OUTPUTS = ("host", "device")


class KernelPlan(NamedTuple):
    """What :func:`kernel` will run.

    ``strategy``: ``"whole"``, ``"tiles"`` or ``"panels"``; ``geometry``: a
    :class:`linfit.ntk.sharding.TileGeometry` (whole, tiles) or :class:`linfit.ntk.panels.PanelGeometry`;
    ``estimated_bytes``: per-device bytes of the compiled tile program (XLA ``memory_analysis()``: arguments +
    output + temporaries) for tiles, ``None`` for panels (whose planner bounds its own buffers,
    :func:`linfit.ntk.panels.plan_panels`) or when the backend reports no analysis.
    """

    strategy: str
    geometry: TileGeometry | PanelGeometry
    estimated_bytes: int | None


def _samples(x: Any, name: str) -> np.ndarray:
    """``x`` as one host array ``[N, ...]`` (``host_array``); ``ShapeError`` for a pytree of inputs or a scalar:
    tiles and shards slice samples along one leading axis."""
    if isinstance(x, (dict, list, tuple)):
        raise ShapeError(f"{name} must be one array [N, ...] for the tiled kernel; got a {type(x).__name__} (a "
                         "pytree of inputs): call the NtkFn itself, ntk_fn(x1, x2, params), for pytree inputs")
    x = host_array(x)
    if x.ndim < 1:
        raise ShapeError(f"{name} must be an array [N, ...] with a leading sample axis; got shape {x.shape}")
    return x


def _inputs(x1: Any, x2: Any | None, mesh: Mesh | None) -> tuple[np.ndarray, np.ndarray | None, Mesh]:
    """The structural checks :func:`plan_kernel` and :func:`kernel` share: ``x1``/``x2`` as host arrays
    ``[N, ...]`` with matching feature shapes, and a one-axis mesh (default :func:`linfit.ntk.sample_mesh`)."""
    mesh = sample_mesh() if mesh is None else mesh
    if len(mesh.axis_names) != 1:
        raise ShapeError(f"the NTK needs a one-axis mesh; got axes {mesh.axis_names}")
    x1 = _samples(x1, "x1")
    x2 = None if x2 is None else _samples(x2, "x2")
    if x2 is not None:
        check_pair(x1, x2)
    return x1, x2, mesh


def plan_kernel(
    ntk_fn: Callable[[Any, Any, Any], jax.Array],
    x1: Any,
    x2: Any | None,
    params: Any,
    *,
    memory_budget_bytes: int | None = None,
    mesh: Mesh | None = None,
    strategy: str = "auto",
    tile_size: int | None = None,
    output: Any = "host",
) -> KernelPlan:
    """The strategy and geometry :func:`kernel` uses for these arguments (module docstring).

    Args:
      ntk_fn, x1, x2, params, memory_budget_bytes, mesh, strategy, tile_size, output: as in :func:`kernel`.
        With ``output="device"`` the device's share of the result (``ceil(N1 / D) x N2`` entries) is taken off
        the budget first.

    Returns:
      A :class:`KernelPlan`. Planning traces ``ntk_fn`` and compiles (and measures) the programs it plans with,
      but computes no kernel entry.

    Raises:
      UnknownNameError: an unknown ``strategy``.
      VmapAxesError: ``strategy="panels"`` for a kernel function that is not an ``NtkFn`` with ``vmap_axes=0``.
      ShapeError: a multi-axis mesh; ``x1`` or ``x2`` not one array ``[N, ...]`` (a pytree of inputs, or a
        scalar), or mismatched feature shapes; ``ntk_fn`` returning a pytree of kernels; ``tile_size < 1``
        (``strategy="whole"`` ignores it); the budget cannot hold a one-sample tile (or one panel block), the whole
        kernel's tile for ``strategy="whole"``, or not even the device output; for an ``NtkFn``, a shape error of
        its call (:meth:`linfit.ntk.NtkFn.__call__`), found while tracing it.
      TreeMismatchError, ParamsFilterError: for an ``NtkFn``, as its call (``f`` fails on ``params`` or never
        reads a selected leaf; the filter selects no leaf).

    Planning makes :func:`kernel`'s structural checks (shapes, mesh) but not its checks of values: neither the
    finiteness of the inputs nor the independence of the samples.
    """
    if strategy not in STRATEGIES:
        raise UnknownNameError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    x1, x2, mesh = _inputs(x1, x2, mesh)
    return _plan(ntk_fn, x1, x2, params, mesh, memory_budget_bytes, strategy, tile_size, output)


def _plan(ntk_fn, x1: np.ndarray, x2: np.ndarray | None, params: Any, mesh: Mesh, memory_budget_bytes: int | None,
          strategy: str, tile_size: int | None, output: Any) -> KernelPlan:
    """:func:`plan_kernel` on inputs that passed :func:`_inputs` and a known ``strategy``."""
    xs = x1 if x2 is None else x2
    n1, n2, d = x1.shape[0], xs.shape[0], mesh.size
    budget = memory_budget_bytes or DEFAULT_MEMORY_BUDGET_BYTES
    pair = pair_spec(ntk_fn, x1, xs, params)
    pair_bytes = int(np.prod(pair.shape[2:], dtype=int)) * pair.dtype.itemsize
    if isinstance(output, str) and output == "device":
        result_bytes = -(-n1 // d) * n2 * pair_bytes
        if result_bytes >= budget:
            raise ShapeError(f"the device output alone needs {result_bytes} bytes per device, over the budget of "
                             f"{budget}; raise memory_budget_bytes or use output='host' or a file path")
        budget -= result_bytes
    panels_ok = isinstance(ntk_fn, NtkFn) and ntk_fn.vmap_axes == 0
    if strategy == "panels":
        if not panels_ok:
            raise VmapAxesError("the panels strategy needs independent samples: an NtkFn with vmap_axes=0")
        block = None if tile_size is None else tile_size * d
        return KernelPlan("panels", plan_for(ntk_fn, x1, x2, params, mesh, budget, block=block), None)
    if strategy == "whole":  # one tile: every row (a multiple of D) against every column
        rows = d * -(-n1 // d)
        geometry, peak = plan_tiles(ntk_fn, x1, x2, params, mesh, memory_budget_bytes=budget,
                                    geometry=TileGeometry(rows, rows if x2 is None else n2))
        if peak is not None and peak > budget:
            raise ShapeError(f"strategy 'whole' needs {peak} bytes per device (one {rows} x "
                             f"{geometry.col_tile} tile), over the budget of {budget}; raise memory_budget_bytes "
                             "or use strategy 'auto' or 'tiles'")
        return KernelPlan("whole", geometry, peak)
    geometry, peak = plan_tiles(ntk_fn, x1, x2, params, mesh, tile_size=tile_size, memory_budget_bytes=budget)
    symmetric = x2 is None and hasattr(ntk_fn, "transpose")
    tiles = sharded_tile_grid(n1, n2, geometry, symmetric)
    if len(tiles) == 1:
        return KernelPlan("whole", geometry, peak)
    if strategy == "tiles" or not panels_ok or tile_size is not None:
        return KernelPlan("tiles", geometry, peak)
    row_bytes = ntk_fn.outputs_per_sample(x1, params) * ntk_fn.num_params(params) * pair.dtype.itemsize
    if row_bytes * (d + 3) > budget:  # not even a one-sample block per device and a one-block panel
        return KernelPlan("tiles", geometry, peak)
    try:
        panels = plan_for(ntk_fn, x1, x2, params, mesh, budget)
    except ShapeError:
        return KernelPlan("tiles", geometry, peak)
    tiles_cost = len(tiles) * (geometry.row_tile // d + geometry.col_tile)
    if _panel_jacobians(n1, n2, panels, d, x2 is None) < tiles_cost:
        return KernelPlan("panels", panels, None)
    return KernelPlan("tiles", geometry, peak)


def _panel_jacobians(n1: int, n2: int, geometry: PanelGeometry, num_devices: int, symmetric: bool) -> int:
    """Per-device sample Jacobians the panel strategy computes: per panel its row blocks plus the column
    blocks outside it (all column blocks at or right of the panel when symmetric)."""
    c, span = geometry.block, geometry.block * geometry.panel_blocks
    blocks = 0
    for start in range(0, n1, span):
        held = len(range(start, min(start + span, n1), c))
        if symmetric:
            blocks += held + len(range(start + span, n2, c))
        else:
            blocks += held + len(range(0, n2, c))
    return blocks * (c // num_devices)


def kernel(
    ntk_fn: Callable[[Any, Any, Any], jax.Array],
    x1: Any,
    x2: Any | None,
    params: Any,
    *,
    memory_budget_bytes: int | None = None,
    mesh: Mesh | None = None,
    output: str | os.PathLike | np.ndarray | Callable = "host",
    resume: bool = True,
    strategy: str = "auto",
    tile_size: int | None = None,
    plan: KernelPlan | None = None,
    progress: bool = False,
    on_tile: Callable[[slice, slice], None] | None = None,
    _skip: Callable[[slice, slice], bool] | None = None,
) -> np.ndarray | jax.Array | np.memmap | None:
    """``ntk_fn(x1, x2, params)`` for any ``N``, planned from a memory budget (module docstring).

    Args:
      ntk_fn: ``(x1 [n1, ...], x2 [n2, ...] | None, params) -> [n1, n2, ...]`` for independent samples, e.g.
        :func:`linfit.ntk.empirical_ntk_fn` (any ``trace_axes``/``diagonal_axes``/implementation); it runs
        jitted inside ``jax.shard_map`` on each device's rows. Symmetric runs mirror tiles when it has
        ``transpose`` (``NtkFn`` does).
      x1: ``[N1, ...]`` inputs, the same on every process; x2: ``[N2, ...]`` or ``None`` for ``x1``.
      params: parameters, replicated on every device.
      memory_budget_bytes: bytes per device for the computation (default 1 GiB).
      mesh: a one-axis ``jax.sharding.Mesh`` (default :func:`linfit.ntk.sample_mesh`, every device).
      output: ``"host"``, ``"device"``, an array ``[N1, N2, ...]``, a consumer callable, or a file path (any
        other ``str`` or ``os.PathLike``: a ``.npy`` memory map with a progress record).
      resume: for a file path: continue a run recorded next to it (``False``: start over, replacing it).
      strategy: ``"auto"``, ``"whole"``, ``"tiles"`` or ``"panels"`` (module docstring).
      tile_size: force the samples per device of a tile side (tiles) or of a block (panels) instead of the budget.
      plan: an explicit :class:`KernelPlan` (e.g. from :func:`plan_kernel`); overrides the three arguments above.
      progress: a tqdm bar over tiles; on_tile: called as ``on_tile(rows, cols)`` after each tile is written.

    Returns:
      ``[N1, N2, ...]`` of ``ntk_fn``'s dtype: an ``np.ndarray`` (``"host"``, or the array given), a
      row-sharded ``jax.Array`` of ``ceil(N1 / D) D`` rows (``"device"``), an ``np.memmap`` (a path), or ``None``
      (a consumer).

    Raises:
      UnknownNameError: an unknown ``strategy``.
      ShapeError: a multi-axis mesh, ``x1``/``x2`` not one array ``[N, ...]`` (a pytree of inputs, a scalar),
        mismatched feature shapes, ``ntk_fn`` returning a pytree of kernels, a wrong ``output`` array shape or
        kind, ``tile_size < 1``, a ``plan`` whose geometry does not fit the mesh, a budget too small
        (:func:`plan_kernel`), or, for an ``NtkFn``, a shape error of its call (:meth:`linfit.ntk.NtkFn.__call__`).
      VmapAxesError: ``strategy="panels"`` for a kernel function that is not an ``NtkFn`` with ``vmap_axes=0``, or
        an ``NtkFn`` with ``vmap_axes=0`` whose samples interact.
      TreeMismatchError: for an ``NtkFn``, ``f`` fails on ``params`` or never reads a selected leaf.
      ParamsFilterError: for an ``NtkFn``, its ``params_filter`` selects no leaf.
      NonFiniteError: NaN/inf in ``x1``, ``x2`` or ``params``.
      CheckpointError: a file path that exists without its progress record, or whose record is unreadable or
        from another run (:mod:`linfit.ntk.resumable`).
    """
    if strategy not in STRATEGIES:
        raise UnknownNameError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    x1, x2, mesh = _inputs(x1, x2, mesh)
    if isinstance(ntk_fn, NtkFn):
        ntk_fn.validate(x1, x2, params)  # params, f, finiteness and sample independence, no kernel compiled
    else:
        check_finite(x1=x1, x2=x2, params=params)
    if isinstance(output, os.PathLike) or (isinstance(output, str) and output not in OUTPUTS):
        from linfit.ntk.resumable import open_kernel_file

        make_plan = (lambda: plan) if plan is not None else (
            lambda: _plan(ntk_fn, x1, x2, params, mesh, memory_budget_bytes, strategy, tile_size, "host"))
        file = open_kernel_file(Path(output), ntk_fn, x1, x2, params, mesh, resume, make_plan)

        def record(rows: slice, cols: slice) -> None:
            file.record(rows, cols)
            if on_tile is not None:
                on_tile(rows, cols)

        run_plan(ntk_fn, x1, x2, params, mesh, file.plan, file.kernel, progress, record, file.done)
        return file.kernel
    if plan is None:
        plan = _plan(ntk_fn, x1, x2, params, mesh, memory_budget_bytes, strategy, tile_size, output)
    return run_plan(ntk_fn, x1, x2, params, mesh, plan, output, progress, on_tile, _skip)


def run_plan(ntk_fn, x1: np.ndarray, x2: np.ndarray | None, params: Any, mesh: Mesh, plan: KernelPlan, out: Any,
             progress: bool, on_tile: Callable | None, skip: Callable | None) -> Any:
    """The one tile loop: every strategy's tiles, in the strategy's order, written through one sink."""
    symmetric = x2 is None
    xs = x1 if symmetric else x2
    n1, n2 = x1.shape[0], xs.shape[0]
    pair = pair_spec(ntk_fn, x1, xs, params)
    transpose = getattr(ntk_fn, "transpose", None)
    if plan.strategy == "panels":
        grid = TileGeometry(plan.geometry.block, plan.geometry.block)
        mirror = symmetric  # an NtkFn always has transpose
    else:
        grid, mirror = plan.geometry, symmetric and transpose is not None
    if grid.row_tile % mesh.size or (mirror and grid.row_tile % grid.col_tile):
        raise ShapeError(f"{grid} needs row_tile divisible by the {mesh.size} devices (and by col_tile when "
                         "x2 is None)")
    rows_padded = _pad(x1, -(-n1 // grid.row_tile) * grid.row_tile)
    cols_padded = rows_padded if symmetric else _pad(xs, -(-n2 // grid.col_tile) * grid.col_tile)
    sink = _make_sink(out, mesh, (n1, n2), pair.shape[2:], pair.dtype, rows_padded.shape[0], cols_padded.shape[0],
                      transpose)
    replicated = NamedSharding(mesh, P())
    params_global = jax.tree_util.tree_map(lambda leaf: _global(host_array(leaf), replicated), params)
    if plan.strategy == "panels":
        source = PanelSource(ntk_fn, mesh, plan.geometry, rows_padded, cols_padded, params_global, symmetric)
    else:
        source = _TileSource(ntk_fn, mesh, grid, x1, rows_padded, cols_padded, params_global, symmetric)
    tiles = [t for t in sharded_tile_grid(n1, n2, grid, mirror) if skip is None or not skip(t.rows, t.cols)]
    for tile in tqdm(source.order(tiles), disable=not progress, desc=f"NTK tiles ({plan.strategy})"):
        sink.write(tile, source(tile))
        if on_tile is not None:
            on_tile(tile.rows, tile.cols)
    return sink.result()


class _TileSource:
    """Tile values of the tiles strategy: the compiled tile program on the tile's rows and columns (the
    diagonal program, compiled only when used, on the diagonal tiles of a symmetric grid on one device)."""

    def __init__(self, ntk_fn, mesh: Mesh, geometry: TileGeometry, x1, rows_padded, cols_padded, params_global,
                 symmetric: bool):
        self.program = lambda diagonal: tile_program(ntk_fn, mesh, geometry, x1, params_global, diagonal)
        self.mesh, self.geometry, self.params, self.symmetric = mesh, geometry, params_global, symmetric
        self.rows_padded, self.cols_padded = rows_padded, cols_padded
        self.row_sharding, self.replicated = NamedSharding(mesh, P(mesh.axis_names[0])), NamedSharding(mesh, P())

    def order(self, tiles: list[Tile]) -> list[Tile]:
        return tiles

    def __call__(self, tile: Tile) -> jax.Array:
        rt, ct = self.geometry
        xr = _global(self.rows_padded[tile.rows.start : tile.rows.start + rt], self.row_sharding)
        xc = _global(self.cols_padded[tile.cols.start : tile.cols.start + ct], self.replicated)
        return self.program(diagonal_tile(tile, self.geometry, self.mesh, self.symmetric))(xr, xc, self.params)


def deprecated(old: str, new: str) -> None:
    """Warn that ``old`` is a deprecated alias of ``new``."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)
