"""The embedded offline dataset pack: 8 source domains and 11 held-out target domains.

Images are stored as ``[N, 28, 28]`` uint8 in ``<name>.npz`` next to this file and returned as
``[N, 28, 28, 1]`` float32 in ``[0, 1]``. Provenance and licences: ``linfit/data/NOTICE.md``;
recipes: :mod:`linfit.data.build_embedded`.

Example::

    >>> from linfit.data import embedded
    >>> ds = embedded.load("latin")
    >>> ds.x_train.shape, ds.num_classes
    ((2600, 28, 28, 1), 26)
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np

from linfit._io import NPZ_ERRORS
from linfit.data import catalog
from linfit.data.dataset import Dataset, union
from linfit.errors import DatasetError, UnknownNameError


def source_domains() -> list[str]:
    """Names of the source domains (experts are trained on each), in catalogue order."""
    return catalog.names("source")


def target_domains() -> list[str]:
    """Names of the held-out target domains (the fine-tuning tasks), in catalogue order."""
    return catalog.names("target")


def manifest() -> dict:
    """The build manifest: per domain its role, sizes, class names and the SHA-256 of its arrays."""
    return json.loads(resources.files(__name__).joinpath("manifest.json").read_text(encoding="utf-8"))


def arrays_digest(x_train, y_train, x_test, y_test, class_names) -> str:
    """SHA-256 over the arrays' bytes and the class names (independent of the npz container): the ``sha256`` a
    domain's manifest entry records (``build_embedded``) and ``load_raw`` checks."""
    h = hashlib.sha256()
    for a in (x_train, y_train, x_test, y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    h.update("\x1f".join(class_names).encode())
    return h.hexdigest()


_VERIFIED: set[str] = set()
"""Domains whose arrays matched their manifest digest in this process (each is hashed once)."""


def load_raw(name: str) -> dict[str, np.ndarray]:
    """The stored arrays of one domain: ``x_train``/``x_test`` ``[N, 28, 28]`` uint8, ``y_*`` ``[N]`` int16,
    ``class_names`` ``[C]`` str. The first load in a process checks them against the manifest's ``sha256``.

    Raises:
      UnknownNameError: not an embedded domain.
      DatasetError: the file is missing, unreadable, or its arrays do not match the manifest (corrupt or stale).
    """
    if name not in catalog.DOMAINS:
        raise UnknownNameError(f"unknown embedded dataset {name!r}; known: {', '.join(catalog.DOMAINS)}")
    resource = resources.files(__name__).joinpath(f"{name}.npz")
    try:
        with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except NPZ_ERRORS as e:
        raise DatasetError(f"embedded dataset {name!r} is missing or corrupt ({e}); reinstall linfit") from e
    if name not in _VERIFIED:
        keys = ("x_train", "y_train", "x_test", "y_test")
        expected = manifest().get(name, {}).get("sha256")
        if not set(keys) <= set(arrays) or "class_names" not in arrays or expected != arrays_digest(
                *(arrays[k] for k in keys), arrays["class_names"].tolist()):
            raise DatasetError(f"embedded dataset {name!r} does not match the sha256 in its manifest: the installed "
                               "file is corrupt or stale; reinstall linfit")
        _VERIFIED.add(name)
    return arrays


def load(name: str) -> Dataset:
    """Load one embedded domain as a :class:`~linfit.data.Dataset` (images ``[N, 28, 28, 1]`` float32 in [0, 1])."""
    raw = load_raw(name)
    info = catalog.DOMAINS[name]
    return Dataset(name=name, x_train=raw["x_train"], y_train=raw["y_train"], x_test=raw["x_test"],
                   y_test=raw["y_test"], class_names=tuple(raw["class_names"].tolist()),
                   domain=f"{info.role}: {info.description}. Source: {info.provenance}")


def load_union(names: list[str] | None = None) -> Dataset:
    """The union of several domains with disjoint labels (default: all sources) — the generalist's training set."""
    return union([load(n) for n in (names or source_domains())], name="union")
