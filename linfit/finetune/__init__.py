"""Real fine-tuning with optax: the ground truth that linfit's scores and closed forms predict.

One training loop (``loop.py``) serves full fine-tuning, the linear probe, fine-tuning of any parameter
subset and SGD on the linearised model; ``config.py`` holds the configuration and the paper's preset
(Deshpande et al. 2021, §5.5), ``protocol.py`` the learning-rate search (validation choice and the paper's
oracle choice on test), ``sweep.py`` the benchmark's ground truth: a learning-rate grid × seeds trained to
convergence in one vmapped program, η chosen on validation and refit, per-image test correctness.

Example::

    from linfit.finetune import FinetuneConfig, finetune, select_learning_rate
    cfg = FinetuneConfig.paper(epochs=3, batch_size=16)
    result = finetune(model, variables, x_train, y_train, config=cfg.replace(learning_rate=0.005),
                      x_test=x_test, y_test=y_test)
    search = select_learning_rate(model, variables, x_train, y_train, config=cfg, x_test=x_test, y_test=y_test)
"""

from linfit.finetune.config import FinetuneConfig, learning_rate_schedule, sgd_direction
from linfit.finetune.loop import HEAD_FILTER, FinetuneResult, evaluate, finetune, prepare
from linfit.finetune.losses import cross_entropy, mse
from linfit.finetune.protocol import (PAPER_LEARNING_RATES, LrSearchResult, lr_order, select_learning_rate,
                                     stratified_split)
from linfit.finetune.sweep import GridProtocol, GridResult, finetune_grid

__all__ = [
    "HEAD_FILTER",
    "PAPER_LEARNING_RATES",
    "FinetuneConfig",
    "FinetuneResult",
    "GridProtocol",
    "GridResult",
    "LrSearchResult",
    "cross_entropy",
    "evaluate",
    "finetune",
    "finetune_grid",
    "learning_rate_schedule",
    "lr_order",
    "mse",
    "prepare",
    "select_learning_rate",
    "sgd_direction",
    "stratified_split",
]
