"""How well does the linearized model predict real fine-tuning? (the study the paper did not run)

Deshpande et al. 2021 (arXiv 2102.00084, §2, Proposition 1) predict fine-tuning with the closed-form MSE
dynamics of the model linearized at the pre-trained weights. This script measures how far that prediction is from
real fine-tuning, over training steps, on any zoo (``--zoo``: the embedded one by default, ``imagenet`` for the real
ImageNet backbones, each at its own input size and normalisation, or a TOML file):

(a) CLOSED FORM: ``linfit.dynamics.LinearizedDynamics`` on the exact fine-tuning NTK of the model with its new
    head (untraced, ``[N·O, N·O]``: the specific head makes the kernel differ across logits, so the traced
    ``Θ ⊗ I`` form would be exact only for the head subset), ``discrete=True`` (gradient-descent steps);
(b) GD on the LINEARIZED model (``finetune(mode="linearized", loss="mse")``): must equal (a) - a check;
(c) REAL fine-tuning of the same parameter subset (``mode="subset"`` / ``"full"``) with MSE and with
    cross-entropy;
(a-CE) the LINEARIZED prediction under cross-entropy. It has no closed form, but gradient descent on the
    linearized model is the function-space iteration ``f_{k+1} = f_k − (η/N) Θ (softmax(f_k) − onehot)`` on the
    same untraced kernel (``linfit.dynamics.linearized_ce_trajectory``), compared with (c)-CE; checked against
    ``finetune(mode="linearized", loss="ce")`` (GD in parameter space) like (a) against (b).

Protocol. Every run is full-batch gradient descent (no momentum, no weight decay, constant step η, BatchNorm
frozen in evaluation mode, as the linearized model has it) from one fresh ``lecun_normal`` head, one output per
target class. Time axes: ``finetune`` minimises the MEAN over samples of ½‖f(x) − onehot(y)‖², so a step η on it is a step η/N on
the dynamics' loss ½ Σ over samples and outputs: (a) uses ``learning_rate = η/N`` and ``train_loss/N``.
``finetune``'s ``train_loss[e]`` is the loss before step e (full batch: at the weights after e steps) and its
test metrics come after step e+1; both sides are compared at those same step counts. The step size is set per
(model, subset) from the kernel's top eigenvalue: ``η = c · N / λ_max(Θ)``, i.e. ``η_dyn λ_max = c`` (``c < 2``
is the stability limit of (a) and (b)), for each ``c`` in ``Settings.lr_fractions``.

Measured, for each loss (MSE: (a) vs (c)-MSE; CE: (a-CE) vs (c)-CE): the relative error
``|L_lin(k) − L_real(k)| / L_real(k)`` of the training loss at each step k, the first step where it exceeds 10 %
("break step"), the test-accuracy gap over time, and Spearman's rank correlation between the linearized and the
real run's final test accuracy over all (model, subset) candidates of one (task, regime, c) - do the linearized
dynamics rank the candidates as fine-tuning does?

Where the linearization holds: with ``η_dyn = η/N`` the step on the summed loss, ``τ = η_dyn·λ_max·t`` (``t`` in steps,
``τ = c·t``) is the dimensionless time of the fastest kernel mode; the report gives, per subset, loss and ``c``, the
largest relative loss error over ``τ ≤ T`` for several ``T``, and ``τ`` at the break - if the linearization's error
were a function of ``τ`` alone, the rows of different ``c`` would agree.

Regimes: ``5shot`` and ``20shot`` as the tasks define them; ``full`` is capped at ``Settings.full_per_class``
(30) training images per class, drawn class-balanced by ``Task.scoring_set``, so the untraced kernels stay
``[3000, 3000]``.

Usage::

    python experiments/approximation_error.py            # the study (~1.5 h on 2 busy shared CPU cores)
    python experiments/approximation_error.py --quick --out-dir /tmp/ae   # smoke test
    # a real ImageNet backbone (227 px) on a two-class task of real photos
    python experiments/approximation_error.py --zoo imagenet --models imagenet/squeezenet1_1 --tasks lfw_faces \
        --regimes 5shot 20shot --test-per-class 20 --out-dir experiments/approximation_error_imagenet

    # as it was run: one process per task (they share the cores better), then one merging pass
    blocks=experiments/approximation_error_blocks
    python experiments/approximation_error.py --tasks digits_sk --out-dir /tmp/d --cache-dir $blocks &
    python experiments/approximation_error.py --tasks fashion_rot --out-dir /tmp/f --cache-dir $blocks
    python experiments/approximation_error.py --cached-only

Each (task, regime, model) block is written, when it is done, as one JSON file into ``--cache-dir`` (default: the
folder ``approximation_error_blocks`` in ``--out-dir``; commit it with the report), and a rerun reads it back
instead of recomputing it: an interrupted study resumes, and the report regenerates exactly from the committed
blocks. Within a block, each finished (subset, c) run is kept in ``<block>.partial`` until the block is done, so a
block longer than a sitting resumes too (commit the ``.partial`` file to carry it to the next one). A block records
the settings it was computed with; a rerun with other settings refuses it rather than mix it in (delete it, or use
another ``--cache-dir``). The code version is ``BLOCK_VERSION``, part of the file name.

Writes ``approximation_error.md`` and ``approximation_error_*.png`` next to this file (or in ``--out-dir``), with the
hand-written ``approximation_error_reading.md`` of that folder, if there is one, appended to the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from scipy.stats import spearmanr

from linfit import models
from linfit.cli import use_compile_cache
from linfit._io import write_atomic
from linfit.bench.stats import share_interval
from linfit.data import load_task
from linfit.data.sampling import scoring_subset
from linfit.dynamics import LinearizedDynamics, linearized_ce_trajectory
from linfit.finetune import FinetuneConfig, finetune
from linfit.ntk import empirical_ntk_fn
from linfit.tree import leaf_paths, split_params
from linfit.zoo.source import load_zoo

HERE = Path(__file__).resolve().parent
BREAK_THRESHOLD = 0.10  # relative training-loss error at which the linearization counts as broken
BLOCK_VERSION = 3  # part of a block's file name: 2 = blocks holding the cross-entropy prediction, 3 = JSON
LOSSES = ("mse", "ce")
READING = "approximation_error_reading.md"
"""A hand-written interpretation in ``--out-dir``: appended to the report when present (its text is not checked
against the blocks; it says which blocks it was written from)."""
TAUS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)  # τ = η_dyn·λ_max·t at which the report reads the error off


@dataclasses.dataclass(frozen=True)
class Settings:
    """One study: every (model, task, regime, subset, lr fraction) gets (a), (a-CE), (c)-MSE and (c)-CE; the check
    (b) runs for the first model on the first task, every regime and subset, at the first lr fraction."""

    zoo: str = "embedded"  # linfit.zoo.source.load_zoo: "embedded", "imagenet" or a TOML file
    models: tuple[str, ...] = ("resnet8/generalist", "resnet8/mnist/from-generalist", "resnet8/fashion/scratch")
    tasks: tuple[str, ...] = ("digits_sk", "fashion_rot")
    regimes: tuple[str, ...] = ("5shot", "20shot", "full")
    full_per_class: int = 30  # regime "full": at most this many training images per class (class-balanced)
    subsets: tuple[str, ...] = ("head", "last_block", "all")
    lr_fractions: tuple[float, ...] = (0.3, 1.0)
    steps: int = 30
    test_per_class: int = 10
    seed: int = 0


QUICK = Settings(models=("resnet8/generalist", "resnet8/fashion/scratch"), tasks=("digits_sk",),
                 regimes=("5shot", "full"), full_per_class=5, subsets=("head", "all"), lr_fractions=(1.0,), steps=4,
                 test_per_class=5)


# --------------------------------------------------------------------------------------------- kernels


def _flat(kernel: np.ndarray) -> np.ndarray:
    """An untraced kernel ``[N1, N2, O, O]`` as ``[N1·O, N2·O]`` (row ``i·O + c``), float64."""
    n1, n2, o, _ = kernel.shape
    return np.asarray(kernel, np.float64).transpose(0, 2, 1, 3).reshape(n1 * o, n2 * o)


def subset_kernels(model, variables, x_train, x_test, subsets: dict[str, object]) -> dict[str, tuple]:
    """Exact untraced fine-tuning NTKs of nested parameter subsets, flattened to 2-D.

    Θ[(i, c), (j, c')] = Σ_p ∂f_c(x_i)/∂w_p ∂f_c'(x_j)/∂w_p over the subset's parameters (row ``i·O + c``), from
    linfit's engine (``empirical_ntk_fn(trace_axes=())``, evaluation mode). The subsets must be nested
    (head ⊂ last_block ⊂ all): each kernel is the previous one plus the kernel of the leaves it adds, so every
    parameter's contribution is computed once.

    Args:
      x_train ``[N, ...]``, x_test ``[M, ...]``; subsets: ``{name: params filter}`` in nesting order.
    Returns:
      ``{name: (K_train [N·O, N·O], K_test_train [M·O, N·O])}``, float64.
    """
    apply_fn, params = models.logits_fn(model, variables)
    out, k_tt, k_st, seen = {}, 0.0, 0.0, set()
    for name, params_filter in subsets.items():
        added = {p for p in leaf_paths(split_params(params, params_filter)[0]) if p not in seen}
        seen |= added
        if added:
            ntk_fn = empirical_ntk_fn(apply_fn, trace_axes=(), params_filter=lambda path, leaf, a=added: path in a)
            k_tt = k_tt + _flat(ntk_fn(x_train, None, params))
            k_st = k_st + _flat(ntk_fn(x_test, x_train, params))
        out[name] = (k_tt, k_st)
    return out


# --------------------------------------------------------------------------------------------- runs


def closed_form(k_tt, k_st, y_train, f0_train, f0_test, y_test, lr: float, steps: int) -> dict[str, np.ndarray]:
    """(a): ``steps`` full-batch GD steps of size ``lr`` on the mean MSE, from ``LinearizedDynamics``.

    ``k_tt [N·O, N·O]``, ``k_st [M·O, N·O]`` untraced flattened kernels; ``f0_* [·, O]`` initial logits.
    Returns ``loss [steps]`` (mean over samples of ½‖r‖², at steps 0..steps-1) and ``test_acc [steps]``
    (after steps 1..steps), aligned with ``FinetuneResult.train_loss`` / ``test_accuracy``.
    """
    n, n_out = f0_train.shape
    targets = np.eye(n_out)[y_train].reshape(-1, 1)
    dyn = LinearizedDynamics.from_kernel(k_tt, targets, f0_train.reshape(-1, 1), learning_rate=lr / n,
                                         discrete=True)
    k = np.arange(steps + 1)
    loss = dyn.train_loss(k[:-1]) / n
    pred = dyn.test_predictions(k[1:], k_st, f0_test.reshape(-1, 1)).reshape(steps, -1, n_out)
    return {"loss": loss, "test_acc": np.mean(np.argmax(pred, axis=-1) == y_test, axis=-1)}


def ce_prediction(k_tt, k_st, y_train, f0_train, f0_test, y_test, lr: float, steps: int) -> dict[str, np.ndarray]:
    """(a-CE): ``steps`` full-batch GD steps of size ``lr`` on the MEAN cross-entropy of the linearized model,
    as the function-space iteration of ``linearized_ce_trajectory`` (step ``lr/N`` on the summed loss).

    Same arguments and output alignment as :func:`closed_form`; ``loss`` is the mean cross-entropy.
    """
    n, n_out = f0_train.shape
    untraced = lambda k: k.reshape(-1, n_out, n, n_out).transpose(0, 2, 1, 3)  # [R·O, N·O] -> [R, N, O, O]
    traj = linearized_ce_trajectory(untraced(k_tt), untraced(k_st), np.eye(n_out)[y_train], f0_train, f0_test,
                                    learning_rate=lr / n, steps=steps, trace_axes=())
    acc = np.mean(np.argmax(traj.test_logits[1:], axis=-1) == y_test, axis=-1)
    return {"loss": traj.train_loss[:-1] / n, "test_acc": acc}


def gd_run(model, variables, data, params_filter, *, mode: str, loss: str, lr: float, steps: int) -> dict:
    """(b) or (c): ``finetune`` with full-batch plain GD (BatchNorm frozen). ``data = (x, y, x_test, y_test)``."""
    x, y, x_test, y_test = data
    if mode == "subset" and params_filter is None:
        mode = "full"
    cfg = FinetuneConfig(epochs=steps, batch_size=len(y), learning_rate=lr, momentum=0.0, nesterov=False,
                         weight_decay=0.0, milestones=(), loss=loss, mode=mode, params_filter=params_filter,
                         bn="frozen", head_init=None, eval_batch_size=512)
    res = finetune(model, variables, x, y, config=cfg, x_test=x_test, y_test=y_test)
    acc = np.full(steps, np.nan)
    acc[: res.test_accuracy.size] = res.test_accuracy
    return {"loss": np.asarray(res.train_loss), "test_acc": acc, "seconds": res.wall_time}


def rel_error(pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    """``|pred − real| / real`` elementwise (inf where the real run diverged)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(pred - real) / np.abs(real)
    return np.where(np.isfinite(real), err, np.inf)


def break_step(err: np.ndarray, threshold: float = BREAK_THRESHOLD) -> int | None:
    """First step with relative error above ``threshold`` (``None``: never within the run)."""
    over = np.flatnonzero(err > threshold)
    return int(over[0]) if over.size else None


def _block_settings(s: Settings) -> dict:
    """The settings a block's numbers depend on besides those in its file name (task, regime, model, steps)."""
    return {"zoo": s.zoo, "subsets": list(s.subsets), "lr_fractions": list(s.lr_fractions),
            "test_per_class": s.test_per_class, "full_per_class": s.full_per_class, "seed": s.seed}


def _to_json(value):
    """``json.dumps`` default: an array as ``{"ndarray": [...], "dtype": "float32"}`` (floats round-trip exactly)."""
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a block")


def _from_json(obj: dict):
    return np.asarray(obj["ndarray"], dtype=obj["dtype"]) if obj.keys() == {"ndarray", "dtype"} else obj


def write_block(path: Path, s: Settings, runs: list, checks: list, seconds: float) -> None:
    """Store one (task, regime, model) block: its runs and checks, the settings and its compute time (seconds)."""
    block = {"version": BLOCK_VERSION, "settings": _block_settings(s), "seconds": seconds, "runs": runs,
             "checks": checks}
    write_atomic(path, json.dumps(block, default=_to_json))


def read_block(path: Path, s: Settings) -> dict:
    """A block written by :func:`write_block`, checked against ``s``.

    Raises:
      SystemExit: the file is not a complete block (truncated or edited), or was computed with other settings.
    """
    try:
        block = json.loads(path.read_text(), object_hook=_from_json)
        stored = block["settings"]
        if block["version"] != BLOCK_VERSION or not isinstance(block["runs"], list) or not isinstance(stored, dict):
            raise ValueError(f"version {block['version']}, or its runs or settings are not a list and a table")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"block {path} is damaged ({type(err).__name__}: {err}): delete it and rerun to "
                         "recompute it") from err
    wanted = _block_settings(s)
    diff = {key: (stored.get(key), value) for key, value in wanted.items() if stored.get(key) != value}
    if diff:
        raise SystemExit(f"block {path} was computed with other settings ("
                         + ", ".join(f"{key}: stored {a!r}, asked {b!r}" for key, (a, b) in diff.items())
                         + "): use another --cache-dir, or delete the block to recompute it")
    return block


def run_study(s: Settings, cache_dir: Path, cached_only: bool = False, log=print) -> dict:
    """Run every configuration of ``s``; each (task, regime, model) block is written to ``cache_dir`` when done
    (:func:`write_block`) and read back instead of rerun when already there (``cached_only``: skip the blocks not
    stored). A block being computed keeps its finished (subset, c) runs in ``<block>.partial``, rewritten after
    each run, so a block cut short resumes after its last finished run (its kernels are recomputed).
    Returns ``{"runs": [...], "checks": [...], "skipped": [...], "reused": [...], "seconds": float}`` (skipped:
    blocks not run; reused: blocks read back; seconds: the compute time of every block reported, including the
    reused ones').

    Raises:
      SystemExit: a model is not in the zoo, or a stored block is damaged or from other settings
        (:func:`read_block`).
    """
    runs, checks, skipped, reused, seconds = [], [], [], [], 0.0
    entries = {entry.name: entry for entry in load_zoo(s.zoo)}
    unknown = [name for name in s.models if name not in entries]
    if unknown:
        raise SystemExit(f"models {unknown} are not in zoo {s.zoo!r}; it has {', '.join(entries)}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    for task_name in s.tasks:
        for regime in s.regimes:
            task = load_task(f"{task_name}:{regime}", seed=s.seed)
            idx = scoring_subset(task.test.y, per_class=s.test_per_class, seed=s.seed)
            train = task.scoring_set(per_class=s.full_per_class, seed=s.seed) if regime == "full" else task.train
            y, y_test = train.y, task.test.y[idx]
            for model_name in s.models:
                block = cache_dir / (f"{task_name}_{regime}_{model_name.replace('/', '_')}_{s.steps}"
                                     f"_v{BLOCK_VERSION}.json")
                if block.exists():
                    stored = read_block(block, s)
                    reused.append(f"{task_name}:{regime} {model_name}")
                    runs += stored["runs"]
                    checks += stored["checks"]
                    seconds += stored["seconds"]
                    continue
                if cached_only:
                    skipped.append(f"{task_name}:{regime} {model_name}")
                    continue
                partial = block.with_name(block.name + ".partial")  # the runs finished so far, if cut short
                done = read_block(partial, s) if partial.exists() else {"runs": [], "checks": [], "seconds": 0.0}
                if done["runs"]:
                    log(f"{task_name}:{regime} {model_name}: resuming after {len(done['runs'])} finished runs "
                        f"({partial})")
                n_runs, n_checks, t_block = len(runs), len(checks), time.perf_counter() - done["seconds"]
                runs += done["runs"]
                checks += done["checks"]
                finished = {(run["subset"], run["c"]) for run in done["runs"]}
                entry = entries[model_name]
                x, x_test = entry.preprocessing.prepare(train.x), entry.preprocessing.prepare(task.test.x[idx])
                data = (x, y, x_test, y_test)
                key = jax.random.fold_in(jax.random.PRNGKey(s.seed), 0)
                model, variables = models.replace_head(*entry.load(), task.num_classes, key, init="lecun_normal")
                filters = models.param_subsets(model, variables["params"])
                t0 = time.perf_counter()
                kernels = subset_kernels(model, variables, x, x_test, {k: filters[k] for k in s.subsets})
                apply_fn, params = models.logits_fn(model, variables)
                f0_train = np.asarray(apply_fn(params, x), np.float64)
                f0_test = np.asarray(apply_fn(params, x_test), np.float64)
                log(f"[{seconds + time.perf_counter() - t_block:6.0f}s] {task_name}:{regime} {model_name}: kernels "
                    f"{time.perf_counter() - t0:.1f}s")
                for subset in s.subsets:
                    k_tt, k_st = kernels[subset]
                    lam_max = float(np.linalg.eigvalsh(k_tt)[-1])
                    for c in s.lr_fractions:
                        if (subset, c) in finished:
                            continue
                        lr = c * len(y) / lam_max
                        pred = {"mse": closed_form(k_tt, k_st, y, f0_train, f0_test, y_test, lr, s.steps),
                                "ce": ce_prediction(k_tt, k_st, y, f0_train, f0_test, y_test, lr, s.steps)}
                        common = dict(model=model_name, task=task_name, regime=regime, subset=subset, c=c, lr=lr,
                                      n=len(y))
                        real = {loss: gd_run(model, variables, data, filters[subset], mode="subset", loss=loss,
                                             lr=lr, steps=s.steps) for loss in LOSSES}
                        runs.append({**common, "pred": pred, "real": real})
                        err = {loss: rel_error(pred[loss]["loss"], real[loss]["loss"])[-1] for loss in LOSSES}
                        log(f"    {subset:10s} c={c:g} lr={lr:.4g}: rel. loss error end mse {err['mse']:.3f} / ce "
                            f"{err['ce']:.3f}; acc lin/real mse {pred['mse']['test_acc'][-1]:.3f}/"
                            f"{real['mse']['test_acc'][-1]:.3f} ce {pred['ce']['test_acc'][-1]:.3f}/"
                            f"{real['ce']['test_acc'][-1]:.3f}")
                        if model_name == s.models[0] and task_name == s.tasks[0] and c == s.lr_fractions[0]:
                            lin = {loss: gd_run(model, variables, data, filters[subset], mode="linearized",
                                                loss=loss, lr=lr, steps=s.steps) for loss in LOSSES}
                            checks.append({**common, "pred": pred, "linearized": lin})
                        write_block(partial, s, runs[n_runs:], checks[n_checks:], time.perf_counter() - t_block)
                elapsed = time.perf_counter() - t_block
                write_block(block, s, runs[n_runs:], checks[n_checks:], elapsed)
                partial.unlink(missing_ok=True)
                seconds += elapsed
    return {"runs": runs, "checks": checks, "skipped": skipped, "reused": reused, "seconds": seconds}


# --------------------------------------------------------------------------------------------- report


def _fmt_step(k) -> str:
    return "never" if k is None else str(k)


def _regime_label(regime: str, s: Settings) -> str:
    return f"full (≤{s.full_per_class}/class)" if regime == "full" else regime


def _spearman(pred, real) -> float:
    """Spearman's ρ, NaN for fewer than 3 candidates or a constant column."""
    ok = len(pred) > 2 and np.ptp(pred) > 0 and np.ptp(real) > 0
    return float(spearmanr(pred, real).statistic) if ok else float("nan")


def _loss_metrics(pred: dict, real: dict) -> dict:
    """One loss's comparison of a linearized prediction with the real run (training loss and test accuracy)."""
    err = rel_error(pred["loss"], real["loss"])
    drop = rel_error(pred["loss"][0] - pred["loss"][-1], real["loss"][0] - real["loss"][-1])
    return {"err": err, "err_end": float(err[-1]), "err_max": float(np.max(err)), "break": break_step(err),
            "drop_err_end": float(drop),
            "loss_real": float(real["loss"][-1]), "loss_lin": float(pred["loss"][-1]),
            "acc_lin": float(pred["test_acc"][-1]), "acc_real": float(real["test_acc"][-1]),
            "gap": np.abs(pred["test_acc"] - real["test_acc"])}


def summarize(study: dict, s: Settings) -> dict:
    """Per-run metrics for each loss, aggregates by (regime, subset), Spearman per (task, regime, c)."""
    rows = [{**{k: r[k] for k in ("model", "task", "regime", "subset", "c", "lr", "n")},
             **{loss: _loss_metrics(r["pred"][loss], r["real"][loss]) for loss in LOSSES}}
            for r in study["runs"]]
    groups = {}
    for row in rows:
        groups.setdefault((row["regime"], row["subset"]), []).append(row)
    agg = []
    for (regime, subset), g in groups.items():
        entry = {"regime": regime, "subset": subset, "runs": len(g)}
        for loss in LOSSES:
            breaks = [row[loss]["break"] for row in g if row[loss]["break"] is not None]
            entry[loss] = {"err_end_median": float(np.median([row[loss]["err_end"] for row in g])),
                           "err_end_max": float(np.max([row[loss]["err_end"] for row in g])),
                           "drop_err_median": float(np.median([row[loss]["drop_err_end"] for row in g])),
                           "broken": len(breaks), "break_median": float(np.median(breaks)) if breaks else None,
                           "gap": float(np.mean([row[loss]["gap"][-1] for row in g]))}
        agg.append(entry)
    ranks = []
    for task in s.tasks:
        for regime in s.regimes:
            for c in s.lr_fractions:
                g = [row for row in rows if (row["task"], row["regime"], row["c"]) == (task, regime, c)]
                if not g:
                    continue
                acc = {key: [row[loss][field] for row in g] for key, loss, field in
                       (("mse_lin", "mse", "acc_lin"), ("ce_lin", "ce", "acc_lin"),
                        ("mse_real", "mse", "acc_real"), ("ce_real", "ce", "acc_real"))}
                ranks.append({"task": task, "regime": regime, "c": c, "candidates": len(g),
                              "mse": _spearman(acc["mse_lin"], acc["mse_real"]),
                              "mse_vs_ce": _spearman(acc["mse_lin"], acc["ce_real"]),
                              "ce": _spearman(acc["ce_lin"], acc["ce_real"]),
                              "real_mse_vs_ce": _spearman(acc["mse_real"], acc["ce_real"])})
    tau = []
    for subset in s.subsets:
        for loss in LOSSES:
            for c in s.lr_fractions:
                g = [row[loss] for row in rows if (row["subset"], row["c"]) == (subset, c)]
                if g:
                    breaks = [c * m["break"] for m in g if m["break"] is not None]
                    tau.append({"subset": subset, "loss": loss, "c": c, "runs": len(g),
                                "max_err": {t: tau_max_error([m["err"] for m in g], c, t) for t in TAUS},
                                "broken": len(breaks), "tau_break": float(np.median(breaks)) if breaks else None})
    within = [{"subset": subset, "loss": loss,
               "within": {t: tau_within([(row[loss]["err"], row["c"]) for row in rows if row["subset"] == subset], t)
                          for t in TAUS}}
              for subset in s.subsets for loss in LOSSES if any(row["subset"] == subset for row in rows)]
    checks = [{**{k: ch[k] for k in ("model", "task", "regime", "subset", "c")},
               **{loss: {"loss_diff": float(np.max(rel_error(ch["pred"][loss]["loss"], ch["linearized"][loss]["loss"]))),
                         "acc_diff": float(np.max(np.abs(ch["pred"][loss]["test_acc"]
                                                         - ch["linearized"][loss]["test_acc"])))}
                  for loss in LOSSES}}
              for ch in study["checks"]]
    return {"rows": rows, "agg": agg, "ranks": ranks, "checks": checks, "tau": tau, "within": within}


def _last_step(tau: float, c: float) -> int:
    """The last step ``k`` with ``c·k <= τ`` (``τ = c·k``; 1e-9 absorbs the round-off of ``τ / c``)."""
    return int(np.floor(tau / c + 1e-9))


def tau_max_error(errors: list[np.ndarray], c: float, tau: float) -> float | None:
    """Largest relative loss error over the runs ``errors`` (each ``[steps]``, the error at step ``k``, i.e. at
    ``τ = c·k``) up to ``τ``; ``None`` where the runs stop before reaching ``τ``."""
    last = _last_step(tau, c)
    if last >= min(len(e) for e in errors):
        return None
    return float(max(np.max(e[: last + 1]) for e in errors))


def tau_within(runs: list[tuple[np.ndarray, float]], tau: float,
               threshold: float = BREAK_THRESHOLD) -> tuple[int, int]:
    """``(k, n)``: of the ``n`` runs ``(errors [steps], c)`` that reach ``τ`` (step ``⌊τ/c⌋`` exists), the ``k`` whose
    relative loss error stays at most ``threshold`` up to it."""
    reached = [e[: last + 1] for e, last in ((e, _last_step(tau, c)) for e, c in runs) if last < len(e)]
    return sum(bool(np.max(e) <= threshold) for e in reached), len(reached)


def plot(summary: dict, study: dict, s: Settings, out_dir: Path) -> list[str]:
    """Three figures: loss curves, relative error over steps (one row per loss), predicted vs real accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(s.subsets, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    names = []
    # 1. loss curves on the first task, last regime, largest lr fraction: one row per loss, one column per model
    regime, c = s.regimes[-1], s.lr_fractions[-1]
    fig, axes = plt.subplots(len(LOSSES), len(s.models), figsize=(4 * len(s.models), 3.0 * len(LOSSES)),
                             squeeze=False)
    for ax_row, loss in zip(axes, LOSSES):
        for ax, model_name in zip(ax_row, s.models):
            for r in study["runs"]:
                if (r["model"], r["task"], r["regime"], r["c"]) != (model_name, s.tasks[0], regime, c):
                    continue
                col = colors[r["subset"]]
                ax.plot(r["real"][loss]["loss"], color=col, label=f"{r['subset']} real")
                ax.plot(r["pred"][loss]["loss"], color=col, ls="--", label=f"{r['subset']} linearized")
            ax.set_yscale("log")
            ax.set_title(f"{model_name} ({loss.upper()})", fontsize=9)
            ax.set_xlabel("GD step")
        ax_row[0].set_ylabel("train MSE loss (mean ½‖r‖²)" if loss == "mse" else "train CE loss (mean)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{s.tasks[0]}:{_regime_label(regime, s)}, c = η·λmax/N = {c:g}: real (solid) vs linearized "
                 "(dashed)", fontsize=10)
    fig.tight_layout()
    names.append("approximation_error_curves.png")
    fig.savefig(out_dir / names[-1], dpi=90)
    plt.close(fig)
    # 2. relative loss error over steps, every run: one row per loss, one column per regime
    fig, axes = plt.subplots(len(LOSSES), len(s.regimes), figsize=(4.5 * len(s.regimes), 3.2 * len(LOSSES)),
                             squeeze=False)
    for ax_row, loss in zip(axes, LOSSES):
        for ax, regime in zip(ax_row, s.regimes):
            for row in summary["rows"]:
                if row["regime"] == regime:
                    ls = "-" if row["c"] == s.lr_fractions[-1] else ":"
                    ax.plot(np.maximum(row[loss]["err"], 1e-8), color=colors[row["subset"]], ls=ls, alpha=0.6,
                            lw=1)
            ax.axhline(BREAK_THRESHOLD, color="k", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(f"{loss.upper()}, {_regime_label(regime, s)} (solid: c={s.lr_fractions[-1]:g}, "
                         "dotted: smaller c)", fontsize=8)
            ax.set_xlabel("GD step")
        ax_row[0].set_ylabel(f"{loss.upper()}: |L_lin − L_real| / L_real")
    for subset, col in colors.items():
        if subset in s.subsets:
            axes[0][0].plot([], [], color=col, label=subset)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    names.append("approximation_error_relerr.png")
    fig.savefig(out_dir / names[-1], dpi=90)
    plt.close(fig)
    # 3. predicted vs real final test accuracy
    panels = (("mse", "mse", "MSE prediction vs real MSE"), ("mse", "ce", "MSE prediction vs real CE"),
              ("ce", "ce", "CE prediction vs real CE"))
    markers = dict(zip(s.regimes, ("x", "+", "o", "s")))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8))
    for ax, (pred_loss, real_loss, title) in zip(axes, panels):
        for row in summary["rows"]:
            ax.scatter(row[pred_loss]["acc_lin"], row[real_loss]["acc_real"], color=colors[row["subset"]], s=14,
                       marker=markers[row["regime"]])
        ax.plot([0, 1], [0, 1], color="k", lw=0.6)
        ax.set_xlabel(f"linearized ({pred_loss.upper()}): final test accuracy")
        ax.set_ylabel(f"real ({real_loss.upper()}): final test accuracy")
        ax.set_title(title + " (" + ", ".join(f"{m}: {r}" for r, m in markers.items() if r in s.regimes) + ")",
                     fontsize=8)
    fig.tight_layout()
    names.append("approximation_error_ranking.png")
    fig.savefig(out_dir / names[-1], dpi=90)
    plt.close(fig)
    return names


def write_markdown(summary: dict, study: dict, s: Settings, figures: list[str], out: Path, argv: list[str]) -> None:
    lines = [
        "# Approximation error: linearized fine-tuning (MSE closed form, CE iteration) vs real fine-tuning",
        "",
        f"Generated by `{' '.join(['python experiments/approximation_error.py', *argv])}` in "
        f"{study['seconds'] / 60:.1f} min of compute, summed over its (task, regime, model) blocks (each on 2 shared "
        "CPU cores)" + (f"; {len(study['reused'])} block(s) were computed in an earlier run and read back from "
                        "their stored files." if study["reused"] else "."),
        "",
        "## Setup",
        "",
        f"- Models (zoo `{s.zoo}`, each at its own input size and normalisation, with a fresh `lecun_normal` head "
        f"of one output per class, same key for all): {', '.join(f'`{m}`' for m in s.models)}.",
        f"- Tasks: {', '.join(f'`{t}`' for t in s.tasks)} in regimes "
        f"{', '.join(_regime_label(r, s) for r in s.regimes)} (seed {s.seed}); regime `full` is capped at "
        f"{s.full_per_class} training images per class (class-balanced, `Task.scoring_set`) so the untraced "
        f"kernels stay small (C classes: N = {s.full_per_class}·C, [N·O, N·O] = [{s.full_per_class}·C²]²); "
        f"test accuracy on "
        f"a class-balanced subset of the test split, {s.test_per_class} images per class.",
        f"- Parameter subsets (`linfit.models.param_subsets`): {', '.join(s.subsets)}.",
        "- Every run: full-batch gradient descent, no momentum, no weight decay, constant step, BatchNorm frozen "
        f"(evaluation mode), {s.steps} steps. Step size per (model, subset): η = c·N/λ_max(Θ) for c in "
        f"{', '.join(f'{c:g}' for c in s.lr_fractions)} (η/N is the step on the summed loss, so c < 2 is the "
        "stability limit of the linearized MSE model); the CE runs use the same η.",
        "- MSE prediction (a): `LinearizedDynamics(discrete=True, learning_rate=η/N)` on the exact untraced "
        "fine-tuning NTK Θ[(i,c),(j,c')] of the subset (flattened to [N·O, N·O]). CE prediction (a-CE): "
        "`linearized_ce_trajectory` on the same kernel, f_{k+1} = f_k − (η/N) Θ (softmax(f_k) − onehot) (GD on the "
        "linearized model, no closed form). Checks (b): `finetune(mode=\"linearized\")` with each loss. Real (c): "
        "`finetune` of the same subset with MSE and with cross-entropy.",
        "- Relative loss error = |L_lin(k) − L_real(k)| / L_real(k) of the mean training loss (MSE: ½‖f − onehot‖², "
        f"CE: cross-entropy; each prediction against the real run with its loss) at step k; break step = first k "
        f"with error > {BREAK_THRESHOLD:.0%}.",
    ]
    if study["skipped"]:
        lines.append(f"- NOT RUN (the study was cut short to fit its time budget): {'; '.join(study['skipped'])}.")
    lines += [
        "",
        "## Check: linearized prediction (a, a-CE) vs GD on the linearized model in parameter space (b)",
        "",
        "| model | task | regime | subset | c | MSE: max rel. loss diff | MSE: max test-acc diff | "
        "CE: max rel. loss diff | CE: max test-acc diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ch in summary["checks"]:
        lines.append(f"| {ch['model']} | {ch['task']} | {ch['regime']} | {ch['subset']} | {ch['c']:g} | "
                     + " | ".join(f"{ch[loss]['loss_diff']:.1e} | {ch[loss]['acc_diff']:.3f}" for loss in LOSSES)
                     + " |")
    lines += [
        "",
        "## Aggregate over models, tasks and step sizes",
        "",
        "Per loss: median and max relative loss error after the last step, median relative error of the loss "
        "DECREASE over the run |ΔL_lin − ΔL_real| / ΔL_real (ΔL = L(0) − L(end); it discounts the part of the loss "
        f"that no run removes), runs whose loss error ever exceeds {BREAK_THRESHOLD:.0%}, median break step, mean "
        "|test-accuracy gap| after the last step (linearized vs real with the same loss).",
        "",
        "| regime | subset | runs | "
        + " | ".join(f"{L}: med. err | {L}: max err | {L}: med. ΔL err | {L}: broken | {L}: med. break | "
                     f"{L}: acc gap" for L in ("MSE", "CE")) + " |",
        "|---|---|---|" + "---|" * 12,
    ]
    for a in summary["agg"]:
        cells = []
        for loss in LOSSES:
            m = a[loss]
            bm = "–" if m["break_median"] is None else f"{m['break_median']:.0f}"
            cells.append(f"{m['err_end_median']:.3f} | {m['err_end_max']:.3f} | {m['drop_err_median']:.3f} | "
                         f"{m['broken']}/{a['runs']} | {bm} | {m['gap']:.3f}")
        lines.append(f"| {_regime_label(a['regime'], s)} | {a['subset']} | {a['runs']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Where the linearization holds, in τ = η·t·λ_max/N",
        "",
        "τ = c·t is the dimensionless time of the kernel's fastest mode (η/N the step on the summed loss, t in GD "
        "steps). Per subset, loss and c: the largest relative training-loss error over all runs (models, tasks, "
        f"regimes) up to τ (– : the runs stop earlier), the runs whose error ever exceeds {BREAK_THRESHOLD:.0%} and "
        "the median τ at that break. If the error were a function of τ alone, the rows of one subset and loss "
        "would agree across c.",
        "",
        "| subset | loss | c | runs | " + " | ".join(f"max err, τ ≤ {t:g}" for t in TAUS)
        + " | broken | med. τ at break |",
        "|---|---|---|---|" + "---|" * (len(TAUS) + 2),
    ]
    for t in summary["tau"]:
        cells = " | ".join("–" if v is None else f"{v:.3f}" for v in t["max_err"].values())
        tb = "–" if t["tau_break"] is None else f"{t['tau_break']:.2g}"
        lines.append(f"| {t['subset']} | {t['loss'].upper()} | {t['c']:g} | {t['runs']} | {cells} | "
                     f"{t['broken']}/{t['runs']} | {tb} |")
    lines += [
        "",
        f"Runs within {BREAK_THRESHOLD:.0%} of real fine-tuning up to τ, every c together (τ absorbs c): k of the n "
        "runs that reach τ, with the 95 % Clopper-Pearson interval of that share (models, tasks, regimes and c "
        "counted as independent runs).",
        "",
        "| subset | loss | " + " | ".join(f"τ ≤ {t:g}" for t in TAUS) + " |",
        "|---|---|" + "---|" * len(TAUS),
    ]
    for w in summary["within"]:
        cells = []
        for k, n in w["within"].values():
            cells.append("–" if n == 0 else "{}/{} [{:.2f}, {:.2f}]".format(k, n, *share_interval(k, n)))
        lines.append(f"| {w['subset']} | {w['loss'].upper()} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Ranking: Spearman between linearized and real final test accuracy",
        "",
        "Over the (model, subset) candidates of each (task, regime, c) (NaN: fewer than 3 candidates or a constant "
        "column). Last column, for reference: how the two REAL fine-tunings (MSE, CE) rank the candidates against "
        "each other.",
        "",
        "| task | regime | c | candidates | MSE pred. vs real MSE | MSE pred. vs real CE | CE pred. vs real CE | "
        "real MSE vs real CE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["ranks"]:
        lines.append(f"| {r['task']} | {_regime_label(r['regime'], s)} | {r['c']:g} | {r['candidates']} | "
                     f"{r['mse']:.2f} | {r['mse_vs_ce']:.2f} | {r['ce']:.2f} | {r['real_mse_vs_ce']:.2f} |")
    lines += [
        "",
        "## Every run",
        "",
        "Per loss: the mean training loss after the last step (real / linearized), the relative error there, the "
        "break step, and the final test accuracy (linearized / real).",
        "",
        "| model | task | regime | subset | c | η | "
        + " | ".join(f"{L}: loss real | {L}: loss lin | {L}: rel. err | {L}: break | {L}: acc lin | {L}: acc real"
                     for L in ("MSE", "CE")) + " |",
        "|---|---|---|---|---|---|" + "---|" * 12,
    ]
    for r in summary["rows"]:
        cells = [f"{r[loss]['loss_real']:.4f} | {r[loss]['loss_lin']:.4f} | {r[loss]['err_end']:.3f} | "
                 f"{_fmt_step(r[loss]['break'])} | {r[loss]['acc_lin']:.3f} | {r[loss]['acc_real']:.3f}"
                 for loss in LOSSES]
        lines.append(f"| {r['model']} | {r['task']} | {r['regime']} | {r['subset']} | {r['c']:g} | {r['lr']:.3g} | "
                     + " | ".join(cells) + " |")
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", "## Findings (computed from the tables above)", ""] + findings(summary, s) + [""]
    reading = out.parent / READING
    if reading.exists():  # a hand-written interpretation, kept beside the generated report
        lines += [reading.read_text().rstrip(), ""]
    out.write_text("\n".join(lines))


def findings(summary: dict, s: Settings) -> list[str]:
    """The summary bullets, every number computed from ``summary``."""
    rows, out = summary["rows"], []
    if summary["checks"]:
        parts = [f"{loss.upper()} {max(ch[loss]['loss_diff'] for ch in summary['checks']):.1e} "
                 f"(test accuracy {max(ch[loss]['acc_diff'] for ch in summary['checks']):.3f})" for loss in LOSSES]
        out.append(f"- Check: GD on the linearized model in parameter space matches the prediction to a max "
                   f"relative loss difference of {' and '.join(parts)} over {len(summary['checks'])} runs each, so "
                   "the time axes line up.")
    for loss in LOSSES:
        for subset in s.subsets:
            for regime in s.regimes:
                g = [r[loss] for r in rows if (r["subset"], r["regime"]) == (subset, regime)]
                if not g:
                    continue
                ends = np.array([m["err_end"] for m in g])
                drops = np.array([m["drop_err_end"] for m in g])
                breaks = [m["break"] for m in g if m["break"] is not None]
                when = f", median break step {np.median(breaks):.0f}" if breaks else ""
                gaps = np.array([m["acc_lin"] - m["acc_real"] for m in g])
                out.append(f"- {loss.upper()}, `{subset}`, {_regime_label(regime, s)}: relative loss error after "
                           f"{s.steps} steps median {np.median(ends):.3f} (max {ends.max():.3f}), error of the loss "
                           f"decrease median {np.median(drops):.3f}; "
                           f"{len(breaks)}/{len(g)} runs exceed {BREAK_THRESHOLD:.0%}{when}. Final test accuracy, "
                           f"linearized minus real: {gaps.mean():+.3f} (mean |·| {np.abs(gaps).mean():.3f}).")
    for loss in LOSSES:
        for subset in s.subsets:
            g = [t for t in summary["tau"] if (t["subset"], t["loss"]) == (subset, loss)]
            within, end = [], "the longest run ends there"  # τ of TAUS up to which every run that reaches it holds
            for tau in TAUS:
                reached = [t["max_err"][tau] for t in g if t["max_err"][tau] is not None]
                if not reached:
                    break
                if max(reached) > BREAK_THRESHOLD:
                    end = f"some run passes {BREAK_THRESHOLD:.0%} before τ = {tau:g}"
                    break
                within.append(tau)
            else:
                end = "as far as the table reads"
            if within:
                (w,) = [w for w in summary["within"] if (w["subset"], w["loss"]) == (subset, loss)]
                k, n = w["within"][within[-1]]
                reach = "up to τ = η·t·λ_max/N = {:g} ({} runs reach it, 95 % interval of the share within {:.0%} " \
                        "there: [{:.2f}, {:.2f}]; {})".format(within[-1], n, BREAK_THRESHOLD, *share_interval(k, n), end)
            else:
                reach = f"not even up to τ = {TAUS[0]:g}"
            out.append(f"- {loss.upper()}, `{subset}`: every run within {BREAK_THRESHOLD:.0%} of real fine-tuning "
                       f"{reach}.")
    for key, what in (("mse", "MSE prediction vs real MSE"), ("mse_vs_ce", "MSE prediction vs real CE"),
                      ("ce", "CE prediction vs real CE"), ("real_mse_vs_ce", "real MSE vs real CE (reference)")):
        rho = np.array([r[key] for r in summary["ranks"]])
        rho = rho[np.isfinite(rho)]
        if rho.size:
            out.append(f"- Ranking of the (model, subset) candidates, {what}: Spearman mean {rho.mean():.2f} "
                       f"(min {rho.min():.2f}, max {rho.max():.2f}) over {rho.size} (task, regime, c) groups.")
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the study and write the report; returns ``summarize``'s dict (plus ``"study"``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test setting")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where the .md and .png files go")
    parser.add_argument("--steps", type=int, default=None, help="GD steps per run (default: the setting's)")
    parser.add_argument("--tasks", nargs="+", default=None, help="target tasks (default: the setting's)")
    parser.add_argument("--regimes", nargs="+", default=None, help="regimes (default: the setting's)")
    parser.add_argument("--zoo", default=None, help="embedded (default), imagenet or a zoo TOML file")
    parser.add_argument("--subsets", nargs="+", default=None, help="parameter subsets, nested (default: the setting's)")
    parser.add_argument("--lr-fractions", nargs="+", type=float, default=None,
                        help="c in η = c·N/λ_max (default: the setting's)")
    parser.add_argument("--test-per-class", type=int, default=None,
                        help="test images per class (default: the setting's)")
    parser.add_argument("--cached-only", action="store_true",
                        help="report only the blocks already stored (a cut-short study)")
    parser.add_argument("--models", nargs="+", default=None, help="zoo models (default: the setting's)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="store each (task, regime, model) block here and reuse stored ones on a rerun "
                             "(default: OUT_DIR/approximation_error_blocks)")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else Settings()
    overrides = {"zoo": args.zoo, "steps": args.steps, "test_per_class": args.test_per_class,
                 **{key: None if value is None else tuple(value) for key, value in
                    (("tasks", args.tasks), ("regimes", args.regimes), ("models", args.models),
                     ("subsets", args.subsets), ("lr_fractions", args.lr_fractions))}}
    s = dataclasses.replace(s, **{key: value for key, value in overrides.items() if value is not None})
    use_compile_cache()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    study = run_study(s, args.cache_dir or args.out_dir / "approximation_error_blocks", args.cached_only)
    summary = summarize(study, s)
    figures = plot(summary, study, s, args.out_dir)
    write_markdown(summary, study, s, figures, args.out_dir / "approximation_error.md", argv)
    print(f"done in {study['seconds'] / 60:.1f} min; wrote {args.out_dir / 'approximation_error.md'}")
    return {**summary, "study": study}


if __name__ == "__main__":
    main()
