"""NLEEP, PARC and SFDA against direct numpy transcriptions of their formulas."""

import numpy as np
import pytest
import scipy.linalg
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from linfit.errors import ConfigError, InputValueError, LabelError, NonFiniteError, ShapeError
from linfit.scores import registry
from linfit.scores.nleep import nleep
from linfit.scores.parc import parc, pca_reduce
from linfit.scores.sfda import sfda


def blobs(seed, c=3, n=12, d=10, spread=5.0, noise=0.5):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), n)
    x = spread * rng.normal(size=(c, d))[y] + noise * rng.normal(size=(c * n, d))
    return x, y


def random_features(seed, c=3, n=12, d=10):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(c * n, d)), np.repeat(np.arange(c), n)


def permute_labels(y, seed):
    perm = np.random.default_rng(seed).permutation(y.max() + 1)
    return perm[y]


# ---------------------------------------------------------------- LEEP / NLEEP


def leep_loops(probs, y):
    n, k = probs.shape
    c = y.max() + 1
    joint = np.zeros((c, k))
    for i in range(n):
        joint[y[i]] += probs[i] / n
    total = 0.0
    for i in range(n):
        eep = sum(probs[i, z] * joint[y[i], z] / joint[:, z].sum() for z in range(k))
        total += np.log(eep)
    return total / n


def test_nleep_matches_pca_gmm_leep_transcription():
    x, y = blobs(1, noise=2.0)
    z = PCA(n_components=0.8, svd_solver="full").fit_transform(x)
    gmm = GaussianMixture(n_components=5 * 3, covariance_type="full", random_state=3).fit(z)
    expected = leep_loops(gmm.predict_proba(z), y)
    assert nleep(x, y, seed=3) == pytest.approx(expected, abs=1e-6)


def test_nleep_without_pca_uses_raw_features():
    x, y = blobs(2, d=4, noise=2.0)
    gmm = GaussianMixture(n_components=2 * 3, random_state=0).fit(x - x.mean(axis=0))
    expected = leep_loops(gmm.predict_proba(x - x.mean(axis=0)), y)
    got = nleep(x, y, components_per_class=2, pca_variance=None, seed=0)
    assert got == pytest.approx(expected, abs=1e-6)


def test_nleep_separable_high_random_low_and_label_permutation_invariant():
    xs, y = blobs(3)
    xr, _ = random_features(3)
    high, low = nleep(xs, y), nleep(xr, y)
    assert high > -0.05 and low < -0.5 and high > low
    assert nleep(xr, permute_labels(y, 0)) == pytest.approx(low, abs=1e-9)


def test_nleep_needs_as_many_samples_as_components():
    x, y = blobs(4, n=3)
    with pytest.raises(LabelError, match="mixture components"):
        nleep(x, y)


def test_nleep_pca_variance_is_a_share_of_the_variance():
    """``pca_variance=1`` keeps all of the variance (it used to keep one component), a numpy float is a share
    too, and a share outside (0, 1] is refused."""
    x, y = blobs(13, noise=3.0)
    assert nleep(x, y, pca_variance=1, seed=0) == nleep(x, y, pca_variance=1.0, seed=0)
    assert nleep(x, y, pca_variance=np.float32(0.8), seed=0) == nleep(x, y, pca_variance=0.8, seed=0)
    for bad in (0, 1.5, 3, True):
        with pytest.raises(ConfigError, match="pca_variance"):
            nleep(x, y, pca_variance=bad)
    with pytest.raises(ConfigError, match="components_per_class"):
        nleep(x, y, components_per_class=0)


# ---------------------------------------------------------------- PARC


def parc_transcription(x, y, dim):
    xc = x - x.mean(axis=0)
    evals, evecs = np.linalg.eigh(xc.T @ xc)
    top = evecs[:, np.argsort(evals)[::-1][:dim]]
    for k in range(dim):  # sign convention: the largest-magnitude loading is positive
        top[:, k] *= np.sign(top[np.argmax(np.abs(top[:, k])), k])
    z = xc @ top
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    onehot = np.eye(y.max() + 1)[y]
    n = len(y)
    a, b = [], []
    for i in range(n):
        for j in range(i + 1, n):
            a.append(1 - np.corrcoef(z[i], z[j])[0, 1])
            b.append(1 - np.corrcoef(onehot[i], onehot[j])[0, 1])
    # exact arithmetic gives two label dissimilarities; round-off must not split their ties
    return stats.spearmanr(a, np.round(b, 12))[0]


@pytest.mark.parametrize("n_components", [3, 0.8])
def test_pca_reduce_matches_sklearn_including_signs(n_components):
    x, _ = blobs(13, noise=3.0)
    expected = PCA(n_components=n_components, svd_solver="full").fit_transform(x)
    got = pca_reduce(x, n_components)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-9)
    if isinstance(n_components, float):  # a numpy float is a share of the variance too
        np.testing.assert_array_equal(pca_reduce(x, np.float32(n_components)), got)


def test_parc_matches_transcription():
    x, y = blobs(5, noise=3.0)
    assert parc(x, y, pca_dim=4) == pytest.approx(parc_transcription(x, y, 4), abs=1e-9)


def test_parc_separable_high_random_low_and_label_permutation_invariant():
    xs, y = blobs(6)
    xr, _ = random_features(6)
    # keep the C - 1 = 2 signal directions: standardised noise directions would dominate the RDM
    high, low = parc(xs, y, pca_dim=2), parc(xr, y, pca_dim=2)
    assert high > 0.5 and abs(low) < 0.15
    assert parc(xs, permute_labels(y, 1), pca_dim=2) == pytest.approx(high, abs=1e-12)


def test_parc_needs_two_pca_dimensions():
    x, y = blobs(7)
    with pytest.raises(ShapeError, match="PCA dimensions"):
        parc(x, y, pca_dim=1)
    with pytest.raises(InputValueError, match="zero variance"):
        parc(np.ones_like(x), y)


# ---------------------------------------------------------------- SFDA


def fisher_pass_via_eigenvectors(x, y, shrinkage=None):
    """The paper's route: generalised eigenvectors of (S_b, S_w shrunk), loops over classes."""
    c, d = y.max() + 1, x.shape[1]
    priors = np.array([np.mean(y == k) for k in range(c)])
    means = np.stack([x[y == k].mean(axis=0) for k in range(c)])
    sw = sum(priors[k] * np.cov(x[y == k].T, bias=True) for k in range(c))
    if shrinkage is None:
        shrinkage = max(np.exp(-5 * np.max(np.linalg.eigvalsh(sw))), 1e-10)
    sw_s = (1 - shrinkage) * sw + shrinkage * np.trace(sw) / d * np.eye(d)
    st = np.cov(x.T, bias=True)
    _, v = scipy.linalg.eigh(st - sw_s, sw_s)
    coef = means @ v @ v.T
    logits = x @ coef.T - 0.5 * np.diag(means @ coef.T) + np.log(priors)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), means, shrinkage


def sfda_transcription(x, y, shrinkage=None):
    c, n = y.max() + 1, len(y)
    p, means, lam = fisher_pass_via_eigenvectors(x, y, shrinkage)
    soft = np.exp(p) / np.exp(p).sum(axis=1, keepdims=True)
    mixed = x.copy()
    for i in range(n):
        others = np.mean([means[k] for k in range(c) if k != y[i]], axis=0)
        q = soft[i, y[i]]
        mixed[i] = q * x[i] + (1 - q) * others
    p2, _, _ = fisher_pass_via_eigenvectors(mixed, y, lam)
    return np.mean([p2[i, y[i]] for i in range(n)])


@pytest.mark.parametrize("scale", [0.05, 1.0])  # small scale: strong shrinkage; 1.0: almost none
def test_sfda_matches_transcription(scale):
    x, y = blobs(8, c=4, n=10, d=6, spread=1.0, noise=1.5)
    assert sfda(scale * x, y) == pytest.approx(sfda_transcription(scale * x, y), abs=1e-9)


def test_sfda_fixed_shrinkage_matches_transcription_and_is_checked():
    x, y = blobs(14, c=3, n=8, d=12, spread=1.0, noise=1.5)
    assert sfda(x, y, shrinkage=0.3) == pytest.approx(sfda_transcription(x, y, 0.3), abs=1e-9)
    with pytest.raises(ValueError, match="shrinkage"):
        sfda(x, y, shrinkage=1.5)


def test_sfda_separable_high_random_low_and_label_permutation_invariant():
    xs, y = blobs(9)
    xr, _ = random_features(9, d=4)
    high, low = sfda(xs, y), sfda(xr, y)
    assert high > 0.99 and low < 0.8
    assert sfda(xr, permute_labels(y, 2)) == pytest.approx(low, abs=1e-9)


def test_sfda_needs_two_samples_per_class():
    x, y = blobs(10)
    y = y.copy()
    y[np.flatnonzero(y == 2)[1:]] = 0
    with pytest.raises(LabelError, match="at least 2"):
        sfda(x, y)


# ---------------------------------------------------------------- validation and registry

SCORES = [nleep, parc, sfda]


@pytest.mark.parametrize("fn", SCORES)
def test_validation_errors(fn):
    x, y = blobs(11)
    with pytest.raises(LabelError, match="single class"):
        fn(x, np.zeros_like(y))
    with pytest.raises(LabelError, match="never occur"):
        fn(x, np.where(y == 1, 3, y))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        fn(bad, y)
    with pytest.raises(ShapeError):
        fn(x[:-1], y)


@pytest.mark.parametrize("name", ["nleep", "parc", "sfda"])
def test_registered_and_callable_through_registry(name):
    x, y = blobs(12)
    score = registry.get(name)
    assert score.needs == ("features",)
    assert score(y, features=x) == pytest.approx(score.fn(x, y))
