"""Time every registered model-selection score on synthetic inputs, and LogME against a plain loop.

Usage::

    JAX_PLATFORMS=cpu python benchmarks/scores.py            # N ∈ {1000, 5000}, D ∈ {512, 2048}, C ∈ {10, 100}
    JAX_PLATFORMS=cpu python benchmarks/scores.py --quick    # a small smoke-test grid
    JAX_PLATFORMS=cpu python benchmarks/scores.py --scores logme lfc
    JAX_PLATFORMS=cpu python benchmarks/scores.py --blas-threads 1 --repeats 3 --scores nleep linearized_loss logme \
        --grid 1000x512x10 --logme-sizes 5000x2048x10 5000x2048x100   # the "dominant call" run of RESULTS.md

Every module of ``linfit.scores`` is imported, so every registered score is timed. Inputs are built
from each score's ``needs``; a score that needs something this script cannot build is skipped with
the reason, and a score that raises is reported with its error. The second table compares
``linfit.scores.logme`` with ``reference_logme`` below, a plain numpy float64 version of the same
evidence maximisation (thin scipy SVD of F, then a Python loop over classes iterating the JMLR fixed point
to convergence), run in the same process on the same inputs. For the scores listed in ``DOMINANT`` the
first table also times, right after the score on the same inputs, the one linear-algebra call the score's
cost should be made of (e.g. the ``eigh`` of the kernel), and the ratio of the two: a ratio near 1 means
the score's own code adds little; the LogME table does the same with its spectral decomposition. Output is
Markdown; the load average (``os.getloadavg``, what ``uptime`` prints) and the BLAS thread pools are printed
before and after, because on a shared machine they change the times several-fold (OpenBLAS's worker threads
wait for each other when the cores are oversubscribed; ``--blas-threads 1`` avoids that).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import pkgutil
import time

import numpy as np
import scipy.linalg
import threadpoolctl
from sklearn.mixture import GaussianMixture

import linfit.scores
from linfit.scores.logme import logme
from linfit.scores.parc import pca_reduce

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


def seconds(fn, *args, **kwargs) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def spectral_decomposition_seconds(inputs: dict, labels: np.ndarray, full_eigh: bool = False) -> float:
    """LogME's dominant calls: the Gram matrix of the smaller side, its tridiagonal reduction (LAPACK ``sytrd``)
    and the tridiagonal eigensolver (``stevd``), as ``linfit.scores.logme`` calls them; or, with ``full_eigh``,
    the Gram matrix and a full float64 ``eigh`` (``syevd``, eigenvectors included), what LogME called before."""
    features = np.asarray(inputs["features"], dtype=np.float64)
    n, d = features.shape
    start = time.perf_counter()
    gram = features.T @ features if n >= d else features @ features.T
    if full_eigh:
        scipy.linalg.eigh(gram, overwrite_a=True, check_finite=False, driver="evd")
    else:
        m = gram.shape[0]
        lwork = int(scipy.linalg.lapack.dsytrd_lwork(m, lower=1)[0])
        _, diagonal, off, _, _ = scipy.linalg.lapack.dsytrd(np.asfortranarray(gram), lower=1, lwork=lwork,
                                                            overwrite_a=1)
        scipy.linalg.lapack.dstevd(diagonal, off if m > 1 else np.zeros(1), compute_v=1)
    return time.perf_counter() - start


def kernel_eigh_seconds(inputs: dict, labels: np.ndarray) -> float:
    """``linearized_loss``'s dominant call: the float64 ``eigh`` of the ``[N, N]`` kernel (as ``kernel_eigh``)."""
    return seconds(np.linalg.eigh, np.asarray(inputs["ntk"], dtype=np.float64))


def pca_and_mixture_seconds(inputs: dict, labels: np.ndarray) -> float:
    """NLEEP's dominant calls at its defaults: the SVD of the centred features plus the mixture's EM fit."""
    features = np.asarray(inputs["features"], dtype=np.float64)
    svd = seconds(np.linalg.svd, features - features.mean(axis=0), full_matrices=False)
    z = pca_reduce(features, 0.8)  # the coordinates the score fits (their SVD is the one timed above)
    mixture = GaussianMixture(n_components=5 * (int(labels.max()) + 1), covariance_type="full", random_state=0)
    return svd + seconds(mixture.fit, z)


# score name -> (what its dominant call is, seconds of that call alone on the score's inputs)
DOMINANT = {
    "logme": ("Gram + sytrd + stevd", spectral_decomposition_seconds),
    "linearized_loss": ("eigh of the [N, N] kernel", kernel_eigh_seconds),
    "nleep": ("PCA SVD + GaussianMixture.fit", pca_and_mixture_seconds),
}


def conditions() -> str:
    """Load averages and BLAS/OpenMP thread pools, for the record."""
    pools = ", ".join(f"{p['internal_api']} {p.get('version')} × {p['num_threads']} threads"
                      for p in threadpoolctl.threadpool_info())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load average (1, 5, 15 min) {load}; {pools}"


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
    parser.add_argument("--blas-threads", type=int, help="limit the BLAS/OpenMP thread pools (threadpoolctl)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="score table: time each score and its dominant call R times, keep the fastest")
    args = parser.parse_args(argv)
    if args.blas_threads is not None:
        with threadpoolctl.threadpool_limits(limits=args.blas_threads):
            return run(args)
    return run(args)


def run(args) -> None:
    if args.quick:
        grid = list(itertools.product([200], [64], [5]))
        logme_sizes = [(300, 48, 5)]
    else:
        grid = list(itertools.product([1000, 5000], [512, 2048], [10, 100]))
        logme_sizes = [(1000, 512, 10), (5000, 2048, 10), (5000, 2048, 100)]
    cells = lambda specs: [tuple(int(v) for v in spec.split("x")) for spec in specs]  # noqa: E731
    grid = cells(args.grid) if args.grid else grid
    logme_sizes = cells(args.logme_sizes) if args.logme_sizes else logme_sizes
    names = [s for s in load_all_scores() if not args.scores or s in args.scores]

    print(f"start: {conditions()}\n")
    print("| score | N | D | C | seconds | value | dominant call | its seconds | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    warm_labels, warm = synthetic_inputs(60, 16, 3, seed=1)
    for name in names:
        score = linfit.scores.get(name)
        missing = [k for k in score.needs if k not in warm]
        if missing:
            print(f"| {name} | – | – | – | skipped: cannot synthesise {missing} | | | | |")
            continue
        try:  # warm-up (jit compilation, lazy imports) on a tiny task
            score(warm_labels, **{k: warm[k]() for k in score.needs})
        except Exception as err:  # noqa: BLE001 - report and go on with the other scores
            print(f"| {name} | – | – | – | failed on the warm-up task: {type(err).__name__}: {err} | | | | |")
            continue
        what, dominant = DOMINANT.get(name, ("", None))
        for n, d, c in grid:
            labels, build = synthetic_inputs(n, d, c)
            inputs = {k: build[k]() for k in score.needs}
            try:
                value, t_score = timed(score, labels, **inputs)
                t_score = min([t_score] + [timed(score, labels, **inputs)[1] for _ in range(args.repeats - 1)])
            except Exception as err:  # noqa: BLE001
                print(f"| {name} | {n} | {d} | {c} | failed: {type(err).__name__}: {err} | | | | |", flush=True)
                continue
            row = f"| {name} | {n} | {d} | {c} | {t_score:.3f} | {value:.6g} |"
            if dominant is None:
                print(row + " | | |", flush=True)
            else:
                t_dominant = min(dominant(inputs, labels) for _ in range(args.repeats))
                print(row + f" {what} | {t_dominant:.3f} | {t_score / t_dominant:.2f} |", flush=True)

    print("\n| LogME N | D | C | linfit s | Gram + sytrd + stevd s | ratio | Gram + full syevd s | plain numpy loop s "
          "| speed-up | relative difference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    warm_features = warm["features"]()
    logme(warm_features, warm_labels), reference_logme(warm_features, warm_labels)  # first-call costs
    for n, d, c in logme_sizes:
        labels, build = synthetic_inputs(n, d, c)
        features = build["features"]()
        ours, t_ours = timed(logme, features, labels)
        t_spectral = spectral_decomposition_seconds({"features": features}, labels)
        t_syevd = spectral_decomposition_seconds({"features": features}, labels, full_eigh=True)
        ref, t_ref = timed(reference_logme, features, labels)
        rel = abs(ours - ref) / abs(ref)
        print(f"| {n} | {d} | {c} | {t_ours:.3f} | {t_spectral:.3f} | {t_ours / t_spectral:.2f} | {t_syevd:.3f} "
              f"| {t_ref:.3f} "
              f"| {t_ref / t_ours:.1f}x | {rel:.1e} |", flush=True)
    print(f"\nend: {conditions()}")


if __name__ == "__main__":
    main()
