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
