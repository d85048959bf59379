"""Parameter-tree utilities: '/'-joined leaf paths and parameter subsets selected by a filter.

A *params filter* picks the leaves of a parameter tree that a kernel (or a fine-tuning run) is taken
with respect to. It is one of:

* ``None`` -- every leaf;
* a ``str`` -- a regular expression searched (``re.search``) in the leaf's path, e.g. ``"^head/"`` or
  ``"Conv_3/kernel$"``; paths join dict keys with ``'/'``: ``"stage4/block1/conv2/kernel"``;
* a sequence of such strings -- a leaf is selected when any of them matches;
* a callable ``(path: str, leaf) -> bool``.

Example::

    >>> params = {"body": {"kernel": 1.0, "bias": 2.0}, "head": {"kernel": 3.0}}
    >>> sub, merge = split_params(params, "^head/")
    >>> sub
    {'head': {'kernel': 3.0}}
    >>> merge({"head": {"kernel": 5.0}})["head"]["kernel"]
    5.0
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from linfit.errors import ParamsFilterError, TreeMismatchError

ParamsFilter = None | str | Sequence[str] | Callable[[str, Any], bool]


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_str(path: Sequence[Any]) -> str:
    """Join a ``jax.tree_util`` key path into ``'a/b/kernel'``."""
    return "/".join(_key_name(entry) for entry in path)


def abstract(tree: Any) -> Any:
    """``tree`` with every leaf (array, tracer or spec) as a ``jax.ShapeDtypeStruct`` of its shape and dtype."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jax.numpy.shape(a), jax.numpy.result_type(a)), tree)


def leaf_paths(tree: Any) -> list[str]:
    """The '/'-joined path of every leaf of ``tree``, in ``jax.tree_util`` leaf order."""
    return [path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ParamsFilterError(f"params_filter {pattern!r} is not a valid regular expression: {err}") from None


def as_predicate(params_filter: ParamsFilter) -> Callable[[str, Any], bool]:
    """Turn any accepted filter form into a predicate ``(path, leaf) -> bool``."""
    if params_filter is None:
        return lambda path, leaf: True
    if isinstance(params_filter, str):
        pattern = _compile(params_filter)
        return lambda path, leaf: pattern.search(path) is not None
    if callable(params_filter):
        return params_filter
    if isinstance(params_filter, Sequence) and all(isinstance(p, str) for p in params_filter):
        patterns = [_compile(p) for p in params_filter]
        return lambda path, leaf: any(p.search(path) for p in patterns)
    raise ParamsFilterError(
        f"params_filter must be None, a regex string, a sequence of regex strings or a callable "
        f"(path, leaf) -> bool; got {type(params_filter).__name__}"
    )


def _nest(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for keys, leaf in flat.items():
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = leaf
    return out


def split_params(params: Any, params_filter: ParamsFilter) -> tuple[dict, Callable[[Any], Any]]:
    """Split ``params`` into the selected sub-tree and a function that merges a new sub-tree back.

    Args:
      params: a (nested-dict) parameter tree.
      params_filter: see the module docstring.

    Returns:
      ``(selected, merge)``: ``selected`` is a nested dict holding only the selected leaves (same
      paths); ``merge(new_selected)`` returns a tree shaped like ``params`` whose selected leaves come
      from ``new_selected`` and the others from ``params`` (held fixed). ``merge`` is traceable.

    Raises:
      ParamsFilterError: the filter selects no leaf; the message lists the available paths.
    """
    predicate = as_predicate(params_filter)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = [tuple(_key_name(e) for e in path) for path, _ in flat]
    chosen = [i for i, ((path, leaf), k) in enumerate(zip(flat, keys)) if predicate("/".join(k), leaf)]
    if not chosen:
        sample = ", ".join("/".join(k) for k in keys[:12])
        raise ParamsFilterError(
            f"params_filter {params_filter!r} selects no parameter; available paths include: {sample}"
            + (" ..." if len(keys) > 12 else "")
        )
    selected = _nest({keys[i]: flat[i][1] for i in chosen})
    leaves = [leaf for _, leaf in flat]

    def merge(new_selected: Any) -> Any:
        new_leaves = list(leaves)
        new_flat = dict(
            (tuple(_key_name(e) for e in path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(new_selected)[0]
        )
        for i in chosen:
            if keys[i] not in new_flat:
                raise TreeMismatchError(f"merge: the new sub-tree lacks the leaf {'/'.join(keys[i])!r}")
            new_leaves[i] = new_flat[keys[i]]
        return jax.tree_util.tree_unflatten(treedef, new_leaves)

    return selected, merge


MISMATCH_SHOWN = 4
"""How many paths of each kind (missing, unexpected, mis-shaped) a mismatch message names."""


def describe_mismatch(missing: Sequence[str], unexpected: Sequence[str], misshaped: Sequence[str]) -> str:
    """``"2 missing (a, b); 1 mis-shaped (c …)"``: each non-empty kind counted, its first ``MISMATCH_SHOWN``
    entries named (a checkpoint of another architecture gives a short message, not every leaf); ``""`` when all
    three are empty."""
    kinds = {"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped}
    return "; ".join(f"{len(items)} {kind} ({', '.join(items[:MISMATCH_SHOWN])}"
                     f"{', …' if len(items) > MISMATCH_SHOWN else ''})" for kind, items in kinds.items() if items)


def check_same_structure(reference: Any, other: Any, what: str = "params") -> None:
    """Raise ``TreeMismatchError`` unless ``other`` has the paths and leaf shapes of ``reference``; the message is
    ``describe_mismatch``'s (sorted paths)."""
    ref = {path_str(p): getattr(l, "shape", ()) for p, l in jax.tree_util.tree_flatten_with_path(reference)[0]}
    got = {path_str(p): getattr(l, "shape", ()) for p, l in jax.tree_util.tree_flatten_with_path(other)[0]}
    misshaped = sorted(f"{k}: {tuple(got[k])} instead of {tuple(ref[k])}" for k in set(ref) & set(got)
                       if ref[k] != got[k])
    summary = describe_mismatch(sorted(set(ref) - set(got)), sorted(set(got) - set(ref)), misshaped)
    if summary:
        raise TreeMismatchError(f"{what} do not match the expected {len(ref)} leaves: {summary}. Were they saved "
                                f"from another architecture, width or number of classes?")
