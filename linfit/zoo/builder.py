"""``build``: train the whole zoo reproducibly and write its weights (float16) and ``manifest.json``.

Resumable: a model (or, for the multi-BN expert, the group of its 8 candidates) whose weight file exists
in ``out_dir`` is skipped. From-generalist experts start from the generalist *as saved* (float16), so a
resumed build and a fresh one produce the same files. The manifest is rebuilt from the metadata of every
weight file in ``out_dir``, with each file's sha256 (checked by :func:`linfit.zoo.load`), after every model
(group) written, so it never records a stale hash for a file rebuilt in a resumed build.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from linfit._io import write_atomic
from linfit import checkpoints
from linfit.errors import UnknownNameError
from linfit.finetune import evaluate
from linfit.zoo import spec
from linfit.data import Dataset, union
from linfit.zoo.data import domain_data
from linfit.zoo.multibn import candidate_variables, train_multibn
from linfit.zoo.registry import MANIFEST, load
from linfit.zoo.train import Trained, train_from_init, train_from_scratch

STORE_DTYPE = "float16"


def _select(only: Iterable[str] | None) -> list[spec.Entry]:
    """The entries to build: those named in ``only`` (model or group names; default all), plus the generalist
    of every selected from-generalist expert, in build order."""
    everything = spec.entries()
    if only is None:
        return everything
    wanted = set(only)
    known = {e.name for e in everything} | {e.group for e in everything}
    unknown = sorted(wanted - known)
    if unknown:
        raise UnknownNameError(f"build(only=...): unknown zoo models {unknown}; see linfit.zoo.names()")
    chosen = {e.name for e in everything if e.name in wanted or e.group in wanted}
    chosen |= {f"{e.arch}/generalist" for e in everything if e.name in chosen and e.kind == "from-generalist"}
    return [e for e in everything if e.name in chosen]


def _metadata(entry: spec.Entry, seed: int, class_names, accuracy: float, seconds: float, **extra) -> dict:
    arch = spec.ARCHITECTURES[entry.arch]
    return {"name": entry.name, "arch": entry.arch, "base": arch.base, "kwargs": dict(arch.kwargs),
            "kind": entry.kind, "domain": entry.domain, "reference": entry.reference,
            "num_classes": len(class_names), "class_names": list(class_names), "seed": seed,
            "source_accuracy": accuracy, "train_seconds": seconds, **extra}


def _per_domain_accuracy(trained: Trained, domains: list[Dataset]) -> dict[str, float]:
    """The generalist's top-1 accuracy (argmax over all union classes) on each source domain's test split."""
    out, offset = {}, 0
    for d in domains:
        out[d.name] = evaluate(trained.model, trained.variables, d.x_test, d.y_test + offset)["accuracy"]
        offset += d.num_classes
    return out


def build(out_dir, *, seed: int = 0, progress: bool = True, only: Iterable[str] | None = None,
          config: spec.TrainConfig | None = None) -> dict:
    """Train the zoo models missing from ``out_dir`` and (re)write ``out_dir/manifest.json``.

    Args:
      out_dir: folder of the weight files (created if needed); ``linfit/zoo/weights`` holds the committed zoo.
      seed: build seed; every model's seed is ``Entry.seed(seed)``; equal seeds give identical files.
      progress: tqdm bars (models, and epochs within a model).
      only: model names (``"resnet8/mnist/scratch"``) or group names (``"resnet8/multibn"``) to build; a
        from-generalist expert pulls in its generalist. Default: the whole zoo.
      config: the pre-training recipe (default ``TrainConfig()``).

    Returns:
      The manifest dict (also written to ``manifest.json``).
    """
    config = config or spec.TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selected = _select(only)
    cache: dict[str, Dataset] = {}

    def data(name: str) -> Dataset:
        if name not in cache:
            if name == "union":
                cache[name] = union([data(d) for d in spec.source_domains()])
            else:
                cache[name] = domain_data(name, per_domain=config.per_domain, batch_size=config.batch_size, seed=seed)
        return cache[name]

    groups: dict[str, list[spec.Entry]] = {}
    for e in selected:
        groups.setdefault(e.group, []).append(e)
    bar = tqdm(groups.items(), desc="zoo build", disable=not progress)
    for group, members in bar:
        if all((out / e.file_name).exists() for e in members):
            continue
        bar.set_postfix_str(group)
        first = members[0]
        arch = spec.ARCHITECTURES[first.arch]
        model_seed = first.seed(seed)
        start = time.perf_counter()
        if first.kind == "multibn":
            domains = [data(d) for d in spec.source_domains()]
            model, shared, dparams, stats = train_multibn(arch, domains, config, model_seed, progress=progress)
            seconds = time.perf_counter() - start
            for d, dom in enumerate(domains):
                entry = spec.entry(f"{first.arch}/multibn/{dom.name}")
                variables = candidate_variables(shared, dparams, stats, d, dom.num_classes)
                acc = evaluate(model.clone(num_classes=dom.num_classes), variables, dom.x_test, dom.y_test)["accuracy"]
                meta = _metadata(entry, model_seed, dom.class_names, acc, seconds / len(domains),
                                 group_train_seconds=seconds)
                checkpoints.save(out / entry.file_name, variables, metadata=meta, dtype=STORE_DTYPE)
            write_manifest(out, seed=seed, config=config)
            continue
        d = data(first.domain)
        extra = {}
        if first.kind == "from-generalist":
            gen_entry = spec.entry(f"{first.arch}/generalist")
            gen = load(gen_entry.name, weights_dir=out)
            trained = train_from_init(gen.model, gen.variables, d, config, model_seed, progress=progress)
        else:
            trained = train_from_scratch(arch, d, config, model_seed, progress=progress)
            if first.kind == "generalist":
                extra["domain_accuracy"] = _per_domain_accuracy(trained, [data(n) for n in spec.source_domains()])
        meta = _metadata(first, model_seed, d.class_names, trained.test_accuracy, time.perf_counter() - start, **extra)
        checkpoints.save(out / first.file_name, trained.variables, metadata=meta, dtype=STORE_DTYPE)
        write_manifest(out, seed=seed, config=config)
    return write_manifest(out, seed=seed, config=config)


def write_manifest(out_dir, *, seed: int, config: spec.TrainConfig) -> dict:
    """Collect the metadata of every zoo weight file in ``out_dir`` (in ``spec.entries()`` order), its file name
    and sha256 (hex) into ``manifest.json``; ``build_seconds`` sums the models' training times."""
    out = Path(out_dir)
    present = [e for e in spec.entries() if (out / e.file_name).exists()]
    models = [{**checkpoints.load_metadata(out / e.file_name), "file": e.file_name,
               "sha256": checkpoints.file_sha256(out / e.file_name)} for e in present]
    group_seconds = {e.group: m.get("group_train_seconds", m["train_seconds"]) for e, m in zip(present, models, strict=True)}
    manifest = {
        "seed": seed,
        "train_config": config.to_dict(),
        "store_dtype": STORE_DTYPE,
        "architectures": {k: {"base": a.base, "kwargs": dict(a.kwargs)} for k, a in spec.ARCHITECTURES.items()},
        "build_seconds": float(sum(group_seconds.values())),
        "models": models,
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest
