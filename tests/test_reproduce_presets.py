"""experiments/reproduce.py: a part of a preset's grid (``--tasks``, ``--draws``) is a subset of its units, so the
parts of a resumable run fill one store."""

import importlib.util
import sys
from pathlib import Path

from linfit.bench.grid import units

_PATH = Path(__file__).resolve().parent.parent / "experiments" / "reproduce.py"
_spec = importlib.util.spec_from_file_location("reproduce", _PATH)
reproduce = importlib.util.module_from_spec(_spec)
sys.modules["reproduce"] = reproduce
_spec.loader.exec_module(reproduce)


def _keys(config):
    return {(u.kind, u.config["task"], u.config["seed"], u.config["model"]): u.key for u in units(config)}


def test_a_part_of_the_evidence_grid_has_the_whole_grids_keys():
    whole = _keys(reproduce.preset("evidence20-resnet8"))
    part = _keys(reproduce.preset("evidence20-resnet8", ("hebrew", "font_digits"), (0,)))
    models = reproduce.architecture_models("resnet8")
    assert set(part) == {(kind, task, 0, model) for kind in ("scores", "finetune")
                         for task in ("hebrew", "font_digits") for model in models}
    assert all(whole[coords] == key for coords, key in part.items())
    assert len(whole) == 2 * len(models) * 11 * len(reproduce.EVIDENCE_KSHOT_SEEDS)


def test_the_imagenet_evidence_preset_plans_every_backbone_without_source_image_scores():
    config = reproduce.preset("evidence20-imagenet")
    planned = units(config)
    assert {u.config["model"] for u in planned} == set(config.models) and len(config.models) == 5
    assert not any(u.config["reference"] for u in planned)  # no generalist: gains over the zoo's mean
    assert "domain_similarity" not in config.scores and "lgc_paper" in config.scores
    assert len(planned) == 2 * 5 * len(reproduce.IMAGENET_TASKS) * len(reproduce.EVIDENCE_KSHOT_SEEDS)


def test_the_full_regime_evidence_preset_is_one_draw_of_the_whole_training_split_into_its_own_store():
    config = reproduce.preset("evidencefull-densenet")
    planned = units(config)
    models = reproduce.architecture_models("densenet")
    assert {(u.kind, u.config["task"], u.config["model"]) for u in planned} == {
        (kind, task, model) for kind in ("scores", "finetune") for task in config.tasks for model in models}
    assert {(u.config["regime"], u.config["seed"]) for u in planned} == {("full", 0)}
    assert config.max_train_per_class is None and len(config.tasks) == 11
    store, out = reproduce.default_paths("evidencefull-densenet")
    assert (store.name, out.name) == ("evidence_full_densenet.sqlite", "evidence_full_densenet")
    assert reproduce.default_paths("evidence20-resnet8")[0].name == "evidence_20shot_resnet8.sqlite"


def test_progress_reports_the_planned_units_only(tmp_path):
    from linfit.bench.store import ResultStore
    config = reproduce.preset("smoke")
    tuned = [u for u in units(config) if u.kind == "finetune"]
    record = {"accuracy": 50.0, "seconds": 2.0, "lr": 0.01, "bracketed": True, "steps": [20, 20],
              "converged": [True, True], "accuracy_per_seed": [49.0, 51.0]}
    with ResultStore(tmp_path / "store.sqlite") as store:
        store.put(tuned[0].key, "finetune", record, config=tuned[0].config)
        # the same setting on a task outside the preset: another grid's unit in the same store
        store.put("finetune/elsewhere", "finetune", record, config={**tuned[0].config, "task": "elsewhere"})
        text = "\n".join(reproduce.progress(store, config))
    assert f"fine-tuning units 1 of {len(tuned)} " in text
    assert "| fine-tuning units | 1 (1 model × 1 task group) |" in text
