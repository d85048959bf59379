"""Target datasets that installed PyPI packages ship (:data:`linfit.data.catalog.PACKAGED`), as named tasks.

=============  =============================================  ==============================================
name           what                                           package
=============  =============================================  ==============================================
``lfw_faces``  200 LFW crops, 25x25 grayscale: face (label 0,  ``scikit-image`` (``skimage.data.lfw_subset``,
               the first 100) vs. non-face (label 1)          bundled with the package)
``elpv``       2,624 solar cells, 300x300 grayscale read at   ``elpv-dataset`` (CC BY-NC-SA 4.0; install it
               150x150 (2x2 box average), 4 defect classes    yourself, linfit never ships it)
=============  =============================================  ==============================================

Neither has a test split: each is split 80/20 per class with seed 0 (``linfit.data.load_arrays``), whatever
the task's k-shot seed, so every task of a dataset is tested on the same images. Nothing is downloaded: the
images come from each package's own loader, ``skimage.data.lfw_subset()`` and
``elpv_dataset.utils.load_dataset()``; :func:`check_installed` finds the package without importing it.

Example::

    >>> from linfit.data import load_task
    >>> task = load_task("lfw_faces:20shot", seed=0)      # [40, 25, 25, 1] train, [40, 25, 25, 1] test
"""

from __future__ import annotations

import importlib.util

import numpy as np

from linfit.data import catalog
from linfit.data.dataset import Dataset
from linfit.data.loaders import load_arrays
from linfit.errors import DatasetError, UnknownNameError

TEST_FRACTION = 0.2
SPLIT_SEED = 0
ELPV_CLASSES = ("functional", "possibly defective", "likely defective", "defective")
"""ELPV's label is the probability that a cell is defective, 0, 1/3, 2/3 or 1; class ``k`` is ``k/3``."""
ELPV_REDUCE = 2
"""ELPV's 300 x 300 cells are averaged over 2 x 2 blocks to 150 x 150: a quarter of the memory (2,624 images:
236 MB as float32 instead of 944 MB); the ImageNet models resize them to their own 224-260 px anyway."""


def check_installed(name: str) -> None:
    """Check that the package shipping the dataset ``name`` is installed, without importing it.

    Raises:
      UnknownNameError: ``name`` is not in :data:`~linfit.data.catalog.PACKAGED`.
      DatasetError: its package is not installed (the message gives the ``pip install`` command).
    """
    if name not in catalog.PACKAGED:
        raise UnknownNameError(f"unknown packaged dataset {name!r}; known: {', '.join(catalog.PACKAGED)}")
    info = catalog.PACKAGED[name]
    if importlib.util.find_spec(info.module) is None:
        raise DatasetError(f"the task dataset {name!r} needs the package that provides {info.module!r}, which is "
                           f"not installed: {info.install}")


def load(name: str) -> Dataset:
    """The dataset ``name`` of :data:`~linfit.data.catalog.PACKAGED`, split 80/20 per class (seed 0).

    Returns:
      A :class:`~linfit.data.Dataset`: ``[N, H, W, 1]`` float32 in ``[0, 1]`` (lfw_faces 25 x 25, 160 train /
      40 test; elpv 150 x 150, 2,099 / 525).

    Raises:
      UnknownNameError, DatasetError: as :func:`check_installed`.
    """
    check_installed(name)
    x, y, classes = _READERS[name]()
    return load_arrays({"x": x, "y": y, "domain": catalog.PACKAGED[name].provenance}, name=name,
                       class_names=classes, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)


def _lfw_faces() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    import skimage.data

    x = skimage.data.lfw_subset()  # [200, 25, 25] in [0, 1]: 100 faces, then 100 non-faces
    return x, np.repeat(np.arange(2, dtype=np.int32), 100), ("face", "non-face")


def _elpv() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from elpv_dataset.utils import load_dataset

    images, proba, _ = load_dataset()  # [2624, 300, 300] uint8, [2624] defect probability, [2624] cell type
    n, h, w = images.shape
    r = ELPV_REDUCE
    x = images.reshape(n, h // r, r, w // r, r).mean(axis=(2, 4), dtype=np.float32) / np.float32(255)
    return x, np.rint(np.asarray(proba) * 3).astype(np.int32), ELPV_CLASSES


_READERS = {"lfw_faces": _lfw_faces, "elpv": _elpv}
