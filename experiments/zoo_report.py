"""The zoo report: source accuracies of the embedded zoo (the paper's Table 1) and the 20-shot fine-tuned test
accuracy of every zoo model on every target task, with the winner per task.

Protocol (CPU-sized version of Deshpande et al. 2021, §5.5):

* task ``<target>:20shot`` (``linfit.data.load_task``, seed 0); the test split is the full test split;
* ``FinetuneConfig.paper`` (new ``lecun_normal`` head, every parameter trained, SGD-Nesterov 0.9, weight decay
  1e-4, BatchNorm in train mode) shortened to ``--epochs`` epochs (default 5) with batch 16 and the learning
  rate ×0.1 after 3/4 of the epochs;
* learning rate chosen on validation: for each (architecture, task), ``select_learning_rate`` trains the
  architecture's generalist once per η in ``LRS`` on 80 % of the 20-shot training set and picks η by accuracy
  on the other 20 %; every model of that architecture is then fine-tuned on the whole 20-shot set with it;
* fine-tuning time per (model, task) is ``FinetuneResult.wall_time`` (JAX's persistent compilation cache is
  on, so a compiled step is reused across models of one architecture and head size).

Results are cached in ``experiments/zoo_report.json`` (``zoo_report_<arch>.json`` with ``--arch``; a rerun skips
finished pairs, and the markdown merges all of them); ``--budget-minutes``
stops starting new tasks when exceeded and the report says which tasks were covered.

Usage::

    python experiments/zoo_report.py                     # the full grid (42 models x 11 target tasks)
    python experiments/zoo_report.py --budget-minutes 30
    python experiments/zoo_report.py --quick             # smoke test: 2 tasks, 3 models, 1 epoch, separate files
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from linfit import zoo
from linfit._io import write_atomic
from linfit.cli import use_compile_cache
from linfit.data import embedded, load_task
from linfit.finetune import FinetuneConfig, finetune, select_learning_rate

HERE = Path(__file__).resolve().parent
LRS = (0.05, 0.02, 0.005)
_PREFERRED = ("digits_sk", "latin_lower", "fashion_rot", "braille", "hebrew", "font_digits", "cyrillic_lower",
              "box", "fashion_edges", "armenian", "georgian")
#: The target tasks in the order they are run (varied first, so a budget-limited run still covers varied targets).
TASK_ORDER = tuple([t for t in _PREFERRED if t in embedded.target_domains()]
                   + [t for t in embedded.target_domains() if t not in _PREFERRED])


def finetune_config(epochs: int) -> FinetuneConfig:
    return FinetuneConfig.paper(epochs=epochs, batch_size=16, milestones=(max(1, (3 * epochs) // 4),),
                                eval_every_epoch=False, seed=0)


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"lr": {}, "runs": {}}


def _save(path: Path, results: dict) -> None:
    write_atomic(path, json.dumps(results, indent=1) + "\n")


def _merge(results: list[dict]) -> dict:
    """One results dict from several (the runs and learning-rate choices of separate processes)."""
    merged = {"lr": {}, "runs": {}}
    for r in results:
        merged["config"] = r["config"]
        merged["lr"].update(r["lr"])
        merged["runs"].update(r["runs"])
    return merged


def run_grid(models: list[str], tasks: list[str], epochs: int, budget_s: float, path: Path) -> dict:
    """Fine-tune every model on every task (resumable through ``path``); returns the results dict."""
    results = _load(path)
    results["config"] = {"epochs": epochs, "batch_size": 16, "lrs": list(LRS), "regime": "20shot", "seed": 0,
                         "finetune_config": {k: str(v) for k, v in vars(finetune_config(epochs)).items()}}
    start = time.perf_counter()
    for target in tasks:
        if time.perf_counter() - start > budget_s:
            print(f"budget exhausted; not starting {target}")
            break
        task = load_task(f"{target}:20shot", seed=0)
        for arch in sorted({zoo.load(m).architecture for m in models}):
            key = f"{arch}|{target}"
            if key not in results["lr"]:
                gen = zoo.load(f"{arch}/generalist")
                search = select_learning_rate(gen.model, gen.variables, task.train.x, task.train.y,
                                              config=finetune_config(epochs), lrs=LRS, num_classes=task.num_classes)
                results["lr"][key] = {"chosen": search.chosen_lr, "val_accuracy": search.val_accuracy.tolist()}
                _save(path, results)
        for name in models:
            key = f"{name}|{target}"
            if key in results["runs"]:
                continue
            m = zoo.load(name)
            lr = results["lr"][f"{m.architecture}|{target}"]["chosen"]
            res = finetune(m.model, m.variables, task.train.x, task.train.y,
                           config=finetune_config(epochs).replace(learning_rate=lr), x_test=task.test.x,
                           y_test=task.test.y, num_classes=task.num_classes)
            results["runs"][key] = {"test_accuracy": float(res.test_accuracy[-1]), "lr": lr,
                                    "seconds": res.wall_time, "diverged": res.diverged}
            print(f"{target:15s} {name:34s} acc={res.test_accuracy[-1]:.3f} lr={lr:g} {res.wall_time:.1f}s",
                  flush=True)
            _save(path, results)
    return results


def _pct(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def source_table(manifest: dict) -> list[str]:
    """Table 1: rows = architecture × initialisation, columns = source domains (top-1 test %)."""
    domains = embedded.source_domains()
    rows: dict[str, dict[str, float]] = {}
    labels = {"generalist": "generalist (union head)", "scratch": "× scratch", "from-generalist": "✓ from generalist",
              "multibn": "multi-BN candidate"}
    for m in manifest["models"]:
        row = f"{m['arch']} {labels[m['kind']]}"
        if m["kind"] == "generalist":
            rows[row] = {**m["domain_accuracy"], "union": m["source_accuracy"]}
        else:
            rows.setdefault(row, {})[m["domain"]] = m["source_accuracy"]
    out = ["| model | " + " | ".join(domains) + " | union |", "|---" * (len(domains) + 2) + "|"]
    for row, acc in rows.items():
        out.append(f"| {row} | " + " | ".join(_pct(acc.get(d)) for d in domains) + f" | {_pct(acc.get('union'))} |")
    return out


def write_report(results: dict, manifest: dict, models: list[str], path: Path, note: str) -> None:
    runs = results["runs"]
    tasks = [t for t in TASK_ORDER if any(f"{m}|{t}" in runs for m in models)]
    complete = [t for t in tasks if all(f"{m}|{t}" in runs for m in models)]
    acc = {(m, t): runs[f"{m}|{t}"]["test_accuracy"] for m in models for t in tasks if f"{m}|{t}" in runs}
    best = {t: max(np.nan_to_num(acc[(m, t)], nan=-1.0) for m in models if (m, t) in acc) for t in tasks}
    top = {t: [m for m in models if (m, t) in acc and acc[(m, t)] == best[t]] for t in tasks}  # exact ties
    winners = {t: top[t][0] for t in tasks}
    cfg = results["config"]
    lines = ["# Zoo report", "", "Generated by `experiments/zoo_report.py`" + (f" ({note})" if note else "") + ".", "",
             "## The zoo", "",
             f"{len(manifest['models'])} models; recipe: {json.dumps(manifest['train_config'])}; build seed "
             f"{manifest['seed']}; weights stored as {manifest['store_dtype']}. Architectures: "
             + "; ".join(f"`{k}` = `{v['base']}` {json.dumps(v['kwargs'])}" for k, v in manifest["architectures"].items())
             + ".", "",
             f"Total training time of the build: {manifest['build_seconds'] / 60:.1f} min (2 shared CPU cores).", "",
             "### Source top-1 test accuracy (%), as the paper's Table 1", "",
             ("The generalist has one head over all 222 source classes; its per-domain accuracy is the argmax over "
              "all of them. Experts are evaluated on their own domain's test split."), "",
             *source_table(manifest), "",
             "### Training time per model (s)", "",
             "| model | seconds | model | seconds |", "|---|---|---|---|"]
    ms = manifest["models"]
    half = (len(ms) + 1) // 2
    for a, b in zip(ms[:half], ms[half:] + [None] * (2 * half - len(ms)), strict=True):
        right = f"{b['name']} | {b['train_seconds']:.1f}" if b else " | "
        lines.append(f"| {a['name']} | {a['train_seconds']:.1f} | {right} |")
    lines += ["", "Multi-BN candidates share one training run; each lists a 1/8 share of it.", "",
              "## 20-shot fine-tuning", "",
              (f"Protocol: `FinetuneConfig.paper` with {cfg['epochs']} epochs, batch {cfg['batch_size']}, lr ×0.1 "
               f"after 3/4 of the epochs, new head, every parameter trained; η ∈ {tuple(cfg['lrs'])} chosen per "
               "(architecture, task) on a stratified 20 % validation split of the 20-shot training set with the "
               "architecture's generalist, then every model of that architecture trained on the whole 20-shot set; "
               "test = full test split; one seed (0)."), ""]
    missing = [t for t in TASK_ORDER if t not in complete]
    if missing:
        lines += [(f"**Subset:** the grid covers {len(complete)} of {len(TASK_ORDER)} target tasks completely "
                   f"({', '.join(complete) or 'none'}); not run{' or partial' if set(tasks) - set(complete) else ''}: "
                   f"{', '.join(missing)} (CPU time budget)."), ""]
    lines += ["### Test accuracy (%) per model and task (winner in bold)", "",
              "| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for m in models:
        cells = []
        for t in tasks:
            v = acc.get((m, t))
            cells.append("" if v is None else (f"**{_pct(v)}**" if m in top[t] else _pct(v)))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "### Winner per task", "",
              "| task | winner (ties: first in zoo order) | accuracy (%) | tied | runner-up | η (resnet8 / densenet) |",
              "|---|---|---|---|---|---|"]
    for t in tasks:
        ranked = sorted((m for m in models if (m, t) in acc and m not in top[t]), key=lambda m: -acc[(m, t)])
        lrs = " / ".join(f"{results['lr'].get(f'{a}|{t}', {}).get('chosen', '–')}" for a in ("resnet8", "densenet"))
        second = f"{ranked[0]} ({_pct(acc[(ranked[0], t)])})" if ranked else "–"
        lines.append(f"| {t} | {winners[t]} | {_pct(best[t])} | {', '.join(top[t][1:]) or '–'} | {second} | {lrs} |")
    always = set.intersection(*(set(top[t]) for t in complete)) if len(complete) > 1 else set()
    lines.append("")
    if always:
        lines.append(f"**WARNING: ONE MODEL WINS EVERY TASK ({', '.join(sorted(always))}).** Model selection on this "
                     "zoo is then trivial; the zoo needs more diverse experts.")
    else:
        distinct = sorted(set(winners.values()))
        lines.append(f"No model is a (possibly tied) winner on every task: {len(distinct)} distinct winners over "
                     f"{len(tasks)} tasks ({', '.join(distinct)}).")
    lines += ["", ("Caveat: one fine-tuning seed and test sets of 450–500 images, so the binomial standard error of an "
                   "accuracy near 90 % is about 1.4 points; winner and runner-up often differ by less than that.")]
    if complete:
        lines += ["", "### Mean test accuracy (%) by model family over the completed tasks", "",
                  "| family | " + " | ".join(complete) + " | mean |", "|---" * (len(complete) + 2) + "|"]
    for arch in zoo.ARCHITECTURES:
        for kind in zoo.KINDS:
            fam = [m for m in models if m.startswith(f"{arch}/") and zoo.spec.entry(m).kind == kind]
            if fam and complete:
                per_task = [np.mean([acc[(m, t)] for m in fam]) for t in complete]
                lines.append(f"| {arch} {kind} ({len(fam)}) | " + " | ".join(_pct(v) for v in per_task)
                             + f" | {_pct(np.mean(per_task))} |")
    secs = {(m, t): runs[f"{m}|{t}"]["seconds"] for m, t in acc}
    lines += ["", "### Fine-tuning time (s per model-task run)", "",
              f"Total over {len(secs)} runs: {sum(secs.values()) / 60:.1f} min; mean {np.mean(list(secs.values())):.1f} s. "
              "Mean per task: " + ", ".join(f"{t} {np.mean([s for (m, u), s in secs.items() if u == t]):.1f}"
                                         for t in tasks) + ".", "",
              "| model | mean s | min s | max s |", "|---|---|---|---|"]
    for m in models:
        s = [v for (mm, _), v in secs.items() if mm == m]
        if s:
            lines.append(f"| {m} | {np.mean(s):.1f} | {np.min(s):.1f} | {np.max(s):.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 tasks, 3 models, 1 epoch")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--arch", default=None, help="fine-tune only this architecture's models (resnet8, densenet)")
    parser.add_argument("--budget-minutes", type=float, default=float("inf"))
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from the cached results")
    args = parser.parse_args(argv)
    use_compile_cache()
    models = zoo.names()
    tasks = list(args.tasks or TASK_ORDER)
    run_models = [m for m in models if args.arch is None or m.startswith(f"{args.arch}/")]
    epochs, stem, note = args.epochs, "zoo_report", ""
    if args.quick:
        models, tasks, epochs, stem, note = models[:2] + models[-1:], tasks[:2], 1, "zoo_report_quick", "quick smoke run"
        run_models = models
    md_path = HERE / f"{stem}.md"
    # one results file per --arch, so the architectures can run as separate processes
    json_paths = [HERE / f"{stem}.json"] + [HERE / f"{stem}_{a}.json" for a in zoo.ARCHITECTURES]
    if not args.report_only:
        run_grid(run_models, tasks, epochs, 60 * args.budget_minutes,
                 HERE / (f"{stem}_{args.arch}.json" if args.arch else f"{stem}.json"))
    write_report(_merge([_load(p) for p in json_paths if p.exists()]), zoo.manifest(), models, md_path, note)
    print(f"wrote {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
