"""Training losses on integer labels, both a mean over the batch of a per-sample loss.

MSE normalisation: per sample ℓ_i = ½ Σ_c (f_c(x_i) − onehot(y_i)_c)², and the batch loss is the mean
(1/B) Σ_i ℓ_i. ``linfit.dynamics`` writes the training loss as L = ½ Σ_i ‖f(x_i) − y_i‖² summed over the N
training samples; the full-batch mean is L/N, so gradient descent with step η on the mean equals gradient
descent with step η/N on L (and the minibatch mean is the SGD estimate of L/N).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy, (1/B) Σ_i −log softmax(f(x_i))_{y_i}.  logits ``[B, C]``, labels ``[B]`` int."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))


def mse(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over the batch of ½‖f(x_i) − onehot(y_i)‖².  logits ``[B, C]``, labels ``[B]`` int."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return 0.5 * jnp.mean(jnp.sum((logits - targets) ** 2, axis=-1))


LOSS_FUNCTIONS = {"ce": cross_entropy, "mse": mse}
