"""Tests for linfit.models: shapes, parameter counts, pure apply functions, head replacement, subsets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfit import models
from linfit.errors import ParamsFilterError, ShapeError, UnknownNameError
from linfit.tree import leaf_paths, split_params

KEY = jax.random.PRNGKey(0)

# Feature dimension D of each registered model with default kwargs (from the architectures' definitions).
FEATURE_DIMS = {
    "small_cnn": 64,
    "cifar_resnet8": 64,
    "cifar_resnet20": 64,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "densenet121": 1024,
    "densenet169": 1664,
    "small_densenet": 48,  # 24 + 2*12 = 48 -> 24, -> 48 -> 24, -> 48
}

# torchvision's parameter counts with a 1000-way classifier (buffers excluded).
TORCHVISION_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
}


def _abstract_init(model, x):
    return jax.eval_shape(lambda k: models.init(model, k, x), KEY)


def test_registry_names_and_errors():
    assert set(FEATURE_DIMS) <= set(models.names())
    with pytest.raises(UnknownNameError, match="resnet18"):
        models.create("resnet9000", 10)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ShapeError):
            models.create("small_cnn", bad)


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_abstract_shapes_and_parameter_counts(name):
    """Shapes of every registered model on a 32x32 batch, via ``jax.eval_shape`` (nothing is compiled)."""
    model = models.create(name, 1000)
    x = jnp.zeros((2, 32, 32, 3), jnp.float32)
    variables = _abstract_init(model, x)
    phi, logits = jax.eval_shape(lambda v: (model.apply(v, x, method="features"), model.apply(v, x)), variables)
    assert phi.shape == (2, FEATURE_DIMS[name]) and phi.dtype == jnp.float32
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    assert variables["params"]["head"]["kernel"].shape == (FEATURE_DIMS[name], 1000)
    if name in TORCHVISION_COUNTS:
        count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables["params"]))
        assert count == TORCHVISION_COUNTS[name]


def _random_like(template, seed):
    """Concrete random arrays shaped like an abstract variables tree (positive for BN variances)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(rng.uniform(0.5, 1.5, l.shape), jnp.float32) for l in leaves]
    )


def test_concrete_forward_small_densenet():
    model = models.create("small_densenet", 5, growth_rate=4)
    x = jax.random.normal(KEY, (3, 8, 8, 3))
    variables = _random_like(_abstract_init(model, x), seed=0)
    logits, phi = jax.jit(lambda v: (model.apply(v, x), model.apply(v, x, method="features")))(variables)
    assert logits.shape == (3, 5)
    assert bool(jnp.all(phi >= 0)), "features are post-ReLU (global average of non-negative maps)"
    head = variables["params"]["head"]
    np.testing.assert_allclose(logits, phi @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)


def test_batch_stats_present_iff_batchnorm():
    x = jnp.zeros((1, 8, 8, 3))
    assert set(_abstract_init(models.create("small_cnn", 2, width=2), x)) == {"params"}
    assert set(_abstract_init(models.create("small_cnn", 2, width=2, batch_norm=True), x)) == {"params", "batch_stats"}
    assert set(_abstract_init(models.create("resnet18", 2), x)) == {"params", "batch_stats"}


def test_kwargs_override_and_bad_options():
    x = jnp.zeros((1, 16, 16, 3))
    variables = _abstract_init(models.create("resnet18", 10, width=8, stem="cifar"), x)
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 8)
    assert variables["params"]["head"]["kernel"].shape == (64, 10)
    for model in (
        models.create("resnet18", 2, stem="tiny"),
        models.create("resnet18", 2, block="wide"),
        models.create("densenet121", 2, stem="tiny"),
    ):
        with pytest.raises(UnknownNameError):
            _abstract_init(model, x)


def test_rejects_non_nhwc_input():
    model = models.create("small_cnn", 2, width=2)
    with pytest.raises(ShapeError):
        models.init(model, KEY, jnp.zeros((8, 8, 3)))


@pytest.fixture(scope="module")
def bn_cnn():
    """A tiny BatchNorm CNN (D = 8) with non-trivial running statistics, and a batch ``x [4, 8, 8, 3]``."""
    model = models.create("small_cnn", 3, width=4, depth=2, batch_norm=True)
    x = jax.random.normal(KEY, (4, 8, 8, 3))
    variables = models.init(model, KEY, x)
    leaves, treedef = jax.tree_util.tree_flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    stats = [jnp.abs(jax.random.normal(k, l.shape)) + 0.5 for k, l in zip(keys, leaves)]
    return model, {**variables, "batch_stats": jax.tree_util.tree_unflatten(treedef, stats)}, x


def _tree_vdot(a, b):
    return sum(float(jnp.vdot(u, v)) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_logits_fn_closes_over_batch_stats_in_eval_mode(bn_cnn):
    model, variables, x = bn_cnn
    apply_fn, params = models.logits_fn(model, variables)
    assert params is variables["params"]
    out, eval_out, train_out = jax.jit(
        lambda v: (
            apply_fn(v["params"], x),
            model.apply(v, x, train=False),
            model.apply(v, x, train=True, mutable=["batch_stats"])[0],
        )
    )(variables)
    np.testing.assert_allclose(out, eval_out, rtol=1e-6, atol=1e-6)
    assert not np.allclose(out, train_out, atol=1e-3), "apply_fn must use running statistics"
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p: jnp.sum(apply_fn(p, x) ** 2)))
    loss, grads = loss_and_grad(params)
    assert leaf_paths(grads) == leaf_paths(params)
    # the directional derivative along the gradient agrees with a central finite difference
    direction = jax.tree_util.tree_map(lambda g: g / np.sqrt(_tree_vdot(grads, grads)), grads)
    eps = 1e-3
    plus = jax.tree_util.tree_map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree_util.tree_map(lambda p, d: p - eps * d, params, direction)
    fd = (float(loss_and_grad(plus)[0]) - float(loss_and_grad(minus)[0])) / (2 * eps)
    slope = _tree_vdot(grads, direction)
    # float32 round-off of the two losses (about 20 ulps of |L| each, over 2 eps) and the O(eps^2) truncation of a
    # central difference (third derivative over first taken <= 60): about 7e-5 relative here, measured 5e-6
    rel = 20 * float(np.finfo(np.float32).eps) * abs(float(loss)) / (eps * abs(float(slope))) + 10 * eps**2
    assert fd == pytest.approx(slope, rel=rel)


def test_features_fn_ignores_head(bn_cnn):
    model, variables, x = bn_cnn
    apply_fn, params = models.features_fn(model, variables)
    phi, grads = jax.jit(lambda p: (apply_fn(p, x), jax.grad(lambda q: jnp.sum(apply_fn(q, x)))(p)))(params)
    assert phi.shape == (4, 8)
    head = params["head"]
    np.testing.assert_allclose(model.apply(variables, x), phi @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads["head"]))
    assert float(jnp.abs(grads["conv1"]["kernel"]).max()) > 0.0


def test_replace_head(bn_cnn):
    model, variables, x = bn_cnn
    phi = model.apply(variables, x, method="features")
    for init in ("zeros", "lecun_normal"):
        new_model, new_vars = models.replace_head(model, variables, 2, jax.random.PRNGKey(2), init=init)
        assert new_model.num_classes == 2
        head = new_vars["params"]["head"]
        assert head["kernel"].shape == (8, 2) and head["bias"].shape == (2,)
        assert {k: v for k, v in new_vars["params"].items() if k != "head"} == {
            k: v for k, v in variables["params"].items() if k != "head"
        }
        assert new_vars["batch_stats"] is variables["batch_stats"]
        logits = new_model.apply(new_vars, x)
        if init == "zeros":
            assert float(jnp.abs(logits).max()) == 0.0
        else:
            assert float(jnp.abs(head["kernel"]).max()) > 0.0
            np.testing.assert_allclose(logits, phi @ head["kernel"], rtol=1e-5, atol=1e-5)
    with pytest.raises(UnknownNameError):
        models.replace_head(model, variables, 3, KEY, init="ones")
    with pytest.raises(ShapeError):
        models.replace_head(model, variables, 0, KEY)


def _conv_call_order(model, variables, x):
    """Paths of the nn.Conv modules in the order the forward pass calls them (independent of the model code)."""
    order = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            order.append("/".join(context.module.scope.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v: model.apply(v, x), variables)
    return order


@pytest.mark.parametrize(
    "name, kwargs, last_block_prefixes",
    [
        ("cifar_resnet20", {"width": 4}, ("layer3/block2/", "head/")),
        ("resnet50", {"width": 4}, ("layer4/block2/", "head/")),
        ("small_densenet", {}, ("denseblock3/", "norm5/", "head/")),
        ("small_cnn", {"batch_norm": True}, ("conv3/", "bn3/", "head/")),
    ],
)
def test_param_subsets_select_intended_leaves(name, kwargs, last_block_prefixes):
    model = models.create(name, 3, **kwargs)
    x = jnp.zeros((1, 32, 32, 3))
    variables = _abstract_init(model, x)
    params = variables["params"]
    subsets = models.param_subsets(model, params)
    assert subsets["all"] is None
    all_paths = leaf_paths(params)

    def selected(key):
        sub, _ = split_params(params, subsets[key])
        return set(leaf_paths(sub))

    assert selected("head") == {"head/bias", "head/kernel"}
    assert selected("last_conv") == {_conv_call_order(model, variables, x)[-1] + "/kernel"}
    assert selected("last_block") == {p for p in all_paths if p.startswith(last_block_prefixes)}
    assert selected("all") == set(all_paths)


def test_param_subsets_reject_foreign_params():
    small = models.create("small_cnn", 2, width=2)
    params = _abstract_init(small, jnp.zeros((1, 8, 8, 3)))["params"]
    with pytest.raises(ParamsFilterError):
        models.param_subsets(models.create("resnet18", 2), params)
