"""The result store keeps finished units, skips them on rerun, survives a killed run, splits shards into their own
files and merges them, and reads (migrates) stores of the older layout."""

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from linfit.bench.runner import Unit, run_units
from linfit.bench.store import ResultStore, parse_shard, read_stores, shard_of
from linfit.cli import main
from linfit.errors import LinfitError

GRID = 12

WORKER = textwrap.dedent(
    """
    import sys, time
    from linfit.bench.runner import Unit, run_units
    from linfit.bench.store import ResultStore, parse_shard
    path, shard, slow_after = sys.argv[1], parse_shard(sys.argv[2]), int(sys.argv[3])
    units = [Unit(key=f"u/{i:02d}", kind="toy", config={"i": i}) for i in range(%d)]
    def compute(unit):
        if unit.config["i"] >= slow_after:
            print("slow", unit.key, flush=True)
            time.sleep(60)
        return {"value": unit.config["i"] ** 2}
    with ResultStore(path) as store:
        run_units(store, units, compute, shard=shard)
    """
    % GRID
)


def _worker(tmp_path, shard="0/1", slow_after=GRID, db="bench.sqlite"):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / db), shard, str(slow_after)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _check_complete(path):
    with ResultStore(path) as store:
        _check_rows(store)


def _check_rows(store):
    rows = list(store.units("toy"))
    assert [r["key"] for r in rows] == [f"u/{i:02d}" for i in range(GRID)]
    assert all(r["record"]["value"] == r["config"]["i"] ** 2 for r in rows)


def test_put_get_and_refuses_overwrite():
    store = ResultStore(":memory:")
    store.put("a", "scores", {"lfc": 0.25, "curve": [1.0, 0.5]}, config={"seed": 3})
    row = store.get("a")
    assert row["record"] == {"lfc": 0.25, "curve": [1.0, 0.5]} and row["config"] == {"seed": 3}
    with pytest.raises(LinfitError, match="already stored"):
        store.put("a", "scores", {"lfc": 0.3})
    with pytest.raises(LinfitError, match="not in the store"):
        store.get("b")
    store.delete("a")
    assert not store.has("a")


def test_rerun_skips_finished_units():
    store = ResultStore(":memory:")
    calls = []
    units = [Unit(key=f"k{i}", kind="toy", config={"i": i}) for i in range(5)]
    assert run_units(store, units[:3], lambda u: calls.append(u.key) or {"i": u.config["i"]}) == 3
    assert run_units(store, units, lambda u: calls.append(u.key) or {"i": u.config["i"]}) == 2
    assert calls == ["k0", "k1", "k2", "k3", "k4"]


def test_killed_run_loses_only_the_unit_in_flight(tmp_path):
    proc = _worker(tmp_path, slow_after=7)
    for line in proc.stdout:  # wait until the worker is inside unit 7
        if line.startswith("slow"):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with ResultStore(tmp_path / "bench.sqlite") as store:
        assert store.keys() == {f"u/{i:02d}" for i in range(7)}
    rerun = _worker(tmp_path)
    assert rerun.wait(timeout=120) == 0
    _check_complete(tmp_path / "bench.sqlite")


def test_two_shards_share_one_local_database_without_duplicates(tmp_path):
    workers = [_worker(tmp_path, shard=f"{i}/2") for i in range(2)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    _check_complete(tmp_path / "bench.sqlite")
    owners = {shard_of(f"u/{i:02d}", 2) for i in range(GRID)}
    assert owners == {0, 1}


def test_parse_shard_rejects_bad_text():
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "1", "-1/2"):
        with pytest.raises(LinfitError, match="i/n"):
            parse_shard(bad)


def test_parts_missing_from_the_store_are_computed_alone():
    store = ResultStore(":memory:")
    calls = []

    def compute(unit):
        calls.append((unit.key, unit.parts))
        return {p: {"value": 10 * unit.config["i"] + ord(p)} for p in unit.parts}

    grid = [Unit(key=f"s/{i}", kind="toy", config={"i": i}, parts=("a",)) for i in range(3)]
    assert run_units(store, grid, compute) == 3
    finished = {key: store.get(key)["finished"] for key in store.keys()}
    grid = [Unit(key=f"s/{i}", kind="toy", config={"i": i}, parts=("a", "b")) for i in range(3)]
    assert run_units(store, grid, compute) == 3
    assert calls[3:] == [(f"s/{i}", ("b",)) for i in range(3)]  # only the added part, once per unit
    assert store.keys() == {f"s/{i}/{p}" for i in range(3) for p in "ab"}
    assert all(store.get(f"s/{i}/{p}")["record"]["value"] == 10 * i + ord(p) for i in range(3) for p in "ab")
    assert {key: store.get(key)["finished"] for key in finished} == finished  # the stored parts are untouched
    assert run_units(store, grid, compute) == 0


def test_shards_in_their_own_files_merge_into_the_whole_grid(tmp_path):
    workers = [_worker(tmp_path, shard=f"{i}/2", db=f"shard{i}.sqlite") for i in range(2)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    for i in range(2):
        with ResultStore(tmp_path / f"shard{i}.sqlite") as store:
            assert store.keys() == {f"u/{j:02d}" for j in range(GRID) if shard_of(f"u/{j:02d}", 2) == i}
    with read_stores(str(tmp_path / "shard*.sqlite")) as merged:
        _check_rows(merged)
        assert merged.sources == [str(tmp_path / f"shard{i}.sqlite") for i in range(2)]
    with read_stores([tmp_path / "shard0.sqlite", tmp_path / "shard1.sqlite", tmp_path / "shard0.sqlite"]) as again:
        _check_rows(again)  # a file named twice: identical duplicates are kept once


def test_merge_accepts_equal_results_and_refuses_conflicting_ones(tmp_path):
    config = {"model": "m", "task": "t"}
    with ResultStore(tmp_path / "a.sqlite") as a, ResultStore(tmp_path / "b.sqlite") as b:
        a.put("k", "finetune", {"accuracy": 50.0, "seconds": 3.0}, config=config)
        b.put("k", "finetune", {"accuracy": 50.0, "seconds": 7.5}, config=config)  # rerun elsewhere: other time
        b.put("j", "finetune", {"accuracy": 20.0, "seconds": 1.0}, config=config)
    with read_stores([tmp_path / "a.sqlite", tmp_path / "b.sqlite"]) as merged:
        assert merged.keys() == {"j", "k"} and merged.get("k")["record"]["seconds"] == 3.0  # the first file's
    with ResultStore(tmp_path / "c.sqlite") as c:
        c.put("k", "finetune", {"accuracy": 51.0, "seconds": 3.0}, config=config)
    with pytest.raises(LinfitError, match=r"'k' holds different results in .*a\.sqlite and .*c\.sqlite"):
        read_stores([tmp_path / "a.sqlite", tmp_path / "c.sqlite"])


def test_missing_or_foreign_store_files_are_clear_errors(tmp_path):
    with pytest.raises(LinfitError, match="no benchmark store at .*typo.sqlite"):
        main(["--debug", "report", "--db", str(tmp_path / "results" / "typo.sqlite"), "--out", str(tmp_path / "report")])
    with pytest.raises(LinfitError, match="no benchmark store at .*typo.sqlite"):
        main(["--debug", "report", "--db", str(tmp_path / "typo.sqlite"), "--out", str(tmp_path / "report")])
    assert sorted(os.listdir(tmp_path)) == []  # no database, no folder, no report created
    with pytest.raises(LinfitError, match=r"no benchmark store at .*\*\.sqlite"):
        read_stores(str(tmp_path / "*.sqlite"))
    (tmp_path / "notes.sqlite").write_text("not a database")
    with pytest.raises(LinfitError, match="not a readable SQLite result store"):
        read_stores(tmp_path / "notes.sqlite")
    with contextlib.closing(sqlite3.connect(tmp_path / "other.sqlite")) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(LinfitError, match="not a linfit result store"):
        read_stores(tmp_path / "other.sqlite")


def _legacy_store(path):
    """A store as written before setting ids: one scores row with every score, keys without the setting."""
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE units (key TEXT PRIMARY KEY, kind TEXT NOT NULL, record TEXT NOT NULL, "
                     "config TEXT NOT NULL, version TEXT NOT NULL, host TEXT NOT NULL, finished REAL NOT NULL);"
                     "PRAGMA journal_mode=WAL;")
    ident = {"model": "m", "task": "t", "regime": "5shot", "seed": 0, "reference": True}
    rows = [("scores/m/t:5shot/seed0", "scores",
             {"scores": {"lfc": 0.25, "leep": -1.5}, "timings": {"lfc": 0.5, "leep": 0.25}, "seconds": 0.75},
             {**ident, "scores": ["lfc", "leep"], "per_class": 10, "head_samples": 8}),
            ("finetune/m/t:5shot/seed0", "finetune", {"accuracy": 42.0, "seconds": 9.0},
             {**ident, "epochs": 5, "batch_size": 32}),
            ("u/00", "toy", {"value": 0}, {"i": 0})]
    db.executemany("INSERT INTO units VALUES (?, ?, ?, ?, '0.0.9', 'old-host', 1.0)",
                   [(key, kind, json.dumps(rec), json.dumps(cfg)) for key, kind, rec, cfg in rows])
    db.commit()
    db.close()


def test_older_stores_are_migrated_in_memory_when_read_and_in_place_when_written(tmp_path):
    path = tmp_path / "old.sqlite"
    _legacy_store(path)
    before = path.read_bytes()
    # setting ids written out by hand: SHA-256 of the kind and setting as sorted JSON, 12 hex digits
    scoring = hashlib.sha256(b'{"kind": "scores", "setting": {"head_samples": 8, "per_class": 10}}').hexdigest()[:12]
    tuning = hashlib.sha256(b'{"kind": "finetune", "setting": {"batch_size": 32, "epochs": 5}}').hexdigest()[:12]
    expected = {f"scores/m/t:5shot/seed0/{scoring}/lfc": {"scores": {"lfc": 0.25}, "timings": {"lfc": 0.5}},
                f"scores/m/t:5shot/seed0/{scoring}/leep": {"scores": {"leep": -1.5}, "timings": {"leep": 0.25}},
                f"finetune/m/t:5shot/seed0/{tuning}": {"accuracy": 42.0, "seconds": 9.0},
                "u/00": {"value": 0}}
    with read_stores(path) as store:
        assert {row["key"]: row["record"] for row in store.units()} == expected
        assert all(row["version"] == "0.0.9" for row in store.units())
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["old.sqlite"]  # read, not changed
    with ResultStore(path) as store:  # opened for writing: migrated in place
        assert {row["key"]: row["record"] for row in store.units()} == expected
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)


def test_connections_creating_one_store_at_once_all_open_it(tmp_path):
    # SQLite can answer "database is locked" to the WAL pragma of a fresh file without waiting; threads with
    # their own connections race like processes do (100 rounds of 6 failed without the retry).
    def open_and_put(path, i, errors):
        try:
            with ResultStore(path) as store:
                store.put(f"u/{i}", "toy", {"i": i})
        except Exception as err:  # collected: an exception in a thread would not fail the test
            errors.append(err)

    errors = []
    for round_ in range(100):
        path = tmp_path / f"race{round_}.sqlite"
        threads = [threading.Thread(target=open_and_put, args=(path, i, errors)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
