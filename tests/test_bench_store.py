"""The result store keeps finished units, skips them on rerun, survives a killed run and splits shards."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from linfit.bench.runner import Unit, run_units
from linfit.bench.store import ResultStore, parse_shard, shard_of
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


def _worker(tmp_path, shard="0/1", slow_after=GRID):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "bench.sqlite"), shard, str(slow_after)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _check_complete(path):
    with ResultStore(path) as store:
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


def test_two_shards_share_one_database_without_duplicates(tmp_path):
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
