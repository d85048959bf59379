"""README's test command is the one CI runs."""

import pathlib
import re

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
