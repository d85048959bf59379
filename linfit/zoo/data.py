"""The pre-training sets of the zoo: a seeded, fixed-size subset of every source domain's training split.

Every model of one build sees the same images (the subset depends on the build seed and the domain only),
so a scratch expert, its from-generalist twin, the generalist and the multi-BN expert differ only in
initialisation and training, never in data.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import jax
import numpy as np

from linfit.data import embedded


class DomainData(NamedTuple):
    """One source domain: ``x_train [N, 28, 28, 1]``, ``y_train [N]``, the full test split and class names."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def domain_data(name: str, *, per_domain: int | None, batch_size: int, seed: int) -> DomainData:
    """The training subset of source domain ``name``: ``min(per_domain, N)`` images drawn by
    ``jax.random.permutation(PRNGKey(seed) ⊕ crc32(name), N)``, rounded down to a multiple of ``batch_size``
    (at least one batch); the test split is kept whole."""
    ds = embedded.load(name)
    n = ds.x_train.shape[0] if per_domain is None else min(per_domain, ds.x_train.shape[0])
    n = max(batch_size, n - n % batch_size)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(name.encode()))
    idx = np.sort(np.asarray(jax.random.permutation(key, ds.x_train.shape[0]))[:n])
    return DomainData(name, ds.x_train[idx], ds.y_train[idx], ds.x_test, ds.y_test, ds.class_names)


def union_data(domains: list[DomainData]) -> DomainData:
    """The generalist's set: the domains concatenated, labels of ``domains[i]`` offset by the class counts of
    ``domains[:i]``, class names ``"<domain>/<class>"`` (as ``linfit.data.union``)."""
    offsets = np.cumsum([0] + [d.num_classes for d in domains])
    return DomainData(
        "union",
        np.concatenate([d.x_train for d in domains]),
        np.concatenate([d.y_train + o for d, o in zip(domains, offsets, strict=False)]).astype(np.int32),
        np.concatenate([d.x_test for d in domains]),
        np.concatenate([d.y_test + o for d, o in zip(domains, offsets, strict=False)]).astype(np.int32),
        tuple(f"{d.name}/{c}" for d in domains for c in d.class_names),
    )
