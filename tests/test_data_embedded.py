"""Every embedded domain loads with the documented shapes, dtypes, ranges, sizes and provenance."""

import hashlib
import os

import numpy as np
import pytest

from linfit.data import catalog, embedded
from linfit.errors import DatasetError, UnknownNameError

ALL = embedded.source_domains() + embedded.target_domains()
PACK_DIR = os.path.dirname(embedded.__file__)


def test_roles_counts_and_pack_size():
    assert len(embedded.source_domains()) >= 7 and len(embedded.target_domains()) >= 8
    assert not set(embedded.source_domains()) & set(embedded.target_domains())
    total = sum(os.path.getsize(os.path.join(PACK_DIR, f)) for f in os.listdir(PACK_DIR) if f.endswith(".npz"))
    assert total <= 15 * 2**20
    assert set(embedded.manifest()) == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_domain_loads(name):
    ds = embedded.load(name)
    meta = embedded.manifest()[name]
    assert ds.name == name and catalog.DOMAINS[name].provenance in ds.domain
    for x, y, n in ((ds.x_train, ds.y_train, meta["train"]), (ds.x_test, ds.y_test, meta["test"])):
        assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
        np.testing.assert_array_equal(np.unique(y), np.arange(ds.num_classes))  # every class present
        assert np.bincount(y).min() == np.bincount(y).max()  # balanced
    assert list(ds.class_names) == meta["class_names"] and len(set(ds.class_names)) == ds.num_classes
    if meta["role"] == "source":
        assert 2000 <= len(ds.y_train) <= 3000 and len(ds.y_test) >= 450
    else:
        assert 900 <= len(ds.y_train) <= 1000 and 300 <= len(ds.y_test) <= 500
        assert np.bincount(ds.y_train).min() >= 20  # 20-shot is possible
    # the stored arrays hash to the manifest (an independent transcription of the build's digest)
    raw = embedded.load_raw(name)
    h = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        a = np.ascontiguousarray(raw[key])
        h.update(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())
    h.update("\x1f".join(raw["class_names"].tolist()).encode())
    assert h.hexdigest() == meta["sha256"]
    np.testing.assert_array_equal(ds.x_train[..., 0], raw["x_train"] / np.float32(255))
    # no test image is also a training image
    train_rows = {r.tobytes() for r in raw["x_train"]}
    assert not any(r.tobytes() in train_rows for r in raw["x_test"])


def test_union_offsets_labels():
    u = embedded.load_union(["hebrew", "braille"])
    h, b = embedded.load("hebrew"), embedded.load("braille")
    assert u.num_classes == h.num_classes + b.num_classes
    np.testing.assert_array_equal(u.y_train, np.concatenate([h.y_train, b.y_train + h.num_classes]))
    assert u.class_names[h.num_classes] == "braille/" + b.class_names[0]


def test_a_stale_or_corrupt_pack_is_refused_not_loaded(monkeypatch):
    """The first load in a process checks the arrays against the manifest's sha256."""
    stale = {**embedded.manifest(), "braille": {**embedded.manifest()["braille"], "sha256": "0" * 64}}
    monkeypatch.setattr(embedded, "manifest", lambda: stale)
    monkeypatch.setattr(embedded, "_VERIFIED", set())
    with pytest.raises(DatasetError, match="'braille' does not match the sha256 in its manifest.*reinstall"):
        embedded.load("braille")
    embedded.load("hebrew")  # the others still load


def test_unknown_domain():
    with pytest.raises(UnknownNameError, match="unknown embedded dataset 'imagenet'"):
        embedded.load("imagenet")


def test_fashion_targets_use_images_no_other_domain_uses():
    from linfit.data.build_embedded import _sobel_edges

    source = embedded.load_raw("fashion")
    rot = embedded.load_raw("fashion_rot")
    edges = embedded.load_raw("fashion_edges")
    upright = np.concatenate([np.rot90(rot[k], k=-1, axes=(1, 2)) for k in ("x_train", "x_test")])
    seen = {r.tobytes() for k in ("x_train", "x_test") for r in source[k]}
    assert not any(r.tobytes() in seen for r in upright)
    edge_rows = {r.tobytes() for k in ("x_train", "x_test") for r in edges[k]}
    assert not any(r.tobytes() in edge_rows for r in _sobel_edges(upright))
