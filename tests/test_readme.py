"""README's test command is the one CI runs."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_has_exactly_two_setup_commands():
    setup = (ROOT / "README.md").read_text().split("## Set up")[1].split("\n## ")[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    assert len(blocks) == 2, blocks

def test_ci_runs_the_readme_test_command():
    setup = (ROOT / "README.md").read_text().split("## Set up")[1].split("\n## ")[0]
    test_command = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines(), (test_command, ci)


def test_readme_python_example_runs_and_matches_the_closed_form(capsys):
    import numpy as np

    block = re.findall(r"```python\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(block) == 1, block
    namespace = {}
    exec(compile(block[0], "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    ntk, y = namespace["ntk"], namespace["y"]
    assert ntk.shape == (y.size, y.size) and np.allclose(ntk, ntk.T, rtol=1e-6, atol=1e-6 * np.abs(ntk).max())
    # independent transcription: L_τ / L_0 = Σ_i e^{-2 λ_i t} ‖u_iᵀ Y‖² / ‖Y‖², t = τ N / tr Θ
    lam, u = np.linalg.eigh((ntk.astype(np.float64) + ntk.T) / 2)
    energy = np.sum((u.T @ np.eye(int(y.max()) + 1)[y]) ** 2, axis=1)
    expected = [np.sum(np.exp(-2 * lam * tau * y.size / lam.sum()) * energy) / energy.sum() for tau in (0.1, 1, 10)]
    printed = np.array(out.split("L_tau / L_0: [")[1].split("]")[0].split(), dtype=float)
    np.testing.assert_allclose(printed, expected, rtol=1e-6)  # numpy prints 8 decimals of values >= 0.1
    score = float(out.split("linearized_loss: ")[1].split()[0])
    assert score == pytest.approx(-expected[1], rel=1e-6)


def _section(text: str, heading: str) -> str:
    return text.split(heading)[1].split("\n## ")[0]


def _rows(text: str, heading: str) -> dict[str, dict[str, str]]:
    """``{score id: {column: cell}}`` of the first Markdown table after ``heading``; a row's id is the backticked
    name in its first cell (README) or the whole first cell (report)."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| score |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.search(r"`([^`]+)`", cells[0])
        rows[name.group(1) if name else cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_readme_results_are_the_committed_reports():
    """Every interval the README's results cite is in the report it names (a bullet that links a report of its
    own, e.g. the densenet zoo's or the full regime's, cites that one; the rest cite the section's first), and its
    tables are the report's rows: README's numbers are regenerated from the stores by ``experiments/reproduce.py``,
    not typed."""
    readme = (ROOT / "README.md").read_text()
    results = _section(readme, "## Results on the embedded benchmark")
    link = r"\((experiments/evidence_\w+/report\.md)\)"
    path = re.search(link, results).group(1)
    report = (ROOT / path).read_text().replace("**", "")
    cited, missing = 0, []
    for bullet in re.split(r"\n\* ", results):
        own = re.search(link, bullet)
        text = (ROOT / own.group(1)).read_text().replace("**", "") if own else report
        intervals = re.findall(r"[+−-]?\d+\.\d+ \[−?-?\d+\.\d+, −?-?\d+\.\d+\]", re.sub(r"\s+", " ", bullet))
        cited += len(intervals)
        missing += [c for c in intervals if c.lstrip("+").replace("−", "-") not in text]
    assert cited > 50
    assert not missing, missing
    headline = _rows(results, "| score | Spearman |")
    across = _rows(report, "## Regime `20shot`")
    assert set(headline) == set(across)
    for name, cells in headline.items():
        for column in ("Spearman", "weighted τ", "trials-to-best", "top-3 gain"):
            assert cells[column].replace("−", "-") == across[name][column], (name, column)
    clusters = _rows(results, "| score | Spearman, from the generalist |")
    for column, heading in (("Spearman, from the generalist", "Models the generalist and the experts initialised"),
                            ("Spearman, from scratch", "Models the experts trained from scratch"),
                            ("Spearman, multi-BN experts", "Models the multi-BN experts")):
        within = _rows(report, heading)
        for name, cells in clusters.items():
            assert cells[column].replace("−", "-") == within.get(name, {}).get("Spearman", "–"), (name, column)


def test_readme_tables_are_what_the_generator_writes_from_the_report():
    """``experiments/readme_results.py --write README.md`` leaves README as it is: its tables (labels and the
    paper's columns included) are the generator's output on the committed report."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "experiments" / "readme_results.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    readme = (ROOT / "README.md").read_text()
    assert generator.replace_tables(readme, generator.REPORT.read_text()) == readme
    assert set(generator.PAPER_20SHOT) <= set(generator.DISPLAY)
