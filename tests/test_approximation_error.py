"""Smoke test of ``experiments/approximation_error.py`` on a tiny setting, plus checks of its pieces against
independent computations (a brute-force ``jax.jacrev`` kernel, a numpy loop of gradient descent)."""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "approximation_error.py"
_spec = importlib.util.spec_from_file_location("approximation_error", _PATH)
ae = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ae  # dataclasses look their module up there
_spec.loader.exec_module(ae)


def test_closed_form_matches_numpy_gradient_descent():
    """(a) on a random linear model equals plain GD on the mean ½‖Jw + f0 − Y‖² loss, step by step."""
    rng = np.random.default_rng(0)
    n, m, o, p, steps, lr = 6, 5, 3, 40, 7, 0.05
    jac_train, jac_test = rng.normal(size=(n * o, p)), rng.normal(size=(m * o, p))
    f0_train, f0_test = rng.normal(size=(n, o)), rng.normal(size=(m, o))
    y_train, y_test = rng.integers(0, o, n), rng.integers(0, o, m)
    targets = np.eye(o)[y_train].reshape(-1)
    w = np.zeros(p)
    losses, accs = [], []
    for _ in range(steps):
        r = jac_train @ w + f0_train.reshape(-1) - targets
        losses.append(0.5 * np.sum(r**2) / n)
        w = w - lr * jac_train.T @ r / n
        logits = (jac_test @ w).reshape(m, o) + f0_test
        accs.append(np.mean(np.argmax(logits, -1) == y_test))
    out = ae.closed_form(jac_train @ jac_train.T, jac_test @ jac_train.T, y_train, f0_train, f0_test, y_test,
                         lr, steps)
    np.testing.assert_allclose(out["loss"], losses, rtol=1e-9)
    np.testing.assert_array_equal(out["test_acc"], accs)


def test_ce_prediction_matches_numpy_gradient_descent():
    """(a-CE) on a random linear model equals plain GD on its mean softmax cross-entropy, step by step."""
    rng = np.random.default_rng(1)
    n, m, o, p, steps, lr = 6, 5, 3, 40, 7, 0.5
    jac_train, jac_test = rng.normal(size=(n * o, p)) / 4, rng.normal(size=(m * o, p)) / 4
    f0_train, f0_test = rng.normal(size=(n, o)), rng.normal(size=(m, o))
    y_train, y_test = rng.integers(0, o, n), rng.integers(0, o, m)
    w = np.zeros(p)
    losses, accs = [], []
    for _ in range(steps):
        logits = (jac_train @ w).reshape(n, o) + f0_train
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        losses.append(-np.mean(np.log(prob[np.arange(n), y_train])))
        w = w - lr * jac_train.T @ (prob - np.eye(o)[y_train]).reshape(-1) / n
        accs.append(np.mean(np.argmax((jac_test @ w).reshape(m, o) + f0_test, -1) == y_test))
    out = ae.ce_prediction(jac_train @ jac_train.T, jac_test @ jac_train.T, y_train, f0_train, f0_test, y_test,
                           lr, steps)
    assert losses[-1] < 0.8 * losses[0]  # the run moved
    np.testing.assert_allclose(out["loss"], losses, rtol=1e-9)
    np.testing.assert_array_equal(out["test_acc"], accs)


def test_subset_kernels_match_brute_force_jacobian():
    """The nested-subset kernels equal J Jᵀ from a whole-batch ``jax.jacrev`` of the logits."""
    from linfit import models
    from linfit.tree import split_params

    model = models.create("small_cnn", num_classes=3)
    variables = models.init(model, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    x = jax.random.normal(jax.random.PRNGKey(1), (13, 8, 8, 1))
    filters = models.param_subsets(model, variables["params"])
    subsets = {k: filters[k] for k in ("head", "last_block", "all")}
    kernels = ae.subset_kernels(model, variables, x[:6], x[6:], subsets)
    apply_fn, params = models.logits_fn(model, variables)
    for name, params_filter in subsets.items():
        sel, merge = split_params(params, params_filter)
        jac = jax.jacrev(lambda s, xb: apply_fn(merge(s), xb))
        rows = [np.concatenate([np.asarray(leaf).reshape(leaf.shape[0] * leaf.shape[1], -1)
                                for leaf in jax.tree.leaves(jac(sel, xb))], axis=1)
                for xb in (x[:6], x[6:])]
        k_tt, k_st = kernels[name]
        scale = np.max(np.abs(k_tt))
        np.testing.assert_allclose(k_tt, rows[0] @ rows[0].T, atol=1e-5 * scale)
        np.testing.assert_allclose(k_st, rows[1] @ rows[0].T, atol=1e-5 * scale)


def test_break_step_and_rel_error():
    err = ae.rel_error(np.array([1.0, 1.05, 1.3]), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(err, [0.0, 0.05, 0.3])
    assert ae.break_step(err) == 2
    assert ae.break_step(err[:2]) is None


def test_tau_max_error_reads_steps_up_to_tau_over_c():
    """Step k is at τ = c·k: with c = 0.5, τ ≤ 1 covers steps 0-2; a τ past the shortest run's last step is None."""
    errors = [np.array([0.0, 0.01, 0.02, 0.5, 0.6]), np.array([0.0, 0.03, 0.01, 0.02])]
    assert ae.tau_max_error(errors, 0.5, 1.0) == 0.03      # steps 0, 1, 2 of both runs
    assert ae.tau_max_error(errors, 0.5, 1.5) == 0.5       # steps 0-3: the first run's step 3
    assert ae.tau_max_error(errors, 0.5, 2.0) is None      # step 4 is past the second run
    assert ae.tau_max_error(errors, 1.0, 0.5) == 0.0       # step 0 only


def test_quick_study_runs_and_writes_report(tmp_path):
    out = ae.main(["--quick", "--steps", "2", "--models", "resnet8/generalist", "--regimes", "full",
                   "--out-dir", str(tmp_path)])
    text = (tmp_path / "approximation_error.md").read_text()
    assert "## Ranking" in text and "## Check" in text and "full (≤5/class)" in text and "τ = η·t·λ_max/N" in text
    assert {(t["subset"], t["loss"]) for t in out["tau"]} == {(sub, loss) for sub in ("head", "all")
                                                              for loss in ("mse", "ce")}
    assert all((tmp_path / name).stat().st_size > 0 for name in
               ("approximation_error_curves.png", "approximation_error_relerr.png", "approximation_error_ranking.png"))
    # regime "full" is capped class-balanced: 5 per class x 10 classes
    assert {r["n"] for r in out["rows"] if r["regime"] == "full"} == {50}
    # (b) GD on the linearized model in parameter space reproduces the predictions (a) and (a-CE)
    assert out["checks"] and all(ch[loss]["loss_diff"] < 1e-4 and ch[loss]["acc_diff"] < 1e-6
                                 for ch in out["checks"] for loss in ("mse", "ce"))
    # fine-tuning of the head alone is linear in the trained weights: both predictions are exact there
    head = [r for r in out["rows"] if r["subset"] == "head"]
    assert head and all(r[loss]["err_end"] < 1e-4 and r[loss]["drop_err_end"] < 1e-3
                        for r in head for loss in ("mse", "ce"))
    # every block was stored as it finished; a rerun reads them back and writes the same report
    blocks = sorted((tmp_path / "approximation_error_blocks").glob("*.json"))
    assert len(blocks) == 1
    again = ae.main(["--quick", "--steps", "2", "--models", "resnet8/generalist", "--regimes", "full",
                     "--out-dir", str(tmp_path / "again"), "--cache-dir", str(blocks[0].parent), "--cached-only"])
    body = lambda path: path.read_text().split("\n")[3:]  # below the "Generated by <command>" line
    assert body(tmp_path / "again" / "approximation_error.md") == body(tmp_path / "approximation_error.md")
    assert again["study"]["reused"] and not again["study"]["skipped"]
    assert again["study"]["seconds"] == pytest.approx(out["study"]["seconds"])
    # a block from other settings is refused, not mixed in
    with pytest.raises(SystemExit, match="other settings.*test_per_class: stored 5, asked 3"):
        ae.main(["--quick", "--steps", "2", "--models", "resnet8/generalist", "--regimes", "full", "--test-per-class",
                 "3", "--out-dir", str(tmp_path / "other"), "--cache-dir", str(blocks[0].parent)])
    # a truncated block is detected, not reported
    blocks[0].write_bytes(blocks[0].read_bytes()[:-40])
    with pytest.raises(SystemExit, match="damaged.*delete it"):
        ae.main(["--quick", "--steps", "2", "--models", "resnet8/generalist", "--regimes", "full",
                 "--out-dir", str(tmp_path / "again"), "--cache-dir", str(blocks[0].parent), "--cached-only"])


def test_block_cut_short_resumes_after_its_last_finished_run(tmp_path, monkeypatch):
    """A block interrupted inside its runs keeps the finished ones in ``<block>.partial``; the rerun computes only
    the rest, and the block it writes holds what an uninterrupted run computes."""
    argv = ["--quick", "--steps", "2", "--models", "resnet8/generalist", "--regimes", "full"]
    whole = ae.main([*argv, "--out-dir", str(tmp_path / "whole")])
    real_gd_run, calls = ae.gd_run, []

    def gd_run(*args, **kwargs):  # 4 calls per (subset, c) run: (c)-MSE, (c)-CE and the checks (b), (b)-CE
        calls.append(kwargs["mode"])
        if len(calls) == 5:
            raise KeyboardInterrupt  # inside the second run: the first is finished
        return real_gd_run(*args, **kwargs)

    monkeypatch.setattr(ae, "gd_run", gd_run)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        ae.main([*argv, "--out-dir", str(cut)])
    blocks = cut / "approximation_error_blocks"
    assert not list(blocks.glob("*.json"))
    partial, = blocks.glob("*.json.partial")
    assert [run["subset"] for run in ae.read_block(partial, ae.QUICK)["runs"]] == ["head"]
    calls.clear()
    resumed = ae.main([*argv, "--out-dir", str(cut)])
    assert len(calls) == 4 and not partial.exists()  # only the second run was computed
    body = lambda path: path.read_text().split("\n")[3:]
    assert body(cut / "approximation_error.md") == body(tmp_path / "whole" / "approximation_error.md")
    assert [r["subset"] for r in resumed["rows"]] == [r["subset"] for r in whole["rows"]]


def test_runs_within_the_threshold_up_to_tau():
    runs = [(np.array([0.0, 0.02, 0.03, 0.5]), 0.5), (np.array([0.01, 0.2]), 1.0), (np.array([0.0] * 10), 0.25)]
    assert ae.tau_within(runs, 0.5) == (3, 3)   # steps 0-1, 0, 0-2: all ≤ 0.1
    assert ae.tau_within(runs, 1.0) == (2, 3)   # the second run's step 1 is 0.2
    assert ae.tau_within(runs, 1.5) == (1, 3)   # the first run passes 0.1 at step 3
    assert ae.tau_within(runs, 2.0) == (1, 1)   # the first two runs stop before τ = 2
    assert ae.tau_within(runs, 5.0) == (0, 0)


def _stored_command(report: Path) -> tuple[list[str], Path, Path]:
    """``(argv, out_dir, blocks)`` of the command a report names in its first lines (its arguments; the folder it
    was written to and the folder of blocks it read, both absolute)."""
    import shlex

    argv = shlex.split(report.read_text().split("`")[1])[2:]  # drop "python experiments/approximation_error.py"
    value = lambda flag, default: Path(argv[argv.index(flag) + 1]) if flag in argv else default
    root = _PATH.parents[1]
    out_dir = root / value("--out-dir", Path("experiments"))
    return argv, out_dir.resolve(), (root / value("--cache-dir", out_dir / "approximation_error_blocks")).resolve()


_FROM_BLOCKS = [md for md in sorted(_PATH.parent.glob("**/approximation_error.md"))
                if _stored_command(md)[2] == (md.parent / "approximation_error_blocks").resolve()]


@pytest.mark.parametrize("report", _FROM_BLOCKS, ids=lambda md: md.parent.name)
def test_committed_report_regenerates_from_its_committed_blocks(report, tmp_path):
    """A committed study report that names its folder's blocks is what they give: rerun its command reading every
    block back, into a temporary folder, and compare everything below the command line. This guards the commit
    (a stale report, a missing or damaged block), not the arithmetic, which the tests above check."""
    argv, out_dir, blocks = _stored_command(report)
    assert out_dir == report.parent.resolve(), f"{report} names another output folder, {out_dir}"
    if "--out-dir" in argv:
        i = argv.index("--out-dir")
        argv = argv[:i] + argv[i + 2:]
    if (report.parent / ae.READING).exists():
        (tmp_path / ae.READING).write_text((report.parent / ae.READING).read_text())
    out = ae.main([*argv, "--cache-dir", str(blocks), "--cached-only", "--out-dir", str(tmp_path)])
    assert out["study"]["reused"] and not out["study"]["skipped"], f"blocks missing: {out['study']['skipped']}"
    regenerated = (tmp_path / "approximation_error.md").read_text().split("\n")[3:]
    assert regenerated == report.read_text().split("\n")[3:]
