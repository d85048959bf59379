"""RSA, Feature Metrics and Domain Similarity against direct transcriptions and closed forms."""

import itertools

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import linear_sum_assignment

from linfit.errors import ConfigError, InputValueError, LabelError, NonFiniteError, ShapeError
from linfit.scores import registry
from linfit.scores.domain_similarity import domain_similarity, earth_movers_distance
from linfit.scores.feature_metrics import feature_metrics, feature_variance, hoyer_sparsity, near_zero_fraction
from linfit.scores.rsa import rsa

RNG = np.random.default_rng(0)


def labels(c=3, n=8):
    return np.repeat(np.arange(c), n)


# ---------------------------------------------------------------- RSA


def rsa_transcription(f, g):
    n = f.shape[0]
    a = [1 - np.corrcoef(f[i], f[j])[0, 1] for i, j in itertools.combinations(range(n), 2)]
    b = [1 - np.corrcoef(g[i], g[j])[0, 1] for i, j in itertools.combinations(range(n), 2)]
    return stats.spearmanr(a, b)[0]


def test_rsa_matches_transcription():
    y = labels()
    f = RNG.normal(size=(24, 6))
    g = f[:, :3] + 0.7 * RNG.normal(size=(24, 3))
    assert rsa(f, g, y) == pytest.approx(rsa_transcription(f, g), abs=1e-10)


def test_rsa_identical_and_rowwise_affine_copies_score_one_random_near_zero():
    y = labels()
    f = RNG.normal(size=(24, 6))
    scale = RNG.uniform(0.5, 3.0, size=(24, 1))
    assert rsa(f, scale * f + 4.0, y) == pytest.approx(1.0, abs=1e-12)
    assert abs(rsa(f, RNG.normal(size=(24, 5)), y)) < 0.2


def test_rsa_validation():
    y = labels()
    f = RNG.normal(size=(24, 6))
    with pytest.raises(ShapeError, match="probe_features has N=23 rows but the features have N=24"):
        rsa(f, f[:-1], y)
    with pytest.raises(ShapeError, match="D >= 2"):
        rsa(f, f[:, :1], y)


# ---------------------------------------------------------------- Feature Metrics


def hoyer_loops(f):
    out = []
    for row in f:
        d = len(row)
        l1 = sum(abs(v) for v in row)
        l2 = np.sqrt(sum(v * v for v in row))
        out.append((np.sqrt(d) - l1 / l2) / (np.sqrt(d) - 1))
    return np.array(out)


def test_hoyer_and_near_zero_match_loops():
    f = np.maximum(RNG.normal(size=(10, 7)), 0.0) + 1e-3 * RNG.uniform(size=(10, 7))
    np.testing.assert_allclose(hoyer_sparsity(f), hoyer_loops(f), rtol=1e-12)
    expected = [np.mean([abs(v) <= 0.05 * max(abs(row)) for v in row]) for row in f]
    np.testing.assert_allclose(near_zero_fraction(f, rel_tol=0.05), expected)


def test_sparsity_limits_and_scale_invariance():
    d = 8
    one_hot = np.eye(d)[[0, 3, 5, 7]]
    flat = np.ones((4, d)) * np.array([[1.0], [-2.0], [3.0], [0.5]])
    np.testing.assert_allclose(hoyer_sparsity(one_hot), 1.0)
    np.testing.assert_allclose(hoyer_sparsity(flat), 0.0, atol=1e-12)
    np.testing.assert_allclose(near_zero_fraction(one_hot), (d - 1) / d)
    y = np.array([0, 1, 0, 1])
    assert feature_metrics(one_hot, y) == pytest.approx(0.5 * 1.0 + 0.5 * (d - 1) / d)
    assert feature_metrics(flat, y) == pytest.approx(0.0, abs=1e-12)
    f = np.abs(RNG.normal(size=(4, d)))
    assert feature_metrics(7.5 * f, y) == pytest.approx(feature_metrics(f, y), rel=1e-12)
    assert feature_metrics(one_hot, y, weight=1.0) == pytest.approx(1.0)


def test_feature_variance_matches_loops():
    f = RNG.normal(size=(12, 5))
    unit = np.array([row / np.sqrt(sum(v * v for v in row)) for row in f])
    expected = np.mean([np.var(unit[:, j]) for j in range(5)])
    assert feature_variance(f) == pytest.approx(expected, rel=1e-12)
    assert feature_variance(3.0 * f) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- EMD and Domain Similarity


def test_emd_equal_weights_is_the_assignment_problem():
    a, b = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
    cost = np.linalg.norm(a[:, None] - b[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    assert earth_movers_distance(np.ones(6), np.ones(6), cost) == pytest.approx(cost[rows, cols].mean(), abs=1e-9)


def emd_1d_cdf(xa, wa, xb, wb):
    """Closed form in 1-D: the integral of |F_a - F_b| over the real line."""
    wa, wb = np.asarray(wa, float) / np.sum(wa), np.asarray(wb, float) / np.sum(wb)
    grid = np.sort(np.concatenate([xa, xb]))
    fa = np.array([wa[xa <= t].sum() for t in grid])
    fb = np.array([wb[xb <= t].sum() for t in grid])
    return float(np.sum(np.abs(fa - fb)[:-1] * np.diff(grid)))


def test_emd_one_dimensional_closed_form_with_unequal_weights():
    xa, xb = RNG.normal(size=5), RNG.normal(size=7) + 0.5
    wa, wb = RNG.uniform(0.1, 1.0, 5), RNG.uniform(0.1, 1.0, 7)
    cost = np.abs(xa[:, None] - xb[None])
    assert earth_movers_distance(wa, wb, cost) == pytest.approx(emd_1d_cdf(xa, wa, xb, wb), abs=1e-9)
    for bad in ((np.where(np.arange(5) == 2, np.nan, wa), wb, cost), (wa, wb, np.where(np.arange(7) == 3, np.inf, cost))):
        with pytest.raises(NonFiniteError, match="EMD"):  # was scipy's ValueError from linprog
            earth_movers_distance(*bad)


def test_domain_similarity_one_dimensional_with_class_exclusion():
    # target: class sizes 6, 9, 3 (class 2 has < 5 samples and is dropped); source: counts 10, 4, 20
    y = np.repeat([0, 1, 2], [6, 9, 3])
    f = RNG.normal(size=(18, 1)) + 2.0 * y[:, None]
    src_means = np.array([[0.3], [5.0], [1.7]])
    src_counts = np.array([10, 4, 20])
    target_means = np.array([f[y == c, 0].mean() for c in (0, 1)])
    emd = emd_1d_cdf(target_means, [6, 9], src_means[[0, 2], 0], [10, 20])
    got = domain_similarity(f, src_means, src_counts, y, gamma=0.5)
    assert got == pytest.approx(np.exp(-0.5 * emd), rel=1e-9)


def test_domain_similarity_identical_domains_score_one_and_far_domains_lower():
    y = labels(4, 6)
    f = RNG.normal(size=(24, 5))
    means = np.stack([f[y == c].mean(axis=0) for c in range(4)])
    counts = np.full(4, 6)
    assert domain_similarity(f, means, counts, y) == pytest.approx(1.0, abs=1e-9)
    far = domain_similarity(f, means + 100.0, counts, y)
    assert far < 0.5
    perm = np.array([2, 0, 3, 1])
    assert domain_similarity(f, means, counts, perm[y]) == pytest.approx(1.0, abs=1e-9)


def test_domain_similarity_validation():
    y = labels(2, 6)
    f = RNG.normal(size=(12, 3))
    means, counts = RNG.normal(size=(4, 3)), np.full(4, 10)
    with pytest.raises(ShapeError, match="D=2"):
        domain_similarity(f, means[:, :2], counts, y)
    with pytest.raises(ShapeError, match="source_class_counts"):
        domain_similarity(f, means, counts[:3], y)
    with pytest.raises(InputValueError, match="1 negative"):
        domain_similarity(f, means, np.array([10, -10, 10, 10]), y)
    with pytest.raises(InputValueError, match="EMD weights"):  # every kept source count is zero
        domain_similarity(f, means, np.zeros(4), y, min_per_class=0)
    with pytest.raises(LabelError, match="no target class"):
        domain_similarity(f, means, counts, y, min_per_class=7)
    with pytest.raises(LabelError, match="no source class"):
        domain_similarity(f, means, np.full(4, 2), y)
    for gamma in (-1.0, 0.0, np.nan):  # gamma = -1 gave 6.57, outside (0, 1]
        with pytest.raises(ConfigError, match="gamma"):
            domain_similarity(f, means, counts, y, gamma=gamma)


# ---------------------------------------------------------------- shared validation and registry


def call_rsa(f, y):
    return rsa(f, f, y)


def call_domsim(f, y):
    return domain_similarity(f, np.zeros((2, f.shape[1])), np.array([10, 10]), y)


@pytest.mark.parametrize("fn", [call_rsa, feature_metrics, call_domsim])
def test_validation_errors(fn):
    y = labels(3, 6)
    f = RNG.normal(size=(18, 4))
    with pytest.raises(LabelError, match="single class"):
        fn(f, np.zeros_like(y))
    with pytest.raises(LabelError):
        fn(f, np.where(y == 1, -1, y))
    bad = f.copy()
    bad[3, 1] = np.inf
    with pytest.raises(NonFiniteError):
        fn(bad, y)
    with pytest.raises(ShapeError):
        fn(f, y[:-2])


def test_registry_entries():
    y = labels(3, 6)
    f = RNG.normal(size=(18, 4))
    assert registry.get("rsa").needs == ("features", "probe_features")
    assert registry.get("domain_similarity").needs == ("features", "source_class_means", "source_class_counts")
    means, counts = RNG.normal(size=(3, 4)), np.full(3, 9)
    assert registry.get("domain_similarity")(
        y, features=f, source_class_means=means, source_class_counts=counts, gamma=0.1
    ) == pytest.approx(domain_similarity(f, means, counts, y, gamma=0.1))
    assert registry.get("rsa")(y, features=f, probe_features=f[:, ::-1]) == pytest.approx(rsa(f, f[:, ::-1], y))
    assert registry.get("feature_metrics")(y, features=f) == pytest.approx(feature_metrics(f, y))
