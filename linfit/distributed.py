"""Multi-host helpers: start ``jax.distributed`` where there is a cluster, and say which rows a process owns.

Call :func:`initialize` once, first thing in the program, before any JAX computation. On one process it does
nothing; on a cluster it calls ``jax.distributed.initialize``, which auto-detects Cloud TPU pod slices, SLURM
and Open MPI, or takes an explicit coordinator (``coordinator_address``/``num_processes``/``process_id``
arguments, or the ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` environment
variables). See ``docs/scaling.md`` for launch recipes.

Row ownership follows :func:`linfit.ntk.kernel`: the mesh lists ``jax.devices()`` (ordered by
process), a tile's ``row_tile = D t`` rows are split into ``D`` equal shards in mesh order, so the rows of one
process are the shards of its local devices. :func:`process_rows` returns them for a given tile geometry;
:func:`process_local_slice` splits ``N`` samples into one contiguous, near-equal block per process for
process-local data loading (features, labels, forward passes).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

_CLUSTER_ENV = {
    "JAX_COORDINATOR_ADDRESS": None,  # explicit coordinator
    "TPU_WORKER_HOSTNAMES": ",",  # Cloud TPU VM: comma-separated host list (several hosts = a pod slice)
    "SLURM_NTASKS": None,
    "OMPI_COMM_WORLD_SIZE": None,
}


def in_cluster(environ: dict | None = None) -> bool:
    """``True`` when the environment describes more than one process (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    return any(int(env.get(name, "1") or 1) > 1 for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, **kwargs) -> bool:
    """Start ``jax.distributed`` when running on several processes; a no-op on one.

    Arguments are passed to ``jax.distributed.initialize`` (unset ones fall back to its auto-detection and
    the ``JAX_*`` environment variables). Safe to call twice.

    Returns:
      ``True`` if this call (or an earlier one) initialised the distributed runtime.
    """
    if jax.distributed.is_initialized():
        return True
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if not explicit and not in_cluster():
        return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **kwargs)
    return True


def process_local_slice(n: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """The contiguous block of ``n`` samples process ``process_index`` loads (blocks differ by at most 1)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return slice(int(bounds[index]), int(bounds[index + 1]))


def process_rows(n: int, row_tile: int, mesh: Mesh, process_index: int | None = None) -> np.ndarray:
    """Sorted global kernel rows ``< n`` that devices of ``process_index`` compute in ``linfit.ntk.kernel``.

    Args:
      n: ``N1``, the number of kernel rows.
      row_tile: rows per tile (a multiple of ``mesh.size``), from the run's ``TileGeometry``.
      mesh: the one-axis mesh of the run.
      process_index: default this process.
    """
    index = jax.process_index() if process_index is None else process_index
    per_device = row_tile // mesh.size
    owned = [k for k, device in enumerate(mesh.devices.flat) if device.process_index == index]
    starts = np.arange(0, n, row_tile)[:, None] + np.asarray(owned, dtype=int)[None, :] * per_device
    rows = (starts[..., None] + np.arange(per_device)).reshape(-1)
    return np.sort(rows[rows < n])
