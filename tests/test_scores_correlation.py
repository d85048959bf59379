"""LFC and kernel_label_correlation against a brute-force Pearson correlation over the N² entries."""

import numpy as np
import pytest

from linfit.errors import LabelError, NonFiniteError, ShapeError
from linfit.scores import registry
from linfit.scores.correlation import kernel_label_correlation, lfc


def pearson_brute(kernel, labels):
    """Deshpande et al. eq. (8) transcribed: scalar-mean centring, Frobenius norms, explicit K_Y."""
    ky = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    a = kernel - kernel.mean()
    b = ky - ky.mean()
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def spectral_variant(kernel, labels):
    """The public variant with spectral norms (ord=2): not a correlation."""
    ky = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    a = kernel - kernel.mean()
    b = ky - ky.mean()
    return float(np.sum(a * b) / (np.linalg.norm(a, 2) * np.linalg.norm(b, 2)))


def make(n=40, d=7, c=3, seed=0, offset=1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    phi = rng.normal(size=(n, d)) + rng.normal(size=(c, d))[y] + offset
    return phi, y


@pytest.mark.parametrize("n,d", [(40, 7), (12, 30)])
def test_lfc_matches_brute_force(n, d):
    phi, y = make(n, d)
    assert lfc(phi, y) == pytest.approx(pearson_brute(phi @ phi.T, y), rel=1e-10)


def test_kernel_correlation_matches_brute_force_on_non_symmetric_kernel():
    rng = np.random.default_rng(1)
    y = np.array([0, 1, 2, 0, 1, 2, 2, 2, 0, 1])
    k = rng.normal(size=(10, 10)) + 3.0
    assert kernel_label_correlation(k, y) == pytest.approx(pearson_brute(k, y), rel=1e-10)


def test_center_option_centres_features_and_changes_the_score():
    phi, y = make(offset=2.0)
    centred = phi - phi.mean(axis=0)
    assert lfc(phi, y, center=True) == pytest.approx(pearson_brute(centred @ centred.T, y), rel=1e-10)
    assert abs(lfc(phi, y, center=True) - lfc(phi, y)) > 1e-3


def test_encoding_invariance_pm1_vs_01():
    phi, y = make()
    k = phi @ phi.T
    same01 = (y[:, None] == y[None, :]).astype(float)
    r01 = np.corrcoef(k.ravel(), same01.ravel())[0, 1]
    assert kernel_label_correlation(k, y) == pytest.approx(r01, rel=1e-10)


def test_frobenius_not_spectral_norm():
    phi, y = make()
    k = phi @ phi.T
    ours = kernel_label_correlation(k, y)
    assert -1.0 <= ours <= 1.0
    assert abs(ours - spectral_variant(k, y)) > 1e-2


def test_perfectly_separable_features_give_one():
    y = np.array([0, 1, 2, 0, 1, 2, 1])
    assert lfc(np.eye(3)[y], y) == pytest.approx(1.0, abs=1e-12)


def test_label_and_sample_permutation_invariance():
    phi, y = make(seed=3)
    relabelled = np.array([2, 0, 1])[y]
    order = np.random.default_rng(0).permutation(len(y))
    base = lfc(phi, y)
    assert lfc(phi, relabelled) == pytest.approx(base, rel=1e-12)
    assert lfc(phi[order], y[order]) == pytest.approx(base, rel=1e-12)


def test_duplicate_feature_columns_do_not_change_the_score():
    phi, y = make(seed=4)
    assert lfc(np.concatenate([phi, phi], axis=1), y) == pytest.approx(lfc(phi, y), rel=1e-12)


def test_single_informative_dimension_beats_noise():
    rng = np.random.default_rng(5)
    y = np.arange(60) % 2
    noise = rng.normal(size=(60, 5))
    informative = noise.copy()
    informative[:, 0] = 3.0 * (2 * y - 1) + 0.1 * rng.normal(size=60)
    assert lfc(informative, y) > 0.5 > abs(lfc(noise, y))


def test_registry_entries():
    phi, y = make()
    assert registry.get("lfc")(y, features=phi) == pytest.approx(lfc(phi, y))
    assert registry.get("lfc_centered")(y, features=phi) == pytest.approx(lfc(phi, y, center=True))
    assert registry.get("lfc").needs == ("features",)


def test_validation_errors():
    phi, y = make(n=12)
    with pytest.raises(LabelError):
        lfc(phi, np.zeros(12, int))  # one class
    with pytest.raises(LabelError):
        lfc(phi, np.where(y == 1, 3, y))  # labels not 0..C-1
    bad = phi.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        lfc(bad, y)
    with pytest.raises(ShapeError):
        lfc(phi, y[:-1])
    with pytest.raises(ShapeError):
        kernel_label_correlation(phi @ phi.T[:, :5], y)  # not square
    with pytest.raises(LabelError):
        lfc(phi[:2], np.array([0, 2]))  # N=2 < C=3 (class 1 absent)
