"""``empirical_ntk_fn``: the empirical neural tangent kernel with neural-tangents' semantics.

    Theta(x1, x2) = J(x1) J(x2)^T,   J(x) = d f(params, x) / d params   (selected leaves only)

Example::

    >>> import jax, jax.numpy as jnp
    >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
    >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
    >>> ntk_fn = empirical_ntk_fn(f)                      # traced over the logit axis
    >>> ntk_fn(jnp.ones((5, 3)), None, params).shape
    (5, 5)
    >>> empirical_ntk_fn(f, trace_axes=())(jnp.ones((5, 3)), jnp.ones((2, 3)), params).shape
    (5, 2, 2, 2)

Output layout and normalisation: see :mod:`linfit.ntk._contract` (a traced axis is averaged:
traced = trace(untraced) / O, as in neural-tangents).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from linfit.errors import ShapeError, UnknownNameError, VmapAxesError
from linfit.ntk._checks import batch_size, check_finite, check_independent, check_pair, check_tree, signature
from linfit.ntk._contract import groups, normalize_axes, symmetric_share, transpose_kernel
from linfit.ntk.cost import (
    Cost,
    backward_cost,
    cheapest,
    forward_cost,
    jacobian_cost,
    memory_budget,
    output_pairs,
    products_cost,
)
from linfit.ntk.jacobian import jacobian_ntk
from linfit.ntk.products import products_ntk
from linfit.tree import ParamsFilter, as_predicate, split_params

ApplyFn = Callable[[Any, Any], Any]

IMPLEMENTATIONS = ("jacobian", "products", "structured", "auto")
_BUILDERS = {"jacobian": jacobian_ntk, "products": products_ntk}


def empirical_ntk_fn(
    f: ApplyFn,
    *,
    trace_axes: int | Sequence[int] = (-1,),
    diagonal_axes: int | Sequence[int] = (),
    vmap_axes: int | None = 0,
    implementation: str = "auto",
    params_filter: ParamsFilter = None,
) -> NtkFn:
    """Return ``ntk_fn(x1, x2, params)`` computing the empirical NTK of ``f``.

    Args:
      f: pure ``apply_fn(params, x) -> out``; ``x`` an array ``[N, ...]`` or a pytree of arrays sharing the
        leading batch axis ``N``; ``out`` an array ``[N, *out]`` (logits ``[N, O]``) or a pytree of such
        arrays (several heads). BatchNorm statistics and other state closed over.
      trace_axes: output axes (of each output leaf, not the batch axis 0; an int names one) contracted and
        AVERAGED over (divided by their size). ``(-1,)`` gives ``[N1, N2]``; ``()`` gives ``[N1, N2, O, O]``.
      diagonal_axes: output axes on which only the diagonal is kept: ``(-1,)`` with
        ``trace_axes=()`` gives ``[N1, N2, O]``.
      vmap_axes: ``0`` when samples are independent (per-sample Jacobians under ``vmap``); ``None``
        when they interact (Jacobians of the whole batch). ``0`` on a model whose samples interact
        (BatchNorm in train mode) raises ``VmapAxesError`` on the first call.
      implementation: ``"jacobian"`` (Jacobian contraction), ``"products"`` (NTK-vector products, no
        per-sample Jacobians), ``"structured"`` (:func:`linfit.ntk.structured.structured_ntk_fn`), or
        ``"auto"`` (default): per output leaf and per input shapes, the exact implementation with the
        fewest multiply-adds whose peak memory fits the budget, by the cost model of
        :mod:`linfit.ntk.cost` (``"structured"`` only where it applies: ``vmap_axes=0``, output
        ``[N, O]``). All three are exact, so the choice changes speed and memory only. Override it when
        you measured another implementation faster on your model (the model ignores constant factors,
        so implementations within about 2× of each other can be ranked either way), when memory is tight
        (``"products"`` holds no per-sample derivatives), or to keep one compiled program across sizes
        (``"auto"`` may switch implementation, and recompile, when ``N`` changes).
      params_filter: the kernel is w.r.t. the selected leaves only, the others held fixed
        (see :mod:`linfit.tree`).

    Returns:
      An :class:`NtkFn`; call it as ``ntk_fn(x1 [N1, ...], x2 [N2, ...] | None, params)``. When ``f``
      returns a pytree, the result is the same pytree with one kernel per output leaf (the kernel of that
      leaf alone; no cross-terms between leaves, as neural-tangents' ``empirical_ntk_fn``). What a call
      raises: :meth:`NtkFn.__call__`.

    Raises:
      UnknownNameError: ``implementation`` is not one of ``IMPLEMENTATIONS``.
      VmapAxesError: ``vmap_axes`` is neither ``0`` nor ``None``.
      ParamsFilterError: ``params_filter`` is not a form :mod:`linfit.tree` accepts (a filter that selects no
        leaf is reported by the first call).
    """
    if implementation not in IMPLEMENTATIONS:
        raise UnknownNameError(
            f"unknown NTK implementation {implementation!r}; expected one of {IMPLEMENTATIONS}"
        )
    if vmap_axes not in (0, None):
        raise VmapAxesError(
            f"vmap_axes must be 0 (independent samples) or None; got {vmap_axes!r}"
        )
    as_predicate(params_filter)  # reject malformed filters now
    return NtkFn(
        f,
        (trace_axes,) if isinstance(trace_axes, int) else tuple(trace_axes),
        (diagonal_axes,) if isinstance(diagonal_axes, int) else tuple(diagonal_axes),
        vmap_axes,
        implementation,
        params_filter,
    )


class NtkFn:
    """The callable returned by :func:`empirical_ntk_fn`.

    ``ntk_fn(x1, x2, params)`` validates its inputs, then runs a jitted kernel per output leaf. On every call
    with concrete inputs, NaN/inf in ``x1``, ``x2`` or ``params`` raise ``NonFiniteError`` naming the
    argument. Once per input/parameter signature: params that ``f`` fails on, or selected leaves that ``f``
    never reads, raise ``TreeMismatchError``; ``vmap_axes=0`` on interacting samples raises ``VmapAxesError``
    (``f``'s values and random directional derivatives on a few distinct samples, batched vs one at a time;
    see :func:`linfit.ntk._checks.check_independent`). :meth:`transpose`, :meth:`outputs_per_sample` and
    :meth:`num_params` serve :func:`linfit.ntk.kernel`; :meth:`resolve_auto` and :meth:`costs`
    tell what ``"auto"`` picks and why.
    """

    def __init__(
        self, f, trace_axes, diagonal_axes, vmap_axes, implementation, params_filter
    ):
        self.f = f
        self.trace_axes = trace_axes
        self.diagonal_axes = diagonal_axes
        self.vmap_axes = vmap_axes
        self.implementation = implementation
        self.params_filter = params_filter
        self._kernels: dict[tuple, Callable] = {}
        self._checked: dict[tuple, Any] = {}  # signature -> f's output structure, after check_tree
        self._independent: set = set()  # signatures the independence probe passed
        self._picks: dict[tuple, str] = {}

    def __call__(self, x1: Any, x2: Any | None, params: Any) -> Any:
        """The empirical NTK of ``f`` between ``x1`` and ``x2`` at ``params`` (class docstring: when each check runs).

        Args:
          x1: ``[N1, ...]``, an array or a pytree of arrays sharing the leading batch axis ``N1``.
          x2: ``[N2, ...]`` with the structure and per-sample shapes of ``x1``, or ``None`` for ``x1``.
          params: the parameters ``f`` is applied to.

        Returns:
          ``[N1, N2, ...]`` (layout: :func:`empirical_ntk_fn`), or a pytree of kernels, one per output leaf of ``f``.

        Raises:
          ShapeError: ``x1``/``x2`` leaves do not share one non-zero batch size, ``x1`` and ``x2`` differ in
            structure or per-sample shapes, an output leaf of ``f`` is not an array ``[N, ...]``, ``trace_axes`` or
            ``diagonal_axes`` do not fit ``f``'s output (out of range, the batch axis 0, repeated, both traced and
            diagonal), or ``implementation="structured"`` for an output that is not ``[N, O]``.
          TreeMismatchError: ``f`` fails on ``params`` (and one sample of ``x1``), or a selected leaf is never read.
          ParamsFilterError: ``params_filter`` selects no leaf.
          NonFiniteError: NaN/inf in ``x1``, ``x2`` or ``params`` (concrete inputs only).
          VmapAxesError: ``vmap_axes=0`` and ``f``'s samples interact (concrete inputs only).
        """
        x1, x2, out = self._prepare(x1, x2, params)
        check_finite(x1=x1, x2=x2, params=params)
        self._check(x1, x2, params)
        leaves, treedef = jax.tree_util.tree_flatten(out)
        kernels = []
        for k in range(len(leaves)):
            implementation = self.implementation
            if implementation == "auto":
                implementation = self._pick(k, out, x1, x2, params)
            kernels.append(self._kernel(implementation, k, out)(x1, x2, params))
        return jax.tree_util.tree_unflatten(treedef, kernels)

    def validate(self, x1: Any, x2: Any | None, params: Any) -> None:
        """The checks of a call (shapes, finiteness, tree, sample independence) without computing a kernel:
        for a caller that then runs this function on tiles of ``x1``/``x2`` under ``jax.jit``, where the
        checks cannot run (:func:`linfit.ntk.kernel`).

        Raises:
          ShapeError: as :meth:`__call__`, except the ``implementation="structured"`` check (made when computing).
          TreeMismatchError, ParamsFilterError, NonFiniteError, VmapAxesError: as :meth:`__call__`.
        """
        x1, x2, _ = self._prepare(x1, x2, params)
        check_finite(x1=x1, x2=x2, params=params)
        self._check(x1, x2, params)

    def transpose(self, kernel: Any) -> Any:
        """``Theta(x2, x1)`` from a kernel ``Theta(x1, x2)`` (or a pytree of them) computed by this function."""
        return jax.tree_util.tree_map(
            lambda k: transpose_kernel(k, self.trace_axes, self.diagonal_axes), kernel
        )

    def outputs_per_sample(self, x: Any, params: Any) -> int:
        """``O``: the number of outputs ``f`` produces per sample (summed over output leaves)."""
        out = jax.eval_shape(self.f, params, jax.tree_util.tree_map(lambda a: a[:1], x))
        return sum(math.prod(leaf.shape[1:]) for leaf in jax.tree_util.tree_leaves(out))

    def num_params(self, params: Any) -> int:
        """``P``: the number of selected parameters."""
        selected, _ = split_params(params, self.params_filter)
        return sum(
            math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(selected)
        )

    def costs(self, x1: Any, x2: Any | None, params: Any) -> Any:
        """``{implementation: linfit.ntk.cost.Cost}`` of every candidate for these inputs (a pytree of such
        dicts, one per output leaf, when ``f`` returns a pytree); :mod:`linfit.ntk.cost` has the model."""
        x1, x2, out = self._prepare(x1, x2, params)
        leaves, treedef = jax.tree_util.tree_flatten(out)
        per_leaf = [self._leaf_costs(k, out, x1, x2, params) for k in range(len(leaves))]
        return per_leaf[0] if treedef == jax.tree_util.tree_structure(0) else jax.tree_util.tree_unflatten(
            treedef, per_leaf
        )

    def resolve_auto(self, x1: Any, x2: Any | None, params: Any) -> Any:
        """The implementation ``"auto"`` picks for these inputs (a pytree of names for a pytree output):
        :func:`linfit.ntk.cost.cheapest` of :meth:`costs`."""
        x1, x2, out = self._prepare(x1, x2, params)
        leaves, treedef = jax.tree_util.tree_flatten(out)
        picks = [self._pick(k, out, x1, x2, params) for k in range(len(leaves))]
        return jax.tree_util.tree_unflatten(treedef, picks)

    def _prepare(self, x1, x2, params):
        """Inputs as arrays, checked for a shared batch axis and matching feature shapes; ``f``'s output
        structure (``ShapeDtypeStruct`` leaves) for one sample."""
        x1 = jax.tree_util.tree_map(jnp.asarray, x1)
        x2 = None if x2 is None else jax.tree_util.tree_map(jnp.asarray, x2)
        batch_size(x1, "x1")
        if x2 is not None:
            batch_size(x2, "x2")
            check_pair(x1, x2)
        key = signature(x1, params)
        if key not in self._checked:
            out = check_tree(self.f, params, x1, self.params_filter)
            for leaf in jax.tree_util.tree_leaves(out):
                if not isinstance(leaf, jax.ShapeDtypeStruct) or leaf.ndim < 1:
                    raise ShapeError(
                        f"f must return an array [N, ...] or a pytree of them; got an output leaf {leaf}"
                    )
                normalize_axes(self.trace_axes, self.diagonal_axes, leaf.ndim)
            self._checked[key] = out
            return x1, x2, out
        return x1, x2, self._checked[key]

    def _check(self, x1, x2, params) -> None:
        """The sample-independence probe, once per signature (again while it cannot run: tracers)."""
        key = signature(x1, params)
        if self.vmap_axes != 0 or key in self._independent:
            return
        if check_independent(self.f, params, x1, x2):
            self._independent.add(key)

    def _leaf_fn(self, k: int, out: Any) -> ApplyFn:
        """``f`` restricted to its ``k``-th output leaf (``f`` itself for an array output)."""
        if jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(0):
            return self.f
        return lambda p, x: jax.tree_util.tree_leaves(self.f(p, x))[k]

    def _leaf_costs(self, k, out, x1, x2, params) -> dict[str, Cost]:
        leaf = jax.tree_util.tree_leaves(out)[k]
        f_k = self._leaf_fn(k, out)
        n1 = batch_size(x1, "x1")
        n2 = n1 if x2 is None else batch_size(x2, "x2")
        trace, diag = normalize_axes(self.trace_axes, self.diagonal_axes, leaf.ndim)
        o, q = math.prod(leaf.shape[1:]), output_pairs(leaf.shape, trace, diag)
        p, fwd, itemsize = self.num_params(params), forward_cost(f_k, params, x1), leaf.dtype.itemsize
        bwd = backward_cost(f_k, params, x1, as_predicate(self.params_filter), False, fwd)
        selected = jax.tree_util.tree_leaves(split_params(params, self.params_filter)[0])
        block_bytes = [n1 * o * a.size * a.dtype.itemsize for a in selected]
        products = len(groups(block_bytes))
        share = symmetric_share(n1, leaf.ndim, trace) if x2 is None else 1.0
        batched = self.vmap_axes is None
        costs = {
            "jacobian": jacobian_cost(n1, n2, x2 is None, o, q, p, products, share, fwd, bwd, itemsize, batched),
            "products": products_cost(n1, n2, o, p, fwd, itemsize, batched),
        }
        if not batched and leaf.ndim == 2:  # structured factorises [N, O] outputs of independent samples
            from linfit.ntk.structured import structured_cost

            structured = structured_cost(
                f_k, params, x1, None if x2 is None else n2, self.trace_axes, self.diagonal_axes,
                self.params_filter, fwd,
            )
            if structured is not None:
                costs["structured"] = structured
        return costs

    def _pick(self, k, out, x1, x2, params) -> str:
        key = (k, signature(x1, params), batch_size(x1, "x1"), None if x2 is None else batch_size(x2, "x2"))
        if key not in self._picks:
            self._picks[key] = cheapest(self._leaf_costs(k, out, x1, x2, params), memory_budget())
        return self._picks[key]

    def _kernel(self, implementation: str, k: int, out: Any) -> Callable:
        key = (implementation, k)
        if key not in self._kernels:
            f_k = self._leaf_fn(k, out)
            if implementation == "structured":
                from linfit.ntk.structured import unchecked_structured_ntk_fn

                kernel = unchecked_structured_ntk_fn(
                    f_k,
                    trace_axes=self.trace_axes,
                    diagonal_axes=self.diagonal_axes,
                    vmap_axes=self.vmap_axes,
                    params_filter=self.params_filter,
                )
            else:
                kernel = jax.jit(self._traced_kernel(_BUILDERS[implementation], f_k))
            self._kernels[key] = kernel
        return self._kernels[key]

    def _traced_kernel(self, build: Callable, f: ApplyFn) -> Callable:
        def kernel(x1, x2, params):
            selected, merge = split_params(params, self.params_filter)
            f_sel = lambda p, x: f(merge(p), x)
            out_ndim = jax.eval_shape(f_sel, selected, x1).ndim
            trace, diag = normalize_axes(self.trace_axes, self.diagonal_axes, out_ndim)
            return build(
                f_sel,
                selected,
                x1,
                x2,
                trace=trace,
                diag=diag,
                vmap_axes=self.vmap_axes,
            )

        return kernel
