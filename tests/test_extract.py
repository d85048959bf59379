"""Shared score inputs: each equals a direct computation, and missing prerequisites are clear errors."""

import zlib

import jax
import numpy as np
import pytest

from linfit import models
from linfit.errors import ConfigError, UnknownNameError
from linfit.extract import TaskInputs, draw_key, extract_inputs
from linfit.finetune import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def small():
    model = models.create("small_cnn", num_classes=4, width=4, depth=2)
    x = jax.random.uniform(jax.random.PRNGKey(1), (10, 8, 8, 1))
    return model, models.init(model, jax.random.PRNGKey(0), x), x


def test_features_probs_and_source_statistics(small):
    model, variables, x = small
    source_x = jax.random.uniform(jax.random.PRNGKey(2), (12, 8, 8, 1))
    source_y = np.array([0, 1, 2, 3] * 3)
    inputs, seconds = extract_inputs(model, variables, x, {"features", "source_probs", "source_class_means", "key"},
                                     source_data=(source_x, source_y), batch_size=3)
    phi = model.apply(variables, x, method="features")
    logits = model.apply(variables, x)
    np.testing.assert_allclose(inputs["features"], phi, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inputs["source_probs"], jax.nn.softmax(logits), rtol=1e-5, atol=1e-6)
    source_phi = np.asarray(model.apply(variables, source_x, method="features"))
    np.testing.assert_allclose(inputs["source_class_means"][2], source_phi[source_y == 2].mean(0), rtol=1e-5)
    np.testing.assert_array_equal(inputs["source_class_counts"], [3, 3, 3, 3])
    assert set(seconds) == {"features", "source_probs", "source_class_means", "source_class_counts", "key"}
    assert "ntk" not in inputs  # only what was asked for is computed


def test_probe_features_trained_once_and_charged_once(small):
    model, variables, x = small
    labels = np.arange(10) % 2
    task = TaskInputs(x, labels, probe_epochs=2)
    first, t1 = extract_inputs(model, variables, x, {"probe_features"}, task=task)
    second, t2 = extract_inputs(model, variables, x, {"probe_features"}, task=task)
    assert first["probe_features"] is second["probe_features"]
    assert first["probe_features"].shape[0] == 10 and t1["probe_features"] > 0 and t2["probe_features"] == 0
    # An independent reproduction of the documented probe: a fresh TaskInputs.probe_model ("small_cnn", default
    # width and depth) with a 2-way head (labels 0..1) initialised from PRNGKey(seed=0) on one image, trained on
    # (x, labels) for probe_epochs with the FinetuneConfig written out here, its penultimate features taken in
    # evaluation mode. linfit.finetune is itself checked against numpy/PyTorch-SGD transcriptions in
    # test_finetune.py, so reusing it here tests the probe's wiring (model, seed, epochs, step size, features).
    probe = models.create("small_cnn", num_classes=2)
    probe_init = models.init(probe, jax.random.PRNGKey(0), x[:1])
    config = FinetuneConfig(epochs=2, learning_rate=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
                            milestones=(), mode="full", bn="train", head_init=None, seed=0, eval_every_epoch=False)
    trained = finetune(probe, probe_init, x, labels, config=config).variables
    expected = np.asarray(jax.jit(lambda z: probe.apply(trained, z, method="features"))(x))
    untrained = np.asarray(jax.jit(lambda z: probe.apply(probe_init, z, method="features"))(x))
    scale = np.abs(expected).max()
    # the training runs are the same deterministic computation; the feature passes differ in how XLA treats the
    # weights (arguments there, constants here): float32 round-off only
    np.testing.assert_allclose(first["probe_features"], expected, rtol=1e-5, atol=1e-6 * scale)
    # two SGD steps (N = 10 < batch_size: one step per epoch) at lr 0.01 move the features by ~0.8 % of their
    # largest value (measured), ~800x the tolerance above: the probe was trained, not left at its initialisation
    assert np.abs(first["probe_features"] - untrained).max() > 1e-3 * scale


def test_missing_prerequisites(small):
    model, variables, x = small
    with pytest.raises(ConfigError, match="TaskInputs"):
        extract_inputs(model, variables, x, {"probe_features"})
    with pytest.raises(ConfigError, match="source_data"):
        extract_inputs(model, variables, x, {"source_class_means"})
    with pytest.raises(UnknownNameError):
        extract_inputs(model, variables, x, {"gradients"})


def test_random_key_differs_between_models_and_is_reproducible(small):
    model, variables, x = small
    keys = [extract_inputs(model, variables, x, {"key"}, model_name=name)[0]["key"] for name in ("a", "b", "a")]
    assert not np.array_equal(keys[0], keys[1]) and np.array_equal(keys[0], keys[2])


def test_random_key_differs_between_tasks():
    """The Random baseline needs an independent draw per task: same model, different task -> different key; the
    key is PRNGKey(seed) with CRC-32s of the names folded in (checked against jax.random directly)."""
    a, b = draw_key(0, "m", "task1"), draw_key(0, "m", "task2")
    assert not np.array_equal(a, b)
    expected = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), zlib.crc32(b"m")), zlib.crc32(b"task1"))
    np.testing.assert_array_equal(a, expected)


def test_paper_lgc_input_is_the_projected_last_conv_kernel(small):
    """``ntk_last_conv_projected`` estimates the exact last-conv kernel by a 10,000-dim Gaussian projection: each
    entry's error has a standard deviation of at most sqrt(2 / 10,000) ≈ 1.4 % of the largest entry, so 6 of
    them (8.5 %) bound it; ``lgc_paper`` is eq. (8) on that kernel."""
    from linfit import scores
    from linfit.scores.lgc import PAPER_PROJECTION_DIM, lgc_kernel

    model, variables, x = small
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    inputs, seconds = extract_inputs(model, variables, x, scores.get("lgc_paper").needs, seed=5)
    assert set(seconds) == {"ntk_last_conv_projected"} and PAPER_PROJECTION_DIM == 10_000
    projected = inputs["ntk_last_conv_projected"]
    last_conv = models.param_subsets(model, variables["params"])["last_conv"]
    exact = lgc_kernel(model, variables, x, params_filter=last_conv)
    assert np.abs(projected - exact).max() < 6 * np.sqrt(2 / PAPER_PROJECTION_DIM) * np.abs(exact).max()
    assert not np.allclose(projected, exact, rtol=1e-6)  # an estimate, not the exact kernel again
    similarity = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    expected = np.corrcoef(projected.ravel(), similarity.ravel())[0, 1]
    assert scores.get("lgc_paper")(labels, **inputs) == pytest.approx(expected, abs=1e-9)
