"""Every registered score is stable under round-off: a 1e-9 relative perturbation of its inputs moves it by
at most 1e-6 relative, on few-shot shapes (N <= D, N <= 32) including exactly rank-deficient features.

The perturbation is elementwise relative, x (1 + δ) with |δ| <= 1e-9 (the model of floating-point round-off:
exact zeros stay zero, duplicated columns stop being exact duplicates). Kernels stay symmetric and source
probabilities are renormalised, as the producers of those inputs guarantee. The bound is
``|Δs| <= 1e-6 |s| + 1e-12``: the absolute term is the round-off with which a float64 score that sums
N·D <= 2048 O(1) terms is known at all (N·D·eps = 4.5e-13), so a score that is 0 up to round-off (NLEEP of
separated mixtures evaluates to ±4e-18) is not held to a relative bound it cannot have.
"""

import numpy as np
import pytest

from linfit.scores import names as score_names
from linfit.scores import registry
from linfit.scores.parc import parc, pca_reduce
from tests._score_inputs import CASES, score_inputs

REL_PERTURBATION = 1e-9
REL_BOUND = 1e-6
ABS_FLOOR = 1e-12

def _perturb(inputs: dict, rng: np.random.Generator) -> dict:
    out = dict(inputs)

    def jitter(x):
        return x * (1.0 + REL_PERTURBATION * rng.uniform(-1.0, 1.0, size=x.shape))

    for name in ("features", "probe_features", "source_class_means"):
        out[name] = jitter(inputs[name])
    kernel = jitter(inputs["ntk"])
    out["ntk"] = out["ntk_last_conv"] = out["ntk_last_conv_projected"] = (kernel + kernel.T) / 2
    probs = jitter(inputs["source_probs"])
    out["source_probs"] = probs / probs.sum(axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", score_names())
def test_score_moves_at_most_1e6_relative_under_1e9_relative_perturbation(name, case):
    score = registry.get(name)
    inputs, y = score_inputs(case, seed=sorted(CASES).index(case))
    base = score(y, **inputs)
    rng = np.random.default_rng(1234)
    for _ in range(2):
        moved = score(y, **_perturb(inputs, rng))
        assert abs(moved - base) <= REL_BOUND * abs(base) + ABS_FLOOR, (name, case, base, moved)


def test_registry_cases_cover_every_input_a_score_can_need():
    inputs, _ = score_inputs("n<d", 0)
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
