"""LEEP: Log Expected Empirical Prediction (Nguyen et al. 2020).

Nguyen, Hassner, Seeger, Archambeau, *LEEP: A New Measure to Evaluate Transferability of Learned
Representations*, ICML 2020 (arXiv:2002.12462), eqs. (1)–(2). With θ(x)_z the source model's softmax
probability of source class z:

    P̂(y, z) = (1/N) Σ_{i: y_i = y} θ(x_i)_z,      P̂(y | z) = P̂(y, z) / Σ_y' P̂(y', z),
    T = (1/N) Σ_i log Σ_z P̂(y_i | z) θ(x_i)_z.

Source classes that no sample puts mass on (P̂(z) = 0) get P̂(y | z) = 0; they cannot contribute
because θ(x_i)_z = 0 for every i. Computation is float64 numpy.

Example::

    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8]])
    >>> round(leep(probs, np.array([0, 0, 1, 1])), 3)
    -0.295
"""

from __future__ import annotations

import numpy as np

from linfit.scores.registry import register
from linfit.scores.validation import check_probabilities


@register("leep", needs=("source_probs",), reference="Nguyen et al. 2020, ICML, arXiv:2002.12462", cost="forward")
def leep(source_probs, labels) -> float:
    """Log expected empirical prediction of the target labels from the source head's outputs.

    Args:
      source_probs: ``[N, Cs]`` softmax outputs θ(x_i) of the pre-trained (source) head: any real numeric dtype
        (numpy or JAX), rows non-negative and summing to 1; computed in float64.
      labels: ``[N]`` target labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.

    Returns:
      T ≤ 0 as a Python ``float``, the mean log-likelihood of the labels under the empirical predictor; higher
      is better.

    Shape:
      source_probs ``[N, Cs]``, labels ``[N]`` → scalar.

    Raises:
      ShapeError: ``source_probs`` not 2-D or not numeric, labels not 1-D or not N long.
      InputValueError: ``source_probs`` has a negative entry or a row that does not sum to 1 (within 1e-3).
      NonFiniteError: ``source_probs`` contains NaN or inf.
      LabelError: labels outside ``0..C-1``, a class in that range absent, a single class, or unusable class
        names (``check_labels``).

    References:
      Nguyen et al. 2020 (ICML, arXiv:2002.12462); formula and cited equations in the module docstring.
    """
    theta, y, c = check_probabilities(source_probs, labels)
    theta = theta.astype(np.float64)
    joint = np.eye(c)[y].T @ theta / theta.shape[0]  # [C, Cs]  P̂(y, z)
    marginal = joint.sum(axis=0)  # [Cs]  P̂(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P̂(y | z)
    expected = np.sum(conditional[y] * theta, axis=1)  # [N]  Σ_z P̂(y_i | z) θ(x_i)_z
    return float(np.mean(np.log(expected)))
