"""``linfit.ntk.kernel``: every strategy and output against a brute-force kernel, the planner's memory estimate
against XLA's analysis of an independently compiled tile program, and the deprecated aliases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfit.errors import ShapeError, UnknownNameError
from linfit.ntk import KernelPlan, empirical_ntk_fn, kernel, ntk_tiled, ntk_to_memmap, plan_kernel, sharded_ntk
from linfit.ntk import tile_size_for_budget
from linfit.ntk.panels import PanelGeometry, panel_ntk
from linfit.ntk.resumable import missing_tiles
from linfit.ntk.sharding import TileGeometry, sample_mesh
from tests._ntk_models import assert_kernel_close, brute_full_ntk, make

O = 3  # outputs of the test models
STRATEGY_BUDGETS = {"whole": None, "tiles": 120_000, "panels": 120_000}


@pytest.fixture(scope="module")
def cnn():
    f, params, x1, x2 = make("cnn", n1=13, n2=6)
    full = brute_full_ntk(f, params, x1, x1)
    return f, params, x1, x2, np.trace(full, axis1=2, axis2=3) / O, brute_full_ntk(f, params, x1, x2)


def peak_bytes(ntk_fn, x, params, rows, cols):
    """XLA's arguments + output + temporaries of ``ntk_fn`` on a rows x cols tile, compiled here by plain jit."""
    rows_spec = jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype)
    cols_spec = jax.ShapeDtypeStruct((cols, *x.shape[1:]), x.dtype)
    stats = jax.jit(lambda a, b, p: ntk_fn(a, b, p)).lower(rows_spec, cols_spec, params).compile().memory_analysis()
    return stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes


@pytest.mark.parametrize("strategy", ["whole", "tiles", "panels"])
def test_each_strategy_matches_brute_force(cnn, strategy):
    f, params, x1, x2, traced, full12 = cnn
    budget = STRATEGY_BUDGETS[strategy]
    plan = plan_kernel(empirical_ntk_fn(f), x1, None, params, strategy=strategy, memory_budget_bytes=budget)
    assert plan.strategy == strategy  # the budget is small enough for several tiles / panel blocks
    if strategy != "whole":
        assert plan.geometry[0] < 13, plan
    assert_kernel_close(kernel(empirical_ntk_fn(f), x1, None, params, plan=plan), traced)
    got = kernel(empirical_ntk_fn(f, trace_axes=()), x1, x2, params, strategy=strategy, memory_budget_bytes=budget)
    assert_kernel_close(got, full12)


def test_whole_is_one_tile_when_x2_is_longer_than_x1(cnn):
    """N1 = 6 rows against N2 = 13 columns: one 6 x 13 tile, not a grid of square 6 x 6 ones."""
    f, params, x1, x2, _, full12 = cnn
    ntk_fn = empirical_ntk_fn(f, trace_axes=())
    plan = plan_kernel(ntk_fn, x2, x1, params, strategy="whole")
    assert plan.strategy == "whole" and tuple(plan.geometry) == (6, 13)
    assert_kernel_close(kernel(ntk_fn, x2, x1, params, plan=plan), np.transpose(full12, (1, 0, 3, 2)))
    with pytest.raises(ShapeError, match="strategy 'whole' needs"):
        plan_kernel(ntk_fn, x2, x1, params, strategy="whole", memory_budget_bytes=10_000)


@pytest.mark.parametrize("output", ["device", "path", "consumer"])
def test_outputs(cnn, tmp_path, output):
    f, params, x1, _, traced, _ = cnn
    ntk_fn = empirical_ntk_fn(f)
    if output == "consumer":
        got = np.full((13, 13), np.nan)

        def consume(rows, cols, tile, mirrored):
            got[rows, cols] = tile
            if mirrored:
                got[cols, rows] = tile.T

        assert kernel(ntk_fn, x1, None, params, tile_size=4, output=consume) is None
    elif output == "path":
        got = kernel(ntk_fn, x1, None, params, memory_budget_bytes=120_000, output=tmp_path / "k.npy")
        assert isinstance(got, np.memmap) and missing_tiles(tmp_path / "k.npy") == 0
        got = np.load(tmp_path / "k.npy")
    else:
        got = kernel(ntk_fn, x1, None, params, memory_budget_bytes=120_000, output="device")
        assert isinstance(got, jax.Array)
        got = np.asarray(got)
    assert_kernel_close(got, traced)


def test_auto_takes_whole_then_fewer_jacobians(cnn):
    f, params, x1, _, _, _ = cnn
    assert plan_kernel(empirical_ntk_fn(f), x1, None, params).strategy == "whole"
    # a small network with many more samples than fit a tile: panels compute each Jacobian about once per panel
    assert plan_kernel(empirical_ntk_fn(f), x1, None, params, memory_budget_bytes=120_000).strategy == "panels"
    plain = lambda a, b, p: empirical_ntk_fn(f)(a, b, p)  # not an NtkFn: panels cannot read its Jacobians
    assert plan_kernel(plain, x1, None, params, memory_budget_bytes=120_000).strategy == "tiles"


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("strategy", ["tiles", "panels"])
def test_resume_after_interruption_and_restart(cnn, tmp_path, strategy):
    f, params, x1, _, traced, _ = cnn
    path, first, second = tmp_path / "k.npy", [], []

    def stop_after_three(rows, cols):
        first.append((rows.start, cols.start))
        if len(first) == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        kernel(empirical_ntk_fn(f), x1, None, params, output=path, strategy=strategy, tile_size=3,
               on_tile=stop_after_three)
    left = missing_tiles(path)
    got = kernel(empirical_ntk_fn(f), x1, None, params, output=path,
                 on_tile=lambda r, c: second.append((r.start, c.start)))
    assert left == 15 - 3 and len(second) == left and not set(first) & set(second)  # 13 = 4 blocks of 3 + 1
    assert_kernel_close(np.asarray(got), traced)
    third = []
    got = kernel(empirical_ntk_fn(f), x1, None, params, output=path, resume=False, tile_size=7,
                 on_tile=lambda r, c: third.append(1))
    assert len(third) == 3  # started over with 2 x 2 tiles of 7 (upper triangle)
    assert_kernel_close(np.asarray(got), traced)


def test_planner_estimate_holds_for_the_compiled_tile_program():
    f, params, x, _ = make("cnn", n1=96)
    ntk_fn = empirical_ntk_fn(f, implementation="jacobian")
    budget = 600_000
    plan = plan_kernel(ntk_fn, x, None, params, strategy="tiles", memory_budget_bytes=budget)
    rows, cols = plan.geometry
    measured = peak_bytes(ntk_fn, x, params, rows, cols)
    assert plan.strategy == "tiles" and plan.estimated_bytes <= budget
    assert 1 / 1.25 <= plan.estimated_bytes / measured <= 1.25, (plan, measured)
    assert measured <= 1.25 * budget
    # not wastefully small: a tile a quarter larger would not fit
    assert peak_bytes(ntk_fn, x, params, int(rows * 1.25) + 1, int(cols * 1.25) + 1) > budget
    # the analytic estimate alone (the planner before) picks a tile several times over the budget
    old = tile_size_for_budget(96, outputs_per_sample=O, num_params=ntk_fn.num_params(params), pair_size=1,
                               itemsize=4, budget_bytes=budget)
    assert peak_bytes(ntk_fn, x, params, old, old) > 1.25 * budget


def test_deprecated_aliases_warn_and_agree(cnn, tmp_path):
    f, params, x1, _, _, _ = cnn
    ntk_fn = empirical_ntk_fn(f)
    tiles = KernelPlan("tiles", TileGeometry(4, 4), None)
    want = kernel(ntk_fn, x1, None, params, plan=tiles)
    with pytest.warns(DeprecationWarning, match="linfit.ntk.kernel"):
        assert np.array_equal(ntk_tiled(ntk_fn, x1, None, params, tile_size=4), want)
    with pytest.warns(DeprecationWarning, match="linfit.ntk.kernel"):
        assert np.array_equal(sharded_ntk(ntk_fn, x1, None, params, geometry=TileGeometry(4, 4)), want)
    with pytest.warns(DeprecationWarning, match="linfit.ntk.kernel"):
        got = ntk_to_memmap(ntk_fn, x1, None, params, tmp_path / "k.npy", tile_size=4)
    assert np.array_equal(got, want)
    panels = KernelPlan("panels", PanelGeometry(4, 2), None)
    with pytest.warns(DeprecationWarning, match="linfit.ntk.kernel"):
        got = panel_ntk(ntk_fn, x1, None, params, geometry=PanelGeometry(4, 2))
    assert np.array_equal(got, kernel(ntk_fn, x1, None, params, plan=panels))


def test_errors(cnn, tmp_path):
    f, params, x1, _, _, _ = cnn
    ntk_fn = empirical_ntk_fn(f)
    with pytest.raises(UnknownNameError, match="strategy"):
        kernel(ntk_fn, x1, None, params, strategy="rows", output=tmp_path / "k.npy")
    assert not (tmp_path / "k.npy").exists()
    with pytest.raises(ShapeError, match="raise memory_budget_bytes"):
        kernel(ntk_fn, x1, None, params, strategy="tiles", memory_budget_bytes=1_000)
    with pytest.raises(ShapeError, match="device output alone"):
        kernel(ntk_fn, x1, None, params, output="device", memory_budget_bytes=13 * 13 * 4)


@pytest.mark.parametrize("tile_size", [13, 5])
def test_diagonal_tiles_take_one_set_of_samples(cnn, tile_size):
    """On one device a tile on the diagonal of a symmetric kernel is computed as ``ntk_fn(x, None, params)``
    (one set of derivatives, half the contraction), the others with both sides; the kernel is unchanged."""
    f, params, x1, _, traced, _ = cnn
    ntk_fn = empirical_ntk_fn(f, implementation="structured")
    calls = []

    def recording(a, b, p):  # traced once per compiled tile program
        calls.append(b is None)
        return ntk_fn(a, b, p)

    got = kernel(recording, x1, None, params, tile_size=tile_size, mesh=sample_mesh(jax.devices()[:1]))
    assert_kernel_close(got, traced)
    assert True in calls, calls  # (the planner also traces a one-sample pair, x2 given)
    assert tile_size == x1.shape[0] or False in calls, calls


def test_a_pytree_output_is_refused_with_a_shape_error(tmp_path):
    """The kernel of a several-headed f is a pytree, which kernel() cannot tile: a clear ShapeError (before, an
    AttributeError deep in the planner), for every output kind."""
    f = lambda p, x: {"a": jnp.tanh(x @ p["w"]) @ p["a"], "b": jnp.sin(x @ p["w"]) @ p["b"]}
    params = {"w": jnp.full((3, 4), 0.3), "a": jnp.ones((4, 2)), "b": jnp.ones((4, 5))}
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    ntk_fn = empirical_ntk_fn(f)
    assert set(ntk_fn(x, None, params)) == {"a", "b"}  # the call itself gives a kernel per head
    for output in ("host", str(tmp_path / "k.npy")):
        with pytest.raises(ShapeError, match="returns a pytree"):
            kernel(ntk_fn, x, None, params, output=output)


def test_pytree_inputs_are_refused_with_a_shape_error():
    """The call accepts a pytree of inputs; kernel() slices one leading axis and says so, instead of a
    TypeError from numpy."""
    f = lambda p, x: jnp.tanh(x["a"] @ p["w"]) + x["b"] @ p["v"]
    params = {"w": jnp.full((3, 2), 0.3), "v": jnp.ones((4, 2))}
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(5, 3)).astype(np.float32), "b": rng.normal(size=(5, 4)).astype(np.float32)}
    ntk_fn = empirical_ntk_fn(f)
    assert ntk_fn(x, None, params).shape == (5, 5)
    with pytest.raises(ShapeError, match="x1 must be one array .* call the NtkFn itself"):
        kernel(ntk_fn, x, None, params)
    with pytest.raises(ShapeError, match="x2 must be one array"):
        plan_kernel(ntk_fn, x["a"], [x["a"]], params)


def test_planning_refuses_what_kernel_refuses_for_its_shapes():
    """plan_kernel makes kernel's structural checks itself: a multi-axis mesh and x1/x2 of different feature shapes
    get the same ShapeError from both, before any tracing."""
    f = lambda p, x: jnp.tanh(x @ p["w"])
    params = {"w": jnp.full((3, 2), 0.3)}
    x = np.ones((4, 3), np.float32)
    ntk_fn = empirical_ntk_fn(f)
    two_axes = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("a", "b"))
    for call in (plan_kernel, kernel):
        with pytest.raises(ShapeError, match="one-axis mesh"):
            call(ntk_fn, x, None, params, mesh=two_axes)
        with pytest.raises(ShapeError, match="feature shapes differ"):
            call(ntk_fn, x, np.ones((4, 5), np.float32), params)
