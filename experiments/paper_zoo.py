"""The paper's real zoo: ResNet-101 / DenseNet-169 experts scored (and optionally fine-tuned) on tfds targets.

Deshpande et al. 2021 (arXiv 2102.00084), §5.2 and §5.4: per architecture one ImageNet expert (the reference,
against which gains are measured) plus 7 source-domain experts, each trained from scratch and from the ImageNet
initialisation: 15 per architecture, 30 in all. This script reads their weights from LOCAL torchvision-named
``.safetensors`` files, the target datasets from a LOCAL prepared tfds ``data_dir``, and downloads nothing.
It cannot run on the CPU-only development machine (no weights, no data); ``--dry-run`` checks the configuration
and prints the plan. How to run it on an accelerator: ``docs/paper_zoo.md``.

Weights. ``<weights-dir>/<arch>__<source>__<init>.safetensors`` (``init`` is ``scratch`` or ``from-imagenet``)
and ``<weights-dir>/<arch>__imagenet.safetensors``, each a torchvision state dict (``layer1.0.conv1.weight``,
``fc.weight`` for ResNets, ``features.denseblock1.denselayer1.conv1.weight``, ``classifier.weight`` for
DenseNets; see ``linfit.checkpoints.load_torchvision``). The source head's class count is read from the file.

Units. Every (model, target, regime, seed) gives a ``"scores"`` unit (``linfit.extract.extract_inputs`` on the
scoring subset, at most ``--per-class`` training images per class, then every score) and, with ``--finetune``, a
``"finetune"`` unit (the paper's protocol, ``FinetuneConfig.paper`` with a learning-rate sweep). Units go to the
SQLite store of ``linfit.bench`` with the keys and fields of ``linfit.bench.grid``, so a rerun skips finished
units, ``--shard i/n`` splits the grid over processes or hosts, and ``linfit.bench.report`` reads the store.

Usage::

    python experiments/paper_zoo.py --weights-dir /data/zoo --data-dir /data/tfds --dry-run
    python experiments/paper_zoo.py --weights-dir /data/zoo --data-dir /data/tfds --store zoo.sqlite \\
        --regimes 20shot full --finetune --report report/
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ARCHITECTURES = {"resnet101": "fc", "densenet169": "classifier"}  # arch -> torchvision head module
SOURCES = ("resisc45", "food101", "logo2k", "google_landmarks", "inat2019", "imaterialist", "places365")
INITS = ("scratch", "from-imagenet")
REGIMES = {"5shot": 5, "20shot": 20, "full": None}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: ``linearized_loss`` (NTK of every parameter) is left out by default: see ``ntk_tiles`` and docs/paper_zoo.md.
DEFAULT_SCORES = ("lfc", "lgc", "logme", "leep", "nce", "h_score", "random")
#: Scores that need the candidate's source data (Domain Similarity): not available for the real zoo here.
_SOURCE_DATA_INPUTS = {"source_class_means", "source_class_counts"}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One expert of the zoo: ``name`` (``resnet101/food101/from-imagenet``), its architecture, its weights file
    name, and whether it is the reference (ImageNet) expert."""

    name: str
    arch: str
    file: str
    reference: bool


@dataclasses.dataclass(frozen=True)
class Target:
    """A tfds target dataset: its tfds name and the (train, test) split strings given to ``load_tfds``."""

    tfds_name: str
    train_split: str
    test_split: str


#: The paper's targets that TensorFlow Datasets provides (Magnetic Tile Defects, Cucumber, European Flood Depth
#: and Belga Logos are not in tfds; load them with ``linfit.data.load_image_folder``). Where tfds has no test
#: split the paper's 80/20 random split is replaced by a fixed 80/20 slice.
TARGETS = {
    "uc_merced": Target("uc_merced", "train[:80%]", "train[80%:]"),
    "oxford_flowers102": Target("oxford_flowers102", "train+validation", "test"),
    "oxford_iiit_pet": Target("oxford_iiit_pet", "train", "test"),
    "dtd": Target("dtd", "train+validation", "test"),
    "cassava": Target("cassava", "train+validation", "test"),
    "caltech_birds2011": Target("caltech_birds2011", "train", "test"),
    "cars196": Target("cars196", "train", "test"),
}


def candidates(archs=tuple(ARCHITECTURES), pattern: str | None = None) -> list[Candidate]:
    """The zoo: per architecture the ImageNet expert, then ``SOURCES`` x ``INITS``; ``pattern`` (a regular
    expression searched in the name) keeps a subset."""
    zoo = []
    for arch in archs:
        zoo.append(Candidate(f"{arch}/imagenet", arch, f"{arch}__imagenet.safetensors", True))
        zoo += [Candidate(f"{arch}/{src}/{init}", arch, f"{arch}__{src}__{init}.safetensors", False)
                for src in SOURCES for init in INITS]
    return [c for c in zoo if pattern is None or re.search(pattern, c.name)]


def head_classes(path: Path, arch: str) -> int:
    """The source head's class count, from the ``.safetensors`` header only (nothing else is read)."""
    from safetensors import safe_open

    from linfit.errors import CheckpointError

    key = f"{ARCHITECTURES[arch]}.weight"
    with safe_open(str(path), framework="numpy") as f:
        if key not in f.keys():
            raise CheckpointError(f"{path} has no {key!r}: not a torchvision {arch} state dict")
        return int(f.get_slice(key).get_shape()[0])


def build_model(candidate: Candidate, weights_dir: Path, image_size: int, model_kwargs: dict):
    """``(model, variables)`` of ``candidate`` with its source head, weights loaded strictly from its file.

    The variables template is abstract (``jax.eval_shape``), so the random initialisation never runs."""
    import jax
    import jax.numpy as jnp

    from linfit import checkpoints, models

    path = weights_dir / candidate.file
    model = models.create(candidate.arch, head_classes(path, candidate.arch), **model_kwargs)
    template = jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0),
                                                  jnp.zeros((1, image_size, image_size, 3), jnp.float32)))
    return model, checkpoints.load_torchvision(path, model, template)


def ntk_tiles(arch: str, image_size: int, model_kwargs: dict, head_samples: int | None,
              budget_bytes: int) -> dict[str, tuple[int, int]]:
    """``{input: (P, t)}`` for the NTK inputs ``"ntk_last_conv"`` (LGC) and ``"ntk"`` (every parameter): the
    trained parameter count P and the analytic tile side t for ``budget_bytes`` (``linfit.ntk.tile_size_for_budget``,
    float32, traced kernel, ``head_samples`` or D outputs per sample; ``linfit.ntk.kernel`` starts from it and
    then measures the compiled tile program). A unit computes about ``(N / t)² / 2``
    tiles. Only shapes are traced; nothing is initialised."""
    import jax
    import jax.numpy as jnp

    from linfit import models
    from linfit.ntk import tile_size_for_budget
    from linfit.tree import split_params

    model = models.create(arch, 1000, **model_kwargs)
    params = jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0),
                                                jnp.zeros((1, image_size, image_size, 3), jnp.float32)))["params"]
    outputs = head_samples or params["head"]["kernel"].shape[0]
    body = {k: v for k, v in params.items() if k != "head"}
    subsets = {"ntk_last_conv": split_params(params, models.param_subsets(model, params)["last_conv"])[0],
               "ntk": body}
    plan = {}
    for name, tree in subsets.items():
        count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
        plan[name] = (count, tile_size_for_budget(10**6, outputs_per_sample=outputs, num_params=count, pair_size=1,
                                                  itemsize=4, budget_bytes=budget_bytes))
    return plan


def normalize(x: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` images in ``[0, 1]`` -> torchvision's ImageNet normalisation (what the experts saw)."""
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def regime_indices(labels: np.ndarray, regime: str, seed: int) -> np.ndarray:
    """Training indices of ``regime``: k per class (``"5shot"``, ``"20shot"``) or all (``"full"``)."""
    from linfit.data import kshot_indices

    k = REGIMES[regime]
    return np.arange(labels.size) if k is None else kshot_indices(labels, k, seed=seed, allow_fewer=True)


@functools.lru_cache(maxsize=2)
def load_target(name: str, data_dir: str, image_size: int):
    """The prepared tfds dataset ``name`` resized to ``image_size`` (a ``linfit.data.Dataset``)."""
    from linfit.data import load_tfds

    target = TARGETS[name]
    return load_tfds(target.tfds_name, data_dir=data_dir, split=(target.train_split, target.test_split),
                     size=(image_size, image_size))


def score_record(model, variables, x_train, y_train, *, scores, seed: int, per_class: int,
                 head_samples: int | None, batch_size: int, memory_budget_bytes: int) -> dict:
    """Every score of one model on one task: ``{"scores": {name: value}, "timings": {name: seconds}}``.

    ``x_train [N, H, W, 3]`` (normalised), ``y_train [N]``: the regime's training set; the scores see its scoring
    subset (at most ``per_class`` images per class, the paper's 25). Timings charge each score its inputs."""
    from linfit import scores as score_registry
    from linfit.data import scoring_subset
    from linfit.extract import TaskInputs, extract_inputs

    idx = scoring_subset(y_train, per_class=per_class, seed=seed)
    x, y = x_train[idx], y_train[idx]
    registered = [score_registry.get(name) for name in scores]
    needs = set().union(*(s.needs for s in registered))
    inputs, seconds = extract_inputs(model, variables, x, needs, task=TaskInputs(x, y, seed=seed), seed=seed,
                                     head_samples=head_samples, batch_size=batch_size,
                                     memory_budget_bytes=memory_budget_bytes)
    values, timings = {}, {}
    for score in registered:
        start = time.perf_counter()
        values[score.name] = score(y, **inputs)
        timings[score.name] = time.perf_counter() - start + sum(seconds[k] for k in score.needs)
    return {"scores": values, "timings": timings}


def finetune_record(model, variables, x_train, y_train, x_test, y_test, *, num_classes: int, seed: int,
                    epochs: int, batch_size: int, learning_rates) -> dict:
    """The paper's fine-tuning (§5.5) with a learning-rate sweep; the record of ``linfit.bench.grid``."""
    from linfit.bench.grid import finetune_record, paper_finetune_config

    return finetune_record(model, variables, x_train, y_train, x_test, y_test,
                           config=paper_finetune_config(epochs, batch_size, seed), learning_rates=learning_rates,
                           num_classes=num_classes, progress=True)


def units(args) -> list:
    """The grid as ``linfit.bench.runner.Unit`` s, keyed and described as ``linfit.bench.grid`` does."""
    from linfit.bench.runner import Unit

    grid = []
    for cand in candidates(args.archs, args.models):
        for target in args.targets:
            for regime in args.regimes:
                for seed in args.seeds:
                    ident = {"model": cand.name, "task": target, "regime": regime, "seed": seed,
                             "reference": cand.reference}
                    grid.append(Unit(f"scores/{cand.name}/{target}:{regime}/seed{seed}", "scores",
                                     {**ident, "scores": list(args.scores), "per_class": args.per_class,
                                      "head_samples": args.head_samples, "image_size": args.image_size}))
                    if args.finetune:
                        grid.append(Unit(f"finetune/{cand.name}/{target}:{regime}/seed{seed}", "finetune",
                                         {**ident, "epochs": args.epochs, "batch_size": args.ft_batch_size,
                                          "learning_rates": list(args.lrs), "image_size": args.image_size}))
    return grid


def compute_unit(unit, args) -> dict:
    """Load the unit's model and data and compute its record."""
    cfg = unit.config
    cand = next(c for c in candidates(args.archs) if c.name == cfg["model"])
    data = load_target(cfg["task"], str(args.data_dir), args.image_size)
    idx = regime_indices(data.y_train, cfg["regime"], cfg["seed"])
    x_train, y_train = normalize(data.x_train[idx]), data.y_train[idx]
    model, variables = build_model(cand, args.weights_dir, args.image_size, args.model_kwargs)
    if unit.kind == "scores":
        return score_record(model, variables, x_train, y_train, scores=args.scores, seed=cfg["seed"],
                            per_class=args.per_class, head_samples=args.head_samples, batch_size=args.batch_size,
                            memory_budget_bytes=int(args.memory_budget_gb * 2**30))
    return finetune_record(model, variables, x_train, y_train, normalize(data.x_test), data.y_test,
                           num_classes=data.num_classes, seed=cfg["seed"], epochs=args.epochs,
                           batch_size=args.ft_batch_size, learning_rates=args.lrs)


def check_config(args) -> list[str]:
    """Problems that would stop a run, without loading any model or dataset (an empty list: ready)."""
    from linfit import scores as score_registry
    from linfit.errors import LinfitError

    problems = []
    for name in args.scores:
        try:
            if set(score_registry.get(name).needs) & _SOURCE_DATA_INPUTS:
                problems.append(f"score {name!r} needs the experts' source data, which this experiment lacks")
        except LinfitError as err:
            problems.append(str(err))
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        problems.append(f"unknown targets {unknown}; known: {sorted(TARGETS)}")
    if not candidates(args.archs, args.models):
        problems.append(f"--models {args.models!r} selects no model of {list(args.archs)}")
    if not args.weights_dir.is_dir():
        problems.append(f"weights dir {args.weights_dir} does not exist")
    if not args.data_dir.is_dir():
        problems.append(f"tfds data_dir {args.data_dir} does not exist")
    for target in args.targets:
        if target in TARGETS and args.data_dir.is_dir():
            folder = args.data_dir / TARGETS[target].tfds_name.split(":")[0]
            if not folder.is_dir():
                problems.append(f"target {target}: {folder} not found (prepare it: tfds build "
                                f"{TARGETS[target].tfds_name} --data_dir={args.data_dir})")
    return problems


def weight_problems(args, check_weights: bool) -> tuple[dict[str, int], list[str]]:
    """``({model: source classes}, problems)`` from the weight files' headers (and, with ``check_weights``, a
    strict load of every file against the model)."""
    from safetensors import SafetensorError

    from linfit.errors import LinfitError

    classes, problems = {}, []
    if not args.weights_dir.is_dir():
        return classes, problems
    for cand in candidates(args.archs, args.models):
        path = args.weights_dir / cand.file
        if not path.is_file():
            problems.append(f"{cand.name}: missing {path}")
            continue
        try:
            classes[cand.name] = head_classes(path, cand.arch)
            if check_weights:
                build_model(cand, args.weights_dir, args.image_size, args.model_kwargs)
        except (LinfitError, SafetensorError, OSError) as err:
            problems.append(f"{cand.name}: {err}")
    return classes, problems


def print_plan(args, classes: dict[str, int], grid: list) -> None:
    zoo = candidates(args.archs, args.models)
    print(f"zoo: {len(zoo)} models from {args.weights_dir}")
    for cand in zoo:
        mark = " (reference)" if cand.reference else ""
        print(f"  {cand.name:42s} {cand.file:52s} source classes: {classes.get(cand.name, '?')}{mark}")
    print(f"targets from tfds data_dir {args.data_dir}, images resized to {args.image_size}x{args.image_size}:")
    for target in args.targets:
        if target in TARGETS:
            t = TARGETS[target]
            print(f"  {target:20s} tfds {t.tfds_name!r} train={t.train_split!r} test={t.test_split!r}")
    kinds = {kind: sum(u.kind == kind for u in grid) for kind in ("scores", "finetune")}
    head = "exact head average" if args.head_samples is None else f"{args.head_samples} random head rows"
    print(f"regimes {list(args.regimes)}, seeds {list(args.seeds)}; {kinds['scores']} scores units, "
          f"{kinds['finetune']} finetune units; shard {args.shard[0]}/{args.shard[1]}; store {args.store}")
    print(f"scores {list(args.scores)} on <= {args.per_class} images per class; NTK scores with {head}, "
          f"tiles within {args.memory_budget_gb} GiB")
    from linfit import scores as score_registry

    needs = set().union(*(score_registry.get(n).needs for n in args.scores if n in score_registry.names()))
    for arch in args.archs:
        for name, (count, tile) in ntk_tiles(arch, args.image_size, args.model_kwargs, args.head_samples,
                                             int(args.memory_budget_gb * 2**30)).items():
            if name in needs:
                print(f"  {arch} {name}: P = {count:,} parameters, tiles of {tile} x {tile} samples "
                      f"(~(N/{tile})²/2 tiles per unit)")
    if args.finetune:
        print(f"fine-tuning: {args.epochs} epochs, batch {args.ft_batch_size}, learning rates {list(args.lrs)}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights-dir", type=Path, required=True, help="folder of torchvision-named .safetensors")
    p.add_argument("--data-dir", type=Path, required=True, help="tfds data_dir holding the prepared targets")
    p.add_argument("--store", type=Path, default=Path("paper_zoo.sqlite"), help="benchmark store (SQLite)")
    p.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    p.add_argument("--models", default=None, help="regular expression selecting zoo models by name")
    p.add_argument("--targets", nargs="+", default=list(TARGETS))
    p.add_argument("--regimes", nargs="+", default=["20shot", "full"], choices=list(REGIMES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--scores", nargs="+", default=list(DEFAULT_SCORES))
    p.add_argument("--per-class", type=int, default=25, help="scoring images per class (paper: 25)")
    p.add_argument("--head-samples", type=int, default=8,
                   help="random head rows for NTK scores (0: exact average over all D = 2048/1664 outputs)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64, help="forward-pass batch size of the extraction")
    p.add_argument("--memory-budget-gb", type=float, default=4.0, help="memory of one NTK tile")
    p.add_argument("--model-kwargs", type=json.loads, default={},
                   help='JSON overrides of the architecture, e.g. \'{"width": 4}\' (tests only)')
    p.add_argument("--finetune", action="store_true", help="also fine-tune every model (the ground truth)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--ft-batch-size", type=int, default=32)
    p.add_argument("--lrs", nargs="+", type=float, default=[0.01, 0.005, 0.001])
    p.add_argument("--shard", default="0/1", help="i/n: this process computes shard i of n")
    p.add_argument("--report", type=Path, default=None, help="write linfit.bench.report's report here")
    p.add_argument("--dry-run", action="store_true", help="check the configuration, print the plan, run nothing")
    p.add_argument("--check-weights", action="store_true", help="with --dry-run: load every file strictly")
    args = p.parse_args(argv)
    from linfit.bench.store import parse_shard

    args.shard = parse_shard(args.shard)
    args.head_samples = args.head_samples or None
    args.model_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in args.model_kwargs.items()}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    problems = check_config(args)
    classes, weight_issues = weight_problems(args, check_weights=args.dry_run and args.check_weights)
    grid = units(args)
    if args.dry_run:
        print_plan(args, classes, grid)
    problems += weight_issues
    if problems:
        print(f"{len(problems)} problem(s):", *problems, sep="\n  ", file=sys.stderr)
        return 1
    if args.dry_run:
        print("configuration OK (dry run: nothing computed)")
        return 0
    from linfit.bench.report import write_report
    from linfit.bench.runner import run_units
    from linfit.bench.store import ResultStore

    with ResultStore(args.store) as store:
        done = run_units(store, grid, lambda unit: compute_unit(unit, args), shard=args.shard, progress=True)
        print(f"{done} units computed; store {args.store}")
        if args.report is not None and store.keys("finetune"):
            print("report:", write_report(store, args.report))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.exit(main())
