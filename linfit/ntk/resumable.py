"""Resumable tiled NTK into a ``.npy`` memory map: an interrupted run recomputes only the missing tiles.

``ntk_to_memmap(ntk_fn, x1, x2, params, "k.npy")`` writes the kernel with :func:`linfit.ntk.sharding.sharded_ntk`
into ``k.npy`` (``np.lib.format.open_memmap``, so the file is an ordinary ``.npy``) and keeps a sidecar
``k.npy.tiles.json``:

    {"version": 1, "shape": [...], "dtype": "float32", "geometry": [row_tile, col_tile],
     "symmetric": true, "fingerprint": "<sha256 of inputs, params and kernel options>",
     "method": "tiles", "done": [[row_start, col_start], ...]}

``method="tiles"`` computes each tile with :func:`linfit.ntk.sharding.sharded_ntk`; ``method="panels"`` uses
:func:`linfit.ntk.panels.panel_ntk` (Jacobian rows held a panel at a time, tiles ``block x block``, the same
record with ``"panel_blocks"`` added), much faster when the Jacobians, not the products, dominate.

After each tile the memmap is flushed, then the sidecar is rewritten atomically (temporary file +
``os.replace``), so a tile is marked done only once its values are on disk; a crash in between costs that
tile again, never a wrong kernel. A rerun with the same inputs reads the sidecar, keeps its tile geometry
(``row_tile`` must stay divisible by the device count) and skips every recorded tile. Different inputs,
parameters or kernel options (fingerprint) raise :class:`linfit.errors.CheckpointError` instead of mixing
two kernels in one file.

Multi-host: each process writes the rows its devices own and records its own progress, so give each process
its own ``path`` (e.g. ``f"k.{jax.process_index()}.npy"``); together the files hold the whole kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from linfit.errors import CheckpointError, UnknownNameError
from linfit.ntk.panels import PanelGeometry, panel_ntk, plan_for
from linfit.ntk.sharding import (
    TileGeometry,
    plan_tiles,
    sample_mesh,
    sharded_ntk,
    sharded_tile_grid,
)

SIDECAR_SUFFIX = ".tiles.json"
METHODS = ("tiles", "panels")
_VERSION = 1


def sidecar_path(path: str | os.PathLike) -> Path:
    """The progress record next to the memmap ``path``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def ntk_to_memmap(
    ntk_fn: Callable[[Any, Any, Any], jax.Array],
    x1: Any,
    x2: Any | None,
    params: Any,
    path: str | os.PathLike,
    *,
    mesh: Mesh | None = None,
    tile_size: int | None = None,
    memory_budget_bytes: int | None = None,
    progress: bool = False,
    on_tile: Callable[[slice, slice], None] | None = None,
    method: str = "tiles",
) -> np.memmap:
    """Compute (or finish computing) ``ntk_fn(x1, x2, params)`` into the ``.npy`` file ``path``.

    Args:
      ntk_fn, x1, x2, params, mesh, tile_size, memory_budget_bytes, progress: as in
        :func:`linfit.ntk.sharding.sharded_ntk` (tile options only matter for a fresh run; with
        ``method="panels"`` ``tile_size`` is the samples per device in one block).
      path: the ``.npy`` file; created with its sidecar if neither exists.
      on_tile: called as ``on_tile(rows, cols)`` after each newly computed tile is recorded.
      method: ``"tiles"`` or ``"panels"`` (module docstring; a resumed run keeps the recorded method).

    Returns:
      The kernel ``[N1, N2, ...]`` as a read/write ``np.memmap``.

    Raises:
      CheckpointError: the file exists without a sidecar, or the sidecar belongs to other inputs, another
        shape or a device count that does not divide its ``row_tile``.
    """
    if method not in METHODS:
        raise UnknownNameError(f"method must be one of {METHODS}; got {method!r}")
    path, record_path = Path(path), sidecar_path(path)
    mesh = sample_mesh() if mesh is None else mesh
    x1 = np.asarray(x1)
    x2 = None if x2 is None else np.asarray(x2)
    xs = x1 if x2 is None else x2
    pair = jax.eval_shape(ntk_fn, x1[:1], xs[:1], params)
    shape = (x1.shape[0], xs.shape[0], *pair.shape[2:])
    fingerprint = _fingerprint(ntk_fn, x1, x2, params)

    if record_path.exists():
        record = _read_record(record_path)
        _check_record(record, shape, pair.dtype, fingerprint, mesh.size, path)
        kernel = np.lib.format.open_memmap(path, mode="r+")
    elif path.exists():
        raise CheckpointError(f"{path} exists but has no progress record {record_path}; delete it or pick "
                              "another path")
    else:
        record = {"version": _VERSION, "shape": list(shape), "dtype": str(np.dtype(pair.dtype)),
                  "symmetric": x2 is None, "fingerprint": fingerprint, "method": method, "done": []}
        if method == "panels":
            panels = plan_for(ntk_fn, x1, x2, params, mesh, memory_budget_bytes,
                              block=None if tile_size is None else tile_size * mesh.size)
            record.update(geometry=[panels.block, panels.block], panel_blocks=panels.panel_blocks)
        else:
            record["geometry"] = list(plan_tiles(ntk_fn, x1, x2, params, mesh.size, tile_size=tile_size,
                                                 memory_budget_bytes=memory_budget_bytes))
        kernel = np.lib.format.open_memmap(path, mode="w+", dtype=pair.dtype, shape=shape)
        _write_record(record_path, record)

    done = {tuple(d) for d in record["done"]}

    def record_tile(rows: slice, cols: slice) -> None:
        kernel.flush()
        done.add((rows.start, cols.start))
        record["done"] = sorted(done)
        _write_record(record_path, record)
        if on_tile is not None:
            on_tile(rows, cols)

    skip = lambda rows, cols: (rows.start, cols.start) in done
    if record.get("method", "tiles") == "panels":
        geometry = PanelGeometry(record["geometry"][0], record["panel_blocks"])
        panel_ntk(ntk_fn, x1, x2, params, mesh=mesh, geometry=geometry, out=kernel, progress=progress,
                  on_tile=record_tile, skip=skip)
    else:
        sharded_ntk(ntk_fn, x1, x2, params, mesh=mesh, geometry=TileGeometry(*record["geometry"]), out=kernel,
                    progress=progress, on_tile=record_tile, skip=skip)
    return kernel


def missing_tiles(path: str | os.PathLike) -> int:
    """How many tiles of the run recorded next to ``path`` are not done yet (0: complete)."""
    record = _read_record(sidecar_path(path))
    n1, n2 = record["shape"][:2]
    grid = sharded_tile_grid(n1, n2, TileGeometry(*record["geometry"]), record["symmetric"])
    done = {tuple(d) for d in record["done"]}
    return sum((t.rows.start, t.cols.start) not in done for t in grid)


def _fingerprint(ntk_fn, x1, x2, params) -> str:
    """sha256 of the inputs, the parameter leaves and the kernel function's options."""
    digest = hashlib.sha256()
    for array in (x1, x2, *jax.tree_util.tree_leaves(params)):
        if array is None:
            digest.update(b"x2=None")
            continue
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    for name in ("trace_axes", "diagonal_axes", "params_filter"):
        option = getattr(ntk_fn, name, None)  # a callable filter is named, not repr'd (its repr holds an id)
        digest.update(f"{name}={getattr(option, '__qualname__', None) or repr(option)}".encode())
    digest.update(str(jax.tree_util.tree_structure(params)).encode())
    return digest.hexdigest()


def _read_record(record_path: Path) -> dict:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read the progress record {record_path}: {err}") from err
    if record.get("version") != _VERSION:
        raise CheckpointError(f"{record_path} has version {record.get('version')}; expected {_VERSION}")
    return record


def _check_record(record: dict, shape, dtype, fingerprint: str, num_devices: int, path: Path) -> None:
    if record["fingerprint"] != fingerprint:
        raise CheckpointError(f"{path} was started for other inputs, parameters or kernel options; delete it "
                              "and its sidecar, or pick another path")
    if tuple(record["shape"]) != tuple(shape) or record["dtype"] != str(np.dtype(dtype)):
        raise CheckpointError(f"{path} holds a {record['dtype']} kernel {tuple(record['shape'])}; this run "
                              f"computes {np.dtype(dtype)} {tuple(shape)}")
    if record["geometry"][0] % num_devices:
        raise CheckpointError(f"{path} was tiled with row_tile={record['geometry'][0]}, which {num_devices} "
                              "devices do not divide; resume on a device count that divides it")


def _write_record(record_path: Path, record: dict) -> None:
    tmp = record_path.with_name(record_path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, record_path)
