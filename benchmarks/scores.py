"""Time every registered model-selection score on synthetic inputs, and LogME against a plain loop.

Usage::

    JAX_PLATFORMS=cpu python benchmarks/scores.py            # N ∈ {1000, 5000}, D ∈ {512, 2048}, C ∈ {10, 100}
    JAX_PLATFORMS=cpu python benchmarks/scores.py --quick    # a small smoke-test grid
    JAX_PLATFORMS=cpu python benchmarks/scores.py --scores logme lfc

Every module of ``linfit.scores`` is imported, so every registered score is timed. Inputs are built
from each score's ``needs``; a score that needs something this script cannot build is skipped with
the reason, and a score that raises is reported with its error. The second table compares
``linfit.scores.logme`` with ``reference_logme`` below, a plain numpy float64 version of the same
evidence maximisation (thin scipy SVD of F, then a Python loop over classes iterating the JMLR fixed point
to convergence), run in the same process on the same inputs. Output is Markdown.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import pkgutil
import time

import numpy as np
import scipy.linalg

import linfit.scores
from linfit.scores.logme import logme

SOURCE_CLASSES = 1000
PROBE_DIM = 64


def load_all_scores() -> list[str]:
    """Import every ``linfit.scores`` submodule (registration happens at import) and list the names."""
    for info in pkgutil.iter_modules(linfit.scores.__path__):
        importlib.import_module(f"linfit.scores.{info.name}")
    return linfit.scores.names()


def synthetic_inputs(n: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Labels ``[N]`` (every class present) and builders for every input name a score may need."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    rng.shuffle(labels)
    features = np.maximum(rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(c, d))[labels], 0.0)

    def source_probs():
        logits = features @ rng.normal(size=(d, SOURCE_CLASSES)) / np.sqrt(d)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def key():
        import jax

        return jax.random.key(seed)

    builders = {
        "features": lambda: features,
        "source_probs": source_probs,
        "ntk": lambda: features @ features.T / d,
        "outputs0": lambda: features @ rng.normal(size=(d, c)) / np.sqrt(d),
        "source_class_means": lambda: np.maximum(rng.normal(size=(SOURCE_CLASSES, d)), 0.0),
        "source_class_counts": lambda: rng.integers(50, 500, SOURCE_CLASSES),
        "probe_features": lambda: rng.normal(size=(n, PROBE_DIM)) + rng.normal(size=(c, PROBE_DIM))[labels],
        "key": key,
    }
    return labels, builders


def reference_logme(features: np.ndarray, labels: np.ndarray, tol: float = 1e-14, max_iter: int = 1_000_000) -> float:
    """Plain numpy/scipy LogME: thin SVD (scipy, same LAPACK as linfit's eigh), one fixed-point loop per class, the full D-dimensional evidence."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    u, s, _ = scipy.linalg.svd(f, full_matrices=False, check_finite=False)  # the LAPACK linfit uses
    keep = s**2 > (s[0] ** 2) * max(n, d) * np.finfo(np.float64).eps
    u, sigma = u[:, keep], s[keep] ** 2
    k = sigma.shape[0]
    values = []
    for cls in range(int(labels.max()) + 1):
        y = (labels == cls).astype(np.float64)
        x2 = (u.T @ y) ** 2
        outside = max(y @ y - x2.sum(), 0.0)
        t = 1.0
        for _ in range(max_iter):
            gamma = np.sum(sigma / (sigma + t))
            m2 = np.sum(sigma * x2 / (t + sigma) ** 2)
            res2 = np.sum(x2 * (t / (t + sigma)) ** 2) + outside
            t_new = gamma * res2 / (m2 * (n - gamma))
            converged = abs(t_new - t) <= tol * t
            t = t_new
            if converged:
                break
        m2 = np.sum(sigma * x2 / (t + sigma) ** 2)
        res2 = np.sum(x2 * (t / (t + sigma)) ** 2) + outside
        beta = n / (res2 + t * m2)
        alpha = t * beta
        evidence = (
            d / 2 * np.log(alpha) + n / 2 * np.log(beta)
            - 0.5 * (np.sum(np.log(alpha + beta * sigma)) + (d - k) * np.log(alpha))
            - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)
        )
        values.append(evidence / n)
    return float(np.mean(values))


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return float(value), time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    parser.add_argument("--scores", nargs="*", help="only these registered names")
    parser.add_argument("--grid", nargs="+", metavar="NxDxC", help="score grid cells, e.g. 5000x2048x10")
    parser.add_argument("--logme-sizes", nargs="+", metavar="NxDxC", help="LogME comparison cells")
    args = parser.parse_args(argv)

    if args.quick:
        grid = list(itertools.product([200], [64], [5]))
        logme_sizes = [(300, 48, 5)]
    else:
        grid = list(itertools.product([1000, 5000], [512, 2048], [10, 100]))
        logme_sizes = [(1000, 512, 10), (5000, 2048, 100)]
    cells = lambda specs: [tuple(int(v) for v in spec.split("x")) for spec in specs]  # noqa: E731
    grid = cells(args.grid) if args.grid else grid
    logme_sizes = cells(args.logme_sizes) if args.logme_sizes else logme_sizes
    names = [s for s in load_all_scores() if not args.scores or s in args.scores]

    print("| score | N | D | C | seconds | value |\n|---|---|---|---|---|---|")
    warm_labels, warm = synthetic_inputs(60, 16, 3, seed=1)
    for name in names:
        score = linfit.scores.get(name)
        missing = [k for k in score.needs if k not in warm]
        if missing:
            print(f"| {name} | – | – | – | skipped: cannot synthesise {missing} | |")
            continue
        try:  # warm-up (jit compilation, lazy imports) on a tiny task
            score(warm_labels, **{k: warm[k]() for k in score.needs})
        except Exception as err:  # noqa: BLE001 - report and go on with the other scores
            print(f"| {name} | – | – | – | failed on the warm-up task: {type(err).__name__}: {err} | |")
            continue
        for n, d, c in grid:
            labels, build = synthetic_inputs(n, d, c)
            inputs = {k: build[k]() for k in score.needs}
            try:
                value, seconds = timed(score, labels, **inputs)
                print(f"| {name} | {n} | {d} | {c} | {seconds:.3f} | {value:.6g} |", flush=True)
            except Exception as err:  # noqa: BLE001
                print(f"| {name} | {n} | {d} | {c} | failed: {type(err).__name__}: {err} | |", flush=True)

    print("\n| LogME N | D | C | linfit s | plain numpy loop s | speed-up | relative difference |")
    print("|---|---|---|---|---|---|---|")
    warm_features = warm["features"]()
    logme(warm_features, warm_labels), reference_logme(warm_features, warm_labels)  # first-call costs
    for n, d, c in logme_sizes:
        labels, build = synthetic_inputs(n, d, c)
        features = build["features"]()
        ours, t_ours = timed(logme, features, labels)
        ref, t_ref = timed(reference_logme, features, labels)
        rel = abs(ours - ref) / abs(ref)
        print(f"| {n} | {d} | {c} | {t_ours:.3f} | {t_ref:.3f} | {t_ref / t_ours:.1f}x | {rel:.1e} |", flush=True)


if __name__ == "__main__":
    main()
