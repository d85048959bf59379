"""Readers for the IDX format of MNIST / Fashion-MNIST / KMNIST (local files only, never downloads).

IDX layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, one dtype byte, one
byte with the number of dimensions ``d``, ``d`` big-endian uint32 sizes, then the data in C order,
big-endian. The file may be gzipped (detected from its first bytes, not its name).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from linfit.data.dataset import Dataset
from linfit.errors import DatasetError

#: IDX dtype byte -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into a native-endian array of its shape."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{source}: not an IDX file (the first two bytes must be zero)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DatasetError(
            f"{source}: unknown IDX dtype byte 0x{code:02X}; expected one of "
            + ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{source}: truncated IDX header ({len(raw)} bytes, expected >= {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(
            f"{source}: IDX size mismatch: header says shape {shape} of {dtype.name} "
            f"({expected} bytes in all) but the file has {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or plain, from a local path.

    Args:
      path: a local IDX file, plain or gzipped (recognised by its magic bytes, whatever its name).

    Returns:
      The stored array with its IDX shape and dtype (e.g. ``[N, 28, 28]`` uint8 images, ``[N]`` uint8 labels;
      one of ``IDX_DTYPES``) in native byte order.

    Raises:
      DatasetError: the file cannot be read; a corrupt gzip stream; not an IDX file (nonzero first two bytes),
        an unknown dtype byte, a truncated header, or a size that does not match the header's shape
        (:func:`parse_idx`).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read IDX file {os.fspath(path)!r}: {e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{os.fspath(path)}: corrupt gzip stream: {e}") from e
    return parse_idx(raw, os.fspath(path))


def load_idx_dataset(
    train_images,
    train_labels,
    test_images,
    test_labels,
    *,
    name: str = "idx",
    class_names=None,
    domain: str = "",
) -> Dataset:
    """Build a :class:`Dataset` from the four IDX files of an MNIST-style dataset.

    Args:
      train_images, test_images: paths to ``[N, H, W]`` uint8 IDX image files.
      train_labels, test_labels: paths to ``[N]`` integer IDX label files.
      name: the dataset's name; domain: its provenance (:class:`Dataset`).
      class_names: names in label order; default ``"0" .. str(max label)``.

    Returns:
      A :class:`Dataset` with ``[N, H, W, 1]`` float32 images in ``[0, 1]`` and int32 labels.

    Raises:
      DatasetError: a file :func:`load_idx` cannot read or decode; images not ``[N, H, W]`` uint8; labels not
        ``[N]`` of an integer dtype.
      ShapeError: a label file whose length differs from its image file's ``N``; train and test images of
        different ``[H, W]`` (:class:`Dataset`).
      LabelError: a negative label, or one ``>= len(class_names)`` (:class:`Dataset`).
    """
    arrays = {}
    for key, path in (("x_train", train_images), ("y_train", train_labels),
                      ("x_test", test_images), ("y_test", test_labels)):
        arrays[key] = load_idx(path)
    for key in ("x_train", "x_test"):
        if arrays[key].dtype != np.uint8 or arrays[key].ndim != 3:
            raise DatasetError(f"{key}: expected [N, H, W] uint8 images; got {arrays[key].shape} {arrays[key].dtype}")
    for key in ("y_train", "y_test"):
        if arrays[key].ndim != 1 or not np.issubdtype(arrays[key].dtype, np.integer):
            raise DatasetError(f"{key}: expected [N] integer labels; got {arrays[key].shape} {arrays[key].dtype}")
    if class_names is None:
        top = int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0)))
        class_names = [str(i) for i in range(top + 1)]
    return Dataset(name=name, class_names=tuple(class_names), domain=domain, **arrays)
