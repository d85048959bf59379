"""load_tfds through tfds.data_source on mocked data (needs tensorflow-datasets, not TensorFlow)."""

import numpy as np

from linfit.data import load_tfds


def test_load_tfds_data_source_on_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=7):
        ds = load_tfds("mnist", data_dir=tmp_path)
        expected = tfds.data_source("mnist", split="test", data_dir=tmp_path, download=False)
        first = expected[0]
    assert ds.x_train.shape == (7, 28, 28, 1) and ds.x_test.shape == (7, 28, 28, 1)
    assert ds.class_names == tuple(str(i) for i in range(10))
    np.testing.assert_allclose(ds.x_test[0], first["image"] / 255.0, atol=1e-7)
    assert ds.y_test[0] == first["label"]
    with tfds.testing.mock_data(num_examples=4):
        small = load_tfds("mnist", data_dir=tmp_path, size=(8, 8))
    assert small.x_train.shape == (4, 8, 8, 1)


def test_images_of_several_shapes_need_a_size():
    """Photo datasets (e.g. oxford_flowers102) hold images of many sizes: without size= a DatasetError says so
    (numpy's stack raised before), with it every image is resized before stacking."""
    import pytest

    from linfit.data.tfds_source import _images
    from linfit.errors import DatasetError

    images = [np.zeros((5, 6, 3), np.uint8), np.full((7, 4, 3), 255, np.uint8)]
    with pytest.raises(DatasetError, match=r"2 shapes .*pass size=\(H, W\)"):
        _images(images, None, "flowers", "train")
    resized = _images(images, (3, 3), "flowers", "train")
    assert resized.shape == (2, 3, 3, 3) and resized[1].min() == 255
