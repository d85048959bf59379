"""Analyses of an apply function computed once per process: what depends only on ``f`` and argument shapes.

Several kernel functions of one model share its apply function ``f`` (``linfit select`` takes the NTK of all
parameters and of the last convolution; every model of a zoo architecture shares one ``f``). The analyses that
trace ``f`` give each of them the same answer: XLA's cost of its forward and backward passes
(:mod:`linfit.ntk.cost`), its Dense/Conv layers (:func:`linfit.ntk.structured_layers.find_layers`), the leaves it
reads and whether its samples are independent (:mod:`linfit.ntk._checks`). Tracing a Flax model takes 0.1-0.3 s
on a CPU, and these analyses traced it some forty times per architecture (``benchmarks/RESULTS.md`` §7c), so
each is kept per ``(f, key)``, the key holding the argument shapes (:func:`linfit.ntk._checks.signature`) and
the analysis' own options (the cost model keeps a jaxpr of ``f`` per batch size and builds its programs
from it, :func:`linfit.ntk.cost._replayed`). Entries live as long as ``f`` does; ``f`` must be pure, as
everywhere in :mod:`linfit.ntk`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

_TABLES: weakref.WeakKeyDictionary[Callable, dict[Hashable, Any]] = weakref.WeakKeyDictionary()


def memoised(f: Callable, key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, or the value it returned for the same ``f`` and ``key`` earlier in this process. A call
    that raises stores nothing; an ``f`` that cannot be weakly referenced is never memoised."""
    try:
        table = _TABLES.setdefault(f, {})
    except TypeError:
        return compute()
    if key not in table:
        table[key] = compute()
    return table[key]
