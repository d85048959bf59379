"""Inputs for every registered score on few-shot shapes (N <= D, N <= 32), shared by the score-wide tests."""

import jax
import numpy as np

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


def score_inputs(case: str, seed: int):
    """``(inputs by registry input name, integer labels [N])`` for one of ``CASES``."""
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
        "ntk_last_conv_projected": kernel,
        "source_class_means": 2.0 * rng.normal(size=(4, d)) * np.abs(f).max() / 4.0,
        "source_class_counts": np.array([10.0, 8.0, 12.0, 9.0]),
        "key": jax.random.key(seed),
    }
    return inputs, y
