"""LEEP and NCE against loop transcriptions of Nguyen et al. 2020 and Tran et al. 2019."""

import math

import numpy as np
import pytest

from linfit.errors import InputValueError, LabelError, NonFiniteError, ShapeError
from linfit.scores import registry
from linfit.scores.leep import leep
from linfit.scores.nce import nce, nce_from_probs


def leep_loops(theta, y):
    """Nguyen et al. 2020, eqs. (1)-(2), one sum at a time."""
    n, cs = theta.shape
    c = int(y.max()) + 1
    joint = [[sum(theta[i, z] for i in range(n) if y[i] == t) / n for z in range(cs)] for t in range(c)]
    pz = [sum(joint[t][z] for t in range(c)) for z in range(cs)]
    total = 0.0
    for i in range(n):
        eep = sum(joint[y[i]][z] / pz[z] * theta[i, z] for z in range(cs) if pz[z] > 0)
        total += math.log(eep)
    return total / n


def nce_loops(z, y):
    """Tran et al. 2019: -H(Y|Z) = sum_{y,z} P(y,z) log P(y|z) from counts."""
    n = len(y)
    total = 0.0
    for zz in set(z.tolist()):
        nz = sum(1 for i in range(n) if z[i] == zz)
        for yy in set(y.tolist()):
            nyz = sum(1 for i in range(n) if z[i] == zz and y[i] == yy)
            if nyz:
                total += nyz / n * math.log(nyz / nz)
    return total


def softmax_probs(n=30, cs=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    logits = rng.normal(size=(n, cs)) + 2.0 * np.eye(cs)[y]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), y


def test_leep_matches_loops():
    p, y = softmax_probs()
    assert leep(p, y) == pytest.approx(leep_loops(p, y), rel=1e-12)


def test_leep_guards_empty_source_classes():
    p, y = softmax_probs(cs=4)
    padded = np.concatenate([p[:, :2], np.zeros((len(y), 1)), p[:, 2:]], axis=1)
    assert np.isfinite(leep(padded, y))
    assert leep(padded, y) == pytest.approx(leep(p, y), rel=1e-12)


def test_leep_is_zero_when_source_predictions_determine_labels():
    y = np.array([0, 1, 1, 0, 2, 2])
    z = np.array([3, 0, 0, 1, 2, 2])  # source class -> target class is a function
    assert leep(np.eye(4)[z], y) == pytest.approx(0.0, abs=1e-12)
    p, y2 = softmax_probs()
    assert leep(p, y2) < 0.0


def test_leep_label_permutation_invariance():
    p, y = softmax_probs(seed=2)
    assert leep(p, np.array([1, 2, 0])[y]) == pytest.approx(leep(p, y), rel=1e-12)


def test_nce_matches_loops():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 4
    z = np.where(rng.random(40) < 0.6, y + 3, rng.integers(0, 9, 40))
    assert nce(z, y) == pytest.approx(nce_loops(z, y), rel=1e-12)


def test_nce_argument_order_is_the_published_one():
    z = np.array([0, 1, 2, 3, 0, 1, 2, 3])  # source labels refine the target labels
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    assert nce(z, y) == pytest.approx(0.0, abs=1e-15)  # -H(Y|Z): Z determines Y
    assert nce(y, z) == pytest.approx(-math.log(2.0), rel=1e-12)  # swapped: -H(Z|Y)
    assert nce(y, z) != pytest.approx(nce(z, y))


def test_nce_label_permutation_invariance_and_probs_wrapper():
    p, y = softmax_probs(seed=4)
    z = np.argmax(p, axis=1)
    assert nce(z, np.array([2, 0, 1])[y]) == pytest.approx(nce(z, y), rel=1e-12)
    assert nce((z * 7) % 11, y) == pytest.approx(nce(z, y), rel=1e-12)  # source relabelling
    assert nce_from_probs(p, y) == pytest.approx(nce_loops(z, y), rel=1e-12)


def test_registry_entries():
    p, y = softmax_probs()
    assert registry.get("nce").needs == ("source_probs",)
    assert registry.get("leep").needs == ("source_probs",)
    assert registry.get("nce")(y, source_probs=p) == pytest.approx(nce(np.argmax(p, 1), y))
    assert registry.get("leep")(y, source_probs=p) == pytest.approx(leep(p, y))


def test_validation_errors():
    p, y = softmax_probs(n=9)
    with pytest.raises(InputValueError, match="softmax"):
        leep(p * 2.0, y)  # not probabilities
    with pytest.raises(ShapeError):
        leep(p, y[:-1])
    with pytest.raises(LabelError):
        leep(p, np.zeros(9, int))
    with pytest.raises(LabelError):
        leep(p, np.where(y == 1, 5, y))
    bad = p.copy()
    bad[0, 0] = np.inf
    with pytest.raises(NonFiniteError):
        leep(bad, y)
    with pytest.raises(ShapeError):
        nce(np.argmax(p, 1)[:-1], y)
    with pytest.raises(LabelError):
        nce(-np.ones(9, int), y)
    with pytest.raises(LabelError):
        nce(np.argmax(p, 1), np.array([0, 1, 3, 0, 1, 3, 0, 1, 3]))
