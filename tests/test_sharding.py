"""Sharded tiled NTK: 8 simulated devices in a subprocess, tile-grid and multi-host helpers in process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from linfit.distributed import in_cluster, initialize, process_local_slice, process_rows
from linfit.errors import ShapeError
from linfit.ntk import KernelPlan, empirical_ntk_fn, kernel
from linfit.ntk.sharding import TileGeometry, sample_mesh, sharded_tile_grid, tile_geometry
from tests._ntk_models import assert_kernel_close, brute_full_ntk, make

SCRIPT = Path(__file__).with_name("_multidevice_check.py")
MULTIDEVICE_CHECKS = [
    "devices",
    "host_traced_and_untraced",
    "host_rectangular",
    "device_output_sharding",
    "panels_match_single_device",
    "entry_strategies",
    "entry_resumes_file",
    "streamed_correlation",
    "krylov_loss_matches_eigh",
    "process_rows_cover_all",
]


@pytest.fixture(scope="module")
def multidevice_results():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300, check=False,
                          cwd=SCRIPT.parent.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", MULTIDEVICE_CHECKS)
def test_eight_devices(multidevice_results, name):
    assert set(multidevice_results) == set(MULTIDEVICE_CHECKS)
    assert multidevice_results[name] == "ok", multidevice_results[name]


@pytest.mark.parametrize("n,geometry", [(21, TileGeometry(8, 2)), (7, TileGeometry(3, 3)), (16, TileGeometry(8, 8)),
                                        (5, TileGeometry(4, 1))])
def test_symmetric_grid_covers_every_entry_once(n, geometry):
    counts = np.zeros((n, n), int)
    for tile in sharded_tile_grid(n, n, geometry, symmetric=True):
        counts[tile.rows, tile.cols] += 1
        if tile.mirror:
            counts[tile.cols, tile.rows] += 1
    assert (counts == 1).all()


def test_rectangular_grid_covers_every_entry_once():
    counts = np.zeros((9, 5), int)
    tiles = sharded_tile_grid(9, 5, TileGeometry(4, 2), symmetric=False)
    for tile in tiles:
        counts[tile.rows, tile.cols] += 1
    assert (counts == 1).all() and not any(t.mirror for t in tiles)


def test_tile_geometry_rows_divisible_by_devices():
    assert tile_geometry(21, 21, True, 8, 2) == TileGeometry(16, 2)
    assert tile_geometry(21, 21, True, 8, 100) == TileGeometry(24, 24)  # capped at N/D
    assert tile_geometry(21, 5, False, 8, 100) == TileGeometry(24, 5)
    assert tile_geometry(21, 21, True, 8, 7) == TileGeometry(24, 6)  # 3 rows per device, 2 of 8 devices' columns
    assert tile_geometry(21, 21, True, 1, 21) == TileGeometry(21, 21)
    with pytest.raises(ShapeError, match="tile_size"):
        tile_geometry(21, 21, True, 1, 0)


def test_single_device_memmap_and_consumer(tmp_path):
    f, params, x1, _ = make("mlp", n1=7)
    full = brute_full_ntk(f, params, x1, x1)
    ntk_fn = empirical_ntk_fn(f, trace_axes=())
    out = np.lib.format.open_memmap(tmp_path / "k.npy", mode="w+", dtype=np.float32, shape=full.shape)
    seen = []
    got = kernel(ntk_fn, x1, None, params, mesh=sample_mesh(), tile_size=3, output=out,
                 on_tile=lambda r, c: seen.append((r.start, c.start)))
    assert got is out
    assert_kernel_close(np.load(tmp_path / "k.npy"), full)
    assert seen == [(0, 0), (0, 3), (0, 6), (3, 3), (3, 6), (6, 6)]  # upper triangle, 7 = 3 + 3 + 1
    pieces = []
    assert kernel(ntk_fn, x1, None, params, tile_size=3,
                  output=lambda r, c, t, m: pieces.append((r, c, t.shape, m))) is None
    assert [p[2] for p in pieces] == [(3, 3, 3, 3), (3, 3, 3, 3), (3, 1, 3, 3), (3, 3, 3, 3), (3, 1, 3, 3),
                                      (1, 1, 3, 3)]


def test_errors():
    f, params, x, _ = make("mlp", n1=6)
    ntk_fn = empirical_ntk_fn(f)
    with pytest.raises(ShapeError, match="shape"):
        kernel(ntk_fn, x, None, params, output=np.zeros((5, 6), np.float32))
    with pytest.raises(ShapeError, match="output must be"):
        kernel(ntk_fn, x, None, params, output=3)
    with pytest.raises(ShapeError, match="col_tile"):
        kernel(ntk_fn, x, None, params, plan=KernelPlan("tiles", TileGeometry(4, 3), None))
    with pytest.raises(ShapeError, match="feature shapes"):
        kernel(ntk_fn, x, x[:, :2], params)


def test_in_cluster_reads_the_environment():
    assert not in_cluster({})
    assert not in_cluster({"TPU_WORKER_HOSTNAMES": "localhost", "SLURM_NTASKS": "1"})
    assert in_cluster({"TPU_WORKER_HOSTNAMES": "t1k-0,t1k-1"})
    assert in_cluster({"SLURM_NTASKS": "4"})
    assert in_cluster({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})


def test_initialize_is_a_no_op_on_one_process(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert initialize() is False


def test_process_local_slices_partition_samples():
    blocks = [process_local_slice(10, i, 4) for i in range(4)]
    assert [(b.start, b.stop) for b in blocks] == [(0, 2), (2, 5), (5, 8), (8, 10)]  # sizes differ by <= 1


def test_process_rows_on_one_process_mesh():
    mesh = sample_mesh()
    assert np.array_equal(process_rows(5, mesh.size, mesh), np.arange(5))
    assert process_rows(5, mesh.size, mesh, process_index=1).size == 0  # no device belongs to process 1
