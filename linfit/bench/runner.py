"""Run a grid of benchmark units against a ``ResultStore``: skip finished ones, keep each as it finishes.

Example::

    >>> from linfit.bench.store import ResultStore
    >>> store = ResultStore(":memory:")
    >>> units = [Unit(key=f"square/{i}", kind="toy", config={"i": i}) for i in range(4)]
    >>> run_units(store, units, lambda u: {"y": u.config["i"] ** 2})
    4
    >>> run_units(store, units, lambda u: {"y": u.config["i"] ** 2})   # nothing left to do
    0
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

from tqdm.auto import tqdm

from linfit.bench.store import ResultStore, shard_of


@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of a benchmark grid: a unique ``key``, a ``kind`` (e.g. "scores", "finetune") and the
    JSON-serialisable ``config`` that determines its result."""

    key: str
    kind: str
    config: dict[str, Any]


def run_units(
    store: ResultStore,
    units: Iterable[Unit],
    compute: Callable[[Unit], dict],
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = False,
) -> int:
    """Compute and store every unit of this shard that the store does not hold yet.

    Args:
      store: where finished units go (one transaction per unit).
      units: the grid; keys must be unique.
      compute: ``unit -> record`` (a JSON-serialisable dict); its wall time is added as ``record["seconds"]``.
      shard: ``(i, n)``: only units with ``shard_of(key, n) == i`` are this process's.
      progress: show a progress bar.

    Returns:
      The number of units computed by this call.
    """
    index, total = shard
    todo = [u for u in units if shard_of(u.key, total) == index and not store.has(u.key)]
    done = 0
    for unit in tqdm(todo, desc="units", disable=not progress):
        start = time.perf_counter()
        record = dict(compute(unit))
        record.setdefault("seconds", time.perf_counter() - start)
        store.put(unit.key, unit.kind, record, config=unit.config)
        done += 1
    return done
