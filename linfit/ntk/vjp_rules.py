"""Derivative rules for per-sample Jacobians: convolution kernel gradients and max-pool gradients that vmap well.

A per-sample Jacobian ``jax.vmap(jax.jacrev(f))`` pulls ``O`` cotangents back through each sample, and two of
JAX's rules turn into slow programs under that double ``vmap`` on a CPU (``benchmarks/RESULTS.md`` §11c):

* **Convolution kernel gradients.** ``vmap`` turns the ``N`` per-sample kernel gradients of
  ``lax.conv_general_dilated`` into one convolution over all samples that jaxlib 0.10 runs 2.4-3.3x slower
  than jaxlib 0.5.3 did. The same gradient is a matrix product (Deshpande et al. 2021, Appendix A): for one
  sample with input patches ``P [S, K]`` (``S`` output positions, ``K = C_in/g · prod(kernel)`` per group) and
  output cotangent ``G [S, C_out]``, ``∂<G, conv(a, W)>/∂W = Pᵀ G`` (group by group for
  ``feature_group_count = g``), which ``vmap`` turns into a batched matrix product.
* **Max-pool gradients.** JAX's rule re-selects each window's maximum for every cotangent
  (``select_and_scatter_add``). For non-overlapping windows (strides = window, no padding or dilation) the
  maximum's position is found once per sample, as a one-hot mask over each window that keeps JAX's choice
  among ties (the first maximum in row-major window order), and each cotangent is spread by that mask.

:func:`per_sample_vjps` rewrites a function so that every convolution and every such max pool it calls (also
inside ``jax.jit``-ed helpers) carries these rules as custom VJPs; forward passes and all other derivatives are
JAX's own, so values and gradients are unchanged up to float rounding. Primitives inside other higher-order
primitives (``lax.scan``, ``jax.checkpoint``, ``custom_jvp`` functions), convolutions with
``batch_group_count > 1`` and overlapping or padded pools keep JAX's rules. Only public JAX APIs are used
(``jax.make_jaxpr``, ``jax.extend.core``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Literal
from jax.extend.core.primitives import conv_general_dilated_p, reduce_window_max_p

from linfit.ntk.patches import patches

#: Names of the ``jax.jit`` call primitive (``pjit`` before jax 0.7).
_JIT_NAMES = frozenset({"jit", "pjit"})


def _kernel_gradient(lhs: jax.Array, g: jax.Array, rhs: jax.Array, params: dict) -> jax.Array:
    """``∂<g, conv(lhs, W)>/∂W`` at ``W = rhs`` (its layout and dtype), by patches and one ``einsum``.

    ``lhs``, ``g`` in the convolution's own layouts (``params["dimension_numbers"]``); the patches
    (:func:`linfit.ntk.patches.patches`: channel-major, then kernel offsets) are exact copies of ``lhs``.
    """
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    groups = params["feature_group_count"]
    a = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))  # [B, *spatial, C_in]
    gc = jnp.transpose(g, out_spec)  # [B, C_out, *out_spatial]
    window = tuple(rhs.shape[d] for d in rhs_spec[2:])
    p = patches(a, window, params["window_strides"], params["padding"], params["lhs_dilation"],
                params["rhs_dilation"])  # [B, *out_spatial, C_in * prod(window)]
    b, c_in, c_out = a.shape[0], a.shape[-1], gc.shape[1]
    p = p.reshape(b, -1, groups, c_in // groups, math.prod(window))
    gg = gc.reshape(b, groups, c_out // groups, -1)
    dw = jnp.einsum("bsjik,bjos->joik", p, gg, precision=lax.Precision.HIGHEST)
    dw = dw.reshape((c_out, c_in // groups, *window))  # canonical [O, I, *window]
    inverse = [rhs_spec.index(d) for d in range(len(rhs_spec))]
    return jnp.transpose(dw, inverse).astype(rhs.dtype)


@functools.lru_cache(maxsize=None)
def _patch_conv(frozen: tuple) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The convolution of the equation parameters ``frozen`` with :func:`_kernel_gradient` as its kernel VJP."""
    params = dict(frozen)
    conv = lambda lhs, rhs: conv_general_dilated_p.bind(lhs, rhs, **params)

    @jax.custom_vjp
    def patch_conv(lhs, rhs):
        return conv(lhs, rhs)

    def fwd(lhs, rhs):
        return conv(lhs, rhs), (lhs, rhs)

    def bwd(res, g):
        lhs, rhs = res
        (d_lhs,) = jax.vjp(lambda a: conv(a, rhs), lhs)[1](g)
        return d_lhs, _kernel_gradient(lhs, g, rhs, params)

    patch_conv.defvjp(fwd, bwd)
    return patch_conv


def _window_mask(x: jax.Array, params: dict) -> jax.Array:
    """One-hot ``[*out, prod(window)]`` of each window's first maximum (row-major window order)."""
    window = params["window_dimensions"]
    out = [size // w for size, w in zip(x.shape, window)]
    x = x[tuple(slice(0, o * w) for o, w in zip(out, window))]
    x = x.reshape([d for o, w in zip(out, window) for d in (o, w)])
    ndim = len(window)
    x = x.transpose([2 * i for i in range(ndim)] + [2 * i + 1 for i in range(ndim)])
    x = x.reshape(*out, -1)
    return jax.nn.one_hot(jnp.argmax(x, axis=-1), x.shape[-1], dtype=x.dtype)


def _spread(g: jax.Array, mask: jax.Array, shape: tuple[int, ...], params: dict) -> jax.Array:
    """The input cotangent ``[*shape]``: ``g [*out]`` placed at each window's maximum (``mask``), zero elsewhere."""
    window = params["window_dimensions"]
    ndim = len(window)
    out = g.shape
    d = (g[..., None] * mask).reshape(*out, *window)
    d = d.transpose([i // 2 + (ndim if i % 2 else 0) for i in range(2 * ndim)])
    d = d.reshape([o * w for o, w in zip(out, window)])
    return jnp.pad(d, [(0, size - o * w) for size, o, w in zip(shape, out, window)])


@functools.lru_cache(maxsize=None)
def _mask_max_pool(frozen: tuple) -> Callable[[jax.Array], jax.Array]:
    """The max pool of the equation parameters ``frozen`` with a mask-based VJP (module docstring)."""
    params = dict(frozen)
    pool = lambda x: reduce_window_max_p.bind(x, **params)

    @jax.custom_vjp
    def mask_max_pool(x):
        return pool(x)

    def fwd(x):
        return pool(x), (_window_mask(x, params), x.shape)

    def bwd(res, g):
        mask, shape = res
        return (_spread(g, mask, shape, params),)

    mask_max_pool.defvjp(fwd, bwd)
    return mask_max_pool


def _replacement(eqn) -> Callable | None:
    """The custom-VJP stand-in for ``eqn``, or ``None`` to keep JAX's rule."""
    params = eqn.params
    if eqn.primitive is conv_general_dilated_p and params["batch_group_count"] == 1:
        return _patch_conv(tuple(sorted(params.items())))
    if (
        eqn.primitive is reduce_window_max_p
        and tuple(params["window_dimensions"]) == tuple(params["window_strides"])
        and all(lo == hi == 0 for lo, hi in params["padding"])
        and all(d == 1 for d in (*params["base_dilation"], *params["window_dilation"]))
    ):
        return _mask_max_pool(tuple(sorted(params.items())))
    return None


def _evaluate(jaxpr, consts, *args) -> list:
    """Evaluate ``jaxpr`` with each equation :func:`_replacement` covers replaced; ``jit`` calls are inlined."""
    env: dict = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        replacement = _replacement(eqn)
        if replacement is not None:
            outvals = [replacement(*invals)]
        elif eqn.primitive.name in _JIT_NAMES:
            inner = eqn.params["jaxpr"]
            outvals = _evaluate(inner.jaxpr, inner.consts, *invals)
        else:
            bound = eqn.primitive.get_bind_params(eqn.params)
            # jax < 0.8 returns ``(subfuns, params)``, later versions the params alone.
            subfuns, bound = bound if isinstance(bound, tuple) else ((), bound)
            outvals = eqn.primitive.bind(*subfuns, *invals, **bound)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for var, value in zip(eqn.outvars, outvals, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def per_sample_vjps(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` with the convolution and max-pool derivative rules of the module docstring.

    Args:
      f: a JAX-traceable function of positional array/pytree arguments.

    Returns:
      A function with ``f``'s signature, values and derivatives. Each call traces ``f`` once
      (``jax.make_jaxpr``) and evaluates the rewritten program, so call it inside ``jax.jit``.
    """

    @functools.wraps(f)
    def rewritten(*args):
        closed, out_shape = jax.make_jaxpr(f, return_shape=True)(*args)
        flat = _evaluate(closed.jaxpr, closed.consts, *jax.tree_util.tree_leaves(args))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), flat)

    return rewritten
