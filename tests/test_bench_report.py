"""Reports are recomputed from a small store built here with known scores and accuracies."""

import hashlib

import pandas as pd
import pytest

from linfit.bench.report import cost_frame, gram_selection, ranking_frame, summary_frame, write_report
from linfit.bench.store import ResultStore
from linfit.errors import LinfitError

# accuracies per task; "gen" is the reference (generalist) model
ACC = {"t1": {"gen": 70.0, "a": 80.0, "b": 60.0, "c": 75.0}, "t2": {"gen": 50.0, "a": 40.0, "b": 55.0, "c": 45.0}}
# "oracle" orders models exactly by accuracy; "inverse" exactly reversed
SCORES = {name: {t: {m: sign * acc for m, acc in models.items()} for t, models in ACC.items()}
          for name, sign in (("oracle", 1.0), ("inverse", -1.0))}


@pytest.fixture()
def store(tmp_path):
    s = ResultStore(tmp_path / "bench.sqlite")
    for task, models in ACC.items():
        for model, acc in models.items():
            cfg = {"model": model, "task": task, "regime": "20shot", "seed": 0, "reference": model == "gen"}
            s.put(f"finetune/{model}/{task}", "finetune", {"accuracy": acc, "seconds": 10.0}, config=cfg)
            record = {"scores": {n: SCORES[n][task][model] for n in SCORES}, "timings": {"oracle": 0.5, "inverse": 1.0}}
            s.put(f"scores/{model}/{task}", "scores", record, config=cfg)
    yield s
    s.close()


def test_ranking_frame_matches_hand_computation(store):
    ranking = ranking_frame(store).set_index(["task", "score"])
    assert ranking.loc[("t1", "oracle"), "spearman"] == pytest.approx(1.0)
    assert ranking.loc[("t1", "oracle"), "top3_gain"] == 10.0  # best of the top-3 is "a": 80 - 70
    assert ranking.loc[("t1", "inverse"), "trials_to_best"] == 4
    assert ranking.loc[("t1", "inverse"), "top3_gain"] == 5.0  # top-3 of the reversed order: b, c, gen -> 75
    assert ranking.loc[("t2", "best"), "top1_gain"] == 5.0 and ranking.loc[("t2", "worst"), "top1_gain"] == -10.0
    summary = summary_frame(ranking_frame(store)).set_index("score")
    assert summary.loc["oracle", "trials_to_best"] == 1 and summary.loc["inverse", "spearman"] == pytest.approx(-1)
    assert summary.loc["oracle", "top3_gain"] == pytest.approx((10.0 + 5.0) / 2)


def test_summary_weighs_every_target_task_once_whatever_its_number_of_draws(store):
    """A second k-shot draw of t1 (all scores reversed there) must not count t1 twice in the mean over tasks."""
    for model, acc in ACC["t1"].items():
        cfg = {"model": model, "task": "t1", "regime": "20shot", "seed": 1, "reference": model == "gen"}
        store.put(f"finetune/{model}/t1/1", "finetune", {"accuracy": acc, "seconds": 10.0}, config=cfg)
        store.put(f"scores/{model}/t1/1", "scores", {"scores": {"oracle": -acc, "inverse": acc},
                                                    "timings": {"oracle": 0.5, "inverse": 1.0}}, config=cfg)
    summary = summary_frame(ranking_frame(store)).set_index("score")
    # t1: ρ = +1 (draw 0) and −1 (draw 1), mean 0; t2: +1; mean over the two tasks 0.5 (not (1 − 1 + 1) / 3)
    assert summary.loc["oracle", "spearman"] == pytest.approx(0.5)
    assert summary.loc["inverse", "spearman"] == pytest.approx(-0.5)


def test_incomplete_group_is_left_out(store):
    for task in ("t1", "t2"):
        cfg = {"model": "d", "task": task, "regime": "20shot", "seed": 0}
        store.put(f"finetune/d/{task}", "finetune", {"accuracy": 99.0, "seconds": 1.0}, config=cfg)
    store.put("scores/d/t2", "scores", {"scores": {"oracle": 99.0, "inverse": -99.0},
                                             "timings": {"oracle": 0.5, "inverse": 1.0}}, config={
        "model": "d", "task": "t2", "regime": "20shot", "seed": 0})
    ranking = ranking_frame(store)
    assert set(ranking[ranking.score == "oracle"].task) == {"t2"}  # t1 lacks the scores of model d
    assert len(ranking[(ranking.score == "oracle")]) == 1 and ranking.trials_to_best.max() <= 5


def test_a_group_short_of_the_planned_zoo_is_left_out_and_listed(store, tmp_path):
    """While a grid runs, the group being computed holds fewer models than the zoo: with the planned ``models``
    it is left out (and named in the report) instead of being ranked as a smaller zoo."""
    everything = ranking_frame(store)
    assert set(everything.task) == {"t1", "t2"}
    planned = ["gen", "a", "b", "c", "d"]  # "d" is not fine-tuned yet on any task
    assert ranking_frame(store, models=planned).empty
    with pytest.raises(LinfitError, match="no complete"):
        write_report(store, tmp_path / "none", models=planned)
    store.put("finetune/d/t2", "finetune", {"accuracy": 1.0, "seconds": 1.0},
              config={"model": "d", "task": "t2", "regime": "20shot", "seed": 0})
    store.put("scores/d/t2", "scores", {"scores": {"oracle": 1.0, "inverse": -1.0},
                                            "timings": {"oracle": 0.5, "inverse": 1.0}},
              config={"model": "d", "task": "t2", "regime": "20shot", "seed": 0})
    assert set(ranking_frame(store, models=planned).task) == {"t2"}
    report = write_report(store, tmp_path / "report", models=planned).read_text()
    assert "1 complete task group." in report
    assert "Left out as incomplete (1 task group): t1/20shot/0 (4 of 5 models fine-tuned)." in report


def test_a_score_that_failed_on_one_input_is_dropped_from_every_table_and_named(store, tmp_path):
    """A NaN stored for one model (a score that failed there) must not stop the report or leave the score in one
    table and out of another: it is dropped everywhere and named."""
    for task, models in ACC.items():
        for model, acc in models.items():
            unit = store.get(f"scores/{model}/{task}")
            broken = float("nan") if (task, model) == ("t1", "b") else acc
            store.delete(f"scores/{model}/{task}")
            store.put(f"scores/{model}/{task}", "scores",
                      {"scores": {**unit["record"]["scores"], "broken": broken},
                       "timings": {**unit["record"]["timings"], "broken": 1.0}}, config=unit["config"])
    assert set(ranking_frame(store).score) == {"oracle", "inverse", "best", "worst"}
    report = write_report(store, tmp_path / "report").read_text()
    assert "Left out of every table: score `broken` (not finite in t1/20shot/0)." in report
    assert "broken" not in report.replace("score `broken` (not finite", "")


def test_a_ground_truth_the_units_do_not_record_is_refused(store, tmp_path):
    """The fixture's records hold no oracle accuracy: ranking against it must not fall back to another column."""
    with pytest.raises(LinfitError, match="8 fine-tuning units .* record no `oracle_accuracy`.*`accuracy`"):
        ranking_frame(store, accuracy="oracle_accuracy")
    with pytest.raises(LinfitError, match="record no `oracle_accuracy`"):
        write_report(store, tmp_path / "oracle", accuracy="oracle_accuracy")
    assert not (tmp_path / "oracle").exists()


def test_costs_relative_to_one_reference_finetuning(store):
    costs = cost_frame(store).set_index("score").relative_cost
    assert costs["brute_force"] == pytest.approx(4.0)  # four models at 10 s each vs 10 s for the reference
    assert costs["oracle"] == pytest.approx(4 * 0.5 / 10) and costs["inverse"] == pytest.approx(4 * 1.0 / 10)
    assert not any(name.startswith("compile") for name in costs.index)  # this store keeps no compile times


# Compile seconds as one process records them: the first unit of an architecture on a task compiles, the others
# reuse its executables. Architectures: gen and a are "A", b and c are "B".
ARCH = {"gen": "A", "a": "A", "b": "B", "c": "B"}
FT_COMPILE = {"t1": {"gen": 30.0, "a": 0.0, "b": 20.0, "c": 0.0}, "t2": {"gen": 0.0, "a": 5.0, "b": 0.0, "c": 4.0}}
SC_COMPILE = {"t1": {"gen": 12.0, "a": 0.0, "b": 8.0, "c": 0.0}, "t2": {"gen": 1.0, "a": 0.0, "b": 2.0, "c": 0.5}}


def test_costs_charge_compilation_once_per_architecture_in_their_own_rows(tmp_path):
    with ResultStore(tmp_path / "bench.sqlite") as s:
        for task, models in ACC.items():
            for model in models:
                cfg = {"model": model, "architecture": ARCH[model], "task": task, "regime": "20shot", "seed": 0,
                       "reference": model == "gen"}
                s.put(f"finetune/{model}/{task}", "finetune",
                      {"accuracy": models[model], "seconds": 10.0 if model == "gen" else 20.0,
                       "compile_seconds": FT_COMPILE[task][model]}, config=cfg)
                for name in SCORES:  # two parts computed together: one extraction, its compile time in both
                    s.put(f"scores/{model}/{task}/{name}", "scores",
                          {"scores": {name: SCORES[name][task][model]}, "timings": {name: 0.25},
                           "compile_seconds": SC_COMPILE[task][model]}, config=cfg)
        costs = cost_frame(s).set_index("score").relative_cost
        # by hand: the reference fine-tunes in 10 s; per task, compile = sum over architectures of the one that
        # compiled: fine-tuning t1 30 + 20, t2 5 + 4; scores t1 12 + 8, t2 1 + 2
        assert costs["compile: fine-tuning"] == pytest.approx((50.0 + 9.0) / 2 / 10)
        assert costs["compile: scores"] == pytest.approx((20.0 + 3.0) / 2 / 10)
        assert costs["oracle"] == pytest.approx(4 * 0.25 / 10)  # the scores themselves, compilation apart
        assert costs["brute_force"] == pytest.approx((10.0 + 3 * 20.0) / 10)
        text = write_report(s, tmp_path / "report").read_text()
    section = text[text.index("## Selection cost"):]
    assert "20shot: 10.0 s" in section and "charged once per architecture" in section
    rows = [line for line in section.splitlines() if line.startswith("| compile")]
    assert rows == ["| compile: scores | 1.15 |", "| compile: fine-tuning | 2.95 |"]


def test_write_report(store, tmp_path):
    path = write_report(store, tmp_path / "report")
    text = path.read_text()
    assert "| oracle |" in text and "top3_gain_20shot.png" in text
    assert (tmp_path / "report" / "top3_gain_20shot.png").stat().st_size > 1000
    assert (tmp_path / "report" / "trials_spearman.png").exists()


def test_empty_store_is_a_clear_error(tmp_path):
    with pytest.raises(LinfitError, match="no complete"):
        write_report(ResultStore(tmp_path / "empty.sqlite"), tmp_path / "r")


def test_report_names_its_settings_and_refuses_to_average_across_them(store, tmp_path):
    # setting ids written out by hand: SHA-256 of the kind and setting as sorted JSON, 12 hex digits
    empty, two, scoring = (hashlib.sha256(text).hexdigest()[:12] for text in (
        b'{"kind": "finetune", "setting": {}}', b'{"kind": "finetune", "setting": {"epochs": 2}}',
        b'{"kind": "scores", "setting": {}}'))
    alone = ranking_frame(store)
    text = write_report(store, tmp_path / "one").read_text()
    assert f"| fine-tuning | {empty} | {{}} | 8 |" in text and f"| scoring | {scoring} | {{}} | 8 |" in text
    for task, models in ACC.items():  # the same grid fine-tuned with another setting: other accuracies
        for model in models:
            cfg = {"model": model, "task": task, "regime": "20shot", "seed": 0, "reference": model == "gen",
                   "epochs": 2}
            store.put(f"finetune/{model}/{task}/2", "finetune", {"accuracy": 100.0 - ACC[task][model],
                                                                 "seconds": 20.0}, config=cfg)
    for call in (lambda: ranking_frame(store), lambda: cost_frame(store), lambda: gram_selection(store),
                 lambda: write_report(store, tmp_path / "mixed")):
        with pytest.raises(LinfitError, match="2 fine-tuning configurations, differing in epochs: .*--setting") as err:
            call()
        assert f"{empty} (epochs=None, 8 units)" in str(err.value) and f"{two} (epochs=2, 8 units)" in str(err.value)
    assert not (tmp_path / "mixed").exists()
    pd.testing.assert_frame_equal(ranking_frame(store, settings=[empty]), alone)
    flipped = ranking_frame(store, settings=[two]).set_index(["task", "score"])
    assert flipped.loc[("t1", "inverse"), "spearman"] == pytest.approx(1.0)  # accuracies reversed: 100 - acc
    text = write_report(store, tmp_path / "two", settings=[two, scoring]).read_text()
    assert f'| fine-tuning | {two} | {{"epochs": 2}} | 8 |' in text and f"| fine-tuning | {empty} |" not in text
    with pytest.raises(LinfitError, match="no unit of the store has setting 0123"):
        ranking_frame(store, settings=["0123"])


def test_a_zoo_without_a_reference_is_ranked_with_gains_over_its_mean_accuracy(tmp_path):
    """The ImageNet zoo has no generalist: gains are over the mean accuracy of the group's models, costs over a
    mean fine-tuning, and the report says so."""
    s = ResultStore(tmp_path / "noref.sqlite")
    for task, models in ACC.items():
        for model, acc in models.items():
            cfg = {"model": model, "task": task, "regime": "20shot", "seed": 0, "reference": False}
            s.put(f"finetune/{model}/{task}", "finetune", {"accuracy": acc, "seconds": 10.0 + acc / 10}, config=cfg)
            record = {"scores": {n: SCORES[n][task][model] for n in SCORES}, "timings": {"oracle": 0.5, "inverse": 1.0}}
            s.put(f"scores/{model}/{task}", "scores", record, config=cfg)
    ranking = ranking_frame(s).set_index(["task", "score"])
    assert ranking.loc[("t1", "oracle"), "top1_gain"] == pytest.approx(80.0 - (70 + 80 + 60 + 75) / 4)
    assert ranking.loc[("t2", "inverse"), "top1_gain"] == pytest.approx(40.0 - (50 + 40 + 55 + 45) / 4)
    assert ranking.loc[("t1", "oracle"), "spearman"] == pytest.approx(1.0)
    costs = cost_frame(s).set_index("score").relative_cost
    mean_seconds = sum(10.0 + a / 10 for models in ACC.values() for a in models.values()) / 8
    assert costs["oracle"] == pytest.approx(4 * 0.5 / mean_seconds)
    report = write_report(s, tmp_path / "report").read_text()
    assert "Top-k gains: no task group has a reference model" in report
    assert "one fine-tuning of a model (mean over the zoo: it has no reference)" in report
    s.close()
