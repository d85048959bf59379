"""Contract per-layer NTK factors into kernels: two exact routes and the estimate that picks one.

For a layer with per-sample inputs ``P [N, S, K]`` and output cotangents ``G [N, O, S, C]``
(see :mod:`linfit.ntk.structured_layers`), the kernel-weight block of the empirical NTK is

    Θ_W(x_i, x_j)[o, o'] = <P_iᵀ G_{i,o}, P_jᵀ G_{j,o'}> = Σ_{s,t} (P_i P_jᵀ)[s,t] (G_{i,o} G_{j,o'}ᵀ)[s,t].

* ``"gradient"`` route: form the per-sample layer gradient ``D_{i,o} = P_iᵀ G_{i,o}`` ``[K·C]`` by one
  einsum, then contract ``D`` with ``D`` (:func:`linfit.ntk._contract.contract_jacobians`).
  FLOPs ≈ (N1 + N2)·O·S·K·C + N1·N2·Q·K·C, memory ≈ (N1 + N2)·O·K·C.
* ``"gram"`` route: the input Gram ``A = P_i P_jᵀ`` ``[N1, N2, S, S]`` and the cotangent Gram
  ``H = G G`` over ``C``, multiplied and summed over positions.
  FLOPs ≈ N1·N2·S²·(K + Q·C + Q), memory ≈ N1·N2·S²·(1 + Q).

``Q`` is the number of output pairs kept: ``O²`` for the full kernel, ``O`` traced or diagonal. The gram
route wins for a Dense layer (``S = 1``: ``<a_i, a_j><g_i, g_j>``) and for convolutions with few output
positions and wide patches; the gradient route for early, high-resolution convolutions. Both are exact.
Grouped and depthwise convolutions always take the gradient route (their gradients are small, ``K·C/g``).

Output modes: ``"full"`` ``[N1, N2, O, O]``, ``"trace"`` ``[N1, N2]`` (summed here; the caller divides
by ``O``), ``"diag"`` ``[N1, N2, O]``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from linfit.ntk._contract import _PRECISION
from linfit.ntk.cost import ELEMENT_MACS

Mode = Literal["full", "trace", "diag"]
Route = Literal["gram", "gradient"]

#: The gram route may use at most this many times the memory of the larger of the gradient route's
#: working set and the output kernel.
GRAM_MEMORY_FACTOR = 4

_COT_GRAM_SPEC = {
    "full": "iasc,jbtc->ijabst",
    "trace": "iasc,jatc->ijst",
    "diag": "iasc,jatc->ijast",
}
_GRAM_SPEC = {
    "full": "ijst,ijabst->ijab",
    "trace": "ijst,ijst->ij",
    "diag": "ijst,ijast->ija",
}


def mode_axes(mode: Mode) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(trace_axes, diagonal_axes)`` of an ``[N, O]`` output for ``mode``, normalised as in
    :func:`linfit.ntk._contract.normalize_axes`."""
    return {"full": ((), ()), "trace": ((1,), ()), "diag": ((), (1,))}[mode]


def output_pairs(mode: Mode, o: int) -> int:
    """``Q``: output pairs per sample pair, ``O²`` (full) or ``O`` (trace, diag)."""
    return o * o if mode == "full" else o


def route_costs(
    n1: int, n2: int, o: int, s: int, k: int, c: int, mode: Mode
) -> dict[str, tuple[int, int]]:
    """``{route: (cost, peak elements)}`` for one layer's kernel block: the FLOPs of the module docstring
    plus ``ELEMENT_MACS`` (:mod:`linfit.ntk.cost`) per element of the intermediates each route writes (the
    gradients ``D``; the Grams ``A`` and ``H``), which dominate when the contractions are short."""
    q = output_pairs(mode, o)
    grad_mem, gram_mem = (n1 + n2) * o * k * c, n1 * n2 * s * s * (1 + q)
    return {
        "gradient": (
            (n1 + n2) * o * s * k * c + n1 * n2 * q * k * c + ELEMENT_MACS * grad_mem,
            grad_mem,
        ),
        "gram": (n1 * n2 * s * s * (k + q * c + q) + ELEMENT_MACS * gram_mem, gram_mem),
    }


def choose_route(n1: int, n2: int, o: int, s: int, k: int, c: int, mode: Mode) -> Route:
    """The cheaper exact route by :func:`route_costs`, taking gram only within ``GRAM_MEMORY_FACTOR`` memory."""
    costs = route_costs(n1, n2, o, s, k, c, mode)
    (grad_flops, grad_mem), (gram_flops, gram_mem) = costs["gradient"], costs["gram"]
    budget = GRAM_MEMORY_FACTOR * max(grad_mem, n1 * n2 * output_pairs(mode, o))
    return "gram" if gram_flops < grad_flops and gram_mem <= budget else "gradient"


def layer_gradient(p: jax.Array, g: jax.Array, groups: int = 1) -> jax.Array:
    """Per-sample kernel gradient ``D_{i,o} = P_iᵀ G_{i,o}``: ``P [N, S, K]``, ``G [N, O, S, C]`` -> ``[N, O, K·C/g]``.

    With ``groups = g > 1`` (a grouped or depthwise convolution) group ``j``'s block is ``P_{i,j}ᵀ G_{i,o,j}``
    ``[K/g, C/g]``, from the ``j``-th contiguous slices of ``P``'s and ``G``'s last axes.
    """
    n, s, k = p.shape
    o, c = g.shape[1], g.shape[-1]
    if groups == 1:
        d = jnp.einsum("isk,iasc->iakc", p, g, precision=_PRECISION)
    else:
        d = jnp.einsum("isjk,iasjc->iajkc", p.reshape(n, s, groups, k // groups),
                       g.reshape(n, o, s, groups, c // groups), precision=_PRECISION)
    return d.reshape(n, o, -1)


def contract_gram(
    p1: jax.Array, g1: jax.Array, p2: jax.Array, g2: jax.Array, mode: Mode
) -> jax.Array:
    """``Σ_{s,t} (P1_i P2_jᵀ)[s,t] Σ_c G1[i,a,s,c] G2[j,b,t,c]`` for ``P [N, S, K]``, ``G [N, O, S, C]``."""
    a = jnp.einsum("isk,jtk->ijst", p1, p2, precision=_PRECISION)
    h = jnp.einsum(_COT_GRAM_SPEC[mode], g1, g2, precision=_PRECISION)
    return jnp.einsum(_GRAM_SPEC[mode], a, h, precision=_PRECISION)
