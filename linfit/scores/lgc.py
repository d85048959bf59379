"""Label-Gradient Correlation (LGC) and the fine-tuning NTK it is computed from.

Deshpande et al. 2021 (arXiv 2102.00084), eq. (7)-(8): LGC is the Pearson correlation between the entries of
the empirical NTK Θ = J Jᵀ and of the ±1 label-similarity matrix (``kernel_label_correlation``).

Which output the Jacobian is taken of. The paper leaves it open. linfit uses the network that fine-tuning
actually starts from: the pre-trained backbone φ(x; θ) [D] followed by a NEW C-way head
f(x) = W φ(x) + b with W [C, D] drawn i.i.d. N(0, σ²), σ² = 1/D (LeCun-normal, the head the fine-tuning
protocol uses), and the kernel traced (averaged) over the C logits as in neural-tangents. Averaged over the
random head, the kernel is exact and head-free:

    E_W[Θ](x, x') = Θ_φ(x, x')  +  [head trained] · (φ(x)ᵀφ(x') + 1),
    Θ_φ(x, x')    = (1/D) Σ_k ⟨∂φ_k(x)/∂θ, ∂φ_k(x')/∂θ⟩        (σ² D = 1)

i.e. the feature NTK traced over the D feature outputs (``empirical_ntk_fn(features, trace_axes=(-1,))``) plus,
when the head is among the trained parameters, the feature Gram ΦΦᵀ (whose correlation is LFC) and the bias'
constant. A zero head instead would make every backbone gradient vanish and LGC collapse to LFC.
``head_samples=k`` replaces the average by k random head rows (an unbiased estimate, k backward passes per
sample instead of D, for wide backbones). The rows are Rademacher, entries ±1/√D: they have the Gaussian head's
second moment E[h hᵀ] = I/D, so the estimate has the same expectation (Hutchinson's trace estimator, here of the
D x D matrix M(x, x')_kl = ⟨∂φ_k(x)/∂θ, ∂φ_l(x')/∂θ⟩), but its variance comes only from M's off-diagonal
entries (h_k² = 1/D exactly). Parameters that each feed one feature only, such as the last convolution when only
per-channel operations (BatchNorm, activation, pooling) follow it, give a diagonal M: their kernel, LGC's, is
then exact for every k (``benchmarks/RESULTS.md`` §7d measures the rest).

The traced kernel is the row-weighted mean of the kernels of groups of rows, each group one call of one
compiled program (the rows are an argument, and the kernel is planned once per group width). A group holds as
many rows as keep the per-sample Jacobian rows of all N samples, ``N x rows x P`` float32 numbers, within half
the memory budget (:func:`rows_per_call`), so that
:func:`linfit.ntk.kernel`'s panels strategy computes every sample's derivatives once per call instead of
recomputing them tile by tile: all k = 8 rows in one call on the embedded zoo (N = 200, P ≈ 80 k: 0.5 GB), one
row per call on EfficientNet-Lite0 at 224 px with all 3.4 M backbone parameters (1.4 GB per row at N = 100,
``benchmarks/RESULTS.md`` §8). The price of a call is one forward pass per sample.
``projection_dim`` adds the paper's random projection of the per-sample gradients (a Johnson-Lindenstrauss
estimate of the same kernel; it materialises per-sample gradients of the selected subset, so use it with the
last-conv subset as the paper does). The projection, P x 10,000 float32 numbers for P selected parameters, is drawn
in column blocks that fit the memory budget, the gradients computed once per block.

Variants registered: ``"lgc"`` (gradients w.r.t. the last convolution's kernel, the kernel computed exactly,
input ``"ntk_last_conv"``), ``"lgc_paper"`` (the paper's estimate of that kernel: the same gradients randomly
projected to ``PAPER_PROJECTION_DIM`` = 10,000 dimensions, input ``"ntk_last_conv_projected"``) and
``"lgc_all"`` (every parameter, exact, computed by the structured NTK without materialising per-sample
gradients; input ``"ntk"``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from linfit.errors import ConfigError, ShapeError, is_count
from linfit.models.compiled import headless, penultimate_features
from linfit.ntk.empirical import empirical_ntk_fn
from linfit.ntk.entry import kernel as ntk_kernel, plan_kernel
from linfit.ntk.jacobian import jacobians
from linfit.scores.correlation import kernel_label_correlation
from linfit.scores.registry import register
from linfit.tree import ParamsFilter, leaf_paths, split_params

_REFERENCE = "Deshpande et al. 2021, arXiv:2102.00084, eq. (7)-(8) (LGC)"

PAPER_PROJECTION_DIM = 10_000
"""Dimensions of the paper's random projection of the last-layer per-sample gradients (§3.2)."""



def _batched(fn, x, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


@functools.lru_cache(maxsize=64)
def _feature_map(model) -> Callable:
    """``f(p, x)``: penultimate features of ``p["variables"]``, projected on ``p["heads"] [D, k]`` if present."""

    def f(p, x):
        phi = model.apply(p["variables"], x, train=False, method="features")
        return phi @ p["heads"] if "heads" in p else phi

    return f


@functools.lru_cache(maxsize=64)
def _feature_ntk(model, body_filter: tuple[str, ...], implementation: str):
    return empirical_ntk_fn(_feature_map(model), trace_axes=(-1,), implementation=implementation,
                            params_filter=list(body_filter))


def lgc_kernel(
    model,
    variables,
    x,
    *,
    params_filter: ParamsFilter = None,
    head_samples: int | None = None,
    projection_dim: int | None = None,
    key: jax.Array | None = None,
    implementation: str = "auto",
    memory_budget_bytes: int = 2**30,
    batch_size: int = 256,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """The fine-tuning NTK at w0, averaged over the new head's initialisation (module docstring).

    Args:
      model, variables: a ``linfit.models`` backbone (``features`` method, ``head`` submodule) and its variables.
      x: ``[N, H, W, C]`` float inputs, preprocessed as the model expects (the task's scoring subset).
      params_filter: trained parameters (``None`` = all; e.g. ``param_subsets(...)["last_conv"]``). If it
        selects ``head/kernel`` the head term ΦΦᵀ + 1 is added.
      head_samples: ``None`` for the exact average over heads (D outputs), or k random (Rademacher) head rows.
      projection_dim: project per-sample gradients to this many dimensions (paper: 10,000); needs ``key``.
      key: PRNG key for ``head_samples`` / ``projection_dim``.
      implementation: NTK implementation; ``"auto"`` takes the cheapest exact one by
        :mod:`linfit.ntk.cost` (see :func:`linfit.ntk.empirical_ntk_fn`).
      memory_budget_bytes: memory per device for the NTK (``linfit.ntk.kernel``), and for the random projection.
      batch_size: forward-pass batch size of the features.
      features: ``[N, D]`` the backbone's penultimate features of ``x``
        (``linfit.models.compiled.penultimate_features``) when already computed; computed here if ``None``.

    Every model of one architecture (and input shape) reuses the same compiled feature map and kernel: the
    weights are arguments of the jitted functions (``linfit.models.compiled``).

    Returns:
      ``[N, N]`` float64 kernel.

    The errors of :mod:`linfit.ntk` below (and the ``UnknownNameError``) arise only when the backbone kernel is
    computed through it: with ``projection_dim`` the projected gradients skip those checks (NaN/inf in ``x`` or
    the weights is then not reported), and a filter selecting only ``head/...`` leaves computes no backbone kernel.

    Raises:
      ConfigError: ``head_samples`` or ``projection_dim`` given without ``key``, or not a positive integer.
      ParamsFilterError: ``params_filter`` is malformed or selects no leaf of ``variables["params"]``.
      ShapeError: ``features`` is not ``[N, D]`` with ``N`` the number of samples in ``x``; ``x`` is not
        ``[N, H, W, C]`` (checked by the backbone when ``features`` is ``None``); otherwise as
        :func:`linfit.ntk.plan_kernel` and :func:`linfit.ntk.kernel` (e.g. a memory budget that cannot hold one
        tile).
      UnknownNameError: an unknown ``implementation`` (:func:`linfit.ntk.empirical_ntk_fn`).
      NonFiniteError, TreeMismatchError, VmapAxesError: as :func:`linfit.ntk.kernel`.
    """
    if (head_samples is not None or projection_dim is not None) and key is None:
        raise ConfigError("head_samples and projection_dim need a PRNG key")
    for name, value in (("head_samples", head_samples), ("projection_dim", projection_dim)):
        if value is not None and not is_count(value):
            raise ConfigError(f"{name} must be a positive integer (or None); got {value!r}")
    selected = leaf_paths(split_params(variables["params"], params_filter)[0])
    body, body_variables = headless(model, variables)
    tree = {"variables": body_variables}
    x = jnp.asarray(x)
    if features is None:
        features = penultimate_features(model, variables, x, batch_size)
    phi = np.asarray(features, dtype=np.float64)
    if phi.ndim != 2 or phi.shape[0] != x.shape[0]:
        raise ShapeError(f"features must be [N, D] with N = {x.shape[0]} (the samples of x); got {phi.shape}")
    kernel = np.zeros((x.shape[0], x.shape[0]))
    body_filter = tuple(f"^variables/params/{re.escape(path)}$" for path in selected if not path.startswith("head/"))
    if body_filter:
        heads = None
        if head_samples is not None:  # Rademacher rows, E[h hᵀ] = I/D: an unbiased estimate of the head average
            key, sub = jax.random.split(key)
            heads = jax.random.rademacher(sub, (phi.shape[1], head_samples), jnp.result_type(float))
            heads = heads / jnp.sqrt(phi.shape[1])
        if projection_dim is not None:
            tree = tree if heads is None else {**tree, "heads": heads}
            kernel += _projected_kernel(_feature_map(body), tree, x, list(body_filter), projection_dim, key,
                                        memory_budget_bytes)
        else:
            ntk_fn = _feature_ntk(body, body_filter, implementation)
            per_call = None if heads is None else rows_per_call(
                head_samples, x.shape[0], ntk_fn.num_params(tree), memory_budget_bytes)
            groups, plans = [None] if heads is None else _row_groups(heads, per_call), {}
            for rows in groups:  # traced over k rows: the row-weighted mean of the groups' kernels
                group_tree = tree if rows is None else {**tree, "heads": rows}
                width = None if rows is None else rows.shape[1]
                if width not in plans:  # planned once per group width (the planner compiles and measures)
                    plans[width] = plan_kernel(ntk_fn, x, None, group_tree, memory_budget_bytes=memory_budget_bytes)
                weight = 1.0 if rows is None else width / head_samples
                kernel += weight * np.asarray(ntk_kernel(ntk_fn, x, None, group_tree, plan=plans[width]),
                                              dtype=np.float64)
    if "head/kernel" in selected:
        kernel += phi @ phi.T + 1.0
    return kernel


def rows_per_call(head_samples: int, num_samples: int, num_params: int, memory_budget_bytes: int) -> int:
    """Head rows per kernel call: the most rows (at least 1, at most ``head_samples``) whose per-sample float32
    Jacobian rows for all ``num_samples`` samples, ``num_samples x rows x num_params x 4`` bytes, fit in half of
    ``memory_budget_bytes`` (module docstring)."""
    row_bytes = 4 * num_samples * num_params
    return max(1, min(head_samples, memory_budget_bytes // (2 * row_bytes)))


def _row_groups(heads: jax.Array, per_call: int) -> list[jax.Array]:
    """``heads [D, k]`` cut into column groups of ``per_call`` rows (the last one possibly shorter)."""
    return [heads[:, start : start + per_call] for start in range(0, heads.shape[1], per_call)]


def _projected_kernel(f, params, x, params_filter, dim: int, key: jax.Array,
                      memory_budget_bytes: int) -> np.ndarray:
    """Traced kernel from per-sample gradients randomly projected to ``dim`` dimensions (paper §3.2): with
    ``g_i [O, dim]`` the gradients of sample i times the projection ``R [P, dim]`` (P selected parameters, i.i.d.
    N(0, 1/dim) entries), ``K_ij = Σ_o g_io · g_jo / O``.

    R is drawn in column blocks of at most ``memory_budget_bytes`` (float32), and K is the sum of the blocks'
    kernels: one block drawn from ``key`` when all of R fits, else block c from ``fold_in(key, c)``, each pass
    computing the gradients again (a 224 px backbone's 400,000-parameter last convolution would need 16 GB for R
    at once). Each block is an argument of one cached compilation, like the weights, so every model of an
    architecture reuses it."""
    selected, _ = split_params(params, params_filter)
    size = sum(leaf.size for leaf in jax.tree_util.tree_leaves(selected))
    width = max(1, min(dim, memory_budget_bytes // (4 * size)))
    blocks = [(start, min(dim, start + width)) for start in range(0, dim, width)]
    projected = _projected_gradients(f, tuple(params_filter))
    kernel = np.zeros((x.shape[0], x.shape[0]))
    for c, (start, stop) in enumerate(blocks):
        block_key = key if len(blocks) == 1 else jax.random.fold_in(key, c)
        projection = jax.random.normal(block_key, (size, stop - start)) / jnp.sqrt(dim)
        g = _batched(lambda xb: projected(params, projection, xb), x, PROJECTION_BATCH).astype(np.float64)
        kernel += np.einsum("iod,jod->ij", g, g)
    return kernel / g.shape[1]


PROJECTION_BATCH = 16
"""Samples per call of the projected gradients (their float32 Jacobian blocks, ``[16, O, P]``, stay small)."""


@functools.lru_cache(maxsize=64)
def _projected_gradients(f: Callable, params_filter: tuple[str, ...]) -> Callable:
    """jit ``(params, projection [P, dim], xb [B, ...]) -> [B, O, dim]``: the per-sample Jacobian of ``f`` in the
    parameters ``params_filter`` selects, each leaf's block ``[B, O, P_leaf]`` times its rows of ``projection``
    (leaf order of ``jax.tree_util.tree_leaves``), summed, so the blocks are never concatenated."""

    def projected(params, projection, xb):
        selected, merge = split_params(params, list(params_filter))
        blocks = jacobians(lambda p, xs: f(merge(p), xs), selected, xb, vmap_axes=0)
        starts = np.cumsum([0] + [block.shape[-1] for block in blocks])
        return sum(block @ projection[start:end] for block, start, end in zip(blocks, starts[:-1], starts[1:]))

    return jax.jit(projected)


def lgc(kernel, labels) -> float:
    """LGC from a precomputed fine-tuning NTK ``kernel [N, N]`` (``lgc_kernel``) and ``labels [N]``: the
    Pearson correlation of its entries with the ±1 label-similarity matrix (paper eq. (8)).

    Args:
      kernel: ``[N, N]`` NTK, any real numeric dtype (numpy or JAX, e.g. ``lgc_kernel``'s float64); computed in
        float64. Symmetry is not checked.
      labels: ``[N]`` labels: integers in ``0..C-1`` (integer or integral-float dtype) or class names.

    Returns:
      The correlation in ``[-1, 1]`` (0 for a constant kernel) as a Python ``float``; higher is better.

    Raises:
      As :func:`linfit.scores.correlation.kernel_label_correlation`.

    References:
      Deshpande et al. 2021 (arXiv:2102.00084): eq. (8), the normalised form of LGC's eq. (7), with Θ the NTK of
      eq. (2), computed as in the module docstring.
    """
    return kernel_label_correlation(kernel, labels)


register("lgc", needs=("ntk_last_conv",), reference=_REFERENCE + "; last conv layer", cost="forward+backward")(lgc)
register("lgc_paper", needs=("ntk_last_conv_projected",),
         reference=_REFERENCE + f"; last conv layer, gradients projected to {PAPER_PROJECTION_DIM:,} dims (§3.2)",
         cost="forward+backward")(lgc)
register("lgc_all", needs=("ntk",), reference=_REFERENCE + "; all parameters", cost="forward+backward")(lgc)
