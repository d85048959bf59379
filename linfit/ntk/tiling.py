"""The analytic tile-size estimate, the first guess of the measured tile planner.

``tile_size_for_budget`` solves, for a budget of ``B`` bytes, for the largest ``t`` with

    itemsize * (2 * t * O * P + t**2 * K) <= B

i.e. the two tiles' Jacobians (``t`` samples x ``O`` outputs x ``P`` selected parameters each) plus the kernel
tile (``K`` numbers per sample pair, e.g. ``O**2`` untraced). It ignores XLA's work space and is several times
low (``benchmarks/RESULTS.md`` section 3), so :func:`linfit.ntk.sharding.plan_tiles` only starts from it and
measures the compiled program. ``O`` and ``P`` come from ``ntk_fn.outputs_per_sample`` / ``ntk_fn.num_params``
when it has them (:class:`linfit.ntk.empirical.NtkFn` does); otherwise ``O = ceil(sqrt(K))`` and ``P`` = all
parameters. ``ntk_tiled`` is a deprecated alias of :func:`linfit.ntk.kernel`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_MEMORY_BUDGET_BYTES = 2**30


def tile_size_for_budget(
    n: int,
    *,
    outputs_per_sample: int,
    num_params: int,
    pair_size: int,
    itemsize: int,
    budget_bytes: int,
) -> int:
    """Largest ``t <= n`` with ``itemsize * (2 t O P + t^2 K) <= budget_bytes`` (at least 1)."""
    a = itemsize * pair_size
    b = itemsize * 2 * outputs_per_sample * num_params
    # positive root of a t^2 + b t = budget
    t = (-b + math.sqrt(b * b + 4 * a * budget_bytes)) / (2 * a)
    return int(max(1, min(n, math.floor(t))))


def ntk_tiled(ntk_fn, x1, x2, params, *, tile_size=None, memory_budget_bytes=None, out=None, progress=False,
              on_tile=None) -> np.ndarray:
    """Deprecated: use :func:`linfit.ntk.kernel` (``output=out`` or ``"host"``); same arguments, same result."""
    from linfit.ntk.entry import deprecated, kernel

    deprecated("linfit.ntk.ntk_tiled", "linfit.ntk.kernel")
    return kernel(ntk_fn, x1, x2, params, tile_size=tile_size, memory_budget_bytes=memory_budget_bytes,
                  output="host" if out is None else out, progress=progress, on_tile=on_tile)


def budget_tile_size(ntk_fn, x, params, n, pair_size, itemsize, budget) -> int:
    """Tile side for ``ntk_fn`` on inputs like ``x`` from a byte budget (``tile_size_for_budget`` with ``O`` and
    ``P`` read off ``ntk_fn`` when it knows them)."""
    if hasattr(ntk_fn, "outputs_per_sample") and hasattr(ntk_fn, "num_params"):
        o, p = ntk_fn.outputs_per_sample(x, params), ntk_fn.num_params(params)
    else:
        o = math.isqrt(pair_size - 1) + 1 if pair_size > 1 else 1
        p = sum(
            math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)
        )
    return tile_size_for_budget(
        n,
        outputs_per_sample=o,
        num_params=p,
        pair_size=pair_size,
        itemsize=itemsize,
        budget_bytes=budget,
    )
