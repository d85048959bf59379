"""Output-axis bookkeeping shared by the NTK implementations (neural-tangents' kernel layout).

``f(params, x)`` returns ``[N, d_1, ..., d_m]`` (axis 0 is the batch axis). The kernel
``Theta(x1, x2)`` has the layout of ``zip(f(x1).shape, f(x2).shape)``:

* ``[N1, N2]`` first;
* then, for every output axis ``k = 1..m`` in order: nothing if ``k`` is traced, one axis ``d_k`` if
  ``k`` is diagonal, two axes ``(d_k, d_k)`` (x1's, then x2's) otherwise.

So logits ``[N, O]`` give ``[N1, N2]`` traced (``trace_axes=(-1,)``), ``[N1, N2, O, O]`` untraced and
``[N1, N2, O]`` diagonal. A traced axis is AVERAGED (divided by its size), as in neural-tangents:
traced = trace(untraced) / O.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from linfit.errors import ShapeError

Axes = tuple[int, ...]

# 'a', 'b' index the two batch axes; output and parameter axes draw from the rest.
_POOL = string.ascii_letters[2:]
# Full float32 contractions (no TF32/bf16 passes on accelerators): kernels feed eigendecompositions.
_PRECISION = jax.lax.Precision.HIGHEST


def normalize_axes(
    trace_axes: Sequence[int], diagonal_axes: Sequence[int], out_ndim: int
) -> tuple[Axes, Axes]:
    """Map trace/diagonal axes (negative allowed) of an ``out_ndim``-dimensional output to ``1..out_ndim-1``.

    Raises:
      ShapeError: an axis is out of range, is the batch axis 0, repeats, or is both traced and diagonal.
    """

    def norm(axes: Sequence[int], name: str) -> Axes:
        result = []
        for axis in axes:
            if not isinstance(axis, int) or not -out_ndim <= axis < out_ndim:
                raise ShapeError(
                    f"{name} entry {axis!r} is not an axis of f's {out_ndim}-d output"
                )
            axis %= out_ndim
            if axis == 0:
                raise ShapeError(
                    f"{name} may not contain the batch axis 0 of f's output"
                )
            result.append(axis)
        if len(set(result)) != len(result):
            raise ShapeError(f"{name} {tuple(axes)} repeats an axis")
        return tuple(sorted(result))

    trace, diag = norm(trace_axes, "trace_axes"), norm(diagonal_axes, "diagonal_axes")
    if set(trace) & set(diag):
        raise ShapeError(
            f"axes {sorted(set(trace) & set(diag))} are both traced and diagonal"
        )
    return trace, diag


def _output_subscripts(out_ndim: int, trace: Axes, diag: Axes) -> tuple[str, str, str]:
    """einsum letters of x1's output axes, x2's output axes and the kernel."""
    lhs, rhs, res = ["a"], ["b"], ["a", "b"]
    letters = iter(_POOL)
    for k in range(1, out_ndim):
        if k in trace or k in diag:
            c = next(letters)
            lhs.append(c)
            rhs.append(c)
            if k in diag:
                res.append(c)
        else:
            c1, c2 = next(letters), next(letters)
            lhs.append(c1)
            rhs.append(c2)
            res += [c1, c2]
    return "".join(lhs), "".join(rhs), "".join(res)


def fully_traced(out_ndim: int, trace: Axes) -> bool:
    """Whether every output axis of an ``out_ndim``-dimensional output (batch axis included) is traced."""
    return len(trace) == out_ndim - 1


def _trace_size(out_shape: Sequence[int], trace: Axes) -> int:
    return math.prod(out_shape[k] for k in trace)


def contract_jacobians(
    j1: Any, j2: Any, out_shape: Sequence[int], trace: Axes, diag: Axes
) -> jax.Array:
    """``Theta = sum_leaves J1 . J2`` over each leaf's parameter axes, in the module's layout.

    Args:
      j1, j2: matching pytrees of Jacobian leaves ``[N1, *out, *leaf_shape]`` / ``[N2, *out, *leaf_shape]``.
      out_shape: the per-batch output shape ``[N, d_1..d_m]`` of ``f`` (only ``d_k`` are used).
      trace, diag: normalised axes (see :func:`normalize_axes`).
    """
    out_ndim = len(out_shape)
    lhs, rhs, res = _output_subscripts(out_ndim, trace, diag)
    used = len(set(lhs + rhs))
    one_product = fully_traced(out_ndim, trace)
    total = None
    for a, b in zip(
        jax.tree_util.tree_leaves(j1), jax.tree_util.tree_leaves(j2), strict=True
    ):
        if one_product:
            # One [N1, D] x [D, N2] product over outputs and parameters together: XLA's CPU dot with two
            # contracting axes is ~1.3x slower than the 2-D product (benchmarks/RESULTS.md §11c).
            term = lax.dot_general(
                a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), (((1,), (1,)), ((), ())),
                precision=_PRECISION,
            )
        else:
            params = _POOL[used - 2 : used - 2 + a.ndim - out_ndim]
            term = jnp.einsum(
                f"{lhs}{params},{rhs}{params}->{res}", a, b, precision=_PRECISION
            )
        total = term if total is None else total + term
    return total / _trace_size(out_shape, trace)


def reduce_full_kernel(
    full: jax.Array, out_shape: Sequence[int], trace: Axes, diag: Axes
) -> jax.Array:
    """Trace/take the diagonal of an untraced kernel ``[N1, N2, d_1, d_1, ..., d_m, d_m]``."""
    letters = iter(_POOL)
    sub, res = ["a", "b"], ["a", "b"]
    for k in range(1, len(out_shape)):
        if k in trace or k in diag:
            c = next(letters)
            sub += [c, c]
            if k in diag:
                res.append(c)
        else:
            c1, c2 = next(letters), next(letters)
            sub += [c1, c2]
            res += [c1, c2]
    return jnp.einsum(
        f"{''.join(sub)}->{''.join(res)}", full, precision=_PRECISION
    ) / _trace_size(out_shape, trace)


def transpose_kernel(
    kernel: Any, trace_axes: Sequence[int], diagonal_axes: Sequence[int]
) -> Any:
    """``Theta(x2, x1)`` from ``Theta(x1, x2)``: swap the two batch axes and each untraced output pair.

    Works on numpy and jax arrays. The output rank of ``f`` is recovered from the kernel's rank:
    ``kernel.ndim = 2 + n_diag + 2 (m - n_trace - n_diag)``.
    """
    n_t, n_d = len(trace_axes), len(diagonal_axes)
    m = (kernel.ndim - 2 - n_d) // 2 + n_t + n_d
    trace, diag = normalize_axes(trace_axes, diagonal_axes, m + 1)
    perm, pos = [1, 0], 2
    for k in range(1, m + 1):
        if k in trace:
            continue
        if k in diag:
            perm.append(pos)
            pos += 1
        else:
            perm += [pos + 1, pos]
            pos += 2
    return kernel.transpose(perm)
