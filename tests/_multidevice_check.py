"""Multi-device checks for ``tests/test_sharding.py``, run in a subprocess with 8 simulated CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX is imported, hence the separate
process. Prints one JSON object ``{check_name: "ok" | traceback}`` on the last line of stdout.
"""

import json
import os
import sys
import tempfile
import traceback

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from linfit.distributed import process_rows
from linfit.ntk import empirical_ntk_fn
from linfit.ntk.large_n import matrix_free_loss_curve, streamed_kernel_label_correlation
from linfit.ntk import panels
from linfit.ntk import KernelPlan, kernel, plan_kernel
from linfit.ntk.panels import PanelGeometry
from linfit.ntk.resumable import missing_tiles
from linfit.ntk.sharding import sample_mesh
from tests._ntk_models import assert_kernel_close, brute_full_ntk, make

N, N2, O = 21, 10, 3  # 21 and 10 are not multiples of 8
F, PARAMS, X1, X2 = make("mlp", n1=N, n2=N2)
FULL = brute_full_ntk(F, PARAMS, X1, X1)  # [N, N, O, O] from whole-batch jacrev, float64
FULL12 = brute_full_ntk(F, PARAMS, X1, X2)
TRACED = np.trace(FULL, axis1=2, axis2=3) / O
MESH = sample_mesh()
CHECKS = {}


def panels_plan(geometry):
    return KernelPlan("panels", geometry, None)


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


@check
def devices():
    assert jax.device_count() == 8 and MESH.size == 8 and MESH.axis_names == ("samples",)


@check
def host_traced_and_untraced():
    for trace_axes, want in (((-1,), TRACED), ((), FULL)):
        ntk_fn = empirical_ntk_fn(F, trace_axes=trace_axes)
        for tile_size in (1, 2, None):  # 8 x 1, 16 x 2 (mirrored, ragged) and one 24 x 24 tile
            assert_kernel_close(kernel(ntk_fn, X1, None, PARAMS, mesh=MESH, tile_size=tile_size), want)


@check
def host_rectangular():
    got = kernel(empirical_ntk_fn(F, trace_axes=()), X1, X2, PARAMS, mesh=MESH, tile_size=2)
    assert_kernel_close(got, FULL12)


@check
def device_output_sharding():
    for trace_axes, want in (((-1,), TRACED), ((), FULL)):
        k = kernel(empirical_ntk_fn(F, trace_axes=trace_axes), X1, None, PARAMS, mesh=MESH, tile_size=2,
                   output="device")
        assert isinstance(k, jax.Array) and k.shape == (24, N, *want.shape[2:]), k.shape
        assert isinstance(k.sharding, NamedSharding) and k.sharding.spec == P("samples"), k.sharding
        assert sorted(s.data.shape[0] for s in k.addressable_shards) == [3] * 8  # 3 rows per device
        assert all(s.device == MESH.devices.flat[s.index[0].start // 3] for s in k.addressable_shards)
        host = np.asarray(k)
        assert_kernel_close(host[:N], want)
        assert not host[N:].any()  # padding rows are zero


@check
def panels_match_single_device():
    for trace_axes, want in (((-1,), TRACED), ((), FULL)):
        ntk_fn = empirical_ntk_fn(F, trace_axes=trace_axes)
        for geometry in (PanelGeometry(8, 2), PanelGeometry(16, 1)):  # 21 rows: ragged last block
            assert_kernel_close(kernel(ntk_fn, X1, None, PARAMS, mesh=MESH, plan=panels_plan(geometry)), want)
    got = kernel(empirical_ntk_fn(F, trace_axes=()), X1, X2, PARAMS, mesh=MESH, plan=panels_plan(PanelGeometry(8, 2)))
    assert_kernel_close(got, FULL12)
    k = kernel(empirical_ntk_fn(F), X1, None, PARAMS, mesh=MESH, plan=panels_plan(PanelGeometry(8, 1)), output="device")
    assert isinstance(k.sharding, NamedSharding) and k.sharding.spec == P("samples"), k.sharding
    assert_kernel_close(np.asarray(k)[:N], TRACED)
    chunk, panels.JACOBIAN_CHUNK = panels.JACOBIAN_CHUNK, 1  # blocks of 2 per device from 2 calls each
    try:
        got = kernel(empirical_ntk_fn(F, trace_axes=()), X1, None, PARAMS, mesh=MESH,
                        plan=panels_plan(PanelGeometry(16, 2)))
    finally:
        panels.JACOBIAN_CHUNK = chunk
    assert_kernel_close(got, FULL)


class Interrupt(Exception):
    pass


@check
def entry_strategies():
    """Every strategy the entry point can choose, planned from budgets on the 8-device mesh."""
    ntk_fn = empirical_ntk_fn(F)
    whole = plan_kernel(ntk_fn, X1, None, PARAMS, mesh=MESH)
    assert whole.strategy == "whole" and whole.geometry.row_tile == 24, whole
    tiles = plan_kernel(ntk_fn, X1, None, PARAMS, mesh=MESH, strategy="tiles", memory_budget_bytes=8_000)
    assert tiles.strategy == "tiles" and tiles.estimated_bytes <= 8_000, tiles
    for strategy, budget in (("auto", None), ("whole", None), ("tiles", 8_000), ("panels", 60_000)):
        got = kernel(ntk_fn, X1, None, PARAMS, mesh=MESH, strategy=strategy, memory_budget_bytes=budget)
        assert_kernel_close(got, TRACED)
        got = kernel(empirical_ntk_fn(F, trace_axes=()), X1, X2, PARAMS, mesh=MESH, strategy=strategy,
                     memory_budget_bytes=budget)
        assert_kernel_close(got, FULL12)
    k = kernel(ntk_fn, X1, None, PARAMS, mesh=MESH, strategy="tiles", memory_budget_bytes=8_000, output="device")
    assert k.sharding.spec == P("samples") and k.shape == (24, N)
    assert_kernel_close(np.asarray(k)[:N], TRACED)


@check
def entry_resumes_file():
    """A file run interrupted mid-way on 8 devices finishes on rerun with only the missing tiles."""
    ntk_fn = empirical_ntk_fn(F, trace_axes=())
    for strategy in ("tiles", "panels"):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "k.npy")
            first, second = [], []

            def stop(rows, cols):
                first.append((rows.start, cols.start))
                if len(first) == 2:
                    raise Interrupt

            try:
                kernel(ntk_fn, X1, None, PARAMS, mesh=MESH, output=path, strategy=strategy, tile_size=1, on_tile=stop)
                raise AssertionError("the interruption did not happen")
            except Interrupt:
                pass
            left = missing_tiles(path)
            got = kernel(ntk_fn, X1, None, PARAMS, mesh=MESH, output=path,
                         on_tile=lambda r, c: second.append((r.start, c.start)))
            assert left > 0 and len(second) == left and not set(first) & set(second), (left, first, second)
            assert_kernel_close(np.asarray(got), FULL)


@check
def streamed_correlation():
    labels = np.arange(N) % O
    got = streamed_kernel_label_correlation(empirical_ntk_fn(F), X1, labels, PARAMS, mesh=MESH, tile_size=1)
    k_y = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    want = np.corrcoef(TRACED.ravel(), k_y.ravel())[0, 1]
    assert abs(got - want) < 1e-5, (got, want)


@check
def krylov_loss_matches_eigh():
    y = np.eye(O)[np.arange(N) % O]
    times = np.array([0.0, 0.3, 3.0, 30.0])
    # L_t = ½ Σ_o Σ_k e^{−2ηλ_k t} (v_kᵀ r0[:, o])², from numpy's eigendecomposition of the traced kernel
    lam, vecs = np.linalg.eigh(np.asarray(TRACED, np.float64))
    coeff = vecs.T @ (y - np.asarray(F(PARAMS, X1), np.float64))
    dense = 0.5 * np.exp(-2 * 0.5 * np.outer(times, np.clip(lam, 0.0, None))) @ (coeff**2).sum(axis=1)
    got = matrix_free_loss_curve(F, PARAMS, X1, y, times, learning_rate=0.5, num_iters=N, batch_size=8)
    np.testing.assert_allclose(got, dense, rtol=1e-4)


@check
def process_rows_cover_all():
    assert np.array_equal(process_rows(N, 16, MESH), np.arange(N))


def main():
    results = {}
    for name, fn in CHECKS.items():
        try:
            fn()
            results[name] = "ok"
        except Exception:  # noqa: BLE001  report every failing check, not only the first
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
