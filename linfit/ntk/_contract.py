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
from linfit.ntk.cost import memory_budget

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


#: Jacobian blocks are concatenated, in order, into groups of at most this share of
#: :func:`linfit.ntk.cost.memory_budget` (a larger block is contracted alone). One product over the raveled
#: Jacobian is the fastest (cnn94k, N = 512, untraced: 21.6 s as one product, 25.5 s as three groups), but
#: its copy of the Jacobian may not fit: an 806k-parameter network at N = 256 (an 8.3 GB Jacobian) was killed
#: for memory on a 23 GiB machine and runs in 17 GB as separate blocks (``benchmarks/RESULTS.md`` §11d).
GROUP_BUDGET_SHARE = 0.5
#: ``x2 = None`` with an output axis kept: the samples are cut into ``B = min(SYMMETRIC_MAX_BLOCKS,
#: N // SYMMETRIC_MIN_BLOCK)`` row blocks and only the ``B (B + 1) / 2`` products on or above the diagonal are
#: computed (the rest by transposition). A fully traced kernel is one product: its ``[N, O·P]`` contraction is
#: bound by reading ``J``, which row blocks read again for every block pair (cnn94k, N = 512: 8.4 s as one
#: product, 9.9 s in 4 x 4 blocks, ``benchmarks/RESULTS.md`` §11c).
SYMMETRIC_MIN_BLOCK = 64
SYMMETRIC_MAX_BLOCKS = 4


def symmetric_blocks(n: int, out_ndim: int, trace: Axes) -> int:
    """Row blocks ``B`` of a symmetric (``x2 = None``) contraction of ``n`` samples; 1: one product."""
    return 1 if fully_traced(out_ndim, trace) else max(1, min(SYMMETRIC_MAX_BLOCKS, n // SYMMETRIC_MIN_BLOCK))


def symmetric_share(n: int, out_ndim: int, trace: Axes) -> float:
    """The share of a symmetric contraction's multiply-adds that :func:`contract_jacobians` computes:
    ``(B + 1) / (2 B)`` for ``B`` = :func:`symmetric_blocks`."""
    blocks = symmetric_blocks(n, out_ndim, trace)
    return (blocks + 1) / (2 * blocks)


def groups(nbytes: Sequence[int]) -> list[list[int]]:
    """Indices of the Jacobian blocks (``nbytes`` each, in order) contracted together: consecutive blocks while
    their sum stays within :data:`GROUP_BUDGET_SHARE` of :func:`linfit.ntk.cost.memory_budget`, a larger block
    alone."""
    cap = GROUP_BUDGET_SHARE * memory_budget()
    result: list[list[int]] = []
    pending: list[int] = []
    pending_bytes = 0
    for i, size in enumerate(nbytes):
        if pending and pending_bytes + size > cap:
            result.append(pending)
            pending, pending_bytes = [], 0
        pending.append(i)
        pending_bytes += size
    return result + [pending] if pending else result


def _grouped(blocks: Sequence[jax.Array], index: list[list[int]]) -> list[jax.Array]:
    """Blocks ``[N, *out, P_b]`` concatenated along the parameter axis by the groups ``index``."""
    return [jnp.concatenate([blocks[i] for i in g], axis=-1) if len(g) > 1 else blocks[g[0]] for g in index]


def _contract_pair(g1: Sequence[jax.Array], g2: Sequence[jax.Array], out_ndim: int, trace: Axes,
                   diag: Axes) -> jax.Array:
    """``Σ_groups G1 . G2`` over the parameter axis and the traced output axes (not yet averaged)."""
    lhs, rhs, res = _output_subscripts(out_ndim, trace, diag)
    p = _POOL[len(set(lhs + rhs)) - 2]
    total = None
    for a, b in zip(g1, g2, strict=True):
        if fully_traced(out_ndim, trace):
            # One [N1, D] x [D, N2] product over outputs and parameters together: XLA's CPU dot with two
            # contracting axes is ~1.3x slower than the 2-D product (benchmarks/RESULTS.md §11c).
            term = lax.dot_general(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1),
                                   (((1,), (1,)), ((), ())), precision=_PRECISION)
        else:
            term = jnp.einsum(f"{lhs}{p},{rhs}{p}->{res}", a, b, precision=_PRECISION)
        total = term if total is None else total + term
    return total


def contract_jacobians(
    j1: Sequence[jax.Array], j2: Sequence[jax.Array] | None, out_shape: Sequence[int], trace: Axes, diag: Axes
) -> jax.Array:
    """``Θ = Σ_blocks J1 . J2`` over the parameter axis, traced axes averaged, in the module's layout.

    Args:
      j1, j2: Jacobian blocks ``[N1, *out, P_b]`` / ``[N2, *out, P_b]`` (one per parameter leaf, or per any
        split of the parameters); ``j2=None``: ``j2 = j1`` (symmetric: row blocks of
        :data:`SYMMETRIC_MAX_BLOCKS` when an output axis is kept).
      out_shape: the per-batch output shape ``[N, d_1..d_m]`` of ``f`` (only ``d_k`` are used).
      trace, diag: normalised axes (see :func:`normalize_axes`).

    Returns:
      ``[N1, N2, ...]`` in the module's layout, the dtype of the blocks.
    """
    out_ndim = len(out_shape)
    index = groups([b.size * b.dtype.itemsize for b in j1])
    g1 = _grouped(j1, index)
    n = g1[0].shape[0]
    num = symmetric_blocks(n, out_ndim, trace)
    if j2 is not None or num == 1:
        total = _contract_pair(g1, g1 if j2 is None else _grouped(j2, index), out_ndim, trace, diag)
        return total / _trace_size(out_shape, trace)
    edges = [n * b // num for b in range(num + 1)]
    rows = [[g[edges[b] : edges[b + 1]] for g in g1] for b in range(num)]
    blocks = {}
    for a in range(num):
        for b in range(a, num):
            blocks[a, b] = _contract_pair(rows[a], rows[b], out_ndim, trace, diag)
            if b > a:
                blocks[b, a] = transpose_kernel(blocks[a, b], trace, diag)
    total = jnp.concatenate(
        [jnp.concatenate([blocks[a, b] for b in range(num)], axis=1) for a in range(num)], axis=0
    )
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
