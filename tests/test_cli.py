"""The command line runs and prints what it promises."""

import json
import subprocess
import sys

import pytest


def run_cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "fastrnn", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


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


def test_train_prints_a_json_summary_and_writes_checkpoint_and_plot(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    result = run_cli("train", corpus, "--steps", 200, "--hidden", 24, "--seq-length", 12, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout is the JSON object alone
    for key in ("final_loss", "uniform_loss", "steps", "seconds", "chars_per_second", "checkpoint"):
        assert key in summary, key
    assert summary["steps"] == 200
    assert summary["final_loss"] < 0.5 * summary["uniform_loss"]
    assert (tmp_path / summary["checkpoint"]).exists()
    png = (tmp_path / summary["loss_plot"]).read_bytes()
    assert png.startswith(b"\x89PNG")
    sampled = run_cli("sample", summary["checkpoint"], "--chars", 40, "--seed", 3, "--prime", "the ", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    again = run_cli("sample", summary["checkpoint"], "--chars", 40, "--seed", 3, "--prime", "the ", cwd=tmp_path)
    assert sampled.stdout == again.stdout and sampled.stdout.startswith("the ")
    assert set(sampled.stdout.strip()) <= set("the cat sat on the mat. ")


def test_train_defaults_to_the_zen_of_python(tmp_path):
    result = run_cli("train", "--steps", 30, "--hidden", 8, "--plot", "none", "--sample-every", 10, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Zen of Python" in result.stdout
    assert "final loss" in result.stdout and "uniform baseline ln(" in result.stdout
    assert "--- step 10" in result.stdout  # a sample every 10 steps
    assert (tmp_path / "fastrnn-model.npz").exists()


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["train", "missing.txt"], "no such file"),
        (("empty.txt", b""), ["train", "empty.txt"], "empty"),
        (("binary.bin", b"\x7fELF\0\0\1"), ["train", "binary.bin"], "binary"),
        (("one.txt", b"aaaa"), ["train", "one.txt"], "distinct"),
        (("bad.npz", b"garbage"), ["sample", "bad.npz"], "not a fastrnn checkpoint"),
        (None, ["sample", "missing.npz"], "no such checkpoint"),
        (None, ["bench", "--sizes", "huge"], "unknown size"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, setup, args, message):
    if setup:
        (tmp_path / setup[0]).write_bytes(setup[1])
    result = run_cli(*args, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_bad_settings_are_usage_errors(tmp_path):
    for args in (["train", "--steps", "0"], ["train", "--lr", "-1"], ["sample", "x.npz", "--temperature", "0"]):
        result = run_cli(*args, cwd=tmp_path, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)  # the examples write files
    exec(compile("\n".join(blocks), "README.md", "exec"), {})


def test_train_workers_flag(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    bad = run_cli("train", corpus, "--workers", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--workers" in bad.stderr and "-1 for every core" in bad.stderr
    result = run_cli("train", corpus, "--steps", 20, "--hidden", 16, "--workers", 2, "--json", "--plot", "none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["workers"] == 2 and summary["threads"].startswith("2 shards x 1 BLAS thread"), summary
