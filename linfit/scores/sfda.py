"""SFDA: Self-challenging Fisher Discriminant Analysis (Shao et al., ECCV 2022).

"Not All Models Are Equal: Predicting Model Transferability in a Self-challenging Fisher Space".
My reading of the paper and its public code (TencentARC/SFDA), implemented in float64 numpy:

1. **Regularised Fisher space.** Class priors ``pi_c = N_c / N``, class means ``mu_c``, within-class
   scatter ``S_w = sum_c pi_c Cov_c`` (biased covariances). Shrinkage
   ``lambda = max(exp(-5 * lambda_max(S_w)), 1e-10)`` and
   ``S = (1 - lambda) S_w + lambda * (tr(S_w) / D) I``.
   Projecting onto *all* generalised eigenvectors ``V`` of ``(S_b, S)`` (``V^T S V = I``) and
   classifying there by the linear discriminant gives
   ``delta_c(x) = x^T V V^T mu_c - 1/2 mu_c^T V V^T mu_c + log pi_c`` with ``V V^T = S^-1``; linfit
   evaluates this identity directly from one ``eigh`` of ``S_w`` (no generalised eigenproblem, no
   dependence on ``S_b``) and ``p(y | x) = softmax_c delta_c(x)``. ``lambda_max`` is exact (the
   reference code uses 3 power iterations).
2. **ConfMix self-challenge.** With ``q_i = softmax(p(. | x_i))[y_i]`` (the reference code softens the
   first-pass probabilities by one more softmax before mixing; linfit follows it), each sample moves
   toward the mean of the *other* classes' means: ``x~_i = q_i x_i + (1 - q_i) mean_{c != y_i} mu_c``.
3. **Second pass** on ``x~`` with the first pass's ``lambda``; the score is the mean probability of
   the true class, ``SFDA = (1/N) sum_i p~(y_i | x~_i)`` (no log, as in the paper's code).
"""

from __future__ import annotations

import numpy as np

from linfit.errors import ConfigError
from linfit.scores.registry import register
from linfit.scores.validation import check_features


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _class_stats(x: np.ndarray, y: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Priors ``[C]``, means ``[C, D]`` and prior-weighted within-class covariance ``[D, D]``."""
    counts = np.bincount(y, minlength=c).astype(np.float64)
    means = np.zeros((c, x.shape[1]))
    np.add.at(means, y, x)
    means /= counts[:, None]
    centred = x - means[y]
    within = centred.T @ centred / x.shape[0]  # = sum_c pi_c * (1/N_c) sum_{i in c} (x_i-mu_c)(.)^T
    return counts / x.shape[0], means, within


def _fisher_probs(x: np.ndarray, y: np.ndarray, c: int, shrinkage: float | None):
    """One regularised-Fisher pass: ``(p(y|x) [N, C], class means [C, D], shrinkage used)``.

    One ``eigh`` of ``S_w`` gives both ``lambda_max`` and ``S^-1`` (``S`` shares ``S_w``'s
    eigenvectors); a zero eigenvalue of ``S`` (only when ``tr(S_w) = 0``) is pseudo-inverted to 0.
    """
    priors, means, within = _class_stats(x, y, c)
    evals, evecs = np.linalg.eigh(within)
    evals = np.maximum(evals, 0.0)  # round-off
    lam = float(max(np.exp(-5.0 * evals[-1]), 1e-10)) if shrinkage is None else shrinkage
    shrunk = (1.0 - lam) * evals + lam * evals.sum() / x.shape[1]  # eigenvalues of S
    inverse = np.divide(1.0, shrunk, out=np.zeros_like(shrunk), where=shrunk > 0)
    coef = ((means @ evecs) * inverse) @ evecs.T  # [C, D] rows S^-1 mu_c
    logits = x @ coef.T - 0.5 * np.einsum("cd,cd->c", coef, means) + np.log(priors)
    return _softmax(logits), means, lam


@register(
    "sfda",
    needs=("features",),
    reference="Shao et al., Not All Models Are Equal: Predicting Model Transferability in a "
    "Self-challenging Fisher Space, ECCV 2022",
    cost="forward",
)
def sfda(features, labels, *, shrinkage: float | None = None) -> float:
    """SFDA score of ``features [N, D]`` for ``labels [N]`` (every class with >= 2 samples).

    Args:
      features: ``[N, D]`` penultimate features, any real numeric dtype (numpy or JAX); computed in float64.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names, at least
        2 samples per class.
      shrinkage: ``None`` for the paper's adaptive ``exp(-5 lambda_max(S_w))``, or a fixed value in
        ``[0, 1]`` used by both passes. With ``N <= D`` and large-scale features the adaptive value
        is ~1e-10, the discriminant separates the scoring samples perfectly and every model scores
        ~1 (e.g. 250 x 512 pure-noise features give 1.000); a large fixed shrinkage (0.9 gives 0.91
        there) restores some spread. The option is linfit's, not the paper's.

    Returns:
      The mean second-pass probability of the true class, in ``(0, 1]``, as a Python ``float``.

    Raises:
      ConfigError: ``shrinkage`` is not ``None`` and not in ``[0, 1]``.
      ShapeError: ``features`` not 2-D or not numeric; labels not 1-D or not N long.
      NonFiniteError: ``features`` contains NaN or inf.
      LabelError: labels not in ``0..C-1``, a class in that range absent, a single class, or bad class names
        (``check_labels``); a class with fewer than 2 samples.

    References:
      Shao et al. 2022 (ECCV); the steps and where linfit follows the public code are in the module docstring.
    """
    if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
        raise ConfigError(f"shrinkage must be None or lie in [0, 1]; got {shrinkage}")
    f, y, c = check_features(features, labels, min_per_class=2)
    x = np.asarray(f, dtype=np.float64)
    n = x.shape[0]
    probs, means, lam = _fisher_probs(x, y, c, shrinkage=shrinkage)
    confidence = _softmax(probs)[np.arange(n), y][:, None]  # [N, 1]
    other_means = (means.sum(axis=0, keepdims=True) - means) / (c - 1)  # [C, D]
    mixed = confidence * x + (1.0 - confidence) * other_means[y]
    probs2, _, _ = _fisher_probs(mixed, y, c, shrinkage=lam)
    return float(np.mean(probs2[np.arange(n), y]))
