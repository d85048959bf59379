"""The engine on an accelerator: NTK time and achieved FLOP/s per implementation, sharded speed-up, `linfit select`.

One script for whoever gets a GPU (or TPU) for a few minutes (issue 14, item 8); nothing in CI depends on it. It
runs every measurement in its own subprocess (a fresh device, memory peaks that do not mix, a time limit each)
and prints a Markdown table ready for ``benchmarks/RESULTS.md``:

* ``ntk``: the traced empirical NTK ``[N, N]`` (``linfit.ntk.empirical_ntk_fn``, one jitted program, the whole
  kernel at once) per implementation (``jacobian``, ``products``, ``structured``, ``auto``) of

  - ``cnn94k``: ``benchmarks/ntk.py``'s CNN (``linfit.models`` ``small_cnn`` width 32, 94,538 parameters,
    32x32x3 inputs, 10 logits) at ``--n-cnn`` samples;
  - ``efficientnet_lite0``: the real backbone (ImageNet weights from the installed package through the
    ``imagenet`` zoo when present, otherwise random weights of the same shapes: the cost does not depend on the
    values) at 224x224x3 with a new 8-way head (the fine-tuning NTK of ``linfit.scores.lgc`` with 8 head rows),
    at ``--n-backbone`` samples (1k-10k);

  time: the median of ``--repeats`` calls after a first call (compile + run, reported as compile); FLOPs: XLA's
  cost analysis of the compiled program (``jax.stages.Compiled.cost_analysis()["flops"]``); achieved FLOP/s =
  FLOPs / time, against the chip's peak (``--peak-tflops``, else ``PEAK_TFLOPS`` by device kind; float32 on
  CUDA cores and TF32 on tensor cores, which XLA uses for float32 matrix products by default on Ampere and
  later); peak device memory where the backend reports it.
* ``sharded``: ``linfit.ntk.kernel`` (``strategy="tiles"``, ``auto`` implementation, ``--memory-budget`` per
  device) of the CNN's NTK on a mesh of one device and of every device present: the speed-up.
* ``select``: ``linfit select`` (the README's first command: embedded zoo, default task and scores) in a fresh
  process, its wall and compile seconds (``--json``).

``select`` runs first, then the NTK rows, then the sharded row, each within ``--timeout`` seconds and all within
``--budget`` (default 450 s); a measurement that does not fit is reported as skipped, one that runs out of device
memory as OOM.

``--quick`` (a CPU smoke test of every code path: about 13 minutes on two shared cores at load 14, most of it
JAX start-up and compilation): the CNN at N = 16, the backbone at N = 2 and 32 px with ``structured`` only, two
host devices for the sharded row, ``select`` on two models and one score.

    python benchmarks/gpu.py                          # about 5-8 minutes on one H100/H200-class GPU
    python benchmarks/gpu.py --n-backbone 4000 --peak-tflops 67
    python benchmarks/gpu.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

IMPLS = ("jacobian", "products", "structured", "auto")
#: Dense peak TFLOP/s by device kind (vendor data sheets, SXM parts): (float32 on CUDA cores, TF32 on tensor cores).
PEAK_TFLOPS = {
    "H200": (67.0, 494.7),
    "H100": (67.0, 494.7),
    "A100": (19.5, 156.0),
    "L4": (30.3, 60.0),
    "A10": (31.2, 62.5),
    "V100": (15.7, None),
    "T4": (8.1, None),
}
HEAD_ROWS = 8


def peak_tflops(device_kind: str, given: float | None) -> tuple[float | None, float | None]:
    """``(float32, tf32)`` peak TFLOP/s of a device: ``given`` for both, else the first key of ``PEAK_TFLOPS``
    that ``device_kind`` contains (e.g. "NVIDIA H200"), else ``(None, None)``."""
    if given is not None:
        return given, given
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return peaks
    return None, None


def _problem(model: str, n: int, size: int):
    """``(f, params, x [n, ...], weights)``: ``f(params, x) -> [n, O]`` in evaluation mode."""
    import jax

    from linfit import models

    key = jax.random.PRNGKey(0)
    if model == "cnn94k":
        net = models.create("small_cnn", num_classes=10, width=32)
        variables, weights = models.init(net, key, jax.numpy.zeros((1, 32, 32, 3))), "random"
        x = jax.random.normal(jax.random.PRNGKey(1), (n, 32, 32, 3))
    else:
        try:
            from linfit.zoo.source import load_zoo

            net, variables = {e.name: e for e in load_zoo("imagenet")}["imagenet/efficientnet_lite0"].load()
            weights = "ImageNet"
        except Exception:  # no weights package installed: the same shapes with random values cost the same
            net = models.create("efficientnet_lite0", num_classes=1000)
            variables, weights = models.init(net, key, jax.numpy.zeros((1, size, size, 3))), "random"
        net, variables = models.replace_head(net, variables, HEAD_ROWS, key, init="lecun_normal")
        x = jax.random.uniform(jax.random.PRNGKey(1), (n, size, size, 3), minval=-1.0, maxval=1.0)
    f, params = models.logits_fn(net, variables)
    return f, params, x, weights


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def _peak_bytes(device) -> float | None:
    stats = device.memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def ntk_worker(model: str, impl: str, n: int, size: int, repeats: int) -> dict:
    """One (model, implementation, N): compile, time, FLOPs of the traced NTK as one jitted program."""
    import jax

    from linfit.ntk import empirical_ntk_fn

    f, params, x, weights = _problem(model, n, size)
    ntk_fn = empirical_ntk_fn(f, trace_axes=(-1,), vmap_axes=0, implementation=impl)
    pick = ntk_fn.resolve_auto(x, None, params) if impl == "auto" else impl
    program = jax.jit(lambda a, p: ntk_fn(a, None, p))
    start = time.perf_counter()
    compiled = program.lower(x, params).compile()
    jax.block_until_ready(compiled(x, params))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x, params))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    device = jax.devices()[0]
    return {"seconds": seconds, "compile_seconds": first - seconds, "flops": _flops(compiled), "pick": pick,
            "params": sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)), "weights": weights,
            "peak_bytes": _peak_bytes(device), "device": device.device_kind, "devices": jax.device_count()}


def sharded_worker(n: int, budget: int, repeats: int) -> dict:
    """The CNN's traced NTK through ``linfit.ntk.kernel`` on one device and on all: seconds each (after a warm-up)."""
    import jax

    from linfit.ntk import empirical_ntk_fn, kernel
    from linfit.ntk.sharding import sample_mesh

    f, params, x, _ = _problem("cnn94k", n, 32)
    ntk_fn = empirical_ntk_fn(f, trace_axes=(-1,), vmap_axes=0)
    out = {"devices": jax.device_count(), "device": jax.devices()[0].device_kind}
    for label, devices in (("one", jax.devices()[:1]), ("all", jax.devices())):
        mesh = sample_mesh(devices)
        kernel(ntk_fn, x, None, params, mesh=mesh, memory_budget_bytes=budget, strategy="tiles")  # compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            kernel(ntk_fn, x, None, params, mesh=mesh, memory_budget_bytes=budget, strategy="tiles")
            times.append(time.perf_counter() - start)
        out[label] = statistics.median(times)
    return out


def _run(argv: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run this script's worker ``argv`` in a subprocess; its last stdout line is JSON, else ``{"error": ...}``."""
    if timeout < 10:
        return {"error": "skipped: --budget spent"}
    try:
        done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": "OOM" if "RESOURCE_EXHAUSTED" in done.stderr or "out of memory" in done.stderr
                else tail[:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _select(quick: bool, timeout: float) -> dict:
    if timeout < 10:
        return {"error": "skipped: --budget spent"}
    argv = ["-m", "linfit.cli", "select", "--json", "--quiet", "--plot", ""]
    if quick:
        argv += ["--models", "resnet8/generalist", "resnet8/mnist/scratch", "--scores", "lfc", "--per-class", "3"]
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    result = json.loads(done.stdout)
    return {"process_seconds": time.perf_counter() - start, "wall_seconds": result["wall_seconds"],
            "compile_seconds": result["compile_seconds"], "models": len(result["models"])}


def _cell(value, spec: str) -> str:
    return "–" if value is None or value != value else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cnn", type=int, default=4096, help="samples of the CNN's NTK (default 4096)")
    parser.add_argument("--n-backbone", type=int, default=1000, help="samples of EfficientNet-Lite0's NTK (1k-10k)")
    parser.add_argument("--size", type=int, default=224, help="EfficientNet-Lite0's input side in pixels")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the chip's peak TFLOP/s (default: PEAK_TFLOPS by device kind)")
    parser.add_argument("--memory-budget", type=float, default=8.0, help="GiB per device of the sharded row")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per measurement (each a subprocess)")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds for the whole script (default 450): later measurements get what is left")
    parser.add_argument("--quick", action="store_true", help="a CPU smoke test (module docstring)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        kind = job.pop("kind")
        print(json.dumps(ntk_worker(**job) if kind == "ntk" else sharded_worker(**job)))
        return
    backbone_impls = args.impls
    if args.quick:
        args.n_cnn, args.n_backbone, args.size, args.repeats, args.memory_budget = 16, 2, 32, 1, 1.0
        args.timeout, args.budget, backbone_impls = max(args.timeout, 300.0), max(args.budget, 1800.0), ["structured"]
    started = time.perf_counter()

    def left(limit: float) -> float:
        return min(limit, args.budget - (time.perf_counter() - started))

    select = _select(args.quick, left(4 * args.timeout))  # first: the main job's number is never cut by the budget
    print(f"[{time.perf_counter() - started:6.0f} s] select: {select}", file=sys.stderr)
    rows = []
    problems = (("cnn94k", args.n_cnn, args.impls), ("efficientnet_lite0", args.n_backbone, backbone_impls))
    for model, n, impls in problems:
        for impl in impls:
            job = {"kind": "ntk", "model": model, "impl": impl, "n": n, "size": args.size, "repeats": args.repeats}
            rows.append((model, n, impl, _run(["--worker", json.dumps(job)], left(args.timeout))))
            print(f"[{time.perf_counter() - started:6.0f} s] ntk {model} N={n} {impl}: {rows[-1][3]}", file=sys.stderr)
    job = {"kind": "sharded", "n": args.n_cnn, "budget": int(args.memory_budget * 2**30), "repeats": args.repeats}
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if args.quick else None
    sharded = _run(["--worker", json.dumps(job)], left(args.timeout), env)
    print(f"[{time.perf_counter() - started:6.0f} s] sharded: {sharded}", file=sys.stderr)

    kind = next((r["device"] for *_, r in rows if "device" in r), "unknown device")
    fp32, tf32 = peak_tflops(kind, args.peak_tflops)
    print(f"\nDevice: {kind} x {next((r['devices'] for *_, r in rows if 'devices' in r), '?')}; peak "
          f"{_cell(fp32, '.1f')} TFLOP/s float32, {_cell(tf32, '.1f')} TF32 "
          f"({'--peak-tflops' if args.peak_tflops else 'PEAK_TFLOPS'}); script {time.perf_counter() - started:.0f} s\n")
    print("| model | N | implementation | time (s) | compile (s) | GFLOP | TFLOP/s | % fp32 peak | % TF32 peak "
          "| peak memory (GiB) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for model, n, impl, r in rows:
        if "error" in r:
            print(f"| {model} | {n} | {impl} | {r['error']} | | | | | | |")
            continue
        rate = r["flops"] / r["seconds"] / 1e12
        name = f"{impl} ({r['pick']})" if impl == "auto" else impl
        print(f"| {model} ({r['weights']} weights) | {n} | {name} | {r['seconds']:.3f} | {r['compile_seconds']:.1f} "
              f"| {r['flops'] / 1e9:.1f} | {rate:.3g} | {_cell(fp32 and 100 * rate / fp32, '.1f')} "
              f"| {_cell(tf32 and 100 * rate / tf32, '.1f')} "
              f"| {_cell(r['peak_bytes'] and r['peak_bytes'] / 2**30, '.2f')} |")
    if "error" in sharded:
        print(f"\nSharded `linfit.ntk.kernel` (cnn94k, N = {args.n_cnn}): {sharded['error']}")
    else:
        print(f"\nSharded `linfit.ntk.kernel` (cnn94k, N = {args.n_cnn}, tiles, {args.memory_budget:g} GiB per "
              "device): "
              f"1 device {sharded['one']:.3f} s, {sharded['devices']} devices {sharded['all']:.3f} s, "
              f"speed-up {sharded['one'] / sharded['all']:.2f}x")
    if "error" in select:
        print(f"`linfit select`: {select['error']}")
    else:
        print(f"`linfit select`{' (quick: 2 models, lfc)' if args.quick else ''}: {select['models']} models, "
              f"{select['wall_seconds']:.1f} s inside select ({select['compile_seconds']:.1f} s compiling), "
              f"{select['process_seconds']:.1f} s for the whole process")


if __name__ == "__main__":
    main()
