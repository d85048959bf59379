import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from linfit.errors import TreeMismatchError
from linfit.linearize import linearize
from tests._ntk_models import make


@pytest.fixture(scope="module")
def cnn():
    f, params, x, _ = make("cnn", n1=4)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    flat, unravel = ravel_pytree(params)
    d1 = unravel(jax.random.normal(keys[0], flat.shape))
    d2 = unravel(jax.random.normal(keys[1], flat.shape))
    return f, params, x, d1, d2


def _axpy(a, d, p):
    return jax.tree_util.tree_map(lambda di, pi: pi + a * di, d, p)


def test_exact_at_params0(cnn):
    f, p0, x, _, _ = cnn
    np.testing.assert_array_equal(
        np.asarray(linearize(f, p0)(p0, x)), np.asarray(f(p0, x))
    )


def test_linear_in_the_displacement(cnn):
    f, p0, x, d1, d2 = cnn
    f_lin = jax.jit(linearize(f, p0))
    base = f_lin(p0, x)
    g1 = f_lin(_axpy(1.0, d1, p0), x) - base
    g2 = f_lin(_axpy(1.0, d2, p0), x) - base
    combined = f_lin(_axpy(-0.7, d2, _axpy(2.5, d1, p0)), x) - base
    np.testing.assert_allclose(
        combined, 2.5 * g1 - 0.7 * g2, rtol=1e-4, atol=1e-4 * np.abs(combined).max()
    )


def test_matches_jacrev_linear_model(cnn):
    f, p0, x, d1, _ = cnn
    flat0, unravel = ravel_pytree(p0)
    jac = jax.jacrev(lambda q: f(unravel(q), x))(flat0)  # [N, O, P]
    delta = ravel_pytree(d1)[0]
    want = f(p0, x) + jnp.einsum("nop,p->no", jac, delta)
    got = linearize(f, p0)(_axpy(1.0, d1, p0), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_first_order_agreement():
    # smooth (tanh) model: the Taylor remainder is O(eps^2), halving eps divides it by about 4
    f, p0, x, _ = make("mlp")
    flat, unravel = ravel_pytree(p0)
    d = unravel(jax.random.normal(jax.random.PRNGKey(8), flat.shape))
    f_lin = linearize(f, p0)

    def err(eps):
        p = _axpy(eps, d, p0)
        return float(jnp.abs(f(p, x) - f_lin(p, x)).max())

    ratio = err(0.04) / err(0.02)
    assert 3.0 < ratio < 5.0, ratio
    assert err(0.02) < 0.05 * float(jnp.abs(f(_axpy(0.02, d, p0), x) - f(p0, x)).max())


def test_tree_mismatch(cnn):
    f, p0, x, _, _ = cnn
    bad = dict(p0)
    bad.pop("Dense_0")
    with pytest.raises(TreeMismatchError, match="Dense_0"):
        linearize(f, p0)(bad, x)
