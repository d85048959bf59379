"""The report's statistics section (``linfit.bench.uncertainty``) on a small store built here: intervals against
``linfit.bench.stats.bootstrap`` called directly, point estimates against a hand computation, per-image test
correctness through the store, and the fall-back to resampling tasks only."""

import re

import numpy as np
import pytest

from linfit.bench import stats, uncertainty
from linfit.bench.report import finetune_frame, scores_frame, write_report
from linfit.bench.store import ResultStore, pack_bools, unpack_bools
from linfit.errors import LinfitError

MODELS = ("fa", "fb", "gen", "sa", "sb")  # name order = the report's model order
KIND = {"gen": "generalist", "fa": "from-generalist", "fb": "from-generalist", "sa": "scratch", "sb": "scratch"}
IMAGES = 20
CORRECT_COUNTS = {"t1": (16, 12, 8, 18, 4), "t2": (4, 18, 12, 8, 16), "t3": (12, 4, 16, 18, 8)}  # of 20, per model


def _correct(task):
    """``[M, I]`` bool with the given number of correct images per model, at seeded random places."""
    rng = np.random.default_rng(sum(map(ord, task)))
    return np.stack([rng.permutation(np.arange(IMAGES) < k) for k in CORRECT_COUNTS[task]])


def _accuracy(task):
    return 100.0 * np.array(CORRECT_COUNTS[task]) / IMAGES


def _scores(task):
    acc = _accuracy(task)
    return {"oracle": acc, "inverse": -acc, **({} if task == "t2" else {"partial": acc})}  # partial: not in t2


def _store(path, per_image: bool, models=MODELS):
    store = ResultStore(path)
    for task in CORRECT_COUNTS:
        correct, acc, scores = _correct(task), _accuracy(task), _scores(task)
        for m, model in enumerate(models):
            cfg = {"model": model, "task": task, "regime": "20shot", "seed": 0, "reference": model == "gen"}
            record = {"accuracy": acc[m], "oracle_accuracy": acc[m], "seconds": 1.0}
            if per_image:
                record["test_correct"] = pack_bools(correct[m])
            store.put(f"finetune/{model}/{task}", "finetune", record, config=cfg)
            for name, values in {**scores, "random": acc[::-1]}.items():
                store.put(f"scores/{model}/{task}/{name}", "scores",
                          {"scores": {name: float(values[m])}, "timings": {name: 0.1}}, config=cfg)
    return store


MANIFEST = {"train_config": {"per_domain": 100},
            "models": [{"name": m, "kind": KIND[m], "reference": m == "gen", "source_accuracy": 90.0 - i}
                       for i, m in enumerate(MODELS)]}


def _table(text, heading):
    """``{row name: [(estimate, low, high), ...]}`` of the first interval table after ``heading``."""
    rows = {}
    for line in text[text.index(heading):].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and "[" in line:
            rows[cells[0]] = [tuple(map(float, re.match(r"(\S+) \[(\S+), (\S+)\]", c).groups())) for c in cells[1:]]
    return rows


def _direct(ks=(1, 3)):
    """``stats.bootstrap`` on TaskData written out here: the scores a report must use (random's draw and the
    score missing in t2 left out), models in name order, per-image correctness [M, 1, I]; three tasks, fewer than
    ``FEW_TASKS``, so held fixed while their images are resampled."""
    tasks = [stats.TaskData(task, np.stack([_scores(task)[s] for s in ("inverse", "oracle")]), MODELS.index("gen"),
                            correct=_correct(task)[:, None, :]) for task in CORRECT_COUNTS]
    return stats.bootstrap(tasks, ("inverse", "oracle"), replicates=uncertainty.REPLICATES, rng=uncertainty.SEED,
                           confidence=uncertainty.CONFIDENCE, ks=ks, resample_tasks=False)


def _hand():
    """Point estimates by hand: oracle ranks exactly by accuracy, inverse exactly reversed, Random's expectation
    from order statistics (no ties: Spearman and weighted τ 0, trials (M + 1) / 2)."""
    means = {"oracle": [], "inverse": [], stats.RANDOM: []}
    for task in CORRECT_COUNTS:
        acc = _accuracy(task)
        ref = acc[MODELS.index("gen")]
        a = np.sort(acc)
        means["oracle"].append([1, 1, 1, a[-1] - ref, a[-1] - ref])
        means["inverse"].append([-1, -1, 5, a[0] - ref, a[2] - ref])
        top3 = (a[2] + 3 * a[3] + 6 * a[4]) / 10  # C(i-1, 2) / C(5, 3) for the 3rd, 4th, 5th smallest
        means[stats.RANDOM].append([0, 0, 3, a.mean() - ref, top3 - ref])
    return {name: np.mean(rows, axis=0) for name, rows in means.items()}


def test_interval_table_matches_direct_bootstrap_and_hand(tmp_path):
    with _store(tmp_path / "b.sqlite", per_image=True) as store:
        text = write_report(store, tmp_path / "r").read_text()
    table = _table(text, "## Regime `20shot`")
    direct, hand = _direct(), _hand()
    assert set(table) == {"oracle", "inverse", stats.RANDOM}
    for name, cells in table.items():
        i = direct.scores.index(name)
        for j, (estimate, low, high) in enumerate(cells):
            half_unit = 0.005 if j < 2 else 0.05  # the table's rounding: 2 decimals for ρ and τ, else 1
            assert estimate == pytest.approx(hand[name][j], abs=half_unit)
            assert low == pytest.approx(direct.low[i, j], abs=half_unit)
            assert high == pytest.approx(direct.high[i, j], abs=half_unit)
    assert direct.low[1, 3] < direct.high[1, 3]  # images resampled: the oracle's gains have a real spread
    assert "test images and fine-tuning seeds resampled with replacement" in text
    assert uncertainty.NO_IMAGES not in text
    assert "left out of the intervals (missing in some task group): partial" in text
    assert "| random (one draw) |" in text  # the stored draw is kept, labelled, outside the intervals
    per_task = text.split("Top-3 gain per task:")[1].split("\n\n")[1].splitlines()[0]
    assert "| random (one draw) |" in per_task  # the same label in every table of scores and in the figures
    assert "**Caution: 3 target tasks only.**" in text  # fewer than FEW_TASKS = 5


def test_paired_differences_listed_when_interval_excludes_zero(tmp_path):
    with _store(tmp_path / "b.sqlite", per_image=True) as store:
        text = write_report(store, tmp_path / "r").read_text()
    direct = _direct()
    d = stats.difference(direct, "oracle", "inverse", "spearman")
    assert d.excludes_zero
    assert f"| oracle | inverse {d.estimate:.2f} [{d.low:.2f}, {d.high:.2f}]; " in text
    section = text[text.index("**trials-to-best**"):]
    t = stats.difference(direct, "inverse", "oracle", "trials_to_best")  # positive: extra trials of the worse
    assert section.startswith("**trials-to-best**: ") and f"| oracle | inverse {t.estimate:.1f} [" in section


def test_fallback_to_tasks_only_without_per_image_data(tmp_path):
    with _store(tmp_path / "b.sqlite", per_image=False) as store:
        text = write_report(store, tmp_path / "r").read_text()
        oracle_text = write_report(store, tmp_path / "o", accuracy="oracle_accuracy").read_text()
    assert f"Per-image data: {uncertainty.NO_IMAGES}." in text and f"{uncertainty.NO_IMAGES}." in oracle_text
    assert "no per-image data for t1, t2, t3: their accuracies held fixed" in text
    tasks = [stats.TaskData(task, np.stack([_scores(task)[s] for s in ("inverse", "oracle")]), MODELS.index("gen"),
                            accuracies=_accuracy(task)) for task in CORRECT_COUNTS]
    direct = stats.bootstrap(tasks, ("inverse", "oracle"), replicates=uncertainty.REPLICATES, rng=uncertainty.SEED)
    low, high = _table(text, "## Regime `20shot`")["oracle"][4][1:]
    assert (low, high) == (pytest.approx(direct.low[1, 4], abs=0.05), pytest.approx(direct.high[1, 4], abs=0.05))


def test_baselines_and_clusters_from_manifest(tmp_path):
    with _store(tmp_path / "b.sqlite", per_image=True) as store:
        text = write_report(store, tmp_path / "r", manifest=MANIFEST).read_text()
        bare = write_report(store, tmp_path / "bare").read_text()
    assert "No trivial baselines or per-cluster results: no zoo manifest given." in bare
    table = _table(text, "## Regime `20shot`")
    # reference_first: the generalist alone on top, others tied; trials-to-best by hand per task
    trials = []
    for task in CORRECT_COUNTS:
        acc = _accuracy(task)
        best = int(np.argmax(acc))
        trials.append(1.0 if MODELS[best] == "gen" else 1 + (4 + 1) / (1 + 1))  # gen first, then 4 tied, 1 best
    assert table["baseline: reference_first"][2][0] == pytest.approx(np.mean(trials), abs=0.05)
    assert {"baseline: from_generalist", "baseline: source_images", "baseline: source_accuracy"} <= set(table)
    scratch = _table(text, "Models the experts trained from scratch (2 per task)")
    assert scratch["oracle"] == [(1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    assert scratch["inverse"][0] == (-1.0, -1.0, -1.0) and scratch["inverse"][2] == (2.0, 2.0, 2.0)
    assert "Models the generalist and the experts initialised from it (3 per task)" in text
    # a baseline constant on a cluster's models (here: all but source accuracy among the scratch models) ranks
    # them as Random does: left out of that cluster's table, and said so there only
    assert set(scratch) == {"oracle", "inverse", "random (expectation)", "baseline: source_accuracy"}
    # source accuracy ranks sa (87) above sb (86): Spearman +1 on t1 and t3 (sa better), -1 on t2
    assert scratch["baseline: source_accuracy"][0][0] == pytest.approx(1 / 3, abs=0.005)
    general = _table(text, "Models the generalist and the experts initialised from it (3 per task)")
    assert "baseline: from_generalist" not in general and "baseline: reference_first" in general
    assert text.count("left out: baseline: from_generalist, baseline: reference_first, baseline: source_images") == 1
    assert text.count("left out: baseline: from_generalist (within each task group") == 1
    assert "Models the multi-BN experts" not in text  # a cluster the zoo has no model of is not shown


def test_the_multi_bn_experts_are_a_cluster_of_their_own(tmp_path):
    """The BatchNorm sets of one multi-domain network get their own cluster table: with two of them, the observed
    Spearman is +1 for the oracle on every task (no tied accuracies) and -1 for its inverse."""
    names = ("fa", "gen", "ma", "mb")  # accuracies: the first 4 of CORRECT_COUNTS; ma, mb never tied
    kind = {**KIND, "ma": "multibn", "mb": "multibn"}
    manifest = {"train_config": {"per_domain": 100},
                "models": [{"name": m, "kind": kind[m], "reference": m == "gen", "source_accuracy": 90.0 - i}
                           for i, m in enumerate(names)]}
    with _store(tmp_path / "m.sqlite", per_image=True, models=names) as store:
        text = write_report(store, tmp_path / "r", manifest=manifest).read_text()
    multibn = _table(text, "Models the multi-BN experts (one network, a BatchNorm set per source domain) (2 per task)")
    assert multibn["oracle"][0][0] == 1.0 and multibn["inverse"][0][0] == -1.0
    assert set(multibn) == {"oracle", "inverse", "random (expectation)", "baseline: source_accuracy"}
    assert "Models the experts trained from scratch" not in text


def test_imagenet_backbones_get_their_published_top1_as_the_one_baseline(tmp_path):
    from linfit.zoo.imagenet import published_top1

    top1 = published_top1()
    names = sorted(top1)  # the report's model order; no generalist, so no reference model
    with _store(tmp_path / "i.sqlite", per_image=True, models=names) as store:
        text = write_report(store, tmp_path / "r", manifest=MANIFEST).read_text()
    table = _table(text, "## Regime `20shot`")
    assert [row for row in table if row.startswith("baseline:")] == ["baseline: source_accuracy"]
    assert "Models the experts trained from scratch" not in text  # no kinds, no clusters
    assert "`source_accuracy` is each backbone's published ImageNet top-1" in text
    # Spearman of ranking by top-1, by hand (no ties on either side), averaged over the three tasks
    ranks = np.argsort(np.argsort([top1[n] for n in names]))
    rho = [np.corrcoef(ranks, np.argsort(np.argsort(_accuracy(task))))[0, 1] for task in CORRECT_COUNTS]
    assert table["baseline: source_accuracy"][0][0] == pytest.approx(np.mean(rho), abs=0.005)


def test_per_image_correctness_round_trips_through_the_store(tmp_path):
    correct = np.random.default_rng(0).random(37) < 0.6  # not a multiple of 8
    packed = pack_bools(correct)
    assert packed["n"] == 37 and len(packed["bits"]) == 4 * -(-5 // 3)  # base64 of ceil(37 / 8) = 5 bytes
    with ResultStore(tmp_path / "b.sqlite") as store:
        cfg = {"model": "m", "task": "t", "regime": "5shot", "seed": 0, "reference": True}
        store.put("finetune/m/t", "finetune", {"accuracy": 100 * correct.mean(), "seconds": 1.0,
                                               "test_correct": packed}, config=cfg)
        stored = finetune_frame(store).test_correct.iloc[0]
    np.testing.assert_array_equal(stored, correct[None])  # one run: [R = 1, I]
    assert stored.dtype == bool


def test_per_seed_correctness_reaches_the_bootstrap_as_models_seeds_images(tmp_path):
    rng = np.random.default_rng(1)
    correct = {model: rng.random((3, 11)) < p for model, p in (("a", 0.3), ("gen", 0.6), ("b", 0.8))}  # [R, I]
    with ResultStore(tmp_path / "b.sqlite") as store:
        for model, rows in correct.items():
            cfg = {"model": model, "task": "t", "regime": "20shot", "seed": 0, "reference": model == "gen"}
            store.put(f"finetune/{model}", "finetune", {"accuracy": 100 * rows.mean(), "seconds": 1.0,
                                                        "test_correct": [pack_bools(row) for row in rows]},
                      config=cfg)
            store.put(f"scores/{model}", "scores", {"scores": {"s": float(rows.sum())}, "timings": {}}, config=cfg)
        frame = finetune_frame(store)
        [task], names, _ = uncertainty.regime_tasks(scores_frame(store), frame, "20shot", "accuracy")
    assert names == ("s",) and task.correct.shape == (3, 3, 11)  # [M, R, I], models in name order
    for m, model in enumerate(("a", "b", "gen")):
        np.testing.assert_array_equal(task.correct[m], correct[model])
        assert task.accuracy[m] == pytest.approx(100 * correct[model].mean())
    assert task.reference == 2
    result = stats.bootstrap([task], names, replicates=50, rng=0, ks=())
    assert "one seed" not in result.scheme and "fine-tuning seeds resampled" in result.scheme


def test_malformed_or_inconsistent_correctness_is_a_clear_error(tmp_path):
    with pytest.raises(LinfitError, match="says n=20 but holds 1 bytes"):
        unpack_bools({"n": 20, "bits": "AA=="})
    with pytest.raises(LinfitError, match="not a packed boolean vector"):
        unpack_bools({"n": 3, "bits": "not base64!"})
    with pytest.raises(LinfitError, match="one-dimensional"):
        pack_bools(np.zeros((2, 2), bool))
    with ResultStore(tmp_path / "b.sqlite") as store:
        cfg = {"model": "m", "task": "t", "regime": "5shot", "seed": 0, "reference": True}
        store.put("finetune/m/t", "finetune", {"accuracy": 50.0, "seconds": 1.0,
                                               "test_correct": pack_bools(np.ones(4, bool))}, config=cfg)
        with pytest.raises(LinfitError, match="gives 100.0000 % but its accuracy is 50.0000 %"):
            finetune_frame(store)


def test_question_tables_give_every_pair_with_its_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(uncertainty, "QUESTION", ("oracle", ("inverse", "absent")))
    with _store(tmp_path / "b.sqlite", per_image=True) as store:
        text = write_report(store, tmp_path / "r", manifest=MANIFEST).read_text()
    section = text[text.index("### Paired differences that answer"):]
    # oracle ranks exactly by accuracy, inverse exactly against it: ρ and τ gaps 2 on every task, trials 5 − 1
    row = next(line for line in section.splitlines() if line.startswith("| oracle − inverse |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert [float(re.match(r"\**(\S+) \[", c).group(1)) for c in cells[:3]] == [2.0, 2.0, 4.0]
    assert all(c.startswith("**") for c in cells[:3])  # each excludes 0
    assert "absent" not in section  # a score the store lacks is left out
    direct = _direct()
    gap = stats.difference(direct, "inverse", "oracle", "trials_to_best")
    assert cells[2] == f"**{gap.estimate:.1f} [{gap.low:.1f}, {gap.high:.1f}]**"
    # against the 4 baselines: oracle's ρ is 1 on every replicate, no baseline ranks every task exactly
    table = section[section.index("Does a score beat the trivial baselines"):]
    header = next(line for line in table.splitlines() if line.startswith("| score |"))
    assert header.count("Spearman − baseline: ") == 4
    assert "Above every baseline (each interval excludes 0): oracle." in table


def test_the_k_shot_draws_of_a_task_form_one_cluster(tmp_path):
    with ResultStore(tmp_path / "draws.sqlite") as store:
        for task in CORRECT_COUNTS:
            acc = _accuracy(task)
            for seed in (0, 1):
                for m, model in enumerate(MODELS):
                    cfg = {"model": model, "task": task, "regime": "20shot", "seed": seed, "reference": model == "gen"}
                    store.put(f"finetune/{model}/{task}/{seed}", "finetune",
                              {"accuracy": acc[m], "seconds": 1.0, "test_correct": pack_bools(_correct(task)[m])},
                              config=cfg)
                    store.put(f"scores/{model}/{task}/{seed}", "scores",
                              {"scores": {"oracle": float(acc[m])}, "timings": {"oracle": 0.1}}, config=cfg)
        tasks, names, notes = uncertainty.regime_tasks(scores_frame(store), finetune_frame(store), "20shot",
                                                       "accuracy", None)
        text = write_report(store, tmp_path / "r").read_text()
    assert sorted((t.name, t.cluster) for t in tasks) == [(f"{task}/draw{seed}", task) for task in CORRECT_COUNTS
                                                          for seed in (0, 1)]
    assert any("resampled together" in note for note in notes)
    assert "Mean over 6 task groups of 3 target tasks" in text and "**Caution: 3 target tasks only.**" in text
