"""Every registered score is stable under round-off: a 1e-9 relative perturbation of its inputs moves it by
at most 1e-6 relative, on few-shot shapes (N <= D, N <= 32) including exactly rank-deficient features.

The perturbation is elementwise relative, x (1 + δ) with |δ| <= 1e-9 (the model of floating-point round-off:
exact zeros stay zero, duplicated columns stop being exact duplicates). Kernels stay symmetric and source
probabilities are renormalised, as the producers of those inputs guarantee. The bound is
``|Δs| <= 1e-6 |s| + 1e-12``: the absolute term is the round-off with which a float64 score that sums
N·D <= 2048 O(1) terms is known at all (N·D·eps = 4.5e-13), so a score that is 0 up to round-off (NLEEP of
separated mixtures evaluates to ±4e-18) is not held to a relative bound it cannot have.
"""

import jax
import numpy as np
import pytest

from linfit.scores import names as score_names
from linfit.scores import registry
from linfit.scores.parc import parc, pca_reduce

REL_PERTURBATION = 1e-9
REL_BOUND = 1e-6
ABS_FLOOR = 1e-12

# (N, D, C, how the features are made); N <= D and N <= 32 throughout, every class with >= 5 samples
# (domain similarity's and NLEEP's minimum).
CASES = {
    "n<d": (12, 20, 2, "plain"),
    "duplicated_columns": (16, 32, 2, "duplicated"),
    "rank_5_of_30x64": (30, 64, 3, "rank5"),
    "n=d=pca_dim": (32, 32, 4, "plain"),
    "dead_and_constant_columns_x1e3": (16, 40, 2, "dead"),
    "duplicated_columns_x1e-3": (30, 30, 3, "duplicated_small"),
}


def _inputs(case: str, seed: int):
    n, d, c, kind = CASES[case]
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    means = 2.0 * rng.normal(size=(c, d))
    f = means[y] + rng.normal(size=(n, d))
    if kind.startswith("duplicated"):
        f[:, d // 2 :] = f[:, : d - d // 2]
    if kind == "rank5":
        f = f[:, :5] @ rng.normal(size=(5, d))
    if kind == "dead":
        f[:, :3] = 0.0  # dead ReLU units
        f[:, 3] = 1.5  # a constant unit
        f *= 1e3
    if kind == "duplicated_small":
        f *= 1e-3
    logits = 1.5 * rng.normal(size=(n, 7))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    kernel = f @ f.T  # positive semi-definite, rank-deficient like the features
    inputs = {
        "features": f,
        "probe_features": means[y, :6] + rng.normal(size=(n, 6)),
        "source_probs": probs,
        "ntk": kernel,
        "ntk_last_conv": kernel,
        "source_class_means": 2.0 * rng.normal(size=(4, d)) * np.abs(f).max() / 4.0,
        "source_class_counts": np.array([10.0, 8.0, 12.0, 9.0]),
        "key": jax.random.key(seed),
    }
    return inputs, y


def _perturb(inputs: dict, rng: np.random.Generator) -> dict:
    out = dict(inputs)

    def jitter(x):
        return x * (1.0 + REL_PERTURBATION * rng.uniform(-1.0, 1.0, size=x.shape))

    for name in ("features", "probe_features", "source_class_means"):
        out[name] = jitter(inputs[name])
    kernel = jitter(inputs["ntk"])
    out["ntk"] = out["ntk_last_conv"] = (kernel + kernel.T) / 2
    probs = jitter(inputs["source_probs"])
    out["source_probs"] = probs / probs.sum(axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", score_names())
def test_score_moves_at_most_1e6_relative_under_1e9_relative_perturbation(name, case):
    score = registry.get(name)
    inputs, y = _inputs(case, seed=sorted(CASES).index(case))
    base = score(y, **inputs)
    rng = np.random.default_rng(1234)
    for _ in range(2):
        moved = score(y, **_perturb(inputs, rng))
        assert abs(moved - base) <= REL_BOUND * abs(base) + ABS_FLOOR, (name, case, base, moved)


def test_registry_cases_cover_every_input_a_score_can_need():
    inputs, _ = _inputs("n<d", 0)
    assert set(registry.INPUT_NAMES) <= set(inputs)


def test_pca_reduce_drops_the_direction_centring_removes():
    # N <= D: the centred features have rank N - 1 (matrix_rank, an independent SVD with numpy's tolerance);
    # the N-th principal axis has singular value ~1e-15 and is round-off, not a component.
    rng = np.random.default_rng(0)
    f = rng.normal(size=(32, 40))
    rank = np.linalg.matrix_rank(f - f.mean(axis=0))
    assert rank == 31
    assert pca_reduce(f, 32).shape == (32, rank)


def test_parc_with_n_equal_pca_dim_ignores_round_off():
    # The example: N = pca_dim = 32 kept the null axis (singular value ~2e-15) and scaled it to unit
    # variance, so a 1e-9 perturbation moved PARC by O(0.1). With the null axis dropped, PARC equals PARC on
    # exactly the N - 1 = 31 genuine components.
    rng = np.random.default_rng(3)
    y = np.arange(32) % 4
    f = rng.normal(size=(4, 48))[y] + 2.0 * rng.normal(size=(32, 48))
    base = parc(f, y, pca_dim=32)
    assert base == pytest.approx(parc(f, y, pca_dim=31), abs=0.0)
    moved = parc(f * (1.0 + REL_PERTURBATION * rng.uniform(-1, 1, size=f.shape)), y, pca_dim=32)
    assert abs(moved - base) <= REL_BOUND * abs(base)
