"""NCE: Negative Conditional Entropy of the target labels given the source labels (Tran et al. 2019).

Tran, Nguyen, Hassner, *Transferability and Hardness of Supervised Classification Tasks*, ICCV 2019
(arXiv:1908.08142), Def. 1 and Thm. 1. With Z the source model's hard label (argmax of its softmax)
and Y the target label, from the empirical joint P̂(y, z) = #{i: y_i = y, z_i = z} / N:

    NCE = −H(Y | Z) = Σ_{y,z} P̂(y, z) log( P̂(y, z) / P̂(z) ).

The argument order matters: ``nce(source_labels, labels)`` conditions the **target** labels on the
**source** labels, as in the paper; swapping them computes −H(Z | Y), a different number (LogME issue
#14 reports published baselines computed with the roles swapped). Computation is float64 numpy.

Example::

    >>> import numpy as np
    >>> nce(np.array([3, 3, 5, 5]), np.array([0, 0, 1, 1]))  # Z determines Y
    0.0
"""

from __future__ import annotations

import numpy as np

from linfit.errors import LabelError, ShapeError
from linfit.scores.registry import register
from linfit.scores.validation import check_labels, check_probabilities, encode_labels


def _check_source_labels(source_labels, n: int) -> np.ndarray:
    """Validate hard source labels ``[N]``: non-negative integers or class names (not every source class
    occurs; names are encoded by :func:`linfit.scores.validation.encode_labels`)."""
    z = np.asarray(source_labels)
    if z.ndim != 1:
        raise ShapeError(f"source_labels must be one-dimensional [N]; got shape {z.shape}")
    if z.shape[0] != n:
        raise ShapeError(f"source_labels have N={z.shape[0]} entries but the labels have N={n}")
    z = encode_labels(z, "source_labels")
    integral = np.issubdtype(z.dtype, np.integer) or (np.all(np.isfinite(z)) and np.all(z == np.round(z)))
    if not integral:
        raise LabelError(f"source_labels must be integers; got dtype {z.dtype} with non-integer values")
    z = z.astype(np.int64)
    if z.min() < 0:
        raise LabelError("source_labels must be non-negative class indices")
    return z


def nce(source_labels, labels) -> float:
    """Negative conditional entropy −H(Y | Z) of the target labels given hard source labels.

    Args:
      source_labels: ``[N]`` source-class indices z_i ≥ 0 (e.g. the source head's argmax; integer or
        integral-float dtype) or source class names; source classes that never occur are allowed.
      labels: ``[N]`` target labels y_i in ``0..C-1`` (integer or integral-float dtype), or class names
        (encoded in sorted order).

    Returns:
      −H(Y | Z) in nats as a Python ``float``, ≤ 0; 0 when the source label determines the target label.
      Higher is better.

    Shape:
      source_labels ``[N]``, labels ``[N]`` → scalar.

    Raises:
      ShapeError: ``labels`` or ``source_labels`` not 1-D, or of different lengths.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``); source labels negative, non-integer, NaN/inf, or bad class names.

    References:
      Tran et al. 2019 (ICCV, arXiv:1908.08142); formula and cited definitions in the module docstring.
    """
    y, c = check_labels(labels)
    z = _check_source_labels(source_labels, y.shape[0])
    _, z = np.unique(z, return_inverse=True)  # drop source classes that never occur
    joint = np.zeros((c, int(z.max()) + 1))
    np.add.at(joint, (y, z), 1.0)
    joint /= y.shape[0]
    conditional = joint / joint.sum(axis=0)  # P̂(y | z); every column has mass
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log(conditional[nonzero])))


@register("nce", needs=("source_probs",), reference="Tran et al. 2019, ICCV, arXiv:1908.08142", cost="forward")
def nce_from_probs(source_probs, labels) -> float:
    """NCE with Z = argmax of the source head's softmax: ``nce(argmax(source_probs), labels)``.

    Args:
      source_probs: ``[N, Cs]`` softmax outputs of the pre-trained (source) head: any real numeric dtype
        (numpy or JAX), rows non-negative and summing to 1.
      labels: ``[N]`` target labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.

    Returns:
      −H(Y | Z) in nats as a Python ``float``, ≤ 0; higher is better.

    Shape:
      source_probs ``[N, Cs]``, labels ``[N]`` → scalar.

    Raises:
      ShapeError: ``source_probs`` not 2-D or not numeric, labels not 1-D or not N long.
      InputValueError: ``source_probs`` has a negative entry or a row that does not sum to 1 (within 1e-3).
      NonFiniteError: ``source_probs`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).

    References:
      Tran et al. 2019 (ICCV, arXiv:1908.08142); formula and cited definitions in the module docstring.
    """
    probs, y, _ = check_probabilities(source_probs, labels)
    return nce(np.argmax(probs, axis=1), y)
