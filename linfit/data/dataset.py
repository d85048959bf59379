"""The in-memory dataset type and the uint8 <-> float32 image conversion.

Every linfit model takes images as NHWC ``float32`` in ``[0, 1]``. Datasets are stored on disk as
``uint8`` (``[N, H, W]`` or ``[N, H, W, C]``) and converted once, on load, by :func:`to_float`.

Example::

    >>> import numpy as np
    >>> from linfit.data import Dataset, to_float
    >>> x = to_float(np.zeros((4, 28, 28), np.uint8))
    >>> x.shape, x.dtype
    ((4, 28, 28, 1), dtype('float32'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from linfit.errors import DatasetError, LabelError, NonFiniteError, ShapeError


def to_float(images: np.ndarray) -> np.ndarray:
    """Convert stored images to the models' input format.

    Args:
      images: ``[N, H, W]`` or ``[N, H, W, C]``; ``uint8`` (0..255) or floating point already in ``[0, 1]``.

    Returns:
      ``[N, H, W, C]`` ``float32`` in ``[0, 1]`` (``C = 1`` when the input had no channel axis): ``uint8`` divided
      by 255, floating point cast unchanged.

    Raises:
      ShapeError: ``images`` has neither 3 nor 4 axes.
      DatasetError: a dtype other than ``uint8`` or floating point; floating-point values outside ``[0, 1]``.
      NonFiniteError: floating-point images with NaN or inf (the message counts them).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ShapeError(f"images must be [N, H, W] or [N, H, W, C]; got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise DatasetError(f"images must be uint8 or floating point; got dtype {images.dtype}")
    out = images.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        raise NonFiniteError(f"images contain {out.size - np.count_nonzero(finite)} NaN or infinite values; "
                             "floating-point images must lie in [0, 1]")
    if out.size and (out.min() < 0.0 or out.max() > 1.0):
        raise DatasetError(f"floating-point images must lie in [0, 1]; got values in [{out.min():g}, {out.max():g}] "
                           "(divide 0..255 pixels by 255, or pass them as uint8)")
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_float`: ``[N, H, W, C]`` float in ``[0, 1]`` -> ``uint8`` (rounded)."""
    images = np.asarray(images, np.float32)
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset with a train and a test split.

    The constructor normalises its arguments: images pass through :func:`to_float` (so ``uint8`` or float
    ``[N, H, W]``/``[N, H, W, C]`` are accepted), labels become int32, class names ``str``. It does not require
    every class to occur in a split.

    Attributes:
      name: short identifier, e.g. ``"latin"``.
      x_train: ``[N, H, W, C]`` float32 in ``[0, 1]`` (the embedded pack: ``H = W = 28``, ``C = 1``).
      y_train: ``[N]`` int32 labels in ``0..num_classes-1``.
      x_test: ``[M, H, W, C]`` float32 in ``[0, 1]``.
      y_test: ``[M]`` int32 labels in ``0..num_classes-1``.
      class_names: one name per class, in label order (a tuple of ``str``).
      domain: provenance: where the images come from and how they were made.

    Raises:
      ShapeError: images with neither 3 nor 4 axes (:func:`to_float`); ``y_train``/``y_test`` not ``[N]`` with
        ``N`` the number of images of its split; train and test images of different ``[H, W, C]``.
      DatasetError: images neither ``uint8`` nor floating point, or floating-point images outside ``[0, 1]``
        (:func:`to_float`).
      NonFiniteError: floating-point images with NaN or inf (:func:`to_float`).
      LabelError: labels not of an integer dtype, or outside ``0..len(class_names)-1``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    domain: str = ""

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        for split in ("train", "test"):
            x = to_float(getattr(self, f"x_{split}"))
            y = np.asarray(getattr(self, f"y_{split}"))
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ShapeError(
                    f"{self.name}: y_{split} must be [N] with N = {x.shape[0]} (rows of x_{split}); "
                    f"got shape {y.shape}"
                )
            if not np.issubdtype(y.dtype, np.integer):
                raise LabelError(f"{self.name}: y_{split} must be integers; got dtype {y.dtype}")
            if y.size and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise LabelError(
                    f"{self.name}: y_{split} must lie in 0..{len(self.class_names) - 1} "
                    f"(one per class name); got range [{y.min()}, {y.max()}]"
                )
            object.__setattr__(self, f"x_{split}", x)
            object.__setattr__(self, f"y_{split}", y.astype(np.int32))
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ShapeError(
                f"{self.name}: train and test images differ in shape: "
                f"{self.x_train.shape[1:]} vs {self.x_test.shape[1:]}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (the length of ``class_names``)."""
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"classes={self.num_classes})"
        )


def union(datasets: Sequence[Dataset], name: str = "union") -> Dataset:
    """Concatenate datasets into one with disjoint label sets (the paper's multi-source "generalist").

    The labels of ``datasets[i]`` are offset by the number of classes of ``datasets[:i]``; class names
    become ``"<dataset name>/<class name>"``.

    Args:
      datasets: one or more :class:`Dataset` whose images share one ``[H, W, C]``.
      name: the union's name.

    Returns:
      A :class:`Dataset` with ``sum(d.num_classes)`` classes and every train/test image of the inputs, in the
      order given (images ``[sum N, H, W, C]`` float32, labels int32).

    Raises:
      DatasetError: ``datasets`` is empty.
      ShapeError: the datasets' images differ in ``[H, W, C]``.
    """
    if not datasets:
        raise DatasetError("union() needs at least one dataset")
    shapes = {d.x_train.shape[1:] for d in datasets}
    if len(shapes) != 1:
        raise ShapeError(f"union() needs images of one shape; got {sorted(shapes)}")
    offsets = np.cumsum([0] + [d.num_classes for d in datasets])
    return Dataset(
        name=name,
        x_train=np.concatenate([d.x_train for d in datasets]),
        y_train=np.concatenate([d.y_train + o for d, o in zip(datasets, offsets)]),
        x_test=np.concatenate([d.x_test for d in datasets]),
        y_test=np.concatenate([d.y_test + o for d, o in zip(datasets, offsets)]),
        class_names=tuple(f"{d.name}/{c}" for d in datasets for c in d.class_names),
        domain="union of " + ", ".join(d.name for d in datasets),
    )
