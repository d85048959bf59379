"""Run a grid of benchmark units against a ``ResultStore``: skip finished ones, keep each as it finishes.

Example::

    >>> from linfit.bench.store import ResultStore
    >>> store = ResultStore(":memory:")
    >>> units = [Unit(key=f"square/{i}", kind="toy", config={"i": i}) for i in range(4)]
    >>> run_units(store, units, lambda u: {"y": u.config["i"] ** 2})
    4
    >>> run_units(store, units, lambda u: {"y": u.config["i"] ** 2})   # nothing left to do
    0

A unit with ``parts`` (e.g. the scores of one model on one task) is stored as one row per part, computed
together: a rerun that asks for more parts computes only the missing ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

from tqdm.auto import tqdm

from linfit.bench.store import ResultStore, part_key, shard_of


@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of a benchmark grid: a unique ``key``, a ``kind`` (e.g. "scores", "finetune"), the
    JSON-serialisable ``config`` that determines its result, and optionally its ``parts``: names of results
    computed together but stored (and skipped on rerun) one by one, under ``part_key(key, part)``."""

    key: str
    kind: str
    config: dict[str, Any]
    parts: tuple[str, ...] = ()


def run_units(
    store: ResultStore,
    units: Iterable[Unit],
    compute: Callable[[Unit], dict],
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = False,
) -> int:
    """Compute and store every unit (or part of a unit) of this shard that the store does not hold yet.

    Args:
      store: where finished units go (one transaction per unit or part).
      units: the grid; keys must be unique.
      compute: ``unit -> record`` (a JSON-serialisable dict); its wall time is added as ``record["seconds"]``.
        For a unit with ``parts`` it gets the unit reduced to the missing parts and returns ``{part: record}``
        (no wall time is added: a part's record carries its own).
      shard: ``(i, n)``: only units with ``shard_of(key, n) == i`` are this process's (all parts of a unit
        belong to one shard).
      progress: show a progress bar.

    Returns:
      The number of units computed by this call (a unit of which only some parts were missing counts once).
    """
    index, total = shard
    todo = []
    for unit in units:
        if shard_of(unit.key, total) != index:
            continue
        if unit.parts:
            missing = tuple(p for p in unit.parts if not store.has(part_key(unit.key, p)))
            if missing:
                todo.append(dataclasses.replace(unit, parts=missing))
        elif not store.has(unit.key):
            todo.append(unit)
    for unit in tqdm(todo, desc="units", disable=not progress):
        start = time.perf_counter()
        result = dict(compute(unit))
        if unit.parts:
            for part in unit.parts:
                store.put(part_key(unit.key, part), unit.kind, result[part], config=unit.config)
        else:
            result.setdefault("seconds", time.perf_counter() - start)
            store.put(unit.key, unit.kind, result, config=unit.config)
    return len(todo)
