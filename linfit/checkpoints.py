"""Read and write model weights, with strict name and shape checking.

Three formats:

* linfit's own (:func:`save` / :func:`load`): one msgpack file (``flax.serialization``) holding
  ``{"format": "linfit", "version": 1, "metadata": {...}, "variables": {...}}``; leaves keep the dtype
  they were saved in (``save(..., dtype="float16")`` halves the file), floating leaves come back as
  float32.
* torchvision / timm state dicts (:func:`load_torchvision`): a ``.safetensors`` file (read with the
  numpy API of ``safetensors``, no torch needed) or a ``.npz`` with the same names, e.g.
  ``layer1.0.conv1.weight``. Conv weights ``[O, I, kh, kw] -> [kh, kw, I, O]``, Linear ``[out, in] ->
  [in, out]``, BatchNorm ``weight, bias, running_mean, running_var -> scale, bias, mean, var``,
  ``num_batches_tracked`` ignored, ``fc`` / ``classifier`` -> ``head``. The module names come from the
  backbone's ``torch_module_name`` (see :mod:`linfit.models.resnet`, :mod:`linfit.models.densenet`).
* in-memory torch state dicts (:func:`load_torch_state_dict`), the same names and layouts as a flat
  ``{name: np.ndarray}`` (e.g. from :func:`linfit.torch_pickle.read_torch_checkpoint`), optionally without a
  classifier (``head=False``);
* Keras-style layer lists (:func:`load_keras_layers`): ``{layer: [kernel, bias]}`` flattened to
  ``"fire2/squeeze1x1.0"`` / ``".1"`` (e.g. from :func:`linfit.torch_pickle.read_numpy_pickle`), kernels
  already HWIO; a 1x1-conv classifier ``[1, 1, I, O]`` becomes the Dense head ``[I, O]``.
* big_vision-style ``.npz`` (:func:`load_big_vision_npz`): one array per leaf, keyed by the leaf's
  '/'-joined linfit path *including the collection*, e.g. ``params/layer1/block0/conv1/kernel`` and
  ``batch_stats/bn1/mean``, arrays already in Flax layout (HWIO kernels).

Every loader fills a ``variables`` tree given as a template (from :func:`linfit.models.init`, or
abstract from ``jax.eval_shape`` so large models need not be initialised) and raises one
``CheckpointError`` listing all missing, unexpected and mis-shaped keys. Nothing is ever downloaded.

Integrity: a file that cannot be decoded (truncated, not msgpack, not a zip) raises ``CheckpointError``
naming it; every reader passes the tensors it read to :func:`check_weights`, so NaN, inf and impossibly large weights fail at
load; where a manifest records a content hash (the zoo's ``manifest.json``), :func:`check_sha256`
compares it with the file's (:func:`file_sha256`) before anything is decoded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from linfit._io import write_atomic
from linfit.errors import CheckpointError, TreeMismatchError
from linfit.tree import check_same_structure, describe_mismatch, path_str

FORMAT = "linfit"
VERSION = 1
_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_TORCH_IGNORED_SUFFIXES = ("num_batches_tracked",)
_MAX_LISTED = 10
MAX_ABS_WEIGHT = 1e10
"""The largest weight magnitude a checkpoint may hold. No trained network has a larger one, while about 40 % of
random float32 bit patterns (garbled bytes) decode to one: :func:`check_weights` rejects them."""


# --------------------------------------------------------------------------- integrity


def check_weights(tensors: Mapping[str, Any], source: str) -> None:
    """Raise ``CheckpointError`` if any floating tensor read from a checkpoint holds NaN, ±inf or a value above
    :data:`MAX_ABS_WEIGHT` in absolute value.

    Call it on the tensors exactly as read from the file, before any dtype conversion, layout change or
    mapping onto a model, so the message names them as the file does. Every reader in this module does;
    a reader of another format (e.g. a PyTorch state dict) should too, after converting its tensors to
    numpy. A corrupted file otherwise loads silently and yields finite-looking but meaningless scores. Garbled
    bytes that decode to plausible values are caught only by a recorded sha256 (``check_sha256``).

    Args:
      tensors: the tensors of one file, nested (``{"params": {"conv1": {"kernel": arr}}}``, as in a linfit
        msgpack; named by their '/'-joined path, ``params/conv1/kernel``) or flat
        (``{"layer1.0.conv1.weight": arr}``, as in safetensors / npz; named by their key). Leaves: anything
        ``np.asarray`` takes (numpy or jax arrays, any shape); only inexact dtypes (float16/32/64,
        bfloat16, complex) are checked, integer and boolean leaves are skipped.
      source: what the message names as the origin, usually the file path.

    Raises:
      CheckpointError: naming ``source`` and each bad tensor with its count of NaN, inf and oversized entries
        and its largest finite magnitude (the first 10 tensors, and how many more).
    """
    bad = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(dict(tensors))[0]:
        arr = np.asarray(leaf)
        if not jnp.issubdtype(arr.dtype, jnp.inexact):
            continue
        finite = np.isfinite(arr)
        magnitude = np.abs(np.where(finite, arr, 0))
        holds_huge = float(jnp.finfo(arr.dtype).max) > MAX_ABS_WEIGHT  # float16 cannot: its finite max is 65504
        huge = int(np.count_nonzero(magnitude > MAX_ABS_WEIGHT)) if holds_huge else 0
        if huge or not finite.all():
            nan = int(np.isnan(arr).sum())
            inf = arr.size - int(finite.sum()) - nan
            bad.append(f"{path_str(key_path)} ({nan} NaN, {inf} inf, {huge} above {MAX_ABS_WEIGHT:.0e} of "
                       f"{arr.size}; largest finite {float(magnitude.max(initial=0)):.2g})")
    if bad:
        more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise CheckpointError(
            f"{source}: impossible weights (NaN, inf or above {MAX_ABS_WEIGHT:.0e} in absolute value) in {len(bad)} "
            f"tensor(s): {', '.join(bad[:_MAX_LISTED])}{more}. The file is corrupted or was saved from a diverged "
            "model; restore it from its source or re-export it."
        )


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes as 64 lowercase hex digits (what a zoo manifest records per weight file).

    Raises:
      CheckpointError: the file does not exist.
    """
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint file not found: {path}") from err


def check_sha256(path: str | os.PathLike, expected: str, *, remedy: str, recorded_in: str = "the zoo's manifest") -> None:
    """Raise ``CheckpointError`` unless the file's sha256 (:func:`file_sha256`) equals ``expected``.

    Args:
      path: the weight file.
      expected: the hex sha256 a manifest records for it.
      remedy: how to get a good copy back, appended to the message (e.g. reinstall, rebuild).
      recorded_in: where ``expected`` comes from, as the message names it (e.g. ``"the zoo file my.toml"``).

    Raises:
      CheckpointError: naming the file, the expected and the actual hash, and ``remedy``; or the file is missing.
    """
    actual = file_sha256(path)
    if actual != expected.lower():
        raise CheckpointError(
            f"{path} is corrupted or was changed: its sha256 is {actual}, {recorded_in} records {expected}. "
            f"Fix: {remedy}"
        )


# --------------------------------------------------------------------------- linfit's own format


def save(
    path: str | os.PathLike,
    variables: Mapping[str, Any],
    *,
    metadata: Mapping[str, Any] | None = None,
    dtype: str | np.dtype | None = None,
) -> None:
    """Write ``variables`` (e.g. ``{"params": ..., "batch_stats": ...}``) to ``path``.

    Args:
      path: destination file; written atomically (temporary file + rename).
      variables: a nested dict of arrays.
      metadata: msgpack-serialisable dict (str, numbers, lists, dicts) stored alongside.
      dtype: storage dtype for floating leaves (e.g. ``"float16"``); ``None`` keeps each leaf's dtype.

    Raises:
      CheckpointError: a non-floating ``dtype``, a finite value that ``dtype`` cannot hold (it would be stored
        as inf, e.g. |value| > 65504 in float16), or variables/metadata msgpack cannot serialise.
    """
    store_dtype = None if dtype is None else np.dtype(dtype)
    if store_dtype is not None and not np.issubdtype(store_dtype, np.floating):
        raise CheckpointError(f"save: dtype must be a floating dtype; got {store_dtype}")

    def to_numpy(path: tuple, leaf: Any) -> np.ndarray:
        arr = np.asarray(leaf)
        if store_dtype is not None and np.issubdtype(arr.dtype, np.floating):
            with np.errstate(over="ignore"):  # an overflow is reported below, naming the leaf
                stored = arr.astype(store_dtype)
            if not np.array_equal(np.isfinite(stored), np.isfinite(arr)):
                raise CheckpointError(
                    f"save: {jax.tree_util.keystr(path, simple=True, separator='/')} has values beyond the range of {store_dtype} "
                    f"(largest |value| {np.nanmax(np.abs(arr[np.isfinite(arr)]), initial=0.0):.4g}, "
                    f"{store_dtype} holds up to {float(np.finfo(store_dtype).max):.6g}); save with a wider dtype "
                    f"(e.g. dtype='float32' or None)")
            arr = stored
        return arr

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "metadata": dict(metadata or {}),
        "variables": jax.tree_util.tree_map_with_path(to_numpy, dict(variables)),
    }
    try:
        data = serialization.msgpack_serialize(payload)
    except Exception as err:  # msgpack raises TypeError / ValueError on unsupported objects
        raise CheckpointError(f"save: cannot serialise variables/metadata: {err}") from err
    write_atomic(path, data)


def _read_payload(path: str | os.PathLike) -> dict:
    try:
        payload = serialization.msgpack_restore(Path(path).read_bytes())
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint file not found: {path}") from err
    except Exception as err:
        raise CheckpointError(f"{path} is not a linfit checkpoint (msgpack): {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a linfit checkpoint (no format={FORMAT!r} marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported linfit checkpoint version {payload.get('version')}")
    return payload


def load(path: str | os.PathLike, *, target: Mapping[str, Any] | None = None) -> dict:
    """Read variables written by :func:`save`; floating leaves are returned as float32 ``jax.Array``.

    Args:
      path: a file written by :func:`save`.
      target: optional variables tree (from ``init`` or ``jax.eval_shape``); when given the file must
        have exactly its paths and shapes.

    Raises:
      CheckpointError: unreadable file (missing, truncated, not a linfit msgpack); an impossible tensor (NaN, inf,
        above 1e10; :func:`check_weights`); or (with ``target``) missing / unexpected / mis-shaped keys.
    """
    variables = _read_payload(path)["variables"]
    check_weights(variables, str(path))
    if target is not None:
        try:
            check_same_structure(dict(target), variables, what=f"variables in {path}")
        except TreeMismatchError as err:
            raise CheckpointError(str(err)) from err

    def to_jax(leaf: Any) -> jax.Array:
        arr = np.asarray(leaf)
        return jnp.asarray(arr, jnp.float32 if np.issubdtype(arr.dtype, np.floating) else arr.dtype)

    return jax.tree_util.tree_map(to_jax, variables)


def load_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` dict stored by :func:`save`."""
    return dict(_read_payload(path)["metadata"])


# --------------------------------------------------------------------------- foreign formats


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Flat name -> array from a ``.safetensors`` or ``.npz`` file (by its suffix), checked (:func:`check_weights`).

    Raises:
      CheckpointError: the file is missing, cannot be read, has another suffix, or holds NaN/inf or weights above
        1e10 in absolute value (:func:`check_weights`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except Exception as err:  # BadZipFile, zlib.error, EOFError; ValueError for a non-zip or object arrays
            raise CheckpointError(f"cannot read {path} as .npz (a zip of .npy arrays; truncated or not one?): "
                                  f"{type(err).__name__}: {err}") from err
    elif path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as err:
            raise CheckpointError(
                "reading .safetensors needs the 'safetensors' package (pip install safetensors)"
            ) from err
        try:
            arrays = load_file(str(path))
        except Exception as err:  # truncated header or data, or bfloat16 tensors, which numpy cannot hold
            raise CheckpointError(f"cannot read {path}: {err}") from err
    else:
        raise CheckpointError(
            f"unsupported checkpoint suffix {path.suffix!r} for {path}; expected .safetensors or .npz"
        )
    check_weights(arrays, str(path))
    return arrays


def _fill(
    template: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    key_of: Callable[[str], str],
    convert: Callable[[np.ndarray, str], np.ndarray],
    ignored: Callable[[str], bool],
    source: str,
) -> dict:
    """Fill every leaf of ``template`` from ``arrays[key_of(path)]`` (converted), strictly.

    Raises one ``CheckpointError`` listing the leaves without a key, the keys left unused (unless
    ``ignored``), and the keys whose converted shape differs from the leaf's.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(dict(template))
    leaves, missing, misshaped, used = [], [], [], set()
    for key_path, leaf in flat:
        path = path_str(key_path)
        key = key_of(path)
        if key not in arrays:
            missing.append(key if key == path else f"{key} (for {path})")
            leaves.append(None)
            continue
        used.add(key)
        arr = convert(np.asarray(arrays[key]), path)
        if tuple(arr.shape) != tuple(leaf.shape):
            misshaped.append(
                f"{key}: file {tuple(arrays[key].shape)} -> {tuple(arr.shape)}, "
                f"model expects {tuple(leaf.shape)} at {path}"
            )
        leaves.append(jnp.asarray(arr, leaf.dtype))
    unexpected = sorted(k for k in arrays if k not in used and not ignored(k))
    summary = describe_mismatch(missing, unexpected, misshaped)
    if summary:
        raise CheckpointError(f"{source} does not match the model ({len(flat)} leaves): {summary}")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def torch_key(model: Any, path: str) -> str:
    """The torchvision/timm state-dict key of a linfit variables path, e.g.
    ``"params/layer1/block0/conv1/kernel" -> "layer1.0.conv1.weight"``."""
    collection, *modules, leaf = path.split("/")
    if (collection, leaf) not in _TORCH_LEAF:
        raise CheckpointError(f"no torchvision name for the variable {path!r}")
    return f"{model.torch_module_name('/'.join(modules))}.{_TORCH_LEAF[(collection, leaf)]}"


def _from_torch_layout(arr: np.ndarray, path: str) -> np.ndarray:
    """Conv ``[O, I, kh, kw] -> [kh, kw, I, O]``, Linear ``[out, in] -> [in, out]``, else unchanged."""
    if path.endswith("/kernel") and arr.ndim == 4:
        return arr.transpose(2, 3, 1, 0)
    if path.endswith("/kernel") and arr.ndim == 2:
        return arr.T
    return arr


def load_torch_state_dict(
    arrays: Mapping[str, np.ndarray],
    model: Any,
    variables: Mapping[str, Any],
    *,
    head: bool = True,
    source: str = "state dict",
) -> dict:
    """Load a flat torch state dict ``{name: array}`` (torch names and layouts) into a linfit backbone.

    Args:
      arrays: e.g. ``linfit.torch_pickle.read_torch_checkpoint(path)``; conv weights ``[O, I, kh, kw]``
        (depthwise ``[C, 1, kh, kw]``), Linear ``[out, in]``.
      model: the linfit backbone; its ``torch_module_name`` gives the names.
      variables: its variables tree (template for paths, shapes, dtypes; may be abstract).
      head: ``False`` for a checkpoint without classifier (e.g. MobileNetV2 feature extractors): the
        ``head`` leaves are not looked up and come back as zeros (``replace_head``'s default, the paper's
        ``f(x; w0) = 0`` setting).
      source: names the checkpoint in error messages.

    Returns:
      A new variables tree (float32 ``jax.Array`` leaves).

    Raises:
      CheckpointError: keys missing for some model leaf; keys the model does not use (other than
        ``*.num_batches_tracked``); shapes that differ after the layout conversion.
    """
    if not hasattr(model, "torch_module_name"):
        raise CheckpointError(f"{type(model).__name__} has no torchvision naming (torch_module_name)")
    variables = dict(variables)
    head_template = None
    if not head:
        params = dict(variables["params"])
        head_template = params.pop("head")
        variables["params"] = params
    loaded = _fill(
        variables,
        arrays,
        key_of=lambda p: torch_key(model, p),
        convert=_from_torch_layout,
        ignored=lambda k: k.endswith(_TORCH_IGNORED_SUFFIXES),
        source=source,
    )
    if head_template is not None:
        loaded["params"] = {
            **loaded["params"],
            "head": jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), head_template),
        }
    return loaded


def load_torchvision(path: str | os.PathLike, model: Any, variables: Mapping[str, Any]) -> dict:
    """Load a torchvision/timm-named ResNet or DenseNet state dict into a linfit backbone.

    Args:
      path: ``.safetensors`` (or ``.npz``) with torch names and layouts (``[O, I, kh, kw]`` convs).
      model: the linfit backbone (``ResNet``, ``DenseNet`` or ``SmallCNN``) whose names to map to.
      variables: its variables tree, used as a template for paths, shapes and dtypes (may be abstract,
        from ``jax.eval_shape``).

    Returns:
      A new variables tree (float32 ``jax.Array`` leaves) with every leaf taken from the file.

    Raises:
      CheckpointError: unreadable file (missing, truncated, not a zip / safetensors); an impossible tensor (NaN, inf,
        above 1e10; :func:`check_weights`); keys missing for some model leaf; file keys the model does not use (other
        than ``*.num_batches_tracked``); shapes that differ after the layout conversion.
    """
    return load_torch_state_dict(read_arrays(path), model, variables, source=str(path))


_KERAS_INDEX = {"kernel": 0, "bias": 1}


def _keras_key(model: Any, path: str) -> str:
    collection, *modules, leaf = path.split("/")
    if collection != "params" or leaf not in _KERAS_INDEX:
        raise CheckpointError(f"no Keras layer-list name for the variable {path!r} (only kernel/bias params)")
    return f"{model.keras_layer_name('/'.join(modules))}.{_KERAS_INDEX[leaf]}"


def _from_keras_layout(arr: np.ndarray, path: str) -> np.ndarray:
    """A 1x1 conv classifier ``[1, 1, I, O]`` -> Dense head ``[I, O]``; everything else is already Flax's."""
    if path == "params/head/kernel" and arr.ndim == 4 and arr.shape[:2] == (1, 1):
        return arr.reshape(arr.shape[2:])
    return arr


def load_keras_layers(
    arrays: Mapping[str, np.ndarray], model: Any, variables: Mapping[str, Any], *, source: str = "layer lists"
) -> dict:
    """Load Keras-style ``{layer: [kernel, bias]}`` weights, flattened to ``"layer.0"`` (kernel, HWIO) and
    ``"layer.1"`` (bias), into a linfit backbone; layer names from the model's ``keras_layer_name``.

    Strict like :func:`load_torch_state_dict` (one ``CheckpointError`` listing missing, unexpected and
    mis-shaped keys).
    """
    if not hasattr(model, "keras_layer_name"):
        raise CheckpointError(f"{type(model).__name__} has no Keras layer naming (keras_layer_name)")
    return _fill(
        variables,
        arrays,
        key_of=lambda p: _keras_key(model, p),
        convert=_from_keras_layout,
        ignored=lambda k: False,
        source=source,
    )


def load_big_vision_npz(path: str | os.PathLike, variables: Mapping[str, Any]) -> dict:
    """Load a big_vision-style ``.npz`` of flat '/'-joined names onto ``variables``.

    Names are linfit's variables paths including the collection (``params/head/kernel``,
    ``batch_stats/bn1/var``); arrays are in Flax layout. Strict, and raises ``CheckpointError`` for the same
    reasons, like :func:`load_torchvision`.
    """
    return _fill(
        variables,
        read_arrays(path),
        key_of=lambda p: p,
        convert=lambda arr, p: arr,
        ignored=lambda k: False,
        source=str(path),
    )
