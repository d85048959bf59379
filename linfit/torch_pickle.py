"""Read PyTorch checkpoints and pickled numpy weights without torch and without running their code.

A pickle is a small program: loading one with :mod:`pickle` can call any importable function. The readers
here run it through an :class:`pickle.Unpickler` whose ``find_class`` admits only the few globals a weight
file needs (tensor and storage reconstruction, ``collections.OrderedDict``, numpy array reconstruction) and
replaces each by linfit's own numpy implementation; any other global (``os.system``, ``builtins.eval``, a
model class, ...) raises :class:`~linfit.errors.CheckpointError` before anything is called.

Two PyTorch layouts are read (``torch.save`` in ``torch/serialization.py``):

* **zip** (torch >= 1.6, the default): a zip archive with one top folder holding ``data.pkl`` (the object
  pickle), ``data/<key>`` (one raw storage per key) and ``byteorder`` (``little`` or ``big``; absent means
  little).
* **legacy** (``_use_new_zipfile_serialization=False`` and torch < 1.6): five concatenated things -- a pickled
  magic number, a pickled protocol version (1001), a pickled ``sys_info`` dict (``little_endian``), the object
  pickle, a pickled list of storage keys -- followed, for each key in that order, by an int64 element count
  and the storage's raw bytes.

In both the object pickle refers to storages by persistent id ``('storage', StorageType, key, location,
numel[, view])`` and rebuilds tensors with ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)``; sizes, strides and offsets are in elements and are checked against the storage before any view is
taken.

Example::

    >>> from linfit.torch_pickle import read_torch_checkpoint
    >>> sd = read_torch_checkpoint("efficientnet-lite0-57934424.pth")
    >>> sd["stem.0.weight"].shape, sd["stem.0.weight"].dtype          # [O, I, kh, kw], torch layout
    ((32, 3, 3, 3), dtype('float32'))
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from linfit.checkpoints import check_weights
from linfit.errors import CheckpointError

__all__ = ["read_numpy_pickle", "read_torch_checkpoint"]

# torch.<Name>Storage -> numpy dtype (torch/storage.py); UntypedStorage holds bytes.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


# --------------------------------------------------------------------------- stand-ins for torch's objects


@dataclasses.dataclass(frozen=True, slots=True)  # no __dict__: a pickle's BUILD cannot alter the shared ones
class _StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: only the element dtype matters."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageRef:
    """A persistent-id storage; its bytes are resolved after the object pickle is read."""

    key: str
    dtype: np.dtype
    numel: int
    view: tuple[int, int] | None = None  # legacy storage views: (offset, numel) into the storage, in elements


@dataclasses.dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor as ``_rebuild_tensor_v2`` describes it; materialised once storages are known."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    # torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride[, requires_grad, hooks, metadata])
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("a tensor is rebuilt from something that is not a storage")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
        raise pickle.UnpicklingError("tensor offset, size and stride must be integers")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    # torch._utils._rebuild_parameter(data, requires_grad, hooks[, state]): a Parameter is its tensor
    return data


# --------------------------------------------------------------------------- restricted unpicklers


class _Restricted(pickle.Unpickler):
    """An unpickler that resolves globals only through ``allowed`` and refuses everything else."""

    def __init__(self, file: BinaryIO, allowed: Mapping[tuple[str, str], Any],
                 persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file)
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError(f"persistent id {pid!r} is not allowed in a plain pickle")
        return self._persistent(pid)


_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{(module, name): _StorageType(name, dtype)
       for module in ("torch", "torch.cuda") for name, dtype in _STORAGE_DTYPES.items()},
}



def _np_reconstruct(subtype, shape, dtype):
    # ndarray.__reduce__ pickles (multiarray._reconstruct, (ndarray, (0,), b"b")) and then BUILDs the array
    # with ndarray.__setstate__((version, shape, dtype, is_fortran, raw bytes)); only plain ndarrays here.
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"only numpy.ndarray may be reconstructed, not {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_frombuffer(buf, dtype, shape, order):
    # protocol-5 pickles: numpy._core.numeric._frombuffer(bytes, dtype, shape, order)
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or order not in ("C", "F"):
        raise pickle.UnpicklingError("numpy _frombuffer needs bytes, a dtype and order 'C' or 'F'")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text, encoding):
    # protocol-2 pickles of Python-3 bytes: _codecs.encode(str, "latin1"); no other codec is admitted
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only for latin1 text, not {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args):
    # protocol-2 pickles of b"": __builtin__.bytes(); bytes(n) would allocate n bytes, so no arguments
    if args:
        raise pickle.UnpicklingError("bytes(...) is allowed only without arguments (protocol-2 b'')")
    return b""


_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
}


# --------------------------------------------------------------------------- public readers


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a ``torch.save`` file (zip or legacy layout), as numpy arrays; no torch needed.

    Args:
      path: a ``.pt`` / ``.pth`` file written by ``torch.save`` -- a state dict, or any nesting of dicts,
        ``OrderedDict`` s, lists and tuples around tensors (e.g. ``{"epoch": 3, "state_dict": {...}}``).
        Whole pickled ``nn.Module`` objects are refused (their classes are code).

    Returns:
      ``{name: array}`` in the file's order, nested names joined with ``'.'`` (list items by index), e.g.
      ``"features.0.0.weight"`` or ``"state_dict.fc.bias"``. Arrays keep torch's layout (conv ``[O, I, kh,
      kw]``, linear ``[out, in]``) and dtype (float32, float16, ``ml_dtypes.bfloat16``, int64, ...), are
      C-contiguous copies (strides and storage offsets applied) and writable. Non-tensor leaves (numbers,
      strings, ``None``) are metadata and are left out.

    Raises:
      CheckpointError: naming the file and the reason -- not a torch file, a global other than tensor /
        storage reconstruction or ``collections.OrderedDict`` (e.g. ``global posix.system is not allowed``),
        a truncated storage, a tensor view outside its storage, two leaves flattening to one name, or
        non-finite values in a floating tensor.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            tree, storages = _read_zip(path)
        else:
            with open(path, "rb") as f:
                tree, storages = _read_legacy(f)
        arrays = dict(_flatten(tree, lambda leaf: _materialise(leaf, storages)))
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, zipfile.BadZipFile, OSError, RecursionError) as err:
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint: {err} (only tensors inside "
                              "dicts, lists and tuples are read; save model.state_dict(), not the model)") from None
    if not arrays:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors (save model.state_dict())")
    check_weights(arrays, str(path))
    return arrays


def read_numpy_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every numpy array of a pickle of arrays (e.g. ``{"conv1": [kernel, bias], ...}``), without running code.

    Only ``numpy.ndarray`` reconstruction (``numpy.core.multiarray._reconstruct`` or
    ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, and ``_frombuffer`` of
    ``numpy(._)core.numeric`` for protocol 5), ``collections.OrderedDict``, and for protocol-2 bytes latin1
    ``_codecs.encode`` and argument-less ``bytes()`` are admitted; containers are plain dicts, lists, tuples.

    Args:
      path: the pickle file.

    Returns:
      ``{name: array}`` in the file's order, nested names joined with ``'.'`` and list/tuple items named by
      index, e.g. ``"fire2/squeeze1x1.0"`` for the first item of ``weights["fire2/squeeze1x1"]``. Arrays keep
      their shape, layout and dtype. Non-array leaves are left out.

    Raises:
      CheckpointError: naming the file and the reason (a refused global such as ``global posix.system is
        not allowed``, an object-dtype array, a malformed pickle, no array at all, duplicate flattened names,
        non-finite values).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            tree = _Restricted(f, _NUMPY_GLOBALS).load()
        arrays = dict(_flatten(tree, _numpy_leaf))
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OSError, RecursionError) as err:
        raise CheckpointError(f"{path}: cannot be read as a pickle of numpy arrays: {err}") from None
    if not arrays:
        raise CheckpointError(f"{path}: the pickle holds no numpy arrays")
    check_weights(arrays, str(path))
    return arrays


# --------------------------------------------------------------------------- the two torch layouts


def _persistent_storage(pid: Any) -> _StorageRef:
    # ('storage', StorageType, key, location, numel) in zip files; legacy adds a sixth item, the view
    # (view key, offset, numel) or None.
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise pickle.UnpicklingError(f"persistent id {pid!r} is not a tensor storage")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"persistent id {pid!r} does not name a torch storage type")
    if not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError(f"storage {key!r} has an invalid element count {numel!r}")
    if view is not None:
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
            raise pickle.UnpicklingError(f"storage {key!r} has an invalid view {view!r}")
        view = (view[1], view[2])
    return _StorageRef(str(key), storage_type.dtype, numel, view)


def _read_zip(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise CheckpointError("a zip file without exactly one <folder>/data.pkl is not a torch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"unknown byteorder {byteorder!r}")
        refs: list[_StorageRef] = []

        def persistent_load(pid):
            ref = _persistent_storage(pid)
            refs.append(ref)
            return ref

        with zf.open(pkl[0]) as f:
            tree = _Restricted(f, _TORCH_GLOBALS, persistent_load).load()
        storages = {}
        for ref in refs:
            if ref.key in storages:
                continue
            member = f"{prefix}data/{ref.key}"
            if member not in names:
                raise CheckpointError(f"storage {ref.key!r} is missing (no {member} in the archive)")
            size = zf.getinfo(member).file_size  # checked before decompressing: a zip bomb is refused, not read
            if size != ref.numel * ref.dtype.itemsize:
                raise CheckpointError(f"storage {ref.key!r} has {size} bytes, expected {ref.numel} x "
                                      f"{ref.dtype.itemsize}")
            storages[ref.key] = _storage_array(zf.read(member), ref, byteorder)
    return tree, storages


def _read_legacy(f: BinaryIO) -> tuple[Any, dict[str, np.ndarray]]:
    def header():
        return _Restricted(f, {}).load()

    magic = header()
    if magic != _LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (neither a zip archive nor the legacy magic number)")
    protocol = header()
    if protocol != _LEGACY_PROTOCOL:
        raise CheckpointError(f"legacy protocol version {protocol!r} is not supported (expected 1001)")
    sys_info = header()
    byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
    refs: dict[str, _StorageRef] = {}

    def persistent_load(pid):
        ref = _persistent_storage(pid)
        root = dataclasses.replace(ref, view=None)
        if refs.setdefault(ref.key, root) != root:
            raise pickle.UnpicklingError(f"storage {ref.key!r} is referenced with two dtypes or sizes")
        return ref

    tree = _Restricted(f, _TORCH_GLOBALS, persistent_load).load()
    keys = header()
    if not isinstance(keys, list) or set(map(str, keys)) != set(refs):
        raise CheckpointError("the legacy storage key list does not match the storages the pickle uses")
    storages = {}
    for key in map(str, keys):
        ref = refs[key]
        (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", _read_exactly(f, 8, key))
        if numel != ref.numel:
            raise CheckpointError(f"storage {key!r} holds {numel} elements, the pickle says {ref.numel}")
        storages[key] = _storage_array(_read_exactly(f, numel * ref.dtype.itemsize, key), ref, byteorder)
    return tree, storages


def _read_exactly(f: BinaryIO, n: int, key: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError(f"storage {key!r} is truncated: {len(data)} of {n} bytes")
    return data


def _storage_array(data: bytes, ref: _StorageRef, byteorder: str) -> np.ndarray:
    """A storage's bytes as a 1-D array of its dtype, in native byte order."""
    if len(data) != ref.numel * ref.dtype.itemsize:
        raise CheckpointError(f"storage {ref.key!r} has {len(data)} bytes, expected {ref.numel} x "
                              f"{ref.dtype.itemsize}")
    if byteorder == sys.byteorder:
        return np.frombuffer(data, dtype=ref.dtype)
    return np.frombuffer(data, dtype=ref.dtype.newbyteorder()).astype(ref.dtype)


def _materialise(leaf: Any, storages: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """A ``_TensorRef`` as a C-contiguous copy; ``None`` for metadata leaves; refuses stray storages."""
    if isinstance(leaf, _StorageRef):
        raise CheckpointError(f"a bare storage ({leaf.key!r}) outside a tensor is not supported")
    if not isinstance(leaf, _TensorRef):
        return None
    ref = leaf.storage
    flat = storages[ref.key]
    if ref.view:
        start, count = ref.view
        if start < 0 or count < 0 or start + count > flat.size:
            raise CheckpointError(f"storage view {ref.view!r} lies outside storage {ref.key!r}")
        flat = flat[start:start + count]
    size, stride, offset = leaf.size, leaf.stride, leaf.offset
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise CheckpointError(f"tensor in storage {ref.key!r} has invalid size {size} / stride {stride} / "
                              f"offset {offset}")
    if 0 in size:
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise CheckpointError(f"tensor of size {size}, stride {stride}, offset {offset} reads element {last} "
                              f"of storage {ref.key!r}, which has {flat.size}")
    strided = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False)
    return np.array(strided, order="C")


def _numpy_leaf(leaf: Any) -> np.ndarray | None:
    if not isinstance(leaf, np.ndarray):
        return None
    if leaf.dtype.hasobject:
        raise CheckpointError(f"an object-dtype array ({leaf.dtype}) is not allowed")
    return leaf


def _flatten(tree: Any, leaf_fn: Callable[[Any], np.ndarray | None]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(dotted name, array)``; checks that no two leaves get the same name."""
    seen: set[str] = set()
    stack = [("", tree)]
    while stack:
        name, node = stack.pop()
        if isinstance(node, Mapping):
            items = [(str(k), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            items = [(str(i), v) for i, v in enumerate(node)]
        else:
            array = leaf_fn(node)
            if array is not None:
                if name in seen:
                    raise CheckpointError(f"two tensors flatten to the same name {name!r}")
                seen.add(name)
                yield name, array
            continue
        stack.extend((f"{name}.{k}" if name else k, v) for k, v in reversed(items))
