"""LogME against a direct maximisation of the evidence and a transcription of the public fixed point."""

import numpy as np
import pytest
from scipy.optimize import minimize

from linfit.errors import InputValueError, LabelError, NonFiniteError, ShapeError
from linfit.scores import registry
from linfit.scores.logme import log_evidence, logme


def evidence(f, y, log_alpha, log_beta):
    """L(α, β) / N of You et al. 2021 with the full D-dimensional A = αI + βFᵀF (dense algebra)."""
    n, d = f.shape
    a, b = np.exp(log_alpha), np.exp(log_beta)
    big_a = a * np.eye(d) + b * f.T @ f
    m = b * np.linalg.solve(big_a, f.T @ y)
    value = (
        d / 2 * np.log(a) + n / 2 * np.log(b) - 0.5 * np.linalg.slogdet(big_a)[1]
        - b / 2 * np.sum((y - f @ m) ** 2) - a / 2 * m @ m - n / 2 * np.log(2 * np.pi)
    )
    return value / n


def direct_max(f, y):
    """Nelder–Mead on (log α, log β) from a few starts."""
    runs = [
        minimize(lambda p: -evidence(f, y, *p), x0, method="Nelder-Mead",
                 options={"xatol": 1e-10, "fatol": 1e-15, "maxiter": 20_000})
        for x0 in ([0.0, 0.0], [4.0, 2.0])
    ]
    return -min(r.fun for r in runs)


def public_fixed_point(f, y):
    """thuml/LogME ``_fit_fixed_point`` transcribed: k = min(N, D) singular values only, ε = 1e-5
    in the denominators, at most 11 steps at a 1e-3 relative tolerance."""
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    x = u.T @ y
    x2 = x**2
    res_x2 = y @ y - x2.sum()
    alpha, beta = 1.0, 1.0
    for _ in range(11):
        t = alpha / beta
        gamma = np.sum(sigma / (sigma + t))
        m2 = np.sum(sigma * x2 / (t + sigma) ** 2)
        res2 = np.sum(x2 / (1 + sigma / t) ** 2) + res_x2
        alpha = gamma / (m2 + 1e-5)
        beta = (n - gamma) / (res2 + 1e-5)
        t_new = alpha / beta
        value = (
            d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
            - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)
        ) / n
        if abs(t_new - t) / t <= 1e-3:
            break
    return value


def task(n, d, c=5, signal=0.5, seed=0, rank=None):
    """Class-shifted Gaussian features; ``rank`` < min(N, D) projects them onto a random subspace."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    f = rng.normal(size=(n, d)) + signal * rng.normal(size=(c, d))[y]
    if rank is not None:
        basis = np.linalg.qr(rng.normal(size=(d, rank)))[0]
        f = f @ basis @ basis.T
    return f, y


# D > N is tested on rank-deficient features: with a full-rank FFᵀ the evidence often peaks in the
# noise-free limit β → ∞, where the dense D×D formula used by the reference loses all precision.
@pytest.mark.parametrize("n,d,rank", [(120, 16, None), (30, 60, 18), (30, 30, None)])
def test_matches_direct_maximisation_of_the_evidence(n, d, rank):
    f, y = task(n, d, rank=rank)
    onehot = np.eye(5)[y]
    ours = log_evidence(f, onehot)
    ref = np.array([direct_max(f, onehot[:, k]) for k in range(5)])
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert logme(f, y) == pytest.approx(ref.mean(), rel=1e-6)


def test_matches_public_fixed_point_when_n_exceeds_d():
    f, y = task(300, 24, signal=0.4, seed=1)
    onehot = np.eye(5)[y]
    public = np.mean([public_fixed_point(f, onehot[:, k]) for k in range(5)])
    assert logme(f, y) == pytest.approx(public, rel=1e-4)


def test_public_fixed_point_inflates_when_d_exceeds_n():
    f, y = task(30, 60, rank=18)  # the parametrised case above: ours equals the direct maximum
    onehot = np.eye(5)[y]
    public = np.mean([public_fixed_point(f, onehot[:, k]) for k in range(5)])
    ours = logme(f, y)
    assert ours < 0.0 < public  # measured: −0.508 vs +2.26


def test_regression_targets_match_direct_maximisation():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(50, 6))
    targets = f @ rng.normal(size=(6, 2)) + 0.3 * rng.normal(size=(50, 2))
    ref = np.mean([direct_max(f, targets[:, k]) for k in range(2)])
    assert logme(f, targets, regression=True) == pytest.approx(ref, rel=1e-6)
    assert logme(f, targets[:, 0], regression=True) == pytest.approx(direct_max(f, targets[:, 0]), rel=1e-6)


def test_classification_is_regression_on_one_hot_columns():
    f, y = task(80, 10, c=4)
    assert logme(f, y) == pytest.approx(logme(f, np.eye(4)[y], regression=True), rel=1e-12)


def test_invariances_and_float32_inputs():
    f, y = task(90, 12, seed=4)
    base = logme(f, y)
    order = np.random.default_rng(0).permutation(90)
    assert logme(f[order], y[order]) == pytest.approx(base, rel=1e-9)
    assert logme(f, np.array([4, 3, 2, 1, 0])[y]) == pytest.approx(base, rel=1e-9)
    f32 = f.astype(np.float32)
    assert logme(f32, y) == pytest.approx(logme(f32.astype(np.float64), y), rel=1e-12)


def test_more_informative_features_score_higher():
    weak, y = task(100, 8, signal=0.1, seed=5)
    strong, _ = task(100, 8, signal=2.0, seed=5)
    assert logme(strong, y) > logme(weak, y)


def test_registry_and_validation():
    f, y = task(20, 4)
    assert registry.get("logme")(y, features=f) == pytest.approx(logme(f, y))
    with pytest.raises(LabelError):
        logme(f, np.zeros(20, int))
    with pytest.raises(LabelError):
        logme(f, np.where(y == 2, 7, y))
    with pytest.raises(ShapeError):
        logme(f, y[:-1])
    with pytest.raises(ShapeError):
        logme(f, np.ones((19, 2)), regression=True)
    bad = f.copy()
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError):
        logme(bad, y)


def test_noise_free_limit_when_d_exceeds_n():
    """With full-rank FFᵀ (N < D) the β → ∞ limit of the evidence is the closed form
    max_α log N(y; 0, α⁻¹FFᵀ) = −N/2 log 2π − ½ log|FFᵀ| + N/2 log(N / yᵀ(FFᵀ)⁻¹y) − N/2.
    LogME is never below it, and reaches it for columns whose maximum lies in that limit."""
    f, y = task(40, 90)
    onehot = np.eye(5)[y]
    gram = f @ f.T
    n = 40
    limit = np.array([
        (-n / 2 * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(gram)[1]
         + n / 2 * np.log(n / (col @ np.linalg.solve(gram, col))) - n / 2) / n
        for col in onehot.T
    ])
    ours = log_evidence(f, onehot)
    assert np.all(ours >= limit - 1e-9)
    at_limit = np.isclose(ours, limit, rtol=1e-9)
    assert 0 < at_limit.sum() < 5  # this task has columns of both kinds (measured: 3 at the limit)


def test_degenerate_inputs_raise():
    f, y = task(20, 4)
    with pytest.raises(InputValueError, match="all zero"):
        logme(np.zeros_like(f), y)
    with pytest.raises(LabelError):
        logme(f, np.zeros((20, 1)), regression=True)


def test_off_span_energy_is_computed_not_subtracted():
    """The energy of Y off span(F) is exactly 0 when F spans R^N (N < D, full row rank), and
    matches a QR projection when it does not (N > D), independently of BLAS rounding."""
    from linfit.scores.logme import spectral_projection

    f, y = task(40, 90)
    onehot = np.eye(5)[y]
    np.testing.assert_array_equal(spectral_projection(f, onehot)[2], 0.0)
    f, y = task(90, 40)
    onehot = np.eye(5)[y]
    q = np.linalg.qr(f)[0]
    direct = np.sum((onehot - q @ (q.T @ onehot)) ** 2, axis=0)
    np.testing.assert_allclose(spectral_projection(f, onehot)[2], direct, rtol=1e-12)


@pytest.mark.parametrize("n,d", [(90, 40), (40, 90), (50, 50), (1, 4), (7, 1)])
def test_spectral_projection_matches_the_svd_of_the_features(n, d):
    """σ and the squared coordinates (UᵀY)² against numpy's SVD of F. The Gram route squares F's condition
    number: eigenvalues carry an absolute error of about eps · σ_max, so they are compared relative to σ_max,
    and the coordinates (whose signs are arbitrary) as squares relative to ‖Y‖²."""
    from linfit.scores.logme import spectral_projection

    rng = np.random.default_rng(n * 100 + d)
    f = rng.normal(size=(n, d)) * np.geomspace(1.0, 1e-2, d)
    targets = rng.normal(size=(n, 6))
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma, coords, off_span = spectral_projection(f, targets)
    order = np.argsort(s**2)  # ascending, as the eigensolver returns them
    np.testing.assert_allclose(sigma, s[order] ** 2, rtol=0, atol=1e-12 * s[0] ** 2)
    scale = np.sum(targets**2)
    np.testing.assert_allclose(coords**2, (u[:, order].T @ targets) ** 2, rtol=0, atol=1e-10 * scale)
    direct = np.sum((targets - u @ (u.T @ targets)) ** 2, axis=0)
    np.testing.assert_allclose(off_span, direct, rtol=0, atol=1e-12 * scale)
