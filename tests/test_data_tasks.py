"""Task specs, regimes, load_task on embedded and user datasets, the scoring set."""

import numpy as np
import pytest

from linfit.data import Dataset, TaskSpec, embedded, load_task, parse_task, tasks
from linfit.errors import DatasetError, UnknownNameError


@pytest.mark.parametrize("text,name,regime,shots", [
    ("hebrew:5shot", "hebrew", "5shot", 5), ("box:20shot", "box", "20shot", 20),
    ("braille:full", "braille", "full", None), ("x:10shot", "x", "10shot", 10), (" a : full ", "a", "full", None),
])
def test_parse_task(text, name, regime, shots):
    spec = parse_task(text)
    assert (spec.dataset, spec.regime, spec.shots) == (name, regime, shots)
    assert str(spec) == f"{name}:{regime}" and parse_task(spec) is spec


@pytest.mark.parametrize("text", ["hebrew", "hebrew:", "hebrew:0shot", "hebrew:5shots", "hebrew:fulls",
                                  ":full", "a:b:full", "hebrew:05shot", 5])
def test_parse_task_rejects(text):
    with pytest.raises(DatasetError):
        parse_task(text)


def test_tasks_lists_every_target_and_regime():
    listed = tasks()
    assert len(listed) == len(set(listed)) == 3 * len(embedded.target_domains())
    for name in embedded.target_domains():
        assert {f"{name}:5shot", f"{name}:20shot", f"{name}:full"} <= set(listed)
    assert not any(t.split(":")[0] in embedded.source_domains() for t in listed)


def test_load_task_kshot_and_full():
    ds = embedded.load("braille")
    for seed in (0, 1):
        task = load_task("braille:5shot", seed=seed)
        assert task.train.x.shape == (5 * ds.num_classes, 28, 28, 1)
        np.testing.assert_array_equal(np.bincount(task.train.y), [5] * ds.num_classes)
        np.testing.assert_array_equal(task.train.x, ds.x_train[task.train_indices])  # drawn from train only
        np.testing.assert_array_equal(task.test.x, ds.x_test)  # the FULL test split
        np.testing.assert_array_equal(task.test.y, ds.y_test)
    assert not np.array_equal(load_task("braille:5shot", seed=0).train_indices,
                              load_task("braille:5shot", seed=1).train_indices)
    np.testing.assert_array_equal(load_task("braille:5shot", seed=7).train_indices,
                                  load_task(TaskSpec("braille", "5shot"), seed=7).train_indices)
    full = load_task("braille:full")
    assert full.train.x.shape == ds.x_train.shape and full.class_names == ds.class_names


def test_scoring_set_comes_from_the_training_subset():
    task = load_task("hebrew:full")
    xs, ys = task.scoring_set()
    assert np.bincount(ys).max() <= 25 and len(ys) == 25 * task.num_classes
    train_rows = {row.tobytes() for row in task.train.x}
    assert all(row.tobytes() in train_rows for row in xs)
    test_rows = {row.tobytes() for row in task.test.x}
    assert not any(row.tobytes() in test_rows for row in xs)
    few = load_task("hebrew:5shot", seed=3)  # fewer than 25 per class: all of the k-shot set
    np.testing.assert_array_equal(np.sort(few.scoring_set().y), np.sort(few.train.y))


def test_load_task_errors():
    with pytest.raises(UnknownNameError, match="unknown task dataset 'nope'.*hebrew"):
        load_task("nope:5shot")
    with pytest.raises(DatasetError, match="unknown regime"):
        load_task("hebrew:many")
    with pytest.raises(DatasetError, match="unknown regime '5-shot' in task hebrew:5-shot"):  # an AttributeError
        load_task(TaskSpec("hebrew", "5-shot"))  # from TaskSpec.shots before
    x = np.zeros((5, 4, 4, 1), np.float32)
    toy = Dataset("toy", x, np.array([0, 0, 0, 1, 1]), x, np.array([0, 1, 0, 1, 0]), ("a", "b"))
    with pytest.raises(DatasetError, match=r"toy:3shot asks for 3 .* 1 class has fewer in the training split .*: 'b' \(2\); .*at most 2"):
        load_task("toy:3shot", dataset=toy)
    assert load_task("toy:2shot", dataset=toy).train.y.tolist() == [0, 0, 1, 1]
    with pytest.raises(DatasetError, match="names 'other'"):
        load_task("other:full", dataset=toy)
