"""Structured (per-layer factorised) NTK against a brute-force ``jax.jacrev`` contraction written here.

Reference: ravel the Jacobian of f with respect to the selected leaves, ``J [N, O, P]``, and form
``J1 J2ᵀ`` (full), its mean over ``o = o'`` (traced) or its ``o = o'`` entries (diagonal).
Tolerance: float32 round-off, ``rtol = 1e-4`` and ``atol = 1e-4 · max|Θ|``.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfit.errors import ParamsFilterError, ShapeError, VmapAxesError
from linfit.ntk.structured import _make_plan, per_layer_ntk_fn, structured_ntk_fn
from linfit.ntk import _contract
from linfit.ntk._contract import contract_jacobians, groups
from linfit.ntk.cost import memory_budget
from linfit.ntk.structured_contract import choose_route

# ----------------------------------------------------------------------------- brute force


def _path(path):
    return "/".join(str(getattr(e, "key", e)) for e in path)


_JACOBIANS: dict = {}


def brute_jacobian(f, params, x):
    """``(J [N, O, P], column_paths [P])``: the raveled Jacobian of ``f(params, x)`` by ``jax.jacrev``."""
    key = (id(f), id(params), id(x))
    if key not in _JACOBIANS:
        _JACOBIANS[key] = (
            _jacobian(f, params, x),
            (f, params, x),
        )  # keep the objects alive: ids stay unique
    return _JACOBIANS[key][0]


def _jacobian(f, params, x):
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in flat]
    js = jax.jit(
        jax.jacrev(lambda ls: f(jax.tree_util.tree_unflatten(treedef, ls), x))
    )(leaves)
    j = np.concatenate(
        [np.asarray(a, np.float64).reshape(a.shape[0], a.shape[1], -1) for a in js],
        axis=-1,
    )
    cols = np.concatenate([[_path(p)] * leaf.size for p, leaf in flat])
    return j, cols


def brute_ntk(f, params, x1, x2, mode, keep=lambda path: True):
    """Θ = J1 J2ᵀ over the Jacobian columns of the leaves whose path satisfies ``keep``."""
    j1, cols = brute_jacobian(f, params, x1)
    j2 = j1 if x2 is None else brute_jacobian(f, params, x2)[0]
    mask = np.array([keep(c) for c in cols])
    full = np.einsum("iap,jbp->ijab", j1[..., mask], j2[..., mask])
    if mode == "full":
        return full
    diag = np.einsum("ijaa->ija", full)
    return diag.mean(-1) if mode == "trace" else diag


AXES = {
    "full": {"trace_axes": ()},
    "trace": {"trace_axes": (-1,)},
    "diag": {"trace_axes": (), "diagonal_axes": (-1,)},
}


def assert_close(got, want):
    got = np.asarray(got)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# ----------------------------------------------------------------------------- tiny models


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(12)(x))
        x = jnp.tanh(nn.Dense(8, use_bias=False)(x))
        return nn.Dense(5, name="head")(x)


class CNN(nn.Module):
    """Strided SAME, VALID, explicit+dilated, circular and grouped (factorised per group) convs, pooling."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="SAME", name="conv1")(x))
        x = nn.relu(
            nn.Conv(6, (3, 3), padding="VALID", use_bias=False, name="conv2")(x)
        )
        x = nn.avg_pool(x, (2, 2), strides=(1, 1))
        x = nn.relu(
            nn.Conv(
                4, (2, 2), padding=((1, 2), (0, 1)), kernel_dilation=2, name="conv3"
            )(x)
        )
        x = nn.relu(
            nn.Conv(4, (3, 3), strides=(2, 1), padding="CIRCULAR", name="conv4")(x)
        )
        x = nn.Conv(4, (1, 1), feature_group_count=2, name="gconv")(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        return nn.Dense(4, name="head")(x.reshape(x.shape[0], -1))


class ResBlock(nn.Module):
    """Conv-BN-relu-Conv-BN plus a 1x1 projection shortcut; BatchNorm in eval mode."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(
            nn.BatchNorm(use_running_average=True, name="bn1")(
                nn.Conv(6, (3, 3), name="conv1")(x)
            )
        )
        h = nn.BatchNorm(use_running_average=True, name="bn2")(
            nn.Conv(6, (3, 3), use_bias=False, name="conv2")(h)
        )
        h = nn.relu(h + nn.Conv(6, (1, 1), strides=1, name="proj")(x))
        return nn.Dense(3, name="head")(h.mean(axis=(1, 2)))


class Shared(nn.Module):
    """A Dense layer called twice (weight sharing), on a [T, D] sequence input (several positions)."""

    @nn.compact
    def __call__(self, x):
        shared = nn.Dense(6, name="shared")
        h = jnp.tanh(shared(x))  # [N, 3, 6]
        h = jnp.tanh(shared(h))
        return nn.Dense(4, name="head")(h.reshape(h.shape[0], -1))


MODELS = {
    "mlp": (MLP(), (7,)),
    "cnn": (CNN(), (10, 9, 3)),
    "resblock": (ResBlock(), (6, 6, 2)),
    "shared": (Shared(), (3, 6)),
}


@functools.cache
def setup(name):
    """``(f, params, x1 [5, ...], x2 [4, ...])`` for a model of ``MODELS``; cached, so brute-force
    Jacobians are computed once per model."""
    module, shape = MODELS[name]
    k_init, k1, k2, k_stats = jax.random.split(jax.random.key(0), 4)
    x1 = jax.random.normal(k1, (5,) + shape)
    x2 = jax.random.normal(k2, (4,) + shape)
    variables = jax.jit(module.init)(k_init, x1)
    params = variables["params"]
    stats = variables.get("batch_stats")
    if stats is not None:  # non-trivial running statistics
        leaves, treedef = jax.tree_util.tree_flatten(stats)
        keys = jax.random.split(k_stats, len(leaves))
        stats = jax.tree_util.tree_unflatten(
            treedef,
            [0.5 + jax.random.uniform(k, leaf.shape) for k, leaf in zip(keys, leaves)],
        )
        params = jax.tree_util.tree_map(
            lambda p: p + 0.1 * jnp.ones_like(p), params
        )  # BN scale/bias != 1/0

        def f(p, x):
            return module.apply({"params": p, "batch_stats": stats}, x)

    else:

        def f(p, x):
            return module.apply({"params": p}, x)

    return f, params, x1, x2


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return request.param, setup(request.param)


# ----------------------------------------------------------------------------- tests


def test_full_kernel_matches_brute_force_untraced_with_x2(model):
    _, (f, params, x1, x2) = model
    got = structured_ntk_fn(f, trace_axes=())(x1, x2, params)
    assert_close(got, brute_ntk(f, params, x1, x2, "full"))


@pytest.mark.parametrize("mode", ["trace", "diag"])
def test_traced_and_diagonal_per_layer_with_x2_none(mode):
    f, params, x1, _ = setup("cnn")
    layers = per_layer_ntk_fn(f, **AXES[mode])(x1, None, params)
    # The grouped conv is factorised group by group: one key, kernel and bias together.
    assert set(layers) == {"conv1", "conv2", "conv3", "conv4", "gconv", "head"}
    want = brute_ntk(f, params, x1, None, mode)
    assert_close(sum(layers.values()), want)
    assert np.allclose(
        want, np.swapaxes(want, 0, 1)
    )  # sanity of the reference: symmetric when x2 = x1
    for key in ("conv3", "gconv"):
        keep = lambda p, k=key: p == k or p.startswith(k + "/")
        assert_close(layers[key], brute_ntk(f, params, x1, None, mode, keep=keep))


# The gradient route's contraction is shared with bias and fallback blocks (every mode is covered
# above); the gram route has one contraction per mode.
@pytest.mark.parametrize(
    ("route", "mode"),
    [("gradient", "full"), ("gram", "full"), ("gram", "trace"), ("gram", "diag")],
)
def test_both_routes_are_exact(route, mode):
    f, params, x1, x2 = setup("cnn")
    got = structured_ntk_fn(f, route=route, **AXES[mode])(x1, x2, params)
    assert_close(got, brute_ntk(f, params, x1, x2, mode))


def test_per_layer_kernels_sum_to_full_and_match_restricted_brute_force():
    f, params, x1, x2 = setup("resblock")
    layers = per_layer_ntk_fn(f, trace_axes=())(x1, x2, params)
    # Dense/Conv layers are keyed by module path, BatchNorm leaves (fallback) by leaf path.
    assert set(layers) == {
        "conv1",
        "conv2",
        "proj",
        "head",
        "bn1/scale",
        "bn1/bias",
        "bn2/scale",
        "bn2/bias",
    }
    for key, kernel in layers.items():
        want = brute_ntk(
            f,
            params,
            x1,
            x2,
            "full",
            keep=lambda p, k=key: p == k or p.startswith(k + "/"),
        )
        assert_close(kernel, want)
    total = structured_ntk_fn(f, trace_axes=())(x1, x2, params)
    assert_close(sum(layers.values()), np.asarray(total, np.float64))
    assert_close(total, brute_ntk(f, params, x1, x2, "full"))


@pytest.mark.parametrize(
    "params_filter", ["^head/", "conv2/kernel$", ["conv1/bias", "^bn2/"]]
)
def test_params_filter(params_filter):
    f, params, x1, x2 = setup("resblock")
    pats = [params_filter] if isinstance(params_filter, str) else params_filter
    keep = lambda p: any(re.search(q, p) for q in pats)
    got = structured_ntk_fn(f, trace_axes=(), params_filter=params_filter)(
        x1, x2, params
    )
    assert_close(got, brute_ntk(f, params, x1, x2, "full", keep=keep))


def test_vmap_axes_none_uses_whole_batch_jacobian():
    f, params, x1, x2 = setup("shared")
    got = structured_ntk_fn(f, vmap_axes=None, trace_axes=())(x1, x2, params)
    assert_close(got, brute_ntk(f, params, x1, x2, "full"))
    keys_none = set(per_layer_ntk_fn(f, vmap_axes=None)(x1, x2, params))
    assert keys_none == set(per_layer_ntk_fn(f)(x1, x2, params)) == {"shared", "head"}


def test_plain_jax_function_falls_back_entirely():
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    params = {"w": jax.random.normal(k1, (4, 6)), "v": jax.random.normal(k2, (6, 3))}
    x1 = jax.random.normal(k3, (5, 4))

    def f(p, x):
        return jnp.sin(x @ p["w"]) @ p["v"]

    got = per_layer_ntk_fn(f, trace_axes=())(x1, None, params)
    assert set(got) == {"w", "v"}
    assert_close(sum(got.values()), brute_ntk(f, params, x1, None, "full"))


def test_route_choice():
    # A Dense layer (one position) is cheaper as <a_i, a_j><g_i, g_j>.
    assert choose_route(64, 64, 10, s=1, k=512, c=256, mode="full") == "gram"
    # A high-resolution conv with narrow patches: per-sample gradients.
    assert choose_route(64, 64, 10, s=32 * 32, k=27, c=16, mode="full") == "gradient"


@pytest.mark.parametrize("mode", ["full", "trace", "diag"])
@pytest.mark.parametrize("n", [11, 200])  # 200: 3 symmetric row blocks when an output axis is kept
def test_block_contraction_against_numpy(mode, n, monkeypatch):
    # Leaf blocks of uneven sizes, a cap of 20 parameters per group: the large ones are contracted alone, the
    # small ones in groups.
    rng = np.random.default_rng(0)
    sizes = [1, 50, 2, 3, 40, 1, 9]
    d = [rng.normal(size=(n, 3, p)).astype(np.float32) for p in sizes]
    cap = 20 * n * 3 * 4
    monkeypatch.setattr(_contract, "GROUP_BUDGET_SHARE", cap / memory_budget())
    assert groups([p * n * 3 * 4 for p in sizes]) == [[0], [1], [2, 3], [4], [5, 6]]
    e = [rng.normal(size=(5, 3, p)).astype(np.float32) for p in sizes]
    trace, diag = {"full": ((), ()), "trace": ((1,), ()), "diag": ((), (1,))}[mode]

    def want(a, b):
        full = np.einsum("iap,jbp->ijab", np.concatenate(a, -1).astype(np.float64), np.concatenate(b, -1))
        return {"full": full, "trace": np.einsum("ijaa->ij", full) / 3, "diag": np.einsum("ijaa->ija", full)}[mode]

    blocks = [jnp.asarray(a) for a in d]
    assert_close(contract_jacobians(blocks, None, (n, 3), trace, diag), want(d, d))
    assert_close(contract_jacobians(blocks, [jnp.asarray(a) for a in e], (n, 3), trace, diag), want(d, e))


def test_errors():
    f, params, x1, x2 = setup("mlp")
    with pytest.raises(ShapeError):
        structured_ntk_fn(f, trace_axes=(0,))
    with pytest.raises(ShapeError):
        structured_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(-1,))
    with pytest.raises(VmapAxesError):
        structured_ntk_fn(f, vmap_axes=1)
    with pytest.raises(ShapeError):
        structured_ntk_fn(f)(x1, x2[:, :3], params)
    with pytest.raises(ShapeError):
        structured_ntk_fn(lambda p, x: f(p, x)[:, 0])(x1, None, params)
    with pytest.raises(ParamsFilterError):
        structured_ntk_fn(f, params_filter="^nothing$")(x1, None, params)


# ----------------------------------------------------------------------------- catalogue of building blocks
#
# Every block is compared, traced and untraced, with the brute-force jacrev kernel above, for the summed
# structured kernel and for the sum of the per-layer kernels. Tolerance (assert_close): both sides are
# float32 computations of the same derivatives; a kernel entry sums at most P ~ 10^3 products, each
# rounded at 2^-24 ~ 6e-8, so the accumulated difference stays below ~6e-5 max|Θ| even with every rounding
# in one direction -> atol 1e-4 max|Θ|, rtol 1e-4. An unrecognised use of a parameter (the faults these
# tests guard against) moves the kernel by tens of percent.


class Tied(nn.Module):
    """Autoencoder with tied weights: the encoder's kernel is read again, directly, by the decoder."""

    @nn.compact
    def __call__(self, x):
        enc = nn.Dense(3, name="enc")
        h = jnp.tanh(enc(x))
        return h @ enc.variables["params"]["kernel"].T


class _Cell(nn.Module):
    @nn.compact
    def __call__(self, c, x):
        h = jnp.tanh(nn.Dense(4, name="ih")(x) + nn.Dense(4, use_bias=False, name="hh")(c))
        return h, h


class ScanRNN(nn.Module):
    @nn.compact
    def __call__(self, x):  # [N, T, D]
        scan = nn.scan(_Cell, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
        c, _ = scan(name="rnn")(jnp.zeros((x.shape[0], 4)), x)
        return nn.Dense(3, name="head")(c)


class Remat(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.remat(nn.Dense)(5, name="inner")(x)
        return nn.Dense(3, name="head")(jnp.tanh(h))


class VmapDense(nn.Module):
    @nn.compact
    def __call__(self, x):  # [N, T, D]
        per_step = nn.vmap(
            nn.Dense, in_axes=1, out_axes=1, variable_axes={"params": None}, split_rngs={"params": False}
        )
        h = jnp.tanh(per_step(5, name="step")(x))
        return nn.Dense(3, name="head")(h.reshape(h.shape[0], -1))


class EmbedAttend(nn.Module):
    """Token embedding whose table is reused as the output projection (``attend``)."""

    @nn.compact
    def __call__(self, tokens):  # int [N, T]
        embed = nn.Embed(7, 4, name="embed")
        h = jnp.tanh(nn.Dense(4, name="mix")(embed(tokens).mean(axis=1)))
        return embed.attend(h)


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):  # [N, T, D]
        h = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, name="attn")(x)
        h = nn.LayerNorm(name="ln")(h + x)
        h = nn.Dense(4, name="mlp")(h)  # Dense on [N, T, D]
        return nn.Dense(3, name="head")(jnp.tanh(h).mean(axis=1))


class Convs(nn.Module):
    """Strided, dilated, depthwise and grouped convolutions, GroupNorm, average and max pooling."""

    @nn.compact
    def __call__(self, x):  # [N, H, W, C]
        h = nn.Conv(4, (3, 3), strides=2, name="strided")(x)
        h = nn.GroupNorm(num_groups=2, name="gn")(h)
        h = nn.Conv(4, (3, 3), feature_group_count=4, name="depthwise")(jnp.tanh(h))
        h = nn.Conv(4, (3, 3), kernel_dilation=2, padding="SAME", name="dilated")(h)
        h = nn.avg_pool(h, (2, 2), strides=(1, 1))
        h = nn.Conv(6, (2, 2), feature_group_count=2, name="grouped")(jnp.tanh(h))
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
        return nn.Dense(3, name="head")(h.reshape(h.shape[0], -1))


CATALOGUE = {
    "tied": (Tied(), (5,), "float"),
    "scan": (ScanRNN(), (3, 2), "float"),
    "remat": (Remat(), (4,), "float"),
    "vmap": (VmapDense(), (3, 2), "float"),
    "embed_attend": (EmbedAttend(), (3,), "tokens"),
    "attention": (Attention(), (3, 4), "float"),
    "convs": (Convs(), (9, 9, 3), "float"),
}


@functools.cache
def catalogue_setup(name):
    module, shape, kind = CATALOGUE[name]
    k_init, k1, k2 = jax.random.split(jax.random.key(1), 3)
    if kind == "tokens":
        x1, x2 = (jax.random.randint(k, (n,) + shape, 0, 7) for k, n in ((k1, 5), (k2, 4)))
    else:
        x1, x2 = (jax.random.normal(k, (n,) + shape) for k, n in ((k1, 5), (k2, 4)))
    params = jax.jit(module.init)(k_init, x1)["params"]
    return (lambda p, x: module.apply({"params": p}, x)), params, x1, x2


@pytest.mark.parametrize("mode", ["full", "trace"])
@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_matches_brute_force(name, mode):
    f, params, x1, x2 = catalogue_setup(name)
    want = brute_ntk(f, params, x1, x2, mode)
    assert_close(structured_ntk_fn(f, **AXES[mode])(x1, x2, params), want)
    layers = per_layer_ntk_fn(f, **AXES[mode])(x1, x2, params)
    assert_close(sum(layers.values()), want)


def test_tied_weights_fall_back_per_leaf():
    """The tied kernel is differentiated by Jacobian contraction; the layer's bias stays factorised, and
    the per-layer kernel of the layer is still the brute-force block of its two leaves."""
    f, params, x1, x2 = catalogue_setup("tied")
    plan = _make_plan(f, params, x1, 5, 4, "full", None, 0, "auto")
    assert plan.fallback == {"enc/kernel"} and plan.bias_keys == {"enc"} and not plan.kernel_route
    layers = per_layer_ntk_fn(f, trace_axes=())(x1, x2, params)
    assert set(layers) == {"enc"}
    assert_close(layers["enc"], brute_ntk(f, params, x1, x2, "full"))


@pytest.mark.parametrize(
    ("name", "factorised"),
    [
        ("scan", {"head"}),  # the cell's layers run inside nn.scan
        ("remat", {"head"}),
        ("vmap", {"head"}),
        ("embed_attend", {"mix"}),
        ("attention", {"mlp", "head"}),  # attention projections are DenseGeneral
        ("convs", {"strided", "depthwise", "dilated", "grouped", "head"}),
    ],
)
def test_catalogue_factorised_layers(name, factorised):
    f, params, x1, _ = catalogue_setup(name)
    plan = _make_plan(f, params, x1, 5, 4, "full", None, 0, "auto")
    assert set(plan.kernel_route) == factorised


@pytest.mark.parametrize("conv", [
    dict(features=3, kernel_size=(3, 3), padding="SAME"),
    dict(features=3, kernel_size=(3, 3), strides=2, padding="SAME"),
    dict(features=3, kernel_size=(2, 3), strides=(2, 1), padding="VALID"),
    dict(features=3, kernel_size=(2, 2), padding=((1, 2), (0, 1)), kernel_dilation=2),
    dict(features=3, kernel_size=(3, 3), padding=((-1, 2), (1, -1))),
    dict(features=3, kernel_size=(3, 3), strides=(2, 1), padding="CIRCULAR"),
    dict(features=3, kernel_size=(1, 1)),
    dict(features=3, kernel_size=(1, 1), strides=2),
    dict(features=3, kernel_size=(4, 4), strides=3, kernel_dilation=(1, 2), padding="SAME"),
    dict(features=3, kernel_size=(3, 3), input_dilation=2, padding=((1, 1), (2, 0))),
    dict(features=3, kernel_size=(3,), strides=2, padding="SAME"),
    dict(features=3, kernel_size=(3,), kernel_dilation=2, padding="CAUSAL"),
    dict(features=3, kernel_size=(2, 3, 2), strides=(1, 2, 1), padding="SAME"),
])
def test_conv_patches_reproduce_the_convolution(conv):
    """Each call's patches P [B, S, K] times the flattened kernel [K, C] (channel-major rows) is nn.Conv's output,
    for every padding, stride, dilation and dimensionality the factorisation accepts."""
    from linfit.ntk.structured_layers import conv_patches

    dims = len(conv["kernel_size"])
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *(9, 8, 7)[:dims], 4))
    module = nn.Conv(**conv)
    variables = module.init(jax.random.PRNGKey(1), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    expected = module.apply(variables, x) - bias
    rows = jnp.moveaxis(kernel, -2, 0).reshape(-1, kernel.shape[-1])  # [C_in * prod(kernel_size), C]
    got = conv_patches(module, x) @ rows
    np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=1e-5, atol=1e-5)
