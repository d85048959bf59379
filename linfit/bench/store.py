"""The benchmark's result store: an embedded SQLite database, one row per finished unit of work.

A *unit* is the smallest piece of the benchmark grid worth keeping: one score of one model on one task, the
fine-tuning of one model on one task, ... Each unit is written in its own transaction when it finishes, so an
interrupted run loses at most the unit in flight, and a rerun skips the units already stored. Reports are
computed from the store, never from memory.

Identity. A unit's key names everything that changes its result: its grid coordinates (``model``, ``task``,
``regime``, ``seed``), its *setting* (every other entry of its config: for a fine-tuning the batch size,
learning rates, fine-tuning seeds, convergence protocol and training-set cap; for a score the scoring subset
size and head samples; the zoo and the data when they are not the embedded ones, so two zoos or datasets never
share a unit), and, for a score, the score's name (``unit_key``, ``part_key``):
``scores/<model>/<task>:<regime>/seed<n>/<setting id>/<score>`` and
``finetune/<model>/<task>:<regime>/seed<n>/<setting id>``, the setting id a hash of the setting. A changed
setting is therefore a new unit, and an added score is a new unit next to the stored ones. The linfit version
(``linfit.__version__``) and the host are recorded with every row and shown by the report, but are not part of
the identity: a rerun under a newer linfit keeps the stored results; to recompute them, write a new store.

Several processes. One database file per host: SQLite's locking (WAL mode here) needs a local file system and
can corrupt a file shared over NFS or SMB. ``shard_of`` splits a grid deterministically, so shards never
duplicate work; give each shard its own file and read them together with ``read_stores`` (identical duplicate
rows are fine, conflicting ones an error). Processes on one host may share one local file.

Older stores (schema 0: one ``scores`` row holding every requested score, keys without the setting id) are
migrated to this layout when opened for writing, and migrated in memory when read with ``read_stores``.

Example::

    >>> store = ResultStore(":memory:")
    >>> store.put("scores/m1/task", "scores", {"lfc": 0.5}, config={"n": 25})
    >>> store.has("scores/m1/task"), store.get("scores/m1/task")["record"]["lfc"]
    (True, 0.5)
"""

from __future__ import annotations

import base64
import binascii
import glob
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from linfit.errors import LinfitError

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of a store in the current layout (0: the layout before setting ids and score parts)."""

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

GRID_FIELDS = ("model", "architecture", "task", "regime", "seed", "reference")
"""Config entries that place a benchmark unit in the grid (``architecture`` and ``reference`` follow from the
model); every other entry is the unit's setting, including the zoo and the data a unit ran on when they are not
the embedded zoo and a named task (``linfit.bench.grid.zoo_identity``, ``data_identity``)."""

TIMING_FIELDS = ("seconds", "timings", "compile_seconds")
"""Record entries holding wall times (compile time included: only the first unit of an architecture in a process
compiles): they differ between two runs of one unit, so merging does not compare them."""


def setting(config: dict) -> dict:
    """The setting of a unit's ``config``: every entry but ``GRID_FIELDS`` and ``"scores"`` (the score names of a
    schema-0 row, which became parts of the unit rather than a setting)."""
    return {k: v for k, v in config.items() if k not in GRID_FIELDS and k != "scores"}


def setting_id(kind: str, config: dict) -> str:
    """12 hex digits of the SHA-256 of ``{"kind": kind, "setting": setting(config)}`` as sorted JSON: units of one
    kind with equal settings have equal ids, and units of different kinds never share one."""
    text = json.dumps({"kind": kind, "setting": setting(config)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def pack_bools(values) -> dict:
    """A compact JSON form of a boolean vector ``[N]`` (e.g. which test images a fine-tuned model classifies
    correctly): ``{"n": N, "bits": base64 of numpy.packbits(values)}``, about 1.3 characters per 8 entries.
    Inverse: ``unpack_bools``."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise LinfitError(f"pack_bools needs a one-dimensional vector [N]; got shape {values.shape}")
    return {"n": int(values.size), "bits": base64.b64encode(np.packbits(values.astype(bool))).decode("ascii")}


def unpack_bools(packed: dict) -> np.ndarray:
    """``[N]`` bool: the vector ``pack_bools`` encoded. Raises ``LinfitError`` on a malformed entry (a store
    written by something else, or edited by hand)."""
    try:
        n = int(packed["n"])
        bits = np.frombuffer(base64.b64decode(packed["bits"], validate=True), dtype=np.uint8)
    except (KeyError, TypeError, ValueError, binascii.Error) as err:
        raise LinfitError(f"not a packed boolean vector (want {{'n': N, 'bits': base64}}): {err}") from None
    if not 0 <= n <= 8 * bits.size or bits.size != -(-n // 8):
        raise LinfitError(f"a packed boolean vector says n={n} but holds {bits.size} bytes")
    return np.unpackbits(bits, count=n).astype(bool)


def unit_key(kind: str, config: dict) -> str:
    """``<kind>/<model>/<task>:<regime>/seed<n>/<setting id>``: the key of a benchmark unit whose ``config``
    holds the grid coordinates ``model``, ``task``, ``regime``, ``seed`` and its setting."""
    cell = f"{config['model']}/{config['task']}:{config['regime']}/seed{config['seed']}"
    return f"{kind}/{cell}/{setting_id(kind, config)}"


def part_key(key: str, part: str) -> str:
    """The key of one separately stored part (e.g. one score) of the unit ``key``."""
    return f"{key}/{part}"


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


def _migrated(row: tuple) -> list[tuple]:
    """A schema-0 row in the current layout: a benchmark unit gets its setting id in the key, and a ``scores``
    row holding several scores becomes one row per score (each with its own timing; the row's total wall time,
    which no report reads, is dropped). Other rows are kept as they are."""
    key, kind, record, config, *rest = row
    cfg = json.loads(config)
    if kind not in ("scores", "finetune") or not {"model", "task", "regime"} <= cfg.keys():
        return [row]
    cfg.setdefault("seed", 0)  # the earliest stores had one seed and did not record it
    cfg.pop("scores", None)
    key, config = unit_key(kind, cfg), json.dumps(cfg, sort_keys=True)
    if kind == "finetune":
        return [(key, kind, record, config, *rest)]
    rec = json.loads(record)
    timings = rec.get("timings", {})
    return [(part_key(key, name), kind,
             json.dumps({"scores": {name: value}, "timings": {name: timings[name]} if name in timings else {}},
                        sort_keys=True), config, *rest)
            for name, value in rec["scores"].items()]


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the database to ``SCHEMA_VERSION`` in one transaction (nothing to do when it is there already)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            rows = [new for row in db.execute("SELECT * FROM units").fetchall() for new in _migrated(row)]
            db.execute("DELETE FROM units")
            db.executemany("INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _enable_wal(db: sqlite3.Connection, timeout_s: float) -> None:
    """Switch ``db`` to WAL mode. Two processes creating the same file at once can get "database is locked"
    from this pragma without SQLite's busy handler being consulted, so it is retried until ``timeout_s``
    (seconds) has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class ResultStore:
    """Finished units of a benchmark in one SQLite file (``":memory:"`` for a throw-away store), created if
    missing and migrated to ``SCHEMA_VERSION`` if older. To read stores without changing them, and several at
    once, use ``read_stores``. ``sources``: the files whose rows the store holds."""

    def __init__(self, path: str | os.PathLike, *, timeout_s: float = 60.0):
        self.path = str(path)
        self.sources = [self.path]
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        if self.path != ":memory:":
            _enable_wal(self._db, timeout_s)
        self._db.execute("PRAGMA busy_timeout=%d" % int(timeout_s * 1000))
        self._db.executescript(_SCHEMA)
        _migrate(self._db)

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


def read_stores(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> ResultStore:
    """The rows of every store file named by ``paths`` (file names or glob patterns such as
    ``"results/*.sqlite"``), merged into one in-memory ``ResultStore``; the files are read, never changed (an
    older file is migrated in memory). A unit found in several files is kept once when its records agree up to
    the wall times ``TIMING_FIELDS`` (the same file twice, a merged file with its parts).

    Raises:
      LinfitError: a name or pattern matches no file, a file is not a linfit result store, or two files hold
        one unit (same key, i.e. same identity) with different configs or results.
    """
    names = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[str] = []
    for name in map(str, names):
        found = [name] if os.path.isfile(name) else sorted(glob.glob(name))
        if not found:
            raise LinfitError(f"no benchmark store at {name!r}: give SQLite files written by `linfit bench` "
                              f"(or glob patterns matching them, quoted, e.g. 'results/*.sqlite')")
        files += [f for f in found if f not in files]
    merged = ResultStore(":memory:")
    merged.path, merged.sources = " + ".join(files), files
    origin: dict[str, str] = {}
    for file in files:
        for row in _read_rows(file):
            key = row[0]
            if key not in origin:
                merged._db.execute("INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                origin[key] = file
                continue
            first = merged._db.execute("SELECT * FROM units WHERE key = ?", (key,)).fetchone()
            if _result(first) != _result(row):
                raise LinfitError(f"unit {key!r} holds different results in {origin[key]} and {file}: one of "
                                  f"them is stale or was computed elsewhere; delete it from one file "
                                  f"(ResultStore(path).delete(key)) or leave that file out")
    return merged


def _read_rows(path: str) -> list[tuple]:
    """Every row of the store file ``path``, in the current layout (migrated in memory)."""
    copy = sqlite3.connect(":memory:", isolation_level=None)
    try:
        source = sqlite3.connect(path)  # the file exists: nothing is created; closing removes its WAL files
        try:
            source.backup(copy)
        finally:
            source.close()
        if copy.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'units'").fetchone() is None:
            raise LinfitError(f"{path} is not a linfit result store (it has no units table)")
        _migrate(copy)
        return copy.execute("SELECT * FROM units ORDER BY key").fetchall()
    except sqlite3.DatabaseError as err:
        raise LinfitError(f"{path} is not a readable SQLite result store: {err}") from None
    finally:
        copy.close()


def _result(row: tuple) -> tuple:
    """What must agree between two copies of a unit: its kind, config and record without the wall times."""
    _, kind, record, config, *_ = row
    return kind, json.loads(config), {k: v for k, v in json.loads(record).items() if k not in TIMING_FIELDS}
