"""Input checks shared by the NTK kernel functions (:class:`linfit.ntk.empirical.NtkFn`,
:func:`linfit.ntk.structured.structured_ntk_fn`): the parameter tree, finiteness, sample independence.

Each check runs on concrete values only and returns quietly on tracers (a kernel function called under
``jax.jit``, ``shard_map`` or another transformation), so traced use is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from linfit.errors import LinfitError, NonFiniteError, ShapeError, TreeMismatchError, VmapAxesError
from linfit.ntk._memo import memoised
from linfit.ntk._usage import unread_leaves
from linfit.tree import ParamsFilter, leaf_paths, path_str, split_params

#: Distinct samples the independence probe evaluates (batched and one at a time).
PROBE_SAMPLES = 4
#: Rows of x1 (and of x2) searched for distinct probe samples.
PROBE_CANDIDATES = 64


def is_concrete(*trees: Any) -> bool:
    """True when no leaf of ``trees`` is a JAX tracer."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def signature(x: Any, params: Any) -> tuple:
    """A hashable key of the per-sample shapes/dtypes of ``x`` and the structure/shapes of ``params``:
    the checks below depend on nothing else, so callers run them once per signature."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    x_leaves, x_def = jax.tree_util.tree_flatten(x)
    return (
        treedef,
        tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves),
        x_def,
        tuple((jnp.shape(a)[1:], jnp.result_type(a)) for a in x_leaves),
    )


def batch_size(x: Any, name: str) -> int:
    """The shared leading batch size of the array (or tree of arrays) ``x``.

    Raises:
      ShapeError: a leaf has no batch axis, or the leaves' leading sizes differ or are 0.
    """
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves or any(jnp.ndim(a) == 0 for a in leaves):
        raise ShapeError(
            f"{name} must be an array (or tree of arrays) with a leading batch axis [N, ...]; got {x!r:.80}"
        )
    sizes = {jnp.shape(a)[0] for a in leaves}
    if len(sizes) != 1 or 0 in sizes:
        raise ShapeError(
            f"{name}'s leaves must share one non-zero leading batch size; got {sorted(sizes)}"
        )
    return sizes.pop()


def check_pair(x1: Any, x2: Any) -> None:
    """Raise ``ShapeError`` unless ``x1`` and ``x2`` have the same tree structure and per-sample shapes."""
    s1 = jax.tree_util.tree_map(lambda a: jnp.shape(a)[1:], x1)
    s2 = jax.tree_util.tree_map(lambda a: jnp.shape(a)[1:], x2)
    if jax.tree_util.tree_structure(x1) != jax.tree_util.tree_structure(x2) or s1 != s2:
        raise ShapeError(f"x1 and x2 feature shapes differ: {s1} vs {s2}")


@jax.jit
def _finite_flags(tree: Any) -> list[jax.Array]:
    return [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]


def check_finite(**named: Any) -> None:
    """Raise ``NonFiniteError`` naming the first argument (and parameter leaf) holding NaN or inf.

    ``named`` maps argument names (``x1=..., x2=..., params=...``) to arrays or trees; ``None`` and
    integer leaves are skipped; nothing is checked when a leaf is a tracer.
    """
    if not is_concrete(named):
        return
    named_leaves = [
        (name, path_str(path), leaf)
        for name, tree in named.items()
        if tree is not None
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    flags = jax.device_get(_finite_flags([leaf for _, _, leaf in named_leaves]))
    flat = [(name, path) for name, path, _ in named_leaves]
    for (name, path), ok in zip(flat, flags, strict=True):
        if not ok:
            what = f"{name} leaf {path!r}" if path else name
            raise NonFiniteError(
                f"{what} contains NaN or infinite values; the kernel would be NaN. Clean the inputs "
                f"(or the parameters) before computing the NTK"
            )


def check_tree(f: Callable, params: Any, x: Any, params_filter: ParamsFilter) -> Any:
    """Check that ``f(params, x)`` accepts ``params`` and reads every selected leaf; returns its output's
    ``ShapeDtypeStruct`` for one sample.

    A *missing* leaf (or a leaf of the wrong shape) is one ``f`` fails on. An *extra* leaf is a selected
    leaf that ``f``'s output does not depend on at all (structurally: no operation reads it); its kernel
    block would be identically zero, which means the tree is not the one ``f`` was written for.

    Raises:
      TreeMismatchError: ``f`` fails on ``params``, or selected leaves are never read.
      ParamsFilterError: the filter selects nothing.
    """
    probe = jax.tree_util.tree_map(lambda a: a[:1], x)
    try:
        out, unread = memoised(f, ("tree", signature(x, params)),
                               lambda: (jax.eval_shape(f, params, probe), unread_leaves(lambda p: f(p, probe), params)))
    except LinfitError:
        raise
    except Exception as err:  # flax/JAX raise many types for a wrong tree or leaf shape
        raise TreeMismatchError(
            f"f(params, x) failed for params with paths/shapes {describe(params)} and x of per-sample "
            f"shape {jax.tree_util.tree_map(lambda a: jnp.shape(a)[1:], x)}: the params tree (or the input) "
            f"does not match what f expects (x is [N, ...]: a single sample needs its batch axis, x[None]). "
            f"Original error: {type(err).__name__}: {err}"
        ) from err
    selected = set(leaf_paths(split_params(params, params_filter)[0]))
    extra = [p for p in unread if p in selected]
    if extra:
        raise TreeMismatchError(
            f"f's output does not depend on the selected parameter leaves {extra[:8]}"
            f"{' ...' if len(extra) > 8 else ''}: the params tree has leaves f never reads (a tree from "
            f"another model, or leaves f does not use). Remove them from the tree or exclude them with "
            f"params_filter"
        )
    return out


def _probe_rows(x1: Any, x2: Any | None) -> tuple[Any, int]:
    """Up to ``PROBE_SAMPLES`` pairwise distinct samples from the first rows of x1 and x2, and how many."""
    both = x1 if x2 is None else jax.tree_util.tree_map(
        lambda a, b: np.concatenate([np.asarray(a[:PROBE_CANDIDATES]), np.asarray(b[:PROBE_CANDIDATES])]),
        x1,
        x2,
    )
    both = jax.tree_util.tree_map(lambda a: np.asarray(a[: 2 * PROBE_CANDIDATES]), both)
    leaves = jax.tree_util.tree_leaves(both)
    n = leaves[0].shape[0]
    rows = np.concatenate([np.ascontiguousarray(a).reshape(n, -1).view(np.uint8) for a in leaves], axis=1)
    _, first = np.unique(rows, axis=0, return_index=True)
    keep = np.sort(first)[:PROBE_SAMPLES]
    return jax.tree_util.tree_map(lambda a: a[keep], both), len(keep)


def _tangent(tree: Any, rng: np.random.Generator | None) -> Any:
    """Random normal tangents (zeros when ``rng`` is None) for the float leaves of ``tree``, float0 zeros for the
    others (drawn by NumPy: no program to compile for each new leaf shape)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = [
        (np.zeros if rng is None else rng.standard_normal)(jnp.shape(a)).astype(jnp.result_type(a))
        if jnp.issubdtype(jnp.result_type(a), jnp.inexact)
        else np.zeros(jnp.shape(a), jax.dtypes.float0)
        for a in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _close(batched: np.ndarray, single: np.ndarray) -> bool:
    """float32 round-off of the same arithmetic batched or not: rtol 1e-4, atol 1e-5 x (1 + max|batched|)."""
    scale = float(np.max(np.abs(batched))) if batched.size else 0.0
    return bool(np.allclose(batched, single, rtol=1e-4, atol=1e-5 * (1 + scale), equal_nan=True))


def check_independent(f: Callable, params: Any, x1: Any, x2: Any | None) -> bool:
    """Raise ``VmapAxesError`` when ``f``'s samples interact; False when the check could not run.

    On up to ``PROBE_SAMPLES`` distinct samples of x1/x2, ``f`` is evaluated once as one batch and once one
    sample at a time: independent samples give the same values (up to float32 round-off). Interaction through
    the batch (BatchNorm in train mode, batch-level softmax) also shows in the derivative of the other samples'
    outputs with respect to one sample's inputs, even when the samples coincide in value, so the check does not
    depend on the data being diverse. For float inputs that derivative is taken in a random direction of the
    first sample's inputs, the parameters held fixed: for independent samples the other samples' output
    tangents are exactly zero (no arithmetic mixes batch lanes), so no round-off tolerance is involved. A
    derivative compared between the batched and the one-sample evaluations would not be round-off safe: in a
    deep ReLU network a pre-activation within round-off of a kink switches the derivative of its path (measured:
    MobileNetV2's output tangent in a random parameter direction differs by 7e-4 of its scale, its values by
    1e-6). Non-float inputs (tokens) have no input derivative: there the derivative in a random parameter
    direction is compared instead, with the round-off tolerance of the values. The check cannot run on tracers,
    or on fewer than two distinct non-float samples (then False: the caller checks again on its next concrete
    call). A probe that passed is not run again for the same ``f`` and shapes (:mod:`linfit.ntk._memo`).
    """
    if not is_concrete(x1, x2, params):
        return False
    xs, count = _probe_rows(x1, x2)
    floats = all(jnp.issubdtype(a.dtype, jnp.inexact) for a in jax.tree_util.tree_leaves(xs))
    if count < 2:
        if not floats:
            return False
        xs = jax.tree_util.tree_map(lambda a: np.concatenate([a, a]), xs)
        count = 2
    return memoised(f, ("independent", signature(x1, params)),
                    lambda: _probe_independent(f, params, xs, count, floats))


def _first_sample_only(tree: Any) -> Any:
    """``tree`` ``[count, ...]`` with every row but the first set to zero."""
    return jax.tree_util.tree_map(lambda a: np.concatenate([a[:1], np.zeros_like(a[1:])]), tree)


def _probe_independent(f: Callable, params: Any, xs: Any, count: int, floats: bool) -> bool:
    """:func:`check_independent` on ``count`` distinct samples ``xs``: True, or ``VmapAxesError``."""
    rng = np.random.default_rng(0)
    if floats:  # a direction of the first sample's inputs, the parameters fixed
        tp, tx = _tangent(params, None), _first_sample_only(_tangent(xs, rng))
    else:
        tp, tx = _tangent(params, rng), _tangent(xs, rng)
    lin = lambda p, x, dp, dx: jax.jvp(f, (p, x), (dp, dx))
    batch_axis = lambda tree: jax.tree_util.tree_map(lambda a: a[:, None], tree)  # [count, 1, ...]: one at a time

    @jax.jit
    def both(p, x, dp, dx):  # one program: f linearised on the batch, and on each sample alone
        alone = jax.lax.map(lambda xd: lin(p, xd[0], dp, xd[1]), (batch_axis(x), batch_axis(dx)))
        return lin(p, x, dp, dx), jax.tree_util.tree_map(lambda a: a.reshape(count, *a.shape[2:]), alone)

    (values, tangents), (values_alone, tangents_alone) = jax.device_get(both(params, xs, tp, tx))
    if floats:  # the other samples' tangents must vanish; the first sample's is not compared (see above)
        tangents_alone = _first_sample_only(tangents)
    pairs = [
        *zip(jax.tree_util.tree_leaves(values), jax.tree_util.tree_leaves(values_alone), strict=True),
        *zip(jax.tree_util.tree_leaves(tangents), jax.tree_util.tree_leaves(tangents_alone), strict=True),
    ]
    if not all(_close(b, s) for b, s in pairs):
        raise VmapAxesError(
            "vmap_axes=0 declares samples independent, but f on a batch differs from f on each sample "
            "alone (in value or in its derivative with respect to the other samples), e.g. BatchNorm in "
            "train mode; pass vmap_axes=None or evaluate the model in eval mode"
        )
    return True


def describe(params: Any) -> str:
    """The first leaves of ``params`` as ``'path(shape)'``, for error messages."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    items = [f"{path_str(p)}{tuple(jnp.shape(l))}" for p, l in flat[:8]]
    return "[" + ", ".join(items) + (", ...]" if len(flat) > 8 else "]")
