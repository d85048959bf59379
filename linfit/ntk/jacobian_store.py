"""Per-sample Jacobians on disk, and traced NTK-vector products that stream them.

For a small network and many samples, one traced NTK-vector product by ``O`` vjp and ``O`` jvp passes over
all ``N`` samples (:func:`linfit.ntk.traced_ntk_vp_fn`) costs far more than reading the Jacobian rows
``J [N, O, P]`` once they exist: ``N O P`` float32 numbers, ``O(N P)`` rather than the kernel's ``N²``, and for
``N = 10,000``, ``O = 10``, ``P = 24k`` about 10 GB, which fits on disk (and usually in the page cache) but
not in a process's memory budget. :func:`jacobian_to_memmap` writes them chunk by chunk into a ``.npy``
memory map (resumable: finished chunks are recorded in a sidecar and skipped on rerun), and
:func:`stored_traced_vp_fn` gives the traced product in two streaming passes,

    g_o = Σ_i v_i J[i, o, :]                 (pass 1, [O, P]),
    (Θ_tr v)_i = (1/O) Σ_o J[i, o, :] · g_o   (pass 2),

which is ``Θ_tr = (1/O) Σ_o J_o J_oᵀ`` (neural-tangents' traced convention) applied without forming it.
Memory: one chunk of rows plus ``g``; sums over samples are accumulated chunk by chunk in float64.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from linfit.errors import CheckpointError, ConfigError, ShapeError, VmapAxesError, is_count
from linfit.ntk.empirical import NtkFn
from linfit.ntk.sharding import _pad
from linfit.ntk.structured import JACOBIAN_CHUNK, per_sample_jacobian_fn

READ_CHUNK = 512
"""Samples per streamed read of the stored rows in a kernel-vector product."""
_SUFFIX = ".chunks.json"


def jacobian_to_memmap(ntk_fn: NtkFn, x: Any, params: Any, path: str | os.PathLike, *, chunk: int = JACOBIAN_CHUNK,
                       progress: bool = False) -> np.memmap:
    """Write every sample's Jacobian rows ``J [N, O, P]`` (``ntk_fn``'s function and parameter selection) to ``path``.

    Args:
      ntk_fn: an :class:`linfit.ntk.NtkFn` with ``vmap_axes=0`` (its ``f`` and ``params_filter`` are used).
      x: ``[N, ...]`` inputs; params: the parameters.
      path: the ``.npy`` file; a sidecar ``<path>.chunks.json`` records finished chunks, so a rerun with the
        same inputs continues where an interrupted one stopped.
      chunk: samples per compiled Jacobian call (the last chunk is padded, padding never written); a resumed
        file keeps the chunk it was started with, since its record counts finished chunks in that size.

    Returns:
      The Jacobian ``[N, O, P]`` as a read-only ``np.memmap``; its parameter axis is ordered as
      :func:`linfit.ntk.structured.per_sample_jacobian_fn` orders it.

    Raises:
      CheckpointError: ``path`` exists without its sidecar, or the sidecar is unreadable, of another version or
        belongs to other inputs.
      VmapAxesError: ``ntk_fn`` is not an ``NtkFn`` with ``vmap_axes=0`` (samples must be independent).
      ParamsFilterError: ``ntk_fn``'s ``params_filter`` selects no leaf.
    """
    from linfit.ntk.resumable import _VERSION, _fingerprint, _read_record, _write_record  # one rule for all

    if getattr(ntk_fn, "vmap_axes", None) != 0:
        raise VmapAxesError("jacobian_to_memmap needs independent samples: an NtkFn with vmap_axes=0")
    x = np.asarray(x)
    n = x.shape[0]
    shape = (n, ntk_fn.outputs_per_sample(x, params), ntk_fn.num_params(params))
    path, record_path = Path(path), Path(str(path) + _SUFFIX)
    fingerprint = _fingerprint(ntk_fn, x, None, params)
    if record_path.exists():
        record = _read_record(record_path)  # an unreadable or other-version record is a CheckpointError
        if record.get("fingerprint") != fingerprint or tuple(record["shape"]) != shape:
            raise CheckpointError(f"{path} holds the Jacobian of other inputs, parameters or options; delete it "
                                  "and its sidecar, or pick another path")
    elif path.exists():
        raise CheckpointError(f"{path} exists but has no progress record {record_path}; delete it or pick "
                              "another path")
    else:
        record = {"version": _VERSION, "shape": list(shape), "chunk": chunk, "fingerprint": fingerprint, "done": []}
        # a sparse .npy file; the returned map is dropped at once, rows are written with plain writes below
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        _write_record(record_path, record)
    chunk = record["chunk"]
    done = set(record["done"])
    jac = per_sample_jacobian_fn(ntk_fn.f, params_filter=ntk_fn.params_filter)
    padded = _pad(x, -(-n // chunk) * chunk)
    offset = np.load(path, mmap_mode="r").offset
    row_bytes = shape[1] * shape[2] * 4
    with open(path, "r+b") as file:  # plain writes: written rows do not stay mapped in this process
        for start in tqdm(range(0, n, chunk), disable=not progress, desc="Jacobian chunks"):
            if start in done:
                continue
            stop = min(start + chunk, n)
            block = np.asarray(jac(jnp.asarray(padded[start : start + chunk]), params), np.float32)
            os.pwrite(file.fileno(), np.ascontiguousarray(block[: stop - start]).tobytes(),
                      offset + start * row_bytes)
            os.fsync(file.fileno())
            done.add(start)
            record["done"] = sorted(done)
            _write_record(record_path, record)
    return np.load(path, mmap_mode="r")


def stored_traced_vp_fn(jacobian: np.ndarray, *, chunk: int = READ_CHUNK) -> Callable[[Any], np.ndarray]:
    """Traced NTK-vector product ``v [N] -> Θ_tr v [N]`` streaming ``jacobian [N, O, P]`` (module docstring).

    ``jacobian`` is any array (typically the memmap of :func:`jacobian_to_memmap`); it is read in chunks of
    ``chunk`` samples, twice per product.

    Args:
      jacobian: ``[N, O, P]`` Jacobian rows, read as float32.
      chunk: samples per read, ``>= 1``.

    Returns:
      ``vp(v)``: ``v [N] -> Θ_tr v [N]`` float64 (float32 products per chunk, ``v`` cast to float32; sums over
      chunks accumulated in float64).

    Raises:
      ShapeError: ``jacobian`` is not 3-D, or (from ``vp``) ``v`` is not ``[N]``.
      ConfigError: ``chunk < 1`` (a negative chunk returned uninitialised memory).
    """
    if np.ndim(jacobian) != 3:
        raise ShapeError(f"jacobian must be [N, O, P]; got shape {np.shape(jacobian)}")
    if not is_count(chunk):
        raise ConfigError(f"chunk must be an integer >= 1 (samples per read); got {chunk!r}")
    n, n_out, n_params = jacobian.shape
    read = _chunk_reader(jacobian)

    def vp(v: Any) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (n,):
            raise ShapeError(f"v must have shape [N]={(n,)}; got {v.shape}")
        g = np.zeros(n_out * n_params)
        for start in range(0, n, chunk):
            g += v[start : start + chunk].astype(np.float32) @ read(start, min(start + chunk, n))
        g32 = (g / n_out).astype(np.float32)
        out = np.empty(n)
        for start in range(0, n, chunk):
            out[start : start + chunk] = read(start, min(start + chunk, n)) @ g32
        return out

    return vp


def _chunk_reader(jacobian: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """``read(start, stop) -> [stop - start, O P]`` float32 rows. A ``.npy`` memmap is read with plain file
    reads, so the rows pass through the page cache without staying mapped in (and counted against) this
    process's resident memory; any other array is sliced."""
    n, n_out, n_params = jacobian.shape
    filename = getattr(jacobian, "filename", None)
    if not (isinstance(jacobian, np.memmap) and filename and jacobian.dtype == np.float32
            and jacobian.flags.c_contiguous):
        return lambda start, stop: np.asarray(jacobian[start:stop], np.float32).reshape(stop - start, -1)
    row_bytes, offset = n_out * n_params * 4, jacobian.offset

    def read(start: int, stop: int) -> np.ndarray:
        with open(filename, "rb") as file:
            file.seek(offset + start * row_bytes)
            return np.fromfile(file, np.float32, (stop - start) * n_out * n_params).reshape(stop - start, -1)

    return read
