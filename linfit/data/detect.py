"""A labelled image dataset from a local path, its kind detected from what is there (:func:`load_data`).

=================  ==============================================================  ===============================
kind               what the path is                                                loader
=================  ==============================================================  ===============================
``npz``            a ``.npz`` file: ``x_train, y_train, x_test, y_test`` or ``x, y``  :func:`~linfit.data.load_arrays`
``tfds``           a prepared TensorFlow Datasets ``data_dir`` (one dataset), a     :func:`~linfit.data.load_tfds`
                   dataset folder ``data_dir/<name>``, or a version folder
                   ``data_dir/<name>/<version>`` (``dataset_info.json`` inside)
``idx``            a folder with the four MNIST-style IDX files                    :func:`~linfit.data.load_idx_dataset`
                   (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
                   ``t10k-`` or ``test-`` the same; ``.gz`` or not)
``image folder``   ``root/<class>/<images>`` or ``root/{train,test}/<class>/...``  :func:`~linfit.data.load_image_folder`
=================  ==============================================================  ===============================

Images keep their own resolution and colour (an image folder: the first image's size, grayscale iff every image
is single-band); each zoo model resizes and normalises them its own way (``linfit.zoo.preprocessing``). A source
without a test split is split 80/20 per class, seeded. Nothing is downloaded.

Example::

    >>> from linfit.data import load_data, load_task
    >>> ds = load_data("~/data/flowers")               # flowers/<class>/*.jpg
    >>> task = load_task(f"{ds.name}:20shot", dataset=ds)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from linfit.data.dataset import Dataset
from linfit.data.idx import load_idx_dataset
from linfit.data.loaders import load_arrays, load_image_folder
from linfit.data.tfds_source import load_tfds
from linfit.errors import DatasetError

KINDS = ("npz", "tfds", "idx", "image folder")
_IDX = re.compile(r"^(train|t10k|test)[-_.](images|labels)[-_.]idx[13]-ubyte(\.gz)?$")
_TFDS_INFO = "dataset_info.json"


def data_kind(path: str | os.PathLike) -> str:
    """Which of :data:`KINDS` the path holds (module docstring), from names only (no file is decoded).

    Raises:
      DatasetError: the path does not exist, or is a file other than ``.npz``.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        raise DatasetError(f"data path {path}: a file must be an .npz of arrays (x_train, y_train, x_test, y_test, or "
                           "x, y); folders may hold class subfolders of images, IDX files or a prepared tfds dataset")
    if not path.is_dir():
        raise DatasetError(f"data path {path}: no such file or folder")
    if _tfds_info_files(path):
        return "tfds"
    if any(_IDX.match(p.name) for p in path.iterdir()):
        return "idx"
    return "image folder"


def load_data(path: str | os.PathLike, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load the labelled images at ``path``, whatever their kind (:func:`data_kind`).

    Args:
      path: a file or folder (module docstring).
      test_fraction, seed: the per-class random test split of sources that have none (``x, y`` arrays, a flat
        image folder).

    Returns:
      A :class:`~linfit.data.Dataset`: ``[N, H, W, C]`` float32 images in ``[0, 1]`` at their own size,
      ``C`` 1 or 3; its ``name`` is the file's stem, the folder's name or the tfds dataset's name.

    Raises:
      DatasetError: the path cannot be read as any kind, naming what was expected, or its training split has
        fewer than two classes (nothing to rank models by).
    """
    path = Path(path).expanduser()
    kind = data_kind(path)
    if kind == "npz":
        data = load_arrays(path, test_fraction=test_fraction, seed=seed)
    elif kind == "tfds":
        name, data_dir = _tfds_name(path)
        data = load_tfds(name, data_dir=data_dir)
    elif kind == "idx":
        data = load_idx_dataset(*_idx_files(path), name=path.resolve().name, domain=f"IDX files in {path}")
    else:
        data = load_image_folder(path, size=None, grayscale=None, test_fraction=test_fraction, seed=seed)
    return require_classes(data, str(path))


def require_classes(data: Dataset, where: str) -> Dataset:
    """``data`` itself, if its training split has at least two classes (anything to rank models by).

    Raises:
      DatasetError: fewer than two classes, naming ``where`` (the path or dataset the images came from).
    """
    classes = np.unique(data.y_train).size
    if classes < 2:
        raise DatasetError(f"{where} has {classes} class{'' if classes == 1 else 'es'} in its training images; "
                           "ranking models needs at least two (an image folder: one subfolder per class)")
    return data


def _tfds_info_files(path: Path) -> list[Path]:
    """``dataset_info.json`` files in ``path`` or up to two levels below it."""
    return [p for pattern in (_TFDS_INFO, f"*/{_TFDS_INFO}", f"*/*/{_TFDS_INFO}") for p in sorted(path.glob(pattern))]


def _tfds_name(path: Path) -> tuple[str, Path]:
    """``(tfds name, data_dir)`` of a version folder, a dataset folder or a ``data_dir`` holding one dataset."""
    path = path.resolve()
    if (path / _TFDS_INFO).is_file():
        return f"{path.parent.name}:{path.name}", path.parent.parent
    if list(path.glob(f"*/{_TFDS_INFO}")):
        return path.name, path.parent
    datasets = sorted({p.parent.parent.name for p in path.glob(f"*/*/{_TFDS_INFO}")})
    if len(datasets) != 1:
        raise DatasetError(f"data path {path}: a tfds data_dir with {len(datasets)} datasets ({', '.join(datasets)}); "
                           f"point at one of them, e.g. {path / datasets[0]}")
    return datasets[0], path


def _idx_files(path: Path) -> list[Path]:
    """The train images, train labels, test images and test labels IDX files of a folder, in that order."""
    found: dict[tuple[str, str], list[Path]] = {}
    for p in sorted(path.iterdir()):
        match = _IDX.match(p.name)
        if match:
            split = "train" if match.group(1) == "train" else "test"
            found.setdefault((split, match.group(2)), []).append(p)
    out = []
    for key in (("train", "images"), ("train", "labels"), ("test", "images"), ("test", "labels")):
        files = found.get(key, [])
        if len(files) != 1:
            what = "no file" if not files else f"{len(files)} files ({', '.join(f.name for f in files)})"
            raise DatasetError(f"data path {path}: IDX folder has {what} for the {key[0]} {key[1]}; expected "
                               f"exactly one such as {'train' if key[0] == 'train' else 't10k'}-{key[1]}-"
                               f"idx{3 if key[1] == 'images' else 1}-ubyte[.gz]")
        out.append(files[0])
    return out
