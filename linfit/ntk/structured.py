"""Structured empirical NTK: the exact per-layer factorisation, without per-sample parameter gradients.

The empirical NTK is a sum over parameter blocks, Θ = Σ_l Θ_l (Deshpande et al. 2021, Appendix A). For a
Dense or Conv layer each block factorises into the layer's inputs and its output cotangents,

    Θ_W(x_i, x_j)[o, o'] = Σ_{s,t} (P_i P_jᵀ)[s,t] (G_{i,o} G_{j,o'}ᵀ)[s,t],
    Θ_b(x_i, x_j)[o, o'] = <Σ_s G_{i,o}[s], Σ_t G_{j,o'}[t]>,

(Dense: ``S = 1`` position, ``P_i = a_i``, so Θ_W = <a_i, a_j> <g_{i,o}, g_{j,o'}>), the idea behind
neural-tangents' "structured derivatives" (Novak et al. 2022). Here it is implemented on public APIs:
one forward pass per sample records every layer's input and ``O`` backward passes produce the cotangents
with respect to the layer *outputs* only; each layer then picks, by a FLOP/memory estimate, between the
patch-Gram product and the per-sample layer gradient ``P_iᵀ G_{i,o}`` (see
:mod:`linfit.ntk.structured_contract`). Every other leaf goes through an exact per-sample Jacobian
contraction over just those leaves: parameters of other kinds (BatchNorm/LayerNorm/GroupNorm scale and
bias, embeddings, ``DenseGeneral`` and attention projections, parameters of a non-Flax function), layers called inside lifted transforms (``nn.scan``, ``nn.vmap``, ``nn.remat``), and a
Dense/Conv leaf that ``f`` also reads outside the layer's calls (tied weights), which the factorisation
would miss (:mod:`linfit.ntk.structured_layers`). So the kernel is exact whatever ``f`` does with its
parameters; only the speed depends on how much is factorised.

Output conventions follow neural-tangents' ``empirical_ntk_fn``: ``f(params, x) -> [N, O]``;
``ntk_fn(x1, x2, params)`` returns ``[N1, N2, O, O]`` (``trace_axes=()``), ``[N1, N2]`` traced over the
logit axis (``trace_axes=(-1,)``, the default; a traced axis is *averaged*: divided by ``O``), or
``[N1, N2, O]`` (``diagonal_axes=(-1,)``); ``x2=None`` means ``x1``.

Example::

    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
    >>> x = jnp.ones((4, 5))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> f = lambda p, x: model.apply({"params": p}, x)
    >>> structured_ntk_fn(f, trace_axes=())(x, None, params).shape
    (4, 4, 3, 3)
    >>> sorted(per_layer_ntk_fn(f)(x, None, params))
    ['layers_0', 'layers_2']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from linfit.errors import ShapeError, UnknownNameError, VmapAxesError
from linfit.ntk._checks import batch_size, check_finite, check_independent, check_pair, check_tree, signature
from linfit.ntk._contract import contract_jacobians, symmetric_share
from linfit.ntk._memo import memoised
from linfit.ntk.cost import ELEMENT_MACS, Cost, Forward, backward_cost
from linfit.ntk.structured_contract import (
    Mode,
    Route,
    choose_route,
    contract_gram,
    layer_gradient,
    mode_axes,
    output_pairs,
    route_costs,
)
from linfit.ntk.structured_layers import (
    Layer,
    find_layers,
    id_to_path,
    layer_cotangents,
    layer_inputs,
    perturbing_interceptor,
)
from linfit.ntk.vjp_rules import per_sample_vjps
from linfit.tree import ParamsFilter, leaf_paths, path_str, split_params

ApplyFn = Callable[[Any, Any], jax.Array]
NtkFn = Callable[[Any, Any, Any], jax.Array]

_ROUTES = ("auto", "gram", "gradient")


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static decisions for one set of input shapes: which leaves go where, and by which route."""

    mode: Mode
    o: int
    layers: dict[str, Layer]  # structured layers with at least one selected leaf
    kernel_route: dict[str, Route]  # layers whose kernel is selected
    bias_keys: frozenset[str]  # layers whose bias is selected
    fallback: frozenset[str]  # selected leaf paths handled by the Jacobian contraction
    key_of: dict[str, str]  # selected leaf path -> output key
    keys: tuple[str, ...]  # output keys, in parameter-tree order


def _names_logit_axis(axes: int | Sequence[int], name: str) -> bool:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    if any(a not in (1, -1) for a in axes):
        raise ShapeError(
            f"{name} may only name the logit axis (1 or -1) of f's [N, O] output; got {axes}"
        )
    return bool(axes)


def _mode(trace_axes: int | Sequence[int], diagonal_axes: int | Sequence[int]) -> Mode:
    traced = _names_logit_axis(trace_axes, "trace_axes")
    diagonal = _names_logit_axis(diagonal_axes, "diagonal_axes")
    if traced and diagonal:
        raise ShapeError(
            "the logit axis cannot be both traced and diagonal; pass it in one of trace_axes, diagonal_axes"
        )
    return "trace" if traced else "diag" if diagonal else "full"


def _make_plan(f, params, x1, n1, n2, mode, params_filter, vmap_axes, route) -> _Plan:
    selected, _ = split_params(params, params_filter)
    selected_paths = leaf_paths(selected)
    chosen = set(selected_paths)
    probe = jax.tree_util.tree_map(lambda a: a[:1], x1)
    found, out = memoised(f, ("layers", signature(probe, params)), lambda: find_layers(lambda p: f(p, probe), params))
    if len(out.shape) != 2:
        raise ShapeError(
            f"f(params, x) must return [N, O] logits; got shape {out.shape} for N=1"
        )
    o = out.shape[1]
    owner = {}
    for layer in found.values():
        owner[layer.kernel_path] = layer.key
        if layer.has_bias:
            owner[layer.bias_path] = layer.key
    key_of = {path: owner.get(path, path) for path in selected_paths}
    layers, kernel_route, bias_keys = {}, {}, set()
    if vmap_axes == 0:
        for key, layer in found.items():
            if layer.kernel_path in chosen and layer.kernel_exact:
                kernel_route[key] = (
                    "gradient"
                    if layer.groups > 1
                    else choose_route(
                        n1,
                        n2,
                        o,
                        layer.positions,
                        layer.features_in,
                        layer.features_out,
                        mode,
                    )
                    if route == "auto"
                    else route
                )
            if layer.has_bias and layer.bias_exact and layer.bias_path in chosen:
                bias_keys.add(key)
            if key in kernel_route or key in bias_keys:
                layers[key] = layer
    structured = {found[k].kernel_path for k in kernel_route} | {
        found[k].bias_path for k in bias_keys
    }
    return _Plan(
        mode=mode,
        o=o,
        layers=layers,
        kernel_route=kernel_route,
        bias_keys=frozenset(bias_keys),
        fallback=frozenset(chosen - structured),
        key_of=key_of,
        keys=tuple(dict.fromkeys(key_of[p] for p in selected_paths)),
    )


def structured_cost(
    f: ApplyFn,
    params: Any,
    x1: Any,
    n2: int | None,
    trace_axes: Sequence[int],
    diagonal_axes: Sequence[int],
    params_filter: ParamsFilter,
    fwd: Forward,
) -> Cost | None:
    """Cost (multiply-add equivalents) and peak bytes of :func:`structured_ntk_fn` (``vmap_axes=0``, route
    ``"auto"``) on ``x1 [N1, ...]`` and ``n2`` samples (``None``: ``x2 = None``), for :mod:`linfit.ntk.cost`;
    ``None`` when ``f`` has no layer to factorise (the kernel would be a Jacobian contraction of every leaf
    with the layer bookkeeping on top, never cheaper than ``"jacobian"``).

    Each gram-route layer costs its :func:`~linfit.ntk.structured_contract.route_costs`; each gradient-route
    kernel its layer gradients ``N_J·O·S·K·C`` and their ``N_J·O·K·C`` elements. All gradient-type blocks
    (those kernels, factorised biases, the leaves that fall back to Jacobian contraction) are contracted at
    once: ``N1·N2·Q·P_grad``, times :func:`linfit.ntk._contract.symmetric_share` when ``x2 = None``. Every
    kernel term writes ``N1·N2·Q`` elements. Derivatives: one forward and ``O`` backward passes to the layer
    outputs and the leaves that fall back per sample (each :func:`linfit.ntk.cost.backward_cost` w.r.t. the
    inputs and those leaves, ``≈ F``).
    Peak: the gradient-type blocks ``N_J·O·P_grad``, the layer inputs and cotangents ``N_J·Σ (S·K + O·S·C)``,
    the largest gram block. ``fwd``: one sample's forward pass (:func:`linfit.ntk.cost.forward_cost`).
    """
    n1 = batch_size(x1, "x1")
    symmetric = n2 is None
    n2 = n1 if symmetric else n2
    n_j = n1 if symmetric else n1 + n2
    mode = _mode(trace_axes, diagonal_axes)
    plan = _make_plan(f, params, x1, n1, n2, mode, params_filter, 0, "auto")
    if not plan.layers:
        return None
    o, q = plan.o, output_pairs(mode, plan.o)
    share = symmetric_share(n1, 2, mode_axes(mode)[0]) if symmetric else 1.0
    selected, _ = split_params(params, params_filter)
    sizes = {path_str(p): math.prod(jnp.shape(a)) for p, a in jax.tree_util.tree_flatten_with_path(selected)[0]}
    grad_params = sum(sizes[path] for path in plan.fallback)
    cost, gram_peak, factors, terms = 0.0, 0.0, 0.0, 1
    for key, layer in plan.layers.items():
        s, k, c = layer.positions, layer.features_in, layer.features_out
        factors += o * s * c + s * k * layer.groups
        if key in plan.bias_keys:
            grad_params += c
        if plan.kernel_route.get(key) == "gradient":
            cost += n_j * o * k * c * (s + ELEMENT_MACS)
            grad_params += k * c
        elif key in plan.kernel_route:
            gram_cost, gram_mem = route_costs(n1, n2, o, s, k, c, mode)["gram"]
            cost, gram_peak, terms = cost + gram_cost, max(gram_peak, gram_mem), terms + 1
    cost += share * n1 * n2 * q * grad_params + ELEMENT_MACS * terms * n1 * n2 * q
    bwd = backward_cost(f, params, x1, lambda path, leaf: path in plan.fallback, True, fwd)
    cost += fwd.passes(n_j) + bwd.passes(n_j * o)
    itemsize = jnp.result_type(*jax.tree_util.tree_leaves(selected)).itemsize
    return Cost(cost, itemsize * (n_j * (o * grad_params + factors) + gram_peak + n1 * n2 * q))


def _split_fallback(params: Any, plan: _Plan) -> tuple[dict, Callable[[Any], Any]]:
    if not plan.fallback:
        return {}, lambda _: params
    return split_params(params, lambda path, leaf: path in plan.fallback)


def _flat_jacobian(jac: Any, n: int, o: int, plan: _Plan) -> dict[str, list[jax.Array]]:
    """Jacobian leaves ``[N, O, *shape]`` -> ``{key: [[N, O, P_leaf], ...]}``."""
    out: dict[str, list[jax.Array]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(jac)[0]:
        out.setdefault(plan.key_of[path_str(path)], []).append(leaf.reshape(n, o, -1))
    return out


def _features(f: ApplyFn, params: Any, x: Any, plan: _Plan, vmap_axes: int | None):
    """Per-sample factors of ``x``: ``(grads, grams)``.

    ``grads[key]``: gradient-type blocks ``[N, O, P_t]`` (kernel gradients on the gradient route, summed
    bias cotangents, fallback Jacobian leaves); ``grams[key]``: ``(P [N, S, K], G [N, O, S, C])`` pairs of
    kernels on the gram route.
    """
    n = batch_size(x, "x")
    fb_tree, merge = _split_fallback(params, plan)
    if vmap_axes is None:
        jac = jax.jacrev(lambda fb: f(merge(fb), x))(fb_tree)
        return _flat_jacobian(jac, n, plan.o, plan), {}

    eps0 = {
        key: [jnp.zeros(call.out_shape, call.out_dtype) for call in layer.calls]
        for key, layer in plan.layers.items()
    }

    def sample_fn(eps, fb, x_i):
        full = merge(fb)
        acts: dict[str, list] = {}
        with nn.intercept_methods(perturbing_interceptor(id_to_path(full), eps, acts)):
            out = f(full, jax.tree_util.tree_map(lambda a: a[None], x_i))
        return out[0], acts

    jac_fn = jax.vmap(
        jax.jacrev(per_sample_vjps(sample_fn), argnums=(0, 1), has_aux=True), in_axes=(None, None, 0)
    )
    (cots, jac_fb), acts = jac_fn(eps0, fb_tree, x)
    grads = _flat_jacobian(jac_fb, n, plan.o, plan)
    grams: dict[str, list] = {}
    for key, layer in plan.layers.items():
        g = layer_cotangents(layer, cots[key])
        if key in plan.kernel_route:
            p = layer_inputs(layer, acts[key])
            if plan.kernel_route[key] == "gram":
                grams.setdefault(key, []).append((p, g))
            else:
                grads.setdefault(key, []).append(layer_gradient(p, g, layer.groups))
        if key in plan.bias_keys:
            grads.setdefault(key, []).append(g.sum(axis=2))
    return grads, grams


def _kernel(
    grads1, grams1, grads2, grams2, keys: Sequence[str], plan: _Plan, symmetric: bool
) -> jax.Array:
    """The kernel of the blocks under ``keys``: one contraction over all their gradient-type blocks
    (:func:`linfit.ntk._contract.contract_jacobians`; ``symmetric``: the two sides are the same samples,
    ``x2 = None``), plus each gram-route layer; traced kernels averaged over the ``O`` outputs."""
    blocks1 = [b for k in keys for b in grads1.get(k, [])]
    blocks2 = None if symmetric else [b for k in keys for b in grads2.get(k, [])]
    grams = [
        contract_gram(p1, g1, p2, g2, plan.mode)
        for k in keys
        for (p1, g1), (p2, g2) in zip(grams1.get(k, []), grams2.get(k, []))
    ]
    total = sum(grams[1:], grams[0]) / (plan.o if plan.mode == "trace" else 1) if grams else None
    if blocks1:
        grad = contract_jacobians(blocks1, blocks2, (blocks1[0].shape[0], plan.o), *mode_axes(plan.mode))
        total = grad if total is None else total + grad
    return total


def _build(
    f, trace_axes, diagonal_axes, vmap_axes, params_filter, route, per_layer: bool
):
    mode = _mode(trace_axes, diagonal_axes)
    if vmap_axes not in (0, None):
        raise VmapAxesError(
            f"vmap_axes must be 0 (independent samples) or None (samples interact); got {vmap_axes!r}"
        )
    if route not in _ROUTES:
        raise UnknownNameError(f"route must be one of {_ROUTES}; got {route!r}")

    def kernels(x1, x2, params):
        n1 = batch_size(x1, "x1")
        if x2 is not None:
            check_pair(x1, x2)
        n2 = n1 if x2 is None else batch_size(x2, "x2")
        plan = _make_plan(f, params, x1, n1, n2, mode, params_filter, vmap_axes, route)
        if x2 is None:
            grads1, grams1 = grads2, grams2 = _features(f, params, x1, plan, vmap_axes)
        elif vmap_axes is None:  # samples interact: each batch on its own
            grads1, grams1 = _features(f, params, x1, plan, vmap_axes)
            grads2, grams2 = _features(f, params, x2, plan, vmap_axes)
        else:  # independent samples: one pass over both batches (one trace of f, one compiled backward)
            both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), x1, x2)
            feats = _features(f, params, both, plan, vmap_axes)
            (grads1, grams1), (grads2, grams2) = (
                jax.tree_util.tree_map(lambda a: a[:n1], feats),
                jax.tree_util.tree_map(lambda a: a[n1:], feats),
            )
        if per_layer:
            return {
                k: _kernel(grads1, grams1, grads2, grams2, (k,), plan, x2 is None)
                for k in plan.keys
            }
        return _kernel(grads1, grams1, grads2, grams2, plan.keys, plan, x2 is None)

    return jax.jit(kernels)


def _checked(kernels: Callable, f: ApplyFn, vmap_axes: int | None, params_filter: ParamsFilter) -> Callable:
    """``kernels`` behind the input checks of :mod:`linfit.ntk._checks` (tree and independence once per
    signature, finiteness on every concrete call)."""
    checked: set = set()

    def fn(x1, x2, params):
        batch_size(x1, "x1")
        if x2 is not None:
            check_pair(x1, x2)
            batch_size(x2, "x2")
        check_finite(x1=x1, x2=x2, params=params)
        key = signature(x1, params)
        if key not in checked:
            check_tree(f, params, x1, params_filter)
            if vmap_axes is None or check_independent(f, params, x1, x2):
                checked.add(key)
        return kernels(x1, x2, params)

    return fn


def structured_ntk_fn(
    f: ApplyFn,
    *,
    trace_axes: int | Sequence[int] = (-1,),
    diagonal_axes: int | Sequence[int] = (),
    vmap_axes: int | None = 0,
    params_filter: ParamsFilter = None,
    route: str = "auto",
) -> NtkFn:
    """The empirical NTK of ``f`` by per-layer factorisation (module docstring), jitted.

    Users get it as ``linfit.ntk.empirical_ntk_fn(f, implementation="structured")`` (or ``"auto"``), which
    returns a :class:`linfit.ntk.NtkFn`; this function is that kernel plus ``route``, for studies and tests.

    Args:
      f: ``f(params, x) -> [N, O]``, pure; typically closes over a ``flax.linen`` model in eval mode.
      trace_axes: ``(-1,)`` (average over the logit axis) or ``()``.
      diagonal_axes: ``(-1,)`` (keep only ``o = o'``) or ``()``.
      vmap_axes: ``0`` when samples are independent (enables the factorisation); ``None`` when they
        interact: then the whole-batch Jacobian contraction is used.
      params_filter: the parameter leaves the kernel is taken with respect to (``linfit.tree``).
      route: ``"auto"`` (per-layer FLOP/memory estimate), or force ``"gram"`` / ``"gradient"`` for every
        factorised kernel (both exact; for studies and tests). Grouped/depthwise convolutions always take
        the gradient route.

    Returns:
      ``ntk_fn(x1, x2, params)``: ``x1 [N1, ...]``, ``x2 [N2, ...]`` or ``None`` (means ``x1``) ->
      ``[N1, N2]`` traced, ``[N1, N2, O]`` diagonal, ``[N1, N2, O, O]`` otherwise.

    Raises:
      ShapeError: axes other than the logit axis, ``f`` not returning ``[N, O]``, mismatched ``x1``/``x2``.
      UnknownNameError: ``route`` not ``"auto"``, ``"gram"`` or ``"gradient"``.
      VmapAxesError: ``vmap_axes`` other than ``0`` or ``None``; ``vmap_axes=0`` on a model whose samples
        interact (at the first call).
      ParamsFilterError: the filter selects nothing.
      TreeMismatchError: ``f`` fails on ``params``, or selected leaves are never read by ``f``.
      NonFiniteError: NaN/inf in ``x1``, ``x2`` or ``params`` (concrete calls only).
    """
    return _checked(
        unchecked_structured_ntk_fn(
            f, trace_axes=trace_axes, diagonal_axes=diagonal_axes, vmap_axes=vmap_axes,
            params_filter=params_filter, route=route,
        ),
        f,
        vmap_axes,
        params_filter,
    )


def unchecked_structured_ntk_fn(
    f: ApplyFn,
    *,
    trace_axes: int | Sequence[int] = (-1,),
    diagonal_axes: int | Sequence[int] = (),
    vmap_axes: int | None = 0,
    params_filter: ParamsFilter = None,
    route: str = "auto",
) -> NtkFn:
    """:func:`structured_ntk_fn` without its input checks (tree, independence, finiteness): for a caller
    that runs them itself once per input signature (:class:`linfit.ntk.empirical.NtkFn`). Jitted."""
    return _build(
        f, trace_axes, diagonal_axes, vmap_axes, params_filter, route, per_layer=False
    )


def per_layer_ntk_fn(
    f: ApplyFn,
    *,
    trace_axes: int | Sequence[int] = (-1,),
    diagonal_axes: int | Sequence[int] = (),
    vmap_axes: int | None = 0,
    params_filter: ParamsFilter = None,
    route: str = "auto",
) -> Callable[[Any, Any, Any], dict[str, jax.Array]]:
    """Per-layer empirical NTKs Θ_l, whose sum is :func:`structured_ntk_fn`'s kernel. Jitted.

    Arguments as :func:`structured_ntk_fn`. Returns ``fn(x1, x2, params) -> {key: kernel}``: one entry per
    factorised Dense/Conv layer with a selected leaf, keyed by its parameter path (e.g.
    ``"stage2/block0/conv1"``; kernel and bias together), and one per other selected leaf, keyed by the
    leaf's path (e.g. ``"stage2/block0/bn1/scale"``). Keys are the same for ``vmap_axes=0`` and ``None``.

    Raises:
      As :func:`structured_ntk_fn`.
    """
    return _checked(
        _build(f, trace_axes, diagonal_axes, vmap_axes, params_filter, route, per_layer=True),
        f,
        vmap_axes,
        params_filter,
    )


JACOBIAN_CHUNK = 64
"""Samples per compiled call of :func:`per_sample_jacobian_fn` in the streaming callers (Jacobian panels, Jacobian
rows on disk). The call's XLA work space is about eight times its output rows: on the small CNN (``O·P·4`` bytes
≈ 1 MB per sample) 512 samples per call peaked at 5.5 GiB, 64 at 1.1 GiB, at the same speed."""


def per_sample_jacobian_fn(
    f: ApplyFn, *, params_filter: ParamsFilter = None
) -> Callable[[Any, Any], jax.Array]:
    """Every sample's Jacobian ``J [N, O, P]`` of its logits w.r.t. the selected parameters, jitted.

    Built from the structured factors (one forward pass per sample, ``O`` backward passes to the layer
    outputs, then ``D_{i,o} = P_iᵀ G_{i,o}`` per Dense/Conv layer), which avoids batching per-sample weight
    gradients through the convolutions; other leaves come from a per-sample ``jacrev``. Samples must be
    independent (``vmap_axes=0``). The parameter axis is ordered layer by layer (each layer's kernel gradient,
    then its bias, then other leaves), not in tree order: a contraction over it, such as the kernel
    ``Θ[i, j, o, o'] = Σ_p J[i, o, p] J[j, o', p]``, does not depend on the order.

    Returns:
      ``rows(x [N, ...], params) -> [N, O, P]`` with ``P`` the number of selected parameters.
    """

    def rows(x, params):
        n = batch_size(x, "x")
        plan = _make_plan(f, params, x, n, n, "full", params_filter, 0, "gradient")
        grads, _ = _features(f, params, x, plan, 0)
        return jnp.concatenate([b for k in plan.keys for b in grads.get(k, [])], axis=-1)

    return jax.jit(rows)
