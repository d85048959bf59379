"""Bootstrap intervals, paired differences, Random's expectations and baseline scores (linfit.bench.stats),
against scipy / linfit.bench.metrics, brute-force enumeration of orderings and simulations with known truth."""

import dataclasses
import functools
import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from linfit.bench import stats as st
from linfit.bench.metrics import ranking_metrics, trials_to_best
from linfit.errors import ConfigError, LinfitError, ShapeError, UnknownNameError

KS = (1, 3)


def _task(rng, name, m=6, images=40, seeds=1, n_scores=3, reference=0, tie_scores=False):
    """Random per-image correctness with shared image difficulty (paired), scores loosely tied to accuracy."""
    p = rng.uniform(0.3, 0.8, m)
    shared = rng.random((1, seeds, images))
    z = np.where(rng.random((m, seeds, images)) < 0.6, shared, rng.random((m, seeds, images)))
    correct = z < p[:, None, None]
    scores = p[None, :] + rng.normal(scale=0.15, size=(n_scores, m))
    if tie_scores:
        scores = np.round(scores * 4)
    return st.TaskData(name, scores, reference, correct=correct)


@functools.lru_cache
def _brute_force_random(accuracies: tuple, reference: float):
    """Spearman, weighted τ and trials-to-best averaged over all M! orderings (scipy and
    linfit.bench.metrics.trials_to_best), and the top-k gains for k = 1..M (the first k of each ordering)."""
    a = np.asarray(accuracies, dtype=float)
    rho, tau, trials, gains = [], [], [], []
    for perm in itertools.permutations(range(a.size)):
        score = -np.argsort(perm).astype(float)  # the model at place j of the ordering scores -j
        rho.append(sps.spearmanr(score, a)[0] if np.ptp(a) else 0.0)
        tau.append(sps.weightedtau(score, a)[0] if np.ptp(a) else 0.0)
        trials.append(trials_to_best(score, a))
        gains.append(np.maximum.accumulate(a[list(perm)]) - reference)
    return np.mean(rho), np.mean(tau), np.mean(trials), np.mean(gains, axis=0)


# ----------------------------------------------------------------------------------- point estimates


@pytest.mark.parametrize("tie_scores", [False, True])
def test_estimate_is_the_mean_of_scipy_metrics_over_tasks(tie_scores):
    rng = np.random.default_rng(0)
    tasks = [_task(rng, f"t{i}", m=5 + i, images=30, tie_scores=tie_scores, reference=i % 3) for i in range(4)]
    result = st.bootstrap(tasks, ["a", "b", "c"], replicates=10, rng=0, ks=KS, random_baseline=False)
    for s, name in enumerate(result.scores):
        per_task = []
        for task in tasks:
            acc = 100.0 * task.correct.mean(axis=(1, 2))  # ties: accuracies are multiples of 100/30
            r = ranking_metrics(task.scores[s], acc, acc[task.reference])
            per_task.append([r.spearman, r.weighted_tau, r.trials_to_best, r.top1_gain, r.top3_gain])
        np.testing.assert_allclose(result.estimate[s], np.mean(per_task, axis=0), rtol=1e-12, atol=1e-12)
    assert result.metrics == ("spearman", "weighted_tau", "trials_to_best", "top1_gain", "top3_gain")


def test_vectorised_metrics_match_scipy_on_many_tied_rankings():
    rng = np.random.default_rng(1)
    for _ in range(40):
        m = int(rng.integers(2, 9))
        scores = rng.integers(0, 4, (3, m)).astype(float)
        acc = rng.integers(0, 4, (4, m)).astype(float)
        got = st._metrics(scores, acc, 0, (1,))
        for n, s in itertools.product(range(4), range(3)):
            r = ranking_metrics(scores[s], acc[n], acc[n, 0])
            expected = [r.spearman, r.weighted_tau, r.trials_to_best, r.top1_gain]
            np.testing.assert_allclose(got[n, s], expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------- Random's expectation


@pytest.mark.parametrize("accuracies", [(50, 60, 70, 80, 90), (3, 1, 1, 1, 1, 1, 1), (1, 1, 1, 2, 2, 3, 4),
                                        (5, 5, 5, 5, 5, 2), (2, 7, 7, 4, 9, 9), (1, 2), (4, 4, 4)])
def test_expectations_match_enumeration_of_all_orderings(accuracies):
    a = np.asarray(accuracies, dtype=float)
    spearman, tau, trials, gains = _brute_force_random(accuracies, a[0])
    for k in range(1, a.size + 1):
        assert st.expected_top_k_gain(a, a[0], k) == pytest.approx(gains[k - 1], rel=1e-12, abs=1e-12)
    assert st.expected_spearman(a) == pytest.approx(spearman, abs=1e-12)
    assert st.expected_trials_to_best(a) == pytest.approx(trials, rel=1e-12)
    value, stderr = st.expected_weighted_tau(a)
    assert value == pytest.approx(tau, abs=1e-12) and stderr == 0


def test_weighted_tau_of_random_orderings_is_zero_without_ties_only():
    assert abs(_brute_force_random((50, 60, 70, 80, 90), 50.0)[1]) < 1e-12
    assert abs(_brute_force_random((3, 1, 1, 1, 1, 1, 1), 3.0)[1]) > 0.01  # so Random's τ is not reported as 0


def test_weighted_tau_monte_carlo_agrees_with_enumeration():
    a = np.array([9.0, 9, 9, 4, 4, 2, 1, 0])
    exact, exact_stderr = st.expected_weighted_tau(a, samples=math.factorial(8))  # all 8! orderings
    estimate, stderr = st.expected_weighted_tau(a, samples=20_000, rng=3)  # 20,000 < 8!: Monte Carlo
    assert exact_stderr == 0 and 0 < stderr < 0.005
    assert abs(estimate - exact) < 4 * stderr


def test_random_row_of_the_bootstrap_is_the_expectation_on_each_task():
    rng = np.random.default_rng(2)
    tasks = [_task(rng, f"t{i}", m=6, images=25, reference=1) for i in range(3)]
    result = st.bootstrap(tasks, ["a", "b", "c"], replicates=10, rng=0, ks=KS)
    per_task = []
    for task in tasks:
        acc = 100.0 * task.correct.mean(axis=(1, 2))
        rho, tau, trials, gains = _brute_force_random(tuple(acc), acc[1])
        per_task.append([rho, tau, trials, *(gains[k - 1] for k in KS)])
    expected = np.mean(per_task, axis=0)
    assert result.scores[-1] == st.RANDOM
    np.testing.assert_allclose(result.estimate[-1], expected, rtol=1e-12, atol=1e-12)


def test_without_a_reference_the_gains_are_over_the_mean_accuracy_of_the_models():
    """A zoo without a generalist (reference=None): each gain is measured against the models' mean accuracy, so
    Random's expected top-1 gain is exactly 0; scipy / metrics.ranking_metrics / enumeration as above."""
    rng = np.random.default_rng(5)
    tasks = [_task(rng, f"t{i}", m=5, images=20, reference=None) for i in range(3)]
    result = st.bootstrap(tasks, ["a", "b", "c"], replicates=10, rng=0, ks=KS)
    per_score, per_random = [], []
    for task in tasks:
        acc = 100.0 * task.correct.mean(axis=(1, 2))
        per_score.append([[*(getattr(ranking_metrics(row, acc, acc.mean()), m) for m in result.metrics)]
                          for row in task.scores])
        rho, tau, trials, gains = _brute_force_random(tuple(acc), acc.mean())
        per_random.append([rho, tau, trials, *(gains[k - 1] for k in KS)])
    np.testing.assert_allclose(result.estimate[:3], np.mean(per_score, axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.estimate[-1], np.mean(per_random, axis=0), rtol=1e-12, atol=1e-12)
    assert result.estimate[-1][result.metrics.index("top1_gain")] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------- the bootstrap


def _coverage_dataset(rng, n_tasks, mu=5.0, spread=4.0, m=4, images=100):
    """Tasks whose top-1 pick (model 1) beats the reference (model 0) by a gain drawn around mu (points).
    Correctness z < p with z uniform (shared across models on 70 % of images), so E[accuracy] = p exactly."""
    tasks, truth = [], []
    for t in range(n_tasks):
        p = rng.uniform(0.4, 0.7, m)
        p[1] = p[0] + (mu + spread * rng.normal()) / 100
        shared = rng.random(images)
        z = np.where(rng.random((m, images)) < 0.7, shared, rng.random((m, images)))
        tasks.append(st.TaskData(str(t), np.array([[0.0, 1.0, 0.5, 0.2]]), 0, correct=(z < p[:, None])[:, None]))
        truth.append(100 * (p[1] - p[0]))
    return tasks, float(np.mean(truth))


@pytest.mark.parametrize("resample_tasks", [False, True])
def test_interval_coverage_on_simulated_benchmarks(resample_tasks):
    """200 simulated benchmarks of 10 tasks: the 95 % interval of the mean top-1 gain (linear in the accuracies,
    so its truth is known) covers the truth in 190 ± 3σ (σ = √(200·0.95·0.05) ≈ 3.1) of them. Holding the tasks
    fixed the target is the mean of the drawn tasks' true gains; resampling tasks it is the population mean mu,
    and the scheme is conservative (test-set noise counted twice), so only the lower bound is asserted."""
    rng = np.random.default_rng(0)
    covered = 0
    for d in range(200):
        tasks, fixed_truth = _coverage_dataset(rng, 10)
        result = st.bootstrap(tasks, ["s"], replicates=500, rng=d, ks=(1,), random_baseline=False,
                              resample_tasks=resample_tasks)
        k = result.metrics.index("top1_gain")
        truth = 5.0 if resample_tasks else fixed_truth
        covered += result.low[0, k] <= truth <= result.high[0, k]
    assert covered >= 181
    if not resample_tasks:
        assert covered <= 199


def test_expanded_percentile_level_matches_the_t_interval():
    """Hesterberg's expanded level from a t table (t_4(0.975) = 2.776445, t_19(0.975) = 2.093024): the normal
    tail beyond sqrt(n/(n-1))·t, both sides."""
    from statistics import NormalDist

    for n, t in ((5, 2.776445), (20, 2.093024)):
        expected = 2 * (1 - NormalDist().cdf((n / (n - 1)) ** 0.5 * t))
        assert st.expanded_alpha(0.05, n) == pytest.approx(expected, rel=1e-5)
    assert st.expanded_alpha(0.05, 1) == 0.05


def test_task_resample_with_measured_accuracies_is_calibrated_and_not_wider():
    """The report's scheme for many tasks (tasks resampled, each task's accuracies as measured, expanded
    percentile bounds): its 95 % interval of the mean top-1 gain covers mu in 190 ± 3.1 of 200 simulated 20-task
    benchmarks (≥ 181 at 3σ; the plain percentile interval has the coverage of |t_19| < 1.96·sqrt(19/20), 0.929),
    and it is narrower than resampling images too, which counts the test-set noise twice."""
    rng = np.random.default_rng(3)
    covered, narrower = 0, 0
    for d in range(200):
        tasks, _ = _coverage_dataset(rng, 20)
        kwargs = dict(replicates=500, rng=d, ks=(1,), random_baseline=False)
        result = st.bootstrap(tasks, ["s"], resample_images=False, **kwargs)
        both = st.bootstrap(tasks, ["s"], **kwargs)
        k = result.metrics.index("top1_gain")
        covered += result.low[0, k] <= 5.0 <= result.high[0, k]
        narrower += (result.high - result.low)[0, k] < (both.high - both.low)[0, k]
    assert 181 <= covered <= 199
    assert narrower >= 190
    assert "each task's accuracies as measured" in result.scheme and "paired across models" not in result.scheme


def test_resampling_images_again_attenuates_rank_correlations():
    """Why the report does not resample images when it resamples tasks: a score that ranks the models' expected
    accuracies exactly has an observed Spearman below 1 on finite test sets, and resampling the test images adds
    that noise a second time, so the replicates' Spearman falls below the observed one; resampling tasks alone
    leaves the replicates centred on it (the mean of bootstrap means is the sample mean, up to Monte Carlo error)."""
    rng = np.random.default_rng(2)
    tasks = []
    for t in range(12):
        p = 0.80 + 0.03 * np.arange(6)  # 6 models 3 points apart; 150 images: standard error ≈ 3 points
        correct = rng.random((6, 1, 150)) < p[:, None, None]
        tasks.append(st.TaskData(f"t{t}", p[None, :], 0, correct=correct))
    kwargs = dict(replicates=2000, rng=0, ks=(), random_baseline=False)
    tasks_only = st.bootstrap(tasks, ["truth"], resample_images=False, **kwargs)
    both = st.bootstrap(tasks, ["truth"], **kwargs)
    estimate = tasks_only.estimate[0, 0]
    assert estimate < 0.95  # observed on finite test sets: attenuated
    assert abs(tasks_only.replicates[:, 0, 0].mean() - estimate) < 4 * tasks_only.stderr[0, 0] / np.sqrt(2000)
    assert both.replicates[:, 0, 0].mean() < estimate - 0.05


def test_tasks_only_fallback_matches_the_plug_in_standard_error():
    """Accuracies without per-image data: only tasks move, and the bootstrap standard error of a mean over T
    tasks is the plug-in σ/√T (σ with ddof=0); 4000 replicates estimate it to ~1.1 %."""
    rng = np.random.default_rng(4)
    tasks = [st.TaskData(f"t{i}", rng.normal(size=(2, 7)), 0, accuracies=rng.uniform(20, 80, 7)) for i in range(9)]
    result = st.bootstrap(tasks, ["a", "b"], replicates=4000, rng=0, ks=KS, random_baseline=False)
    per_task = np.array([[ranking_metrics(t.scores[s], t.accuracies, t.accuracies[0]).spearman for s in range(2)]
                         for t in tasks])
    np.testing.assert_allclose(result.stderr[:, 0], per_task.std(axis=0) / np.sqrt(len(tasks)), rtol=0.05)
    assert "no per-image data for t0" in result.scheme
    fixed = st.bootstrap(tasks, ["a", "b"], replicates=50, rng=0, resample_tasks=False, random_baseline=False)
    np.testing.assert_array_equal(fixed.replicates, np.broadcast_to(fixed.estimate, fixed.replicates.shape))


def test_the_draws_of_one_task_are_resampled_as_one_cluster():
    # three copies of every task in one cluster each: the copies move together, so the replicates are those of
    # the original tasks (same cluster draws); as separate tasks they would narrow the interval by about √3
    rng = np.random.default_rng(4)
    tasks = [_task(rng, f"t{i}", images=50) for i in range(6)]
    copies = [st.TaskData(f"{t.name}/draw{d}", t.scores, t.reference, correct=t.correct, cluster=t.name)
              for t in tasks for d in range(3)]
    kwargs = dict(replicates=400, rng=5, ks=KS, random_baseline=False, resample_images=False)
    original = st.bootstrap(tasks, ["a", "b", "c"], **kwargs)
    clustered = st.bootstrap(copies, ["a", "b", "c"], **kwargs)
    np.testing.assert_allclose(clustered.replicates, original.replicates, rtol=1e-12, atol=1e-12)
    assert clustered.resampled_tasks == 6 and clustered.alpha == original.alpha
    independent = st.bootstrap([dataclasses.replace(t, cluster=None) for t in copies], ["a", "b", "c"], **kwargs)
    assert independent.resampled_tasks == 18
    assert np.all(independent.stderr[:, 0] < 0.7 * clustered.stderr[:, 0])


def test_a_replicate_averages_every_task_of_its_drawn_clusters():
    # cluster a: two tasks the score ranks exactly (Spearman 1); cluster b: one it ranks backwards (-1). A
    # replicate draws {a, a} (mean 1), {b, b} (-1) or {a, b}: every cluster counts once, (1 + -1) / 2 = 0, not the
    # mean over the three tasks 1/3
    accuracy = np.array([10.0, 20.0, 30.0, 40.0])
    forward, backward = accuracy[None, :], -accuracy[None, :]
    tasks = [st.TaskData("a0", forward, None, accuracies=accuracy, cluster="a"),
             st.TaskData("a1", forward, None, accuracies=accuracy, cluster="a"),
             st.TaskData("b0", backward, None, accuracies=accuracy, cluster="b")]
    result = st.bootstrap(tasks, ["s"], replicates=4000, rng=0, ks=(), random_baseline=False)
    rho = result.replicates[:, 0, result.metrics.index("spearman")]
    values, counts = np.unique(np.round(rho, 12), return_counts=True)
    np.testing.assert_allclose(values, [-1.0, 0.0, 1.0], atol=1e-12)
    assert abs(counts[1] / rho.size - 0.5) < 4 * np.sqrt(0.25 / rho.size)  # {a, b} in either order: 1/2
    np.testing.assert_allclose(result.estimate[0, 0], 0.0, atol=1e-12)


def test_the_tasks_of_a_cluster_share_their_test_images_in_the_resample():
    # two draws of one task: model 0 is right on complementary halves of the shared test set, model 1 never; with
    # no reference the top-1 gain of the score that ranks model 0 first is acc0 / 2 per draw, so the cluster's
    # mean is (acc0_a + acc0_b) / 4 = 25 on every replicate if, and only if, both draws see the same images
    right = np.arange(60) < 30
    draws = [st.TaskData(f"t/draw{d}", np.array([[1.0, 0.0]]), None, cluster="t",
                         correct=np.stack([mask, np.zeros(60, bool)])[:, None, :])
             for d, mask in enumerate([right, ~right])]
    kwargs = dict(replicates=300, rng=0, ks=(1,), random_baseline=False, resample_tasks=False)
    result = st.bootstrap(draws, ["s"], **kwargs)
    gain = result.metrics.index("top1_gain")
    shared = result.replicates[:, 0, gain]
    np.testing.assert_allclose(shared, 25.0, rtol=1e-12)
    independent = st.bootstrap([dataclasses.replace(d, cluster=None) for d in draws], ["s"], **kwargs)
    assert independent.replicates[:, 0, gain].std() > 1


def test_image_resample_is_paired_across_models():
    rng = np.random.default_rng(5)
    a = rng.random((1, 2, 60)) < 0.6
    correct = np.concatenate([a, ~a, a], axis=0)  # model 1 is wrong exactly where model 0 is right
    acc = st._resampled_accuracies(correct, st._counts(rng.integers(0, 60, (300, 60)), 60), rng)
    np.testing.assert_allclose(acc[:, 0] + acc[:, 1], 100.0, rtol=1e-12)
    np.testing.assert_array_equal(acc[:, 0], acc[:, 2])  # exactly equal: ties survive the resample
    assert acc[:, 0].std() > 1  # it does resample
    assert abs(acc[:, 0].mean() - 100 * a.mean()) < 4 * acc[:, 0].std() / np.sqrt(300)


def test_paired_difference_is_narrower_than_unpaired_for_correlated_scores():
    rng = np.random.default_rng(6)
    tasks = []
    for i in range(8):
        task = _task(rng, f"t{i}", m=10, images=80, n_scores=1)
        base = task.scores[0]
        scores = np.stack([base, base + rng.normal(scale=0.02, size=10)])  # two nearly identical scores
        tasks.append(st.TaskData(task.name, scores, 0, correct=task.correct))
    one = st.bootstrap(tasks, ["a", "b"], replicates=1000, rng=1, random_baseline=False)
    two = st.bootstrap(tasks, ["a", "b"], replicates=1000, rng=2, random_baseline=False)
    k = one.metrics.index("spearman")
    paired = st.difference(one, "a", "b", "spearman")
    levels = [one.alpha / 2, 1 - one.alpha / 2]  # 8 tasks resampled: expanded percentile bounds
    assert one.alpha == pytest.approx(st.expanded_alpha(0.05, 8))
    unpaired = np.quantile(one.replicates[:, 0, k] - two.replicates[:, 1, k], levels)
    assert paired.estimate == pytest.approx(one.estimate[0, k] - one.estimate[1, k])
    assert (paired.high - paired.low) < 0.5 * (unpaired[1] - unpaired[0])
    np.testing.assert_allclose([paired.low, paired.high],
                               np.quantile(one.replicates[:, 0, k] - one.replicates[:, 1, k], levels))


def test_separated_pairs_lists_only_intervals_excluding_zero():
    rng = np.random.default_rng(7)
    tasks = []
    for i in range(8):
        task = _task(rng, f"t{i}", m=8, images=200, n_scores=1)
        acc = task.correct.mean(axis=(1, 2))
        scores = np.stack([acc, acc, -acc])  # good, the same good, reversed
        tasks.append(st.TaskData(task.name, scores, 0, correct=task.correct))
    result = st.bootstrap(tasks, ["good", "twin", "reversed"], replicates=500, rng=0)
    pairs = st.separated_pairs(result, "spearman")
    found = {(d.first, d.second) for d in pairs}
    assert found == {("good", "reversed"), ("twin", "reversed"), ("good", st.RANDOM), ("twin", st.RANDOM),
                     (st.RANDOM, "reversed")}
    assert all(d.estimate > 0 and d.excludes_zero for d in pairs)
    assert not st.difference(result, "good", "twin", "spearman").excludes_zero  # identical: [0, 0]


def test_determinism_given_the_seed():
    rng = np.random.default_rng(8)
    tasks = [_task(rng, f"t{i}", m=9, images=30) for i in range(3)]  # M=9: Random's weighted τ by Monte Carlo
    a = st.bootstrap(tasks, ["a", "b", "c"], replicates=50, rng=11)
    b = st.bootstrap(tasks, ["a", "b", "c"], replicates=50, rng=np.random.default_rng(11))
    c = st.bootstrap(tasks, ["a", "b", "c"], replicates=50, rng=12)
    np.testing.assert_array_equal(a.replicates, b.replicates)
    np.testing.assert_array_equal(a.estimate, b.estimate)
    assert a.seed == 11 and b.seed is None
    assert not np.array_equal(a.replicates, c.replicates)
    frame = a.frame()
    assert len(frame) == 4 * 5 and set(frame.columns) == {"score", "metric", "estimate", "low", "high", "stderr"}


def test_bad_inputs_raise_linfit_errors():
    scores = np.zeros((1, 3))
    with pytest.raises(ShapeError, match="exactly one"):
        st.TaskData("t", scores, 0)
    with pytest.raises(ShapeError, match="correct must be"):
        st.TaskData("t", scores, 0, correct=np.ones((2, 1, 5), bool))
    with pytest.raises(ConfigError, match="0/1"):
        st.TaskData("t", scores, 0, correct=np.full((3, 1, 5), 2))
    with pytest.raises(ShapeError, match="reference"):
        st.TaskData("t", scores, 3, accuracies=np.ones(3))
    task = st.TaskData("t", scores, 0, accuracies=np.array([1.0, 2, 3]))
    with pytest.raises(ShapeError, match="score names"):
        st.bootstrap([task], ["a", "b"])
    with pytest.raises(ShapeError, match="every k"):
        st.bootstrap([task], ["a"], ks=(4,))
    with pytest.raises(ConfigError, match="confidence"):
        st.bootstrap([task], ["a"], confidence=95)
    result = st.bootstrap([task], ["a"], replicates=5)
    with pytest.raises(ShapeError, match="unknown score 'b'"):
        st.difference(result, "a", "b", "spearman")
    with pytest.raises(ShapeError, match="k must lie"):
        st.expected_top_k_gain([1.0, 2.0], 0.0, 3)


# ------------------------------------------------------------------------------------------- baselines


def test_baseline_scores_from_metadata():
    models = [
        {"kind": "generalist", "reference": True, "source_images": 800, "source_accuracy": 0.7},
        {"kind": "scratch", "reference": False, "source_images": 100, "source_accuracy": 0.9},
        {"kind": "from-generalist", "reference": False, "source_images": 100, "source_accuracy": 0.95},
    ]
    scores = st.baseline_scores(models)
    np.testing.assert_array_equal(scores["from_generalist"], [1, 0, 1])
    np.testing.assert_array_equal(scores["source_images"], [800, 100, 100])
    np.testing.assert_array_equal(scores["source_accuracy"], [0.7, 0.9, 0.95])
    np.testing.assert_array_equal(scores["reference_first"], [1, 0, 0])
    # A zoo records only what applies to it (the ImageNet zoo: its published top-1): only those baselines.
    top1 = st.baseline_scores([{"name": "a", "source_accuracy": 75.1}, {"name": "b", "source_accuracy": 58.2}])
    assert list(top1) == ["source_accuracy"]
    with pytest.raises(ShapeError, match="same keys"):
        st.baseline_scores([models[0], {k: v for k, v in models[1].items() if k != "source_accuracy"}, models[2]])
    with pytest.raises(ShapeError, match="at least one"):
        st.baseline_scores([{"name": "a"}, {"name": "b"}])


def test_zoo_baseline_metadata_from_the_committed_manifest():
    from linfit.zoo.registry import WEIGHTS_DIR

    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    per_domain = manifest["train_config"]["per_domain"]
    names = ["resnet8/generalist", "resnet8/mnist/scratch", "resnet8/mnist/from-generalist"]
    meta = st.zoo_baseline_metadata(manifest, names)
    by_name = {m["name"]: m for m in manifest["models"]}
    assert [m["source_images"] for m in meta] == [8 * per_domain, per_domain, per_domain]
    assert [m["reference"] for m in meta] == [True, False, False]
    assert [m["source_accuracy"] for m in meta] == [by_name[n]["source_accuracy"] for n in names]
    np.testing.assert_array_equal(st.baseline_scores(meta)["from_generalist"], [1, 0, 1])
    with pytest.raises(UnknownNameError):
        st.zoo_baseline_metadata(manifest, ["resnet8/nope"])
    with pytest.raises(LinfitError, match="per_domain"):
        st.zoo_baseline_metadata({**manifest, "train_config": {"per_domain": None}}, names)


def test_share_interval_is_the_exact_binomial_interval():
    # Clopper-Pearson at k = n: [(α/2)^(1/n), 1]; at k = 0: [0, 1 − (α/2)^(1/n)]; inside: the beta quantiles.
    low, high = st.share_interval(4, 4)
    assert np.isclose(low, 0.025 ** 0.25) and high == 1.0
    low, high = st.share_interval(0, 5)
    assert low == 0.0 and np.isclose(high, 1 - 0.025 ** 0.2)
    low, high = st.share_interval(3, 10)
    assert np.isclose(low, sps.beta.ppf(0.025, 3, 8)) and np.isclose(high, sps.beta.ppf(0.975, 4, 7))
    with pytest.raises(ConfigError, match="0 <= k <= n"):
        st.share_interval(3, 2)
