"""Tests of linfit.finetune against independent computations: numpy transcriptions of the gradients and of
PyTorch's SGD rule, the closed form of gradient descent on a linear model with a brute-force ``jax.jacrev``
NTK, and direct checks of which leaves move."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from linfit.errors import ConfigError, LabelError, LinfitError, ShapeError
from linfit.finetune import (
    FinetuneConfig,
    cross_entropy,
    evaluate,
    finetune,
    learning_rate_schedule,
    lr_order,
    mse,
    select_learning_rate,
    stratified_split,
)
from linfit.tree import leaf_paths


class Probe(nn.Module):
    """A linear model: identity features and a Dense head."""

    num_classes: int

    def setup(self):
        self.head = nn.Dense(self.num_classes)

    def features(self, x, train=False):
        return x

    def __call__(self, x, train=False):
        return self.head(self.features(x, train))


class BNNet(nn.Module):
    """Dense -> BatchNorm -> tanh -> head: non-linear, with batch statistics."""

    num_classes: int

    def setup(self):
        self.dense = nn.Dense(6)
        self.bn = nn.BatchNorm(momentum=0.9)
        self.head = nn.Dense(self.num_classes)

    def features(self, x, train=False):
        return jnp.tanh(self.bn(self.dense(x), use_running_average=not train))

    def __call__(self, x, train=False):
        return self.head(self.features(x, train))


def _data(n=12, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % c
    return x, y


def _probe(d=5, c=3, seed=1):
    rng = np.random.default_rng(seed)
    params = {
        "head": {
            "kernel": rng.normal(size=(d, c)).astype(np.float32) * 0.5,
            "bias": rng.normal(size=(c,)).astype(np.float32) * 0.1,
        }
    }
    return Probe(c), {"params": jax.tree.map(jnp.asarray, params)}


def _bnnet(d=5, c=3):
    model = BNNet(c)
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((2, d)), train=False)
    rng = np.random.default_rng(4)
    stats = {
        "bn": {
            "mean": jnp.asarray(rng.normal(size=6), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.5, 2.0, size=6), jnp.float32),
        }
    }
    return model, {"params": variables["params"], "batch_stats": stats}


PLAIN_GD = dict(momentum=0.0, nesterov=False, weight_decay=0.0, milestones=(), eval_every_epoch=False)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_one_step_cross_entropy_matches_numpy_gradient():
    x, y = _data()
    model, variables = _probe()
    w, b = (np.asarray(variables["params"]["head"][k], np.float64) for k in ("kernel", "bias"))
    lr = 0.3
    cfg = FinetuneConfig(epochs=1, batch_size=len(y), learning_rate=lr, loss="ce", **PLAIN_GD)
    out = finetune(model, variables, x, y, config=cfg)
    residual = _softmax(x @ w + b) - np.eye(3)[y]  # d(mean CE)/dlogits · N
    expect_w = w - lr * x.T @ residual / len(y)
    expect_b = b - lr * residual.mean(axis=0)
    np.testing.assert_allclose(out.variables["params"]["head"]["kernel"], expect_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.variables["params"]["head"]["bias"], expect_b, rtol=1e-5, atol=1e-6)
    assert out.steps == 1


def test_two_steps_nesterov_weight_decay_milestone_match_pytorch_rule():
    """MSE, full batch, Nesterov + L2 weight decay, lr x0.1 after epoch 1 (one step per epoch)."""
    x, y = _data()
    model, variables = _probe()
    lr, mom, wd, gamma = 0.2, 0.9, 0.05, 0.1
    cfg = FinetuneConfig(
        epochs=2,
        batch_size=100,
        learning_rate=lr,
        momentum=mom,
        nesterov=True,
        weight_decay=wd,
        milestones=(1,),
        gamma=gamma,
        loss="mse",
    )
    out = finetune(model, variables, x, y, config=cfg)
    assert out.steps == 2  # batch_size > N uses N

    # torch.optim.SGD.step, transcribed: d = g + wd*p; buf = d (first) / mom*buf + d; d = d + mom*buf.
    p = [np.asarray(variables["params"]["head"][k], np.float64) for k in ("kernel", "bias")]
    bufs = [None, None]
    target = np.eye(3)[y]
    for step_lr in (lr, lr * gamma):
        r = x @ p[0] + p[1] - target  # d(½ mean ||.||²)/dlogits · N
        grads = [x.T @ r / len(y), r.mean(axis=0)]
        for i in range(2):
            d = grads[i] + wd * p[i]
            bufs[i] = d if bufs[i] is None else mom * bufs[i] + d
            p[i] = p[i] - step_lr * (d + mom * bufs[i])
    np.testing.assert_allclose(out.variables["params"]["head"]["kernel"], p[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.variables["params"]["head"]["bias"], p[1], rtol=1e-5, atol=1e-6)


def test_losses_normalisation():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0, 1, 2])
    onehot = np.eye(4)[y]
    np.testing.assert_allclose(
        mse(jnp.asarray(z), jnp.asarray(y)), 0.5 * np.mean(np.sum((z - onehot) ** 2, 1)), rtol=1e-6
    )
    np.testing.assert_allclose(
        cross_entropy(jnp.asarray(z), jnp.asarray(y)),
        -np.mean(np.log(_softmax(z.astype(np.float64))[np.arange(7), y])),
        rtol=1e-5,
    )


def _eval_apply(model, variables):
    bs = variables["batch_stats"]
    return lambda p, x: model.apply({"params": p, "batch_stats": bs}, x, train=False)


def test_linearized_gradient_descent_matches_closed_form():
    """Full-batch GD on the mean ½||.||² loss: r_k = (I - (η/N) Θ)^k r0 with Θ = J Jᵀ from jax.jacrev."""
    x, y = _data(n=10)
    x_test, _ = _data(n=4, seed=9)
    model, variables = _bnnet()
    lr, k, n = 0.5, 4, len(y)
    cfg = FinetuneConfig(
        epochs=k, batch_size=n, learning_rate=lr, loss="mse", mode="linearized", bn="train", **PLAIN_GD
    )
    out = finetune(model, variables, x, y, config=cfg)

    apply = _eval_apply(model, variables)
    flat0, unravel = ravel_pytree(variables["params"])

    def jac(xs):  # [N·C, P]
        return np.asarray(jax.jacrev(lambda v: apply(unravel(v), xs))(flat0), np.float64).reshape(-1, flat0.size)

    j_train, j_test = jac(x), jac(x_test)
    theta = j_train @ j_train.T
    r = np.asarray(apply(variables["params"], x), np.float64).ravel() - np.eye(3)[y].ravel()
    delta_w = np.zeros(flat0.size)
    for _ in range(k):
        delta_w -= lr / n * j_train.T @ r
        r = r - lr / n * theta @ r
    closed = np.linalg.matrix_power(np.eye(n * 3) - lr / n * theta, k) @ (
        np.asarray(apply(variables["params"], x), np.float64).ravel() - np.eye(3)[y].ravel()
    )
    np.testing.assert_allclose(r, closed, rtol=1e-8, atol=1e-10)  # the test's own two forms agree

    pred = np.asarray(out.predict(np.concatenate([x, x_test])))
    np.testing.assert_allclose(pred[:n].ravel() - np.eye(3)[y].ravel(), closed, atol=2e-5)
    expect_test = np.asarray(apply(variables["params"], x_test), np.float64).ravel() + j_test @ delta_w
    np.testing.assert_allclose(pred[n:].ravel(), expect_test, atol=2e-5)
    np.testing.assert_allclose(ravel_pytree(out.variables["params"])[0] - flat0, delta_w, atol=2e-5)
    # BatchNorm statistics stay frozen even though bn="train" was asked for.
    for a, b in zip(
        jax.tree.leaves(out.variables["batch_stats"]), jax.tree.leaves(variables["batch_stats"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_linearized_weight_decay_toward_init_and_momentum_match_parameter_space_iteration():
    x, y = _data(n=8)
    model, variables = _bnnet()
    lr, mom, wd, k, n = 0.3, 0.5, 0.1, 3, len(y)
    cfg = FinetuneConfig(
        epochs=k,
        batch_size=n,
        learning_rate=lr,
        momentum=mom,
        nesterov=False,
        weight_decay=wd,
        weight_decay_center="init",
        milestones=(),
        loss="mse",
        mode="linearized",
    )
    out = finetune(model, variables, x, y, config=cfg)

    apply = _eval_apply(model, variables)
    flat0, unravel = ravel_pytree(variables["params"])
    j = np.asarray(jax.jacrev(lambda v: apply(unravel(v), x))(flat0), np.float64).reshape(-1, flat0.size)
    r0 = np.asarray(apply(variables["params"], x), np.float64).ravel() - np.eye(3)[y].ravel()
    dw, buf = np.zeros(flat0.size), np.zeros(flat0.size)
    for _ in range(k):
        g = j.T @ (r0 + j @ dw) / n + wd * dw
        buf = mom * buf + g
        dw = dw - lr * buf
    np.testing.assert_allclose(ravel_pytree(out.variables["params"])[0] - flat0, dw, atol=2e-5)


def _changed(before, after):
    return {
        path
        for path, a, b in zip(leaf_paths(before), jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
        if not np.array_equal(np.asarray(a), np.asarray(b))
    }


def test_linear_probe_changes_only_the_head_and_keeps_statistics():
    x, y = _data()
    model, variables = _bnnet()
    cfg = FinetuneConfig(epochs=2, batch_size=5, learning_rate=0.1, mode="linear_probe", bn="train")
    out = finetune(model, variables, x, y, config=cfg)
    assert _changed(variables["params"], out.variables["params"]) == {"head/bias", "head/kernel"}
    assert not _changed(variables["batch_stats"], out.variables["batch_stats"])


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_subset_changes_only_selected_leaves(bn):
    x, y = _data()
    model, variables = _bnnet()
    cfg = FinetuneConfig(
        epochs=1, batch_size=6, learning_rate=0.1, mode="subset", params_filter=r"^dense/kernel$", bn=bn
    )
    out = finetune(model, variables, x, y, config=cfg)
    assert _changed(variables["params"], out.variables["params"]) == {"dense/kernel"}
    stats_changed = _changed(variables["batch_stats"], out.variables["batch_stats"])
    assert stats_changed == (set() if bn == "frozen" else {"bn/mean", "bn/var"})


def test_full_finetuning_moves_every_leaf_and_learns():
    x, y = _data(n=24)
    model, variables = _bnnet()
    cfg = FinetuneConfig(epochs=6, batch_size=8, learning_rate=0.1, weight_decay=0.0, milestones=())
    out = finetune(model, variables, x, y, config=cfg, x_test=x, y_test=y)
    assert _changed(variables["params"], out.variables["params"]) == set(leaf_paths(variables["params"]))
    assert out.train_loss.shape == (6,) and out.train_loss[-1] < out.train_loss[0]
    assert out.test_accuracy.shape == (6,) and list(out.eval_epochs) == [1, 2, 3, 4, 5, 6]
    assert out.steps == 6 * 3 and not out.diverged
    # The recorded final test metrics equal an independent evaluation of the returned variables.
    logits = np.asarray(model.apply(out.variables, x, train=False), np.float64)
    assert out.test_accuracy[-1] == pytest.approx(np.mean(logits.argmax(1) == y))
    assert out.test_loss[-1] == pytest.approx(-np.mean(np.log(_softmax(logits)[np.arange(len(y)), y])), rel=1e-4)
    assert evaluate(model, out.variables, x, y)["accuracy"] == pytest.approx(out.test_accuracy[-1])


def test_schedule_values_at_milestones():
    cfg = FinetuneConfig(learning_rate=0.1, milestones=(2, 5), gamma=0.1)
    sched = learning_rate_schedule(cfg, steps_per_epoch=7)
    values = [float(sched(k)) for k in (0, 13, 14, 34, 35, 100)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    paper = FinetuneConfig.paper()
    assert (
        paper.epochs,
        paper.batch_size,
        paper.momentum,
        paper.nesterov,
        paper.weight_decay,
        paper.milestones,
        paper.gamma,
    ) == (30, 32, 0.9, True, 1e-4, (15, 25), 0.1)


def test_determinism_same_seed_identical_other_seed_differs():
    x, y = _data(n=20)
    model, variables = _bnnet()
    cfg = FinetuneConfig(epochs=3, batch_size=5, learning_rate=0.05)
    runs = [finetune(model, variables, x, y, config=cfg.replace(seed=s)) for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0].train_loss, runs[1].train_loss)
    for a, b in zip(jax.tree.leaves(runs[0].variables), jax.tree.leaves(runs[1].variables), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0].train_loss, runs[2].train_loss)


def test_stratified_split_is_a_seeded_per_class_partition():
    y = np.repeat(np.arange(3), [10, 5, 1])
    fit, val = stratified_split(y, 0.2, jax.random.PRNGKey(0))
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(len(y)))
    assert np.bincount(y[val], minlength=3).tolist() == [2, 1, 0]
    again = stratified_split(y, 0.2, jax.random.PRNGKey(0))[1]
    other = stratified_split(y, 0.2, jax.random.PRNGKey(5))[1]
    assert np.array_equal(val, again) and not np.array_equal(val, other)


def test_lr_order_accuracy_then_loss_then_smaller_lr_and_diverged_last():
    lrs = [0.3, 0.01, 0.1, 1.0]
    # [L, S] per-seed numbers (exact in binary): 0.1 and 0.3 tie in mean accuracy (0.75); 0.3 has the lower mean
    # loss; a seed of 1.0 diverged
    acc = [[0.75, 0.75], [0.5, 0.625], [1.0, 0.5], [np.nan, 1.0]]
    loss = [[0.2, 0.2], [0.9, 0.9], [0.3, 0.3], [np.nan, 0.0]]
    assert lr_order(lrs, acc, loss) == [0, 2, 1, 3]
    # without a loss, equal accuracy falls to the smaller η, whatever the order the grid was given in
    assert lr_order(lrs, acc) == [2, 0, 1, 3]
    assert lr_order([1.0, 0.5, 0.25], [0.7, 0.7, 0.7]) == [2, 1, 0]


@pytest.mark.parametrize("refit", [False, True])
def test_learning_rate_is_chosen_on_validation_not_test(refit):
    """A big lr learns the task (best on validation); a tiny lr keeps the head's bias toward class 0, which a
    test set of class-1 inputs all labelled 0 rewards (best on test)."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = np.stack([np.where(y == 0, 2.0, -2.0) + 0.1 * rng.normal(size=40), rng.normal(size=40)], 1).astype(np.float32)
    x_test = np.stack([np.full(10, -2.0), rng.normal(size=10)], 1).astype(np.float32)
    y_test = np.zeros(10, int)
    model = Probe(2)
    variables = {"params": {"head": {"kernel": jnp.zeros((2, 2)), "bias": jnp.array([3.0, 0.0])}}}
    cfg = FinetuneConfig(epochs=4, batch_size=8, momentum=0.0, weight_decay=0.0, milestones=())
    search = select_learning_rate(
        model,
        variables,
        x,
        y,
        config=cfg,
        x_test=x_test,
        y_test=y_test,
        lrs=(1e-4, 1.0),
        val_fraction=0.25,
        refit=refit,
    )
    assert search.val_accuracy.tolist() == [0.5, 1.0]
    assert search.test_accuracy.tolist() == [1.0, 0.0]
    assert search.chosen_lr == 1.0 and search.chosen_test_accuracy == 0.0
    assert search.oracle_lr == 1e-4 and search.oracle_test_accuracy == 1.0
    assert len(search.val_indices) == 10 and not set(search.val_indices) & set(search.fit_indices)
    assert [r.config.learning_rate for r in search.runs] == [1e-4, 1.0]
    if refit:  # the test numbers come from runs on all 40 training samples (5 steps of 8 per epoch)
        assert [r.steps for r in search.refit_runs] == [20, 20] and [r.steps for r in search.runs] == [16, 16]
        assert search.test_accuracy.tolist() == [r.test_accuracy[-1] for r in search.refit_runs]
    else:
        assert search.refit_runs is None


def test_divergence_stops_the_run():
    x, y = _data()
    model, variables = _probe()
    cfg = FinetuneConfig(epochs=5, batch_size=4, learning_rate=1e3, loss="mse", milestones=())
    out = finetune(model, variables, 100 * x, y, config=cfg, x_test=x, y_test=y)
    assert out.diverged and out.steps < 5 * 3
    assert np.isnan(out.train_loss[-1]) and np.isnan(out.test_accuracy[-1])


def test_linfit_models_backbone_with_batchnorm_end_to_end():
    from linfit import models

    model = models.create("small_cnn", num_classes=5, width=4, depth=2, batch_norm=True)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
    y = np.arange(8) % 2
    variables = models.init(model, jax.random.PRNGKey(0), x[:1])
    cfg = FinetuneConfig.paper(
        epochs=2,
        batch_size=4,
        mode="subset",
        params_filter=models.param_subsets(model, variables["params"])["last_block"],
    )
    out = finetune(model, variables, x, y, config=cfg)
    assert out.variables["params"]["head"]["kernel"].shape[-1] == 2  # a fresh 2-way head
    assert "conv1/kernel" not in _changed(variables["params"], out.variables["params"])
    assert _changed(variables["batch_stats"], out.variables["batch_stats"])  # bn="train" in the preset
    assert out.steps == 4 and np.all(np.isfinite(out.train_loss))


def test_new_head_from_linfit_models():
    """``head_init="zeros"`` replaces a linfit backbone's 3-way head by a zero 4-way one. With zero logits the
    softmax is uniform, so the gradient of the mean cross-entropy is φᵀ(1/C − onehot(y))/N for the kernel and
    mean(1/C − onehot(y)) for the bias, φ the backbone's features at initialisation; the first step of PyTorch's
    SGD with Nesterov momentum μ (buffer b_0 = g', direction g' + μ b_0 = (1 + μ) g', ``sgd_direction``) and
    weight decay λ (g' = g + λ w, λ·0 = 0 on the zero head) then gives W_1 = −η (1 + μ) g. The zero head also
    stops every gradient into the backbone (∂L/∂φ = (softmax − onehot) Wᵀ = 0), whose leaves only decay:
    w_1 = w_0 (1 − η (1 + μ) λ)."""
    from linfit import models

    model = models.create("small_cnn", num_classes=3, width=4, depth=2)  # no BatchNorm: φ is per-sample
    x = np.random.default_rng(0).normal(size=(12, 8, 8, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 3, 0])  # unbalanced, so the bias gradient is not zero
    variables = models.init(model, jax.random.PRNGKey(0), x[:1])
    lr, mom, wd = 0.5, 0.9, 1e-4
    cfg = FinetuneConfig(epochs=1, batch_size=len(y), learning_rate=lr, momentum=mom, nesterov=True,
                         weight_decay=wd, milestones=(), head_init="zeros", eval_every_epoch=False)
    out = finetune(model, variables, x, y, config=cfg)
    head = out.variables["params"]["head"]
    assert head["kernel"].shape == (8, 4) and out.steps == 1
    # φ(x; w0) outside the training loop: without BatchNorm, evaluation and training mode are the same function
    phi = np.asarray(jax.jit(lambda z: model.apply(variables, z, method="features"))(x), np.float64)
    residual = 1.0 / 4 - np.eye(4)[y]  # softmax(0) − onehot
    expect_w = -lr * (1 + mom) * phi.T @ residual / len(y)
    expect_b = -lr * (1 + mom) * residual.mean(axis=0)
    # float32 sums of 12 products and a float32 forward pass: round-off ~1e-7 of the largest entry
    np.testing.assert_allclose(head["kernel"], expect_w, rtol=1e-5, atol=1e-6 * np.abs(expect_w).max())
    np.testing.assert_allclose(head["bias"], expect_b, rtol=1e-5, atol=1e-7)
    body = {k: v for k, v in variables["params"].items() if k != "head"}
    moved = {k: v for k, v in out.variables["params"].items() if k != "head"}
    decay = 1 - lr * (1 + mom) * wd  # 1 - 9.5e-5: a relative change 95x the tolerance below (float32 step)
    for path, w0, w1 in zip(leaf_paths(body), jax.tree.leaves(body), jax.tree.leaves(moved), strict=True):
        np.testing.assert_allclose(w1, np.asarray(w0, np.float64) * decay, rtol=1e-6, atol=0, err_msg=path)


def test_clear_errors():
    x, y = _data()
    model, variables = _probe()
    cfg = FinetuneConfig(epochs=1)
    with pytest.raises(LabelError, match="C=3"):
        finetune(model, variables, x, np.where(y == 2, 3, y), config=cfg)
    with pytest.raises(ShapeError):
        finetune(model, variables, x, y[:-1], config=cfg)
    with pytest.raises(ShapeError, match="empty"):
        finetune(model, variables, x[:0], y[:0], config=cfg)
    with pytest.raises(ShapeError):
        finetune(model, variables, x, y, config=cfg, x_test=x)
    with pytest.raises(LinfitError, match="params_filter"):
        FinetuneConfig(mode="subset")
    with pytest.raises(ConfigError, match='mode "full" .* no params_filter'):
        FinetuneConfig(mode="full", params_filter="^head/")
    with pytest.raises(ConfigError, match="momentum"):
        FinetuneConfig(momentum=float("nan"))
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate(model, variables, x, y, batch_size=0)
    with pytest.raises(ShapeError, match="inputs must be an array"):
        select_learning_rate(model, variables, list(x), y, config=cfg)
    with pytest.raises(LabelError, match=">= 0"):
        select_learning_rate(model, variables, x, y - 1, config=cfg)
    with pytest.raises(LabelError, match=">= 0"):
        stratified_split(y - 1, 0.2, jax.random.PRNGKey(0))
    with pytest.raises(LinfitError, match="mode"):
        FinetuneConfig(mode="everything")
