"""Feature Metrics: variance and sparsity of pre-trained features (after Ueno & Kondo 2020).

Ueno & Kondo, "A base model selection methodology for efficient fine-tuning" (2020), rank base models
by a variance metric and two sparsity metrics of their penultimate features, hypothesising that
sparser representations fine-tune better; Deshpande et al. (2021) use that paper's optimal linear
combination of the two sparsity metrics as the "Feature Metrics" baseline.

**The exact definitions and combination weights of Ueno & Kondo could not be found** (searched the
web-page, documentation and code corpora available to this project). linfit therefore implements
clearly defined stand-ins and documents them:

* ``hoyer_sparsity``: per sample, Hoyer's sparsity of ``f in R^D``,
  ``(sqrt(D) - ||f||_1 / ||f||_2) / (sqrt(D) - 1)`` in ``[0, 1]`` (1 = one non-zero entry, 0 = all
  entries of equal magnitude; a zero vector counts as 1);
* ``near_zero_fraction``: per sample, the fraction of entries with ``|f_d| <= rel_tol * max_d |f_d|``;
* ``feature_variance`` (the variance metric, reported for completeness and not part of the score):
  the mean over dimensions of the across-sample variance of L2-normalised features.

The score is ``weight * mean_i hoyer_i + (1 - weight) * mean_i near_zero_i`` with ``weight = 0.5`` by
default (an equal-weight stand-in for the paper's fitted combination). All three metrics are
invariant to a positive rescaling of the features.
"""

from __future__ import annotations

import numpy as np

from linfit.errors import ConfigError, ShapeError
from linfit.scores.registry import register
from linfit.scores.validation import check_features, check_matrix


def _matrix(features) -> np.ndarray:
    f = np.asarray(check_matrix(features, "features"), dtype=np.float64)
    if f.shape[1] < 2:
        raise ShapeError(f"feature metrics need D >= 2 feature dimensions; got shape {f.shape}")
    return f


def hoyer_sparsity(features) -> np.ndarray:
    """Hoyer sparsity of each row of ``features [N, D]`` (``D >= 2``); returns ``[N]`` in ``[0, 1]``."""
    f = _matrix(features)
    l1 = np.abs(f).sum(axis=1)
    l2 = np.linalg.norm(f, axis=1)
    ratio = np.divide(l1, l2, out=np.ones_like(l1), where=l2 > 0)
    root_d = np.sqrt(f.shape[1])
    return (root_d - ratio) / (root_d - 1.0)


def near_zero_fraction(features, *, rel_tol: float = 1e-2) -> np.ndarray:
    """Fraction of entries of each row of ``features [N, D]`` with ``|f| <= rel_tol * max |f|``; ``[N]``."""
    f = np.abs(_matrix(features))
    return np.mean(f <= rel_tol * f.max(axis=1, keepdims=True), axis=1)


def feature_variance(features) -> float:
    """Mean over dimensions of the across-sample variance of row-L2-normalised ``features [N, D]``."""
    f = _matrix(features)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    unit = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)
    return float(unit.var(axis=0).mean())


@register(
    "feature_metrics",
    needs=("features",),
    reference="Ueno & Kondo, A base model selection methodology for efficient fine-tuning, 2020 "
    "(sparsity metrics re-defined by linfit; see linfit.scores.feature_metrics)",
    cost="forward",
)
def feature_metrics(features, labels, *, weight: float = 0.5, rel_tol: float = 1e-2) -> float:
    """Combined sparsity score of ``features [N, D]`` (``labels [N]`` are validated, not used).

    Args:
      features: ``[N, D]`` penultimate features, ``D >= 2``, any real numeric dtype (numpy or JAX); computed in
        float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.
      weight: weight of the mean Hoyer sparsity, in ``[0, 1]``; ``1 - weight`` goes to the near-zero fraction.
      rel_tol: relative threshold of ``near_zero_fraction``.

    Returns:
      A Python ``float`` in ``[0, 1]``; higher = sparser features.

    Raises:
      ConfigError: ``weight`` not in ``[0, 1]``.
      ShapeError: ``features`` not 2-D, not numeric or with ``D < 2``; labels not 1-D or not N long.
      NonFiniteError: ``features`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).

    References:
      Ueno & Kondo 2020, whose definitions linfit could not find: the metrics here are linfit's stand-ins (module
      docstring).
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"weight must lie in [0, 1]; got {weight}")
    f, _, _ = check_features(features, labels)
    return float(
        weight * hoyer_sparsity(f).mean() + (1.0 - weight) * near_zero_fraction(f, rel_tol=rel_tol).mean()
    )
