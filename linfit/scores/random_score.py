"""The Random baseline of Deshpande et al. (2021): a model's score is a uniform random number.

Ranking a zoo by independent ``U(0, 1)`` draws picks models in a uniformly random order; its expected
rank correlation with fine-tuning accuracy is 0, the floor every other score should beat.
"""

from __future__ import annotations

import jax
import numpy as np

from linfit.errors import ShapeError
from linfit.scores.registry import register
from linfit.scores.validation import check_labels


@register(
    "random",
    needs=("key",),
    reference="Deshpande et al., A linearized framework and a new benchmark for model selection "
    "for fine-tuning, 2021 (Random baseline)",
    cost="free",
)
def random_score(key, labels) -> float:
    """A ``U[0, 1)`` draw from ``key`` (``labels [N]`` are validated, not used).

    Args:
      key: a ``jax.random`` key (typed key of shape ``()``, or a raw ``uint32[2]`` key); the same key gives the
        same score, so give each model its own key (e.g. ``jax.random.fold_in(key, model_index)``).
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.

    Returns:
      A Python ``float`` in ``[0, 1)``.

    Raises:
      ShapeError: ``key`` is not one typed key or one raw ``uint32[2]`` key; labels not 1-D.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``).

    References:
      The Random baseline of Deshpande et al. 2021 (arXiv:2102.00084), Sec. 4.3.
    """
    check_labels(labels)
    arr = key if isinstance(key, jax.Array) else np.asarray(key)
    typed = jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key) and arr.shape == ()
    raw = arr.dtype == np.uint32 and arr.shape == (2,)
    if not (typed or raw):
        raise ShapeError(f"key must be one jax.random key; got dtype {arr.dtype} shape {arr.shape}")
    return float(jax.random.uniform(key))
