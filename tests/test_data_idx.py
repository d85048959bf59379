"""IDX parsing against files written byte by byte in the test (header packed with struct)."""

import gzip
import struct

import numpy as np
import pytest

from linfit.data import load_idx, load_idx_dataset
from linfit.errors import DatasetError

# dtype byte, big-endian struct code of one element, numpy dtype expected back
CASES = [(0x08, "B", np.uint8), (0x09, "b", np.int8), (0x0B, "h", np.int16),
         (0x0C, "i", np.int32), (0x0D, "f", np.float32), (0x0E, "d", np.float64)]


def idx_bytes(code, fmt, values, shape):
    header = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    return header + struct.pack(f">{len(values)}{fmt}", *values)


def write(path, raw, compress):
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("code,fmt,dtype", CASES)
def test_every_idx_dtype_plain_and_gzip(tmp_path, code, fmt, dtype, compress):
    shape = (2, 3, 2)
    values = [(-1) ** i * i for i in range(12)] if dtype not in (np.uint8,) else list(range(12))
    if dtype in (np.float32, np.float64):
        values = [v * 0.5 for v in values]
    path = write(tmp_path / "a.idx", idx_bytes(code, fmt, values, shape), compress)
    out = load_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == shape
    np.testing.assert_array_equal(out.ravel(), np.array(values, dtype=dtype))


def test_gzip_detected_from_content_not_name(tmp_path):
    raw = idx_bytes(0x08, "B", [1, 2, 3], (3,))
    a = write(tmp_path / "plain.gz", raw, compress=False)
    b = write(tmp_path / "packed.idx", raw, compress=True)
    np.testing.assert_array_equal(load_idx(a), [1, 2, 3])
    np.testing.assert_array_equal(load_idx(b), [1, 2, 3])


@pytest.mark.parametrize("raw,match", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "first two bytes"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "dtype byte 0x07"),
    (b"\x00\x00\x08\x02" + struct.pack(">I", 3), "truncated IDX header"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 4) + b"\x00\x01\x02", "size mismatch"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x00\x01\x02", "size mismatch"),
    (b"", "first two bytes"),
])
def test_bad_files_raise_dataset_error(tmp_path, raw, match):
    with pytest.raises(DatasetError, match=match):
        load_idx(write(tmp_path / "bad", raw, compress=False))


def test_corrupt_gzip_and_missing_file(tmp_path):
    good = gzip.compress(idx_bytes(0x08, "B", list(range(10)), (10,)))
    with pytest.raises(DatasetError, match="corrupt gzip"):
        load_idx(write(tmp_path / "x.gz", good[:-12], compress=False))
    garbled = bytearray(good)
    garbled[12:16] = b"\xff\xff\xff\xff"  # inside the deflate stream: zlib.error, not OSError
    with pytest.raises(DatasetError, match="corrupt gzip"):
        load_idx(write(tmp_path / "y.gz", bytes(garbled), compress=False))
    with pytest.raises(DatasetError, match="cannot read"):
        load_idx(tmp_path / "missing.idx")


def test_load_idx_dataset_converts_to_float_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 256, size=(n, 4, 5)).astype(np.uint8) for s, n in (("train", 6), ("test", 3))}
    labels = {"train": [0, 1, 2, 0, 1, 2], "test": [2, 1, 0]}
    paths = {}
    for split in ("train", "test"):
        paths[f"{split}_images"] = write(tmp_path / f"{split}-images", idx_bytes(
            0x08, "B", imgs[split].ravel().tolist(), imgs[split].shape), compress=split == "train")
        paths[f"{split}_labels"] = write(tmp_path / f"{split}-labels", idx_bytes(
            0x08, "B", labels[split], (len(labels[split]),)), compress=False)
    ds = load_idx_dataset(**paths, name="toy", class_names=["a", "b", "c"])
    assert ds.x_train.shape == (6, 4, 5, 1) and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train[..., 0], imgs["train"] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ds.y_test, labels["test"])
    assert ds.num_classes == 3 and ds.class_names == ("a", "b", "c")
    with pytest.raises(DatasetError, match="images"):
        load_idx_dataset(paths["train_labels"], paths["train_labels"], paths["test_images"], paths["test_labels"])
