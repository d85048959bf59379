"""Jacobian rows on disk: resumable writing, streamed traced products and the Krylov loss from them."""

import json

import numpy as np
import pytest

from linfit.errors import CheckpointError, ConfigError, ShapeError
from linfit.ntk import empirical_ntk_fn
from linfit.ntk.jacobian_store import jacobian_to_memmap, stored_traced_vp_fn
from linfit.ntk.large_n import matrix_free_loss_curve
from tests._ntk_models import brute_full_ntk, brute_jacobians, make

N, O = 11, 3


@pytest.fixture(scope="module")
def cnn():
    f, params, x, _ = make("cnn", n1=N)
    return f, params, x, np.trace(brute_full_ntk(f, params, x, x), axis1=2, axis2=3) / O


class Interrupt(Exception):
    pass


def test_rows_are_the_jacobian_and_writing_resumes(cnn, tmp_path, monkeypatch):
    f, params, x, _ = cnn
    ntk_fn = empirical_ntk_fn(f)
    path = tmp_path / "j.npy"
    import linfit.ntk.jacobian_store as store

    calls = []
    real = store.per_sample_jacobian_fn

    def counting(*args, **kwargs):
        inner = real(*args, **kwargs)

        def rows(xb, p):
            calls.append(len(xb))
            if len(calls) == 3 and not (tmp_path / "resumed").exists():
                raise Interrupt
            return inner(xb, p)

        return rows

    monkeypatch.setattr(store, "per_sample_jacobian_fn", counting)
    with pytest.raises(Interrupt):
        jacobian_to_memmap(ntk_fn, x, params, path, chunk=4)  # chunks at 0, 4, 8: stops in the third
    assert json.loads((tmp_path / "j.npy.chunks.json").read_text())["done"] == [0, 4]
    (tmp_path / "resumed").touch()
    calls.clear()
    rows = jacobian_to_memmap(ntk_fn, x, params, path, chunk=4)
    assert calls == [4]  # only the missing chunk (padded to 4) was computed
    brute = brute_jacobians(f, params, x)[0]
    assert rows.shape == brute.shape
    np.testing.assert_allclose(np.einsum("iap,jbp->ijab", rows, rows), np.einsum("iap,jbp->ijab", brute, brute),
                               rtol=1e-4, atol=1e-5 * np.abs(brute).max() ** 2 * brute.shape[-1])
    with pytest.raises(CheckpointError, match="other inputs"):
        jacobian_to_memmap(ntk_fn, x[::-1], params, path)


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_stored_product_and_loss_match_the_dense_kernel(cnn, tmp_path, chunk):
    f, params, x, traced = cnn
    rows = jacobian_to_memmap(empirical_ntk_fn(f), x, params, tmp_path / "j.npy")
    v = np.random.default_rng(0).normal(size=N)
    want = traced @ v
    np.testing.assert_allclose(stored_traced_vp_fn(rows, chunk=chunk)(v), want, rtol=1e-4,
                               atol=1e-5 * np.abs(want).max())
    y = np.eye(O)[np.arange(N) % O]
    times = np.array([0.0, 0.1, 1.0, 10.0])
    f0 = np.asarray(f(params, x), np.float64)
    lam, vec = np.linalg.eigh(traced)  # dense reference: ½ Σ_o r_oᵀ V exp(-2Λt) Vᵀ r_o
    proj = vec.T @ (y - f0)
    dense = 0.5 * np.exp(-2 * np.outer(times, np.maximum(lam, 0))) @ np.sum(proj**2, axis=1)
    got = matrix_free_loss_curve(f, params, x, y, times, num_iters=N, batch_size=chunk, jacobian=rows)
    np.testing.assert_allclose(got, dense, rtol=2e-4)


def test_errors(cnn):
    f, params, x, _ = cnn
    with pytest.raises(ShapeError, match=r"\[N, O, P\]"):
        stored_traced_vp_fn(np.ones((3, 4)))
    with pytest.raises(ShapeError, match=r"\[N\]"):
        stored_traced_vp_fn(np.ones((3, 2, 4)))(np.ones(4))
    with pytest.raises(ShapeError, match="jacobian must be"):
        matrix_free_loss_curve(f, params, x, np.eye(O)[np.arange(N) % O], [1.0], jacobian=np.ones((N, 2, 5)))
    for chunk in (0, -2):  # a negative chunk returned uninitialised memory
        with pytest.raises(ConfigError, match="chunk must be"):
            stored_traced_vp_fn(np.ones((3, 2, 4)), chunk=chunk)
    with pytest.raises(ConfigError, match="batch_size"):  # a ZeroDivisionError before
        matrix_free_loss_curve(f, params, x, np.eye(O)[np.arange(N) % O], [1.0], batch_size=0)


def test_a_garbled_progress_record_is_a_checkpoint_error(cnn, tmp_path):
    f, params, x, _ = cnn
    path = tmp_path / "j.npy"
    jacobian_to_memmap(empirical_ntk_fn(f), x, params, path)
    (tmp_path / "j.npy.chunks.json").write_text('{"shape": [')
    with pytest.raises(CheckpointError, match="cannot read the progress record"):
        jacobian_to_memmap(empirical_ntk_fn(f), x, params, path)
