import functools
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfit.errors import (
    NonFiniteError,
    ParamsFilterError,
    ShapeError,
    TreeMismatchError,
    UnknownNameError,
    VmapAxesError,
)
from linfit.ntk import empirical_ntk_fn, ntk_vp_fn
from tests._ntk_models import (
    assert_kernel_close,
    bn_train_fn,
    brute_full_ntk,
    brute_jacobians,
    full_ntk,
    leaf_columns,
    make,
)

IMPLS = ["jacobian", "products"]


@functools.cache
def setup(name):
    """``(f, params, x1 [5, ...], x2 [3, ...], (J1, J2))`` with brute-force Jacobians ``[N, O, P]``."""
    f, params, x1, x2 = make(name)
    return f, params, x1, x2, brute_jacobians(f, params, x1, x2)


@pytest.fixture(scope="module", params=["mlp", "cnn", "resbn"])
def model(request):
    return setup(request.param)


@pytest.mark.parametrize("impl", IMPLS)
def test_untraced_matches_bruteforce(model, impl):
    f, params, x1, x2, jacs = model
    full = full_ntk(*jacs)  # [N1, N2, O, O]
    got = empirical_ntk_fn(f, trace_axes=(), implementation=impl)(x1, x2, params)
    assert got.shape == full.shape
    assert_kernel_close(got, full)


@pytest.mark.parametrize("impl", IMPLS)
def test_traced_and_diagonal_match_bruteforce(impl):
    f, params, x1, x2, jacs = setup("mlp")
    full = full_ntk(*jacs)
    traced = empirical_ntk_fn(f, implementation=impl)(x1, x2, params)
    diagonal = empirical_ntk_fn(
        f, trace_axes=(), diagonal_axes=(-1,), implementation=impl
    )(x1, x2, params)
    assert traced.shape == (5, 3) and diagonal.shape == (5, 3, 3)
    # a traced axis is averaged: trace / O
    assert_kernel_close(traced, np.trace(full, axis1=2, axis2=3) / 3)
    assert_kernel_close(diagonal, np.diagonal(full, axis1=2, axis2=3))
    # an int names one axis, as in neural-tangents
    as_int = empirical_ntk_fn(f, trace_axes=(), diagonal_axes=-1, implementation=impl)(x1, x2, params)
    assert_kernel_close(as_int, np.diagonal(full, axis1=2, axis2=3))
    assert_kernel_close(empirical_ntk_fn(f, trace_axes=-1, implementation=impl)(x1, x2, params), traced)


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_axes_none_matches(impl):
    f, params, x1, x2 = make("mlp", n1=3, n2=2)
    got = empirical_ntk_fn(f, trace_axes=(), vmap_axes=None, implementation=impl)(
        x1, x2, params
    )
    assert_kernel_close(got, brute_full_ntk(f, params, x1, x2))


@pytest.mark.parametrize("impl", IMPLS)
def test_x2_none_is_x1(impl):
    f, params, x1, _ = make("mlp")
    ntk_fn = empirical_ntk_fn(f, trace_axes=(), implementation=impl)
    want = brute_full_ntk(f, params, x1, x1)
    assert_kernel_close(ntk_fn(x1, None, params), want)
    assert_kernel_close(ntk_fn(x1, x1, params), want)


@pytest.mark.parametrize("impl", IMPLS)
def test_params_filter_head_only(impl):
    f, params, x1, x2, jacs = setup("mlp")
    want = full_ntk(*jacs, leaf_columns(params, "Dense_1/bias", "Dense_1/kernel"))
    got = empirical_ntk_fn(
        f, trace_axes=(), implementation=impl, params_filter="^Dense_1/"
    )(x1, x2, params)
    assert_kernel_close(got, want)


@pytest.mark.parametrize("impl", IMPLS)
def test_params_filter_one_conv_kernel(impl):
    f, params, x1, x2, jacs = setup("cnn")
    want = full_ntk(*jacs, leaf_columns(params, "Conv_1/kernel"))
    got = empirical_ntk_fn(f, implementation=impl, params_filter="Conv_1/kernel$")(
        x1, x2, params
    )
    assert_kernel_close(got, np.trace(want, axis1=2, axis2=3) / want.shape[-1])


def test_ntk_vp_matches_dense_kernel_times_v(model):
    f, params, x1, x2, jacs = model
    full = full_ntk(*jacs)
    v = jax.random.normal(jax.random.PRNGKey(5), (x2.shape[0], full.shape[-1]))
    got = ntk_vp_fn(f, params, x1, x2)(v)
    want = np.einsum("nmoq,mq->no", full, np.asarray(v, np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_ntk_vp_symmetric_with_filter():
    f, params, x1, _ = make("mlp")
    (j,) = brute_jacobians(f, params, x1)
    full = full_ntk(j, j, leaf_columns(params, "Dense_1/bias", "Dense_1/kernel"))
    v = jax.random.normal(jax.random.PRNGKey(6), (x1.shape[0], 3))
    got = ntk_vp_fn(f, params, x1, params_filter="Dense_1")(v)
    np.testing.assert_allclose(
        got,
        np.einsum("nmoq,mq->no", full, v),
        rtol=1e-4,
        atol=1e-5 * np.abs(full).max(),
    )
    with pytest.raises(ShapeError, match="shaped like"):
        ntk_vp_fn(f, params, x1)(v[:, :2])


def test_transpose_gives_swapped_kernel():
    f, params, x1, x2 = make("mlp", n1=4, n2=4)
    for kwargs in ({"trace_axes": ()}, {"trace_axes": (), "diagonal_axes": (-1,)}, {}):
        ntk_fn = empirical_ntk_fn(f, **kwargs)
        assert_kernel_close(
            ntk_fn.transpose(ntk_fn(x1, x2, params)), ntk_fn(x2, x1, params)
        )


def test_vmap_axes_error_with_batchnorm_train_mode():
    f, params, x = bn_train_fn()
    with pytest.raises(VmapAxesError, match="vmap_axes=None"):
        empirical_ntk_fn(f, vmap_axes=0)(x, None, params)
    # the interacting model is handled with vmap_axes=None: Jacobians of the whole batch
    got = empirical_ntk_fn(f, trace_axes=(), vmap_axes=None)(x, None, params)
    assert_kernel_close(got, brute_full_ntk(f, params, x, x))


def test_structured_dispatch_is_lazy(monkeypatch):
    calls = {}

    def unchecked_structured_ntk_fn(f, **kwargs):
        calls.update(kwargs)
        return lambda x1, x2, params: jnp.full(
            (x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0]), 7.0
        )

    monkeypatch.setitem(
        sys.modules,
        "linfit.ntk.structured",
        types.SimpleNamespace(unchecked_structured_ntk_fn=unchecked_structured_ntk_fn),
    )
    f, params, x1, x2, _ = setup("mlp")
    ntk_fn = empirical_ntk_fn(
        f,
        trace_axes=(),
        diagonal_axes=(-1,),
        implementation="structured",
        params_filter="Dense_1",
    )
    assert not calls  # imported on first use only
    np.testing.assert_array_equal(ntk_fn(x1, x2, params), np.full((5, 3), 7.0))
    assert calls == {
        "trace_axes": (),
        "diagonal_axes": (-1,),
        "vmap_axes": 0,
        "params_filter": "Dense_1",
    }


def test_errors():
    f, params, x1, x2, _ = setup("mlp")
    ntk_fn = empirical_ntk_fn(f)
    with pytest.raises(ShapeError, match="feature shapes differ"):
        ntk_fn(x1, jnp.ones((2, 7)), params)
    missing = {"Dense_0": params["Dense_0"]}
    with pytest.raises(TreeMismatchError, match="does not match"):
        ntk_fn(x1, x2, missing)
    misshaped = {**params, "Dense_1": {**params["Dense_1"], "kernel": jnp.ones((4, 3))}}
    with pytest.raises(TreeMismatchError):
        ntk_fn(x1, x2, misshaped)
    with pytest.raises(ParamsFilterError, match="selects no parameter"):
        empirical_ntk_fn(f, params_filter="^nothing$")(x1, x2, params)
    with pytest.raises(ParamsFilterError, match="not a valid regular expression"):  # re.error before
        empirical_ntk_fn(f, params_filter=["^head/", "Dense_(0"])
    with pytest.raises(ShapeError, match="batch axis"):
        empirical_ntk_fn(f, trace_axes=(0,))(x1, x2, params)
    with pytest.raises(ShapeError, match="both traced and diagonal"):
        empirical_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(1,))(x1, x2, params)
    with pytest.raises(UnknownNameError, match="jacobian"):
        empirical_ntk_fn(f, implementation="fast")
    with pytest.raises(VmapAxesError):
        empirical_ntk_fn(f, vmap_axes=1)


class DenseBNTrain(nn.Module):
    """Dense -> BatchNorm in train mode -> Dense: samples interact through the batch statistics."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(6)(x)
        x = nn.BatchNorm(use_running_average=False)(x)
        return nn.Dense(2)(x)


def _bn_train_with_duplicates():
    module = DenseBNTrain()
    x = jax.random.normal(jax.random.PRNGKey(7), (5, 3))
    x = x.at[1].set(x[0])  # the first two samples coincide
    variables = module.init(jax.random.PRNGKey(8), x)

    def f(p, x):
        return module.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                            mutable=["batch_stats"])[0]

    return f, variables["params"], x


@pytest.mark.parametrize("impl", ["jacobian", "products", "structured", "auto"])
def test_vmap_axes_error_does_not_depend_on_distinct_first_samples(impl):
    f, params, x = _bn_train_with_duplicates()
    with pytest.raises(VmapAxesError, match="vmap_axes=None"):
        empirical_ntk_fn(f, implementation=impl)(x, None, params)
    # every sample equal: batched and single values coincide, the derivative w.r.t. the others does not
    same = jnp.broadcast_to(x[:1], x.shape)
    with pytest.raises(VmapAxesError):
        empirical_ntk_fn(f, implementation=impl)(same, None, params)
    got = empirical_ntk_fn(f, trace_axes=(), vmap_axes=None)(x, None, params)
    assert_kernel_close(got, brute_full_ntk(f, params, x, x))


def test_vmap_axes_error_integer_inputs_with_duplicates():
    """Token inputs (no input derivative): the probe searches distinct samples beyond the first two."""

    class CenteredEmbed(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            e = nn.Embed(5, 4)(tokens).mean(axis=1)
            return nn.Dense(2)(e - e.mean(axis=0))  # batch centring: samples interact

    module = CenteredEmbed()
    tokens = jnp.array([[1, 2], [1, 2], [1, 2], [3, 4], [0, 2]])
    params = module.init(jax.random.PRNGKey(0), tokens)["params"]
    f = lambda p, x: module.apply({"params": p}, x)
    with pytest.raises(VmapAxesError):
        empirical_ntk_fn(f)(tokens, None, params)


def test_round_off_at_a_relu_kink_is_not_taken_for_interaction():
    """Samples independent in exact arithmetic, whose batched evaluation rounds differently from the one-sample one
    at a ReLU kink (the failure seen on MobileNetV2): ``(h + S) - S`` with ``S`` the batch sum is ``h`` exactly, but
    in float32 the batch's ``S ≈ 1`` absorbs sample 0's ``h = 1e-9``, so its ReLU sits on the kink (derivative 0)
    batched and not alone (derivative 1). The values differ by round-off only, the other samples' derivatives with
    respect to sample 0's input are exactly 0, so the probe must pass."""

    def f(p, x):
        h = x * p["a"]
        s = h.sum(axis=0)
        return jax.nn.relu((h + s) - s) @ p["w"]

    params = {"a": jnp.ones((1,)), "w": jnp.array([[1.0, -2.0]])}
    x = jnp.array([[1e-9], [0.25], [0.5], [0.25 + 2**-20]])
    # the premise: the derivative in a parameter direction differs, batched against alone, on sample 0
    tangent = {"a": jnp.ones((1,)), "w": jnp.zeros((1, 2))}
    batched = jax.jvp(lambda p: f(p, x), (params,), (tangent,))[1][0]
    alone = jax.jvp(lambda p: f(p, x[:1]), (params,), (tangent,))[1][0]
    assert np.all(batched == 0) and np.all(alone != 0)
    got = empirical_ntk_fn(f, trace_axes=())(x, None, params)
    # in exact arithmetic f_i = relu(x_i a) w with every x_i a > 0: ∂f_io/∂a = x_i w_o, ∂f_io/∂w_o' = x_i a δ_oo', so
    # Θ[i, j] = x_i x_j (w wᵀ + a² I), sample 0 included (its derivative alone is 1, not the batched kink's 0);
    # products of exactly representable float32 numbers: round-off of a few ulps
    w = np.asarray(params["w"], np.float64)[0]
    xs = np.asarray(x, np.float64)[:, 0]
    expected = np.einsum("i,j,op->ijop", xs, xs, np.outer(w, w) + np.eye(2))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_independent_model_passes_with_duplicates():
    f, params, x1, _ = make("mlp")
    x = x1.at[1].set(x1[0])
    got = empirical_ntk_fn(f, trace_axes=())(x, None, params)
    assert_kernel_close(got, brute_full_ntk(f, params, x, x))


@pytest.mark.parametrize("impl", ["jacobian", "products", "structured"])
def test_non_finite_inputs_are_named(impl):
    f, params, x1, x2 = make("mlp")
    ntk_fn = empirical_ntk_fn(f, implementation=impl)
    with pytest.raises(NonFiniteError, match="^x1 "):
        ntk_fn(x1.at[2, 1].set(jnp.nan), x2, params)
    with pytest.raises(NonFiniteError, match="^x2 "):
        ntk_fn(x1, x2.at[0, 0].set(jnp.inf), params)
    bad = {**params, "Dense_1": {**params["Dense_1"], "bias": params["Dense_1"]["bias"].at[0].set(jnp.nan)}}
    with pytest.raises(NonFiniteError, match="params leaf 'Dense_1/bias'"):
        ntk_fn(x1, x2, bad)
    # traced use is unchanged: no check on tracers, the NaN propagates
    traced = jax.jit(lambda a, p: ntk_fn(a, None, p))(x1.at[0, 0].set(jnp.nan), params)
    assert np.isnan(np.asarray(traced)[0]).all()
    assert_kernel_close(jax.jit(lambda a, p: ntk_fn(a, None, p))(x1, params),
                        np.trace(brute_full_ntk(f, params, x1, x1), axis1=2, axis2=3) / 3)


@pytest.mark.parametrize("impl", ["jacobian", "structured"])
def test_extra_and_missing_leaves(impl):
    f, params, x1, x2 = make("mlp")
    ntk_fn = empirical_ntk_fn(f, implementation=impl)
    extra = {**params, "Dense_2": {"kernel": jnp.ones((3, 3))}}
    with pytest.raises(TreeMismatchError, match="Dense_2/kernel"):
        ntk_fn(x1, x2, extra)
    # an unread leaf outside the selection is no error (e.g. a head the feature map does not use)
    got = empirical_ntk_fn(f, trace_axes=(), implementation=impl, params_filter="^Dense_[01]/")(x1, x2, extra)
    assert_kernel_close(got, brute_full_ntk(f, params, x1, x2))
    missing = {"Dense_0": params["Dense_0"], "Dense_1": {"kernel": params["Dense_1"]["kernel"]}}
    with pytest.raises(TreeMismatchError, match="does not match"):
        ntk_fn(x1, x2, missing)


@pytest.mark.parametrize("n", [150, 259])
def test_jacobian_x2_none_in_symmetric_blocks_matches_brute_force(n):
    """x2=None above 128 samples contracts only the upper row blocks of J (2 blocks at 150, 4 uneven ones
    at 259) and mirrors the rest: every layout must still equal J J^T."""
    f, params, x1, _ = make("mlp", n1=n)
    (j,) = brute_jacobians(f, params, x1)
    want = full_ntk(j, j)
    for kwargs, expect in (
        ({"trace_axes": ()}, want),
        ({}, np.trace(want, axis1=2, axis2=3) / want.shape[-1]),
        ({"trace_axes": (), "diagonal_axes": (-1,)}, np.einsum("nmoo->nmo", want)),
    ):
        got = empirical_ntk_fn(f, implementation="jacobian", **kwargs)(x1, None, params)
        assert_kernel_close(got, expect)


def test_mismatch_message_counts_every_kind_and_names_the_first_few():
    """A tree of another width: every leaf mis-shaped, the message counts them and names MISMATCH_SHOWN of them."""
    from linfit.tree import MISMATCH_SHOWN, check_same_structure

    reference = {f"Dense_{i}": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)} for i in range(6)}
    wider = {f"Dense_{i}": {"kernel": jnp.ones((3, 5)), "bias": jnp.ones(5)} for i in range(6)}
    wider["extra"] = jnp.ones(2)
    del wider["Dense_5"]["bias"]
    with pytest.raises(TreeMismatchError) as err:
        check_same_structure(reference, wider, what="variables in w.msgpack")
    message = str(err.value)
    assert message.startswith("variables in w.msgpack do not match the expected 12 leaves: 1 missing (Dense_5/bias); "
                              "1 unexpected (extra); 11 mis-shaped (Dense_0/bias: (5,) instead of (3,), ")
    assert message.count("instead of") == MISMATCH_SHOWN and ", …)" in message
