"""The benchmark's result store: an embedded SQLite database, one row per finished unit of work.

A *unit* is the smallest piece of the benchmark grid worth keeping: the scores of one model on one task, the
fine-tuning of one model on one task, ... Each unit is written in its own transaction when it finishes, so an
interrupted run loses at most the unit in flight, and a rerun skips the units already stored. Several processes
(or hosts on a shared filesystem) may write to one database: it runs in WAL mode, and ``shard_of`` splits a grid
deterministically so that shards never duplicate work. Reports are computed from the store, never from memory.

Example::

    >>> store = ResultStore(":memory:")
    >>> store.put("scores/m1/task", "scores", {"lfc": 0.5}, config={"n": 25})
    >>> store.has("scores/m1/task"), store.get("scores/m1/task")["record"]["lfc"]
    (True, 0.5)
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from linfit.errors import LinfitError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    record TEXT NOT NULL,
    config TEXT NOT NULL,
    version TEXT NOT NULL,
    host TEXT NOT NULL,
    finished REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS units_kind ON units(kind);
"""


def shard_of(key: str, num_shards: int) -> int:
    """The shard (``0..num_shards-1``) that owns ``key``: a stable hash, identical on every host."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0-based ``i``) into ``(i, n)``."""
    try:
        index, total = (int(part) for part in text.split("/"))
    except ValueError:
        raise LinfitError(f"a shard is written i/n with 0 <= i < n, e.g. 0/2; got {text!r}") from None
    if not 0 <= index < total:
        raise LinfitError(f"a shard is written i/n with 0 <= i < n; got {text!r}")
    return index, total


class ResultStore:
    """Finished units of a benchmark in one SQLite file (``":memory:"`` for a throw-away store)."""

    def __init__(self, path: str | os.PathLike, *, timeout_s: float = 60.0):
        self.path = str(path)
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=%d" % int(timeout_s * 1000))
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def has(self, key: str) -> bool:
        """Whether the unit ``key`` has finished."""
        return self._db.execute("SELECT 1 FROM units WHERE key = ?", (key,)).fetchone() is not None

    def keys(self, kind: str | None = None) -> set[str]:
        """Keys of the finished units (of one ``kind`` if given)."""
        if kind is None:
            rows = self._db.execute("SELECT key FROM units")
        else:
            rows = self._db.execute("SELECT key FROM units WHERE kind = ?", (kind,))
        return {key for (key,) in rows}

    def put(self, key: str, kind: str, record: dict, *, config: dict | None = None) -> None:
        """Store a finished unit in one transaction.

        ``record`` and ``config`` must be JSON-serialisable (numbers, strings, lists, dicts). Storing a key
        twice raises ``LinfitError``: a finished unit is never silently overwritten.
        """
        from linfit import __version__

        row = (
            key,
            kind,
            json.dumps(record, sort_keys=True),
            json.dumps(config or {}, sort_keys=True),
            __version__,
            os.uname().nodename,
            time.time(),
        )
        try:
            with self._transaction():
                self._db.execute("INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.IntegrityError:
            raise LinfitError(f"unit {key!r} is already stored; delete it first to recompute it") from None

    def delete(self, key: str) -> None:
        """Forget a unit so the next run recomputes it."""
        with self._transaction():
            self._db.execute("DELETE FROM units WHERE key = ?", (key,))

    def get(self, key: str) -> dict:
        """The stored unit as ``{"key", "kind", "record", "config", "version", "host", "finished"}``."""
        row = self._db.execute("SELECT * FROM units WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise LinfitError(f"unit {key!r} is not in the store {self.path}")
        return self._row(row)

    def units(self, kind: str | None = None) -> Iterator[dict]:
        """Every stored unit (of one ``kind`` if given), in key order."""
        if kind is None:
            rows = self._db.execute("SELECT * FROM units ORDER BY key")
        else:
            rows = self._db.execute("SELECT * FROM units WHERE kind = ? ORDER BY key", (kind,))
        for row in rows.fetchall():
            yield self._row(row)

    @staticmethod
    def _row(row: tuple) -> dict:
        key, kind, record, config, version, host, finished = row
        return {
            "key": key,
            "kind": kind,
            "record": json.loads(record),
            "config": json.loads(config),
            "version": version,
            "host": host,
            "finished": finished,
        }

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()
