"""linfit against neural-tangents 0.6.5: the same functions, parameters and inputs in two environments.

neural-tangents needs an old, pinned JAX, so it runs in its own interpreter (``--nt-python``) while linfit
runs in this one. The pinned environment (CPU, Python 3.11; never install it into linfit's environment)::

    python3 -m venv /tmp/ntenv
    /tmp/ntenv/bin/pip install -r benchmarks/nt_requirements.txt

``nt_requirements.txt`` is the resolved set of ``pip install "jax==0.4.23" "jaxlib==0.4.23" "numpy<2"
"scipy<1.13" "tensorflow==2.15.*" "neural-tangents==0.6.5"`` (the recipe of ``tests/fixtures/README.md``;
neural-tangents 0.6.5 needs JAX internals removed after 0.4.x, and jax 0.4.23 needs ``scipy<1.13``). Where a
pip constraints file caps versions, run the install with ``PIP_CONSTRAINT=`` (empty). The models are plain ``jax.numpy`` / ``jax.lax``
functions defined here (importable by both environments), with parameters and inputs drawn by NumPy from
fixed seeds, so both libraries see bit-identical arrays:

* ``cnn94k``: 3x3 conv 32 -> ReLU -> 2x2 max pool -> 3x3 conv 64 -> ReLU -> 2x2 max pool -> 3x3 conv 128
  -> ReLU -> global average pool -> Dense 10 (94,538 parameters; linfit's ``small_cnn`` with width 32);
* ``conv_dense``: 5x5 conv 16 (VALID) -> ReLU -> 2x2 max pool -> Dense 256 -> ReLU -> Dense 10
  (806,858 parameters).

linfit's Jacobian contraction runs these very functions. Its structured derivatives factorise Flax
``nn.Conv``/``nn.Dense`` calls (neural-tangents' work on any jaxpr), so linfit's structured, auto and
``kernel`` runs use each function's Flax twin (:func:`flax_twin`: the same layers on the same parameter tree);
the error column checks that every kernel equals neural-tangents'.

Inputs ``x [N, 32, 32, 3]`` float32, ``x2=None``, ``vmap_axes=0``; traced = ``trace_axes=(-1,)`` (kernel
``[N, N]``), untraced = ``trace_axes=()`` (``[N, N, 10, 10]``). Every (library, implementation) runs in its
own subprocess, the two libraries alternating within a row (nt jacobian, linfit jacobian, nt structured,
linfit structured, linfit auto): one warm-up call (compile; reported separately), then the median of
``--repeats`` calls of the jitted kernel. Each worker saves its kernel; the parent reports the largest
relative Frobenius error of every kernel against neural-tangents' Jacobian contraction of the same run. A last
linfit process runs ``linfit.ntk.kernel`` (the large-N entry point, ``"auto"`` kernel function) once under
``--budget-gib``, planning included, and reports its plan and its peak RSS growth over the budget (the
planner's memory estimate must hold).

    python benchmarks/vs_neural_tangents.py --quick
    python benchmarks/vs_neural_tangents.py                      # the rows of issue 14's table
    python benchmarks/vs_neural_tangents.py --rows cnn94k:256:untraced conv_dense:64:untraced

Ratios printed: linfit jacobian / nt jacobian, linfit structured / nt structured (blank when either
failed) and auto / best (linfit auto over the fastest exact kernel of the row, either library).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

#: Issue 14's table: (model, N, traced).
ROWS = (
    ("cnn94k", 256, False),
    ("cnn94k", 512, False),
    ("cnn94k", 512, True),
    ("conv_dense", 256, False),
)
QUICK_ROWS = (("cnn94k", 32, False), ("cnn94k", 32, True), ("conv_dense", 32, False))
#: The order of the subprocesses in a row: the libraries alternate.
RUNS = (
    ("nt", "jacobian"),
    ("linfit", "jacobian"),
    ("nt", "structured"),
    ("linfit", "structured"),
    ("linfit", "auto"),
    ("linfit", "kernel"),
)
#: Per-process memory budget of the ``linfit.ntk.kernel`` run (``--budget-gib``): below the whole untraced
#: kernel's program at N = 512, so the planner has to tile.
DEFAULT_BUDGET_GIB = 2.0
DEFAULT_NT_PYTHON = "/tmp/ntenv/bin/python"


# --------------------------------------------------------------------------------------------- models
def _conv(p, x, padding):
    from jax import lax

    y = lax.conv_general_dilated(
        x, p["kernel"], (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["bias"]


def _max_pool_2x2(x):
    from jax import lax

    return lax.reduce_window(x, -float("inf"), lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def cnn94k(params, x):
    """``[N, 32, 32, 3] -> [N, 10]``; the layers of linfit's ``small_cnn`` (width 32, depth 3)."""
    import jax

    for i in (1, 2, 3):
        x = jax.nn.relu(_conv(params[f"conv{i}"], x, "SAME"))
        if i < 3:
            x = _max_pool_2x2(x)
    x = x.mean(axis=(1, 2))
    return x @ params["head"]["kernel"] + params["head"]["bias"]


def conv_dense(params, x):
    """``[N, 32, 32, 3] -> [N, 10]``: 5x5 conv (VALID), max pool, two Dense layers."""
    import jax

    x = _max_pool_2x2(jax.nn.relu(_conv(params["conv"], x, "VALID")))
    x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    return x @ params["dense2"]["kernel"] + params["dense2"]["bias"]


#: name -> (apply function, {layer: (kernel shape, bias shape)}).
MODELS = {
    "cnn94k": (
        cnn94k,
        {
            "conv1": ((3, 3, 3, 32), (32,)),
            "conv2": ((3, 3, 32, 64), (64,)),
            "conv3": ((3, 3, 64, 128), (128,)),
            "head": ((128, 10), (10,)),
        },
    ),
    "conv_dense": (
        conv_dense,
        {
            "conv": ((5, 5, 3, 16), (16,)),
            "dense1": ((14 * 14 * 16, 256), (256,)),
            "dense2": ((256, 10), (10,)),
        },
    ),
}


def flax_twin(model: str):
    """The same function as a Flax module, ``f(params, x)`` on :func:`make_params`'s tree (layers named like its
    keys), for linfit's structured derivatives, which factorise Flax ``nn.Conv``/``nn.Dense`` calls."""
    import flax.linen as nn

    pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))

    class Cnn94k(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, width in ((1, 32), (2, 64), (3, 128)):
                x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", name=f"conv{i}")(x))
                x = pool(x) if i < 3 else x
            return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))

    class ConvDense(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID", name="conv")(x)))
            x = nn.relu(nn.Dense(256, name="dense1")(x.reshape(x.shape[0], -1)))
            return nn.Dense(10, name="dense2")(x)

    module = {"cnn94k": Cnn94k, "conv_dense": ConvDense}[model]()
    return lambda params, x: module.apply({"params": params}, x)


def make_params(model: str) -> dict:
    """Seeded NumPy float32 parameters: He-normal kernels (fan-in), small normal biases."""
    import numpy as np

    rng = np.random.default_rng(0)
    params = {}
    for layer, (k_shape, b_shape) in MODELS[model][1].items():
        fan_in = int(np.prod(k_shape[:-1]))
        params[layer] = {
            "kernel": (rng.standard_normal(k_shape) * np.sqrt(2.0 / fan_in)).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(b_shape)).astype(np.float32),
        }
    return params


def make_inputs(n: int):
    """Seeded ``[n, 32, 32, 3]`` float32 standard-normal inputs."""
    import numpy as np

    return np.random.default_rng(1).standard_normal((n, 32, 32, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------- worker
def _ntk_fn(lib: str, impl: str, f, traced: bool):
    """``(ntk_fn(x1, x2, params), version)`` for one library."""
    trace_axes = (-1,) if traced else ()
    if lib == "nt":
        import jax
        import neural_tangents as nt

        enum = {
            "jacobian": nt.NtkImplementation.JACOBIAN_CONTRACTION,
            "structured": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
        }[impl]
        fn = nt.empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, implementation=enum)
        return jax.jit(fn), f"neural-tangents {nt.__version__}, jax {jax.__version__}"
    import jax

    import linfit
    from linfit.ntk import empirical_ntk_fn

    fn = empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, implementation=impl)
    return fn, f"linfit {getattr(linfit, '__version__', 'dev')}, jax {jax.__version__}"


def _linfit_model(model: str, impl: str):
    """linfit's Jacobian contraction runs the plain function itself; its structured derivatives (and ``auto``,
    which may pick them) run the Flax twin of the same function."""
    return MODELS[model][0] if impl == "jacobian" else flax_twin(model)


def _rss_bytes() -> int:
    """This process's resident set now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def kernel_worker(model: str, n: int, traced: bool, budget_gib: float, out: str) -> dict:
    """``linfit.ntk.kernel`` (``"auto"`` kernel function) under a memory budget, once: its wall time (planning
    and compilation included), its plan and the process's peak RSS growth over the budget."""
    import resource

    import jax
    import numpy as np

    import linfit
    from linfit.ntk import empirical_ntk_fn, kernel, plan_kernel

    params = jax.tree_util.tree_map(np.asarray, make_params(model))
    x = make_inputs(n)
    ntk_fn = empirical_ntk_fn(_linfit_model(model, "auto"), trace_axes=(-1,) if traced else (), vmap_axes=0)
    budget = int(budget_gib * 2**30)
    rss0 = _rss_bytes()
    start = time.perf_counter()
    plan = plan_kernel(ntk_fn, x, None, params, memory_budget_bytes=budget)
    k = kernel(ntk_fn, x, None, params, plan=plan)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(out, k)
    geometry = "x".join(str(v) for v in plan.geometry)
    return {
        "time_s": seconds,
        "peak_over_budget": (peak - rss0) / budget,
        "pick": f"{plan.strategy} {geometry}",
        "version": f"linfit {getattr(linfit, '__version__', 'dev')}, jax {jax.__version__}",
        "device": jax.devices()[0].device_kind,
    }


def worker(lib: str, impl: str, model: str, n: int, traced: bool, repeats: int, out: str) -> dict:
    """Time one (library, implementation) in this process; the kernel is saved to ``out`` (.npy)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    f = MODELS[model][0] if lib == "nt" else _linfit_model(model, impl)
    params = jax.tree_util.tree_map(jnp.asarray, make_params(model))
    x = jnp.asarray(make_inputs(n))
    ntk_fn, version = _ntk_fn(lib, impl, f, traced)
    pick = ntk_fn.resolve_auto(x, None, params) if impl == "auto" else impl
    start = time.perf_counter()
    kernel = jax.block_until_ready(ntk_fn(x, None, params))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(ntk_fn(x, None, params))
        times.append(time.perf_counter() - start)
    np.save(out, np.asarray(kernel))
    return {
        "time_s": statistics.median(times),
        "compile_s": first - statistics.median(times),
        "pick": pick,
        "version": version,
        "device": jax.devices()[0].device_kind,
    }


def run_one(python: str, lib, impl, model, n, traced, repeats, timeout, out, budget_gib) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", lib, impl, model, str(n), str(int(traced)), out]
    cmd += ["--repeats", str(repeats), "--budget-gib", str(budget_gib)]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"> {timeout} s (timeout)"}
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["?"]
        return {"error": "crashes: " + lines[-1][:100]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rel_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _parse_row(text: str) -> tuple[str, int, bool]:
    model, n, kernel = text.split(":")
    if model not in MODELS or kernel not in ("traced", "untraced"):
        raise argparse.ArgumentTypeError(f"row {text!r}: expected MODEL:N:traced|untraced, MODEL in {list(MODELS)}")
    return model, int(n), kernel == "traced"


def _fmt(r: dict) -> str:
    return r["error"] if "error" in r else f"{r['time_s']:.2f} s"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 32: cnn94k traced and untraced, conv_dense")
    parser.add_argument("--rows", nargs="+", type=_parse_row, metavar="MODEL:N:KERNEL", help="replace the rows")
    parser.add_argument("--n", type=int, help="replace every row's N")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (median)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per subprocess")
    parser.add_argument("--nt-python", default=DEFAULT_NT_PYTHON, help="interpreter with neural-tangents 0.6.5")
    parser.add_argument("--budget-gib", type=float, default=DEFAULT_BUDGET_GIB,
                        help="memory budget of the linfit.ntk.kernel run (GiB)")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        lib, impl, model, n, traced, out = args.worker
        if impl == "kernel":
            print(json.dumps(kernel_worker(model, int(n), bool(int(traced)), args.budget_gib, out)))
        else:
            print(json.dumps(worker(lib, impl, model, int(n), bool(int(traced)), args.repeats, out)))
        return

    import numpy as np

    rows = args.rows or (QUICK_ROWS if args.quick else ROWS)
    if args.n:
        rows = [(model, args.n, traced) for model, _, traced in rows]
    lines = [
        "| model, kernel, N | nt jacobian | nt structured | linfit jacobian | linfit structured | linfit auto "
        "(pick) | jac linfit/nt | structured linfit/nt | auto/best | max rel. err vs nt jacobian | "
        f"linfit.ntk.kernel, {args.budget_gib:g} GiB budget (plan) | its peak RSS growth / budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    versions = set()
    with tempfile.TemporaryDirectory() as tmp:
        for model, n, traced in rows:
            res, kernels = {}, {}
            for lib, impl in RUNS:
                path = os.path.join(tmp, f"{lib}_{impl}.npy")
                python = args.nt_python if lib == "nt" else sys.executable
                r = run_one(python, lib, impl, model, n, traced, args.repeats, args.timeout, path, args.budget_gib)
                res[lib, impl] = r
                if "error" not in r:
                    versions.add(f"{r['version']} ({r['device']})")
                    kernels[lib, impl] = np.load(path)
                    os.remove(path)
                print(f"{model} N={n} {'traced' if traced else 'untraced'} {lib} {impl}: {_fmt(r)}",
                      file=sys.stderr, flush=True)

            def ratio(a, b):
                ra, rb = res[a], res[b]
                return "" if "error" in ra or "error" in rb else f"{ra['time_s'] / rb['time_s']:.2f}"

            exact = [r["time_s"] for key, r in res.items() if key[1] not in ("auto", "kernel") and "error" not in r]
            auto = res["linfit", "auto"]
            auto_ratio = "" if "error" in auto or not exact else f"{auto['time_s'] / min(exact):.2f}"
            ref = kernels.get(("nt", "jacobian"))
            errs = [_rel_err(k, ref) for key, k in kernels.items() if ref is not None and key != ("nt", "jacobian")]
            label = f"{model}, {'traced' if traced else 'untraced'}, {n}"
            auto_cell = _fmt(auto) + ("" if "error" in auto else f" ({auto['pick']})")
            tiled = res["linfit", "kernel"]
            tiled_cell = _fmt(tiled) + ("" if "error" in tiled else f" ({tiled['pick']})")
            tiled_peak = "" if "error" in tiled else f"{tiled['peak_over_budget']:.2f}"
            lines.append(
                f"| {label} | {_fmt(res['nt', 'jacobian'])} | {_fmt(res['nt', 'structured'])} | "
                f"{_fmt(res['linfit', 'jacobian'])} | {_fmt(res['linfit', 'structured'])} | {auto_cell} | "
                f"{ratio(('linfit', 'jacobian'), ('nt', 'jacobian'))} | "
                f"{ratio(('linfit', 'structured'), ('nt', 'structured'))} | {auto_ratio} | "
                f"{f'{max(errs):.1e}' if errs else ''} | {tiled_cell} | {tiled_peak} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    print(f"\nmedian of {args.repeats} after a warm-up; load average at the end: {os.getloadavg()[0]:.2f}")
    for v in sorted(versions):
        print(v)


if __name__ == "__main__":
    main()
