"""The multi-domain expert with domain-specific BatchNorm (Deshpande et al. 2021, §5.3, "Multi-BN").

One network for D domains: the convolution kernels ``w_s`` are shared; every BatchNorm layer's scale, bias
and running statistics and the classification head ``w_d`` belong to domain d. Training is round-robin:
SGD step k uses a batch of domain ``k mod D`` and updates ``w_s`` and that domain's ``w_d``::

    g = ∇_{(w_s, w_d)} CE(mask_d(f(x; w_s, w_d)), y),   x, y ~ domain d
    (w_s, w_d) ← (w_s, w_d) − η_k · SGD-direction(g)     (momentum buffers: one for w_s, one per domain)

All heads have ``C_max = max_d C_d`` outputs so that one compiled step serves every domain; ``mask_d`` sets
the logits of the columns ``c >= C_d`` to −1e9, so they get no gradient and candidate d keeps only its
first ``C_d`` columns. Smaller domains are resampled (fresh permutations) to the largest domain's step
count, as the paper samples small datasets with replacement.

Each domain then is one ordinary candidate model of the architecture: ``create(C_d)`` with ``w_s``, ``w_d``
and domain d's statistics (:func:`candidate_variables`).
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from linfit.finetune import FinetuneConfig, cross_entropy, learning_rate_schedule, sgd_direction
from linfit.models import init
from linfit.tree import leaf_paths, split_params
from linfit.data import Dataset
from linfit.zoo.spec import Architecture, TrainConfig

_MASKED = -1e9


def domain_filter(batch_stats) -> str:
    """The params filter of the domain-specific leaves: every BatchNorm module (those holding
    ``batch_stats``) and the head."""
    modules = sorted({path.rsplit("/", 1)[0] for path in leaf_paths(batch_stats)})
    return "^(" + "|".join([re.escape(m) for m in modules] + ["head"]) + ")/"


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _take(tree, d):
    return jax.tree.map(lambda a: a[d], tree)


def _put(tree, d, new):
    return jax.tree.map(lambda a, n: a.at[d].set(n), tree, new)


def _domain_order(key, n: int, length: int) -> np.ndarray:
    """``length`` indices into ``0..n-1``: consecutive permutations ``permutation(fold_in(key, r), n)``."""
    rounds = math.ceil(length / n)
    return np.concatenate([np.asarray(jax.random.permutation(jax.random.fold_in(key, r), n))
                           for r in range(rounds)])[:length]


def train_multibn(arch: Architecture, domains: list[Dataset], cfg: TrainConfig, seed: int, *,
                  progress: bool = False) -> tuple[object, dict, dict, dict]:
    """Train the multi-BN expert on ``domains`` round-robin.

    Returns:
      ``(model_max, shared_params, stacked_domain_params, stacked_batch_stats)`` where ``model_max`` has
      ``C_max`` outputs, ``shared_params`` is a full params tree whose domain-specific leaves are unused,
      and the stacked trees hold domain d's leaves at index d (``[D, ...]``); pass them to
      :func:`candidate_variables`.
    """
    num_domains = len(domains)
    c_max = max(d.num_classes for d in domains)
    model = arch.create(c_max)
    key = jax.random.PRNGKey(seed)
    inits = [init(model, jax.random.fold_in(key, d), domains[0].x_train[:1]) for d in range(num_domains)]
    dfilter = domain_filter(inits[0]["batch_stats"])
    shared, merge_shared = split_params(inits[0]["params"], lambda path, leaf: re.search(dfilter, path) is None)
    domain_params = _stack([split_params(v["params"], dfilter)[0] for v in inits])
    batch_stats = _stack([v["batch_stats"] for v in inits])
    masks = jnp.asarray([[c < d.num_classes for c in range(c_max)] for d in domains])

    config = FinetuneConfig(momentum=cfg.momentum, nesterov=False, weight_decay=cfg.weight_decay,
                            milestones=cfg.milestones, gamma=cfg.gamma, learning_rate=cfg.learning_rate)
    tx = sgd_direction(config)
    steps_per_domain = math.ceil(max(d.x_train.shape[0] for d in domains) / cfg.batch_size)
    steps_per_epoch = steps_per_domain * num_domains
    schedule = learning_rate_schedule(config.replace(epochs=cfg.epochs), steps_per_epoch)

    def step(state, d, x, y, lr):
        shared, dparams, stats, opt_shared, opt_domain = state
        w_d, stats_d, opt_d = _take(dparams, d), _take(stats, d), _take(opt_domain, d)

        def objective(w_s, w_d):
            params = split_params(merge_shared(w_s), dfilter)[1](w_d)
            logits, updates = model.apply({"params": params, "batch_stats": stats_d}, x, train=True,
                                          mutable=["batch_stats"])
            return cross_entropy(jnp.where(masks[d], logits, _MASKED), y), updates["batch_stats"]

        (loss, new_stats), (g_s, g_d) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(shared, w_d)
        dir_s, opt_shared = tx.update(g_s, opt_shared, shared)
        dir_d, opt_d = tx.update(g_d, opt_d, w_d)
        shared = jax.tree.map(lambda w, u: w - lr * u, shared, dir_s)
        w_d = jax.tree.map(lambda w, u: w - lr * u, w_d, dir_d)
        return (shared, _put(dparams, d, w_d), _put(stats, d, new_stats), opt_shared,
                _put(opt_domain, d, opt_d)), loss

    step = jax.jit(step)
    state = (shared, domain_params, batch_stats, tx.init(shared), tx.init(domain_params))
    data_key = jax.random.fold_in(key, num_domains)
    k = 0
    bar = tqdm(range(cfg.epochs), desc=f"{arch.name}/multibn", disable=not progress)
    for epoch in bar:
        orders = [_domain_order(jax.random.fold_in(jax.random.fold_in(data_key, epoch), d), dom.x_train.shape[0],
                                steps_per_domain * cfg.batch_size) for d, dom in enumerate(domains)]
        losses = []
        for i in range(steps_per_domain):
            for d, dom in enumerate(domains):
                idx = orders[d][i * cfg.batch_size:(i + 1) * cfg.batch_size]
                state, loss = step(state, d, dom.x_train[idx], dom.y_train[idx], float(schedule(k)))
                losses.append(loss)
                k += 1
        bar.set_postfix(loss=f"{float(jnp.mean(jnp.stack(losses))):.4f}")
    shared, domain_params, batch_stats, _, _ = state
    return model, merge_shared(shared), domain_params, batch_stats


def candidate_variables(shared_params: dict, domain_params: dict, batch_stats: dict, d: int,
                        num_classes: int) -> dict:
    """Domain d's candidate: ``{"params": w_s ∪ w_d (head cut to num_classes columns), "batch_stats": stats_d}``."""
    w_d = _take(domain_params, d)
    w_d = {**w_d, "head": {"kernel": w_d["head"]["kernel"][:, :num_classes],
                           "bias": w_d["head"]["bias"][:num_classes]}}
    template = {**shared_params, "head": w_d["head"]}
    params = split_params(template, domain_filter(batch_stats))[1](w_d)
    return {"params": params, "batch_stats": _take(batch_stats, d)}
