"""Tiny flax.linen models and a brute-force NTK shared by the NTK test modules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(6)(x))
        return nn.Dense(3)(x)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


class ResBlockBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Conv(3, (3, 3), use_bias=False)(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
        h = nn.Conv(3, (3, 3))(h)
        x = nn.relu(x + h)
        return nn.Dense(3)(nn.avg_pool(x, (2, 2), strides=(2, 2)).mean(axis=(1, 2)))


def make(name, n1=5, n2=3, seed=0):
    """``(f, params, x1, x2)`` for 'mlp', 'cnn', 'resbn' (BatchNorm in eval mode, stats closed over)."""
    k_init, k_stats, k1, k2 = jax.random.split(jax.random.PRNGKey(seed), 4)
    feat = (4,) if name == "mlp" else (6, 6, 3)
    x1 = jax.random.normal(k1, (n1, *feat))
    x2 = jax.random.normal(k2, (n2, *feat))
    module = {"mlp": MLP, "cnn": CNN, "resbn": ResBlockBN}[name]()
    variables = jax.jit(module.init)(k_init, x1)
    params = variables["params"]
    if name != "resbn":
        return (lambda p, x: module.apply({"params": p}, x)), params, x1, x2
    stats = jax.tree_util.tree_map(
        lambda s: s + 0.5 * jnp.abs(jax.random.normal(k_stats, s.shape)),
        variables["batch_stats"],
    )
    return (
        (lambda p, x: module.apply({"params": p, "batch_stats": stats}, x)),
        params,
        x1,
        x2,
    )


def bn_train_fn():
    """ResBlockBN in train mode: samples interact through the batch statistics."""
    module = ResBlockBN()
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 6, 6, 3))
    variables = jax.jit(module.init)(jax.random.PRNGKey(4), x)

    def f(p, x):
        return module.apply(
            {"params": p, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )[0]

    return f, variables["params"], x


def brute_jacobians(f, params, *xs):
    """Whole-batch ``jax.jacrev`` w.r.t. the raveled parameters: one ``[N, O, P]`` array per ``x``."""
    flat, unravel = ravel_pytree(params)
    jac = jax.jit(jax.jacrev(lambda q, x: f(unravel(q), x)))
    return [np.asarray(jac(flat, x), np.float64) for x in xs]


def leaf_columns(params, *paths):
    """Indices, in ``ravel_pytree`` order, of the leaves whose '/'-joined key path is in ``paths``."""
    cols, start = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(k.key) for k in path)
        if name in paths:
            cols.append(np.arange(start, start + leaf.size))
        start += leaf.size
    assert len(cols) == len(paths), paths
    return np.concatenate(cols)


def full_ntk(j1, j2, cols=slice(None)):
    """Untraced ``[N1, N2, O, O] = J1 J2^T`` over the parameter columns ``cols``."""
    return np.einsum("nop,mqp->nmoq", j1[..., cols], j2[..., cols])


def brute_full_ntk(f, params, x1, x2):
    return full_ntk(*brute_jacobians(f, params, x1, x2))


def assert_kernel_close(got, want):
    """float32 round-off: rtol 1e-4 and atol 1e-5 x the kernel's largest entry."""
    want = np.asarray(want)
    np.testing.assert_allclose(
        np.asarray(got), want, rtol=1e-4, atol=1e-5 * np.abs(want).max()
    )
