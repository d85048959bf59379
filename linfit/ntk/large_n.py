"""Large N without an ``N x N`` kernel: the traced NTK-vector product, the Krylov loss curve, a streamed score.

Traced product. The traced kernel (:func:`linfit.ntk.empirical_ntk_fn` with ``trace_axes=(-1,)``) averages
the diagonal output blocks of the untraced kernel ``Theta[i, j, o, o']``:

    Theta_tr[i, j] = (1/O) sum_o Theta[i, j, o, o] = (1/O) sum_o J_o(x_i) . J_o(x_j)

(``J_o`` the parameter gradient of output ``o``). So ``Theta_tr v = (1/O) sum_o J_o (J_o^T v)``: for each
output ``o``, pull ``v`` back through output ``o`` alone (cotangent ``v e_o^T``) and keep output ``o`` of the
push-forward. Broadcasting ``v`` to every output in ONE untraced product is not the same thing: it gives
``(1/O) sum_{o, o'} Theta[:, :, o, o'] v``, which adds the off-diagonal blocks ``o != o'``. The untraced
product is :func:`linfit.ntk.ntk_vp_fn`; here the ``O`` products are batched (vmap) and chunked over samples
(``batch_size``) so memory is one chunk's activations plus ``O`` parameter-sized cotangents, whatever ``N``:
one call costs ``O`` vjps over ``x2`` and ``O`` jvps over ``x1``.

Loss curve. :func:`matrix_free_loss_curve` feeds that product to :func:`linfit.krylov.train_loss`, with the
convention of :mod:`linfit.dynamics` (loss ``½ Σ_i ‖f_t(x_i) − y_i‖²``, gradient flow with learning rate
``η``, every output column driven by the same traced kernel):

    L_t = ½ Σ_o r0_o^T exp(−2 η Θ_tr t) r0_o,   r0 = Y − f0(X),

so it equals ``linfit.dynamics.linearized_loss_curve(Θ_tr, Y, f0, t, η)`` up to the Lanczos error.

Streamed score. :func:`streamed_kernel_label_correlation` computes the LGC/LFC kernel-label correlation
(Deshpande et al. 2021, eq. 8) from kernel tiles as they come off :func:`linfit.ntk.kernel`,
never holding the kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from linfit import krylov
from linfit.errors import ConfigError, ShapeError
from linfit.ntk._checks import check_pair
from linfit.ntk.jacobian_store import stored_traced_vp_fn
from linfit.ntk.entry import kernel
from linfit.ntk.sharding import _pad, pair_spec
from linfit.scores.correlation_stream import StreamedKernelLabelCorrelation
from linfit.tree import ParamsFilter, split_params

ApplyFn = Callable[[Any, jax.Array], jax.Array]
DEFAULT_BATCH_SIZE = 1024


def traced_ntk_vp_fn(
    f: ApplyFn,
    params: Any,
    x1: Any,
    x2: Any | None = None,
    *,
    params_filter: ParamsFilter = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Callable[[Any], jax.Array]:
    """Matrix-free traced NTK-vector product ``v [N2] -> Theta_tr(x1, x2) v [N1]`` (module docstring).

    Args:
      f: ``apply_fn(params, x [N, ...]) -> logits [N, O]`` with independent samples.
      params: parameters the kernel is evaluated at.
      x1: ``[N1, ...]``; x2: ``[N2, ...]``, ``None`` for ``x1``.
      params_filter: the kernel is taken w.r.t. the selected leaves only (see :mod:`linfit.tree`).
      batch_size: samples per chunk (memory knob); ``N`` need not be a multiple of it.

    Returns:
      ``vp(v)`` (each chunk's pass jit-compiled), float32 like ``f``; ``v`` must be ``[N2]``.

    Raises:
      ShapeError: feature shapes of ``x1`` and ``x2`` differ, an empty input, logits not ``[N, O]``, or (from
        ``vp``) ``v`` not ``[N2]``.
      ConfigError: ``batch_size < 1``.
      ParamsFilterError: the filter selects no parameter.
    """
    x1 = jnp.asarray(x1)
    x2 = x1 if x2 is None else jnp.asarray(x2)
    check_pair(x1, x2)
    if x1.shape[0] == 0 or x2.shape[0] == 0:
        raise ShapeError(f"x1 and x2 must hold at least one sample; got N1={x1.shape[0]}, N2={x2.shape[0]}")
    out = jax.eval_shape(f, params, x1[:1])
    if out.ndim != 2:
        raise ShapeError(f"f must return logits [N, O]; got shape {out.shape} for one sample")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}")
    n1, n2, n_out = x1.shape[0], x2.shape[0], out.shape[1]
    selected, merge = split_params(params, params_filter)
    x1b, x2b = _chunks(x1, batch_size), _chunks(x2, batch_size)

    def f_sel(p: Any, x: jax.Array) -> jax.Array:
        return f(merge(p), x)

    @jax.jit
    def pull_chunk(selected: Any, x: jax.Array, v: jax.Array) -> Any:  # tree of [O, *leaf]: J_o^T v, this chunk
        _, pull = jax.vjp(lambda p: f_sel(p, x), selected)
        return jax.vmap(lambda e: pull(v[:, None] * e)[0])(jnp.eye(n_out, dtype=v.dtype))

    @jax.jit
    def push_chunk(selected: Any, x: jax.Array, cotangents: Any) -> jax.Array:  # [B]: (1/O) sum_o (J_o g_o)_o
        _, push = jax.linearize(lambda p: f_sel(p, x), selected)
        per_output = jax.vmap(lambda o, g: push(g)[:, o])(jnp.arange(n_out), cotangents)
        return per_output.mean(axis=0)

    def product(selected: Any, x1b: jax.Array, x2b: jax.Array, vb: jax.Array) -> jax.Array:
        # Python loops over chunks: XLA's CPU while-loops (lax.map / scan) run these passes ~10x slower
        cotangents = pull_chunk(selected, x2b[0], vb[0])
        for x, v in zip(x2b[1:], vb[1:]):
            cotangents = jax.tree_util.tree_map(jnp.add, cotangents, pull_chunk(selected, x, v))
        return jnp.concatenate([push_chunk(selected, x, cotangents) for x in x1b])

    def vp(v: Any) -> jax.Array:
        v = jnp.asarray(v, dtype=out.dtype)
        if v.shape != (n2,):
            raise ShapeError(f"v must have shape [N2]={(n2,)}; got {v.shape}")
        vb = jnp.pad(v, (0, x2b.shape[0] * x2b.shape[1] - n2)).reshape(x2b.shape[:2])  # padding weighs 0
        return product(selected, x1b, x2b, vb)[:n1]

    return vp


def _chunks(x: jax.Array, size: int) -> jax.Array:
    """``[N, ...] -> [ceil(N / B), B, ...]``, padded by repeating the last sample. ``ConfigError`` for
    ``B < 1``, ``ShapeError`` for ``N = 0``."""
    if size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {size}")
    if x.shape[0] == 0:
        raise ShapeError("the inputs hold no sample (N = 0)")
    size = min(size, x.shape[0])
    n = math.ceil(x.shape[0] / size) * size
    return _pad(x, n).reshape(n // size, size, *x.shape[1:])


def batched_apply(f: ApplyFn, params: Any, x: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """``f(params, x)`` evaluated in chunks of ``batch_size`` samples, as a host array ``[N, O]``.

    Args:
      f: ``apply_fn(params, x [B, ...]) -> [B, ...]``, jit-compiled here; params: its parameters.
      x: ``[N, ...]``, one array; the last chunk is padded by repeating the last sample (padding dropped).
      batch_size: samples per call.

    Returns:
      ``[N, ...]`` ``np.ndarray`` in ``f``'s output dtype (``[N, O]`` for logits).

    Raises:
      ConfigError: ``batch_size < 1``; ShapeError: an empty ``x``.
    """
    x = jnp.asarray(x)
    chunks = _chunks(x, batch_size)
    apply = jax.jit(f)
    return np.concatenate([np.asarray(apply(params, c)) for c in chunks])[: x.shape[0]]


def matrix_free_loss_curve(
    f: ApplyFn,
    params: Any,
    x: Any,
    y: Any,
    times: Any,
    *,
    learning_rate: float = 1.0,
    num_iters: int = 64,
    columns: Sequence[int] | None = None,
    params_filter: ParamsFilter = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    jacobian: np.ndarray | None = None,
) -> np.ndarray:
    """Linearized training loss ``L_t = ½ Σ_o r0_oᵀ exp(−2ηΘ_tr t) r0_o`` at every ``t``, never forming ``N x N``.

    Args:
      f, params, params_filter, batch_size: as in :func:`traced_ntk_vp_fn`.
      x: ``[N, ...]`` training inputs; y: ``[N, O]`` targets (e.g. one-hot labels).
      times: ``[T]`` gradient-flow times; learning_rate: ``η``.
      num_iters: Lanczos steps per output column (``linfit.krylov.suggested_iterations`` sizes it).
      columns: the output columns whose residuals enter the loss (default all ``O``); the kernel still
        averages over all ``O`` outputs. Each column costs one Lanczos run.
      jacobian: the Jacobian rows ``[N, O, P]`` of ``f`` at ``params`` w.r.t. the selected leaves, e.g. the
        memmap of :func:`linfit.ntk.jacobian_store.jacobian_to_memmap`: products then stream it
        (:func:`linfit.ntk.jacobian_store.stored_traced_vp_fn`) instead of running vjp/jvp passes.

    Returns:
      ``[T]`` float64 losses, the convention of :mod:`linfit.dynamics`.

    Raises:
      ShapeError: ``f(x)`` not ``[N, O]`` (a scalar model returns ``[N, 1]``), ``y`` not shaped like it, or
        ``jacobian`` not ``[N, O, P]`` for ``f(x) [N, O]``.
      NonFiniteError: NaN/inf in a residual column ``y - f(x)`` that enters the loss (:func:`linfit.krylov.lanczos`).
      ConfigError: a negative or NaN time, or ``learning_rate`` negative or not finite
        (:func:`linfit.krylov.train_loss`).
      ParamsFilterError: without ``jacobian``, ``params_filter`` is malformed or selects no leaf.
    """
    f0 = batched_apply(f, params, x, batch_size)
    if f0.ndim != 2:
        raise ShapeError(f"f(x) must be [N, O] (a scalar model returns [N, 1]); got shape {f0.shape}")
    y = np.asarray(y, dtype=np.float64)
    if y.shape != f0.shape:
        raise ShapeError(f"y must be shaped like f(x) = {f0.shape}; got {y.shape}")
    residual = (y - f0)[:, slice(None) if columns is None else list(columns)]
    if jacobian is not None:
        if tuple(np.shape(jacobian)[:2]) != f0.shape:
            raise ShapeError(f"jacobian must be [N, O, P] with [N, O] = {f0.shape}; got {np.shape(jacobian)}")
        matvec = stored_traced_vp_fn(jacobian, chunk=batch_size)
    else:
        vp = traced_ntk_vp_fn(f, params, x, params_filter=params_filter, batch_size=batch_size)
        matvec = lambda v: np.asarray(vp(v), dtype=np.float64)
    return krylov.train_loss(matvec, residual, times, learning_rate=learning_rate, num_iters=num_iters)


def streamed_kernel_label_correlation(
    ntk_fn: Callable[[Any, Any, Any], jax.Array],
    x: Any,
    labels: Any,
    params: Any,
    *,
    mesh: Mesh | None = None,
    tile_size: int | None = None,
    memory_budget_bytes: int | None = None,
    progress: bool = False,
) -> float:
    """Pearson correlation of the traced kernel ``[N, N]`` with ``K_Y`` (LGC/LFC), from tiles only.

    Args:
      ntk_fn: a traced kernel function (``[n1, n2]`` tiles), e.g. ``empirical_ntk_fn(f)``.
      x: ``[N, ...]``; labels: ``[N]`` integer classes; params: the kernel's parameters.
      mesh, tile_size, memory_budget_bytes, progress: as in :func:`linfit.ntk.kernel`.

    Returns:
      The correlation, a Python ``float`` (0.0 for a constant kernel).

    Raises:
      ShapeError: ``labels`` not ``[N]`` for ``x [N, ...]``, ``ntk_fn`` returning a pytree or an untraced kernel
        (not ``[n1, n2]``), or a shape error of :func:`linfit.ntk.kernel`.
      LabelError: ``labels`` not integers ``0..C-1`` (or class names) covering at least two classes
        (:func:`linfit.scores.validation.check_labels`).
      NonFiniteError: NaN/inf in ``x``, ``params`` or a kernel tile.
      VmapAxesError, TreeMismatchError, ParamsFilterError: for an ``NtkFn``, as in :func:`linfit.ntk.kernel`.
    """
    acc = StreamedKernelLabelCorrelation(labels)
    x = np.asarray(x)
    if acc.n != x.shape[0]:
        raise ShapeError(f"labels has {acc.n} entries but x has N={x.shape[0]} samples")
    pair = pair_spec(ntk_fn, x, x, params)
    if pair.ndim != 2:
        raise ShapeError(f"the kernel-label correlation needs a traced kernel [N, N]; tiles are {pair.shape}")

    def consume(rows: slice, cols: slice, tile: np.ndarray, mirrored: bool) -> None:
        acc.add(np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop), tile, mirror=mirrored)

    kernel(ntk_fn, x, None, params, mesh=mesh, tile_size=tile_size, memory_budget_bytes=memory_budget_bytes,
           output=consume, progress=progress)
    return acc.result()
