"""Load a prepared TensorFlow Datasets dataset from a local ``data_dir`` (never downloads).

Uses ``tfds.data_source`` (random-access ArrayRecord files; works without TensorFlow) and falls back
to ``tfds.load(..., download=False)`` + ``tfds.as_numpy`` when the data was prepared as TFRecord and
TensorFlow is installed. ``tensorflow-datasets`` is an optional dependency (``pip install
linfit[tfds]``).
"""

from __future__ import annotations

import os

import numpy as np

from linfit.data.dataset import Dataset
from linfit.errors import DatasetError


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetError(
            "load_tfds needs tensorflow-datasets: pip install tensorflow-datasets (TensorFlow is not required)"
        ) from e
    return tfds


def _read_split(tfds, name: str, split: str, data_dir: str, image_key: str, label_key: str):
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        examples = [source[i] for i in range(len(source))]
    except Exception as data_source_error:  # noqa: BLE001 - tfds raises many types; report both paths
        try:
            ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
            examples = list(tfds.as_numpy(ds))
        except Exception as load_error:
            raise DatasetError(
                f"cannot read tfds dataset {name!r} split {split!r} from data_dir={data_dir!r} (nothing is "
                f"downloaded; prepare it first with `tfds build {name} --data_dir=...`). "
                f"tfds.data_source: {data_source_error}; tfds.load: {load_error}"
            ) from load_error
    if not examples:
        raise DatasetError(f"tfds dataset {name!r} split {split!r} is empty")
    for key in (image_key, label_key):
        if key not in examples[0]:
            raise DatasetError(f"tfds dataset {name!r} has no feature {key!r}; features: {sorted(examples[0])}")
    images = [np.asarray(e[image_key]) for e in examples]  # stacked by _images, after any resize
    labels = np.asarray([int(e[label_key]) for e in examples], np.int64)
    return images, labels


def load_tfds(
    name: str,
    *,
    data_dir: str | os.PathLike,
    split: tuple[str, str] = ("train", "test"),
    image_key: str = "image",
    label_key: str = "label",
    size: tuple[int, int] | None = None,
) -> Dataset:
    """Load ``split = (train_split, test_split)`` of a prepared tfds dataset into a :class:`Dataset`.

    Args:
      name: tfds name, e.g. ``"mnist"`` or ``"fashion_mnist:3.0.1"``.
      data_dir: local directory holding the prepared dataset.
      split: tfds split strings for train and test (slicing such as ``"train[:80%]"`` works).
      image_key, label_key: feature names of the image (``[H, W, C]`` uint8) and the class label.
      size: optional ``(H, W)`` in pixels to resize to (bilinear, Pillow); needed when a split's images differ
        in shape.

    Returns:
      A :class:`Dataset` with ``[N, H, W, C]`` float32 images in ``[0, 1]`` and int32 labels; class names from
      the dataset's ``ClassLabel`` feature when it has names, else ``"0" .. str(max label)``.

    Raises:
      DatasetError: ``tensorflow-datasets`` is not installed; a split that neither ``tfds.data_source`` nor
        ``tfds.load`` can read from ``data_dir`` (nothing is downloaded); an empty split; no feature
        ``image_key`` or ``label_key``; images of several shapes in a split without ``size``; images neither
        uint8 nor floating point in ``[0, 1]`` (:class:`Dataset`).
      ShapeError: images that are not ``[H, W]`` or ``[H, W, C]``; train and test images of different
        ``[H, W, C]`` (:class:`Dataset`).
      LabelError: a label outside ``0..len(class_names)-1`` (e.g. ``-1`` for unlabelled examples, or more labels
        than the ``ClassLabel`` names) (:class:`Dataset`).
    """
    tfds = _import_tfds()
    data_dir = os.fspath(data_dir)
    (x_train, y_train), (x_test, y_test) = (
        _read_split(tfds, name, s, data_dir, image_key, label_key) for s in split
    )
    x_train, x_test = (_images(x, size, name, s) for x, s in ((x_train, split[0]), (x_test, split[1])))
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    class_names = _class_names(tfds, name, data_dir, label_key) or [str(i) for i in range(num_classes)]
    return Dataset(name=name.split(":")[0], x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   class_names=tuple(class_names), domain=f"tfds {name} from {data_dir}")


def _class_names(tfds, name: str, data_dir: str, label_key: str) -> list[str] | None:
    """The names of the label feature from the dataset's metadata, or None when it has none."""
    try:
        feature = tfds.builder(name, data_dir=data_dir).info.features[label_key]
    except Exception:  # noqa: BLE001 - metadata is optional; numeric names are the fallback
        return None
    names = getattr(feature, "names", None)
    return list(names) if names else None


def _images(images: list[np.ndarray], size: tuple[int, int] | None, name: str, split: str) -> np.ndarray:
    """N images ``[H, W, C]`` uint8 as ``[N, H, W, C]``, resized to ``size`` when given; images of several shapes
    without a ``size`` are a ``DatasetError`` saying to pass one."""
    if size is not None:
        return _resize(images, size)
    shapes = sorted({image.shape for image in images})
    if len(shapes) > 1:
        raise DatasetError(f"tfds dataset {name!r} split {split!r} has images of {len(shapes)} shapes (e.g. "
                           f"{shapes[0]} and {shapes[-1]}); pass size=(H, W) to resize them to one")
    return np.stack(images)


def _resize(images, size: tuple[int, int]) -> np.ndarray:
    """N images ``[H, W, C]`` uint8 (an array ``[N, H, W, C]`` or a list) -> ``[N, size[0], size[1], C]`` uint8
    (bilinear)."""
    from PIL import Image

    out = []
    for img in images:
        squeeze = img.ndim == 3 and img.shape[-1] == 1
        im = Image.fromarray(img[..., 0] if squeeze else img).resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im, np.uint8)
        out.append(arr[..., None] if squeeze else arr)
    return np.stack(out)
