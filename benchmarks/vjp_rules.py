"""Per-sample Jacobians of a CNN: JAX's own derivative rules against linfit's (``linfit.ntk.vjp_rules``).

``jax.vmap(jax.jacrev(f))`` over samples, with ``f`` either as written or wrapped in
``linfit.ntk.vjp_rules.per_sample_vjps`` (convolution kernel gradients as ``Pᵀ G`` products of input patches and
output cotangents, max-pool gradients through a once-per-sample mask). Same function, parameters and inputs (``cnn94k`` of
``benchmarks/vs_neural_tangents.py``), one process, the two variants alternating; median of ``--repeats``
jitted calls after a warm-up. Prints both times, their ratio and the largest relative difference of the
Jacobians. Under an interpreter without linfit (the pinned neural-tangents environments of
``benchmarks/vs_neural_tangents.py``, older JAX) it times JAX's rule alone, to compare JAX versions.

    python benchmarks/vjp_rules.py                 # N = 256
    python benchmarks/vjp_rules.py --n 512 --repeats 3
    /tmp/ntenv053/bin/python benchmarks/vjp_rules.py      # JAX's rule under jax 0.5.3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_neural_tangents import MODELS, make_inputs, make_params  # noqa: E402

try:
    from linfit.ntk.vjp_rules import per_sample_vjps
except ImportError:  # an environment without linfit (or with a JAX linfit does not support)
    per_sample_vjps = None


def per_sample_jacobian(f):
    """Jitted ``(params, x [N, ...]) -> {leaf: [N, O, *leaf]}``."""
    return jax.jit(jax.vmap(jax.jacrev(lambda p, xi: f(p, xi[None])[0]), in_axes=(None, 0)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="samples")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant (median)")
    args = parser.parse_args(argv)

    f = MODELS["cnn94k"][0]
    params = jax.tree_util.tree_map(jnp.asarray, make_params("cnn94k"))
    x = jnp.asarray(make_inputs(args.n))
    variants = {"jax rule": per_sample_jacobian(f)}
    if per_sample_vjps is not None:
        variants["linfit rules"] = per_sample_jacobian(per_sample_vjps(f))
    results = {name: jax.block_until_ready(fn(params, x)) for name, fn in variants.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(params, x))
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["jax rule"])
    print(f"cnn94k per-sample Jacobian, N = {args.n}, jax {jax.__version__}, {jax.devices()[0].device_kind}")
    print(f"  jax rule        {base:8.2f} s")
    if per_sample_vjps is None:
        print("  linfit rules    (linfit not importable here)")
        return
    ref, got = (jax.tree_util.tree_leaves(results[name]) for name in variants)
    err = max(float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(a)))
              for a, b in zip(ref, got, strict=True))
    new = statistics.median(times["linfit rules"])
    print(f"  linfit rules    {new:8.2f} s   ratio {new / base:.2f}   max rel. difference {err:.1e}")


if __name__ == "__main__":
    main()
