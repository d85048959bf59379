"""The main job and the benchmark end to end on the committed zoo: small settings, independent checks."""

import json

import numpy as np
import pytest

from linfit import zoo
from linfit.bench.grid import BenchConfig, run_bench, units
from linfit.bench.report import ranking_frame, write_report
from linfit.bench.store import ResultStore
from linfit.cli import main
from linfit.data import load_task
from linfit.scores import leep, lfc
from linfit.select import select

pytestmark = pytest.mark.slow
TASK = "font_digits:5shot"


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
                         scores=("lfc", "leep"), per_class=3, epochs=1, learning_rates=(0.01,))
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
