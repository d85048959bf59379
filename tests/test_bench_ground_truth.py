"""The report's ground-truth section (linfit.bench.ground_truth) against counts and formulas worked out by hand."""

import numpy as np
import pandas as pd
from scipy import stats as sps

from linfit.bench import ground_truth as gt


def _unit(model, task, correct, lr, bracketed, steps, converged):
    correct = np.asarray(correct, bool)
    return {"model": model, "task": task, "regime": "20shot", "seed": 0, "accuracy": 100 * correct.mean(),
            "test_correct": correct, "lr": lr, "bracketed": bracketed,
            "accuracy_per_seed": 100 * correct.mean(axis=1), "steps": np.array(steps),
            "converged": np.array(converged), "search_converged": np.array([True, True, lr != 0.27, True])}


def _frame():
    a = [[1, 1, 1, 1, 0, 1, 1, 1], [1, 1, 1, 0, 1, 1, 1, 1]]      # 87.5, 87.5
    b = [[1, 1, 1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 1, 1, 1, 0]]      # 87.5, 50: a straggler seed
    c = [[1, 0, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0, 1, 0]]      # 50, 50
    d = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]]      # 100, 87.5
    return pd.DataFrame([
        _unit("m1", "t1", a, 0.09, True, [100, 125], [True, True]),
        _unit("m2", "t1", b, 0.27, False, [200, 1000], [True, False]),
        _unit("m1", "t2", c, 0.09, True, [150, 175], [True, True]),
        _unit("m2", "t2", d, 0.03, True, [300, 250], [True, True]),
    ])


def test_standard_error_resamples_images_with_seeds_averaged():
    correct = np.array([[1, 0, 1, 1], [1, 1, 0, 1]], bool)
    p = np.array([1.0, 0.5, 0.5, 1.0])
    assert np.isclose(gt.standard_error(correct), 100 * np.sqrt(np.sum((p - 0.75) ** 2) / 3) / 2)


def test_section_counts_and_intervals():
    text = "\n".join(gt.section(_frame(), ("task", "regime", "seed")))
    assert "| fine-tuning units | 4 (2 models × 2 task groups) |" in text
    low, high = sps.beta.ppf(0.025, 3, 2), sps.beta.ppf(0.975, 4, 1)  # 3 of 4 bracketed
    assert f"3/4 (75 %, 95 % CI {100 * low:.0f}–{100 * high:.0f} %)" in text
    assert "| chosen η (units) | 0.03: 1, 0.09: 2, 0.27: 1 |" in text
    low, high = sps.beta.ppf(0.025, 7, 2), sps.beta.ppf(0.975, 8, 1)  # 7 of 8 refit runs converged
    assert f"| refit runs stopped by the convergence criterion (the rest: diverged or the step budget) | 7/8 (88 %, " \
           f"95 % CI {100 * low:.0f}–{100 * high:.0f} %) |" in text
    low, high = sps.beta.ppf(0.025, 15, 2), sps.beta.ppf(0.975, 16, 1)  # 15 of 16 search runs (one at η = 0.27)
    assert f"| search runs stopped by the convergence criterion (the rest: diverged or the step budget) | 15/16 (94 " \
           f"%, 95 % CI {100 * low:.0f}–{100 * high:.0f} %) |" in text
    assert "| refit steps: median (min–max) | 188 (100–1000) |" in text  # (175 + 200) / 2 = 187.5, rounded to even
    # spreads 0, 37.5, 0, 12.5: median 6.25, printed to even
    assert "| seed spread of a unit's accuracy: median (max), points | 6.2 (37.5) |" in text
    assert "| units with a seed > 5 points below their best seed | 2/4" in text
    # t1: best a (87.5, SE of p = [1,1,1,.5,.5,1,1,1]) vs b (68.75): no tie; t2: best d (93.75) vs c (50): none
    assert "| task groups whose runner-up is within one such standard error of the best model | 0/2" in text


def test_section_says_when_the_task_groups_are_incomplete():
    text = "\n".join(gt.section(_frame().drop(index=3), ("task", "regime", "seed")))  # t2 lacks m2
    assert "| fine-tuning units | 3 (2 task groups, 2 models; not every model in every group) |" in text


def test_section_reports_a_near_tie():
    frame = _frame()
    frame.loc[1, "accuracy"] = 87.5 - 0.5  # within a's standard error of 100 · sd([1,1,1,.5,.5,1,1,1]) / √8 ≈ 8.2
    text = "\n".join(gt.section(frame, ("task", "regime", "seed")))
    assert "| task groups whose runner-up is within one such standard error of the best model | 1/2" in text


def test_section_of_records_without_the_protocol_fields():
    frame = _frame().assign(bracketed=None, accuracy_per_seed=None, steps=None, converged=None, test_correct=None,
                            search_converged=None)
    text = "\n".join(gt.section(frame, ("task", "regime", "seed")))
    assert "| η bracketed (the chosen η is not an edge of the η tried) | not recorded |" in text
    assert "| refit runs converged | not recorded |" in text
    assert "| seed spread | one fine-tuning seed per unit |" in text
    assert "per-image correctness not recorded" in text
