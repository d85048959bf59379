"""Empirical NTK from NTK-vector products: ``Theta v = J1 (J2^T v)``, one vjp then one jvp.

No batch of per-sample Jacobians is ever formed. :func:`ntk_vp_fn` is the matrix-free product (memory of
one vjp: activations, plus one parameter-sized cotangent), the building block of Krylov methods at large
N. :func:`products_ntk` builds the dense kernel column by column, ``Theta e_k`` for the standard basis
``e_k`` of x2's outputs: with ``vmap_axes=0`` it scans the x2 samples (``jax.lax.map``) and, per sample,
pulls back the ``O`` basis vectors of that sample alone (``O`` cotangents, ``O * P`` numbers) and pushes
them forward through x1's linearisation. Cost: about ``N2 * O`` vjps of one sample plus ``N2 * O``
linear (jvp) passes over x1 -- neural-tangents' "NTK-vector products", good for wide models with cheap
forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from linfit.errors import ShapeError
from linfit.ntk._checks import batch_size, check_pair
from linfit.ntk._contract import Axes, reduce_full_kernel
from linfit.tree import ParamsFilter, split_params

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def products_ntk(
    f: ApplyFn,
    params: Any,
    x1: jax.Array,
    x2: jax.Array | None,
    *,
    trace: Axes,
    diag: Axes,
    vmap_axes: int | None,
) -> jax.Array:
    """Kernel ``Theta(x1, x2)`` (layout of :mod:`linfit.ntk._contract`) from vjp/jvp products.

    Args:
      f: ``f(params, x [N, ...]) -> [N, *out]`` (already restricted to the selected parameters).
      x1, x2: arrays ``[N, ...]`` or pytrees of them with a shared batch axis; ``x2=None`` means ``x1``.
      trace, diag: normalised output axes; the untraced kernel is built, then traced/diagonalised.
      vmap_axes: ``0`` pulls back one x2 sample at a time; ``None`` pulls back through the whole x2
        batch (samples may interact), one basis vector of ``[N2, *out]`` at a time.
    """
    x2 = x1 if x2 is None else x2
    out = jax.eval_shape(f, params, x2)
    n1, n2, out_shape = batch_size(x1, "x1"), out.shape[0], out.shape[1:]
    o = math.prod(out_shape)
    _, push1 = jax.linearize(lambda p: f(p, x1), params)  # tangent [P] -> [N1, *out]

    if vmap_axes == 0:
        basis = jnp.eye(o, dtype=out.dtype).reshape(o, *out_shape)

        def sample_columns(x2j: jax.Array) -> jax.Array:  # [O, N1, *out]
            _, pull = jax.vjp(lambda p: f(p, jax.tree_util.tree_map(lambda a: a[None], x2j))[0], params)
            return jax.vmap(lambda e: push1(pull(e)[0]))(basis)

        raw = jax.lax.map(sample_columns, x2)  # [N2, O, N1, *out]
    else:
        _, pull = jax.vjp(lambda p: f(p, x2), params)

        def column(k: jax.Array) -> jax.Array:  # [N1, *out]
            e = jax.nn.one_hot(k, n2 * o, dtype=out.dtype).reshape(out.shape)
            return push1(pull(e)[0])

        raw = jax.lax.map(column, jnp.arange(n2 * o))  # [N2 * O, N1, *out]

    m = len(out_shape)
    raw = raw.reshape(n2, *out_shape, n1, *out_shape)  # axes: N2, out2..., N1, out1...
    perm = [m + 1, 0] + [a for k in range(m) for a in (m + 2 + k, 1 + k)]
    return reduce_full_kernel(raw.transpose(perm), out.shape, trace, diag)


def ntk_vp_fn(
    f: ApplyFn,
    params: Any,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    params_filter: ParamsFilter = None,
) -> Callable[[jax.Array], jax.Array]:
    """Matrix-free untraced NTK-vector product ``v -> Theta(x1, x2) v``.

    ``(Theta v)[i, o] = sum_{j, o'} Theta[i, j, o, o'] v[j, o'] = (J1 (J2^T v))[i, o]``: one vjp through
    ``f(., x2)`` and one jvp through ``f(., x1)``; neither an ``N x N`` matrix nor a Jacobian is formed.

    Args:
      f: pure ``apply_fn(params, x) -> [N, *out]`` (e.g. logits ``[N, O]``).
      params: parameters the kernel is evaluated at.
      x1: ``[N1, ...]`` inputs; x2: ``[N2, ...]`` inputs, ``None`` for ``x1``.
      params_filter: the kernel is taken w.r.t. the selected leaves only (see :mod:`linfit.tree`).

    Returns:
      ``vp(v)`` for ``v [N2, *out]`` returning ``[N1, *out]``; jit-compiled.

    Raises:
      ShapeError: x1/x2 feature shapes differ, or (at call time) ``v`` is not shaped like ``f(x2)``.
      ParamsFilterError: the filter selects nothing.
    """
    x1 = jnp.asarray(x1)
    x2 = None if x2 is None else jnp.asarray(x2)
    if x2 is not None:
        check_pair(x1, x2)
    split_params(params, params_filter)  # raise ParamsFilterError now, not inside jit
    v_shape = jax.eval_shape(f, params, x1 if x2 is None else x2).shape

    @jax.jit
    def product(
        params: Any, x1: jax.Array, x2: jax.Array | None, v: jax.Array
    ) -> jax.Array:
        selected, merge = split_params(params, params_filter)
        f_sel = lambda p, x: f(merge(p), x)
        _, pull = jax.vjp(lambda p: f_sel(p, x1 if x2 is None else x2), selected)
        return jax.jvp(lambda p: f_sel(p, x1), (selected,), pull(v))[1]

    def vp(v: jax.Array) -> jax.Array:
        v = jnp.asarray(v)
        if v.shape != v_shape:
            raise ShapeError(f"v must be shaped like f(x2) = {v_shape}; got {v.shape}")
        return product(params, x1, x2, v)

    return vp
