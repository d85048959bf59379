"""Tests of linfit.finetune.sweep (``finetune_grid``).

The vmapped program is checked against the runs trained one after another with the plain compiled step; the
convergence criterion, the bracketing and the refit against closed forms of gradient descent on a linear model
whose inputs are one-hot class codes (x_i = e_{y_i}, balanced classes): with a bias-free head W0 = 0, full-batch
MSE and step η, W_t = (1 − ρ^t) I with ρ = 1 − η/C, every sample's loss at step t is ½ρ^{2t}, and the validation
loss after T steps is ½ρ^{2T}, smallest (zero) at η = C.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfit.errors import ConfigError
from linfit.finetune import FinetuneConfig, GridProtocol, finetune_grid
from linfit.finetune.sweep import batch_indices
from tests.test_finetune import BNNet  # Dense -> BatchNorm -> tanh -> head


class Linear(nn.Module):
    """A bias-free linear head on the raw inputs."""

    num_classes: int

    def setup(self):
        self.head = nn.Dense(self.num_classes, use_bias=False)

    def __call__(self, x, train=False):
        return self.head(x)


PLAIN_GD = dict(momentum=0.0, nesterov=False, weight_decay=0.0, milestones=(), loss="mse", bn="frozen")
C = 4


def _one_hot_task(per_class=4):
    """x_i = e_{y_i} in R^C, ``per_class`` samples of each class; a zero head."""
    y = np.repeat(np.arange(C), per_class)
    x = np.eye(C, dtype=np.float32)[y]
    variables = {"params": {"head": {"kernel": jnp.zeros((C, C), jnp.float32)}}}
    return x, y, variables


def test_vmapped_program_equals_runs_one_after_another():
    """BatchNorm in train mode, Nesterov momentum, weight decay, a fresh random head per seed; runs that stop at
    different windows (so the freezing of stopped runs is exercised) and one grid extension."""
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = (rng.normal(size=(30, 5)) + 1.5 * np.eye(5)[y]).astype(np.float32)
    x_test = (rng.normal(size=(17, 5)) + 1.5 * np.eye(5)[np.arange(17) % 3]).astype(np.float32)
    y_test = np.arange(17) % 3
    model = BNNet(3)
    variables = model.init(jax.random.PRNGKey(3), x[:2])
    cfg = FinetuneConfig.paper(batch_size=5, milestones=(), eval_batch_size=7)
    protocol = GridProtocol(window=4, max_steps=24, rel_tol=0.02, abs_tol=0.0, patience=1, extend_factor=4.0,
                            max_extensions=1, val_fraction=0.2)
    lrs, seeds = (1e-4, 0.01, 0.03, 0.1), (0, 1, 2)
    runs = {s: finetune_grid(model, variables, x, y, x_test, y_test, config=cfg, lrs=lrs, seeds=seeds,
                             protocol=protocol, strategy=s) for s in ("vmap", "sequential")}
    seq = runs["sequential"]
    assert len(set(seq.search_steps.ravel().tolist())) > 1, "the runs should stop at different windows"
    assert seq.extensions != (0, 0) and len(seq.lrs) == 5
    # The runs really differ: by seed (new head, data order) and by learning rate.
    heads = [np.asarray(v["params"]["head"]["kernel"]) for v in seq.variables]
    assert not np.allclose(heads[0], heads[1])
    assert not np.allclose(seq.val_loss[1], seq.val_loss[2])
    _assert_same_runs(runs["vmap"], seq)


def _assert_same_runs(vm, seq):
    np.testing.assert_array_equal(vm.lrs, seq.lrs)
    assert vm.chosen_lr == seq.chosen_lr and vm.extensions == seq.extensions
    for name in ("search_steps", "search_converged", "search_diverged", "steps", "converged", "diverged",
                 "search_test_correct", "test_correct", "val_accuracy"):
        np.testing.assert_array_equal(getattr(vm, name), getattr(seq, name), err_msg=name)
    # float32 round-off of a different summation order, grown over at most 24 steps of a well-conditioned problem.
    np.testing.assert_allclose(vm.val_loss, seq.val_loss, rtol=1e-5)
    np.testing.assert_allclose(vm.train_loss, seq.train_loss, rtol=1e-5)
    for a, b in zip(vm.variables, seq.variables, strict=True):
        for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(leaf_a, leaf_b, rtol=1e-5, atol=1e-6)


def _expected_stop(lr, protocol):
    """(steps, converged, diverged, last window-mean loss) from the closed-form per-step loss ½r_t² with
    r_{t+1} = (1 − s_t·η/C)·r_t, r_0 = 1, under reduce-on-plateau and early stopping: a plateau after ``patience``
    consecutive windows whose mean is not below best − (rel_tol·|best| + abs_tol); the first ``decays`` plateaus
    multiply the step-size factor s by ``decay_factor``, the next one converges; inf once a sum over the batch of 12
    such losses would overflow float32."""
    r, scale, decayed = 1.0, 1.0, 0
    best, stale = np.inf, 0
    for j in range(protocol.max_steps // protocol.window):
        losses = []
        for _ in range(protocol.window):
            losses.append(0.5 * r * r)
            r *= 1.0 - scale * lr / C
        loss = np.array(losses)
        current = np.inf if np.any(loss * 12 > np.finfo(np.float32).max) else loss.mean()
        if not np.isfinite(current):
            return (j + 1) * protocol.window, False, True, current
        if np.isinf(best):
            best = current
            continue
        threshold = best - (protocol.rel_tol * abs(best) + protocol.abs_tol)
        assert abs(current - threshold) > 1e-3 * abs(threshold), "a test case too close to the threshold"
        if current < threshold:
            best, stale = current, 0
        else:
            stale += 1
        if stale >= protocol.patience:
            if decayed == protocol.decays:
                return (j + 1) * protocol.window, True, False, current
            scale, decayed, stale = scale * protocol.decay_factor, decayed + 1, 0
    return protocol.max_steps, False, False, current


@pytest.mark.parametrize("patience, decays, stops, chosen", [
    # η = 0.04: slow, stops at the budget; η = 1: converges (ρ = 0.75) three windows after its last improvement;
    # η = 8: ρ = −1, a loss constant at ½, converged after 1 + 3 windows; η = 4100: ρ = −1024, overflows at step 7.
    (3, 0, [(40, False, False), (28, True, False), (16, True, False), (8, False, True)], 1),
    # One decay by ½ at the first plateau: η = 8 then has ρ = 0, so its loss falls to 0 (the best on validation)
    # and plateaus again.
    (2, 1, [(40, False, False), (32, True, False), (28, True, False), (8, False, True)], 2),
])
def test_convergence_criterion_matches_the_closed_form_loss(patience, decays, stops, chosen):
    x, y, variables = _one_hot_task()
    protocol = GridProtocol(window=4, max_steps=40, rel_tol=0.0, abs_tol=1e-3, patience=patience, decays=decays,
                            decay_factor=0.5, max_extensions=0, val_fraction=0.25)
    lrs = (0.04, 1.0, 8.0, 4100.0)
    cfg = FinetuneConfig(batch_size=64, **PLAIN_GD)
    result = finetune_grid(Linear(C), variables, x, y, x, y, config=cfg, lrs=lrs, seeds=(0,), protocol=protocol)
    expected = [_expected_stop(lr, protocol) for lr in lrs]
    assert [e[:3] for e in expected] == stops
    assert result.search_steps[:, 0].tolist() == [e[0] for e in expected]
    assert result.search_converged[:, 0].tolist() == [e[1] for e in expected]
    assert result.search_diverged[:, 0].tolist() == [e[2] for e in expected]
    assert np.isnan(result.val_accuracy[3, 0]) and not result.search_test_correct[3].any()
    # The chosen η's refit on all 16 images follows the same closed form.
    assert result.chosen_lr == lrs[chosen] and result.converged.tolist() == [True]
    assert result.steps.tolist() == [stops[chosen][0]]
    # float32 forms the residual r_t = 1 − w_t by cancellation: an absolute error of a few ulp(1) ≈ 1e-7 on a last
    # window's r_t ≈ 1e-3…2e-4, so its loss (∝ r_t²) carries a relative error up to ~1e-3 (η = 8: r = 0 exactly
    # in exact arithmetic, a few ulp(1)² in float32).
    np.testing.assert_allclose(result.train_loss, [expected[chosen][3]], rtol=5e-3, atol=1e-12)


@pytest.mark.parametrize(
    "lrs, max_extensions, tried, chosen, extensions, bracketed",
    [
        ((0.5, 1.0), 3, [0.5, 1, 2, 4, 8], 4.0, (0, 3), True),  # extended upward past the optimum η = C = 4
        ((32.0, 64.0), 5, [2, 4, 8, 16, 32, 64], 4.0, (4, 0), True),  # extended downward
        ((0.5, 1.0), 1, [0.5, 1, 2], 2.0, (0, 1), False),  # the extension limit stops short of the optimum
        ((4.0,), 1, [2, 4, 8], 4.0, (1, 1), True),  # one η is an edge on both sides
    ],
)
def test_bracketing_extends_the_grid_to_the_known_optimum(lrs, max_extensions, tried, chosen, extensions,
                                                          bracketed):
    """T = 5 full-batch steps: every η < 2C·(…) classifies the validation set, and the validation loss ½ρ^{10}
    is smallest at η = C = 4 (ρ = 0), larger the farther ρ is from 0."""
    x, y, variables = _one_hot_task()
    protocol = GridProtocol(window=5, max_steps=5, extend_factor=2.0, max_extensions=max_extensions,
                            val_fraction=0.25)
    cfg = FinetuneConfig(batch_size=64, **PLAIN_GD)
    result = finetune_grid(Linear(C), variables, x, y, x, y, config=cfg, lrs=lrs, seeds=(0, 1), protocol=protocol)
    assert result.lrs.tolist() == tried
    assert result.chosen_lr == chosen and result.extensions == extensions and result.bracketed == bracketed
    rho = 1.0 - result.lrs / C
    np.testing.assert_allclose(result.val_loss, np.repeat(0.5 * rho[:, None] ** 10, 2, axis=1), rtol=1e-5,
                               atol=1e-7)
    assert np.all(result.val_accuracy == 1.0) and np.all(result.search_steps == 5)


def test_refit_uses_all_training_images():
    """One full-batch step from W0 = 0 gives W1 = η Xᵀ onehot(y) / N over exactly the images trained on."""
    rng = np.random.default_rng(1)
    y = np.arange(30) % 3
    x = rng.normal(size=(30, 5)).astype(np.float32)
    x_test = rng.normal(size=(11, 5)).astype(np.float32)
    y_test = rng.integers(0, 3, size=11)
    variables = {"params": {"head": {"kernel": jnp.zeros((5, 3), jnp.float32)}}}
    protocol = GridProtocol(window=1, max_steps=1, max_extensions=0, val_fraction=0.2)
    cfg = FinetuneConfig(batch_size=100, **PLAIN_GD)
    result = finetune_grid(Linear(3), variables, x, y, x_test, y_test, config=cfg, lrs=(0.5,), seeds=(0, 1),
                           protocol=protocol)
    x64, onehot = x.astype(np.float64), np.eye(3)[y]
    all_images = 0.5 * x64.T @ onehot / 30
    fit = result.fit_indices
    fit_only = 0.5 * x64[fit].T @ onehot[fit] / len(fit)
    assert len(result.val_indices) == 6 and result.steps.tolist() == [1, 1]
    for refit in result.variables:
        np.testing.assert_allclose(refit["params"]["head"]["kernel"], all_images, rtol=1e-5, atol=1e-7)
        assert not np.allclose(refit["params"]["head"]["kernel"], fit_only, rtol=1e-3)
    expected_correct = (x_test.astype(np.float64) @ all_images).argmax(axis=1) == y_test
    assert result.test_correct.shape == (2, 11) and result.test_correct.dtype == bool
    np.testing.assert_array_equal(result.test_correct, np.stack([expected_correct] * 2))
    np.testing.assert_allclose(result.test_accuracy, [expected_correct.mean()] * 2)
    search_w = 0.5 * x64[fit].T @ onehot[fit] / len(fit)  # the search run saw the fit split only
    np.testing.assert_array_equal(result.search_test_correct[0, 0], (x_test @ search_w).argmax(axis=1) == y_test)


def test_batch_order_visits_every_sample_once_per_epoch_and_reshuffles():
    key = jax.random.PRNGKey(7)
    epochs = [np.concatenate([np.asarray(batch_indices(key, e * 4 + i, 20, 5)) for i in range(4)]) for e in (0, 1)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(20))
    assert not np.array_equal(epochs[0], epochs[1])
    # 23 samples in batches of 5: 4 steps per epoch, 3 samples wait for a later epoch.
    first = np.concatenate([np.asarray(batch_indices(key, i, 23, 5)) for i in range(4)])
    assert len(set(first.tolist())) == 20


def test_clear_errors():
    x, y, variables = _one_hot_task()
    cfg = FinetuneConfig(batch_size=64, **PLAIN_GD)

    def grid(**kw):
        args = dict(config=cfg, lrs=(1.0,), seeds=(0,), protocol=GridProtocol(window=1, max_steps=1))
        return finetune_grid(Linear(C), variables, x, y, x, y, **{**args, **kw})

    with pytest.raises(ConfigError, match="milestones=()"):
        grid(config=cfg.replace(milestones=(5,)))
    with pytest.raises(ConfigError, match="lrs"):
        grid(lrs=(1.0, -1.0))
    with pytest.raises(ConfigError, match="seeds"):
        grid(seeds=(0, 0))
    with pytest.raises(ConfigError, match="strategy"):
        grid(strategy="parallel")
    with pytest.raises(ConfigError, match="multiple of window"):
        GridProtocol(window=3, max_steps=10)
    with pytest.raises(ConfigError, match="patience"):
        GridProtocol(patience=0)
