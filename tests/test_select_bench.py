"""The main job and the benchmark end to end on the committed zoo: small settings, independent checks."""

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from linfit import zoo
from linfit.bench import grid
from linfit.bench.grid import BenchConfig, run_bench, units
from linfit.bench.report import ranking_frame, settings_frame, write_report
from linfit.bench.store import TIMING_FIELDS, ResultStore, read_stores
from linfit.cli import main
from linfit.data import load_task
from linfit.errors import LinfitError
from linfit.finetune import GridProtocol
from linfit.scores import leep, lfc
from linfit.select import select

pytestmark = pytest.mark.slow
TASK = "font_digits:5shot"
TINY_FINETUNING = dict(learning_rates=(0.01,), finetune_seeds=(0,),
                       protocol=GridProtocol(window=1, max_steps=1, max_extensions=0))
"""The cheapest fine-tuning ground truth: one seed, one learning rate, one SGD step."""


@pytest.fixture(scope="module")
def two_models():
    names = zoo.names()
    reference = next(n for n in names if zoo.load(n).is_reference)
    expert = next(n for n in names if not zoo.load(n).is_reference)
    return [reference, expert]


def test_select_matches_scores_computed_directly(two_models):
    result = select(TASK, ("lfc", "leep"), models=two_models, per_class=3, head_samples=None)
    subset = load_task(TASK, seed=0).scoring_set(per_class=3, seed=0)
    for name in two_models:
        m = zoo.load(name)
        phi = np.asarray(m.model.apply(m.variables, subset.x, method="features"))
        logits = np.asarray(m.model.apply(m.variables, subset.x), dtype=np.float64)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        row = result.table.set_index("model").loc[name]
        assert row.lfc == pytest.approx(lfc(phi, subset.y), rel=1e-4)
        assert row.leep == pytest.approx(leep(probs, subset.y), rel=1e-4)
    ordered = result.table.lfc.to_numpy()
    assert np.all(ordered[:-1] >= ordered[1:]) and list(result.table.rank_lfc) == [1, 2]
    assert result.num_samples == subset.y.size and result.curves == {}


def test_select_cli_json_and_curves(two_models, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    assert main(["select", "--task", TASK, "--models", *two_models, "--scores", "linearized_loss", "lfc",
                 "--per-class", "3", "--json", "--plot", str(plot), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == TASK and {m["model"] for m in out["models"]} == set(two_models)
    assert all(-1.0 <= m["linearized_loss"] <= 0.0 for m in out["models"])
    assert plot.stat().st_size > 1000


def test_bench_two_models_two_tasks_resumes_and_reports(two_models, tmp_path):
    config = BenchConfig(models=tuple(two_models), tasks=("font_digits", "hebrew"), regimes=("5shot",),
                         scores=("lfc", "leep"), per_class=3, **TINY_FINETUNING)
    assert len(units(config)) == 8
    with ResultStore(tmp_path / "bench.sqlite") as store:
        assert run_bench(config, store) == 8
        assert run_bench(config, store) == 0
        rows = list(store.units("finetune"))
        assert all(0.0 <= r["record"]["accuracy"] <= 100.0 for r in rows)
        ranking = ranking_frame(store)
        assert set(ranking.task) == {"font_digits", "hebrew"} and {"lfc", "leep", "best"} <= set(ranking.score)
        write_report(store, tmp_path / "report")
    assert "lfc" in (tmp_path / "report" / "report.md").read_text()


def _config(models, **changes):
    """The smallest bench grid: two models, one task, 5-shot, one score, one SGD step of one seed at one learning
    rate (the stable hash of its four unit keys gives each of two shards at least one)."""
    base = BenchConfig(models=tuple(models), tasks=("hebrew",), regimes=("5shot",), scores=("lfc",),
                       per_class=3, **TINY_FINETUNING)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def single_run(two_models, tmp_path_factory):
    """A store of ``_config`` computed in this process."""
    path = tmp_path_factory.mktemp("single") / "bench.sqlite"
    with ResultStore(path) as store:
        assert run_bench(_config(two_models), store) == 4
    return path


SHARD_WORKER = textwrap.dedent(
    """
    import json, sys
    from linfit.bench.grid import BenchConfig, run_bench
    from linfit.bench.store import ResultStore, parse_shard
    config, db, shard = BenchConfig(**json.loads(sys.argv[1])), sys.argv[2], parse_shard(sys.argv[3])
    with ResultStore(db) as store:
        print(run_bench(config, store, shard=shard))
    """
)


def _results(store):
    """Every unit as ``{key: (config, record without wall times)}``."""
    return {u["key"]: (u["config"], {k: v for k, v in u["record"].items() if k not in TIMING_FIELDS})
            for u in store.units()}


def test_shards_in_two_processes_and_files_merge_into_the_single_run(two_models, single_run, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SHARD_WORKER)
    config = json.dumps(dataclasses.asdict(_config(two_models)))
    workers = [subprocess.Popen([sys.executable, str(script), config,
                                 str(tmp_path / f"shard{i}.sqlite"), f"{i}/2"], stdout=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert sum(int(o) for o in outputs) == 4 and min(int(o) for o in outputs) >= 1  # split, none done twice
    with read_stores(str(tmp_path / "shard*.sqlite")) as merged, read_stores(single_run) as single:
        assert _results(merged) == _results(single)
        pd.testing.assert_frame_equal(ranking_frame(merged), ranking_frame(single))
    assert main(["report", "--db", str(tmp_path / "shard*.sqlite"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Store: `shard0.sqlite`, `shard1.sqlite`" in text and "| lfc |" in text


def test_rerun_computes_added_scores_and_changed_settings_only(two_models, single_run, tmp_path, monkeypatch):
    path = tmp_path / "bench.sqlite"
    shutil.copy(single_run, path)
    asked = []
    compute_scores = grid._compute_scores
    monkeypatch.setattr(grid, "_compute_scores", lambda unit, *a: asked.append(unit.parts) or compute_scores(unit, *a))
    with ResultStore(path) as store:
        before = {u["key"]: u["finished"] for u in store.units()}
        assert run_bench(_config(two_models, scores=("lfc", "leep")), store) == 2  # the two scores units
        assert asked == [("leep",), ("leep",)]  # only the added score, for the stored units
        assert {key: store.get(key)["finished"] for key in before} == before  # nothing stored was redone
        subset = load_task("hebrew:5shot", seed=0).scoring_set(per_class=3, seed=0)
        for name in two_models:  # the added score against a direct computation
            m = zoo.load(name)
            logits = np.asarray(m.model.apply(m.variables, subset.x), dtype=np.float64)
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            [row] = [u for u in store.units("scores") if u["config"]["model"] == name and "leep" in u["key"]]
            assert row["record"]["scores"]["leep"] == pytest.approx(leep(probs, subset.y), rel=1e-4)

        two_steps = GridProtocol(window=1, max_steps=2, max_extensions=0)
        assert run_bench(_config(two_models, scores=("lfc", "leep"), protocol=two_steps), store) == 2  # new tunings
        assert len(asked) == 2 and len(store.keys("finetune")) == 4  # the scores do not depend on the steps
        tunings = settings_frame(store).query("kind == 'finetune'")
        assert sorted(json.loads(c)["protocol"]["max_steps"] for c in tunings.config) == [1, 2]
        with pytest.raises(LinfitError, match="2 fine-tuning configurations, differing in protocol: .*--setting"):
            write_report(store, tmp_path / "mixed")
        two = tunings[tunings.config.str.contains('"max_steps": 2')].setting.item()
        text = write_report(store, tmp_path / "report", settings=[two]).read_text()
    assert f"| fine-tuning | {two} |" in text and "| leep |" in text
