"""Scaling of the tiled, sharded NTK: time and peak memory vs N, vs device count, FLOP/s, and a 10k run.

The small CNN (``linfit.models.create("small_cnn", 10)``, 32x32x3 inputs), traced NTK (``[N, N]``), computed
by :func:`linfit.ntk.kernel` into a ``.npy`` memory map (``--method panels``, the default: Jacobian panels,
:mod:`linfit.ntk.panels`; ``tiles``: per-tile Jacobians; ``auto``: the planner's choice; geometry from
``--budget-mib`` per device). Every configuration runs in its own subprocess; its peak memory is that process's maximum resident
set (``os.wait4`` rusage), so peaks never mix. Modes:

* default: time and peak RSS vs N (1k .. 10k; ``--quick``: 64 .. 256), a least-squares fit of
  ``time ~ N^a`` and ``RSS ~ N^b``, and the largest N whose peak stays under ``--max-rss-gib``; then time vs
  simulated device count 1, 2, 4, 8 at fixed N (``XLA_FLAGS=--xla_force_host_platform_device_count``).
  Simulated CPU devices share the same cores: this measures sharding overhead, not speed-up.
* ``--compare-methods``: ``tiles`` and ``panels`` side by side at each ``--sizes`` N (time ratio, peaks).
* ``--gpu``: achieved FLOP/s of one NTK tile (``cost_analysis()["flops"]`` of the compiled tile over its
  median run time) against ``--peak-tflops`` (runs on any backend; the ratio is meaningful on accelerators).
* ``--n N``: the traced NTK for N samples into a memmap, with each phase's peak RSS checked against
  ``--max-rss-gib`` (default 8), then the linearized training loss two ways: dense (one float64 ``eigh`` of
  the memmap kernel, :func:`linfit.dynamics.linearized_loss_curve`) and matrix-free (Lanczos on traced
  NTK-vector products, :func:`linfit.ntk.large_n.matrix_free_loss_curve`, streaming the Jacobian rows written
  to disk by :func:`linfit.ntk.jacobian_store.jacobian_to_memmap`); prints both curves and their relative
  difference at ``LOSS_STEPS`` gradient-descent steps of size 1/λ_max (λ_max by Lanczos on the kernel), with the
  peak RSS of each phase (NTK, dense reference, Jacobian rows, Lanczos). ``--loss-columns k`` keeps the first
  k output columns in both (one Lanczos run per column);
  ``--vjp-product`` also times one product by ``O`` vjp + ``O`` jvp passes, which needs no stored rows.

    python benchmarks/scaling.py --quick
    python benchmarks/scaling.py --quick --gpu
    python benchmarks/scaling.py --n 10000 --lanczos-iters 64 --budget-mib 5120 --vjp-product
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------- workers
def _setup(n: int, seed: int = 0):
    import jax

    from linfit.models import create, init, logits_fn

    model = create("small_cnn", 10)
    x = jax.random.normal(jax.random.PRNGKey(seed), (n, 32, 32, 3))
    apply_fn, params = logits_fn(model, init(model, jax.random.PRNGKey(seed + 1), x[:1]))
    return apply_fn, params, x


def worker_ntk(args) -> dict:
    """Traced NTK of N samples into a memmap on all (simulated) devices; prints time and geometry."""
    import jax
    import numpy as np

    from linfit.ntk import empirical_ntk_fn, kernel as ntk_kernel
    from linfit.ntk.resumable import sidecar_path

    apply_fn, params, x = _setup(args.n)
    x = np.asarray(x)
    ntk_fn = empirical_ntk_fn(apply_fn)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.npy")
        start = time.perf_counter()
        kernel = ntk_kernel(ntk_fn, x, None, params, output=path, memory_budget_bytes=args.budget_mib * 2**20,
                            strategy=args.method)
        seconds = time.perf_counter() - start
        geometry = json.loads(sidecar_path(path).read_text())["geometry"]
        checksum = float(np.trace(kernel))
    return {"n": args.n, "devices": jax.device_count(), "seconds": seconds, "geometry": geometry,
            "trace": checksum}


def worker_flops(args) -> dict:
    """Achieved FLOP/s of one jitted traced-NTK tile of ``--tile`` x ``--tile`` samples."""
    import jax
    import numpy as np

    from linfit.ntk import empirical_ntk_fn

    apply_fn, params, x = _setup(2 * args.tile)
    ntk_fn = empirical_ntk_fn(apply_fn)
    a, b = x[: args.tile], x[args.tile :]
    ntk_fn(a[:2], b[:2], params)  # input validation, outside jit
    tile = jax.jit(lambda u, v, p: ntk_fn(u, v, p))
    compiled = tile.lower(a, b, params).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"])
    compiled(a, b, params).block_until_ready()
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        compiled(a, b, params).block_until_ready()
        runs.append(time.perf_counter() - start)
    seconds = float(np.median(runs))
    return {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind), "tile": args.tile,
            "flops": flops, "seconds": seconds, "tflops_per_s": flops / seconds / 1e12}


def _phase_peak() -> int:
    """Peak resident set (bytes) since the previous call, then reset (Linux: ``VmHWM``, reset by writing 5 to
    ``/proc/self/clear_refs``), so each phase of one process gets its own peak."""
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return peak


LOSS_STEPS = (1, 10, 100, 1_000, 10_000, 100_000)
"""Times of the --n loss curves, in gradient-descent steps at the stability-limit step size 1/λ_max(Θ)."""


def worker_loss(args) -> dict:
    """Traced NTK of N samples into a memmap and the dense-eigh loss curve; then the matrix-free loss curve from
    Jacobian rows on disk (streamed products), and the time of one vjp/jvp product for comparison. The peak
    RSS of each phase is recorded separately."""
    import jax
    import numpy as np

    from linfit.dynamics import linearized_loss_curve
    from linfit.krylov import lanczos
    from linfit.ntk import empirical_ntk_fn
    from linfit.ntk.jacobian_store import jacobian_to_memmap
    from linfit.ntk.large_n import batched_apply, matrix_free_loss_curve, traced_ntk_vp_fn
    from linfit.ntk import kernel as ntk_kernel

    apply_fn, params, x = _setup(args.n)
    x = np.asarray(x)
    labels = np.random.default_rng(0).integers(0, 10, args.n)
    cols = args.loss_columns
    y = np.eye(10)[labels][:, :cols]  # the dense side; the matrix-free side selects the same columns
    out = {"n": args.n, "devices": jax.device_count(), "columns": cols, "method": args.method, "peaks": {}}
    ntk_fn = empirical_ntk_fn(apply_fn)
    out["peaks"]["setup (imports, inputs)"] = _phase_peak()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        start = time.perf_counter()
        kernel = ntk_kernel(ntk_fn, x, None, params, output=os.path.join(tmp, "k.npy"), strategy=args.method,
                            memory_budget_bytes=args.budget_mib * 2**20, progress=args.progress)
        out["ntk_seconds"] = time.perf_counter() - start
        out["peaks"]["ntk"] = _phase_peak()
        f0 = batched_apply(apply_fn, params, x, args.batch_size)[:, :cols].astype(np.float64)
        start_vector = np.random.default_rng(1).standard_normal(args.n)
        _, tridiagonal, _ = lanczos(lambda v: kernel @ v.astype(np.float32), start_vector, 30)
        lam_max = float(np.linalg.eigvalsh(tridiagonal)[-1])  # extremal Ritz values converge first
        times = np.asarray(LOSS_STEPS, float) / lam_max
        start = time.perf_counter()
        dense = linearized_loss_curve(kernel, y, f0, times)
        out["eigh_seconds"] = time.perf_counter() - start
        out["peaks"]["dense eigh (reference)"] = _phase_peak()
        out["lam_max_over_mean_diag"] = lam_max / float(np.mean(np.diagonal(kernel)))
        del kernel
        os.remove(os.path.join(tmp, "k.npy"))
        start = time.perf_counter()
        rows = jacobian_to_memmap(ntk_fn, x, params, os.path.join(tmp, "j.npy"), progress=args.progress)
        out["jacobian_seconds"] = time.perf_counter() - start
        out["jacobian_gib"] = rows.nbytes / 2**30
        out["peaks"]["Jacobian rows to disk"] = _phase_peak()
        start = time.perf_counter()
        free = matrix_free_loss_curve(apply_fn, params, x, np.eye(10)[labels], times, columns=range(cols),
                                      num_iters=args.lanczos_iters, batch_size=args.batch_size, jacobian=rows)
        out["matrix_free_seconds"] = time.perf_counter() - start
        out["stored_product_seconds"] = out["matrix_free_seconds"] / (cols * args.lanczos_iters)
        out["peaks"]["matrix-free Lanczos"] = _phase_peak()
    if args.vjp_product:
        vp = traced_ntk_vp_fn(apply_fn, params, x, batch_size=args.batch_size)
        v = np.ones(args.n, np.float32)
        vp(v).block_until_ready()
        start = time.perf_counter()
        vp(v).block_until_ready()
        out["vjp_product_seconds"] = time.perf_counter() - start
    out.update(steps=list(LOSS_STEPS), dense=dense.tolist(), matrix_free=free.tolist(),
               max_rel_diff=float(np.max(np.abs(free - dense) / np.abs(dense))))
    return out


WORKERS = {"ntk": worker_ntk, "flops": worker_flops, "loss": worker_loss}


# ------------------------------------------------------------------------------------------------ parent
def run_worker(kind: str, args, *, devices: int | None = None, n: int | None = None) -> tuple[dict | None, int]:
    """Run one configuration in a fresh process; ``(its JSON result or None if it failed, peak RSS bytes)``.

    ``devices`` forces the CPU backend with that many simulated devices.
    """
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if devices is not None:
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    forwarded = ["--budget-mib", str(args.budget_mib), "--tile", str(args.tile), "--repeats", str(args.repeats),
                 "--loss-columns", str(args.loss_columns), "--lanczos-iters", str(args.lanczos_iters),
                 "--batch-size", str(args.batch_size), "--method", args.method]
    forwarded += (["--progress"] if args.progress else []) + (["--vjp-product"] if args.vjp_product else [])
    if args.workdir:
        forwarded += ["--workdir", args.workdir]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--n", str(n or 0), *forwarded]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    stdout = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # os.wait4 reaped it; tell Popen
    rss = usage.ru_maxrss * 1024  # kilobytes on Linux
    if proc.returncode != 0 or not stdout.strip():
        print(f"  {kind} n={n} devices={devices}: failed with exit code {proc.returncode}", file=sys.stderr)
        return None, rss
    return json.loads(stdout.strip().splitlines()[-1]), rss


def fit_power_law(ns, values) -> float:
    """Exponent ``a`` of the least-squares fit ``value ~ c N^a`` in log-log space."""
    import numpy as np

    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def sweep_n(args) -> None:
    ns = args.sizes or ([64, 128, 256] if args.quick else [1000, 2000, 4000, 7000, 10000])
    limit = args.max_rss_gib * 2**30
    print(f"## Traced small-CNN NTK into a memmap vs N (budget {args.budget_mib} MiB per device)\n")
    print("| N | devices | tile (rows x cols) | time (s) | peak RSS (MiB) | within budget |")
    print("|---|---|---|---|---|---|")
    done = []
    for n in ns:
        result, rss = run_worker("ntk", args, n=n)
        if result is None:
            print(f"| {n} | - | - | failed | {rss / 2**20:.0f} | no |")
            continue
        ok = rss <= limit
        rt, ct = result["geometry"]
        print(f"| {n} | {result['devices']} | {rt} x {ct} | {result['seconds']:.2f} | {rss / 2**20:.0f} | "
              f"{'yes' if ok else 'no'} |")
        done.append((n, result["seconds"], rss, ok))
    if len(done) >= 2:
        ns_ok = [d[0] for d in done]
        print(f"\ncost law: time ~ N^{fit_power_law(ns_ok, [d[1] for d in done]):.2f}, "
              f"peak RSS ~ N^{fit_power_law(ns_ok, [d[2] for d in done]):.2f} "
              "(the N^2 kernel dominates time once compile and Jacobians amortise)")
    within = [d[0] for d in done if d[3]]
    print(f"largest N within {args.max_rss_gib} GiB peak RSS: {max(within) if within else 'none'}\n")


def compare_methods(args) -> None:
    """Panels vs per-tile Jacobians side by side at each N (same budget), with the kernels' agreement."""
    ns = args.sizes or ([64, 128] if args.quick else [512, 1024])
    print(f"## Jacobian panels vs per-tile Jacobians (budget {args.budget_mib} MiB per device)\n")
    print("| N | tiles: time (s) | panels: time (s) | speed-up | tiles: peak RSS (MiB) | panels: peak RSS (MiB) "
          "| trace(Θ) relative difference |")
    print("|---|---|---|---|---|---|---|")
    for n in ns:
        runs = {m: run_worker("ntk", argparse.Namespace(**{**vars(args), "method": m}), n=n)
                for m in ("tiles", "panels")}
        (tiles, rss_t), (panels, rss_p) = runs["tiles"], runs["panels"]
        if tiles is None or panels is None:
            print(f"| {n} | failed | | | | | |")
            continue
        diff = abs(panels["trace"] - tiles["trace"]) / abs(tiles["trace"])
        print(f"| {n} | {tiles['seconds']:.1f} | {panels['seconds']:.1f} | {tiles['seconds'] / panels['seconds']:.2f} "
              f"| {rss_t / 2**20:.0f} | {rss_p / 2**20:.0f} | {diff:.1e} |")
    print()


def sweep_devices(args) -> None:
    n = args.device_n or (128 if args.quick else 2000)
    print(f"## Simulated CPU devices, N = {n} (same cores shared: overhead, not speed-up)\n")
    print("| devices | tile (rows x cols) | time (s) | ratio to 1 device | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    base = None
    for devices in (1, 2, 4, 8):
        result, rss = run_worker("ntk", args, devices=devices, n=n)
        if result is None:
            print(f"| {devices} | - | failed | - | {rss / 2**20:.0f} |")
            continue
        base = base or result["seconds"]
        rt, ct = result["geometry"]
        print(f"| {devices} | {rt} x {ct} | {result['seconds']:.2f} | {result['seconds'] / base:.2f} | "
              f"{rss / 2**20:.0f} |")
    print()


def gpu_flops(args) -> None:
    result, rss = run_worker("flops", args)
    if result is None:
        return
    print(f"## Achieved FLOP/s, one traced NTK tile {result['tile']} x {result['tile']} "
          f"({result['backend']}: {result['device']})\n")
    print(f"XLA cost analysis: {result['flops'] / 1e9:.2f} GFLOP per tile; median {result['seconds'] * 1e3:.2f} ms"
          f" -> {result['tflops_per_s']:.3f} TFLOP/s = {100 * result['tflops_per_s'] / args.peak_tflops:.1f}% of "
          f"the {args.peak_tflops} TFLOP/s peak; peak RSS {rss / 2**20:.0f} MiB\n")


def large_n(args) -> None:
    result, _ = run_worker("loss", args, n=args.n)  # the worker resets its high-water mark per phase
    if result is None:
        return
    limit = args.max_rss_gib * 2**30
    peaks = result["peaks"]
    rss = max(peaks.values())
    print(f"## N = {result['n']}: traced NTK into a memmap, dense vs matrix-free loss "
          f"({result['columns']} of 10 output columns, {args.lanczos_iters} Lanczos steps)\n")
    print(f"NTK ({result['method']}) {result['ntk_seconds']:.1f} s, eigh {result['eigh_seconds']:.1f} s, Jacobian "
          f"rows to disk {result['jacobian_seconds']:.1f} s ({result['jacobian_gib']:.1f} GiB), matrix-free Lanczos "
          f"{result['matrix_free_seconds']:.1f} s ({result['stored_product_seconds']:.2f} s per streamed product"
          + (f"; one vjp/jvp product {result['vjp_product_seconds']:.1f} s" if "vjp_product_seconds" in result else "")
          + f"); λ_max(Θ) / mean diag(Θ) = {result['lam_max_over_mean_diag']:.0f}\n")
    print("| phase | peak RSS (GiB) | within the budget |")
    print("|---|---|---|")
    for phase, peak in peaks.items():
        print(f"| {phase} | {peak / 2**30:.2f} | {'yes' if peak <= limit else 'NO'} ({args.max_rss_gib} GiB) |")
    print(f"| whole process | {rss / 2**30:.2f} | {'yes' if rss <= limit else 'NO'} |\n")
    print("| GD steps at step size 1/λ_max | dense eigh loss | matrix-free loss | relative difference |")
    print("|---|---|---|---|")
    for steps, d, m in zip(result["steps"], result["dense"], result["matrix_free"]):
        print(f"| {steps:,} | {d:.6g} | {m:.6g} | {abs(m - d) / abs(d):.2e} |")
    print(f"\nmax relative difference: {result['max_rel_diff']:.2e}\n")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--gpu", action="store_true", help="achieved FLOP/s of one tile vs --peak-tflops")
    p.add_argument("--n", type=int, default=None, help="the large-N mode: NTK + dense vs matrix-free loss")
    p.add_argument("--budget-mib", type=int, default=512,
                   help="per-device memory budget of linfit.ntk.kernel (tiles: XLA's measured memory of the "
                        "compiled tile program; panels: Jacobian blocks and the measured work space)")
    p.add_argument("--max-rss-gib", type=float, default=8.0, help="peak-memory budget of one configuration")
    p.add_argument("--peak-tflops", type=float, default=67.0, help="device peak (H100 SXM float32: 67)")
    p.add_argument("--tile", type=int, default=None, help="samples per tile side for --gpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loss-columns", type=int, default=1, help="output columns in the --n loss (1..10)")
    p.add_argument("--lanczos-iters", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256, help="samples per chunk of the matrix-free product")
    p.add_argument("--workdir", default=None, help="directory for the memmaps (default: system temp)")
    p.add_argument("--method", default="panels", choices=["panels", "tiles", "auto"],
                   help="linfit.ntk.kernel's strategy: Jacobian panels (default), per-tile Jacobians, or auto")
    p.add_argument("--compare-methods", action="store_true",
                   help="time --method tiles and panels side by side at each --sizes N")
    p.add_argument("--vjp-product", action="store_true",
                   help="--n mode: also time one traced product by vjp/jvp passes (no stored Jacobian)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="N values of the default sweep")
    p.add_argument("--device-n", type=int, default=None, help="N of the simulated-device sweep")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tile is None:
        args.tile = 32 if args.quick else 512
    if not 1 <= args.loss_columns <= 10:
        p.error("--loss-columns must be in 1..10")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    if args.n is not None:
        large_n(args)
    elif args.compare_methods:
        compare_methods(args)
    elif args.gpu:
        gpu_flops(args)
    else:
        sweep_n(args)
        sweep_devices(args)


if __name__ == "__main__":
    main()
