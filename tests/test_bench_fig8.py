"""The paper's Fig. 8 in the benchmark: feature Grams before/after fine-tuning in the ``"finetune"`` record (checked
against a direct numpy computation and a numpy Pearson correlation) and their section in the report."""

import json

import jax
import numpy as np
import pytest

from linfit import models
from linfit.bench.grid import GRAM_DIGITS, BenchConfig, finetune_record, gram_record, gram_sample
from linfit.finetune import GridProtocol, finetune_grid
from linfit.bench.report import gram_selection, write_report
from linfit.bench.store import ResultStore, unpack_bools


def _pearson_lfc(gram, labels):
    """eq. (8) written out: Pearson correlation of the Gram's entries with the ±1 label-similarity entries."""
    labels = np.asarray(labels)
    similarity = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    return np.corrcoef(np.asarray(gram, np.float64).ravel(), similarity.ravel())[0, 1]


ROUNDING = 0.5 * 10.0 ** (1 - GRAM_DIGITS) + 1e-6
"""Relative tolerance of a stored Gram entry: rounded to GRAM_DIGITS significant digits (half a unit in the last
one), plus float32 round-off of two forward passes."""


def _features(model, variables, x):
    return np.asarray(model.apply(variables, x, train=False, method="features"), np.float64)


@pytest.fixture(scope="module")
def backbone():
    model = models.create("small_cnn", num_classes=5, width=4, depth=2, batch_norm=True)
    variables = models.init(model, jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))
    return model, variables


def test_gram_sample_is_balanced_sorted_and_seeded():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(6), [7, 2, 9, 5, 8, 6]))
    idx = gram_sample(labels, seed=3, per_class=4, max_classes=4)
    picked = labels[idx]
    assert np.all(np.diff(picked) >= 0)  # sorted by class
    assert np.bincount(picked).tolist() == [4, 2, 4, 4]  # 4 per class (class 1 has 2), first 4 classes only
    assert len(set(idx.tolist())) == idx.size
    assert np.array_equal(idx, gram_sample(labels, seed=3, per_class=4, max_classes=4))
    assert not np.array_equal(np.sort(idx), np.sort(gram_sample(labels, seed=4, per_class=4, max_classes=4)))


def test_gram_record_matches_numpy(backbone):
    model, before = backbone
    after = jax.tree_util.tree_map(lambda a: a * 1.3 + 0.05, before)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 8, 8, 1)).astype(np.float32)
    y = np.array([2, 2, 2, 5, 5, 5, 7, 7, 7])  # non-contiguous labels: LFC only sees which pairs match
    record = gram_record(model, before, after, x, y)
    assert record["labels"] == y.tolist()
    for stage, variables in (("before", before), ("after", after)):
        phi = _features(model, variables, x)
        gram = phi @ phi.T
        np.testing.assert_allclose(record[stage], gram, rtol=ROUNDING, atol=1e-6 * np.abs(gram).max())
        assert record[f"lfc_{stage}"] == pytest.approx(_pearson_lfc(gram, y), abs=1e-6)
    assert record["lfc_before"] != pytest.approx(record["lfc_after"], abs=1e-4)
    json.dumps(record)


def test_finetune_record_holds_every_seed_and_the_gram_of_the_first(backbone):
    model, variables = backbone  # pre-trained with 5 classes, fine-tuned on 3 (the head is replaced)
    rng = np.random.default_rng(2)
    y_train, y_test = np.repeat(np.arange(3), 6), np.repeat(np.arange(3), 7)
    x_train = (rng.normal(size=(18, 8, 8, 1)) + y_train[:, None, None, None]).astype(np.float32)
    x_test = (rng.normal(size=(21, 8, 8, 1)) + y_test[:, None, None, None]).astype(np.float32)
    config = BenchConfig(batch_size=6, learning_rates=(0.05, 0.01), finetune_seeds=(0, 1),
                         protocol=GridProtocol(window=2, max_steps=6, max_extensions=1))
    args = dict(config=config.finetune_config(0), seeds=config.finetune_seeds, protocol=config.protocol,
                num_classes=3)
    record = finetune_record(model, variables, x_train, y_train, x_test, y_test,
                             learning_rates=config.learning_rates, **args)
    assert len(json.dumps(record)) < 50_000
    # the same (deterministic) grid run directly; every entry of the record checked against its final models
    result = finetune_grid(model, variables, x_train, y_train, x_test, y_test, lrs=config.learning_rates, **args)
    assert record["lr"] == result.chosen_lr and record["lrs"] == result.lrs.tolist()
    three_way = models.create("small_cnn", num_classes=3, width=4, depth=2, batch_norm=True)
    correct = np.stack([unpack_bools(packed) for packed in record["test_correct"]])  # [S, I], one row per seed
    assert correct.shape == (2, 21)
    for s, refit in enumerate(result.variables):  # an independent forward pass of each refit model
        predicted = np.asarray(three_way.apply(refit, x_test, train=False)).argmax(-1)
        np.testing.assert_array_equal(correct[s], predicted == y_test)
        assert record["accuracy_per_seed"][s] == pytest.approx(100 * np.mean(predicted == y_test), abs=1e-9)
    assert record["accuracy"] == pytest.approx(100 * correct.mean(), abs=1e-9)
    search_accuracy = [100 * np.mean(result.search_test_correct[i]) for i in range(len(result.lrs))]
    assert record["oracle_accuracy"] == pytest.approx(max(search_accuracy), abs=1e-9)
    assert record["oracle_lr"] == result.lrs[int(np.argmax(search_accuracy))]
    gram = record["gram"]
    idx = gram_sample(y_test, seed=0)
    assert gram["labels"] == y_test[idx].tolist() and len(idx) == 12  # 4 per class, class-sorted
    for stage, stage_variables in (("before", variables), ("after", result.variables[0])):
        phi = _features(model, stage_variables, x_test[idx])
        np.testing.assert_allclose(gram[stage], phi @ phi.T, rtol=ROUNDING, atol=1e-6 * np.abs(phi @ phi.T).max())
        assert gram[f"lfc_{stage}"] == pytest.approx(_pearson_lfc(phi @ phi.T, gram["labels"]), abs=1e-6)
    assert not np.allclose(gram["after"], gram["before"], rtol=1e-2)  # the fine-tuned backbone moved


ACC = {"gen": 60.0, "a": 80.0, "b": 50.0}


def _gram(labels, lfc):
    labels = np.asarray(labels)
    same = (labels[:, None] == labels[None, :]).astype(float)
    return {"labels": labels.tolist(), "before": (0.5 + 0.1 * same).tolist(), "after": (0.2 + same).tolist(),
            "lfc_before": lfc, "lfc_after": lfc + 0.3}


def _store(path, with_gram: bool):
    store = ResultStore(path)
    labels = np.repeat(np.arange(3), 4)
    for i, (model, acc) in enumerate(ACC.items()):
        cfg = {"model": model, "task": "t1", "regime": "20shot", "seed": 0, "reference": model == "gen"}
        record = {"accuracy": acc, "seconds": 10.0}
        if with_gram:
            record["gram"] = _gram(labels, 0.1 * i)
        store.put(f"finetune/{model}", "finetune", record, config=cfg)
        store.put(f"scores/{model}", "scores", {"scores": {"s": acc}, "timings": {"s": 1.0}}, config=cfg)
    return store


def test_report_draws_reference_and_best_model(tmp_path):
    with _store(tmp_path / "bench.sqlite", with_gram=True) as store:
        [(task, regime, panels)] = gram_selection(store)
        assert (task, regime) == ("t1", "20shot") and [p["model"] for p in panels] == ["gen", "a"]
        text = write_report(store, tmp_path / "report").read_text()
    figure = tmp_path / "report" / "fig8_gram_t1_20shot.png"
    assert figure.stat().st_size > 5000
    assert "Fig. 8" in text and f"({figure.name})" in text
    assert "| t1 | 20shot | a | 80.0 | 0.1 | 0.4 |" in text  # LFC before/after of the best model, from the store


def test_report_without_grams_has_no_fig8(tmp_path):
    with _store(tmp_path / "bench.sqlite", with_gram=False) as store:
        assert gram_selection(store) == []
        text = write_report(store, tmp_path / "report").read_text()
    assert "Fig. 8" not in text and not list((tmp_path / "report").glob("fig8_*"))
