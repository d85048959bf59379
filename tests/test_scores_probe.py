"""Held-out linear-probe and kNN accuracies, the stratified split, and the Random baseline."""

import jax
import numpy as np
import pytest
from scipy import optimize, stats

from linfit.errors import LabelError, NonFiniteError, ShapeError
from linfit.scores import registry
from linfit.scores.probe import knn, linear_probe, stratified_split
from linfit.scores.random_score import random_score


def blobs(seed, c=4, n=10, d=6, spread=6.0, noise=0.5):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), n)
    return spread * rng.normal(size=(c, d))[y] + noise * rng.normal(size=(c * n, d)), y


# ---------------------------------------------------------------- split


@pytest.mark.parametrize("holdout", [0.2, 0.3, 0.5])
def test_stratified_split_is_a_stratified_partition(holdout):
    y = np.repeat(np.arange(3), [4, 10, 7])
    train, test = stratified_split(y, holdout=holdout, seed=1)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(y.size))
    for c, n_c in enumerate([4, 10, 7]):
        n_test = np.sum(y[test] == c)
        assert n_test == min(max(round(holdout * n_c), 1), n_c - 1)
    again = stratified_split(y, holdout=holdout, seed=1)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(stratified_split(y, holdout=holdout, seed=2)[1], test)
    renamed = np.array([2, 0, 1])[y]
    np.testing.assert_array_equal(stratified_split(renamed, holdout=holdout, seed=1)[1], test)


def test_split_rejects_bad_holdout():
    with pytest.raises(ValueError, match="holdout"):
        stratified_split(np.array([0, 0, 1, 1]), holdout=1.0)


# ---------------------------------------------------------------- kNN


def knn_loops(x, y, k, holdout, seed):
    train, test = stratified_split(y, holdout=holdout, seed=seed)
    correct = 0
    for i in test:
        dists = [(np.sqrt(np.sum((x[i] - x[j]) ** 2)), pos) for pos, j in enumerate(train)]
        nearest = [train[pos] for _, pos in sorted(dists)[:k]]  # ties in distance: lower position
        votes = {}
        for j in nearest:
            votes[y[j]] = votes.get(y[j], 0) + 1
        best = max(votes.values())
        winner = next(y[j] for j in nearest if votes[y[j]] == best)  # tie: nearest tied class
        correct += winner == y[i]
    return correct / len(test)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_matches_brute_force(k):
    x, y = blobs(0, noise=5.0)
    assert knn(x, y, k=k, seed=3) == pytest.approx(knn_loops(x, y, k, 0.3, 3))


def test_knn_separable_is_perfect_random_near_chance_and_label_permutation_invariant():
    xs, y = blobs(1)
    assert knn(xs, y) == 1.0
    xr = np.random.default_rng(1).normal(size=(200, 6))
    yr = np.arange(200) % 4
    assert knn(xr, yr) < 0.45
    perm = np.array([3, 1, 0, 2])
    assert knn(xr, perm[yr]) == knn(xr, yr)


# ---------------------------------------------------------------- linear probe


def logistic_regression_scipy(x, y, l2):
    """Minimise mean cross-entropy + l2/2 ||W||^2 (bias unregularised) with scipy's L-BFGS."""
    n, d = x.shape
    c = y.max() + 1
    onehot = np.eye(c)[y]

    def loss_grad(theta):
        w, b = theta[: d * c].reshape(d, c), theta[d * c :]
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.mean(np.sum(onehot * np.log(p), axis=1)) + 0.5 * l2 * np.sum(w * w)
        g_logits = (p - onehot) / n
        return loss, np.concatenate([(x.T @ g_logits + l2 * w).ravel(), g_logits.sum(axis=0)])

    res = optimize.minimize(loss_grad, np.zeros(d * c + c), jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
    return res.x[: d * c].reshape(d, c), res.x[d * c :]


def test_linear_probe_matches_independent_logistic_regression():
    x, y = blobs(2, n=15, noise=6.0)
    l2 = 0.05
    train, test = stratified_split(y, holdout=0.3, seed=4)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    z = (x - mean) / std
    w, b = logistic_regression_scipy(z[train], y[train], l2)
    expected = np.mean(np.argmax(z[test] @ w + b, axis=1) == y[test])
    assert 0.3 < expected < 1.0  # a non-trivial case
    assert linear_probe(x, y, seed=4, l2=l2) == pytest.approx(expected)


def test_linear_probe_separable_is_perfect_random_near_chance():
    xs, y = blobs(3)
    assert linear_probe(xs, y) == 1.0
    xr = np.random.default_rng(3).normal(size=(200, 6))
    yr = np.arange(200) % 4
    assert linear_probe(xr, yr) < 0.45
    perm = np.array([1, 2, 3, 0])
    assert linear_probe(xr, perm[yr]) == linear_probe(xr, yr)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("fn", [linear_probe, knn])
def test_validation_errors(fn):
    x, y = blobs(4)
    with pytest.raises(LabelError, match="single class"):
        fn(x, np.zeros_like(y))
    with pytest.raises(LabelError, match="never occur"):
        fn(x, np.where(y == 2, 7, y))
    bad = x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(NonFiniteError):
        fn(bad, y)
    with pytest.raises(ShapeError):
        fn(x[1:], y)
    lonely = y.copy()
    lonely[np.flatnonzero(y == 3)[1:]] = 0  # class 3 keeps one sample: nothing left to hold out
    with pytest.raises(LabelError, match="at least 2"):
        fn(x, lonely)


def test_probe_options_are_checked():
    x, y = blobs(5)
    with pytest.raises(ValueError, match="k must"):
        knn(x, y, k=0)
    for l2 in (0.0, float("nan")):  # NaN used to reach sklearn
        with pytest.raises(ValueError, match="l2"):
            linear_probe(x, y, l2=l2)


# ---------------------------------------------------------------- Random baseline


def test_random_score_is_uniform_deterministic_and_registered():
    y = np.array([0, 1, 1, 0])
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(0), 100)))  # raw uint32 [100, 2]
    draws = np.array([random_score(k, y) for k in keys])
    assert np.all((draws >= 0) & (draws < 1))
    assert stats.kstest(draws, "uniform").pvalue > 1e-3
    assert random_score(keys[7], y) == draws[7]
    assert random_score(jax.random.PRNGKey(3), y) == random_score(jax.random.PRNGKey(3), y)
    score = registry.get("random")
    assert score.needs == ("key",) and score.cost == "free"
    assert score(y, key=keys[7]) == draws[7]


def test_random_score_validation():
    with pytest.raises(LabelError):
        random_score(jax.random.key(0), np.zeros(4, int))
    with pytest.raises(ShapeError, match="key"):
        random_score(np.arange(3), np.array([0, 1]))


def test_probe_scores_registered():
    x, y = blobs(6)
    for name, fn in [("linear_probe", linear_probe), ("knn", knn)]:
        score = registry.get(name)
        assert score.needs == ("features",)
        assert score(y, features=x, seed=1) == fn(x, y, seed=1)
