"""Pre-training of the single-domain zoo models with linfit's one training loop (``linfit.finetune``).

* generalist and scratch experts: a fresh ``Architecture.create(C)`` initialised with ``PRNGKey(seed)``,
  every parameter trained;
* from-generalist experts: the generalist's variables with a new ``lecun_normal`` C-way head
  (``FinetuneConfig.head_init``), every parameter trained (the paper's ✓ models, §5.2).

The optimiser is the paper's pre-training rule (SGD, heavy-ball momentum 0.9, weight decay, step decay)
expressed as a ``FinetuneConfig`` with ``nesterov=False`` and BatchNorm in train mode.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from linfit.finetune import FinetuneConfig, finetune
from linfit.models import init
from linfit.data import Dataset
from linfit.zoo.spec import Architecture, TrainConfig


class Trained(NamedTuple):
    """A trained model: the module, its ``{"params", "batch_stats"}`` and its top-1 source test accuracy."""

    model: object
    variables: dict
    test_accuracy: float


def finetune_config(cfg: TrainConfig, seed: int, *, new_head: bool) -> FinetuneConfig:
    """The ``FinetuneConfig`` of one pre-training run (data order and new head seeded by ``seed``)."""
    return FinetuneConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
        nesterov=False, weight_decay=cfg.weight_decay, milestones=cfg.milestones, gamma=cfg.gamma, loss="ce",
        mode="full", bn="train", head_init="lecun_normal" if new_head else None, seed=seed,
        eval_every_epoch=False,
    )


def train_from_scratch(arch: Architecture, data: Dataset, cfg: TrainConfig, seed: int, *,
                       progress: bool = False) -> Trained:
    """Train ``arch`` with a ``data.num_classes``-way head from a random initialisation (key ``PRNGKey(seed)``)."""
    model = arch.create(data.num_classes)
    variables = init(model, jax.random.PRNGKey(seed), data.x_train[:1])
    return _fit(model, variables, data, finetune_config(cfg, seed, new_head=False), progress)


def train_from_init(model, variables: dict, data: Dataset, cfg: TrainConfig, seed: int, *,
                    progress: bool = False) -> Trained:
    """Train every parameter of ``(model, variables)`` on ``data`` after replacing the head by a new one."""
    return _fit(model, variables, data, finetune_config(cfg, seed, new_head=True), progress)


def _fit(model, variables, data: Dataset, config: FinetuneConfig, progress: bool) -> Trained:
    result = finetune(model, variables, data.x_train, data.y_train, config=config, x_test=data.x_test,
                      y_test=data.y_test, num_classes=data.num_classes, progress=progress)
    return Trained(model.clone(num_classes=data.num_classes), result.variables, float(result.test_accuracy[-1]))
