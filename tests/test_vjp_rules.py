"""Per-sample Jacobians with linfit's convolution and max-pool derivative rules (``linfit.ntk.vjp_rules``).

Reference: the whole-batch ``jax.jacrev`` of the original function (JAX's own rules, no ``vmap`` over samples),
so neither the patches, the masks nor the rewrite take part in it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from linfit.ntk.vjp_rules import per_sample_vjps

# (name, conv keyword arguments, dimension numbers, kernel shape, input shape)
CASES = [
    ("same", dict(window_strides=(1, 1), padding="SAME"), ("NHWC", "HWIO", "NHWC"), (3, 3, 4, 6), (3, 9, 9, 4)),
    ("strided valid", dict(window_strides=(2, 2), padding="VALID"), ("NHWC", "HWIO", "NHWC"), (3, 2, 4, 6),
     (3, 9, 8, 4)),
    ("explicit padding, kernel dilation", dict(window_strides=(1, 2), padding=((1, 2), (0, 1)), rhs_dilation=(2, 1)),
     ("NHWC", "HWIO", "NHWC"), (3, 3, 4, 6), (3, 9, 9, 4)),
    ("input dilation", dict(window_strides=(1, 1), padding=((1, 1), (2, 0)), lhs_dilation=(2, 2)),
     ("NHWC", "HWIO", "NHWC"), (3, 3, 4, 6), (3, 5, 5, 4)),
    ("two groups", dict(window_strides=(1, 1), padding="SAME", feature_group_count=2), ("NHWC", "HWIO", "NHWC"),
     (3, 3, 2, 6), (3, 7, 7, 4)),
    ("depthwise", dict(window_strides=(1, 1), padding="SAME", feature_group_count=4), ("NHWC", "HWIO", "NHWC"),
     (3, 3, 1, 8), (3, 7, 7, 4)),
    ("NCHW/OIHW", dict(window_strides=(1, 1), padding="SAME"), ("NCHW", "OIHW", "NCHW"), (6, 4, 3, 2), (3, 4, 7, 8)),
    ("1-d", dict(window_strides=(1,), padding="SAME"), ("NWC", "WIO", "NWC"), (3, 4, 6), (3, 9, 4)),
    ("3-d", dict(window_strides=(1, 1, 1), padding="SAME"), ("NDHWC", "DHWIO", "NDHWC"), (2, 3, 2, 4, 3),
     (3, 4, 5, 3, 4)),
]


def _per_sample_jacobian(f, params, x):
    per_sample = jax.jacrev(lambda p, xi: f(p, xi[None])[0])
    return jax.jit(jax.vmap(per_sample, in_axes=(None, 0)))(params, x)


def _batch_jacobian(f, params, x):
    """``[N, O, *leaf]`` from one ``jax.jacrev`` of the whole batch: row ``n`` of ``f`` reads ``x[n]`` only."""
    return jax.jit(jax.jacrev(f))(params, x)


def _assert_close(got, want, terms):
    """float32 sums of at most ``terms`` products: worst-case round-off ``terms · 2⁻²⁴`` of the largest entry."""
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        w = np.asarray(w, np.float64)
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=0, atol=terms * 2.0**-24 * np.abs(w).max())


def _kernel(rng, rhs_spec: str, c_in: int, c_out: int, scale: float) -> jax.Array:
    """A 3-wide kernel in the layout ``rhs_spec`` (e.g. ``"HWIO"``)."""
    shape = tuple({"I": c_in, "O": c_out}.get(axis, 3) for axis in rhs_spec)
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("name, kwargs, dn, kernel_shape, x_shape", CASES, ids=[c[0] for c in CASES])
def test_two_convolutions_match_the_whole_batch_jacobian(name, kwargs, dn, kernel_shape, x_shape):
    """The first convolution reads the input (its input gradient is unused), the second an activation."""
    rng = np.random.default_rng(0)
    c = kernel_shape[dn[1].index("O")]
    params = {
        "w1": jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32),
        "w2": _kernel(rng, dn[1], c, 2, 0.3),
    }
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    spatial = len(x_shape) - 2

    @jax.jit  # a jit-ed helper: the rewrite must look inside it
    def first(a, w):
        return lax.conv_general_dilated(a, w, dimension_numbers=dn, **kwargs)

    def f(p, xb):
        y = jnp.tanh(first(xb, p["w1"]))
        y = lax.conv_general_dilated(y, p["w2"], (1,) * spatial, "SAME", dimension_numbers=(dn[2], dn[1], dn[2]))
        return y.reshape(y.shape[0], -1)[:, :7]

    got = _per_sample_jacobian(per_sample_vjps(f), params, x)
    # A kernel-gradient entry sums at most (output positions) x (output channels) products.
    _assert_close(got, _batch_jacobian(f, params, x), terms=int(np.prod(x_shape[1:])) * c)


def test_rewrite_computes_the_kernel_gradient_as_a_matrix_product():
    """JAX's vmapped kernel gradient is a convolution; the rewrite's is a ``dot_general`` of the patches."""
    params = {"w": jnp.ones((3, 3, 2, 4), jnp.float32)}
    x = jnp.ones((5, 6, 6, 2), jnp.float32)

    def f(p, xb):
        y = lax.conv_general_dilated(xb, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.reshape(xb.shape[0], -1)[:, :3]

    def products(fn):
        per_sample = jax.vmap(jax.jacrev(lambda p, xi: fn(p, xi[None])[0]), in_axes=(None, 0))
        return str(jax.make_jaxpr(per_sample)(params, x)).count("dot_general")

    assert products(f) == 0
    assert products(per_sample_vjps(f)) == 1


def test_convolution_inside_scan_keeps_jax_rule_and_stays_exact():
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(0.3 * rng.standard_normal((3, 3, 2, 2)), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((3, 6, 6, 2)), jnp.float32)

    def f(p, xb):
        step = lambda h, _: (jnp.tanh(lax.conv_general_dilated(h, p["w"], (1, 1), "SAME",
                                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))), None)
        return lax.scan(step, xb, None, length=2)[0].reshape(xb.shape[0], -1)[:, :4]

    got = _per_sample_jacobian(per_sample_vjps(f), params, x)
    _assert_close(got, _batch_jacobian(f, params, x), terms=6 * 6 * 2 * 2)


def test_function_without_convolution_is_unchanged():
    f = lambda p, xb: jnp.tanh(xb @ p)
    p = jnp.ones((3, 2))
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(per_sample_vjps(f)(p, x), f(p, x))


@pytest.mark.parametrize(
    "window, shape",
    [((1, 2, 2, 1), (3, 8, 8, 3)), ((1, 3, 2, 1), (3, 7, 9, 2)), ((1, 2, 1), (3, 9, 2)), ((1, 2, 2, 2, 1), (3, 4, 4, 6, 2))],
    ids=["2x2", "3x2 cropped", "1-d cropped", "3-d"],
)
def test_max_pool_matches_the_whole_batch_jacobian_with_ties(window, shape):
    """Inputs in {0, 1} scaled by parameters that are all one: most windows hold tied maxima, and the
    derivative w.r.t. the scale of each position tells which one was chosen, so the mask must pick JAX's
    maximum among ties (the first in row-major window order), not any of them."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(0, 2, shape), jnp.float32)
    w = jnp.ones(shape[1:], jnp.float32)

    def f(p, xb):
        y = lax.reduce_window(xb * p, -jnp.inf, lax.max, window, window, "VALID")
        return jnp.tanh(y.reshape(xb.shape[0], -1)[:, :6] * 0.5)

    got = _per_sample_jacobian(per_sample_vjps(f), w, x)
    want = _batch_jacobian(f, w, x)
    assert np.mean(np.asarray(want) != 0) > 0.0  # the ties are real and the gradients not all zero
    _assert_close(got, want, terms=1)


def test_max_pool_rewrite_removes_select_and_scatter():
    x = jnp.ones((4, 6, 6, 2), jnp.float32)

    def f(p, xb):
        return lax.reduce_window(xb * p, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID").reshape(xb.shape[0], -1)

    def scatters(fn):
        per_sample = jax.vmap(jax.jacrev(lambda p, xi: fn(p, xi[None])[0]), in_axes=(None, 0))
        return str(jax.make_jaxpr(per_sample)(jnp.ones((6, 6, 2)), x)).count("select_and_scatter")

    assert scatters(f) > 0
    assert scatters(per_sample_vjps(f)) == 0


def test_overlapping_and_padded_max_pools_keep_jax_rule_and_stay_exact():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((3, 7, 7, 2)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((7, 7, 2)), jnp.float32)

    def f(p, xb):
        y = lax.reduce_window(xb * p, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
        return y.reshape(xb.shape[0], -1)[:, :5]

    _assert_close(_per_sample_jacobian(per_sample_vjps(f), w, x), _batch_jacobian(f, w, x), terms=1)
