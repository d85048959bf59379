"""Input validation shared by all scores: labels, feature matrices, probability matrices, kernels.

Each check raises a specific ``linfit`` error whose message names the problem and what was expected.
"""

from __future__ import annotations

import numbers

import numpy as np

from linfit.errors import InputValueError, LabelError, NonFiniteError, ShapeError


def _kind(value) -> str:
    """The family a label value belongs to: numbers, strings, bytes, or its type's name."""
    if isinstance(value, (numbers.Number, np.bool_)):
        return "number"
    return "str" if isinstance(value, str) else "bytes" if isinstance(value, bytes) else type(value).__name__


def _as_array(labels) -> np.ndarray:
    """``labels`` as an array; a Python list or tuple keeps each value's own type (``np.asarray`` would turn
    ``[0, "a"]`` into the strings ``"0", "a"`` and hide the mix)."""
    return np.asarray(labels, dtype=object) if isinstance(labels, (list, tuple)) else np.asarray(labels)


def encode_labels(labels, name: str = "labels") -> np.ndarray:
    """Map non-numeric labels (class names) to codes ``0..C-1`` in sorted order; pass numeric labels through.

    Strings, bytes and other hashable values of one orderable type are encoded as sklearn's ``LabelEncoder``
    does: the sorted distinct values get codes ``0..C-1`` (so ``["cat", "dog", "cat"]`` becomes ``[0, 1, 0]``
    and a score of class names equals the score of their codes). Booleans become ``0/1``. Numeric labels
    (including numbers in an object array) are returned as a numeric array, unchanged: they are class
    indices and :func:`check_labels` holds them to the ``0..C-1`` contract.

    Args:
      labels: ``[N]`` array-like.
      name: the argument's name, for messages.

    Returns:
      ``[N]`` numeric array (int64 codes for non-numeric input).

    Raises:
      LabelError: a missing value (``None`` or NaN among names), an unhashable value (e.g. a list), values of
        mixed types (e.g. ``1`` and ``"1"``), or values that cannot be ordered.
    """
    y = _as_array(labels)
    if y.dtype == np.bool_:
        return y.astype(np.int64)
    if y.dtype.kind in "US":
        return np.unique(y, return_inverse=True)[1].reshape(y.shape).astype(np.int64)
    if y.dtype.kind != "O":
        if not np.issubdtype(y.dtype, np.number):
            raise LabelError(f"{name} must be integers 0..C-1 or class names; got dtype {y.dtype}")
        return y
    values = y.ravel().tolist()
    for i, v in enumerate(values):
        if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)):
            raise LabelError(f"{name} contain a missing value ({v!r}) at position {i}; drop or fill it first")
        try:
            hash(v)
        except TypeError:
            raise LabelError(f"{name} must be hashable class names or integers; got a {type(v).__name__} "
                             f"at position {i}") from None
    kinds = sorted({_kind(v) for v in values})
    if len(kinds) > 1:
        raise LabelError(f"{name} mix value types {kinds}; use one type (all class names or all integers)")
    if kinds == ["number"]:
        return encode_labels(np.array(values).reshape(y.shape), name)
    try:
        classes = sorted(set(values))
    except TypeError:
        raise LabelError(f"{name} of type {kinds[0]} cannot be ordered, so they have no canonical codes; "
                         "pass strings or integers") from None
    code = {v: i for i, v in enumerate(classes)}
    return np.array([code[v] for v in values], dtype=np.int64).reshape(y.shape)


def check_labels(labels, *, n: int | None = None, min_per_class: int = 1) -> tuple[np.ndarray, int]:
    """Validate class labels, mapping class names to codes ``0..C-1`` first (:func:`encode_labels`).

    Args:
      labels: ``[N]`` integers in ``0..C-1`` where every class in that range occurs, or ``[N]`` class names
        (strings, bytes, booleans or other hashable values of one orderable type), which are encoded as the
        sorted distinct names' positions, as sklearn's ``LabelEncoder`` does.
      n: the expected N (e.g. the number of feature rows), or ``None``.
      min_per_class: the fewest samples any class may have (e.g. 2 for scores that need a
        within-class variance).

    Returns:
      ``(labels as int64 [N], C)``.

    Raises:
      ShapeError: not one-dimensional, or N differs from ``n``.
      LabelError: non-integer or NaN values, values outside ``0..C-1``, a single class, a class absent or
        with fewer than ``min_per_class`` samples; class names that are
        missing, unhashable, of mixed types or unorderable (:func:`encode_labels`).
    """
    y = _as_array(labels)
    if y.ndim != 1:
        raise ShapeError(f"labels must be one-dimensional [N]; got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise ShapeError(f"labels have N={y.shape[0]} entries but the inputs have N={n} rows")
    if y.size == 0:
        raise LabelError("labels are empty")
    y = encode_labels(y)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)):
            raise LabelError(f"labels contain {int(np.sum(~np.isfinite(y)))} NaN or infinite values")
        if not np.all(y == np.round(y)):
            raise LabelError(f"labels must be integers 0..C-1; got dtype {y.dtype} with non-integer values")
    y = y.astype(np.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        bad = sorted(set(y[y < 0].tolist()))[:5]
        raise LabelError(f"labels must lie in 0..C-1; got negative values {bad}")
    num_classes = hi + 1
    counts = np.bincount(y, minlength=num_classes)
    absent = np.flatnonzero(counts == 0).tolist()
    if absent:
        raise LabelError(
            f"labels must use every class in 0..C-1 (C={num_classes} from the largest label); "
            f"classes {absent[:10]} never occur"
        )
    if num_classes < 2:
        raise LabelError("labels contain a single class; a score needs at least two classes")
    small = np.flatnonzero(counts < min_per_class).tolist()
    if small:
        raise LabelError(
            f"every class needs at least {min_per_class} samples; classes {small[:10]} have "
            f"{counts[small[:10]].tolist()}"
        )
    return y, num_classes


def check_matrix(x, name: str, *, n: int | None = None, ndim: int = 2, against: str = "features") -> np.ndarray:
    """Validate a finite ``[N, D]`` float matrix (``ndim`` axes; ``N = n`` rows when given, the row count of
    the array named ``against``); returns it as a numpy array. Raises ``ShapeError`` (axes, rows, a
    non-numeric dtype) or ``NonFiniteError``."""
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ShapeError(f"{name} must have {ndim} axes; got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ShapeError(f"{name} has N={a.shape[0]} rows but the {against} have N={n}")
    if not np.issubdtype(a.dtype, np.number):
        raise ShapeError(f"{name} must be numeric; got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise NonFiniteError(f"{name} contains {bad} NaN or infinite values")
    return a


def check_features(features, labels, *, min_per_class: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate ``features [N, D]`` and ``labels [N]`` together; returns ``(features, labels, C)``."""
    f = check_matrix(features, "features")
    y, c = check_labels(labels, n=f.shape[0], min_per_class=min_per_class)
    return f, y, c


def check_probabilities(probs, labels) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate source-class probabilities ``[N, Cs]`` (non-negative rows summing to 1) and labels."""
    p = check_matrix(probs, "source_probs")
    y, c = check_labels(labels, n=p.shape[0])
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise InputValueError(
            "source_probs must be probabilities (non-negative rows summing to 1); apply a softmax "
            "to logits first"
        )
    return p, y, c


def check_kernel(kernel, labels) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate a square kernel ``[N, N]`` matching ``labels [N]``."""
    k = check_matrix(kernel, "kernel")
    if k.shape[0] != k.shape[1]:
        raise ShapeError(f"kernel must be square [N, N]; got shape {k.shape}")
    y, c = check_labels(labels, n=k.shape[0])
    return k, y, c
