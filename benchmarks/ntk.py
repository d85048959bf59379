"""Benchmark the empirical-NTK implementations and ``"auto"``'s pick: time and peak memory per configuration.

Models (32x32x3 inputs, 10 logits, eval mode; ``linfit.models`` when importable, otherwise tiny flax.linen
stand-ins defined here):

* ``small_cnn``: ``linfit.models`` "small_cnn" (width 16, 24k parameters);
* ``cifar_resnet8``: ``linfit.models`` "cifar_resnet8" (78k parameters);
* ``cnn94k``: "small_cnn" with width 32 (94,538 parameters);
* ``conv_dense``: 5x5 conv (16) -> 2x2 max pool -> Dense(256) -> Dense(10) (806,858 parameters).

Default rows: ``small_cnn`` and ``cifar_resnet8`` at N = 256, 512, 1024, traced and untraced; ``cnn94k``
untraced at N = 256 and 512 and traced at 512; ``conv_dense`` untraced at N = 256. ``--quick``: every model at
N = 32, traced and untraced. ``--models/--sizes/--kernels`` replace the grid by their product. ``x2=None``
throughout. Every implementation ("jacobian", "products", "structured", "auto") runs in its own subprocess
so memory peaks do not mix:

* time: median of ``--repeats`` calls after one warm-up call (the compile, reported separately);
* peak memory: the device's ``peak_bytes_in_use`` when the backend reports it (GPU/TPU), otherwise the
  process's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus the resident set
  before the first NTK call (CPU: includes XLA's compile-time memory).

Prints a Markdown table with each implementation's time over the fastest exact one of its row group, and
for ``auto`` its pick.

    python benchmarks/ntk.py --quick
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
MODELS = ("small_cnn", "cifar_resnet8", "cnn94k", "conv_dense")
#: The default grid: (model, N, traced).
GRID = (
    *[(m, n, t) for m in ("small_cnn", "cifar_resnet8") for n in (256, 512, 1024) for t in (True, False)],
    ("cnn94k", 256, False),
    ("cnn94k", 512, False),
    ("cnn94k", 512, True),
    ("conv_dense", 256, False),
)


def _fallback_model(name: str):
    """Tiny flax.linen models used when ``linfit.models`` is unavailable."""
    import flax.linen as nn

    class TinyCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            for width in (16, 32):
                x = nn.avg_pool(
                    nn.relu(nn.Conv(width, (3, 3))(x)), (2, 2), strides=(2, 2)
                )
            return nn.Dense(10)(x.mean(axis=(1, 2)))

    class TinyResNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(
                nn.BatchNorm(use_running_average=not train)(
                    nn.Conv(16, (3, 3), use_bias=False)(x)
                )
            )
            for width in (16, 32, 64):
                stride = 1 if width == 16 else 2
                h = nn.Conv(width, (3, 3), strides=stride, use_bias=False)(x)
                h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
                h = nn.BatchNorm(use_running_average=not train)(
                    nn.Conv(width, (3, 3), use_bias=False)(h)
                )
                if x.shape[-1] != width or stride != 1:
                    x = nn.Conv(width, (1, 1), strides=stride, use_bias=False)(x)
                x = nn.relu(x + h)
            return nn.Dense(10)(x.mean(axis=(1, 2)))

    return {"small_cnn": TinyCNN, "cifar_resnet8": TinyResNet}[name]()


def _conv_dense():
    """5x5 conv (16, VALID) -> ReLU -> 2x2 max pool -> Dense(256) -> ReLU -> Dense(10): 806,858 parameters."""
    import flax.linen as nn

    class ConvDense(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            return nn.Dense(10)(nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1))))

    return ConvDense()


def _apply_fn(name: str):
    """``(f, params, source)`` with ``f(params, x [N, 32, 32, 3]) -> [N, 10]`` in eval mode."""
    import jax
    import jax.numpy as jnp

    x = jnp.zeros((1, 32, 32, 3))
    if name == "conv_dense":
        model = _conv_dense()
        params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
        return (lambda p, x: model.apply({"params": p}, x)), params, "benchmark model"
    try:
        from linfit import models

        kwargs = {"width": 32} if name == "cnn94k" else {}
        model = models.create("small_cnn" if name == "cnn94k" else name, num_classes=10, **kwargs)
        f, params = models.logits_fn(
            model, models.init(model, jax.random.PRNGKey(0), x)
        )
        return f, params, "linfit.models"
    except ImportError:
        model = _fallback_model("small_cnn" if name == "cnn94k" else name)
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
        state = {k: v for k, v in variables.items() if k != "params"}
        return (
            (lambda p, x: model.apply({"params": p, **state}, x)),
            variables["params"],
            "benchmark stand-in",
        )


def worker(model: str, impl: str, n: int, traced: bool, repeats: int) -> dict:
    """Run one configuration in this process; returns timings and memory."""
    import resource

    import jax

    from linfit.ntk import empirical_ntk_fn

    f, params, source = _apply_fn(model)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 32, 32, 3))
    ntk_fn = empirical_ntk_fn(
        f, trace_axes=(-1,) if traced else (), implementation=impl
    )
    pick = ntk_fn.resolve_auto(x, None, params) if impl == "auto" else impl
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    jax.block_until_ready(ntk_fn(x, None, params))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(ntk_fn(x, None, params))
        times.append(time.perf_counter() - start)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        peak_mb, how = stats["peak_bytes_in_use"] / 2**20, "device peak"
    else:
        peak_mb, how = (
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
            "host RSS delta",
        )
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    return {
        "time_s": statistics.median(times),
        "compile_s": compile_s - statistics.median(times),
        "peak_mb": peak_mb,
        "memory": how,
        "params": n_params,
        "source": source,
        "device": jax.devices()[0].device_kind,
        "pick": pick,
    }


def run_config(model, impl, n, traced, repeats, timeout) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        model,
        impl,
        str(n),
        str(int(traced)),
        "--repeats",
        str(repeats),
    ]
    try:
        proc = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ.copy(),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout}s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {
            "error": (
                "OOM"
                if "RESOURCE_EXHAUSTED" in proc.stderr or proc.returncode == -9
                else last
            )[:80]
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="N = 32 only, every model, traced and untraced"
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="replace the default grid's sizes")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="replace the default grid's models")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument(
        "--kernels", nargs="+", choices=("traced", "untraced"), help="replace the default grid's kernels"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--timeout", type=int, default=900, help="seconds per configuration"
    )
    parser.add_argument(
        "--worker",
        nargs=4,
        metavar=("MODEL", "IMPL", "N", "TRACED"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.worker:
        model, impl, n, traced = args.worker
        print(json.dumps(worker(model, impl, int(n), bool(int(traced)), args.repeats)))
        return

    if args.quick or args.sizes or args.models or args.kernels:
        grid = [
            (m, n, k == "traced")
            for m in args.models or MODELS
            for n in ([32] if args.quick else args.sizes or [256, 512, 1024])
            for k in args.kernels or ("traced", "untraced")
        ]
    else:
        grid = list(GRID)
    impls = list(args.impls)
    rows = [
        "| model | params | N | kernel | implementation | time (s) | compile (s) | peak (MiB) | time / best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = set()
    for model, n, traced in grid:
        kernel = "traced [N,N]" if traced else "untraced [N,N,O,O]"
        results = {impl: run_config(model, impl, n, traced, args.repeats, args.timeout) for impl in impls}
        times = [r["time_s"] for name, r in results.items() if name != "auto" and "error" not in r]
        best = min(times) if times else None
        for impl, r in results.items():
            if "error" in r:
                rows.append(f"| {model} | | {n} | {kernel} | {impl} | {r['error']} | | | |")
                continue
            label = f"auto → {r['pick']}" if impl == "auto" else impl
            ratio = f"{r['time_s'] / best:.2f}" if best else ""
            notes.add(f"{r['device']}; memory = {r['memory']}; models from {r['source']}")
            rows.append(
                f"| {model} | {r['params']:,} | {n} | {kernel} | {label} | {r['time_s']:.4f} | "
                f"{r['compile_s']:.2f} | {r['peak_mb']:.1f} | {ratio} |"
            )
        print("\n".join(rows[-len(results):]), file=sys.stderr, flush=True)
    print("\n".join(rows))
    for note in sorted(notes):
        print(f"\n{note}")


if __name__ == "__main__":
    main()
