"""The panels strategy of :func:`linfit.ntk.kernel`: each sample's Jacobian is computed a few times, not once
per tile.

The tiles strategy (:mod:`linfit.ntk.sharding`) recomputes both tiles' Jacobians for every tile, so
with ``t x t`` tiles each sample's Jacobian is computed about ``N / t`` times and, for a small network with
many samples, Jacobians dominate the run. Here the samples are cut into blocks of ``C`` (a multiple of the
device count ``D``) and the row blocks grouped into *panels* of ``k`` blocks whose Jacobian rows
``J [C, O, P]`` stay in memory while the column blocks stream past:

    for each panel (rows R = blocks b0 .. b0+k-1, Jacobians held):
        for each column block c >= b0 (x2 = None) or every column block (x2 given):
            J_c = the panel's block if c is in the panel, else computed now
            Θ[R_b, c] = contract(J_b, J_c) for every panel block b (upper triangle only when x2 = None)

``contract`` is one matrix product over the parameter axis (:func:`linfit.ntk._contract.contract_jacobians`):
``Θ[i, j] = (1/O) Σ_{o,p} J[i,o,p] J[j,o,p]`` traced, ``Θ[i, j, o, o'] = Σ_p J[i,o,p]
J[j,o',p]`` untraced, ``[i, j, o]`` diagonal (neural-tangents' conventions, as :func:`empirical_ntk_fn`).
The Jacobian rows come from :func:`linfit.ntk.structured.per_sample_jacobian_fn`. With ``K = ceil(N / (kC))``
panels a symmetric kernel computes about ``N (K + 1) / 2`` sample Jacobians instead of ``N² / t``.

Over a mesh: every block is sharded by rows (each device computes the Jacobians of its ``C / D`` samples); a
column block is all-gathered before its products, so each output tile ``[C, C, ...]`` is row-sharded like
the tiles of the tiles strategy, and written by the same tile loop through the same sinks (``"host"``,
``"device"``, an array or memmap, or a consumer). No divisibility constraint on ``N``: the last block is
padded by repeating the last sample and the padding is never written.

A block's Jacobian rows are computed ``JACOBIAN_CHUNK`` samples per device at a time and placed into the
block's buffer, because the Jacobian program's XLA work space is several times its output (it is measured from
the compiled program, ``memory_analysis()``, not guessed). Memory per device (``r = O P`` itemsize bytes per
Jacobian row, ``w`` the work space of one Jacobian call), the rule :func:`plan_panels` inverts:

    r C/D (k + D + 2) + w + C²/D · pair_bytes  <=  budget

(``k`` panel blocks, the gathered column block ``C`` rows, its own shard, the block being assembled, one
Jacobian call's work space, and one output tile).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from linfit.errors import ShapeError
from linfit.ntk._contract import contract_jacobians, normalize_axes
from linfit.ntk.empirical import NtkFn
from linfit.ntk.sharding import Tile, _global, pair_spec
from linfit.ntk.structured import JACOBIAN_CHUNK, per_sample_jacobian_fn
from linfit.ntk.tiling import DEFAULT_MEMORY_BUDGET_BYTES

#: Samples per device in one block unless the budget asks for fewer.
MAX_BLOCK_PER_DEVICE = 512

#: Work space of one Jacobian call per row of output when the backend reports no memory analysis (the small
#: CNN's measured ratio, see ``linfit.ntk.structured.JACOBIAN_CHUNK``).
FALLBACK_WORKSPACE_PER_ROW = 8


class PanelGeometry(NamedTuple):
    """``block`` samples per block (a multiple of the device count), ``panel_blocks`` row blocks per panel."""

    block: int
    panel_blocks: int


def plan_panels(n1: int, n2: int, row_bytes: int, pair_bytes: int, num_devices: int,
                memory_budget_bytes: int | None = None, block: int | None = None,
                workspace_per_sample: float = 0.0) -> PanelGeometry:
    """The geometry that fits ``memory_budget_bytes`` per device (default 1 GiB; rule in the module docstring).

    Args:
      n1, n2: rows and columns of the kernel; row_bytes: ``O P`` itemsize, one sample's Jacobian;
      pair_bytes: bytes of one kernel entry ``Θ[i, j, ...]``; block: force the block size (rounded up to a
        multiple of ``num_devices``, and above ``JACOBIAN_CHUNK`` per device to a multiple of it);
      workspace_per_sample: work space of a Jacobian call per sample it computes
        (:func:`jacobian_workspace_per_sample`); a call covers ``min(C/D, JACOBIAN_CHUNK)`` samples per device.

    Raises:
      ShapeError: the budget cannot hold even one block per device.
    """
    budget = memory_budget_bytes or DEFAULT_MEMORY_BUDGET_BYTES
    d, w = num_devices, workspace_per_sample
    if block is None:
        # the largest t per device whose block (no panel) takes at most half the budget: w t while t <= chunk,
        # then w · chunk
        cap = min(MAX_BLOCK_PER_DEVICE, -(-max(n1, n2) // d))
        a, b = d * pair_bytes, row_bytes * (d + 2)
        per_device = min(cap, _largest_root(a, b + w, budget / 2))
        if per_device > JACOBIAN_CHUNK:
            per_device = min(cap, _largest_root(a, b, budget / 2 - w * JACOBIAN_CHUNK))
            per_device = max(per_device - per_device % JACOBIAN_CHUNK, JACOBIAN_CHUNK)
    else:
        per_device = -(-block // d)
        if per_device > JACOBIAN_CHUNK:
            per_device = -(-per_device // JACOBIAN_CHUNK) * JACOBIAN_CHUNK
    block = per_device * d
    workspace = int(w * min(per_device, JACOBIAN_CHUNK))
    spare = budget - row_bytes * per_device * (d + 2) - workspace - block * per_device * pair_bytes
    if per_device < 1 or spare < row_bytes * per_device:
        raise ShapeError(f"a memory budget of {budget} bytes per device cannot hold a block of {block} samples "
                         f"({row_bytes} bytes of Jacobian and {int(w)} bytes of work space each, {d} devices); "
                         "raise memory_budget_bytes")
    panel_blocks = min(-(-n1 // block), spare // (row_bytes * per_device))
    return PanelGeometry(block, int(panel_blocks))


def _largest_root(a: float, b: float, room: float) -> int:
    """The largest integer t >= 0 with a t² + b t <= room (0 when room <= 0)."""
    return int((math.sqrt(b * b + 4 * a * max(room, 0.0)) - b) / (2 * a))


def jacobian_workspace_per_sample(ntk_fn: NtkFn, x: np.ndarray, params: Any, mesh: Mesh) -> float | None:
    """Per-device XLA work space of one Jacobian call divided by its samples per device (the compiled program's
    ``memory_analysis().temp_size_in_bytes`` on ``JACOBIAN_CHUNK`` samples per device); ``None`` when the
    backend reports none. The compilation is the one the panels' calls then reuse."""
    per_device = min(JACOBIAN_CHUNK, -(-x.shape[0] // mesh.size))
    spec = jax.ShapeDtypeStruct((per_device * mesh.size, *x.shape[1:]), x.dtype,
                                sharding=NamedSharding(mesh, P(mesh.axis_names[0])))
    params_spec = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf), np.asarray(leaf).dtype, sharding=NamedSharding(mesh, P())),
        params)
    stats = _programs(ntk_fn, mesh).jacobian.lower(spec, params_spec).compile().memory_analysis()
    if stats is not None and getattr(stats, "temp_size_in_bytes", 0):
        return stats.temp_size_in_bytes / per_device
    return None


def plan_for(ntk_fn: NtkFn, x1: np.ndarray, x2: np.ndarray | None, params: Any, mesh: Mesh,
             memory_budget_bytes: int | None = None, block: int | None = None) -> PanelGeometry:
    """:func:`plan_panels` for these inputs, with the measured Jacobian work space."""
    xs = x1 if x2 is None else x2
    pair = pair_spec(ntk_fn, x1, xs, params)
    row_bytes = ntk_fn.outputs_per_sample(x1, params) * ntk_fn.num_params(params) * pair.dtype.itemsize
    measured = jacobian_workspace_per_sample(ntk_fn, x1, params, mesh)
    return plan_panels(x1.shape[0], xs.shape[0], row_bytes, math.prod(pair.shape[2:]) * pair.dtype.itemsize,
                       mesh.size, memory_budget_bytes, block=block,
                       workspace_per_sample=FALLBACK_WORKSPACE_PER_ROW * row_bytes if measured is None else measured)


class PanelSource:
    """Tile values of the panel strategy for the shared tile loop (:func:`linfit.ntk.kernel`).

    :meth:`order` puts the tiles panel by panel, column block by column block; calling the source on a tile in
    that order keeps the Jacobian rows of the current panel's row blocks (computed on first use, dropped when
    the panel changes) and the current column block's gathered Jacobian, so every block's Jacobian is computed
    once per panel (module docstring).
    """

    def __init__(self, ntk_fn: NtkFn, mesh: Mesh, geometry: PanelGeometry, rows_padded: np.ndarray,
                 cols_padded: np.ndarray, params_global: Any, symmetric: bool):
        c = geometry.block
        if c % mesh.size:
            raise ShapeError(f"block={c} must be a multiple of the {mesh.size} devices")
        self.block, self.span, self.symmetric = c, c * geometry.panel_blocks, symmetric
        self.per_device = c // mesh.size
        # samples per device in one Jacobian call: JACOBIAN_CHUNK when it divides the block, else the whole block
        self.chunk = JACOBIAN_CHUNK if self.per_device % JACOBIAN_CHUNK == 0 else self.per_device
        self.programs, self.mesh = _programs(ntk_fn, mesh), mesh
        self.row_sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
        self.rows_padded, self.cols_padded, self.params = rows_padded, cols_padded, params_global
        self._panel, self._held, self._col, self._gathered = None, {}, None, None

    def order(self, tiles: list[Tile]) -> list[Tile]:
        return sorted(tiles, key=lambda t: (t.rows.start // self.span, t.cols.start, t.rows.start))

    def __call__(self, tile: Tile) -> jax.Array:
        panel = tile.rows.start // self.span
        if panel != self._panel:
            self._panel, self._held, self._col, self._gathered = panel, {}, None, None
        col = tile.cols.start
        if col != self._col:
            self._gathered = None  # freed before the next block is computed
            in_panel = self.symmetric and panel * self.span <= col < (panel + 1) * self.span
            rows = self._rows(col) if in_panel else self._jacobian(self.cols_padded, col)
            self._col, self._gathered = col, self.programs.gather(rows)
        return self.programs.contract(self._rows(tile.rows.start), self._gathered)

    def _rows(self, start: int) -> jax.Array:
        if start not in self._held:
            self._held[start] = self._jacobian(self.rows_padded, start)
        return self._held[start]

    def _jacobian(self, x_padded: np.ndarray, start: int) -> jax.Array:
        """J of samples ``start .. start + C``, row-sharded: ``chunk`` samples per device per call, each
        device's rows placed into its shard of the block at offset ``j · chunk``."""
        block, programs, d = x_padded[start : start + self.block], self.programs, self.mesh.size
        if self.chunk == self.per_device:
            return programs.jacobian(_global(block, self.row_sharding), self.params)
        rows = None
        for offset in range(0, self.per_device, self.chunk):
            take = (np.arange(d)[:, None] * self.per_device + offset + np.arange(self.chunk)).reshape(-1)
            part = programs.jacobian(_global(block[take], self.row_sharding), self.params)
            if rows is None:
                rows = programs.allocate(part, self.per_device)
            rows = programs.place(rows, part, offset)
        return rows


def panel_ntk(ntk_fn, x1, x2, params, *, mesh=None, geometry=None, memory_budget_bytes=None, out="host",
              progress=False, on_tile=None, skip=None):
    """Deprecated: use :func:`linfit.ntk.kernel` (``strategy="panels"``); same arguments, same result."""
    from linfit.ntk.entry import KernelPlan, deprecated, kernel

    deprecated("linfit.ntk.panels.panel_ntk", 'linfit.ntk.kernel(..., strategy="panels")')
    plan = None if geometry is None else KernelPlan("panels", geometry, None)
    return kernel(ntk_fn, x1, x2, params, mesh=mesh, memory_budget_bytes=memory_budget_bytes, strategy="panels",
                  plan=plan, output=out, progress=progress, on_tile=on_tile, _skip=skip)


class _Programs(NamedTuple):
    jacobian: Callable  # (x [C, ...] row-sharded, params) -> J [C, O, P] row-sharded
    allocate: Callable  # (a chunk's J, rows per device) -> zeros [C, O, P] row-sharded
    place: Callable  # (J block, a chunk's J, offset) -> J block with the chunk at offset on every device
    gather: Callable  # J row-sharded -> J replicated
    contract: Callable  # (J rows row-sharded, J cols replicated) -> tile [C, C, ...] row-sharded


@functools.lru_cache(maxsize=16)
def _programs(ntk_fn: NtkFn, mesh: Mesh) -> _Programs:
    """The three compiled programs for ``ntk_fn`` on ``mesh`` (cached: one compilation per block shape)."""
    axis = mesh.axis_names[0]
    rows_fn = per_sample_jacobian_fn(ntk_fn.f, params_filter=ntk_fn.params_filter)
    jacobian = jax.jit(jax.shard_map(rows_fn, mesh=mesh, in_specs=(P(axis), P()), out_specs=P(axis),
                                     check_vma=False))
    row_sharding = NamedSharding(mesh, P(axis))
    allocate = jax.jit(lambda part, per_device: jnp.zeros((per_device * mesh.size, *part.shape[1:]), part.dtype),
                       static_argnums=1, out_shardings=row_sharding)
    place = jax.jit(jax.shard_map(lambda rows, part, offset: jax.lax.dynamic_update_slice_in_dim(rows, part, offset, 0),
                                  mesh=mesh, in_specs=(P(axis), P(axis), P()), out_specs=P(axis), check_vma=False),
                    donate_argnums=0)
    gather = jax.jit(lambda j: j, out_shardings=NamedSharding(mesh, P()))

    trace, diag = normalize_axes(ntk_fn.trace_axes, ntk_fn.diagonal_axes, 2)

    def contract(j_rows, j_cols):
        return contract_jacobians([j_rows], [j_cols], j_rows.shape[:2], trace, diag)

    contract = jax.jit(jax.shard_map(contract, mesh=mesh, in_specs=(P(axis), P()), out_specs=P(axis),
                                     check_vma=False))
    return _Programs(jacobian, allocate, place, gather, contract)
