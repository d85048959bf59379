"""The embedded model zoo: every committed model loads and runs, the multi-BN candidates share their
convolutions only, ``build`` is seeded and resumable, and a corrupted weight file fails to load."""

import functools
import hashlib
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from linfit import checkpoints, zoo
from linfit.data import Dataset, embedded
from linfit.errors import CheckpointError, UnknownNameError
from linfit.tree import leaf_paths
from linfit.zoo import builder as build_module

TINY = zoo.TrainConfig(epochs=1, batch_size=16, per_domain=32, milestones=())


def _flat(tree) -> dict[str, np.ndarray]:
    return dict(zip(leaf_paths(tree), (np.asarray(x) for x in jax.tree.leaves(tree)), strict=True))


@functools.cache
def _forward(model):
    return jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, method="features")))


def test_names_follow_the_paper_layout():
    names = zoo.names()
    assert names == [e.name for e in zoo.entries()]
    assert len(names) == 2 * (1 + 8 * 2) + 8
    assert {n for n in names if n.endswith("/generalist")} == {"resnet8/generalist", "densenet/generalist"}
    assert sum("/multibn/" in n for n in names) == 8
    for domain in embedded.source_domains():
        for arch in ("resnet8", "densenet"):
            assert f"{arch}/{domain}/scratch" in names and f"{arch}/{domain}/from-generalist" in names
    with pytest.raises(UnknownNameError):
        zoo.load("resnet8/nope/scratch")


def test_every_model_loads_and_gives_finite_logits_and_features():
    x = embedded.load("box").x_test[:5]  # a target batch [5, 28, 28, 1]
    union_classes = sum(embedded.load(d).num_classes for d in embedded.source_domains())
    for name in zoo.names():
        m = zoo.load(name)
        expected_c = union_classes if m.source_domain == "union" else embedded.load(m.source_domain).num_classes
        assert m.num_classes == expected_c, name
        assert m.is_reference == name.endswith("/generalist")
        logits, phi = _forward(m.model)(m.variables, x)
        assert logits.shape == (5, expected_c) and phi.ndim == 2 and phi.shape[0] == 5, name
        assert np.all(np.isfinite(logits)) and np.all(np.isfinite(phi)), name
        head = m.variables["params"]["head"]
        np.testing.assert_allclose(logits, phi @ head["kernel"] + head["bias"], rtol=1e-4, atol=1e-4)
        assert 0.0 <= m.source_accuracy <= 1.0


ACCURACY_CHUNK = 512  # test images per forward pass; the last chunk is zero-padded so each architecture compiles once


@functools.cache
def _features(arch: str):
    """Penultimate features of ``arch`` in evaluation mode (BatchNorm running statistics), for any head size."""
    model = zoo.ARCHITECTURES[arch].create(1)
    return jax.jit(lambda v, x: model.apply(v, x, method="features"))


def _correct(m, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Per-image top-1 correctness ``[N]`` of zoo model ``m`` on ``(x, y)``: argmax of ``phi @ W + b`` (the head as
    checked above), the backbone's features computed without the head so one program serves every head size; and
    each image's margin ``[N]`` between its two largest logits."""
    body = {**m.variables, "params": {k: v for k, v in m.variables["params"].items() if k != "head"}}
    xp = np.concatenate([x, np.zeros((-len(y) % ACCURACY_CHUNK, *x.shape[1:]), x.dtype)])
    phi = np.concatenate([np.asarray(_features(m.architecture)(body, xp[i:i + ACCURACY_CHUNK]), np.float64)
                          for i in range(0, len(xp), ACCURACY_CHUNK)])[:len(y)]
    head = {k: np.asarray(v, np.float64) for k, v in m.variables["params"]["head"].items()}
    logits = phi @ head["kernel"] + head["bias"]
    top2 = np.sort(logits, axis=1)[:, -2:]
    return np.argmax(logits, axis=1) == y, top2[:, 1] - top2[:, 0]


def _assert_count_matches(correct: np.ndarray, margin: np.ndarray, recorded_accuracy: float, what: str) -> None:
    recorded = recorded_accuracy * len(correct)
    assert abs(recorded - round(recorded)) < 1e-3, what  # the build recorded a count of images / N (float32)
    # The build measured accuracy with the float32 weights it trained, then stored them as float16 (relative
    # rounding <= 2**-11 per weight and running statistic). Perturbing every stored weight by that much moves the
    # logits by ~0.01-0.2 (measured), so test images whose top-2 logit margin is that small can change sides.
    # Measured over all 42 committed models: 29 exact, 10 off by 1 image, 3 off by 2 (resnet8/multibn/fashion,
    # resnet8/multibn/arrows, densenet/generalist of 3952). The rounding is baked into the files, so this count is
    # deterministic up to float32 noise in this forward pass, which differs between CPUs (vector widths, summation
    # order) and can flip an image whose top-2 margin is below ~1e-5 (logits of size ~10, relative noise ~1e-6):
    # such images, counted with a margin under 1e-4, are allowed on top. A wrong weight file, BatchNorm statistics or class order costs
    # far more than that (wrong class order -> chance level).
    allowed = 2 + int(np.count_nonzero(margin < 1e-4))
    assert abs(int(correct.sum()) - round(recorded)) <= allowed, (what, int(correct.sum()), recorded, allowed)


def test_every_model_reproduces_its_recorded_source_accuracy():
    """The build's ``source_accuracy`` (evaluated on the source test split before the weights were stored) is
    reproduced by the loaded float16 weights: each expert on its domain's test split, each generalist on the
    union of the source domains (labels offset domain by domain, argmax over all union classes) overall and per
    domain. All 42 models take 16-22 s on a loaded machine (one compilation per architecture, then ~0.1-0.3 s per
    ~500-image test split and 1.5-3 s per 3952-image union), so every model is checked, no subset drawn."""
    union = embedded.load_union()
    domains = {d: embedded.load(d) for d in embedded.source_domains()}
    for name in zoo.names():
        m = zoo.load(name)
        data = union if m.source_domain == "union" else domains[m.source_domain]
        assert m.class_names == data.class_names, name  # the labels index the head's classes
        correct, margin = _correct(m, data.x_test, data.y_test)
        _assert_count_matches(correct, margin, m.source_accuracy, name)
        if m.is_reference:
            recorded = next(r for r in zoo.manifest()["models"] if r["name"] == name)["domain_accuracy"]
            bounds = np.cumsum([0] + [len(domains[d].y_test) for d in embedded.source_domains()])
            for d, lo, hi in zip(embedded.source_domains(), bounds[:-1], bounds[1:], strict=True):
                _assert_count_matches(correct[lo:hi], margin[lo:hi], recorded[d], f"{name} on {d}")


def test_multibn_candidates_share_convolutions_but_not_batchnorm():
    cands = [zoo.load(f"resnet8/multibn/{d}") for d in embedded.source_domains()]
    bn_modules = {p.rsplit("/", 1)[0] for p in leaf_paths(cands[0].variables["batch_stats"])}
    params = [_flat(c.variables["params"]) for c in cands]
    stats = [_flat(c.variables["batch_stats"]) for c in cands]
    shared = [p for p in params[0] if p.rsplit("/", 1)[0] not in bn_modules and not p.startswith("head/")]
    assert shared and all(p.endswith("kernel") for p in shared)
    for path in shared:
        for other in params[1:]:
            np.testing.assert_array_equal(params[0][path], other[path], err_msg=path)
    bn_leaves = [p for p in params[0] if p.rsplit("/", 1)[0] in bn_modules]
    assert len(bn_leaves) == 2 * len(bn_modules)
    for path in bn_leaves:
        assert any(not np.array_equal(params[0][path], other[path]) for other in params[1:]), path
    for path in stats[0]:
        assert any(not np.array_equal(stats[0][path], other[path]) for other in stats[1:]), path
    # every candidate is an ordinary model of the architecture with its own head size
    assert [c.num_classes for c in cands] == [embedded.load(d).num_classes for d in embedded.source_domains()]


def test_domain_data_is_a_seeded_batch_multiple_subset():
    a = zoo.data.domain_data("greek", per_domain=50, batch_size=16, seed=3)
    b = zoo.data.domain_data("greek", per_domain=50, batch_size=16, seed=3)
    c = zoo.data.domain_data("greek", per_domain=50, batch_size=16, seed=4)
    assert isinstance(a, Dataset) and a.x_train.shape == (48, 28, 28, 1) and a.name == "greek"
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    full = embedded.load("greek")
    rows = {full.x_train[i].tobytes(): full.y_train[i] for i in range(len(full.y_train))}
    assert all(rows[x.tobytes()] == y for x, y in zip(a.x_train, a.y_train, strict=True))
    np.testing.assert_array_equal(a.x_test, full.x_test)  # the test split is kept whole


def test_only_pulls_in_the_generalist_of_a_from_generalist_expert():
    chosen = [e.name for e in build_module._select(["densenet/latin/from-generalist", "resnet8/multibn"])]
    multibn = [f"resnet8/multibn/{d}" for d in embedded.source_domains()]
    assert chosen == multibn + ["densenet/generalist", "densenet/latin/from-generalist"]
    with pytest.raises(UnknownNameError):
        build_module._select(["resnet8/klingon/scratch"])


def test_build_is_deterministic_and_resumable(tmp_path, monkeypatch):
    only = ["resnet8/mnist/scratch"]
    m1 = zoo.build(tmp_path / "a", seed=7, progress=False, only=only, config=TINY)
    zoo.build(tmp_path / "b", seed=7, progress=False, only=only, config=TINY)
    file = "resnet8__mnist__scratch.msgpack"
    va, vb = (_flat(checkpoints.load(tmp_path / d / file)) for d in ("a", "b"))
    assert va.keys() == vb.keys()
    for path in va:
        np.testing.assert_array_equal(va[path], vb[path], err_msg=path)
    assert [m["name"] for m in m1["models"]] == only and m1["train_config"]["epochs"] == 1
    assert m1["models"][0]["sha256"] == hashlib.sha256((tmp_path / "a" / file).read_bytes()).hexdigest()
    assert zoo.names(tmp_path / "a") == only

    def must_not_train(*args, **kwargs):
        raise AssertionError("build retrained a model whose weight file exists")

    monkeypatch.setattr(build_module, "train_from_scratch", must_not_train)
    assert zoo.names(tmp_path / "a") == [m["name"] for m in zoo.build(tmp_path / "a", seed=7, progress=False,
                                                                      only=only, config=TINY)["models"]]
    loaded = zoo.load("resnet8/mnist/scratch", weights_dir=tmp_path / "a")
    np.testing.assert_array_equal(
        np.asarray(loaded.variables["params"]["head"]["bias"], np.float16), va["params/head/bias"])
    assert jnp.float32 == loaded.variables["params"]["head"]["bias"].dtype


# ----------------------------------------------------------------------------- corrupted weight files

CORRUPTED = "resnet8/mnist/scratch"
CORRUPTED_TENSOR = "params/layer3/block0/conv1/kernel"


def test_committed_manifest_records_the_sha256_of_every_weight_file():
    models = zoo.manifest()["models"]
    assert [m["file"] for m in models] == [e.file_name for e in zoo.entries()]
    for m in models:
        assert m["sha256"] == hashlib.sha256((zoo.WEIGHTS_DIR / m["file"]).read_bytes()).hexdigest(), m["file"]


def _corrupted_copy(weights_dir, fill: bytes) -> tuple:
    """Copy the CORRUPTED model's weight file into ``weights_dir`` and overwrite 64 bytes in the middle of
    CORRUPTED_TENSOR's float16 data with ``fill`` (same file size). Returns (path, original bytes)."""
    src = zoo.WEIGHTS_DIR / zoo.spec.entry(CORRUPTED).file_name
    data = src.read_bytes()
    raw = serialization.msgpack_restore(data)["variables"]
    tensor = np.asarray(functools.reduce(lambda t, k: t[k], CORRUPTED_TENSOR.split("/"), raw)).tobytes()
    start = data.find(tensor)
    assert start > 0 and data.find(tensor, start + 1) == -1
    at = start + len(tensor) // 2
    broken = data[:at] + fill * 64 + data[at + 64:]
    assert len(broken) == len(data) and broken != data
    path = weights_dir / src.name
    path.write_bytes(broken)
    return path, data


def test_corrupted_zoo_file_fails_its_manifest_sha256(tmp_path):
    shutil.copy(zoo.WEIGHTS_DIR / "manifest.json", tmp_path)
    path, original = _corrupted_copy(tmp_path, b"\x00")  # 32 float16 zeros: finite, so only the hash can tell
    with pytest.raises(CheckpointError) as err:
        zoo.load(CORRUPTED, weights_dir=tmp_path)
    message = str(err.value)
    assert str(path) in message
    assert hashlib.sha256(original).hexdigest() in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message
    assert f"linfit zoo build --out {tmp_path} --only {CORRUPTED}" in message


def test_corrupted_zoo_file_without_manifest_entry_fails_on_its_nan_tensor(tmp_path):
    manifest = zoo.manifest()
    manifest["models"] = [m for m in manifest["models"] if m["name"] != CORRUPTED]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    path, _ = _corrupted_copy(tmp_path, b"\xff")  # 0xFFFF is a float16 NaN: 32 NaNs
    with pytest.raises(CheckpointError) as err:
        zoo.load(CORRUPTED, weights_dir=tmp_path)
    assert str(path) in str(err.value) and f"{CORRUPTED_TENSOR} (32 NaN, 0 inf, 0 above 1e+10 of " in str(err.value)


def test_garbled_zoo_manifest_is_a_checkpoint_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"models": [')
    with pytest.raises(CheckpointError, match="manifest.json is not valid JSON"):
        zoo.names(tmp_path)
