"""Loaders for user data on local disk: image folders and arrays (``.npz`` or in memory).

Nothing here downloads. Every loader returns a :class:`~linfit.data.Dataset` (images ``[N, H, W, C]``
float32 in ``[0, 1]``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

import numpy as np

from linfit._io import NPZ_ERRORS
from linfit.data.dataset import Dataset
from linfit.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def _class_files(root: str) -> tuple[list[str], list[list[str]]]:
    """The sorted class names of ``root/<class>/<image>`` and each class's sorted image paths."""
    if not os.path.isdir(root):
        raise DatasetError(f"image folder {root!r} does not exist or is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise DatasetError(f"{root!r} has no class subfolders (expected root/<class>/<image files>)")
    files = []
    for cls in classes:
        names = sorted(f for f in os.listdir(os.path.join(root, cls)) if f.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise DatasetError(f"class folder {os.path.join(root, cls)!r} has no image files {IMAGE_SUFFIXES}")
        files.append([os.path.join(root, cls, f) for f in names])
    return classes, files


def _native_format(paths: list[str]) -> tuple[tuple[int, int], bool]:
    """``(size (H, W) of the first image, whether every image is single-band)``, from the file headers; a palette
    image (mode ``"P"``: one band of indices into a colour table) counts as colour."""
    from PIL import Image, UnidentifiedImageError

    grayscale, size = True, None
    for path in paths:
        try:
            with Image.open(path) as im:
                size = size or (im.height, im.width)
                grayscale = grayscale and len(im.getbands()) == 1 and im.mode != "P"
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetError(f"cannot decode image {path!r}: {e}") from e
    return size, grayscale


def _eight_bit(im, path: str):
    """``im`` with 8-bit channels: 16-bit grayscale (modes ``I;16*``) scaled by 255/65535 (Pillow's own
    conversion would clip it to white); 32-bit integer or float pixels have no fixed range and are refused."""
    from PIL import Image

    if im.mode.startswith("I;16"):
        return Image.fromarray(np.round(np.asarray(im, np.float64) * (255.0 / 65535.0)).astype(np.uint8), "L")
    if im.mode in ("I", "F"):
        raise DatasetError(f"image {path!r} has {'32-bit integer' if im.mode == 'I' else 'float'} pixels (Pillow "
                           f"mode {im.mode!r}), which have no fixed range; save it with 8- or 16-bit channels")
    return im


def _read_class_folders(root: str, size: tuple[int, int] | None, grayscale: bool | None):
    """Read ``root/<class>/<image>`` -> (``[N, H, W, C]`` uint8, ``[N]`` labels, sorted class names, the size
    ``(H, W)`` and grayscale flag used); a size or mode left ``None`` is the images' own
    (:func:`_native_format`)."""
    from PIL import Image, UnidentifiedImageError

    classes, files = _class_files(root)
    if size is None or grayscale is None:
        native_size, native_gray = _native_format([p for paths in files for p in paths])
        size = native_size if size is None else size
        grayscale = native_gray if grayscale is None else grayscale
    images, labels = [], []
    for label, paths in enumerate(files):
        for path in paths:
            try:
                with Image.open(path) as im:
                    im = _eight_bit(im, path).convert("L" if grayscale else "RGB")
                    if im.size != (size[1], size[0]):
                        im = im.resize((size[1], size[0]), Image.BILINEAR)
                    arr = np.asarray(im, np.uint8)
            except (OSError, UnidentifiedImageError) as e:
                raise DatasetError(f"cannot decode image {path!r}: {e}") from e
            images.append(arr[..., None] if grayscale else arr)
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32), classes, size, grayscale


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int, source: str) -> np.ndarray:
    """``[N]`` bool mask of a per-class random test split: ``max(1, round(n_c * test_fraction))`` images of each
    class (keeping at least one for training), drawn from ``np.random.SeedSequence([seed, c])``."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must lie in (0, 1); got {test_fraction}")
    counts = np.bincount(y)
    if counts.min() < 2:
        raise DatasetError(f"{source}: every class needs >= 2 images to split; class counts {counts.tolist()}")
    test_mask = np.zeros(len(y), bool)
    for c, n in enumerate(counts):
        k = min(n - 1, max(1, round(float(n) * test_fraction)))
        rng = np.random.default_rng(np.random.SeedSequence([seed, c]))
        test_mask[rng.permutation(np.flatnonzero(y == c))[:k]] = True
    return test_mask


def _encode_named_labels(arrays: dict, class_names) -> list[str] | None:
    """Labels given as class names (strings) become int64 codes, in place: their index in ``class_names`` when
    given, else in the sorted names. Returns the names, or ``None`` when the labels are numbers."""
    keys = [k for k in ("y", "y_train", "y_test") if k in arrays]
    labels = {k: np.asarray(arrays[k]) for k in keys}
    named = [k for k in keys if labels[k].dtype.kind in "US"]
    if not named:
        return None
    if len(named) != len(keys):
        raise DatasetError(f"labels {named} are class names but {sorted(set(keys) - set(named))} are numbers; give "
                           "every split's labels the same way")
    values = {k: labels[k].astype(str).tolist() for k in keys}
    present = sorted(set().union(*values.values()))
    names = present if class_names is None else [str(c) for c in class_names]
    index = {name: i for i, name in enumerate(names)}
    unknown = [v for v in present if v not in index]
    if unknown:
        raise DatasetError(f"labels {unknown[:5]} are not among the class_names {names[:10]}; list every class")
    for k in keys:
        arrays[k] = np.array([index[v] for v in values[k]], dtype=np.int64).reshape(labels[k].shape)
    return names


def load_image_folder(
    root: str | os.PathLike,
    *,
    size: tuple[int, int] | None = (28, 28),
    grayscale: bool | None = True,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> Dataset:
    """Load class-per-subfolder images with Pillow, resized to ``size`` (bilinear).

    Two layouts are accepted:

    * ``root/train/<class>/*`` and ``root/test/<class>/*``: the given split is used (same class names
      required in both);
    * ``root/<class>/*``: split at random, stratified, with ``test_fraction`` of each class (at least
      one image) in the test split — the paper's 80/20 rule for datasets without a split.

    Args:
      root: the local folder.
      size: output ``(H, W)`` in pixels; ``None``: the first (training) image's size (images of another size are
        resized to it, test images too).
      grayscale: ``C = 1`` if True, else RGB (``C = 3``); ``None``: grayscale iff every (training) image is
        single-band and not a palette image. 16-bit grayscale is scaled to 8 bits.
      test_fraction: the share of each class put in the test split, in ``(0, 1)`` (only for the second layout).
      seed: seed of the random split (only for the second layout).
      name: the dataset's name; default the folder's base name.

    Returns:
      A :class:`Dataset` with ``[N, H, W, C]`` float32 images in ``[0, 1]`` and int32 labels, the classes being
      the subfolder names in sorted order.

    Raises:
      DatasetError: ``root`` (or its ``train``/``test`` folder) is not a directory or has no class subfolders; a
        class folder without image files (``IMAGE_SUFFIXES``); an image Pillow cannot decode, or one with 32-bit
        integer or float pixels; train and test with different class folders; for the second layout,
        ``test_fraction`` outside ``(0, 1)`` or a class with fewer than 2 images.
    """
    root = os.fspath(root)
    name = name or os.path.basename(os.path.normpath(root))
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        x_train, y_train, classes, size, grayscale = _read_class_folders(train_dir, size, grayscale)
        x_test, y_test, test_classes, *_ = _read_class_folders(test_dir, size, grayscale)  # the train format
        if test_classes != classes:
            raise DatasetError(
                f"{root!r}: train and test have different class folders: {classes} vs {test_classes}"
            )
    else:
        x, y, classes, *_ = _read_class_folders(root, size, grayscale)
        test_mask = _stratified_split(y, test_fraction, seed, repr(root))
        x_train, y_train, x_test, y_test = x[~test_mask], y[~test_mask], x[test_mask], y[test_mask]
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   class_names=tuple(classes), domain=f"image folder {root}")


def load_arrays(source, *, name: str | None = None, class_names=None, test_fraction: float = 0.2,
                seed: int = 0) -> Dataset:
    """Build a :class:`Dataset` from arrays: a path to an ``.npz`` file or a mapping of arrays.

    Required keys: ``x_train``, ``y_train``, ``x_test``, ``y_test`` (images ``[N, H, W]`` or
    ``[N, H, W, C]``, uint8 or float in ``[0, 1]``; labels ``[N]`` integers or class names), or just ``x`` and
    ``y``, split at random per class with ``test_fraction`` of each class in the test split (seeded by ``seed``;
    as :func:`load_image_folder`). Optional keys: ``class_names`` (default ``"0" .. str(max label)``, or the
    sorted names for labels given as names) and ``domain``. Labels given as class names (strings) are encoded by
    their index in ``class_names``.

    Args:
      source: a path to an ``.npz`` file (read without pickles) or a mapping of array-likes.
      name: the dataset's name; default the file's base name without extension, or ``"arrays"``.
      class_names: names in label order, overriding the ``class_names`` key.
      test_fraction, seed: the split of ``x``/``y``, as in :func:`load_image_folder`; unused with the four
        split keys.

    Returns:
      A :class:`Dataset` with ``[N, H, W, C]`` float32 images in ``[0, 1]`` and int32 labels.

    Raises:
      DatasetError: an ``.npz`` that cannot be read or is not a zip archive; ``source`` neither a path nor a
        mapping; class-name labels in some splits and numbers in others, or a name not in ``class_names``; with
        ``x``/``y``: ``y`` not ``[N]`` non-negative integers, ``x`` without one row per label, ``test_fraction``
        outside ``(0, 1)`` or a class with fewer than 2 images; a missing key; images neither uint8 nor floating point,
        or floating-point images non-finite or outside ``[0, 1]`` (:class:`Dataset`).
      ShapeError: images with neither 3 nor 4 axes; labels not ``[N]`` with ``N`` the images of their split;
        train and test images of different ``[H, W, C]`` (:class:`Dataset`).
      LabelError: labels not of an integer dtype, or outside ``0..len(class_names)-1`` (:class:`Dataset`).
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isfile(path) and not zipfile.is_zipfile(path):  # np.load would try it as a pickle
            raise DatasetError(f"{path!r} is not an .npz archive (a zip of .npy arrays); write one with "
                               "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except NPZ_ERRORS as e:
            raise DatasetError(f"cannot read arrays from {path!r}: {e}") from e
        name = name or os.path.splitext(os.path.basename(path))[0]
    elif isinstance(source, Mapping):
        arrays = dict(source)
    else:
        raise DatasetError(f"load_arrays needs an .npz path or a mapping of arrays; got {type(source).__name__}")
    if class_names is None and "class_names" in arrays:
        class_names = [str(c) for c in np.asarray(arrays["class_names"]).tolist()]
    class_names = _encode_named_labels(arrays, class_names) or class_names
    if {"x", "y"} <= set(arrays) and not {"x_train", "y_train", "x_test", "y_test"} & set(arrays):
        y = np.asarray(arrays["y"])
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise DatasetError(f"y must be [N] non-negative integer labels; got shape {y.shape}, dtype {y.dtype}")
        x = np.asarray(arrays.pop("x"))
        if x.shape[:1] != y.shape:
            raise DatasetError(f"x and y must have one row per image; got x {x.shape}, y {y.shape}")
        test = _stratified_split(y, test_fraction, seed, name or "arrays")
        y = arrays.pop("y")
        arrays.update(x_train=x[~test], y_train=y[~test], x_test=x[test], y_test=y[test])
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DatasetError(f"arrays lack the keys {missing} (or give x and y only, to be split); found "
                           f"{sorted(arrays)}")
    if class_names is None:
        top = int(max(np.max(arrays["y_train"], initial=0), np.max(arrays["y_test"], initial=0)))
        class_names = [str(i) for i in range(top + 1)]
    return Dataset(name=name or "arrays", x_train=arrays["x_train"], y_train=arrays["y_train"],
                   x_test=arrays["x_test"], y_test=arrays["y_test"], class_names=tuple(class_names),
                   domain=str(np.asarray(arrays.get("domain", "arrays"))))
