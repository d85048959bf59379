"""Cost model behind ``implementation="auto"``: the work and the peak memory of each exact NTK implementation.

Work is counted in multiply-add equivalents: multiply-adds plus ``ELEMENT_MACS`` per array element written to
or read from memory (kernel-sized intermediates with short contractions are bound by memory traffic). All
counts are for one output leaf ``[N, d_1, ..., d_m]`` of ``f`` with ``O = d_1 ... d_m`` outputs per sample,
``Q`` kernel entries per sample pair (``O²`` untraced, ``O`` traced or diagonal; :func:`output_pairs`), ``P``
selected parameters in ``L`` leaves and ``F`` one sample's forward pass (:func:`forward_cost`: XLA's cost
analysis of ``f``). ``N_J`` is the number of samples whose derivatives are formed: ``N1`` when ``x2 is None``
(one set reused), else ``N1 + N2``.

* ``"jacobian"`` (:mod:`linfit.ntk.jacobian`): per-sample Jacobians, one forward and ``O`` backward passes
  (``B`` each, :func:`backward_cost` w.r.t. the selected leaves: activation and weight gradients, ``≈ 2F``),
  the ``N_J·O·P`` Jacobian entries written, the contraction ``N1·N2·Q·P`` (the symmetric share of it when
  ``x2 is None``) and one kernel-sized term per group of leaves contracted together
  (:func:`linfit.ntk._contract.groups`); it holds the Jacobians and one copy of them for the contraction (the
  concatenated groups, or XLA's relayout of a block: 17.1 GB peak for an 8.3 GB Jacobian,
  ``benchmarks/RESULTS.md`` §11d).
  With ``vmap_axes=None`` each of the ``N·O`` backward passes runs through the whole batch (``N·B``).
* ``"products"`` (:mod:`linfit.ntk.products`): per x2 sample ``O`` vjps, each pushed forward through x1's
  linearisation (``≈ 2F`` per x1 sample: the tangents of the weights and of the activations), so
  ``≈ 2·N1·N2·O`` forward passes; it writes, transposes and reduces the untraced kernel (``3·N1·N2·O²``
  elements) and holds it.
* ``"structured"``: :func:`linfit.ntk.structured.structured_cost` (per layer, the route costs of
  :func:`linfit.ntk.structured_contract.route_costs`, plus a Jacobian contraction over the leaves it does not
  factorise).

The cheapest implementation whose peak fits :func:`memory_budget` wins (ties: the order of
:data:`CANDIDATES`); when none fits, the one with the smallest peak. The model ignores constant factors
(fusion, how well XLA tiles each contraction, the sequential ``lax.map`` of ``products``), so implementations
within about 2× of each other can be ranked either way; ``benchmarks/ntk.py`` prints the pick and its time
against the fastest.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax

from linfit.ntk._checks import signature
from linfit.ntk._memo import memoised
from linfit.tree import abstract, leaf_paths, split_params

#: Cost, in multiply-adds, of moving one array element to or from memory: the model counts
#: ``macs + ELEMENT_MACS * elements``. Kernel-sized intermediates with short contractions (a Gram matrix over
#: a few input features) are bound by memory traffic, not arithmetic; 32 is within the 10-100 multiply-adds
#: per element that CPUs and GPUs sustain for float32 (on the 2-core CPU of ``benchmarks/RESULTS.md`` a tiny
#: MLP's kernel at N = 4096 took 0.6 s by Jacobian contraction, 1.1e9 multiply-adds, and 4.4 s through
#: three 4096² Gram intermediates per layer, 6e8 multiply-adds).
ELEMENT_MACS = 32
#: Order of preference on equal cost (the simplest first).
CANDIDATES = ("jacobian", "structured", "products")
#: Memory budget of an implementation's peak when the device does not report its memory (CPU).
DEFAULT_MEMORY_BYTES = 8 * 2**30
#: Fraction of the device's memory (``bytes_limit``, GPU/TPU) an implementation may plan to hold.
DEVICE_MEMORY_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Cost:
    """``macs``: multiply-adds; ``peak_bytes``: the largest set of intermediates held at once."""

    macs: float
    peak_bytes: float


def output_pairs(out_shape: Sequence[int], trace: Sequence[int], diag: Sequence[int]) -> int:
    """``Q``: kernel entries per sample pair: ``d_k`` per traced or diagonal axis ``k``, ``d_k²`` per other."""
    return math.prod(d if k in trace or k in diag else d * d for k, d in enumerate(out_shape) if k > 0)


@dataclasses.dataclass(frozen=True)
class Forward:
    """One sample's forward pass: ``macs`` multiply-adds, ``elements`` array elements read and written."""

    macs: float
    elements: float

    def passes(self, count: float) -> float:
        """Cost (multiply-add equivalents) of ``count`` passes like this one."""
        return count * (self.macs + ELEMENT_MACS * self.elements)


def _replayed(f: Any, params: Any, x: Any) -> Callable[[Any, Any], Any]:
    """``f`` replayed from its jaxpr: ``g(p, xs)`` computes ``f(p, xs)`` for ``xs`` of ``x``'s per-sample shapes.

    The cost analyses lower programs of ``f`` on one and two samples, with and without pull-backs w.r.t.
    different leaves; tracing a Flax model is the slow part of each lowering (0.1-0.3 s on a CPU), re-tracing
    its jaxpr is not. So ``f`` is traced once per batch size (:mod:`linfit.ntk._memo`) and every program is
    built from that jaxpr: the same operations, hence the same cost analysis."""
    key = signature(x, params)

    def g(p, xs):
        n = jax.tree_util.tree_leaves(xs)[0].shape[0]
        closed, out_shape = memoised(f, ("jaxpr", key, n),
                                     lambda: jax.make_jaxpr(f, return_shape=True)(abstract(p), abstract(xs)))
        out = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *jax.tree_util.tree_leaves((p, xs)))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)

    return g


def _per_sample(program: Any, params: Any, x: Any) -> Forward | None:
    """One sample's share of ``program(params, x)`` by XLA's cost analysis of the lowered (uncompiled) program
    on one and on two samples: half the flops of one sample, and the elements accessed per extra sample (the
    parameters are read once per batched pass, not once per sample); ``None`` without a backend estimate."""
    p_spec = abstract(params)

    def analyse(n: int) -> tuple[float, float, int]:
        xs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((n, *jax.numpy.shape(a)[1:]), a.dtype), x)
        lowered = jax.jit(program).lower(p_spec, xs)
        analysis = lowered.cost_analysis()
        if isinstance(analysis, list | tuple):
            analysis = analysis[0] if analysis else None
        analysis = analysis or {}
        itemsize = min(leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(lowered.out_info))
        return analysis.get("flops", 0.0), analysis.get("bytes accessed", 0.0), itemsize

    (flops, one, itemsize), (_, two, _) = analyse(1), analyse(2)
    if flops <= 0:
        return None
    return Forward(flops / 2, max(two - one, 0.0) / itemsize)


def forward_cost(f: Any, params: Any, x: Any) -> Forward:
    """``F``: one sample's forward pass of ``f(params, x)`` (XLA's cost analysis, :func:`_per_sample`; once per
    ``f`` and argument shapes, :mod:`linfit.ntk._memo`). Without an estimate from the backend: one multiply-add
    and one element per parameter entry."""
    cost = memoised(f, ("forward", signature(x, params)), lambda: _per_sample(_replayed(f, params, x), params, x))
    if cost is None:
        size = float(sum(math.prod(jax.numpy.shape(a)) for a in jax.tree_util.tree_leaves(params)))
        return Forward(size, size)
    return cost


def backward_cost(f: Any, params: Any, x: Any, wrt: Callable[[str, Any], bool] | None, inputs: bool,
                  fwd: Forward) -> Forward:
    """``B``: one sample's backward pass of one output of ``f(params, x)``: the cotangents of every activation
    and the gradients of the parameter leaves selected by ``wrt`` (a :mod:`linfit.tree` predicate, ``None``:
    none), with ``inputs`` the cotangents of ``x``'s float leaves too. XLA's cost analysis of the pull-back
    (:func:`_per_sample` of the vjp program less the forward ``fwd`` it contains; once per ``f``, argument shapes,
    differentiated leaves and ``inputs``, :mod:`linfit.ntk._memo`). Weight gradients of a
    convolution cost as much as its forward pass, so differentiating every leaf (``"jacobian"``) costs about
    ``2F`` and only the activations (``"structured"``, which forms its layer gradients itself) about ``F``.
    Without a backend estimate: ``fwd`` per differentiated set (``2F`` for parameters and inputs)."""

    floats = inputs and all(jax.numpy.issubdtype(jax.numpy.result_type(a), jax.numpy.inexact)
                            for a in jax.tree_util.tree_leaves(x))
    chosen = wrt is not None and any(wrt(path, leaf) for path, leaf in zip(leaf_paths(params),
                                                                          jax.tree_util.tree_leaves(params)))

    if not (floats or chosen):  # nothing to pull back to but the activations
        return fwd

    replayed = _replayed(f, params, x)

    def pull(p, xs):  # the pull-back of every output at once: one backward pass per sample
        p_diff, merge = split_params(p, wrt) if chosen else ({}, lambda _: p)
        out, vjp = jax.vjp(lambda pd, xd: replayed(merge(pd), xd if floats else xs), p_diff, xs if floats else {})
        return out, vjp(jax.tree_util.tree_map(jax.numpy.ones_like, out))  # out kept: the forward is not pruned

    differentiated = tuple(path for path, leaf in zip(leaf_paths(params), jax.tree_util.tree_leaves(params))
                           if chosen and wrt(path, leaf))
    total = memoised(f, ("backward", signature(x, params), differentiated, floats),
                     lambda: _per_sample(pull, params, x))
    if total is None:
        return Forward(2 * fwd.macs, 2 * fwd.elements)
    return Forward(max(total.macs - fwd.macs, 0.0), max(total.elements - fwd.elements, 0.0))


def memory_budget() -> float:
    """Bytes an implementation may plan to hold: ``DEVICE_MEMORY_FRACTION`` of the default device's memory
    when it reports it, else ``DEFAULT_MEMORY_BYTES``."""
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return DEVICE_MEMORY_FRACTION * limit if limit else DEFAULT_MEMORY_BYTES


def jacobian_cost(n1: int, n2: int, symmetric: bool, o: int, q: int, p: int, groups: int, share: float,
                  fwd: Forward, bwd: Forward, itemsize: int, batched: bool) -> Cost:
    """Jacobian contraction (module docstring); ``groups``: products the contraction makes
    (:func:`linfit.ntk._contract.groups`, one kernel-sized term each); ``share``: the part of a symmetric
    contraction's multiply-adds computed (:func:`linfit.ntk._contract.symmetric_share`, 1 when ``x2`` is given);
    ``bwd``: one backward pass w.r.t. the selected leaves (:func:`backward_cost`); ``batched``:
    ``vmap_axes=None`` (whole-batch backward passes)."""
    sizes = (n1,) if symmetric else (n1, n2)
    if batched:
        make = sum(fwd.passes(n) + bwd.passes(n * o * n) for n in sizes)
    else:
        make = fwd.passes(sum(sizes)) + bwd.passes(sum(sizes) * o)
    jac = sum(sizes) * o * p
    cost = make + ELEMENT_MACS * jac + share * n1 * n2 * q * p + ELEMENT_MACS * groups * n1 * n2 * q
    return Cost(cost, itemsize * (2 * jac + n1 * n2 * q))


def products_cost(n1: int, n2: int, o: int, p: int, fwd: Forward, itemsize: int, batched: bool) -> Cost:
    """NTK-vector products (module docstring); ``batched``: ``vmap_axes=None`` (pull-backs through all of x2).
    Besides the passes it writes, transposes and reduces the untraced kernel (``3 N1 N2 O²`` elements)."""
    pull = n2 * o * 2 * n2 if batched else n2 * (1 + 2 * o)
    cost = fwd.passes(n1 + pull + 2 * n1 * n2 * o) + ELEMENT_MACS * 3 * n1 * n2 * o * o
    return Cost(cost, itemsize * (n1 * n2 * o * o + o * p))


def cheapest(costs: dict[str, Cost], budget: float) -> str:
    """The implementation of least ``macs`` among those whose peak fits ``budget``, else of least peak."""
    names = [name for name in CANDIDATES if name in costs]
    fitting = [name for name in names if costs[name].peak_bytes <= budget]
    if fitting:
        return min(fitting, key=lambda name: costs[name].macs)
    return min(names, key=lambda name: costs[name].peak_bytes)
