"""The tiles strategy of ``linfit.ntk.kernel`` on one device, and the analytic first guess of its planner."""

import numpy as np
import pytest

from linfit.errors import ShapeError
from linfit.ntk import empirical_ntk_fn, kernel, tile_size_for_budget
from tests._ntk_models import assert_kernel_close, brute_full_ntk, make


@pytest.fixture(scope="module")
def mlp():
    f, params, x1, x2 = make("mlp", n1=7, n2=5)
    return (
        f,
        params,
        x1,
        x2,
        brute_full_ntk(f, params, x1, x1),
        brute_full_ntk(f, params, x1, x2),
    )


def test_symmetric_tiles_mirror_untraced_kernel(mlp):
    f, params, x1, _, full11, _ = mlp
    seen = []
    got = kernel(
        empirical_ntk_fn(f, trace_axes=()),
        x1,
        None,
        params,
        tile_size=3,
        on_tile=lambda r, c: seen.append((r.start, c.start)),
    )
    # 7 is not a multiple of 3: the last tile is padded and sliced
    assert_kernel_close(got, full11)
    assert seen == [
        (0, 0),
        (0, 3),
        (0, 6),
        (3, 3),
        (3, 6),
        (6, 6),
    ]  # upper triangle only


def test_rectangular_traced_and_diagonal(mlp):
    f, params, x1, x2, _, full12 = mlp
    traced = kernel(empirical_ntk_fn(f), x1, x2, params, tile_size=2)
    assert_kernel_close(traced, np.trace(full12, axis1=2, axis2=3) / 3)
    diag = kernel(
        empirical_ntk_fn(f, trace_axes=(), diagonal_axes=(-1,)),
        x1,
        None,
        params,
        tile_size=4,
    )
    assert_kernel_close(diag, np.diagonal(mlp[4], axis1=2, axis2=3))


def test_memmap_output_and_plain_callable(mlp, tmp_path):
    f, params, x1, _, full11, _ = mlp
    ntk_fn = empirical_ntk_fn(f, trace_axes=())
    plain = lambda a, b, p: ntk_fn(a, b, p)  # no .transpose: every tile is computed
    out = np.lib.format.open_memmap(
        tmp_path / "k.npy", mode="w+", dtype=np.float32, shape=full11.shape
    )
    seen = []
    got = kernel(
        plain,
        x1,
        None,
        params,
        tile_size=4,
        output=out,
        on_tile=lambda r, c: seen.append(1),
    )
    assert got is out and len(seen) == 4
    out.flush()
    assert_kernel_close(np.load(tmp_path / "k.npy"), full11)


def test_budget_picks_tiles_and_matches(mlp):
    f, params, x1, x2, _, full12 = mlp
    seen = []
    got = kernel(empirical_ntk_fn(f, implementation="jacobian"), x1, x2, params, memory_budget_bytes=5_000,
                 strategy="tiles", on_tile=lambda r, c: seen.append(1))
    assert len(seen) > 1  # this budget holds no whole 7 x 5 Jacobian-contraction tile program
    assert_kernel_close(got, np.trace(full12, axis1=2, axis2=3) / 3)


@pytest.mark.parametrize("budget", [10, 5_000, 123_456, 10**9])
def test_tile_size_for_budget_is_the_largest_fitting(budget):
    o, p, k, item, n = 3, 51, 9, 4, 1000

    def cost(t):
        return item * (2 * t * o * p + t * t * k)

    t = tile_size_for_budget(
        n,
        outputs_per_sample=o,
        num_params=p,
        pair_size=k,
        itemsize=item,
        budget_bytes=budget,
    )
    assert t == 1 or cost(t) <= budget
    assert t == n or cost(t + 1) > budget


def test_errors(mlp):
    f, params, x1, x2, _, _ = mlp
    ntk_fn = empirical_ntk_fn(f)
    with pytest.raises(ShapeError, match="must have shape"):
        kernel(ntk_fn, x1, x2, params, tile_size=3, output=np.zeros((7, 4)))
    with pytest.raises(ShapeError, match="feature shapes differ"):
        kernel(ntk_fn, x1, x2[:, :2], params, tile_size=3)
