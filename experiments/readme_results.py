"""README's result tables, regenerated from an evidence report (``experiments/reproduce.py`` writes the report).

    python experiments/readme_results.py                    # print the tables of the default report
    python experiments/readme_results.py --write README.md  # replace the two tables in README in place

Two tables: the headline (every row of the report's 20-shot interval table: Spearman, weighted τ, trials-to-best
and top-3 gain, each a mean over task groups with its interval, with the paper's single-domain 20-shot numbers
beside) and Spearman within each zoo cluster (the report's per-cluster tables). Cells are copied from the report
as written there, with a typographic minus; only the row labels and the paper's columns are added. The prose
around the tables cites intervals by hand; ``tests/test_readme.py`` checks every one against the report.
"""

from __future__ import annotations

import argparse
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
REPORT = HERE / "evidence_20shot_resnet8" / "report.md"

DISPLAY = {"lfc": "LFC", "lgc": "LGC (last conv, exact)", "lgc_paper": "LGC (paper's: last layer, 10k projection)",
           "lgc_all": "LGC (all parameters)", "linearized_loss": "linearized loss (closed form)",
           "linearized_cv_accuracy": "linearized CV accuracy", "leep": "LEEP", "nce": "NCE", "logme": "LogME",
           "h_score": "H-score", "sfda": "SFDA", "gbc": "GBC", "transrate": "TransRate", "parc": "PARC",
           "linear_probe": "linear probe", "feature_metrics": "Feature Metrics (stand-in)",
           "domain_similarity": "Domain Similarity", "rsa": "RSA", "random (expectation)": "Random (expectation)",
           "baseline: from_generalist": "initialised from the generalist",
           "baseline: source_accuracy": "source accuracy", "baseline: source_images": "source images",
           "baseline: reference_first": "generalist first, rest tied"}
"""The row label of each report row (a row missing here keeps its report name)."""

PAPER_20SHOT = {"lfc": ("0.53", "5.1", "3.1"), "lgc_paper": ("0.44", "6.6", "2.8"), "leep": ("0.32", "6.4", "1.6"),
                "feature_metrics": ("0.18", "8.6", "0.8"), "domain_similarity": ("−0.02", "16.9", "−6.7"),
                "rsa": ("−0.35", "24.4", "−7.2"), "random (expectation)": ("–", "16.2", "−4.3")}
"""The paper's single-domain 20-shot results (Spearman and trials-to-best: Fig. 6, averaged over its 8 tasks;
top-3 gain over its ImageNet expert: Fig. 4b's average), rounded as the README shows them."""

HEADLINE = "| score | Spearman | (paper) | weighted τ | trials-to-best | (paper) | top-3 gain | (paper) |"
_CLUSTER_COLUMNS = (("Spearman, from the generalist", "Models the generalist and the experts initialised from it"),
                    ("Spearman, from scratch", "Models the experts trained from scratch"),
                    ("Spearman, multi-BN experts", "Models the multi-BN experts"))
"""README's column for each zoo cluster, and the start of the line that heads the cluster's table in the report."""
CLUSTERS = f"| score | {' | '.join(column for column, _ in _CLUSTER_COLUMNS)} |"


def report_rows(report: str, heading: str) -> dict[str, dict[str, str]]:
    """``{row name: {column: cell}}`` of the first Markdown table after the line that starts with ``heading``.

    Raises:
      ValueError: no line starts with ``heading``, or no table follows it.
    """
    lines = report.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    start = next((i for i in range(at + 1, len(lines)) if lines[i].startswith("| ")), None) if at is not None else None
    if start is None:
        raise ValueError(f"no table under a line starting with {heading!r} in the report")
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def _label(name: str) -> str:
    display = DISPLAY.get(name, name)
    return f"baseline: {display} `{name}`" if name.startswith("baseline: ") else f"{display} `{name}`"


def _minus(cell: str) -> str:
    return cell.replace("-", "−")


def tables(report: str) -> tuple[list[str], list[str]]:
    """The Markdown lines of the headline and the per-cluster table from the text of an evidence ``report``."""
    across = report_rows(report, "## Regime `20shot`")
    headline = [HEADLINE, "|---|---|---|---|---|---|---|---|"]
    for name, cells in across.items():
        spearman, trials, top3 = PAPER_20SHOT.get(name, ("–", "–", "–"))
        headline.append(f"| {_label(name)} | {_minus(cells['Spearman'])} | {spearman} | {_minus(cells['weighted τ'])} "
                        f"| {_minus(cells['trials-to-best'])} | {trials} | {_minus(cells['top-3 gain'])} | {top3} |")
    within = [report_rows(report, heading) for _, heading in _CLUSTER_COLUMNS]
    clusters = [CLUSTERS, "|---" * (1 + len(within)) + "|"]
    for name in across:
        if any(name in rows for rows in within):
            cells = [_minus(rows[name]["Spearman"]) if name in rows else "–" for rows in within]
            clusters.append(f"| {_label(name)} | {' | '.join(cells)} |")
    return headline, clusters


def replace_tables(readme: str, report: str) -> str:
    """``readme`` with its headline and per-cluster tables (found by their header lines) replaced.

    Raises:
      ValueError: a table's header line is not in ``readme``.
    """
    lines = readme.splitlines()
    for table in tables(report):
        start = lines.index(table[0])
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        lines[start:end] = table
    return "\n".join(lines) + ("\n" if readme.endswith("\n") else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", default=str(REPORT), help="an evidence report.md")
    parser.add_argument("--write", default=None, metavar="README", help="replace the tables in this file")
    args = parser.parse_args(argv)
    report = pathlib.Path(args.report).read_text()
    if args.write:
        path = pathlib.Path(args.write)
        path.write_text(replace_tables(path.read_text(), report))
        print(f"tables replaced in {path}")
    else:
        headline, clusters = tables(report)
        print("\n".join([*headline, "", *clusters]))


if __name__ == "__main__":
    main()
