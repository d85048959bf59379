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
from linfit.ntk._checks import check_finite, check_independent, check_tree, signature
from linfit.ntk._contract import normalize_axes, transpose_kernel
from linfit.ntk.jacobian import jacobian_ntk
from linfit.ntk.products import products_ntk
from linfit.tree import ParamsFilter, as_predicate, split_params

ApplyFn = Callable[[Any, jax.Array], jax.Array]

IMPLEMENTATIONS = ("jacobian", "products", "structured", "auto")
# "auto" uses Jacobian contraction while the two Jacobians fit in this many bytes, else products.
AUTO_JACOBIAN_BYTES = 2**30
_BUILDERS = {"jacobian": jacobian_ntk, "products": products_ntk}


def empirical_ntk_fn(
    f: ApplyFn,
    *,
    trace_axes: Sequence[int] = (-1,),
    diagonal_axes: Sequence[int] = (),
    vmap_axes: int | None = 0,
    implementation: str = "jacobian",
    params_filter: ParamsFilter = None,
) -> NtkFn:
    """Return ``ntk_fn(x1, x2, params)`` computing the empirical NTK of ``f``.

    Args:
      f: pure ``apply_fn(params, x [N, ...]) -> [N, *out]`` returning one array (logits ``[N, O]``);
        BatchNorm statistics and other state closed over.
      trace_axes: output axes (of ``f(x)``, not the batch axis 0) contracted and AVERAGED over
        (divided by their size). ``(-1,)`` gives ``[N1, N2]``; ``()`` gives ``[N1, N2, O, O]``.
      diagonal_axes: output axes on which only the diagonal is kept: ``(-1,)`` with
        ``trace_axes=()`` gives ``[N1, N2, O]``.
      vmap_axes: ``0`` when samples are independent (per-sample Jacobians under ``vmap``); ``None``
        when they interact (Jacobians of the whole batch). ``0`` on a model whose samples interact
        (BatchNorm in train mode) raises ``VmapAxesError`` on the first call.
      implementation: ``"jacobian"`` (Jacobian contraction), ``"products"`` (NTK-vector products, no
        per-sample Jacobians), ``"structured"`` (:func:`linfit.ntk.structured.structured_ntk_fn`), or
        ``"auto"``: ``"jacobian"`` when ``itemsize * (N1 + N2) * O * P <= AUTO_JACOBIAN_BYTES`` (1 GiB;
        ``O`` outputs per sample, ``P`` selected parameters), else ``"products"``.
      params_filter: the kernel is w.r.t. the selected leaves only, the others held fixed
        (see :mod:`linfit.tree`).

    Returns:
      An :class:`NtkFn`; call it as ``ntk_fn(x1 [N1, ...], x2 [N2, ...] | None, params)``.
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
        tuple(trace_axes),
        tuple(diagonal_axes),
        vmap_axes,
        implementation,
        params_filter,
    )


class NtkFn:
    """The callable returned by :func:`empirical_ntk_fn`.

    ``ntk_fn(x1, x2, params)`` validates its inputs, then runs a jitted kernel. On every call with concrete
    inputs, NaN/inf in ``x1``, ``x2`` or ``params`` raise ``NonFiniteError`` naming the argument. Once per
    input/parameter signature: params that ``f`` fails on, or selected leaves that ``f`` never reads, raise
    ``TreeMismatchError``; ``vmap_axes=0`` on interacting samples raises ``VmapAxesError`` (``f``'s values and
    random directional derivatives on a few distinct samples, batched vs one at a time; see
    :func:`linfit.ntk._checks.check_independent`). :meth:`transpose`, :meth:`outputs_per_sample` and :meth:`num_params` serve
    :func:`linfit.ntk.kernel`.
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
        self._kernels: dict[str, Callable] = {}
        self._checked: set = set()

    def __call__(self, x1: Any, x2: Any | None, params: Any) -> jax.Array:
        x1 = jnp.asarray(x1)
        x2 = None if x2 is None else jnp.asarray(x2)
        if x1.ndim < 1 or (x2 is not None and x2.ndim < 1):
            raise ShapeError("x1 and x2 must have a leading batch axis [N, ...]")
        if x2 is not None and x1.shape[1:] != x2.shape[1:]:
            raise ShapeError(
                f"x1 and x2 feature shapes differ: {x1.shape[1:]} vs {x2.shape[1:]}"
            )
        check_finite(x1=x1, x2=x2, params=params)
        self._check(x1, x2, params)
        implementation = self.implementation
        if implementation == "auto":
            implementation = self.resolve_auto(x1, x2, params)
        return self._kernel(implementation)(x1, x2, params)

    def transpose(self, kernel: Any) -> Any:
        """``Theta(x2, x1)`` from a kernel ``Theta(x1, x2)`` computed by this function."""
        return transpose_kernel(kernel, self.trace_axes, self.diagonal_axes)

    def outputs_per_sample(self, x: Any, params: Any) -> int:
        """``O``: the number of outputs ``f`` produces per sample."""
        return math.prod(jax.eval_shape(self.f, params, x[:1]).shape[1:])

    def num_params(self, params: Any) -> int:
        """``P``: the number of selected parameters."""
        selected, _ = split_params(params, self.params_filter)
        return sum(
            math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(selected)
        )

    def resolve_auto(self, x1: Any, x2: Any | None, params: Any) -> str:
        """The implementation "auto" picks for these inputs (rule in :func:`empirical_ntk_fn`)."""
        n = x1.shape[0] + (0 if x2 is None else x2.shape[0])
        jac_bytes = (
            x1.dtype.itemsize
            * n
            * self.outputs_per_sample(x1, params)
            * self.num_params(params)
        )
        return "jacobian" if jac_bytes <= AUTO_JACOBIAN_BYTES else "products"

    def _kernel(self, implementation: str) -> Callable:
        if implementation not in self._kernels:
            if implementation == "structured":
                from linfit.ntk.structured import structured_ntk_fn

                kernel = structured_ntk_fn(
                    self.f,
                    trace_axes=self.trace_axes,
                    diagonal_axes=self.diagonal_axes,
                    vmap_axes=self.vmap_axes,
                    params_filter=self.params_filter,
                )
            else:
                kernel = jax.jit(self._traced_kernel(_BUILDERS[implementation]))
            self._kernels[implementation] = kernel
        return self._kernels[implementation]

    def _traced_kernel(self, build: Callable) -> Callable:
        def kernel(x1, x2, params):
            selected, merge = split_params(params, self.params_filter)
            f_sel = lambda p, x: self.f(merge(p), x)
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

    def _check(self, x1, x2, params) -> None:
        key = signature(x1, params)
        if key in self._checked:
            return
        out = check_tree(self.f, params, x1, self.params_filter)
        if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim < 1:
            raise ShapeError(f"f must return one array [N, ...]; got {out}")
        normalize_axes(self.trace_axes, self.diagonal_axes, out.ndim)
        if self.vmap_axes == 0 and not check_independent(self.f, params, x1, x2):
            return  # tracers, or too few distinct samples: check again on the next call
        self._checked.add(key)
