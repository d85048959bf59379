"""The embedded model zoo: every committed model loads and runs, the multi-BN candidates share their
convolutions only, and ``build`` is seeded and resumable."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfit import checkpoints, zoo
from linfit.data import embedded
from linfit.errors import UnknownNameError
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
    assert a.x_train.shape == (48, 28, 28, 1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    full = embedded.load("greek")
    rows = {full.x_train[i].tobytes(): full.y_train[i] for i in range(len(full.y_train))}
    assert all(rows[x.tobytes()] == y for x, y in zip(a.x_train, a.y_train, strict=True))


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
