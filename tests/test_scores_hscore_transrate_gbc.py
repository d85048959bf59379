"""H-score, regularised H-score, Ledoit–Wolf, TransRate and GBC against direct numpy transcriptions."""

import math
import re

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from linfit.errors import ConfigError, LabelError, NonFiniteError, ShapeError, UnknownNameError
from linfit.scores import registry
from linfit.scores.gbc import gbc
from linfit.scores.hscore import h_score, ledoit_wolf, regularized_h_score
from linfit.scores.transrate import transrate


def task(n=60, d=6, c=3, signal=1.0, seed=0, mix=True):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    f = rng.normal(size=(n, d)) + signal * rng.normal(size=(c, d))[y]
    if mix:  # correlated features, so that cov(f) is far from diagonal
        f = f @ rng.normal(size=(d, d))
    return f, y


def class_mean_rows(f, y):
    return np.stack([f[y == k].mean(axis=0) for k in range(y.max() + 1)])[y]


def h_score_numpy(f, y, product):
    """Bao et al. 2019: tr(pinv(cov f) · cov(E[f|y])); ``product`` is the matrix or elementwise one."""
    cov_f = np.cov(f, rowvar=False)
    cov_g = np.cov(class_mean_rows(f, y), rowvar=False)
    return float(np.trace(product(np.linalg.pinv(cov_f, rcond=1e-15), cov_g)))


def test_h_score_matches_matrix_product_transcription_not_elementwise():
    f, y = task()
    matrix = h_score_numpy(f, y, np.matmul)
    elementwise = h_score_numpy(f, y, np.multiply)
    assert h_score(f, y) == pytest.approx(matrix, rel=1e-9)
    assert abs(h_score(f, y) - elementwise) > 0.1 * abs(matrix)


def test_h_score_when_d_exceeds_n_uses_the_pseudo_inverse():
    f, y = task(n=12, d=20, mix=False)
    assert h_score(f, y) == pytest.approx(h_score_numpy(f, y, np.matmul), rel=1e-7)


@pytest.mark.parametrize("n,d", [(50, 8), (15, 30)])
def test_ledoit_wolf_matches_sklearn(n, d):
    f, _ = task(n=n, d=d)
    ours, shrinkage = ledoit_wolf(f)
    ref, ref_shrinkage = sklearn_ledoit_wolf(f)
    assert shrinkage == pytest.approx(ref_shrinkage, rel=1e-10)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("shape", [(0, 3), (4, 0)])
def test_ledoit_wolf_refuses_empty_features(shape):  # (0, 3) was LAPACK's "failed to create intent(cache|hide)"
    message = f"at least one sample and one feature; got features of shape {shape}"
    with pytest.raises(ShapeError, match=re.escape(message)):
        ledoit_wolf(np.zeros(shape))


@pytest.mark.parametrize("n,d", [(50, 8), (15, 30)])
def test_regularized_h_score_matches_transcription(n, d):
    """Ibrahim et al. 2021: tr(inv(Σ_LW) (1 − α) cov(E[f|y])), both covariances with 1/N."""
    f, y = task(n=n, d=d)
    shrunk, alpha = sklearn_ledoit_wolf(f)
    cov_g = np.cov(class_mean_rows(f, y), rowvar=False, bias=True)
    ref = np.trace(np.linalg.inv(shrunk) @ ((1 - alpha) * cov_g))
    assert regularized_h_score(f, y) == pytest.approx(ref, rel=1e-8)
    assert alpha > 0 and regularized_h_score(f, y) != pytest.approx(h_score(f, y))


def coding_rate_slogdet(z, eps):
    n, d = z.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps**2) * z.T @ z)[1]


def transrate_numpy(f, y, eps, weighted):
    z = f - f.mean(axis=0)
    classes = range(y.max() + 1)
    rates = [coding_rate_slogdet(z[y == k], eps) for k in classes]
    weights = [np.mean(y == k) if weighted else 1 / len(rates) for k in classes]
    return coding_rate_slogdet(z, eps) - sum(w * r for w, r in zip(weights, rates))


def tllib_transrate(f, y, eps):
    """The community tllib version: 1/(n ε) scaling and an unweighted class mean."""
    def rate(z):
        n, d = z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + 1 / (n * eps) * z.T @ z)[1]
    z = f - f.mean(axis=0)
    c = y.max() + 1
    return rate(z) - sum(rate(z[y == k]) for k in range(c)) / c


def imbalanced(n=45, d=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.zeros(30, int), np.ones(10, int), np.full(5, 2)])
    return rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(3, d))[y], y


@pytest.mark.parametrize("eps", [1e-4, 0.5])
def test_transrate_matches_slogdet_transcription(eps):
    f, y = imbalanced()
    assert transrate(f, y, eps=eps) == pytest.approx(transrate_numpy(f, y, eps, True), rel=1e-9)
    assert transrate(f, y, eps=eps, class_weighting="uniform") == pytest.approx(
        transrate_numpy(f, y, eps, False), rel=1e-9)


def test_transrate_weighting_matters_and_tllib_is_recovered():
    f, y = imbalanced()
    assert abs(transrate(f, y) - transrate(f, y, class_weighting="uniform")) > 1e-3
    eps_tllib = 1e-4
    assert transrate(f, y, eps=math.sqrt(f.shape[1] * eps_tllib), class_weighting="uniform") == pytest.approx(
        tllib_transrate(f, y, eps_tllib), rel=1e-9)


def test_transrate_when_d_exceeds_class_sizes():
    f, y = task(n=24, d=40, mix=False)
    assert transrate(f, y, eps=0.3) == pytest.approx(transrate_numpy(f, y, 0.3, True), rel=1e-8)


def gbc_loops(f, y, gaussian_type, floor=1e-4):
    """Pándy et al. 2022 with explicit covariance matrices and determinants."""
    c = y.max() + 1
    d = f.shape[1]
    stats = []
    for k in range(c):
        fk = f[y == k]
        var = fk.var(axis=0)
        if gaussian_type == "spherical":
            var = np.full(d, var.mean())
        stats.append((fk.mean(axis=0), np.diag(np.maximum(var, floor))))
    total = 0.0
    for i in range(c):
        for j in range(c):
            if i == j:
                continue
            (m1, s1), (m2, s2) = stats[i], stats[j]
            s = (s1 + s2) / 2
            diff = m1 - m2
            bd = diff @ np.linalg.inv(s) @ diff / 8 + 0.5 * np.log(
                np.linalg.det(s) / math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
            total += math.exp(-bd)
    return -total


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
def test_gbc_matches_loops(gaussian_type):
    f, y = task(n=40, d=4, c=4, signal=0.7)
    assert gbc(f, y, gaussian_type=gaussian_type) == pytest.approx(gbc_loops(f, y, gaussian_type), rel=1e-9)


def test_gbc_variance_floor_and_separability():
    f, y = task(n=30, d=4, mix=False, signal=0.3)
    f[:, 3] = 1.0  # a constant dimension: variances floored, the score stays finite
    assert np.isfinite(gbc(f, y, gaussian_type="diagonal"))
    assert gbc(f, y, gaussian_type="diagonal") == pytest.approx(gbc_loops(f, y, "diagonal"), rel=1e-9)
    separated = f + 50.0 * np.eye(4)[y % 4]
    assert gbc(f, y) < gbc(separated, y) <= 0.0
    assert gbc(separated, y) == pytest.approx(0.0, abs=1e-12)


def test_label_permutation_invariance_and_duplicate_features():
    f, y = task(seed=3)
    relabelled = np.array([1, 2, 0])[y]
    for score in (h_score, regularized_h_score, transrate, gbc):
        assert score(f, relabelled) == pytest.approx(score(f, y), rel=1e-9)
    # duplicated feature columns span the same space: the H-score is unchanged
    assert h_score(np.concatenate([f, f], axis=1), y) == pytest.approx(h_score(f, y), rel=1e-7)


def test_single_informative_dimension():
    rng = np.random.default_rng(7)
    # three classes: with two balanced classes TransRate sees no reduction in the informative
    # dimension, because class rows are centred globally, not per class (second moments ±2 offset)
    y = np.arange(90) % 3
    noise = rng.normal(size=(90, 5))
    informative = noise.copy()
    informative[:, 2] += 4.0 * y
    for score in (h_score, regularized_h_score, transrate, gbc):
        assert score(informative, y) > score(noise, y)


def test_registry_entries():
    f, y = task()
    for name, fn in [("h_score", h_score), ("regularized_h_score", regularized_h_score),
                     ("transrate", transrate), ("gbc", gbc)]:
        assert registry.get(name).needs == ("features",)
        assert registry.get(name)(y, features=f) == pytest.approx(fn(f, y))
    assert registry.get("gbc")(y, features=f, gaussian_type="diagonal") == pytest.approx(
        gbc(f, y, gaussian_type="diagonal"))


def test_validation_errors():
    f, y = task(n=12)
    for score in (h_score, regularized_h_score, transrate, gbc):
        with pytest.raises(LabelError):
            score(f, np.zeros(12, int))
        with pytest.raises(LabelError):
            score(f, np.where(y == 1, 4, y))
        with pytest.raises(ShapeError):
            score(f[:-1], y)
        bad = f.copy()
        bad[2, 2] = np.inf
        with pytest.raises(NonFiniteError):
            score(bad, y)
    with pytest.raises(LabelError):
        gbc(f, np.array([0] * 11 + [1]))  # a class with one sample: no variance
    with pytest.raises(UnknownNameError):
        gbc(f, y, gaussian_type="full")
    with pytest.raises(ConfigError, match="var_floor"):  # a zero floor gave NaN from log 0 and 0/0
        gbc(np.c_[f, np.ones(12)], y, var_floor=0.0)
    with pytest.raises(UnknownNameError):
        transrate(f, y, class_weighting="median")
