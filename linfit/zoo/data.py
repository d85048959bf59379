"""The pre-training sets of the zoo: a seeded, fixed-size subset of every source domain's training split.

Every model of one build sees the same images (the subset depends on the build seed and the domain only),
so a scratch expert, its from-generalist twin, the generalist and the multi-BN expert differ only in
initialisation and training, never in data.
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import numpy as np

from linfit.data import Dataset, embedded


def domain_data(name: str, *, per_domain: int | None, batch_size: int, seed: int) -> Dataset:
    """The training subset of source domain ``name`` as a :class:`linfit.data.Dataset`: ``min(per_domain, N)``
    training images ``[n, 28, 28, 1]`` drawn by ``jax.random.permutation(PRNGKey(seed) ⊕ crc32(name), N)``,
    rounded down to a multiple of ``batch_size`` (at least one batch); the test split is kept whole. The
    generalist's set is ``linfit.data.union`` of these."""
    ds = embedded.load(name)
    n = ds.x_train.shape[0] if per_domain is None else min(per_domain, ds.x_train.shape[0])
    n = max(batch_size, n - n % batch_size)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(name.encode()))
    idx = np.sort(np.asarray(jax.random.permutation(key, ds.x_train.shape[0]))[:n])
    return dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])
