"""Per-sample convolution kernel gradients as patch products, for the Jacobians of any JAX function.

A per-sample Jacobian ``jax.vmap(jax.jacrev(f))`` differentiates each ``lax.conv_general_dilated`` with respect
to its kernel once per sample, and ``vmap`` turns those ``N`` kernel gradients into ONE convolution with
``batch_group_count = N``. On a CPU, jaxlib 0.10 runs such grouped convolutions 2.4-3.3x slower than jaxlib
0.5.3 did on the same program, and the kernel gradients are most of a CNN's Jacobian (``benchmarks/RESULTS.md``
§11c). The same gradient is a matrix product (Deshpande et al. 2021, Appendix A): for one sample with input
patches ``P [S, K]`` (``S`` output positions, ``K = C_in/g · prod(kernel)`` per group) and output cotangent
``G [S, C_out]``,

    ∂<G, conv(a, W)>/∂W = Pᵀ G        (group by group for ``feature_group_count = g``),

which ``vmap`` turns into a batched matrix product. :func:`patch_kernel_gradients` rewrites a function so that
every convolution it calls (also inside ``jax.jit``-ed helpers) carries that rule as its VJP; the forward pass and
the input gradient are the original convolution's, so values and gradients are unchanged up to float rounding.
Convolutions inside other higher-order primitives (``lax.scan``, ``jax.checkpoint``, ``custom_jvp`` functions)
and those with ``batch_group_count > 1`` keep JAX's own rule. Only public JAX APIs are used
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
from jax.extend.core.primitives import conv_general_dilated_p

#: Names of the ``jax.jit`` call primitive (``pjit`` before jax 0.7).
_JIT_NAMES = frozenset({"jit", "pjit"})


def _kernel_gradient(lhs: jax.Array, g: jax.Array, rhs_shape: tuple[int, ...], params: dict) -> jax.Array:
    """``∂<g, conv(lhs, W)>/∂W`` in ``W``'s layout ``rhs_shape``, by patches and one ``einsum``.

    ``lhs``, ``g`` in the convolution's own layouts (``params["dimension_numbers"]``); the patches come from
    ``lax.conv_general_dilated_patches`` (channel-major, then kernel offsets), at ``Precision.HIGHEST``.
    """
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    groups = params["feature_group_count"]
    a = jnp.transpose(lhs, lhs_spec)  # [B, C_in, *spatial]
    gc = jnp.transpose(g, out_spec)  # [B, C_out, *out_spatial]
    window = tuple(rhs_shape[d] for d in rhs_spec[2:])
    patches = lax.conv_general_dilated_patches(
        a,
        filter_shape=window,
        window_strides=params["window_strides"],
        padding=params["padding"],
        lhs_dilation=params["lhs_dilation"],
        rhs_dilation=params["rhs_dilation"],
        precision=lax.Precision.HIGHEST,
    )  # [B, C_in * prod(window), *out_spatial]
    b, c_in, c_out = a.shape[0], a.shape[1], gc.shape[1]
    p = patches.reshape(b, groups, c_in // groups, math.prod(window), -1)
    gg = gc.reshape(b, groups, c_out // groups, -1)
    dw = jnp.einsum("bjiks,bjos->joik", p, gg, precision=lax.Precision.HIGHEST)
    dw = dw.reshape((c_out, c_in // groups, *window))  # canonical [O, I, *window]
    inverse = [rhs_spec.index(d) for d in range(len(rhs_spec))]
    return jnp.transpose(dw, inverse).astype(g.dtype)


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
        return d_lhs, _kernel_gradient(lhs, g, rhs.shape, params)

    patch_conv.defvjp(fwd, bwd)
    return patch_conv


def _rewritable(params: dict) -> bool:
    return params["batch_group_count"] == 1


def _evaluate(jaxpr, consts, *args) -> list:
    """Evaluate ``jaxpr`` with each convolution replaced by :func:`_patch_conv`; ``jit`` calls are inlined."""
    env: dict = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive is conv_general_dilated_p and _rewritable(eqn.params):
            outvals = [_patch_conv(tuple(sorted(eqn.params.items())))(*invals)]
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


def patch_kernel_gradients(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` with every convolution's kernel gradient computed as a patch product (module docstring).

    Args:
      f: a JAX-traceable function of positional array/pytree arguments.

    Returns:
      A function with ``f``'s signature, values and derivatives. Each call traces ``f`` once
      (``jax.make_jaxpr``) and evaluates the rewritten program, so call it inside ``jax.jit``.
    """

    @functools.wraps(f)
    def rewritten(*args):
        closed, out_shape = jax.make_jaxpr(f, return_shape=True)(*args)
        if not any(e.primitive is conv_general_dilated_p or e.primitive.name in _JIT_NAMES for e in closed.jaxpr.eqns):
            return f(*args)
        flat = _evaluate(closed.jaxpr, closed.consts, *jax.tree_util.tree_leaves(args))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), flat)

    return rewritten
