"""CI runs exactly the README's test command: the last command of .ci/run is the README's second set-up line."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    command = next(line.strip() for line in readme if "pip install" in line and "[test]" in line)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    last = [line for line in ci if line and not line.startswith("#")][-1]
    assert last == command
    assert command.endswith("python -m pytest --full")
