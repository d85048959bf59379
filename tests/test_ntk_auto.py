"""``implementation="auto"`` (the cost model of ``linfit.ntk.cost``), the input checks running once per
signature, and pytree inputs/outputs, each implementation against a brute-force ``jax.jacrev`` contraction."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfit import models
from linfit.ntk import empirical, empirical_ntk_fn, structured
from linfit.ntk.cost import backward_cost, forward_cost
from tests._ntk_models import assert_kernel_close, brute_full_ntk


class ConvDense(nn.Module):
    """5x5 conv (16) -> 2x2 max pool -> Dense(256) -> Dense(10): 806,858 parameters on 32x32x3 inputs."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), strides=(2, 2))
        return nn.Dense(10)(nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1))))


class TinyMLP(nn.Module):
    """2 -> 16 -> 1: 65 parameters."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(16)(x)))


def _flax(module, shape):
    params = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))["params"]
    params = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.01, s.dtype), params)
    return (lambda p, x: module.apply({"params": p}, x)), params


def test_auto_picks_structured_for_conv_dense():
    """806k parameters (803k in the Dense(256) layer), 10 logits, untraced, N = 256. The Dense layers factorise
    into input and cotangent Grams (N² (K + O² C) multiply-adds) while the Jacobian contraction costs
    N² O² P = 5.3e12; measured on the 2-core CPU: structured 0.34 s, jacobian 49 s, products 50 s."""
    f, params = _flax(ConvDense(), (32, 32, 3))
    assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == 806_858
    ntk_fn = empirical_ntk_fn(f, trace_axes=())
    x = jnp.zeros((256, 32, 32, 3))
    assert ntk_fn.resolve_auto(x, None, params) == "structured"
    costs = ntk_fn.costs(x, None, params)
    assert costs["structured"].macs * 50 < min(costs["jacobian"].macs, costs["products"].macs)


def test_auto_picks_products_for_a_plain_wide_mlp_with_many_outputs():
    """A plain jnp MLP 32 -> 512 -> 50 (42k parameters, each used once per sample: forward F ≈ P), untraced,
    N = 32: Jacobian contraction N² O² P ≈ 1.1e11 against products' 2 N² O F ≈ 4.3e9; structured has no
    Flax layer to factorise (it would be a Jacobian contraction with bookkeeping on top), so it is not a
    candidate. Measured: products 0.44 s, jacobian 8.2 s, structured 8.9 s."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"w1": jax.random.normal(k1, (32, 512)) / 6, "w2": jax.random.normal(k2, (512, 50)) / 23}
    f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
    x = jnp.zeros((32, 32))
    ntk_fn = empirical_ntk_fn(f, trace_axes=())
    assert ntk_fn.resolve_auto(x, None, params) == "products"
    costs = ntk_fn.costs(x, None, params)
    assert "structured" not in costs
    assert costs["products"].macs * 5 < costs["jacobian"].macs


def test_auto_for_a_tiny_mlp_at_large_n():
    """65 parameters, 1 output, traced, N = 4096: every implementation is dominated by N² kernel-sized work.
    Structured (its gradient route for both Dense layers: one contraction over the 65 per-sample parameter
    gradients) writes the N² kernel once, like the Jacobian contraction, but symmetric blocks skip 28 of 64
    products; products runs N forward-mode passes over the batch. Measured: structured 0.39 s, jacobian
    0.50 s, products 1.8 s. The Gram route, chosen on FLOPs alone, would write three 4096² intermediates per
    layer (4.4 s): the model charges their memory traffic."""
    f, params = _flax(TinyMLP(), (2,))
    x = jnp.zeros((4096, 2))
    ntk_fn = empirical_ntk_fn(f)
    assert ntk_fn.resolve_auto(x, None, params) == "structured"
    costs = ntk_fn.costs(x, None, params)
    assert costs["structured"].macs < costs["jacobian"].macs < costs["products"].macs


def test_auto_respects_the_memory_budget(monkeypatch):
    f, params = _flax(ConvDense(), (32, 32, 3))
    ntk_fn = empirical_ntk_fn(f, trace_axes=())
    x = jnp.zeros((256, 32, 32, 3))
    costs = ntk_fn.costs(x, None, params)
    monkeypatch.setattr(empirical, "memory_budget", lambda: costs["structured"].peak_bytes - 1)
    smallest = min(costs, key=lambda name: costs[name].peak_bytes)
    fitting = [n for n in costs if costs[n].peak_bytes <= costs["structured"].peak_bytes - 1]
    expected = min(fitting, key=lambda n: costs[n].macs) if fitting else smallest
    assert expected != "structured"
    assert empirical_ntk_fn(f, trace_axes=()).resolve_auto(x, None, params) == expected


def test_auto_is_exact_and_is_the_default():
    f, params = _flax(TinyMLP(), (2,))
    params = jax.tree_util.tree_map(
        lambda a: jax.random.normal(jax.random.PRNGKey(a.size), a.shape), params
    )
    x1 = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    ntk_fn = empirical_ntk_fn(f, trace_axes=())
    assert ntk_fn.implementation == "auto"
    assert_kernel_close(ntk_fn(x1, x2, params), brute_full_ntk(f, params, x1, x2))


def test_structured_checks_run_once_per_signature(monkeypatch):
    f, params = _flax(TinyMLP(), (2,))
    calls = {"tree": 0, "independent": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    for module in (empirical, structured):
        monkeypatch.setattr(module, "check_tree", counting("tree", module.check_tree))
        monkeypatch.setattr(module, "check_independent", counting("independent", module.check_independent))
    ntk_fn = empirical_ntk_fn(f, implementation="structured")
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
    for n in (5, 5, 3):  # same signature (per-sample shapes), three calls
        ntk_fn(x[:n], None, params)
    assert calls == {"tree": 1, "independent": 1}


class Heads(nn.Module):
    """Pytree input ``{"img": [N, 6, 6, 3], "meta": [N, 4]}``; pytree output ``{"aux": ([N, 2],), "cls": [N, 3]}``."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3))(x["img"])).mean(axis=(1, 2))
        h = nn.tanh(nn.Dense(8)(jnp.concatenate([h, x["meta"]], axis=-1)))
        return {"cls": nn.Dense(3)(h), "aux": (nn.Dense(2, name="aux_head")(h),)}


@pytest.fixture(scope="module")
def heads():
    module = Heads()
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    x1 = {"img": jax.random.normal(keys[0], (5, 6, 6, 3)), "meta": jax.random.normal(keys[1], (5, 4))}
    x2 = {"img": jax.random.normal(keys[2], (3, 6, 6, 3)), "meta": jax.random.normal(keys[3], (3, 4))}
    params = jax.jit(module.init)(jax.random.PRNGKey(4), x1)["params"]
    f = lambda p, x: module.apply({"params": p}, x)
    leaf = {
        "cls": lambda p, x: f(p, x)["cls"],
        "aux": lambda p, x: f(p, x)["aux"][0],
    }
    want = {name: brute_full_ntk(g, params, x1, x2) for name, g in leaf.items()}  # [N1, N2, O, O]
    return f, params, x1, x2, want


@pytest.mark.parametrize("impl", ["jacobian", "products", "structured", "auto"])
def test_pytree_inputs_and_outputs_match_bruteforce(heads, impl):
    """One kernel per output leaf, in the output's structure, with no cross-terms between leaves (the
    neural-tangents semantics); each against a whole-batch ``jax.jacrev`` contraction of that leaf alone."""
    f, params, x1, x2, want = heads
    full = empirical_ntk_fn(f, trace_axes=(), implementation=impl)(x1, x2, params)
    assert jax.tree_util.tree_structure(full) == jax.tree_util.tree_structure({"aux": (0,), "cls": 0})
    assert_kernel_close(full["cls"], want["cls"])
    assert_kernel_close(full["aux"][0], want["aux"])
    traced = empirical_ntk_fn(f, implementation=impl)(x1, None, params)
    brute_same = {"cls": lambda p, x: f(p, x)["cls"], "aux": lambda p, x: f(p, x)["aux"][0]}
    for name, got in (("cls", traced["cls"]), ("aux", traced["aux"][0])):
        same = brute_full_ntk(brute_same[name], params, x1, x1)
        assert_kernel_close(got, np.trace(same, axis1=2, axis2=3) / same.shape[-1])


def test_pytree_output_picks_per_leaf(heads):
    f, params, x1, x2, _ = heads
    picks = empirical_ntk_fn(f).resolve_auto(x1, x2, params)
    assert jax.tree_util.tree_structure(picks) == jax.tree_util.tree_structure({"aux": (0,), "cls": 0})
    assert set(jax.tree_util.tree_leaves(picks)) <= {"jacobian", "products", "structured"}


def test_backward_cost_of_a_linear_layer_is_its_gradients():
    """``f = x W`` with ``W [K, C]``: one backward pass costs ``K C`` multiply-adds per sample for the weight
    gradient ``x gᵀ`` and ``K C`` for the input cotangent ``W g`` (XLA counts a dot's multiply-adds exactly)."""
    k, c = 48, 20
    f = lambda p, x: x @ p["w"]
    params, x = {"w": jnp.ones((k, c))}, jnp.ones((5, k))
    fwd = forward_cost(f, params, x)
    assert fwd.macs == k * c
    assert fwd.elements == k + c  # per extra sample: its K inputs read, its C outputs written (W is read once)
    weights = backward_cost(f, params, x, lambda path, leaf: True, False, fwd)
    inputs = backward_cost(f, params, x, None, True, fwd)
    both = backward_cost(f, params, x, lambda path, leaf: True, True, fwd)
    assert weights.macs == k * c and inputs.macs == k * c and both.macs == 2 * k * c
    assert backward_cost(f, params, x, None, False, fwd) == fwd  # nothing but activations to pull back to


def test_cost_model_replays_one_trace_of_f_and_counts_what_f_itself_costs():
    """The cost model builds its programs from a jaxpr of ``f`` traced once per batch size; XLA's analysis of
    ``f`` lowered directly (forward, and the pull-back w.r.t. the inputs and every leaf) gives the same counts:
    one sample's multiply-adds are half the flops of a one-sample program, its elements the bytes accessed by a
    two-sample program beyond a one-sample one, over the output's item size (``Forward``'s definition)."""

    def xla(program, n):
        analysis = jax.jit(program).lower(params, x[:n]).cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
        return analysis["flops"], analysis["bytes accessed"]

    def per_sample(program):
        (flops, one), (_, two) = xla(program, 1), xla(program, 2)
        return flops / 2, (two - one) / 4  # float32 outputs

    model = models.create("small_cnn", num_classes=3, width=4, depth=2)
    x = jax.random.uniform(jax.random.PRNGKey(2), (6, 8, 8, 1))
    params = models.init(model, jax.random.PRNGKey(0), x)["params"]
    traces = []

    def f(p, z):
        traces.append(z.shape[0])
        return model.apply({"params": p}, z)

    fwd = forward_cost(f, params, x)
    bwd = backward_cost(f, params, x, lambda path, leaf: True, True, fwd)
    backward_cost(f, params, x, lambda path, leaf: "head" in path, False, fwd)
    assert sorted(traces) == [1, 2]  # one trace per batch size analysed

    def pull(p, z):  # the same pull-back, written on f directly
        out, vjp = jax.vjp(lambda pd, zd: model.apply({"params": pd}, zd), p, z)
        return out, vjp(jnp.ones_like(out))

    fwd_macs, fwd_elements = per_sample(lambda p, z: model.apply({"params": p}, z))
    total_macs, total_elements = per_sample(pull)
    assert (fwd.macs, fwd.elements) == (fwd_macs, fwd_elements) and fwd_macs > 0 and fwd_elements > 0
    assert bwd.macs == total_macs - fwd_macs
    assert bwd.elements == total_elements - fwd_elements
