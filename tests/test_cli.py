"""The command line as a user meets it: one-line errors before any work, descriptive listings, a fast --help,
the ranking report and the loss-curve plot (built from hand-made selections, checked against numpy)."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

import linfit.select as select_module
from linfit import scores, zoo
from linfit.cli import main
from linfit.data import embedded
from linfit.errors import ConfigError, UnknownNameError
from linfit.select import CURVE_TAU, CURVE_TIMES, Selection, format_profile, format_table, plot_curves
from linfit.scores.summaries import SUMMARY

TWO = ["resnet8/generalist", "resnet8/mnist/scratch"]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any model is scored (validation must come first)."""
    def work(*args, **kwargs):
        raise AssertionError("a model was scored before the arguments were checked")
    monkeypatch.setattr(select_module, "extract_inputs", work)


def _error(argv, capsys) -> str:
    """Run the CLI expecting a usage error: exit status 2, one stderr line 'linfit: error: ...', no traceback."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("linfit: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["select", "--models", *TWO, "nosuch"], "`linfit zoo list`"),
    (["select", "--models", "resnet8/mnst/scratch"], "did you mean 'resnet8/mnist/scratch'"),
    (["select", "--models", "resnet8"], "start with 'resnet8/', e.g. 'resnet8/"),
    (["select", "--scores", "lfc", "nosuch"], "`linfit scores`"),
    (["select", "--models", *TWO, TWO[0]], f"zoo models named more than once: {TWO[0]}"),
    (["select", "--task", "nosuch:5shot"], "unknown task dataset 'nosuch'"),
    (["select", "--task", "hebrew:500shot", "--models", *TWO], "use a smaller k"),
    (["select", "--task", "hebrew:5shots"], "unknown regime"),
    (["select", "--models", "--scores", "nosuch"], "--models: expected at least one argument"),
    (["select", "--head-samples", "-1", "--models", "nosuch"], "--head-samples: must be 0 or a positive"),
    (["select", "--per-class", "0", "--models", "nosuch"], "--per-class: must be a positive integer"),
    (["select", "--seed", "-1", "--models", *TWO], "--seed: must be 0 or a positive integer"),
    (["bench", "--db", "x.sqlite", "--finetune-seeds", "0", "-2"], "--finetune-seeds: must be 0 or a positive"),
    (["select", "--scores", "lfc", "leep", "lfc", "--models", *TWO], "scores named more than once: lfc"),
    (["select", "--scores", "lfc", "leep", "--plot", "x.png", "--models", *TWO], "--plot draws loss curves"),
    (["select", "--plot", "/nonexistent/dir/x.png", "--models", *TWO], "no folder '/nonexistent/dir' to save"),
    (["select", "--sed", "3", "--models", *TWO], "unrecognized arguments: --sed 3; did you mean --seed (for --sed)?"),
    (["bench", "--db", "x.sqlite", "--shrad", "1/2"], "did you mean --shard (for --shrad)?"),
    (["select", "--models", *TWO, "--debug"], "--debug goes before the command: `linfit --debug <command> ...`"),
    (["tasks", "--json"], "--json is an option of `linfit select` only"),  # was "did you mean --json"
    (["tasks", "--zoo", "imagenet"], "--zoo is an option of `linfit bench`, `linfit select`, `linfit zoo list` only"),
])
def test_select_errors_are_one_line_in_cli_terms_before_any_work(argv, expected, capsys, no_work):
    line = _error(argv, capsys)
    assert expected in line
    assert "linfit.zoo.names()" not in line and "allow_fewer" not in line and "linfit.scores.names()" not in line


def test_debug_shows_the_traceback_and_unexpected_errors_are_not_swallowed(monkeypatch, capsys, no_work):
    with pytest.raises(UnknownNameError):
        main(["--debug", "select", "--scores", "nosuch"])

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(select_module, "select", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["select", "--models", *TWO, "--scores", "lfc", "--quiet"])


def test_report_says_the_store_does_not_exist(tmp_path, capsys):
    db = tmp_path / "typo.sqlite"
    assert "no benchmark store at" in _error(["report", "--db", str(db), "--out", str(tmp_path / "out")], capsys)
    assert not db.exists()


def test_bench_names_tasks_like_select(monkeypatch, tmp_path, capsys):
    import linfit.bench.grid as grid

    configs = []
    monkeypatch.setattr(grid, "run_bench", lambda config, store, **kw: configs.append(config) or 0)
    db = str(tmp_path / "b.sqlite")
    assert main(["bench", "--db", db, "--models", *TWO, "--tasks", "font_digits:5shot", "hebrew:20shot",
                 "--scores", "lfc", "--quiet"]) == 0
    assert sorted((t, c.regimes) for c in configs for t in c.tasks) == [("font_digits", ("5shot",)),
                                                                         ("hebrew", ("20shot",))]
    assert all(c.learning_rates == (0.01, 0.005, 0.001) for c in configs)  # the paper's grid (§5.5)
    configs.clear()
    assert main(["bench", "--db", db, "--models", *TWO, "--learning-rates", "0.03", "0.09", "--quiet"]) == 0
    assert [c.learning_rates for c in configs] == [(0.03, 0.09)]
    assert "--learning-rates: must be a positive number" in _error(["bench", "--db", db, "--learning-rates", "0"],
                                                                   capsys)
    assert "unknown regime" in _error(["bench", "--db", db, "--tasks", "hebrew:5shots"], capsys)
    assert "'<dataset>:<regime>'" in _error(["bench", "--db", db, "--tasks", "hebrew"], capsys)
    assert "`linfit zoo list`" in _error(["bench", "--db", db, "--models", "nosuch"], capsys)
    assert "`linfit scores`" in _error(["bench", "--db", db, "--scores", "nosuch"], capsys)
    assert "--max-steps" in _error(["bench", "--db", db, "--max-steps", "0"], capsys)


def test_help_does_not_import_jax():
    code = "import sys, linfit.cli; linfit.cli.build_parser().format_help(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_listings_describe_their_entries(capsys):
    assert main(["scores"]) == 0
    out = capsys.readouterr().out
    for name in scores.names():
        line = next(l for l in out.splitlines() if l.split()[0] == name)
        assert scores.get(name).cost in line and SUMMARY[name] in line and scores.get(name).reference in line
    assert main(["tasks"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("hebrew:5shot "))
    hebrew = embedded.load("hebrew")
    assert line.split()[1:4] == [str(hebrew.num_classes), str(5 * hebrew.num_classes), str(len(hebrew.y_test))]
    assert main(["zoo", "list"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(TWO[1] + " "))
    model = zoo.load(TWO[1])
    assert line.split()[1:5] == [model.architecture, model.kind, model.source_domain, str(model.num_classes)]
    assert line.split()[5] == f"{100 * model.source_accuracy:.1f}%"


def _hand_made(curves: bool = True) -> Selection:
    """Five models, three scores with known values; curves e^{-aτ} with a per model."""
    rng = np.random.default_rng(0)
    names = ["m/a", "m/b", "m/c/long-name-here", "m/d", "m/e"]
    values = {"lfc": [0.5, 0.4, 0.3, 0.2, 0.1], "linearized_loss": [-0.2, -0.5, -0.3, -0.9, -0.6],
              "logme": rng.normal(size=5)}
    table = pd.DataFrame({"model": names, "reference": [False, False, False, True, False], **values})
    for s in values:
        table[f"rank_{s}"] = table[s].rank(ascending=False, method="min").astype(int)
        table[f"seconds_{s}"] = 0.5
    curve = {n: np.exp(-a * CURVE_TIMES) for n, a in zip(names, [2.0, 1.0, 0.5, 0.3, 0.2])} if curves else {}
    return Selection(task="font_digits:5shot", table=table, curves=curve, num_samples=50,
                     scores=tuple(values), input_seconds={"features": 3.0, "ntk": 7.0}, wall_seconds=20.0)


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_a_score_registered_by_the_user_is_listed_with_its_summary(monkeypatch, capsys):
    """``register`` is public: a new score needs no entry in linfit's own summaries to be listed and explained."""
    from linfit.scores import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register("feature_norm", needs=("features",), reference="a user", cost="forward")
    def feature_norm(features, labels):
        """mean squared feature norm (a made-up score)

        More lines that the listing does not show."""
        return float(np.mean(np.sum(np.asarray(features) ** 2, axis=1)))

    registry.register("feature_norm_2", needs=("features",), reference="a user", cost="forward",
                      summary="as feature_norm, named")(feature_norm)
    assert main(["scores"]) == 0
    out = capsys.readouterr().out
    assert "mean squared feature norm (a made-up score)" in out and "More lines" not in out
    assert "as feature_norm, named" in out
    with pytest.raises(ConfigError, match="registered twice"):
        registry.register("feature_norm", needs=("features",), reference="", cost="forward")(feature_norm)


def test_ranking_report_recommends_explains_and_counts_shared_inputs_once():
    sel = _hand_made()
    text = format_table(sel, top=2)
    assert "ordered by lfc" in text and "fine-tune m/a and m/b first" in text
    lines = text.splitlines()
    header = next(l for l in lines if l.startswith("model"))
    rows = [l for l in lines if l.startswith("m/")]
    for s in sel.scores:  # every header name ends where its values end, in every row
        end = header.index(f" {s} ") + 1 + len(s)
        for row, value in zip(rows, sel.table[s]):
            assert row[:end].endswith(f"{value:.4f}"), (s, row)
    for s in sel.scores:
        assert SUMMARY[s] in text and scores.get(s).reference in text
    agreement = sel.agreement()
    for a in sel.scores:
        for b in sel.scores:
            assert agreement.loc[a, b] == pytest.approx(_spearman(sel.table[a], sel.table[b]), abs=1e-12)
    rho = _spearman(sel.table.lfc, sel.table.linearized_loss)
    assert f"{rho:.2f}" in next(l for l in lines if l.strip().startswith("lfc ") and "." in l and "[" not in l)
    assert "features 3.0 s (lfc, logme)" in text and "ntk 7.0 s (linearized_loss)" in text
    assert "the rest, 2.5 s" in text  # 20 s wall - 10 s inputs - 3 scores x 5 models x 0.5 s
    assert "(the top 2 by lfc)" in text and "every model scored" in format_table(sel, top=len(sel.table))
    assert "Time:" not in format_table(sel, top=2, timing=False)  # --profile prints the times phase by phase
    overlapping = dataclasses.replace(sel, wall_seconds=17.0)  # the timed phases add up to 17.5 s
    assert "the rest, 0.0 s" in format_table(overlapping, top=2)


def test_profile_lists_every_phase_and_they_add_up_to_the_wall_time():
    sel = dataclasses.replace(_hand_made(), wall_seconds=30.0, compile_seconds=4.0, compilations=7, load_seconds=1.5,
                              cpu_seconds=45.0)
    lines = format_profile(sel).splitlines()
    assert "45.0 s of CPU" in lines[0] and "1.50 cores" in lines[0]
    seconds = {m[1]: float(m[2]) for m in (re.match(r"\s+(\S+(?: \S+)?)\s+(-?[\d.]+) s\b", line) for line in lines[1:])}
    expected = {"load": 1.5, "compile": 4.0, "features": 3.0, "ntk": 7.0, "score lfc": 2.5,
                "score linearized_loss": 2.5, "score logme": 2.5, "rest": 30.0 - 1.5 - 4.0 - 10.0 - 7.5, "total": 30.0}
    assert seconds == pytest.approx(expected)
    assert sum(v for k, v in seconds.items() if k != "total") == pytest.approx(30.0)
    assert "7 XLA compilations" in format_profile(sel)
    assert "compiling (once per architecture and input shape) 4.0 s" in format_table(sel)


def test_select_charges_shared_inputs_once(capsys):
    result = select_module.select("font_digits:5shot", ("lfc", "logme"), models=TWO, per_class=3)
    assert set(result.input_seconds) == {"features"}
    own = result.table[["seconds_lfc", "seconds_logme"]].to_numpy().sum()
    assert own + result.input_seconds["features"] <= result.wall_seconds


def test_plot_highlights_the_recommended_models_and_marks_tau(monkeypatch, tmp_path):
    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: figures.append(self) or save(self, *a, **k))
    plot_curves(_hand_made(), tmp_path / "c.png", top=2)
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["other models (2)", "m/d (reference)", "#1 m/a", "#2 m/b"]
    thick = {line.get_label() for line in ax.get_lines() if line.get_linewidth() > 2}
    assert thick == {"#1 m/a", "#2 m/b"}
    assert any(np.allclose(line.get_xdata(), CURVE_TAU) and len(line.get_xdata()) == 2 for line in ax.get_lines())
    assert (tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(Exception, match="add one of"):
        plot_curves(_hand_made(curves=False), tmp_path / "none.png")


def test_json_is_strict_json_when_a_score_is_constant(monkeypatch, capsys):
    """A score equal for every model has an undefined Spearman with the others: null, not a bare NaN that jq and
    JSON.parse reject."""
    import json

    sel = _hand_made()
    sel.table["logme"] = 1.0
    monkeypatch.setattr(select_module, "select", lambda *args, **kwargs: sel)
    assert main(["select", "--json", "--quiet", "--plot", "", "--models", *TWO]) == 0

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    report = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert report["agreement_spearman"]["lfc"]["logme"] is None
    assert report["agreement_spearman"]["lfc"]["linearized_loss"] == pytest.approx(
        _spearman(sel.table.lfc, sel.table.linearized_loss))


def test_json_writes_the_plot_only_where_plot_asks(monkeypatch, tmp_path, capsys):
    """``--json`` prints JSON only (no default plot file in the working folder); with ``--plot`` it writes the
    plot and names it in the JSON."""
    import json

    monkeypatch.setattr(select_module, "select", lambda *args, **kwargs: _hand_made())
    monkeypatch.chdir(tmp_path)
    assert main(["select", "--json", "--quiet", "--models", *TWO]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] is None and list(tmp_path.iterdir()) == []
    assert main(["select", "--json", "--quiet", "--models", *TWO, "--plot", "curves.png"]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == "curves.png" and (tmp_path / "curves.png").is_file()


@pytest.mark.parametrize("option, value, expected", [
    ("head_samples", 0, "head_samples must be a positive integer (or None for the exact head average"),
    ("per_class", 0, "per_class must be a positive integer; got 0"),
    ("seed", -1, "seed must be an integer >= 0"),
])
def test_select_names_none_for_the_exact_head_average(option, value, expected, no_work):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        select_module.select(models=TWO, **{option: value})


def test_report_says_how_the_ntk_scores_average_the_head():
    rows = dataclasses.replace(_hand_made(), head_samples=4)
    assert "(linearized_loss: fine-tuning NTK from 4 random head rows (--head-samples" in format_table(rows)
    assert "(linearized_loss: fine-tuning NTK from the exact head average)" in format_table(_hand_made())
    no_ntk = dataclasses.replace(_hand_made(), scores=("lfc", "logme"))
    assert "fine-tuning NTK" not in format_table(no_ntk)


def test_select_refuses_a_single_class_dataset_before_any_work(no_work):
    """A ``Dataset`` object gets the same two-class check as a path (``linfit.data.load_data``)."""
    from linfit.data import Dataset
    from linfit.errors import DatasetError

    x = np.zeros((6, 8, 8, 1), np.float32)
    one_class = Dataset("one", x, np.zeros(6, np.int32), x, np.zeros(6, np.int32), class_names=("a", "b"))
    with pytest.raises(DatasetError, match=r"the dataset 'one' has 1 class in its training images"):
        select_module.select(data=one_class, models=TWO)


def test_a_second_run_reads_its_compiled_programs_from_the_cache(tmp_path):
    """The command line keeps XLA's programs in ``LINFIT_COMPILE_CACHE``: a second run compiles nothing itself
    (every compilation is a hit of JAX's persistent cache, counted from JAX's own events) and ranks the same."""
    cache = tmp_path / "xla"
    env = {**os.environ, "LINFIT_COMPILE_CACHE": str(cache)}
    argv = [sys.executable, "-m", "linfit.cli", "select", "--models", *TWO, "--scores", "lfc", "logme", "--json",
            "--quiet"]
    first, second = (json.loads(subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout)
                     for _ in range(2))
    assert first["compilations"] > 0 and first["cached_compilations"] == 0 and any(cache.iterdir())
    assert second["cached_compilations"] == second["compilations"] == first["compilations"]
    assert [m["lfc"] for m in second["models"]] == [m["lfc"] for m in first["models"]]
    off = {**os.environ, "LINFIT_COMPILE_CACHE": "off"}
    assert json.loads(subprocess.run(argv, env=off, capture_output=True, text=True, check=True).stdout)[
        "cached_compilations"] == 0
