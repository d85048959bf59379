"""The benchmark grid: scores and fine-tuning ground truth for every (model, task, regime, seed).

Deshpande et al. 2021, §4 (App. B): every candidate model is scored on the task's scoring subset and really
fine-tuned (``BenchConfig``: the paper's optimiser, a learning-rate grid × several seeds trained to convergence,
η chosen on validation and refit, ``linfit.finetune.finetune_grid``); reports compare the two
(``linfit.bench.report``). Each (kind, model,
task, regime, seed, setting) is one unit of ``linfit.bench.runner``, keyed by ``linfit.bench.store.unit_key``:
stored when it finishes, skipped on rerun, dealt to shards by a stable hash. The scores of a unit are its parts:
stored one by one, so asking for another score computes only that one for the stored units, and a changed
setting (step budget, seeds, scoring subset size, ...) makes new units.

Any zoo on any data. ``BenchConfig.zoo`` is a zoo of ``linfit.zoo.source.load_zoo`` (``"embedded"``,
``"imagenet"`` or a TOML file of your checkpoints) and ``BenchConfig.data`` a path of your own labelled images
(``linfit.data.load_data``) instead of named tasks; each model sees the images, scored and fine-tuned alike, at
its own preprocessing (``ZooEntry.preprocessing``). A zoo other than the embedded one, and your own data, are
part of every unit's setting (``zoo_identity``, ``data_identity``), so results of two zoos or two datasets are
never mixed in a store or a report; the embedded zoo on named tasks keeps the keys of older stores.

Example::

    config = BenchConfig(models=("resnet8/generalist", "resnet8/mnist/scratch"), tasks=("font_digits",),
                         regimes=("20shot",), protocol=GridProtocol(max_steps=500))
    with ResultStore("bench.sqlite") as store:
        run_bench(config, store, progress=True)
        write_report(store, "report/")

    mine = BenchConfig(zoo="my_zoo.toml", data="~/data/flowers", regimes=("20shot",))
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from linfit import scores as score_registry
from linfit.bench.runner import Unit, run_units
from linfit.bench.store import ResultStore, pack_bools, unit_key
from linfit.data import Dataset, TaskSpec, load_data, load_task, parse_regime
from linfit.data.sampling import kshot_indices
from linfit.errors import ConfigError, check_known
from linfit.extract import TaskInputs, extract_inputs, source_sample
from linfit.finetune import PAPER_LEARNING_RATES, FinetuneConfig, GridProtocol, finetune_grid, lr_order
from linfit.models import features_fn
from linfit.scores.registry import SOURCE_INPUTS
from linfit.select import DEFAULT_SCORES
from linfit.timing import Stopwatch
from linfit.zoo.source import ZOO_NAMES, ZooEntry, check_source_domains, load_zoo


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Attributes:
      models: zoo model names (``None``: the whole zoo); exactly one reference model per grid is expected
        for the gain metrics (the generalist of each architecture is a reference).
      tasks: target datasets as ``linfit tasks`` names them (embedded or packaged; ``None``: ``font_digits``);
        not with ``data``. regimes: e.g. ``("5shot", "20shot", "full")``; seeds: k-shot seeds (which
        training images a task's regime holds, and the scoring subset drawn from them).
      zoo: ``"embedded"`` (default), ``"imagenet"`` or the path of a TOML zoo file (``linfit.zoo.source``).
      data: the path of your own labelled images (``linfit.data.load_data``: image folder, ``.npz``, IDX folder,
        tfds ``data_dir``) as the one task of the grid, named after the dataset; a source without a test split
        is split 80/20 per class with seed 0 for every k-shot seed, so all seeds share one test set.
      scores: registered score names.
      per_class: scoring images per class (paper: 25); head_samples: random head rows for NTK scores.
      batch_size, learning_rates, finetune_seeds, protocol: the fine-tuning ground truth
        (``linfit.finetune.finetune_grid``): the paper's optimiser (SGD, Nesterov momentum 0.9, weight decay
        1e-4, a new LeCun-normal head) at a constant step size on minibatches of ``batch_size``, every
        (η, seed) of ``learning_rates`` × ``finetune_seeds`` trained until its window-mean training loss stops
        improving (``protocol``: window, patience, step budget, tolerances), the grid extended while the best η sits on
        an edge, η chosen by the mean validation accuracy over the seeds on a held-out 20 % of the training
        split, then every seed refit with that η on the whole training split. ``protocol`` may be given as a
        mapping of ``GridProtocol`` fields (a JSON round trip of the config).
      max_train_per_class: cap on the training images per class in the ``full`` regime (CPU budget).

    Raises:
      ConfigError: an empty ``finetune_seeds`` or ``learning_rates`` (``finetune_grid`` checks them further).
    """

    models: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    regimes: tuple[str, ...] = ("20shot",)
    seeds: tuple[int, ...] = (0,)
    scores: tuple[str, ...] = DEFAULT_SCORES
    per_class: int = 25
    head_samples: int | None = 8
    batch_size: int = 32
    learning_rates: tuple[float, ...] = PAPER_LEARNING_RATES
    finetune_seeds: tuple[int, ...] = (0, 1, 2)
    protocol: GridProtocol = GridProtocol()
    max_train_per_class: int | None = None
    zoo: str = "embedded"
    data: str | None = None

    def __post_init__(self):
        if isinstance(self.protocol, Mapping):
            object.__setattr__(self, "protocol", GridProtocol(**self.protocol))
        if not self.finetune_seeds or not self.learning_rates:
            raise ConfigError(f"the fine-tuning grid needs at least one seed and one learning rate; got seeds "
                              f"{list(self.finetune_seeds)}, learning rates {list(self.learning_rates)}")

    def finetune_config(self, seed: int) -> FinetuneConfig:
        """The optimiser of the fine-tuning units of k-shot seed ``seed`` (which also seeds the validation split)."""
        return FinetuneConfig.paper(milestones=(), batch_size=self.batch_size, seed=seed)

    def finetune_setting(self) -> dict:
        """The fine-tuning units' setting: every field their result depends on, JSON-serialisable."""
        return {"batch_size": self.batch_size, "learning_rates": list(self.learning_rates),
                "finetune_seeds": list(self.finetune_seeds), "protocol": dataclasses.asdict(self.protocol),
                "max_train_per_class": self.max_train_per_class}


GRAM_PER_CLASS = 4
GRAM_MAX_CLASSES = 10
GRAM_DIGITS = 4


def gram_sample(labels, *, seed: int, per_class: int = GRAM_PER_CLASS,
                max_classes: int = GRAM_MAX_CLASSES) -> np.ndarray:
    """Indices ``[K]`` of a small class-balanced sample, sorted by class (the rows of the paper's Fig. 8).

    ``per_class`` samples (``linfit.data.sampling.kshot_indices``, seeded; fewer for a smaller class) of each of
    the ``max_classes`` smallest labels present in ``labels [N]``, ordered by label and then by index, so
    ``K <= per_class · max_classes`` and a Gram matrix over the sample shows one diagonal block per class.
    """
    labels = np.asarray(labels)
    idx = kshot_indices(labels, per_class, seed=seed, allow_fewer=True)
    idx = idx[np.isin(labels[idx], np.unique(labels)[:max_classes])]
    return idx[np.argsort(labels[idx], kind="stable")]


def _round(matrix: np.ndarray, digits: int) -> list[list[float]]:
    return [[float(f"{v:.{digits}g}") for v in row] for row in matrix]


def gram_record(model, variables_before, variables_after, x, y, *, digits: int = GRAM_DIGITS) -> dict:
    """Feature Grams ΦΦᵀ before and after fine-tuning, with their LFC (Deshpande et al. 2021, Fig. 8 and eq. (8)).

    Φ ``[K, D]`` are the penultimate features (``linfit.models.features_fn``, evaluation mode) of ``x [K, ...]``
    under each set of variables; the head plays no part, so ``model`` may carry the pre-trained head while
    ``variables_after`` carry the fine-tuned one. LFC is the registered ``"lfc"`` score on the unrounded Φ and
    ``y [K]`` (renumbered ``0..C-1``, which leaves the label-similarity matrix unchanged).

    Returns:
      ``{"labels": [K], "before": [K][K], "after": [K][K], "lfc_before": float, "lfc_after": float}`` with the
      Gram entries rounded to ``digits`` significant digits (JSON-serialisable).
    """
    y = np.asarray(y)
    classes = np.unique(y, return_inverse=True)[1]
    lfc = score_registry.get("lfc")
    record = {"labels": [int(c) for c in y]}
    for name, variables in (("before", variables_before), ("after", variables_after)):
        apply_fn, params = features_fn(model, variables)
        phi = np.asarray(apply_fn(params, x), np.float64)
        record[name] = _round(phi @ phi.T, digits)
        record[f"lfc_{name}"] = lfc(classes, features=phi)
    return record


def finetune_record(model, variables, x_train, y_train, x_test, y_test, *, config: FinetuneConfig,
                    learning_rates, seeds, protocol: GridProtocol, num_classes: int) -> dict:
    """Fine-tune a learning-rate grid × seeds to convergence, choose η on validation, refit on the whole training
    split (``linfit.finetune.finetune_grid``), and return a ``"finetune"`` unit's record.

    With S seeds, L learning rates tried (the grid plus its extensions) and I test images, the record holds:

    * ``"accuracy"``: mean over the S refit runs of their test accuracy, in percent (a diverged run counts every
      image wrong); ``"accuracy_per_seed"`` ``[S]``;
    * ``"test_correct"``: ``[S]`` list of ``linfit.bench.store.pack_bools`` of ``[I]`` bool, whether refit run s
      classifies each test image correctly (argmax of its logits): what ``linfit.bench.stats`` resamples over
      images and seeds; its mean is ``accuracy / 100``;
    * ``"lr"`` (chosen), ``"lrs"`` ``[L]``, ``"bracketed"``, ``"extensions"`` ``[below, above]``,
      ``"val_accuracy"`` ``[L][S]`` (in [0, 1], ``None`` for a diverged run);
    * ``"oracle_lr"``, ``"oracle_accuracy"``: the paper's choice on test, among the search runs (trained on the
      80 % fit split, not refit): the η of best mean test accuracy over seeds (ties: the smaller η,
      ``linfit.finetune.lr_order``), and that accuracy in percent;
    * ``"steps"``, ``"converged"``, ``"diverged"``, ``"train_loss"`` ``[S]`` of the refit runs and
      ``"search_steps"``, ``"search_converged"`` ``[L][S]`` of the search runs;
    * ``"gram"``: ``gram_record`` on ``gram_sample(y_test, seed=config.seed)`` with the pre-trained variables and
      those of the first seed's refit run (left out when that run diverged).

    ``"seconds"`` excludes JAX tracing and XLA compilation, kept apart in ``"compile_seconds"`` (as the scores
    units' ``"timings"``/``"compile_seconds"``): only the first unit of an architecture and input shape in a
    process compiles, so the one-off cost is reported on its own, not charged to whichever unit came first.
    """
    watch = Stopwatch().start()
    result = finetune_grid(model, variables, x_train, y_train, x_test, y_test, config=config,
                           lrs=tuple(learning_rates), seeds=tuple(seeds), protocol=protocol, num_classes=num_classes)
    search_accuracy = result.search_test_correct.mean(axis=(1, 2))  # [L], mean over seeds and images
    oracle = lr_order(result.lrs, search_accuracy)[0]

    def listed(array):
        return np.asarray(array).tolist()

    record = {
        "accuracy": 100.0 * float(result.test_correct.mean()),
        "accuracy_per_seed": listed(100.0 * result.test_accuracy),
        "test_correct": [pack_bools(row) for row in result.test_correct],
        "lr": result.chosen_lr,
        "lrs": listed(result.lrs),
        "bracketed": result.bracketed,
        "extensions": list(result.extensions),
        "val_accuracy": [[None if np.isnan(v) else float(v) for v in row] for row in result.val_accuracy],
        "oracle_lr": float(result.lrs[oracle]),
        "oracle_accuracy": 100.0 * float(search_accuracy[oracle]),
        "steps": listed(result.steps),
        "converged": listed(result.converged),
        "diverged": listed(result.diverged),
        "train_loss": [None if not np.isfinite(v) else float(v) for v in result.train_loss],
        "search_steps": listed(result.search_steps),
        "search_converged": listed(result.search_converged),
    }
    if not result.diverged[0]:
        idx = gram_sample(y_test, seed=config.seed)
        record["gram"] = gram_record(model, variables, result.variables[0], x_test[idx], np.asarray(y_test)[idx])
    watch.stop()
    record["seconds"], record["compile_seconds"] = watch.run_seconds, watch.compile_seconds
    return record


DEFAULT_BENCH_TASK = "font_digits"
"""The grid's task when ``BenchConfig`` names neither ``tasks`` nor ``data``."""


def zoo_identity(zoo: str | os.PathLike) -> str | None:
    """The zoo's part of a unit's setting: ``None`` for the embedded zoo (the keys of older stores), the name
    ``"imagenet"``, or ``"<file name>@<12 hex of the TOML file's SHA-256>"`` for a zoo file, so a changed file
    (another model, another checkpoint path or preprocessing) is another zoo. Pin the checkpoints themselves
    with ``sha256`` in the file."""
    if zoo == "embedded":
        return None
    if zoo in ZOO_NAMES:
        return str(zoo)
    path = Path(zoo)
    return f"{path.name}@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def data_identity(dataset: Dataset) -> str:
    """``"<dataset name>@<12 hex>"``: the SHA-256 of the dataset's train and test images and labels (their
    bytes and shapes), so two datasets of one name never share units."""
    digest = hashlib.sha256()
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return f"{dataset.name}@{digest.hexdigest()[:12]}"


@functools.lru_cache(maxsize=4)
def _zoo(zoo: str, weights_dir) -> dict[str, ZooEntry]:
    return {entry.name: entry for entry in load_zoo(zoo, weights_dir=weights_dir)}


@functools.lru_cache(maxsize=2)
def _dataset(data: str) -> Dataset:
    return load_data(data, seed=0)


def _tasks(config: BenchConfig) -> tuple[str, ...]:
    """The grid's task datasets (the data's name with ``data``), after checking ``tasks``/``data``/``regimes``."""
    if config.data is None:
        return (DEFAULT_BENCH_TASK,) if config.tasks is None else tuple(config.tasks)
    if config.tasks is not None:
        raise ConfigError("give either tasks (embedded or packaged datasets) or data (your own images), not both")
    for regime in config.regimes:
        parse_regime(regime, " in regimes")
    return (_dataset(str(config.data)).name,)


def _entries(config: BenchConfig, weights_dir) -> list[ZooEntry]:
    """The zoo's entries of the grid's models, checked (names, source domains) before any work."""
    by_name = _zoo(os.fspath(config.zoo), weights_dir)
    if config.models is None:
        return list(by_name.values())
    listing = "`linfit zoo list`" if config.zoo == "embedded" else f"the zoo {os.fspath(config.zoo)!r}"
    check_known("zoo model", config.models, by_name, listing)
    return [by_name[name] for name in config.models]


def units(config: BenchConfig, *, weights_dir=None) -> list[Unit]:
    """Every unit of the grid: one ``"scores"`` unit (the scores its parts) and one ``"finetune"`` unit per
    (model, task, regime, seed); their configs hold the grid coordinates (with the model's ``architecture``),
    the zoo's and data's identities (``zoo_identity``, ``data_identity``; absent for the embedded zoo and named
    tasks) and the settings they depend on.

    Raises:
      ConfigError: both ``tasks`` and ``data``, a zoo file breaking its rules, a score reading source images
        the zoo's models lack. UnknownNameError: an unknown score or model. DatasetError: unreadable ``data``, a
        malformed regime.
    """
    registered = [score_registry.get(name) for name in config.scores]  # fail early on unknown names
    entries = _entries(config, weights_dir)
    check_source_domains(entries, registered)
    tasks = _tasks(config)
    identity = {"zoo": zoo_identity(config.zoo),
                "data": None if config.data is None else data_identity(_dataset(str(config.data)))}
    identity = {k: v for k, v in identity.items() if v is not None}
    grid = []  # task-major, so (task, regime, seed) groups complete one after another and reports grow as it runs
    for task in tasks:
        for regime in config.regimes:
            for seed in config.seeds:
                for entry in entries:
                    ident = {"model": entry.name, "architecture": entry.architecture, "task": task,
                             "regime": regime, "seed": seed, "reference": entry.reference, **identity}
                    scoring = {**ident, "per_class": config.per_class, "head_samples": config.head_samples}
                    grid.append(Unit(unit_key("scores", scoring), "scores", scoring, parts=tuple(config.scores)))
                    tuning = {**ident, **config.finetune_setting()}
                    grid.append(Unit(unit_key("finetune", tuning), "finetune", tuning))
    return grid


@functools.lru_cache(maxsize=8)
def _task(task: str, regime: str, seed: int, max_train_per_class: int | None, data: str | None):
    if data is None:
        loaded = load_task(f"{task}:{regime}", seed=seed)
    else:
        loaded = load_task(TaskSpec(task, regime), seed=seed, dataset=_dataset(data))
    if max_train_per_class is not None and regime == "full":
        train = loaded.scoring_set(per_class=max_train_per_class, seed=seed)
    else:
        train = loaded.train
    return loaded, train


@functools.lru_cache(maxsize=8)
def _task_inputs(task: str, regime: str, seed: int, per_class: int, data: str | None) -> TaskInputs:
    loaded, _ = _task(task, regime, seed, None, data)
    subset = loaded.scoring_set(per_class=per_class, seed=seed)
    return TaskInputs(subset.x, subset.y, seed=seed)


def _data(config: BenchConfig) -> str | None:
    return None if config.data is None else str(config.data)


def _compute_scores(unit: Unit, config: BenchConfig, weights_dir) -> dict:
    """``{score: {"scores": {score: value}, "timings": {score: seconds}}}`` for the scores ``unit.parts``."""
    cfg = unit.config
    task_inputs = _task_inputs(cfg["task"], cfg["regime"], cfg["seed"], config.per_class, _data(config))
    entry = _zoo(os.fspath(config.zoo), weights_dir)[cfg["model"]]
    model, variables = entry.load()
    registered = [score_registry.get(name) for name in unit.parts]
    needs = set().union(*(s.needs for s in registered))
    source = None
    if needs & SOURCE_INPUTS:
        source_x, source_y = source_sample(entry.source_domain, seed=cfg["seed"])
        source = (entry.preprocessing.prepare(source_x), source_y)
    watch = Stopwatch().start()
    inputs, input_seconds = extract_inputs(model, variables, entry.preprocessing.prepare(task_inputs.x), needs,
                                           task=task_inputs, source_data=source, seed=cfg["seed"],
                                           model_name=cfg["model"], task_name=f"{cfg['task']}:{cfg['regime']}",
                                           head_samples=config.head_samples)
    records = {}
    for score in registered:
        start = time.perf_counter()
        value = score(task_inputs.labels, **inputs)
        seconds = time.perf_counter() - start + sum(input_seconds[k] for k in score.needs)
        records[score.name] = {"scores": {score.name: value}, "timings": {score.name: seconds}}
    compile_seconds = watch.stop().compile_seconds
    for record in records.values():  # one extraction serves every part computed together: its compile time, once
        record["compile_seconds"] = compile_seconds
        record["computed_with"] = sorted(records)
    return records


def _compute_finetune(unit: Unit, config: BenchConfig, weights_dir) -> dict:
    cfg = unit.config
    loaded, train = _task(cfg["task"], cfg["regime"], cfg["seed"], config.max_train_per_class, _data(config))
    entry = _zoo(os.fspath(config.zoo), weights_dir)[cfg["model"]]
    model, variables = entry.load()
    prepare = entry.preprocessing.prepare
    return finetune_record(model, variables, prepare(train.x), train.y, prepare(loaded.test.x), loaded.test.y,
                           config=config.finetune_config(cfg["seed"]), learning_rates=config.learning_rates,
                           seeds=config.finetune_seeds, protocol=config.protocol, num_classes=loaded.num_classes)


def run_bench(config: BenchConfig, store: ResultStore, *, shard: tuple[int, int] = (0, 1), weights_dir=None,
              progress: bool = False) -> int:
    """Compute and store every unit (and every score) of ``config`` that ``store`` lacks, this shard's share.
    Returns how many units were computed (a scores unit that only lacked some scores counts once).

    Raises:
      ConfigError: an empty grid, or what ``units`` raises (checked before any unit is computed).
    """
    if (config.tasks is not None and not config.tasks) or not config.regimes or not config.seeds:
        raise ConfigError("the benchmark grid is empty: give at least one task, regime and seed")

    def compute(unit: Unit) -> dict:
        if unit.kind == "scores":
            return _compute_scores(unit, config, weights_dir)
        return _compute_finetune(unit, config, weights_dir)

    return run_units(store, units(config, weights_dir=weights_dir), compute, shard=shard, progress=progress)
