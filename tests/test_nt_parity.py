"""Parity with neural-tangents 0.6.5 through the frozen fixtures ``tests/fixtures/nt_*.npz``.

The fixtures were written by ``tests/fixtures/make_nt_reference.py`` in a pinned old-JAX environment (see
``tests/fixtures/README.md``). Here the same three models (MLP, CNN, residual block with a fixed affine
normalisation) are rebuilt with the current JAX, both as the generator's plain ``jax.numpy`` functions and as
equivalent ``flax.linen`` modules carrying the saved parameters (so the structured implementation factorises
the Flax Dense/Conv layers), and linfit's empirical NTK, ``linearize`` and ``gradient_descent_mse`` are
compared with neural-tangents' outputs.

Tolerances (everything is float32, computed by different XLA versions):
* NTK and linearize: ``max |linfit - NT| <= 2e-5 · max |NT|`` (sums of a few hundred float32 products).
* forward pass: ``1e-5 · max |NT|``.
* ``gradient_descent_mse``: linfit decomposes NT's float32 kernel in float64, NT in float32, so NT's own
  float32 error, which grows with the kernel's condition number, sets the bound:
  ``max |linfit - NT| <= (3e-5 + eps32 · cond(K) / 4) · max |NT|`` (measured: 0.25-0.5 of the bound for the
  worst-conditioned kernels, cond 215 and 4.6e4; far below it for the others).
"""

import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfit.dynamics import gradient_descent_mse
from linfit.linearize import linearize
from linfit.ntk import empirical_ntk_fn

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
MODELS = ("mlp", "cnn", "resblock")
IMPLEMENTATIONS = ("jacobian", "products", "structured")


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_nt_reference", FIXTURES / "make_nt_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


class FlaxMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(8)(x))
        x = nn.relu(nn.Dense(8)(x))
        return nn.Dense(3)(x)


class FlaxCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


class FlaxResBlock(nn.Module):
    scale: tuple
    shift: tuple

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (3, 3), padding="SAME", use_bias=False)(x)
        h = nn.relu(h * jnp.asarray(self.scale) + jnp.asarray(self.shift))
        x = nn.relu(x + nn.Conv(3, (3, 3), padding="SAME")(h))
        return nn.Dense(3)(nn.avg_pool(x, (2, 2), strides=(2, 2)).mean(axis=(1, 2)))


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    """``(name, arrays, {"jnp": f, "flax": f}, params, params_perturbed)`` for one fixture file."""
    name = request.param
    arrays = dict(np.load(FIXTURES / f"nt_{name}.npz"))
    const = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("const/")}
    params = jax.tree_util.tree_map(jnp.asarray, gen.unflatten(arrays, "param"))
    perturbed = jax.tree_util.tree_map(jnp.asarray, gen.unflatten(arrays, "param_perturbed"))
    apply = {"mlp": gen.mlp, "cnn": gen.cnn, "resblock": gen.resblock}[name]
    module = {"mlp": FlaxMLP(), "cnn": FlaxCNN(),
              "resblock": FlaxResBlock(tuple(const.get("scale", ())), tuple(const.get("shift", ())))}[name]
    init = module.init(jax.random.key(0), arrays["x1"])["params"]
    assert jax.tree_util.tree_map(jnp.shape, init) == jax.tree_util.tree_map(jnp.shape, params)
    fns = {"jnp": lambda p, x: apply(p, x, const), "flax": lambda p, x: module.apply({"params": p}, x)}
    return name, arrays, fns, params, perturbed


def _close(actual, expected, rel):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    err, scale = np.max(np.abs(actual - expected)), np.max(np.abs(expected))
    assert err <= rel * scale, f"max error {err:.3g} > {rel:.3g} x max|NT| = {rel * scale:.3g}"


@pytest.mark.parametrize("frontend", ["jnp", "flax"])
def test_forward_matches_generator(case, frontend):
    _, arrays, fns, params, _ = case
    _close(fns[frontend](params, arrays["x1"]), arrays["f0/x1"], 1e-5)
    _close(fns[frontend](params, arrays["x2"]), arrays["f0/x2"], 1e-5)


# The Flax module is the same function of the parameters as the jnp one (test_forward_matches_generator);
# only the structured implementation treats them differently: it factorises the nn.Dense / nn.Conv layers
# of the Flax module, while a plain function's parameters take its exact Jacobian fallback. So the Flax
# front end is checked with the structured implementation and the jnp one with the two others, which keeps
# the module's compile count, hence its run time, down.
NTK_CASES = [("jacobian", "jnp"), ("products", "jnp"), ("structured", "flax")]


@pytest.mark.parametrize("impl,frontend", NTK_CASES)
@pytest.mark.parametrize("traced", [True, False], ids=["traced", "untraced"])
def test_empirical_ntk_matches_nt(case, impl, frontend, traced):
    _, arrays, fns, params, _ = case
    tr = "traced" if traced else "untraced"
    ntk_fn = empirical_ntk_fn(fns[frontend], trace_axes=(-1,) if traced else (), implementation=impl)
    _close(ntk_fn(arrays["x1"], None, params), arrays[f"ntk/{impl}/{tr}/same"], 2e-5)
    _close(ntk_fn(arrays["x1"], arrays["x2"], params), arrays[f"ntk/{impl}/{tr}/cross"], 2e-5)


@pytest.mark.parametrize("frontend", ["jnp", "flax"])
def test_linearize_matches_nt(case, frontend):
    _, arrays, fns, params, perturbed = case
    f_lin = linearize(fns[frontend], params)
    _close(f_lin(perturbed, arrays["x2"]), arrays["linearize/out"], 2e-5)


@pytest.mark.parametrize("traced", [True, False], ids=["traced", "untraced"])
@pytest.mark.parametrize("reg", ["reg0", "reg"])
def test_gradient_descent_mse_matches_nt(case, traced, reg):
    _, arrays, _, _, _ = case
    tr = "traced" if traced else "untraced"
    k_train = arrays[f"ntk/jacobian/{tr}/same"]
    cross = arrays[f"ntk/jacobian/{tr}/cross"]  # K(x1, x2); K(x2, x1) is its transpose
    k_test_train = cross.T if traced else cross.transpose(1, 0, 3, 2)
    k2d = k_train if traced else k_train.transpose(0, 2, 1, 3).reshape(k_train.shape[0] * 3, -1)
    ev = np.linalg.eigvalsh(k2d.astype(np.float64))
    rel = 3e-5 + np.finfo(np.float32).eps * (ev[-1] / ev[0]) / 4
    predict = gradient_descent_mse(k_train, arrays["predict/y_train"], learning_rate=1.0,
                                   diag_reg=float(arrays["predict/diag_reg"]) if reg == "reg" else 0.0,
                                   trace_axes=(-1,) if traced else ())
    f0_train, f0_test, key = arrays["f0/x1"], arrays["f0/x2"], f"predict/{tr}/{reg}"
    train, test = predict(arrays["predict/t"], f0_train, f0_test, k_test_train)
    _close(train, arrays[f"{key}/train"], rel)
    _close(test, arrays[f"{key}/test"], rel)
    train_inf, test_inf = predict(None, f0_train, f0_test, k_test_train)
    _close(train_inf, arrays[f"{key}/train_inf"], rel)
    _close(test_inf, arrays[f"{key}/test_inf"], rel)
