"""The paper's learning-rate protocol, with an honest validation choice next to the paper's oracle.

Deshpande et al. 2021 (§5.5) fine-tune with each η ∈ {0.01, 0.005, 0.001} and report the best **test**
accuracy, an oracle choice. ``select_learning_rate`` carves a stratified, seeded validation split from the
training data, trains one run per η on the rest, chooses η by validation accuracy, and records every run's
test accuracy, so both the validation choice and the oracle choice can be reported.

Example::

    cfg = FinetuneConfig.paper(epochs=5)
    search = select_learning_rate(model, variables, x_train, y_train, config=cfg, x_test=x_test, y_test=y_test)
    search.chosen_lr, search.chosen_test_accuracy     # chosen on validation
    search.oracle_lr, search.oracle_test_accuracy     # the paper's best-on-test
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from linfit.defaults import PAPER_LEARNING_RATES
from linfit.errors import ConfigError, DatasetError, LabelError, ShapeError
from linfit.finetune.config import FinetuneConfig
from linfit.finetune.loop import FinetuneResult, _check_data, _make_trainer, _run, prepare


def stratified_split(labels, val_fraction: float, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (fit, validation), class by class.

    Each class c with n_c ≥ 2 samples sends ``clip(round(val_fraction · n_c), 1, n_c − 1)`` of them, drawn by
    ``jax.random.permutation(fold_in(key, c), n_c)``, to validation (``round`` is Python's: halves to even,
    ``round(2.5) == 2``); a class with one sample stays in the fit split. Args: ``labels [N]`` integers ≥ 0,
    ``0 < val_fraction < 1``. Returns two sorted index arrays that partition ``0..N-1``.

    Raises:
      ConfigError: ``val_fraction`` outside (0, 1).
      ShapeError / LabelError: ``labels`` not an ``[N]`` vector of integers ≥ 0.
      DatasetError: no class has two samples.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in (0, 1); got {val_fraction}")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ShapeError(f"labels must be one-dimensional [N]; got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or np.any(y < 0):
        raise LabelError(f"labels must be integers >= 0; got dtype {y.dtype}, minimum {y.min() if y.size else None}")
    val = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if members.size < 2:
            continue
        n_val = int(np.clip(round(val_fraction * members.size), 1, members.size - 1))
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, int(c)), members.size))
        val.append(members[order[:n_val]])
    if not val:
        raise DatasetError("no class has two samples, so no validation split can be carved")
    val_idx = np.sort(np.concatenate(val))
    fit_idx = np.setdiff1d(np.arange(y.shape[0]), val_idx)
    return fit_idx, val_idx


def lr_order(lrs: Sequence[float], accuracy, loss=None) -> list[int]:
    """Indices of ``lrs [L]``, best first: the higher accuracy, then the lower loss, then the smaller η.

    ``accuracy`` and ``loss`` are ``[L]`` or ``[L, S]`` (averaged over S seeds); a NaN mean (a diverged run)
    ranks last; without ``loss`` only accuracy and η decide. The one rule by which ``select_learning_rate`` and
    ``finetune_grid`` choose η on validation and by which the paper's oracle choice on test is made.
    """
    def mean(values) -> np.ndarray:
        return np.asarray(values, dtype=np.float64).reshape(len(lrs), -1).mean(axis=1)

    acc = np.nan_to_num(mean(accuracy), nan=-np.inf)
    lo = np.zeros(len(lrs)) if loss is None else np.nan_to_num(mean(loss), nan=np.inf)
    return sorted(range(len(lrs)), key=lambda i: (-acc[i], lo[i], float(lrs[i])))


@dataclasses.dataclass(frozen=True)
class LrSearchResult:
    """One run per learning rate; the choice made on validation and the oracle choice made on test.

    Attributes:
      lrs: ``[L]`` the learning rates, in the order tried.
      runs: the runs trained on the fit split (metrics ``"val"`` and, with a test set, ``"test"``).
      refit_runs: with ``refit=True``, the runs retrained on the whole training set, else ``None``.
      val_accuracy, val_loss: ``[L]`` after the last epoch of each fit-split run.
      test_accuracy: ``[L]`` after the last epoch of each run that the test numbers come from (the refit
        runs when ``refit=True``), or ``None`` without a test set.
      chosen_lr: the best validation accuracy (ties: lower validation loss, then the smaller lr; ``lr_order``).
      chosen_test_accuracy: its test accuracy (``None`` without a test set).
      oracle_lr, oracle_test_accuracy: the best test accuracy (the paper's protocol; ties: the smaller lr;
        ``None`` without a test set).
      fit_indices, val_indices: the split of the training set.
    """

    lrs: tuple[float, ...]
    runs: tuple[FinetuneResult, ...]
    refit_runs: tuple[FinetuneResult, ...] | None
    val_accuracy: np.ndarray
    val_loss: np.ndarray
    test_accuracy: np.ndarray | None
    chosen_lr: float
    chosen_test_accuracy: float | None
    oracle_lr: float | None
    oracle_test_accuracy: float | None
    fit_indices: np.ndarray
    val_indices: np.ndarray


def _last(run: FinetuneResult, name: str, metric: str) -> float:
    values = run.metrics[name][metric]
    return float(values[-1]) if values.size else float("nan")


def select_learning_rate(
    model,
    variables: Mapping,
    x_train,
    y_train,
    *,
    config: FinetuneConfig,
    x_test=None,
    y_test=None,
    lrs: Sequence[float] = PAPER_LEARNING_RATES,
    val_fraction: float = 0.2,
    refit: bool = False,
    num_classes: int | None = None,
    progress: bool = False,
) -> LrSearchResult:
    """Fine-tune once per learning rate and choose it on a validation split.

    The split is ``stratified_split(y_train, val_fraction, fold_in(PRNGKey(config.seed), 2))``. Every run
    starts from the same variables (the same new head when ``config.head_init`` is set), uses
    ``config`` with its ``learning_rate`` replaced, and shares one compiled training step (the step size is an
    argument of it; ``linfit.finetune.loop.compiled_functions`` also shares it with later calls on the same
    architecture and input shapes, e.g. the other models of a benchmark grid). With
    ``refit=True`` each lr is also retrained on the whole training set and the test accuracies come from
    those runs (the paper's oracle exactly; twice the cost); otherwise the validation choice and the oracle
    compare runs trained on the same fit split.

    Args:
      model, variables, x_train ``[N, ...]``, y_train ``[N]``, config, num_classes, progress: as ``finetune``.
      x_test, y_test: optional test set (needed for the oracle numbers).
      lrs: the initial learning rates tried (the paper's by default).
      val_fraction: the share of each class held out for validation.
      refit: retrain every lr on the whole training set for the test numbers.

    Returns:
      An ``LrSearchResult``.

    Raises:
      ConfigError: empty ``lrs``, or ``val_fraction`` outside (0, 1).
      ShapeError, LabelError, NonFiniteError, DatasetError: as ``finetune`` and ``stratified_split``.
    """
    if (x_test is None) != (y_test is None):
        raise ShapeError("give both x_test and y_test, or neither")
    lrs = tuple(float(lr) for lr in lrs)
    if not lrs:
        raise ConfigError("lrs is empty; give at least one learning rate")
    x_train, y_all = _check_data(x_train, y_train, None, "training")
    split_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    fit_idx, val_idx = stratified_split(y_all, val_fraction, split_key)

    model, variables = prepare(model, variables, config, num_classes, y_all)
    trainer = _make_trainer(model, variables, config)
    test_set = {} if x_test is None else {"test": (x_test, y_test)}
    fit_sets = {"val": (x_train[val_idx], y_all[val_idx]), **test_set}

    runs, refit_runs = [], []
    for lr in lrs:
        cfg = config.replace(learning_rate=lr)
        runs.append(_run(trainer, x_train[fit_idx], y_all[fit_idx], cfg, fit_sets, progress))
        if refit:
            refit_runs.append(_run(trainer, x_train, y_all, cfg, test_set, progress))

    val_acc = np.array([_last(r, "val", "accuracy") for r in runs])
    val_loss = np.array([_last(r, "val", "loss") for r in runs])
    chosen = lr_order(lrs, val_acc, val_loss)[0]

    test_acc = oracle = None
    if test_set:
        test_acc = np.array([_last(r, "test", "accuracy") for r in (refit_runs if refit else runs)])
        oracle = lr_order(lrs, test_acc)[0]
    return LrSearchResult(
        lrs=lrs,
        runs=tuple(runs),
        refit_runs=tuple(refit_runs) if refit else None,
        val_accuracy=val_acc,
        val_loss=val_loss,
        test_accuracy=test_acc,
        chosen_lr=lrs[chosen],
        chosen_test_accuracy=None if test_acc is None else float(test_acc[chosen]),
        oracle_lr=None if oracle is None else lrs[oracle],
        oracle_test_accuracy=None if oracle is None else float(test_acc[oracle]),
        fit_indices=fit_idx,
        val_indices=val_idx,
    )
