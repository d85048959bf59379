"""Labels at the score API edge: class names are encoded to 0..C-1 in sorted order (as sklearn's LabelEncoder);
missing, unhashable, mixed-type and unorderable labels raise a LabelError instead of a raw TypeError."""

import numpy as np
import pytest

from linfit.errors import LabelError
from linfit.scores import names as score_names
from linfit.scores import registry
from linfit.scores.nce import nce
from linfit.scores.validation import check_labels
from tests._score_inputs import score_inputs

NAMES = np.array(["zebra", "ant", "moth", "cat"])  # sorted order differs from this order


def sorted_codes(values) -> np.ndarray:
    """Independent LabelEncoder transcription: position of each value among the sorted distinct values."""
    classes = sorted(set(values))
    return np.array([classes.index(v) for v in values])


@pytest.mark.parametrize("as_object", [False, True], ids=["str_dtype", "object_dtype"])
@pytest.mark.parametrize("name", score_names())
def test_score_of_class_names_equals_score_of_their_codes(name, as_object):
    inputs, y = score_inputs("rank_5_of_30x64", 0)
    names = NAMES[y]
    labels = np.array(names.tolist(), dtype=object) if as_object else names
    codes = sorted_codes(names.tolist())
    score = registry.get(name)
    assert score(labels, **inputs) == score(codes, **inputs)


def test_codes_follow_sorted_order():
    y, c = check_labels(["dog", "cat", "dog", "bird", "cat"])
    np.testing.assert_array_equal(y, [2, 1, 2, 0, 1])
    assert c == 3
    y, c = check_labels(np.array([True, False, True]))
    np.testing.assert_array_equal(y, [1, 0, 1])


def test_nce_source_labels_may_be_names():
    z = np.array(["tabby", "tabby", "siamese", "beagle", "beagle", "siamese"])
    y = np.array([0, 0, 1, 1, 1, 0])
    assert nce(z, y) == nce(sorted_codes(z.tolist()), y)


def _objects(*values):
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


@pytest.mark.parametrize(
    "labels, message",
    [
        (_objects([0], [1], [0], [1]), "hashable"),
        (_objects(0, "a", 1, "b"), "mix value types"),
        ([0, "a", 1, "b"], "mix value types"),  # a plain list: numpy would coerce the numbers to strings
        (_objects("a", None, "b", "a"), "missing value"),
        (_objects("a", float("nan"), "b", "a"), "missing value"),
        (np.array([0.0, 1.0, np.nan, 1.0]), "NaN"),
        (_objects(object(), object(), object(), object()), "cannot be ordered"),
    ],
    ids=["unhashable", "mixed", "mixed_list", "none", "nan_among_names", "nan_float", "unorderable"],
)
def test_unusable_labels_raise_label_error(labels, message):
    f = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(LabelError, match=message):
        registry.get("lfc")(labels, features=f)
    with pytest.raises(LabelError, match=message):
        check_labels(labels)
