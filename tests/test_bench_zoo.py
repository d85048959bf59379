"""`linfit bench --zoo FILE --data PATH`: the benchmark on a zoo of checkpoints and on images the test writes.

Each model must be scored and fine-tuned on the images at its own preprocessing (checked against Pillow and numpy,
test_zoo_source's ``_pil_prepare``, with the weights read back by ``linfit.checkpoints`` and applied by Flax), and
the zoo and data must be part of every unit's identity (two zoos or two datasets never share a unit or a report),
while the embedded zoo on named tasks keeps the keys of the committed store.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest

from linfit import checkpoints
from linfit.bench import grid
from linfit.bench.grid import BenchConfig, data_identity, run_bench, units
from linfit.finetune import GridProtocol
from linfit.bench.report import write_report
from linfit.bench.store import ResultStore, part_key, setting
from linfit.cli import main
from linfit.data import TaskSpec, load_data, load_task
from linfit.errors import ConfigError, DatasetError, LinfitError, UnknownNameError
from linfit.scores import lfc
from linfit.zoo.source import load_zoo
from tests.test_zoo_source import _cnn_variables, _flat, _pil_prepare, png_folder  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
REPO = pathlib.Path(__file__).resolve().parents[1]
TOML = """
[[model]]
name = "gray12"
architecture = "small_cnn"
options = {{ width = 4, depth = 2 }}
format = "msgpack"
path = "gray.msgpack"
reference = true
input_size = 12
channel_order = "L"
mean = [0.5]
std = [0.25]

[[model]]
name = "rgb10"
architecture = "small_cnn"
options = {{ width = 4, depth = 2 }}
format = "npz"
path = "rgb.npz"
input_size = 10
mean = [0.4, 0.45, 0.5]
std = [0.2, 0.25, 0.3]
{extra}"""


WRITTEN = {"gray12": lambda: _cnn_variables(3, 1, 12, seed=1), "rgb10": lambda: _cnn_variables(5, 3, 10, seed=2)}
"""``(model, variables)`` of each model of the zoo file (seeded: the same arrays on every call)."""


def _write_zoo(folder: pathlib.Path, extra: str = "") -> pathlib.Path:
    """Two small CNNs (a 12-px grayscale reference, a 10-px RGB one) and the TOML file listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints.save(folder / "gray.msgpack", WRITTEN["gray12"]()[1])
    np.savez(folder / "rgb.npz", **_flat(WRITTEN["rgb10"]()[1]))
    (folder / "zoo.toml").write_text(TOML.format(extra=extra), encoding="utf-8")
    return folder / "zoo.toml"


def _config(zoo, data, **changes) -> BenchConfig:
    base = BenchConfig(zoo=str(zoo), data=str(data), regimes=("5shot",), scores=("lfc",), per_class=3,
                       learning_rates=(0.01,), finetune_seeds=(0,),
                       protocol=GridProtocol(window=2, max_steps=2, max_extensions=0))
    return dataclasses.replace(base, **changes)


def test_bench_scores_and_finetunes_each_model_at_its_own_preprocessing(tmp_path, png_folder, monkeypatch):
    zoo = _write_zoo(tmp_path / "zoo")
    seen = {}
    real = grid.finetune_record

    def recording(model, variables, x_train, y_train, x_test, y_test, **kwargs):
        seen[model.num_classes] = (np.asarray(x_train), np.asarray(x_test))  # 3: gray12, 5: rgb10
        return real(model, variables, x_train, y_train, x_test, y_test, **kwargs)

    monkeypatch.setattr(grid, "finetune_record", recording)
    config = _config(zoo, png_folder)
    with ResultStore(tmp_path / "bench.sqlite") as store:
        assert run_bench(config, store) == 4
        assert run_bench(config, store) == 0
        rows = {(u["kind"], u["config"]["model"]): u for u in store.units()}
    dataset = load_data(png_folder, seed=0)
    task = load_task(TaskSpec("blobs", "5shot"), dataset=dataset, seed=0)
    subset = task.scoring_set(per_class=3, seed=0)
    for entry in load_zoo(zoo):
        model, variables = WRITTEN[entry.name]()  # the weights _write_zoo saved
        phi = np.asarray(model.apply(variables, _pil_prepare(subset.x, entry.preprocessing), method="features"))
        scores = rows[("scores", entry.name)]
        # Pillow's and JAX's float32 bilinear resizes differ by ulps of [0, 1] values (scaled by 1 / std); through
        # two small conv layers and the Gram's correlation that moves LFC by ~1e-6 relative
        assert scores["record"]["scores"]["lfc"] == pytest.approx(lfc(phi, subset.y), rel=1e-4), entry.name
        cfg = scores["config"]
        assert cfg["architecture"] == "small_cnn" and cfg["reference"] == (entry.name == "gray12")
        assert cfg["task"] == "blobs" and cfg["data"] == data_identity(dataset) and cfg["zoo"].startswith("zoo.toml@")
        x_train, x_test = seen[model.num_classes]
        tolerance = 1e-5 / min(entry.preprocessing.std)
        np.testing.assert_allclose(x_train, _pil_prepare(task.train.x, entry.preprocessing), rtol=0, atol=tolerance)
        np.testing.assert_allclose(x_test, _pil_prepare(task.test.x, entry.preprocessing), rtol=0, atol=tolerance)
        tuned = rows[("finetune", entry.name)]["record"]
        assert [p["n"] for p in tuned["test_correct"]] == [task.test.y.size] and 0.0 <= tuned["accuracy"] <= 100.0


def test_zoo_and_data_are_part_of_every_units_identity(tmp_path, png_folder):
    zoo = _write_zoo(tmp_path / "a")
    other_zoo = _write_zoo(tmp_path / "b", extra='\n# the same models, another file\n')
    dataset = load_data(png_folder, seed=0)
    same = tmp_path / "blobs.npz"  # the folder's images as arrays: same name and content, same identity
    np.savez(same, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test, y_test=dataset.y_test)
    changed = dataset.x_train.copy()
    changed[0, 0, 0, 0] = 1.0 - changed[0, 0, 0, 0]
    (tmp_path / "changed").mkdir()
    np.savez(tmp_path / "changed" / "blobs.npz", x_train=changed, y_train=dataset.y_train, x_test=dataset.x_test,
             y_test=dataset.y_test)

    def keys(zoo_file, data):
        return {u.key for u in units(_config(zoo_file, data))}

    base = keys(zoo, png_folder)
    assert len(base) == 4 and keys(zoo, same) == base
    assert not keys(other_zoo, png_folder) & base and not keys(zoo, tmp_path / "changed" / "blobs.npz") & base
    # two zoos in one store: every unit kept, and the report refuses to average across them
    with ResultStore(tmp_path / "two.sqlite") as store:
        for zoo_file in (zoo, other_zoo):
            for unit in units(_config(zoo_file, png_folder)):
                record = ({"accuracy": 50.0, "seconds": 1.0} if unit.kind == "finetune"
                          else {"scores": {"lfc": 0.5}, "timings": {"lfc": 0.1}})
                key = part_key(unit.key, "lfc") if unit.parts else unit.key
                store.put(key, unit.kind, record, config=unit.config)
        assert len(store.keys()) == 8
        assert {setting(u["config"])["zoo"] for u in store.units()} == {f"zoo.toml@{h}" for h in
                                                                       _sha12(zoo, other_zoo)}
        with pytest.raises(LinfitError, match="never averages across configurations"):
            write_report(store, tmp_path / "report")


def _sha12(*files) -> set[str]:
    import hashlib

    return {hashlib.sha256(pathlib.Path(f).read_bytes()).hexdigest()[:12] for f in files}


def test_embedded_zoo_on_named_tasks_keeps_the_committed_stores_score_keys(tmp_path):
    """Scores of the embedded zoo on named tasks keep their keys (the committed store's units are found); its
    fine-tuning units were made under the older epochs protocol, a setting that no longer exists."""
    copy = tmp_path / "reproduce_full.sqlite"  # opening a store for writing migrates it: never the committed file
    shutil.copyfile(REPO / "experiments" / "reproduce_full.sqlite", copy)
    with ResultStore(copy) as store:
        scored = next(store.units("scores"))
        scfg = scored["config"]
        score = next(iter(scored["record"]["scores"]))
        config = BenchConfig(models=(scfg["model"],), tasks=(scfg["task"],), regimes=(scfg["regime"],),
                             seeds=(scfg["seed"],), scores=(score,), per_class=scfg["per_class"],
                             head_samples=scfg["head_samples"])
        made = {u.kind: u for u in units(config)}
        assert store.has(part_key(made["scores"].key, score))
        assert not store.has(made["finetune"].key)


def test_bench_errors_before_any_work(tmp_path, png_folder, monkeypatch):
    monkeypatch.setattr(grid, "_compute_scores", lambda *a: pytest.fail("work started"))
    monkeypatch.setattr(grid, "_compute_finetune", lambda *a: pytest.fail("work started"))
    zoo = _write_zoo(tmp_path / "zoo")
    store = ResultStore(":memory:")
    with pytest.raises(ConfigError, match="not both"):
        run_bench(_config(zoo, png_folder, tasks=("hebrew",)), store)
    with pytest.raises(UnknownNameError, match=r"did you mean 'gray12'.*the zoo"):
        run_bench(_config(zoo, png_folder, models=("grey12",)), store)
    with pytest.raises(ConfigError, match="only for the embedded domains"):
        run_bench(_config(zoo, png_folder, scores=("domain_similarity",)), store)
    with pytest.raises(DatasetError, match="unknown regime"):
        run_bench(_config(zoo, png_folder, regimes=("5shots",)), store)
    with pytest.raises(DatasetError, match="no such file or folder"):
        run_bench(_config(zoo, tmp_path / "nowhere"), store)
    with pytest.raises(ConfigError, match="nor an existing TOML file"):
        run_bench(_config(tmp_path / "nosuch.toml", png_folder), store)
    assert store.keys() == set()


@pytest.mark.parametrize("argv, expected", [
    (["--data", "DATA", "--tasks", "hebrew:5shot"], "give one of them"),
    (["--regime", "5shot"], "--regime goes with --data"),
    (["--zoo", "ZOO", "--data", "DATA", "--models", "grey12"], "did you mean 'gray12'"),
    (["--zoo", "ZOO", "--data", "nowhere"], "no such file or folder"),
])
def test_bench_cli_errors_are_one_line(argv, expected, tmp_path, png_folder, capsys, monkeypatch):
    monkeypatch.setattr(grid, "run_bench", lambda *a, **k: pytest.fail("work started"))
    zoo = _write_zoo(tmp_path / "zoo")
    argv = [str(zoo) if a == "ZOO" else str(png_folder) if a == "DATA" else a for a in argv]
    assert main(["bench", "--db", str(tmp_path / "b.sqlite"), *argv, "--quiet"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("linfit: error: ") and "\n" not in line and expected in line, line


def test_bench_cli_on_an_npz(tmp_path, capsys):
    zoo = _write_zoo(tmp_path / "zoo")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 255, (30, 14, 14, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 10)
    np.savez(tmp_path / "spots.npz", x=x, y=y)
    db = tmp_path / "b.sqlite"
    argv = ["bench", "--db", str(db), "--zoo", str(zoo), "--data", str(tmp_path / "spots.npz"), "--regime",
            "5shot", "--scores", "lfc", "--per-class", "2", "--finetune-seeds", "0", "--max-steps", "50", "--quiet"]
    assert main(argv) == 0 and "4 units computed" in capsys.readouterr().out
    assert main(argv) == 0 and "0 units computed" in capsys.readouterr().out
    with ResultStore(db) as store:
        configs = [u["config"] for u in store.units()]
    assert {c["task"] for c in configs} == {"spots"} and all(c["data"].startswith("spots@") for c in configs)
    assert all(c["regime"] == "5shot" and json.dumps(c) for c in configs)
