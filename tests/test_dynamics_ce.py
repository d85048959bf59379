"""``linfit.dynamics.linearized_ce_trajectory`` against gradient descent on the linearized model in weight space.

The independent computation: a tiny Flax MLP, its first-order Taylor model built with ``jax.jvp`` around w0, and
plain gradient descent on the cross-entropy of that model with ``jax.grad`` (parameters, not functions).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from linfit.dynamics import linearized_ce_trajectory
from linfit.errors import LabelError, LinfitError, ShapeError

N, M, D, O = 6, 4, 5, 3


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(O)(jnp.tanh(nn.Dense(8)(x)))


@pytest.fixture(scope="module")
def problem():
    x = jax.random.normal(jax.random.PRNGKey(0), (N + M, D))
    model = MLP()
    w0 = model.init(jax.random.PRNGKey(1), x[:1])["params"]
    labels = np.array([0, 1, 2, 0, 1, 1])
    return model, w0, x[:N], x[N:], labels


def weight_space_gd(model, w0, x, x_test, labels, lr, steps, mu, mean):
    """GD on Σ_i (or mean_i) CE(f_lin(x_i; w), y_i) + ½ μ ‖w − w0‖², f_lin from ``jax.jvp``; logits per step."""

    def f_lin(w, xb):
        delta = jax.tree.map(jnp.subtract, w, w0)
        f0, df = jax.jvp(lambda p: model.apply({"params": p}, xb), (w0,), (delta,))
        return f0 + df

    def objective(w):
        log_p = jax.nn.log_softmax(f_lin(w, x), axis=-1)
        ce = -jnp.take_along_axis(log_p, jnp.asarray(labels)[:, None], axis=-1)
        flat = ravel_pytree(jax.tree.map(jnp.subtract, w, w0))[0]
        return (jnp.mean(ce) if mean else jnp.sum(ce)) + 0.5 * mu * jnp.sum(flat**2)

    grad = jax.jit(jax.grad(objective))
    w, train, test = w0, [], []
    for _ in range(steps + 1):
        train.append(np.asarray(f_lin(w, x)))
        test.append(np.asarray(f_lin(w, x_test)))
        w = jax.tree.map(lambda p, g: p - lr * g, w, grad(w))
    return np.stack(train), np.stack(test)


def untraced_kernels(model, w0, x, x_test):
    """Untraced NTKs ``[N, N, O, O]`` / ``[M, N, O, O]`` from a brute-force ``jacrev``."""
    flat0, unravel = ravel_pytree(w0)
    jac = jax.jacrev(lambda v, xb: model.apply({"params": unravel(v)}, xb))
    j, j_test = (np.asarray(jac(flat0, xb), np.float64).reshape(xb.shape[0], O, flat0.size) for xb in (x, x_test))
    return np.einsum("iap,jbp->ijab", j, j), np.einsum("iap,jbp->ijab", j_test, j)


@pytest.mark.parametrize("mu, mean", [(0.0, True), (0.3, False)])
def test_matches_weight_space_gd_on_linearized_mlp(problem, mu, mean):
    model, w0, x, x_test, labels = problem
    lr, steps = 0.4, 12
    train, test = weight_space_gd(model, w0, x, x_test, labels, lr, steps, mu, mean)
    k, k_test = untraced_kernels(model, w0, x, x_test)
    out = linearized_ce_trajectory(k, k_test, np.eye(O)[labels], train[0], test[0],
                                   learning_rate=lr / N if mean else lr, steps=steps, weight_decay=mu, trace_axes=())
    assert out.train_logits.shape == (steps + 1, N, O) and out.test_logits.shape == (steps + 1, M, O)
    scale = np.max(np.abs(train))
    np.testing.assert_allclose(out.train_logits, train, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(out.test_logits, test, rtol=1e-5, atol=1e-5 * scale)
    assert np.max(np.abs(train[-1] - train[0])) > 0.1 * scale  # the run actually moved
    log_p = train - np.log(np.sum(np.exp(train), axis=-1, keepdims=True))
    expected_loss = -np.sum(np.take_along_axis(log_p, labels[None, :, None], axis=-1), axis=(1, 2))
    np.testing.assert_allclose(out.train_loss, expected_loss, rtol=1e-5)


def test_traced_kernel_equals_kron_with_identity():
    """A traced ``[N, N]`` kernel Θ gives the same run as the untraced ``Θ[i, j] I_O`` (``trace_axes=()``)."""
    rng = np.random.default_rng(0)
    phi, phi_test = rng.normal(size=(N, D)), rng.normal(size=(M, D))
    y = rng.dirichlet(np.ones(O), size=N)  # soft targets are allowed
    f0, f0_test = rng.normal(size=(N, O)), rng.normal(size=(M, O))
    kw = {"learning_rate": 0.05, "steps": 9, "weight_decay": 0.1}
    traced = linearized_ce_trajectory(phi @ phi.T, phi_test @ phi.T, y, f0, f0_test, **kw)
    eye = np.eye(O)
    flat = linearized_ce_trajectory(np.einsum("ij,ab->ijab", phi @ phi.T, eye),
                                    np.einsum("ij,ab->ijab", phi_test @ phi.T, eye), y, f0, f0_test,
                                    trace_axes=(), **kw)
    np.testing.assert_allclose(traced.train_logits, flat.train_logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(traced.test_logits, flat.test_logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(traced.train_loss, flat.train_loss, rtol=1e-12)
    # one step by hand: f1 = f0 − η Θ (softmax(f0) − y) (the weight decay acts from the second step on)
    p0 = np.exp(f0) / np.sum(np.exp(f0), axis=1, keepdims=True)
    np.testing.assert_allclose(traced.train_logits[1], f0 - 0.05 * phi @ phi.T @ (p0 - y), rtol=1e-12)
    no_test = linearized_ce_trajectory(phi @ phi.T, None, y, f0, **kw)
    assert no_test.test_logits is None


def test_validation():
    k, y = np.eye(N), np.eye(O)[np.arange(N) % O]
    with pytest.raises(LabelError):
        linearized_ce_trajectory(k, None, 2 * y, learning_rate=0.1, steps=2)
    with pytest.raises(ShapeError):
        linearized_ce_trajectory(np.eye(N + 1), None, y, learning_rate=0.1, steps=2)
    with pytest.raises(ShapeError):
        linearized_ce_trajectory(k, np.ones((M, N + 2)), y, learning_rate=0.1, steps=2)
    with pytest.raises(LinfitError):
        linearized_ce_trajectory(k, None, y, learning_rate=-1.0, steps=2)
    with pytest.raises(LinfitError):
        linearized_ce_trajectory(k, None, y, learning_rate=0.1, steps=1.5)
    for steps in (np.nan, np.inf):  # was numpy's ValueError / OverflowError from int(steps)
        with pytest.raises(LinfitError, match="steps must be an integer"):
            linearized_ce_trajectory(k, None, y, learning_rate=0.1, steps=steps)
    with pytest.raises(ShapeError, match=r"trace_axes=\(\)"):  # a traced kernel declared untraced
        linearized_ce_trajectory(k, None, y, learning_rate=0.1, steps=2, trace_axes=())
    with pytest.raises(LinfitError, match="trace_axes"):
        linearized_ce_trajectory(k, None, y, learning_rate=0.1, steps=2, trace_axes=(0,))
