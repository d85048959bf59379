"""Domain Similarity (Cui et al., CVPR 2018), an Earth Mover's Distance between class means.

"Large Scale Fine-Grained Categorization and Domain-Specific Transfer Learning". Each domain is a
weighted point cloud of class-mean features: target class ``t`` has mean ``g_t`` and weight
``w_t = N_t / sum N``; source class ``s`` has mean ``h_s`` and weight from the source class counts.
Classes with fewer than ``min_per_class`` samples (5 in the paper) are dropped on both sides. With
Euclidean ground distance ``d_ts = ||g_t - h_s||_2``,

    EMD = min_{f >= 0} sum_ts f_ts d_ts   s.t.  sum_s f_ts = w_t,  sum_t f_ts = v_s     (weights sum to 1)
    DS  = exp(-gamma * EMD),   gamma = 0.01.

The transportation problem is solved exactly as a linear program (``scipy.optimize.linprog``, HiGHS).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, sparse
from scipy.spatial.distance import cdist

from linfit.errors import ConfigError, InputValueError, LabelError, LinfitError, NonFiniteError, ShapeError
from linfit.scores.registry import register
from linfit.scores.validation import check_labels, check_matrix


def earth_movers_distance(source_weights, target_weights, cost) -> float:
    """Exact EMD between two discrete distributions, solved as a linear program (``scipy.optimize.linprog``, HiGHS).

    Args:
      source_weights: ``[M]`` non-negative masses, any real numeric dtype (normalised to sum 1 here).
      target_weights: ``[K]`` non-negative masses, any real numeric dtype (normalised to sum 1 here).
      cost: ``[M, K]`` ground distances (non-negative by convention; not checked), in the units of the
        distance; everything is computed in float64.

    Returns:
      ``min_F sum_mk F_mk cost_mk`` over transport plans ``F [M, K] >= 0`` with row sums ``source_weights``
      and column sums ``target_weights``, as a Python ``float`` in the units of ``cost``.

    Shape:
      source_weights ``[M]``, target_weights ``[K]``, cost ``[M, K]`` → scalar.

    Raises:
      ShapeError: a weight vector not 1-D, ``cost`` not ``[M, K]``.
      InputValueError: a negative weight, or weights whose total is not positive (including ``M = 0`` or
        ``K = 0``).
      NonFiniteError: NaN or inf in a weight or the cost (before: scipy's ``ValueError`` from ``linprog``).
      LinfitError: the linear program reports no optimal solution.
    """
    a = np.asarray(source_weights, dtype=np.float64)
    b = np.asarray(target_weights, dtype=np.float64)
    d = np.asarray(cost, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or d.shape != (a.size, b.size):
        raise ShapeError(f"EMD needs weights [M], [K] and cost [M, K]; got {a.shape}, {b.shape}, {d.shape}")
    for name, array in (("source_weights", a), ("target_weights", b), ("cost", d)):
        if not np.all(np.isfinite(array)):
            raise NonFiniteError(f"EMD {name} contain NaN or inf ({int(np.sum(~np.isfinite(array)))} entries)")
    if np.any(a < 0) or np.any(b < 0) or a.sum() <= 0 or b.sum() <= 0:
        raise InputValueError(f"EMD weights must be non-negative with a positive total; got a source total of "
                              f"{a.sum():g} (smallest weight {min(a, default=0):g}) and a target total of "
                              f"{b.sum():g} (smallest weight {min(b, default=0):g})")
    a, b = a / a.sum(), b / b.sum()
    m, k = d.shape
    rows = sparse.kron(sparse.eye(m), np.ones((1, k)))  # sum over k of F[m, k]
    cols = sparse.kron(np.ones((1, m)), sparse.eye(k))  # sum over m of F[m, k]
    result = optimize.linprog(
        d.ravel(),
        A_eq=sparse.vstack([rows, cols]).tocsr(),
        b_eq=np.concatenate([a, b]),
        bounds=(0, None),
        method="highs",
    )
    if not result.success:
        raise LinfitError(f"the EMD linear program failed: {result.message}")
    return float(result.fun)


@register(
    "domain_similarity",
    needs=("features", "source_class_means", "source_class_counts"),
    reference="Cui et al., Large Scale Fine-Grained Categorization and Domain-Specific Transfer "
    "Learning, CVPR 2018",
    cost="source-data",
)
def domain_similarity(
    features,
    source_class_means,
    source_class_counts,
    labels,
    *,
    gamma: float = 0.01,
    min_per_class: int = 5,
) -> float:
    """Domain similarity ``exp(-gamma * EMD)`` between target and source class-mean features.

    Args:
      features: ``[N, D]`` target features from the pre-trained model, any real numeric dtype (numpy or JAX);
        computed in float64.
      source_class_means: ``[Cs, D]`` class-mean features of the source dataset, any real numeric dtype.
      source_class_counts: ``[Cs]`` number of source samples per class, non-negative, any real numeric dtype.
      labels: ``[N]`` target labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.
      gamma: the temperature of the similarity.
      min_per_class: classes (target or source) with fewer samples are excluded.

    Returns:
      DS in ``(0, 1]`` as a Python ``float``; 1 when the two weighted class-mean clouds coincide.

    Raises:
      ShapeError: ``features`` or ``source_class_means`` not 2-D, ``source_class_counts`` not 1-D, any of them
        not numeric; labels not 1-D or not N long; feature dimensions D or class counts Cs that do not match.
      InputValueError: negative source counts; all kept source counts zero (only possible with
        ``min_per_class <= 0``).
      NonFiniteError: ``features``, ``source_class_means`` or ``source_class_counts`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``); no target or no source class has ``min_per_class`` samples.
      ConfigError: ``gamma <= 0`` or NaN.
      LinfitError: the EMD linear program fails.

    References:
      Cui et al. 2018 (CVPR); formula in the module docstring.
    """
    if not gamma > 0:
        raise ConfigError(f"gamma must be > 0 (DS = exp(-gamma * EMD) lies in (0, 1] only then); got {gamma}")
    f = np.asarray(check_matrix(features, "features"), dtype=np.float64)
    y, c = check_labels(labels, n=f.shape[0])
    src = np.asarray(check_matrix(source_class_means, "source_class_means"), dtype=np.float64)
    if src.shape[1] != f.shape[1]:
        raise ShapeError(f"source_class_means have D={src.shape[1]} but features have D={f.shape[1]}")
    counts = np.asarray(check_matrix(source_class_counts, "source_class_counts", ndim=1), dtype=np.float64)
    if counts.shape[0] != src.shape[0]:
        raise ShapeError(f"source_class_counts must be [Cs={src.shape[0]}], one count per source class mean; got "
                         f"shape {counts.shape}")
    if np.any(counts < 0):
        raise InputValueError(f"source_class_counts must be non-negative image counts; got "
                              f"{int(np.sum(counts < 0))} negative")
    target_counts = np.bincount(y, minlength=c).astype(np.float64)
    keep_t = target_counts >= min_per_class
    keep_s = counts >= min_per_class
    if not keep_t.any():
        raise LabelError(f"no target class has at least min_per_class={min_per_class} samples")
    if not keep_s.any():
        raise LabelError(f"no source class has at least min_per_class={min_per_class} samples")
    target_means = np.zeros((c, f.shape[1]))
    np.add.at(target_means, y, f)
    target_means /= target_counts[:, None]
    cost = cdist(target_means[keep_t], src[keep_s])
    emd = earth_movers_distance(target_counts[keep_t], counts[keep_s], cost)
    return float(np.exp(-gamma * emd))
