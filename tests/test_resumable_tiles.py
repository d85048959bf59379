"""Resumable NTK files (``linfit.ntk.kernel(..., output=path)``): interrupt after k tiles, rerun, only the missing tiles are computed."""

import json

import jax
import numpy as np
import pytest

from linfit.errors import CheckpointError
from linfit.ntk import empirical_ntk_fn
from linfit.ntk import kernel as ntk_kernel
from linfit.ntk.resumable import missing_tiles, sidecar_path
from linfit.tree import leaf_paths
from tests._ntk_models import assert_kernel_close, brute_full_ntk, make


class CountingNtk:
    """Wraps an ``NtkFn``; every executed tile (on every device) bumps ``self.runs`` via ``jax.debug.callback``."""

    def __init__(self, ntk_fn):
        self.inner, self.runs = ntk_fn, 0

    def _bump(self):
        self.runs += 1

    def __call__(self, x1, x2, params):
        jax.debug.callback(self._bump)
        return self.inner(x1, x2, params)

    def __getattr__(self, name):  # transpose, trace_axes, outputs_per_sample, ... of the wrapped NtkFn
        return getattr(self.inner, name)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def cnn():
    f, params, x, _ = make("cnn", n1=10)
    return f, params, x, brute_full_ntk(f, params, x, x)


def stop_after(k):
    seen = []

    def on_tile(rows, cols):
        seen.append((rows.start, cols.start))
        if len(seen) == k:
            raise Interrupt

    return on_tile, seen


@pytest.mark.parametrize("trace_axes", [(-1,), ()])
def test_interrupted_run_resumes_missing_tiles_only(cnn, tmp_path, trace_axes):
    f, params, x, full = cnn
    want = np.trace(full, axis1=2, axis2=3) / 3 if trace_axes else full
    path = tmp_path / "k.npy"
    ntk_fn = CountingNtk(empirical_ntk_fn(f, trace_axes=trace_axes))
    on_tile, first = stop_after(4)
    with pytest.raises(Interrupt):
        ntk_kernel(ntk_fn, x, None, params, output=path, tile_size=3, on_tile=on_tile)
    # 10 = 3 + 3 + 3 + 1 -> 4 x 4 grid, upper triangle: 10 tiles; 4 done when interrupted
    assert ntk_fn.runs == 4 and missing_tiles(path) == 6
    assert sorted(map(tuple, json.loads(sidecar_path(path).read_text())["done"])) == sorted(first)

    rerun = CountingNtk(empirical_ntk_fn(f, trace_axes=trace_axes))
    second = []
    kernel = ntk_kernel(rerun, x, None, params, output=path, tile_size=5,  # ignored: geometry is on record
                           on_tile=lambda r, c: second.append((r.start, c.start)))
    assert rerun.runs == 6 and not set(first) & set(second) and len(set(first) | set(second)) == 10
    assert missing_tiles(path) == 0
    assert_kernel_close(kernel, want)
    assert_kernel_close(np.load(path), want)

    done = CountingNtk(empirical_ntk_fn(f, trace_axes=trace_axes))
    assert_kernel_close(ntk_kernel(done, x, None, params, output=path), want)
    assert done.runs == 0  # complete: nothing recomputed


def test_rectangular_resume(cnn, tmp_path):
    f, params, x, _ = cnn
    x2 = x[:4] * 0.5
    want = np.trace(brute_full_ntk(f, params, x, x2), axis1=2, axis2=3) / 3
    path = tmp_path / "rect.npy"
    on_tile, _ = stop_after(2)
    with pytest.raises(Interrupt):
        ntk_kernel(empirical_ntk_fn(f), x, x2, params, output=path, tile_size=4, on_tile=on_tile)
    assert missing_tiles(path) == 1  # 3 row tiles x 1 column tile
    assert_kernel_close(ntk_kernel(empirical_ntk_fn(f), x, x2, params, output=path), want)


def test_other_inputs_or_missing_record_are_refused(cnn, tmp_path):
    f, params, x, _ = cnn
    path = tmp_path / "k.npy"
    on_tile, _ = stop_after(1)
    with pytest.raises(Interrupt):
        ntk_kernel(empirical_ntk_fn(f), x, None, params, output=path, tile_size=3, on_tile=on_tile)
    with pytest.raises(CheckpointError, match="other inputs"):
        ntk_kernel(empirical_ntk_fn(f), x + 1.0, None, params, output=path)
    other = jax.tree_util.tree_map(lambda p: p * 2.0, params)
    with pytest.raises(CheckpointError, match="other inputs"):
        ntk_kernel(empirical_ntk_fn(f), x, None, other, output=path)
    with pytest.raises(CheckpointError, match="other inputs"):
        ntk_kernel(empirical_ntk_fn(f, trace_axes=()), x, None, params, output=path)
    # two lambda filters share the name "<lambda>" but not their selection
    first, last = leaf_paths(params)[0], leaf_paths(params)[-1]
    path2 = tmp_path / "filtered.npy"
    with pytest.raises(Interrupt):
        ntk_kernel(empirical_ntk_fn(f, params_filter=lambda p, leaf: p == first), x, None, params, output=path2,
                   tile_size=3, on_tile=stop_after(1)[0])
    with pytest.raises(CheckpointError, match="other inputs"):
        ntk_kernel(empirical_ntk_fn(f, params_filter=lambda p, leaf: p == last), x, None, params, output=path2)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="no progress record"):
        ntk_kernel(empirical_ntk_fn(f), x, None, params, output=path)
