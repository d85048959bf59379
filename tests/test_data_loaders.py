"""Dataset validation, image-folder loading from PNGs written in the test, arrays and .npz."""

import numpy as np
import pytest
from PIL import Image

from linfit.data import (
    Dataset,
    load_arrays,
    load_image_folder,
    to_float,
    to_uint8,
    union,
)
from linfit.errors import DatasetError, LabelError, NonFiniteError, ShapeError


def write_png(path, value, size=(10, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def test_to_float_and_back():
    x = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    f = to_float(x)
    assert f.shape == (4, 8, 8, 1) and f.dtype == np.float32
    np.testing.assert_allclose(f[..., 0], x / 255.0, atol=1e-7)
    np.testing.assert_array_equal(to_uint8(f)[..., 0], x)
    with pytest.raises(DatasetError, match=r"must lie in \[0, 1\]; got values in \[0, 2\]"):
        to_float(np.full((1, 2, 2), 2.0) * np.array([0.0, 1.0]))
    with pytest.raises(NonFiniteError, match="2 NaN or infinite"):  # was a DatasetError that did not count them
        to_float(np.array([[[0.5, np.nan], [np.inf, 0.0]]]))
    with pytest.raises(ShapeError):
        to_float(np.zeros((2, 2), np.uint8))
    with pytest.raises(DatasetError, match="dtype"):
        to_float(np.zeros((1, 2, 2), np.int64))


def test_dataset_validation():
    x = np.zeros((3, 2, 2), np.uint8)
    with pytest.raises(ShapeError, match="y_train"):
        Dataset("d", x, np.array([0, 1]), x, np.array([0, 1, 0]), ("a", "b"))
    with pytest.raises(LabelError, match=r"0\.\.1"):
        Dataset("d", x, np.array([0, 1, 2]), x, np.array([0, 1, 0]), ("a", "b"))
    with pytest.raises(ShapeError, match="differ in shape"):
        Dataset("d", x, np.array([0, 1, 1]), np.zeros((3, 2, 3), np.uint8), np.array([0, 1, 0]), ("a", "b"))
    with pytest.raises(ShapeError, match="one shape"):
        union([Dataset("a", x, [0, 0, 0], x, [0, 0, 0], ("a",)),
               Dataset("b", x[:, :1], [0, 0, 0], x[:, :1], [0, 0, 0], ("b",))])


def test_image_folder_with_train_test_split(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c, value in (("cat", 40), ("dog", 200)):
            for i in range(n):
                write_png(tmp_path / "pets" / split / c / f"{i}.png", value + i)
    ds = load_image_folder(tmp_path / "pets", size=(6, 7))
    assert ds.name == "pets" and ds.class_names == ("cat", "dog")
    assert ds.x_train.shape == (6, 6, 7, 1) and ds.x_test.shape == (4, 6, 7, 1)
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(ds.x_train[:, 0, 0, 0], np.array([40, 41, 42, 200, 201, 202]) / 255.0, atol=1e-6)
    rgb = load_image_folder(tmp_path / "pets", size=(5, 5), grayscale=False)
    assert rgb.x_train.shape == (6, 5, 5, 3)


def test_image_folder_random_split_is_stratified_and_seeded(tmp_path):
    for c, n in (("a", 10), ("b", 5)):
        for i in range(n):
            write_png(tmp_path / "flat" / c / f"{i:02d}.png", 10 * i + (c == "b"))
    ds = load_image_folder(tmp_path / "flat", test_fraction=0.2, seed=1)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [2, 1])
    np.testing.assert_array_equal(np.bincount(ds.y_train), [8, 4])
    all_vals = sorted(np.concatenate([ds.x_train, ds.x_test])[:, 0, 0, 0].round(5).tolist())
    assert len(set(all_vals)) == 15  # a partition: nothing lost or duplicated
    again = load_image_folder(tmp_path / "flat", test_fraction=0.2, seed=1)
    np.testing.assert_array_equal(ds.x_test, again.x_test)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "bad" / "c").mkdir(parents=True)
    (tmp_path / "bad" / "c" / "x.png").write_bytes(b"not a png")
    (tmp_path / "bad" / "c" / "y.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot decode"):
        load_image_folder(tmp_path / "bad")
    for split, classes in (("train", ("a", "b")), ("test", ("a", "c"))):
        for c in classes:
            write_png(tmp_path / "mismatch" / split / c / "0.png", 1)
    with pytest.raises(DatasetError, match="different class folders"):
        load_image_folder(tmp_path / "mismatch")


def test_image_folder_native_format_palette_and_16_bit(tmp_path):
    """size=None, grayscale=None: a palette (GIF-like) image is colour, not one grey band; 16-bit grey is scaled
    to 8 bits, not clipped to white; the test split takes the training split's size and mode."""
    red = Image.new("P", (8, 6))
    red.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    blue = red.copy()
    blue.paste(1, (0, 0, 8, 6))
    for split, width in (("train", 8), ("test", 7)):  # the test images are narrower
        for c, im in (("r", red), ("b", blue)):
            path = tmp_path / "pal" / split / c / "0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            im.resize((width, 6)).save(path)
    ds = load_image_folder(tmp_path / "pal", size=None, grayscale=None)
    assert ds.x_train.shape == (2, 6, 8, 3) and ds.x_test.shape == (2, 6, 8, 3)
    np.testing.assert_allclose(ds.x_train[:, 0, 0], [[0, 0, 1], [1, 0, 0]])  # classes sorted: b, r
    for c, value in (("dark", 30000), ("bright", 60000)):
        for i in range(2):
            path = tmp_path / "deep" / c / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), value, np.uint16)).save(path)
    deep = load_image_folder(tmp_path / "deep", size=None, grayscale=None, test_fraction=0.5)
    np.testing.assert_allclose(np.sort(deep.x_train[:, 0, 0, 0]), np.array([30000, 60000]) / 65535, atol=1 / 255)


def test_load_arrays_npz_and_mapping(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (6, 5, 5), dtype=np.uint8), "y_train": np.array([0, 1, 2] * 2),
              "x_test": rng.random((3, 5, 5, 1)).astype(np.float32), "y_test": np.array([2, 1, 0])}
    np.savez(tmp_path / "toy.npz", class_names=np.array(["x", "y", "z"]), **arrays)
    ds = load_arrays(tmp_path / "toy.npz")
    assert ds.name == "toy" and ds.class_names == ("x", "y", "z")
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["x_train"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.x_test, arrays["x_test"])
    assert load_arrays(arrays).class_names == ("0", "1", "2")
    with pytest.raises(DatasetError, match=r"lack the keys \['y_test'\]"):
        load_arrays({k: v for k, v in arrays.items() if k != "y_test"})
    (tmp_path / "junk.npz").write_bytes(b"junk")  # before: numpy's advice to load it as a pickle
    with pytest.raises(DatasetError, match=r"not an \.npz archive.*numpy\.savez"):
        load_arrays(tmp_path / "junk.npz")
    raw = bytearray((tmp_path / "toy.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte inside a member: zipfile.BadZipFile (bad CRC), not OSError
    (tmp_path / "flipped.npz").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="cannot read arrays"):
        load_arrays(tmp_path / "flipped.npz")


def test_load_arrays_encodes_class_name_labels(tmp_path):
    """Labels given as names: sorted names become the classes (or the order of ``class_names``), in every split."""
    x = np.zeros((8, 4, 4), np.uint8)
    y = np.array(["dog", "cat", "emu", "cat", "dog", "emu", "cat", "dog"])
    np.savez(tmp_path / "named.npz", x=x, y=y)
    ds = load_arrays(tmp_path / "named.npz", test_fraction=0.5)
    assert ds.class_names == ("cat", "dog", "emu")
    codes = {"cat": 0, "dog": 1, "emu": 2}
    assert sorted(np.concatenate([ds.y_train, ds.y_test]).tolist()) == sorted(codes[v] for v in y)
    split = {"x_train": x[:4], "y_train": y[:4], "x_test": x[4:], "y_test": y[4:]}
    ds = load_arrays(split, class_names=["emu", "dog", "cat"])
    assert ds.y_train.tolist() == [1, 2, 0, 2] and ds.y_test.tolist() == [1, 0, 2, 1]
    with pytest.raises(DatasetError, match=r"\['cat'\] are not among the class_names"):
        load_arrays(split, class_names=["emu", "dog"])
    with pytest.raises(DatasetError, match="are class names but"):
        load_arrays({**split, "y_test": np.array([0, 1, 2, 0])})


def test_load_data_refuses_a_single_class_before_any_work(tmp_path):
    """Ranking models needs two classes: a folder with one class subfolder is refused when it is loaded, with
    the path and the fix (before, a score failed after the models had been loaded and compiled)."""
    from linfit.data import load_data

    (tmp_path / "only").mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "only" / f"{i}.png")
    with pytest.raises(DatasetError, match=r"has 1 class in its training images.*one subfolder per class"):
        load_data(tmp_path)
