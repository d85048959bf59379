"""Loading zoo models from weight files: ``names()`` and ``load(name) -> ZooModel``. No network, no training.

The committed zoo lives in ``linfit/zoo/weights/`` (``manifest.json`` plus one float16 linfit checkpoint per
model, see :mod:`linfit.zoo.builder`); ``weights_dir`` points at another build. ``load`` checks a weight file
against the sha256 the manifest records for it before decoding it, then rejects NaN, inf and impossibly large weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from linfit import checkpoints
from linfit.errors import CheckpointError
from linfit.zoo import spec

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True, eq=False)
class ZooModel:
    """A loaded zoo model.

    Attributes:
      name: e.g. ``"resnet8/mnist/scratch"``.
      model: the ``flax.linen`` backbone (``linfit.models`` contract: ``features``, ``head``).
      variables: ``{"params", "batch_stats"}`` as float32.
      architecture: ``"resnet8"`` or ``"densenet"`` (``spec.ARCHITECTURES``).
      kind: ``"generalist"``, ``"scratch"``, ``"from-generalist"`` or ``"multibn"``.
      source_domain: the domain it was trained on (``"union"`` for the generalist).
      class_names: the source classes, in head order.
      is_reference: the generalist (the paper's ImageNet reference model).
      source_accuracy: top-1 accuracy on the source domain's test split, measured at build time.
    """

    name: str
    model: object
    variables: dict
    architecture: str
    kind: str
    source_domain: str
    class_names: tuple[str, ...]
    is_reference: bool
    source_accuracy: float

    @property
    def num_classes(self) -> int:
        """``Cs``, the number of source classes (the head's outputs, ``len(class_names)``), as an ``int``."""
        return len(self.class_names)


def manifest(weights_dir=None) -> dict:
    """The ``manifest.json`` of a zoo build (default: the committed zoo)."""
    path = Path(weights_dir or WEIGHTS_DIR) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(f"no zoo manifest at {path}; run `linfit zoo build` (linfit.zoo.build)") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); reinstall linfit, or rebuild the manifest "
                              "with `linfit zoo build` (it keeps existing weight files)") from err


def names(weights_dir=None) -> list[str]:
    """Names of the models present in a zoo build (default: the committed zoo), in spec order."""
    return [m["name"] for m in manifest(weights_dir)["models"]]


@functools.cache
def _template(arch: str, num_classes: int):
    model = spec.ARCHITECTURES[arch].create(num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False))
    return model, shapes


def _recorded_sha256(weights_dir, file_name: str) -> str | None:
    """The sha256 the build's manifest records for ``file_name``; ``None`` when the build has no manifest yet
    (a first build in progress) or the manifest has no hash for the file (builds older than the hashes)."""
    if not (Path(weights_dir or WEIGHTS_DIR) / MANIFEST).exists():
        return None
    return next((m.get("sha256") for m in manifest(weights_dir)["models"] if m.get("file") == file_name), None)


def load(name: str, *, weights_dir=None) -> ZooModel:
    """Load the zoo model ``name`` (see :func:`names`) from a zoo build (default: the committed zoo).

    The weight file's sha256 is checked against the one ``manifest.json`` records for it (hashing the whole
    committed zoo takes milliseconds), then its tensors are checked (``checkpoints.check_weights``).

    Raises:
      UnknownNameError: ``name`` is not a zoo model.
      CheckpointError: its weight file is missing, differs from the manifest's sha256, cannot be decoded,
        holds NaN, inf or impossibly large weights, or does not match the architecture.
    """
    path = Path(weights_dir or WEIGHTS_DIR) / spec.entry(name).file_name
    expected = _recorded_sha256(weights_dir, path.name)
    if expected is not None:
        out = f" --out {weights_dir}" if weights_dir else ""
        rebuild = f"delete {path.name} and rebuild it with `linfit zoo build{out} --only {name}`"
        remedy = rebuild if weights_dir else f"reinstall linfit (pip install --force-reinstall linfit), or {rebuild}"
        checkpoints.check_sha256(path, expected, remedy=remedy)
    meta = checkpoints.load_metadata(path)
    model, template = _template(meta["arch"], int(meta["num_classes"]))
    variables = checkpoints.load(path, target=template)
    return ZooModel(name=name, model=model, variables=variables, architecture=meta["arch"], kind=meta["kind"],
                    source_domain=meta["domain"], class_names=tuple(meta["class_names"]),
                    is_reference=bool(meta["reference"]), source_accuracy=float(meta["source_accuracy"]))
