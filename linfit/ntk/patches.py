"""Input patches of a convolution: what its kernel multiplies at each output position.

One extractor serves the structured NTK's factors (:func:`linfit.ntk.structured_layers.conv_patches`) and the
per-sample kernel gradients of the Jacobian path (:mod:`linfit.ntk.vjp_rules`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def patches(x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: str | Sequence[tuple[int, int]],
            lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None) -> jax.Array:
    """``[B, *spatial, C] -> [B, *out, C·K]``: the input patch under the window (``K = prod(window)`` offsets)
    at every output position of ``lax.conv_general_dilated`` with these settings, channel-major (channel c's K
    values are contiguous, so each group of a grouped convolution owns a contiguous slice), the layout of
    ``lax.conv_general_dilated_patches``.

    Exact copies of the input: one strided slice of the padded input per kernel offset, ``S·K`` copies where the
    identity convolution of ``conv_general_dilated_patches`` costs ``S·K²`` multiply-adds (1.3-1.6x slower for 3x3
    kernels on a CPU, ``benchmarks/conv_patches.py``). Input (transposed) dilation takes
    ``conv_general_dilated_patches`` at ``Precision.HIGHEST``, so accelerators do not round the copies.

    Args:
      x: ``[B, *spatial, C]``, 1 to 3 spatial dimensions.
      window: kernel size per spatial dimension; strides: window strides.
      padding: ``"SAME"``, ``"VALID"`` or one ``(low, high)`` pair per spatial dimension.
      lhs_dilation, rhs_dilation: input and kernel dilation (default 1).
    """
    n = len(window)
    lhs_dilation = tuple(lhs_dilation or (1,) * n)
    rhs_dilation = tuple(rhs_dilation or (1,) * n)
    if lhs_dilation != (1,) * n:
        spatial = "DHW"[-n:]
        return lax.conv_general_dilated_patches(
            x, filter_shape=tuple(window), window_strides=tuple(strides), padding=padding,
            lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=("N" + spatial + "C", "OI" + spatial, "N" + spatial + "C"),
            precision=lax.Precision.HIGHEST)
    span = [(k - 1) * d + 1 for k, d in zip(window, rhs_dilation)]
    pads = lax.padtype_to_pads(x.shape[1:-1], span, strides, padding) if isinstance(padding, str) else padding
    if any(lo or hi for lo, hi in pads):
        x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(int(lo), int(hi), 0) for lo, hi in pads] + [(0, 0, 0)])
    out = [(size_in - w) // s + 1 for size_in, w, s in zip(x.shape[1:-1], span, strides)]
    slices = []
    for offset in itertools.product(*(range(k) for k in window)):
        start = [o * d for o, d in zip(offset, rhs_dilation)]
        limit = [b + (m - 1) * s + 1 for b, m, s in zip(start, out, strides)]
        slices.append(lax.slice(x, (0, *start, 0), (x.shape[0], *limit, x.shape[-1]), (1, *strides, 1)))
    stacked = jnp.stack(slices, axis=-1) if len(slices) > 1 else slices[0][..., None]  # [B, *out, C, K]
    return stacked.reshape(*stacked.shape[:-2], -1)
