"""The command line runs and prints what it promises."""

import subprocess
import sys


def test_demo_prints_both_backends_and_their_agreement():
    result = subprocess.run([sys.executable, "-m", "fastrnn"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for size in ("tiny", "small", "char-rnn"):
        rows = [line for line in lines if line.startswith(size)]
        assert [row.split()[-5] for row in rows] == ["numba", "numpy"], rows
    differences = [float(line.rsplit(":", 1)[1]) for line in lines if "largest relative difference" in line]
    assert len(differences) == 3 and max(differences) < 1e-10, differences


def test_unknown_command_is_an_error():
    result = subprocess.run([sys.executable, "-m", "fastrnn", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_ci_runs_the_readme_test_command_unchanged():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme.split("## Run the tests", 1)[1]
    command = section.split("```bash", 1)[1].split("```", 1)[0].strip()
    ci_lines = [line.strip() for line in (root / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines, command
