"""Tasks on datasets that installed packages ship (linfit.data.packaged): scikit-image's LFW subset on the real
data, ELPV's label and size mapping on a stand-in package of the same interface (the real one is CC BY-NC-SA and
never a test dependency), and the error naming the `pip install` when a package is missing."""

from __future__ import annotations

import dataclasses
import sys
import textwrap

import numpy as np
import pytest
import skimage.data

from linfit.cli import main
from linfit.data import catalog, check_task, load_task, packaged
from linfit.errors import DatasetError, UnknownNameError


def test_lfw_faces_is_scikit_images_subset_split_80_20_per_class():
    raw = skimage.data.lfw_subset()  # [200, 25, 25]: 100 faces, then 100 non-faces (its docstring)
    ds = packaged.load("lfw_faces")
    assert ds.class_names == ("face", "non-face")
    assert ds.x_train.shape == (160, 25, 25, 1) and ds.x_test.shape == (40, 25, 25, 1)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    assert np.bincount(ds.y_train).tolist() == [80, 80] and np.bincount(ds.y_test).tolist() == [20, 20]
    # every image is one of skimage's (to float32 round-off), from the half its label says, each used once
    images = np.concatenate([ds.x_train, ds.x_test])[..., 0].reshape(200, -1).astype(np.float64)
    labels = np.concatenate([ds.y_train, ds.y_test])
    distance = np.abs(images[:, None, :] - raw.reshape(1, 200, -1)).max(axis=-1)  # [200 loaded, 200 raw]
    match = distance.argmin(axis=1)
    assert distance.min(axis=1).max() < 1e-7 and sorted(match) == list(range(200))
    np.testing.assert_array_equal(labels, (match >= 100).astype(int))


def test_lfw_faces_tasks_draw_k_per_class_from_the_fixed_training_split():
    full = packaged.load("lfw_faces")
    for seed in (0, 1):
        task = load_task("lfw_faces:20shot", seed=seed)
        assert task.train.x.shape == (40, 25, 25, 1) and np.bincount(task.train.y).tolist() == [20, 20]
        np.testing.assert_array_equal(task.train.x, full.x_train[task.train_indices])
        np.testing.assert_array_equal(task.test.x, full.x_test)  # the same test images whatever the seed
    assert str(check_task("lfw_faces:5shot")) == "lfw_faces:5shot"
    with pytest.raises(DatasetError, match="at most 80"):
        load_task("lfw_faces:81shot")


ELPV_STANDIN = '''
import numpy as np

def load_dataset():
    rng = np.random.default_rng(7)
    proba = np.repeat([0.0, 1 / 3, 2 / 3, 1.0], [10, 6, 5, 9])
    return rng.integers(0, 256, (30, 6, 4), dtype=np.uint8), proba, np.array(["mono", "poly"] * 15)
'''


def test_elpv_defect_probability_to_class_and_2x2_average(tmp_path, monkeypatch):
    """A stand-in ``elpv_dataset.utils.load_dataset`` (the package's interface: uint8 cells, defect probability
    k/3, cell type): class k is probability k/3, images are 2 x 2 block means of the pixels / 255."""
    (tmp_path / "elpv_dataset").mkdir()
    (tmp_path / "elpv_dataset" / "__init__.py").write_text("")
    (tmp_path / "elpv_dataset" / "utils.py").write_text(textwrap.dedent(ELPV_STANDIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("elpv_dataset", "elpv_dataset.utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    from elpv_dataset.utils import load_dataset

    images, proba, _ = load_dataset()
    ds = packaged.load("elpv")
    assert ds.class_names == ("functional", "possibly defective", "likely defective", "defective")
    assert ds.x_train.shape[1:] == (3, 2, 1)
    # 80/20 per class: round(0.2 n) test images of each class
    assert np.bincount(ds.y_test).tolist() == [2, 1, 1, 2] and np.bincount(ds.y_train).tolist() == [8, 5, 4, 7]
    want = {}
    for im, p in zip(images.astype(np.float64), proba):
        blocks = np.array([[im[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for j in range(2)] for i in range(3)])
        want[tuple(np.round(blocks / 255, 6).ravel())] = round(p * 3)
    got = {tuple(np.round(x.astype(np.float64), 6).ravel()): int(y)
           for x, y in zip(np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test]))}
    assert got == want


def _missing(monkeypatch, name: str) -> None:
    monkeypatch.setitem(catalog.PACKAGED, name, dataclasses.replace(catalog.PACKAGED[name],
                                                                    module="linfit_no_such_module"))


@pytest.mark.parametrize("name, install", [("elpv", "pip install elpv-dataset==1.0.0.post1"),
                                           ("lfw_faces", "pip install scikit-image")])
def test_missing_package_names_the_pip_install(monkeypatch, capsys, name, install):
    _missing(monkeypatch, name)
    with pytest.raises(DatasetError, match=f"{name!r} needs the package .* not installed: {install}"):
        check_task(f"{name}:20shot")
    with pytest.raises(DatasetError, match=install):
        load_task(f"{name}:20shot")
    assert main(["select", "--zoo", "imagenet", "--task", f"{name}:20shot", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linfit: error: ") and install in err


def test_unknown_task_dataset_lists_the_packaged_ones():
    with pytest.raises(UnknownNameError, match="from installed packages: lfw_faces, elpv"):
        check_task("faces:20shot")


def test_bench_grid_takes_packaged_tasks():
    """``linfit bench --tasks lfw_faces:5shot`` builds its units like an embedded task's (no work is done here)."""
    from linfit.bench.grid import BenchConfig, units

    config = BenchConfig(models=("resnet8/generalist",), tasks=("lfw_faces",), regimes=("5shot",), scores=("lfc",))
    made = units(config)
    assert sorted((u.kind, u.config["task"], u.config["regime"]) for u in made) == [
        ("finetune", "lfw_faces", "5shot"), ("scores", "lfw_faces", "5shot")]


def test_tasks_command_lists_the_packaged_tasks(monkeypatch, capsys):
    _missing(monkeypatch, "elpv")
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    lfw = next(line for line in out.splitlines() if line.startswith("lfw_faces:20shot"))
    assert lfw.split()[1:4] == ["2", "40", "40"]
    elpv = next(line for line in out.splitlines() if line.startswith("elpv:full"))
    assert elpv.split()[1:4] == ["4", "2099", "525"] and "pip install elpv-dataset" in elpv


@pytest.mark.slow
def test_select_imagenet_model_on_lfw_faces(monkeypatch, capsys):
    """The 25 x 25 grayscale faces reach SqueezeNet as 227 x 227 BGR with three equal channels before its mean."""
    import linfit.select as select_module

    seen = {}
    real = select_module.extract_inputs

    def recording(model, variables, x, *args, **kwargs):
        seen["x"] = np.asarray(x)
        return real(model, variables, x, *args, **kwargs)

    monkeypatch.setattr(select_module, "extract_inputs", recording)
    assert main(["select", "--zoo", "imagenet", "--models", "imagenet/squeezenet1_1", "--task", "lfw_faces:5shot",
                 "--scores", "lfc", "leep", "--per-class", "2", "--quiet"]) == 0
    assert "task lfw_faces:5shot: 1 model scored on N=4" in capsys.readouterr().out
    x = seen["x"]
    assert x.shape == (4, 227, 227, 3)
    pixels = x + np.float32([103.939, 116.779, 123.68])  # Caffe: x = 255 * pixel - mean, in BGR order
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-3)
    np.testing.assert_allclose(pixels[..., 1], pixels[..., 2], atol=1e-3)
