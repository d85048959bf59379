"""Resumable NTK into a ``.npy`` memory map: an interrupted run recomputes only the missing tiles.

``linfit.ntk.kernel(ntk_fn, x1, x2, params, output="k.npy")`` writes the kernel into ``k.npy``
(``np.lib.format.open_memmap``, so the file is an ordinary ``.npy``) through :func:`open_kernel_file`, which
keeps a sidecar ``k.npy.tiles.json``:

    {"version": 2, "shape": [...], "dtype": "float32", "geometry": [row_tile, col_tile],
     "symmetric": true, "fingerprint": "<sha256 of inputs, params and kernel options>",
     "method": "tiles", "done": [[row_start, col_start], ...]}

``"method"`` is the planned strategy (``"whole"``, ``"tiles"`` or ``"panels"``; panels add ``"panel_blocks"``
and have ``block x block`` tiles).

After each tile the memmap is flushed, then the sidecar is rewritten atomically (temporary file +
``os.replace``), so a tile is marked done only once its values are on disk; a crash in between costs that
tile again, never a wrong kernel. A rerun with the same inputs reads the sidecar, keeps its tile geometry
(``row_tile`` must stay divisible by the device count) and skips every recorded tile. Different inputs,
parameters or kernel options (fingerprint; a params filter by the leaves it selects) raise
:class:`linfit.errors.CheckpointError` instead of mixing two kernels in one file. The model function is not
fingerprinted: resume with the one that started the file.

Multi-host: each process writes the rows its devices own and records its own progress, so give each process
its own ``path`` (e.g. ``f"k.{jax.process_index()}.npy"``); together the files hold the whole kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from linfit._io import write_atomic
from linfit.errors import CheckpointError, UnknownNameError
from linfit.ntk.panels import PanelGeometry
from linfit.ntk.sharding import TileGeometry, pair_spec, sharded_tile_grid
from linfit.tree import leaf_paths, split_params

SIDECAR_SUFFIX = ".tiles.json"
METHODS = ("tiles", "panels")
_VERSION = 2  # 2: the params filter is fingerprinted by the leaves it selects


def sidecar_path(path: str | os.PathLike) -> Path:
    """The progress record next to the memmap ``path``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


class KernelFile(NamedTuple):
    """An opened kernel file: the memmap, the plan on record, ``done(rows, cols)`` and ``record(rows, cols)``."""

    kernel: np.memmap
    plan: Any
    done: Callable[[slice, slice], bool]
    record: Callable[[slice, slice], None]


def open_kernel_file(path: Path, ntk_fn: Callable, x1: np.ndarray, x2: np.ndarray | None, params: Any, mesh: Mesh,
                     resume: bool, make_plan: Callable[[], Any]) -> KernelFile:
    """Open (``resume``) or create the ``.npy`` kernel file ``path`` and its progress record.

    A fresh record stores ``make_plan()``'s strategy and geometry; a resumed run keeps the recorded ones.
    ``resume=False`` deletes an existing file and record first.

    Raises:
      CheckpointError: the file exists without a record, or the record belongs to other inputs, another shape
        or a device count that does not divide its ``row_tile``.
    """
    from linfit.ntk.entry import KernelPlan

    record_path = sidecar_path(path)
    if not resume:
        for stale in (path, record_path):
            stale.unlink(missing_ok=True)
    xs = x1 if x2 is None else x2
    pair = pair_spec(ntk_fn, x1, xs, params)
    shape = (x1.shape[0], xs.shape[0], *pair.shape[2:])
    fingerprint = _fingerprint(ntk_fn, x1, x2, params)
    if record_path.exists():
        record = _read_record(record_path)
        _check_record(record, shape, pair.dtype, fingerprint, mesh.size, path)
        kernel = np.lib.format.open_memmap(path, mode="r+")
    elif path.exists():
        raise CheckpointError(f"{path} exists but has no progress record {record_path}; delete it, pick another "
                              "path or pass resume=False")
    else:
        plan = make_plan()
        record = {"version": _VERSION, "shape": list(shape), "dtype": str(np.dtype(pair.dtype)),
                  "symmetric": x2 is None, "fingerprint": fingerprint, "method": plan.strategy, "done": []}
        if plan.strategy == "panels":
            record.update(geometry=[plan.geometry.block] * 2, panel_blocks=plan.geometry.panel_blocks)
        else:
            record["geometry"] = list(plan.geometry)
        kernel = np.lib.format.open_memmap(path, mode="w+", dtype=pair.dtype, shape=shape)
        _write_record(record_path, record)
    if record.get("method") == "panels":
        plan = KernelPlan("panels", PanelGeometry(record["geometry"][0], record["panel_blocks"]), None)
    else:
        plan = KernelPlan(record.get("method", "tiles"), TileGeometry(*record["geometry"]), None)
    finished = {tuple(d) for d in record["done"]}

    def record_tile(rows: slice, cols: slice) -> None:
        kernel.flush()
        finished.add((rows.start, cols.start))
        record["done"] = sorted(finished)
        _write_record(record_path, record)

    return KernelFile(kernel, plan, lambda rows, cols: (rows.start, cols.start) in finished, record_tile)


def ntk_to_memmap(ntk_fn, x1, x2, params, path, *, mesh=None, tile_size=None, memory_budget_bytes=None,
                  progress=False, on_tile=None, method="tiles") -> np.memmap:
    """Deprecated: use :func:`linfit.ntk.kernel` with ``output=path`` (``strategy=method``); same result.

    Raises:
      UnknownNameError: ``method`` not one of ``METHODS``; otherwise as :func:`linfit.ntk.kernel`.
    """
    from linfit.ntk.entry import deprecated, kernel

    deprecated("linfit.ntk.ntk_to_memmap", "linfit.ntk.kernel(..., output=path)")
    if method not in METHODS:
        raise UnknownNameError(f"method must be one of {METHODS}; got {method!r}")
    return kernel(ntk_fn, x1, x2, params, output=os.fspath(path), mesh=mesh, tile_size=tile_size,
                  memory_budget_bytes=memory_budget_bytes, strategy=method, progress=progress, on_tile=on_tile)


def missing_tiles(path: str | os.PathLike) -> int:
    """How many tiles of the run recorded next to ``path`` are not done yet (0: complete)."""
    record = _read_record(sidecar_path(path))
    n1, n2 = record["shape"][:2]
    grid = sharded_tile_grid(n1, n2, TileGeometry(*record["geometry"]), record["symmetric"])
    done = {tuple(d) for d in record["done"]}
    return sum((t.rows.start, t.cols.start) not in done for t in grid)


def _fingerprint(ntk_fn, x1, x2, params) -> str:
    """sha256 of the inputs, the parameter leaves and the kernel function's options; the params filter enters as
    the paths of the leaves it selects (two different lambdas share a name, not a selection). The model function
    itself and any state it closes over (e.g. BatchNorm statistics) are not fingerprinted: resume a file with
    the function that started it."""
    digest = hashlib.sha256()
    for array in (x1, x2, *jax.tree_util.tree_leaves(params)):
        if array is None:
            digest.update(b"x2=None")
            continue
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    for name in ("trace_axes", "diagonal_axes"):
        digest.update(f"{name}={getattr(ntk_fn, name, None)!r}".encode())
    params_filter = getattr(ntk_fn, "params_filter", None)
    selected = params if params_filter is None else split_params(params, params_filter)[0]
    digest.update(f"params_filter selects {leaf_paths(selected)}".encode())
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
    write_atomic(record_path, json.dumps(record))
