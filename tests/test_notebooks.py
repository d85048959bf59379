"""The notebooks run top to bottom (each asserts its own numerical checks), and experiments/paper_zoo.py's
configuration, dry run and scoring path work on tiny fake torchvision weights."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from linfit import checkpoints, models
from linfit.data import scoring_subset
from linfit.tree import path_str

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
TINY = {"width": 4, "stage_sizes": (1, 1, 1, 1)}  # the ResNet-101 module (bottlenecks), one block per stage


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(notebook, tmp_path):
    env = {**os.environ, "LINFIT_NOTEBOOK_SMALL": "1", "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu",
           "LINFIT_NOTEBOOK_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(notebook)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(tmp_path.iterdir()), "the notebook wrote no figure"


def test_three_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03"]


def _load_paper_zoo():
    spec = importlib.util.spec_from_file_location("paper_zoo", ROOT / "experiments" / "paper_zoo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


paper_zoo = _load_paper_zoo()


def _fake_state_dict(arch: str, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """A random torchvision-layout state dict for ``models.create(arch, num_classes, **TINY)``: conv weights
    ``[O, I, kh, kw]``, linear ``[out, in]``, plus the ``num_batches_tracked`` counters torchvision writes."""
    model = models.create(arch, num_classes, **TINY)
    template = jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    rng = np.random.default_rng(seed)
    state = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        path = path_str(key_path)
        shape = leaf.shape
        if len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif len(shape) == 2:
            shape = shape[::-1]
        value = rng.uniform(0.5, 1.5, shape) if path.endswith("/var") else rng.normal(0, 0.1, shape)
        state[checkpoints.torch_key(model, path)] = value.astype(np.float32)
        if path.endswith("/var"):
            state[checkpoints.torch_key(model, path).replace("running_var", "num_batches_tracked")] = np.zeros(
                (), np.int64)
    return state


@pytest.fixture(scope="module")
def fake_zoo(tmp_path_factory):
    """Weights for two ResNet-101 experts (the ImageNet reference and one source expert) and a tfds layout."""
    root = tmp_path_factory.mktemp("zoo")
    weights, data = root / "weights", root / "tfds"
    weights.mkdir()
    (data / "dtd").mkdir(parents=True)
    files = {"resnet101__imagenet.safetensors": 7, "resnet101__food101__scratch.safetensors": 5}
    for i, (name, classes) in enumerate(files.items()):
        save_file(_fake_state_dict("resnet101", classes, seed=i), str(weights / name))
    args = ["--weights-dir", str(weights), "--data-dir", str(data), "--archs", "resnet101", "--targets", "dtd",
            "--models", "/imagenet$|food101/scratch", "--model-kwargs", '{"width": 4, "stage_sizes": [1, 1, 1, 1]}',
            "--image-size", "32"]
    return weights, data, args


def test_zoo_layout():
    zoo = paper_zoo.candidates()
    assert len(zoo) == 30 and sum(c.reference for c in zoo) == 2  # the paper's 2 x (1 + 7 x 2) experts
    assert len({c.file for c in zoo}) == 30
    assert [c.name for c in paper_zoo.candidates(("densenet169",), "inat2019")] == [
        "densenet169/inat2019/scratch", "densenet169/inat2019/from-imagenet"]


def test_dry_run_ok(fake_zoo, capsys):
    args = fake_zoo[2]
    assert paper_zoo.main([*args, "--dry-run", "--check-weights", "--finetune"]) == 0
    out = capsys.readouterr().out
    assert "source classes: 7 (reference)" in out and "source classes: 5" in out
    assert "4 scores units, 4 finetune units" in out  # 2 models x 1 target x 2 regimes (20shot, full)
    assert "configuration OK" in out


def test_dry_run_reports_problems(fake_zoo, tmp_path, capsys):
    args = fake_zoo[2]
    broken = tmp_path / "weights"
    broken.mkdir()
    state = _fake_state_dict("resnet101", 7, seed=0)
    del state["layer4.0.conv3.weight"]
    save_file(state, str(broken / "resnet101__imagenet.safetensors"))
    (broken / "resnet101__food101__scratch.safetensors").write_bytes(b"not a safetensors file")
    argv = [*args, "--dry-run", "--check-weights", "--weights-dir", str(broken), "--targets", "dtd", "cars196",
            "--scores", "lfc", "domain_similarity", "no_such_score",
            "--models", "/imagenet$|food101/scratch|logo2k/scratch"]
    assert paper_zoo.main(argv) == 1
    err = capsys.readouterr().err
    assert "resnet101/food101/scratch: Error while deserializing header" in err
    assert "resnet101/logo2k/scratch: missing" in err
    assert "layer4.0.conv3.weight" in err  # the strict load names the missing key
    assert "cars196" in err and "tfds build" in err
    assert "domain_similarity" in err and "no_such_score" in err


def test_build_model_and_scores(fake_zoo):
    weights, _, _ = fake_zoo
    cand = paper_zoo.candidates(("resnet101",), "food101/scratch")[0]
    model, variables = paper_zoo.build_model(cand, weights, 32, TINY)
    state = _fake_state_dict("resnet101", 5, seed=1)
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                  state["conv1.weight"].transpose(2, 3, 1, 0))

    rng = np.random.default_rng(0)
    x = paper_zoo.normalize(rng.uniform(0, 1, (24, 32, 32, 3)).astype(np.float32))
    y = np.repeat(np.arange(3), 8)
    record = paper_zoo.score_record(model, variables, x, y, scores=("lfc", "logme", "leep"), seed=0, per_class=6,
                                    head_samples=2, batch_size=8, memory_budget_bytes=2**26)
    assert set(record["scores"]) == set(record["timings"]) == {"lfc", "logme", "leep"}
    # LFC by hand on the 6-per-class scoring subset: Pearson correlation of the Gram with the ±1 label matrix.
    idx = scoring_subset(y, per_class=6, seed=0)
    apply_features, params = models.features_fn(model, variables)
    phi = np.asarray(apply_features(params, jnp.asarray(x[idx])), np.float64)
    k_y = np.where(y[idx][:, None] == y[idx][None, :], 1.0, -1.0)
    expected = np.corrcoef((phi @ phi.T).ravel(), k_y.ravel())[0, 1]
    assert record["scores"]["lfc"] == pytest.approx(expected, abs=1e-4)


def test_regime_indices():
    labels = np.repeat(np.arange(4), 30)
    five = paper_zoo.regime_indices(labels, "5shot", seed=0)
    assert np.array_equal(np.bincount(labels[five]), [5, 5, 5, 5])
    assert paper_zoo.regime_indices(labels, "full", seed=0).size == labels.size


def test_run_into_store(fake_zoo, tmp_path, monkeypatch):
    """The non-dry path on a fake target: units go to a store that linfit.bench.report reads; a rerun skips."""
    from linfit.bench.report import scores_frame
    from linfit.bench.store import ResultStore
    from linfit.data import Dataset

    rng = np.random.default_rng(1)
    fake = Dataset(name="dtd", x_train=rng.uniform(0, 1, (30, 32, 32, 3)).astype(np.float32),
                   y_train=np.repeat(np.arange(3), 10), x_test=rng.uniform(0, 1, (6, 32, 32, 3)).astype(np.float32),
                   y_test=np.arange(6) % 3, class_names=("a", "b", "c"))
    monkeypatch.setattr(paper_zoo, "load_target", lambda name, data_dir, image_size: fake)
    store_path = tmp_path / "zoo.sqlite"
    argv = [*fake_zoo[2], "--store", str(store_path), "--regimes", "5shot", "--scores", "lfc", "logme"]
    assert paper_zoo.main(argv) == 0
    with ResultStore(store_path) as store:
        frame = scores_frame(store)
        assert sorted(store.keys("scores")) == ["scores/resnet101/food101/scratch/dtd:5shot/seed0",
                                                "scores/resnet101/imagenet/dtd:5shot/seed0"]
    assert set(frame.score) == {"lfc", "logme"} and frame.value.notna().all()
    assert frame[frame.reference].model.unique().tolist() == ["resnet101/imagenet"]
    assert paper_zoo.main(argv) == 0  # everything stored: nothing recomputed
