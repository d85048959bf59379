"""experiments/size_grid.py: the sizing formula against a printed t table, and the k-shot draws of one target task
averaged into one task, as the report's cluster bootstrap counts them."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from linfit.bench import stats

_PATH = Path(__file__).resolve().parent.parent / "experiments" / "size_grid.py"
_spec = importlib.util.spec_from_file_location("size_grid", _PATH)
size_grid = importlib.util.module_from_spec(_spec)
sys.modules["size_grid"] = size_grid
_spec.loader.exec_module(size_grid)


def test_half_width_is_the_t_interval_and_tasks_needed_its_first_crossing():
    # t_{10}(0.975) = 2.228 and t_{32}(0.975) = 2.037 (printed tables)
    assert size_grid.half_width(0.1**2, 11) == pytest.approx(2.228 * 0.1 / np.sqrt(11), rel=2e-4)
    assert size_grid.half_width(0.1**2, 33) == pytest.approx(2.037 * 0.1 / np.sqrt(33), rel=2e-4)
    needed = size_grid.tasks_needed(0.1**2)
    assert size_grid.half_width(0.1**2, needed) <= size_grid.TARGET < size_grid.half_width(0.1**2, needed - 1)


def test_the_draws_of_a_target_task_are_averaged_into_one_task():
    def task(name, cluster):
        return stats.TaskData(name, np.zeros((1, 2)), None, accuracies=np.array([1.0, 2.0]), cluster=cluster)

    tasks = [task("a/seed0", "a"), task("b", None), task("a/seed1", "a"), task("a/seed2", "a")]
    values = np.array([[1.0, 10.0], [5.0, 50.0], [2.0, 20.0], [6.0, 60.0]])
    np.testing.assert_allclose(size_grid.by_target_task(values, tasks), [[3.0, 30.0], [5.0, 50.0]])
    np.testing.assert_allclose(size_grid.by_target_task(values, tasks, noise=True), [[1.0, 10.0], [5.0, 50.0]])
