"""The command line runs and prints what it promises."""

import json
import os
import subprocess
import sys
from unittest import mock

import pytest

import fastrnn


def run_cli(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "fastrnn", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


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
    result = subprocess.run(
        [sys.executable, "-m", "fastrnn", "frobnicate"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_ci_runs_the_readme_test_command_unchanged():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    section = readme.split("## Run the tests", 1)[1]
    command = section.split("```bash", 1)[1].split("```", 1)[0].strip()
    ci_lines = [line.strip() for line in (root / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines, command


def test_train_prints_a_json_summary_and_writes_checkpoint_and_plot(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    result = run_cli(
        "train", corpus, "--steps", 200, "--hidden", 24, "--seq-length", 12, "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout is the JSON object alone
    for key in ("final_loss", "uniform_loss", "steps", "seconds", "chars_per_second", "checkpoint"):
        assert key in summary, key
    assert summary["steps"] == 200
    assert summary["final_loss"] < 0.5 * summary["uniform_loss"]
    assert (tmp_path / summary["checkpoint"]).exists()
    png = (tmp_path / summary["loss_plot"]).read_bytes()
    assert png.startswith(b"\x89PNG")
    sampled = run_cli(
        "sample", summary["checkpoint"], "--chars", 40, "--seed", 3, "--prime", "the ", cwd=tmp_path
    )
    assert sampled.returncode == 0, sampled.stderr
    again = run_cli(
        "sample", summary["checkpoint"], "--chars", 40, "--seed", 3, "--prime", "the ", cwd=tmp_path
    )
    assert sampled.stdout == again.stdout and sampled.stdout.startswith("the ")
    assert set(sampled.stdout.strip()) <= set("the cat sat on the mat. ")
    filtered = run_cli(
        "sample", summary["checkpoint"], "--chars", 60, "--seed", 3, "--top-k", 3, "--top-p", 0.9,
        "--stop", ".", "--num-samples", 3, cwd=tmp_path,
    )  # fmt: skip
    assert filtered.returncode == 0, filtered.stderr
    headers = [line for line in filtered.stdout.splitlines() if line.startswith("--- sample")]
    assert headers == [f"--- sample {k} of 3 ---" for k in (1, 2, 3)]
    for sample in filtered.stdout.split("---\n")[1:]:
        body = sample.split("\n--- sample")[0].rstrip("\n")
        assert "." not in body[:-1] and (body.endswith(".") or len(body) == 60), body
    for flags, message in [
        (["--stop", "xy"], "--stop"),
        (["--stop", "Q"], "--stop"),
        (["--top-p", "2"], "--top-p"),
    ]:
        bad = run_cli("sample", summary["checkpoint"], *flags, cwd=tmp_path)
        assert bad.returncode != 0 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_train_defaults_to_the_zen_of_python(tmp_path):
    result = run_cli(
        "train", "--steps", 30, "--hidden", 8, "--plot", "none", "--sample-every", 10, cwd=tmp_path
    )
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
        (None, ["bench", "--torch", "--sizes", "huge"], "unknown case"),
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


def test_bench_torch_compares_the_two_rnns(tmp_path):
    """``bench --torch``: each side in ``--rounds`` fresh processes, the medians, their
    ratio, and the range of the rounds' ratios, which holds the ratio of the medians."""
    pytest.importorskip(
        "torch", reason="PyTorch is optional (pip install 'fastrnn[torch]'); .ci/run installs a CPU build"
    )
    args = ("bench", "--torch", "--sizes", "tiny", "--dtypes", "float32", "--rounds", "2")
    result = run_cli(*args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "each side in 2 fresh processes" in result.stdout, result.stdout
    row = [line for line in result.stdout.splitlines() if line.startswith("tiny")]
    assert len(row) == 1, result.stdout
    name, dtype, nn_ms, fastrnn_ms, speed_up, spread = row[0].split()
    speed_up = float(speed_up.rstrip("x"))
    assert dtype == "float32" and float(nn_ms) > 0 and float(fastrnn_ms) > 0
    assert abs(speed_up - float(nn_ms) / float(fastrnn_ms)) < 0.01 * speed_up + 0.01
    # With two rounds each median is the mean of two times: their ratio lies between the
    # rounds' ratios (a mediant), up to the printed rounding.
    lowest, highest = (float(value) for value in spread.rstrip("x").split("-"))
    assert 0 < lowest <= highest
    assert lowest - 0.01 <= speed_up <= highest + 0.01


def test_bad_settings_are_usage_errors(tmp_path):
    for args in (
        ["train", "--steps", "0"],
        ["train", "--lr", "-1"],
        ["sample", "x.npz", "--temperature", "0"],
        ["bench", "--torch", "--rounds", "0"],
    ):
        result = run_cli(*args, cwd=tmp_path, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)


DOC_PAGES = ("README.md", "docs/guide.md")


def python_examples(page, *, pytorch):
    """The ```python blocks of ``page``: those that import PyTorch (``fastrnn.torch``'s
    examples), or the others."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    imports_torch = re.compile(r"^\s*(import|from) (torch|fastrnn\.torch)\b", re.M)
    return [block for block in blocks if bool(imports_torch.search(block)) == pytorch]


def run_examples(blocks, page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write files
    # The guide's Dask example sets OMP_NUM_THREADS and friends in this process's
    # environment (the cluster's workers inherit them): the tests after this one, and the
    # processes they start, must not.
    with mock.patch.dict(os.environ):
        exec(compile("\n".join(blocks), page, "exec"), {})


@pytest.mark.parametrize("page", DOC_PAGES)
def test_python_examples_of_the_docs_run(page, tmp_path, monkeypatch):
    blocks = python_examples(page, pytorch=False)
    assert blocks
    run_examples(blocks, page, tmp_path, monkeypatch)


@pytest.mark.parametrize("page", [page for page in DOC_PAGES if python_examples(page, pytorch=True)])
def test_pytorch_examples_of_the_docs_run(page, tmp_path, monkeypatch):
    """The examples of ``fastrnn.torch``, apart: PyTorch is no test dependency (the README's
    test command runs without it), and .ci/run installs it, so CI runs them."""
    pytest.importorskip(
        "torch", reason="PyTorch is optional (pip install 'fastrnn[torch]'); .ci/run installs a CPU build"
    )
    run_examples(python_examples(page, pytorch=True), page, tmp_path, monkeypatch)


def test_train_workers_flag(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    bad = run_cli("train", corpus, "--workers", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--workers" in bad.stderr and "-1 for every core" in bad.stderr
    result = run_cli(
        "train",
        corpus,
        "--steps",
        20,
        "--hidden",
        16,
        "--workers",
        2,
        "--json",
        "--plot",
        "none",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["workers"] == 2 and summary["threads"].startswith("2 shards x 1 BLAS thread"), summary


# -- nothing lost, one line per error ------------------------------------------------------


def _crafted_checkpoints(tmp_path):
    import io
    import zipfile

    import numpy as np

    from fastrnn.model import RNN

    model = RNN(3, 4, 3, seed=0)
    model.vocab = "abc"
    good = tmp_path / "good.npz"
    model.save(good)
    with zipfile.ZipFile(good) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}

    def npy(array):
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    crafted = {
        "two_element_has_vocab": {**members, "has_vocab.npy": npy(np.array([True, True]))},
        "zero_d_vocab": {
            k: v
            for k, v in {**members, "vocab.npy": npy(np.array("abc"))}.items()
            if k != "vocab_codepoints.npy"
        },
        "deep_settings": {**members, "settings.npy": npy(np.array("[" * 100_000 + "]" * 100_000))},
    }
    paths = {}
    for name, contents in crafted.items():
        paths[name] = tmp_path / f"{name}.npz"
        with zipfile.ZipFile(paths[name], "w") as archive:
            for member, data in contents.items():
                archive.writestr(member, data)
    paths["npy"] = tmp_path / "weights.npy"
    np.save(paths["npy"], np.ones(3))
    return paths


def test_every_user_error_is_one_line_and_exit_1(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    crafted = _crafted_checkpoints(tmp_path)
    quick = ["--steps", 3, "--hidden", 8, "--plot", "none", "--sample-every", 0]
    cases = [
        (["sample", crafted["npy"]], None),
        (["sample", crafted["two_element_has_vocab"]], None),
        (["sample", crafted["zero_d_vocab"]], None),
        (["sample", crafted["deep_settings"]], None),
        (["train", corpus, "--lr", "1e39", "--dtype", "float32", *quick, "--out", tmp_path / "a.npz"], None),
        (["train", corpus, "--plot", tmp_path / "x.txt", "--steps", 3], None),
        (["train", corpus, "--out", tmp_path / "missing" / "m.npz", "--steps", 3], None),
        (["train", corpus, "--out", tmp_path, "--steps", 3], None),
        (
            [
                "train",
                corpus,
                "--hidden",
                10_000_000,
                "--steps",
                1,
                "--plot",
                "none",
                "--out",
                tmp_path / "b.npz",
            ],
            None,
        ),
        (["train", corpus, *quick, "--out", tmp_path / "c.npz"], {"FASTRNN_BACKEND": "bogus"}),
        (["train", corpus, *quick, "--resume", tmp_path / "nothing.npz", "--out", tmp_path / "d.npz"], None),
    ]
    import os

    for args, env in cases:
        environment = {**os.environ, **(env or {})}
        result = subprocess.run([sys.executable, "-m", "fastrnn", *map(str, args)], capture_output=True, text=True,
                                timeout=600, cwd=tmp_path, env=environment)  # fmt: skip
        lines = [
            line
            for line in result.stderr.splitlines()
            if line.strip() and "step/s" not in line and "|" not in line
        ]
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert len(lines) == 1 and "error:" in lines[0], (args, lines)
    assert not (tmp_path / "missing").exists()
    # Not errors: a tiny temperature is greedy sampling, not a crash.
    train = run_cli("train", corpus, *quick, "--out", tmp_path / "m.npz", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    done = run_cli(
        "train", corpus, *quick, "--resume", tmp_path / "m.npz", "--out", tmp_path / "e.npz", cwd=tmp_path
    )
    assert (
        done.returncode == 1 and "trained 3 steps already" in done.stderr and "Traceback" not in done.stderr
    )
    greedy = run_cli(
        "sample", tmp_path / "m.npz", "--temperature", "5e-324", "--chars", 20, "--seed", 1, cwd=tmp_path
    )
    assert greedy.returncode == 0 and len(greedy.stdout.strip()) >= 1, greedy.stderr
    negative_seed = run_cli("train", corpus, "--seed", -1, cwd=tmp_path)
    assert (
        negative_seed.returncode == 2
        and "--seed" in negative_seed.stderr
        and "Traceback" not in negative_seed.stderr
    )


def test_resuming_continues_the_uninterrupted_loss_curve(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat; the dog sat on the log. " * 30)
    common = [
        "--hidden",
        16,
        "--seq-length",
        8,
        "--batch",
        4,
        "--plot",
        "none",
        "--sample-every",
        0,
        "--json",
        "--workers",
        1,
    ]
    whole = run_cli("train", corpus, "--steps", 60, *common, "--out", tmp_path / "whole.npz", cwd=tmp_path)
    first = run_cli("train", corpus, "--steps", 25, *common, "--out", tmp_path / "part.npz", cwd=tmp_path)
    rest = run_cli(
        "train",
        corpus,
        "--steps",
        60,
        "--resume",
        tmp_path / "part.npz",
        *common,
        "--out",
        tmp_path / "rest.npz",
        cwd=tmp_path,
    )
    for result in (whole, first, rest):
        assert result.returncode == 0, result.stderr
    import numpy as np

    from fastrnn.model import RNN

    assert json.loads(rest.stdout)["steps"] == 60
    resumed, uninterrupted = RNN.load(tmp_path / "rest.npz"), RNN.load(tmp_path / "whole.npz")
    for name, value in uninterrupted.params.items():
        np.testing.assert_array_equal(resumed.params[name], value, err_msg=name)
    np.testing.assert_array_equal(resumed.state, uninterrupted.state)


def test_ctrl_c_stops_after_the_step_and_writes_the_checkpoint(tmp_path):
    import signal
    import time

    from fastrnn.model import RNN

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 200)
    checkpoint = tmp_path / "m.npz"
    process = subprocess.Popen(
        [sys.executable, "-m", "fastrnn", "train", str(corpus), "--steps", "1000000", "--hidden", "16",
         "--plot", "none", "--sample-every", "0", "--save-every", "1", "--out", str(checkpoint)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the first checkpoint: training runs, Ctrl-C is handled
        assert checkpoint.exists(), "training did not start"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted after step" in stderr and "--resume" in stderr
    model = RNN.load(checkpoint)
    assert model.optimizer_state is not None and model.settings["steps_done"] >= 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_version_and_submodules_after_a_plain_import():
    import fastrnn

    assert (
        callable(fastrnn.text.train_char_rnn)
        and callable(fastrnn.optim.Adam)
        and callable(fastrnn.parallel.plan)
    )
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"fastrnn {fastrnn.__version__}"


def test_train_a_two_layer_model_then_sample_and_resume(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    common = ("--hidden", 24, "--seq-length", 12, "--json", "--plot", "none")
    result = run_cli(
        "train", corpus, "--layers", 2, "--steps", 200, *common, "--out", "two.npz", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layers"] == 2 and summary["final_loss"] < 0.5 * summary["uniform_loss"]
    model = fastrnn.RNN.load(tmp_path / "two.npz")
    assert model.num_layers == 2 and model.state.shape[:2] == (2, 24)
    sampled = run_cli("sample", "two.npz", "--chars", 30, "--seed", 1, "--prime", "the ", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("the ") and set(sampled.stdout.strip()) <= set(
        "the cat sat on the mat. "
    )
    resumed = run_cli(
        "train", corpus, "--resume", "two.npz", "--steps", 220, *common, "--out", "more.npz", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["layers"] == 2
    bad = run_cli("train", corpus, "--layers", 0, cwd=tmp_path)
    assert bad.returncode == 2 and "--layers" in bad.stderr


def test_tune_measures_records_shows_and_forgets(tmp_path, monkeypatch):
    file = tmp_path / "wisdom.json"
    monkeypatch.setenv("FASTRNN_WISDOM", str(file))
    quick = ["--sizes", "none", "--shape", "4,8,4,4,5", "--dtypes", "float64", "--repeat", "1"]
    dry = run_cli("tune", *quick, "--dry-run", "--calls", "loss")
    assert dry.returncode == 0, dry.stderr
    assert "4,8,4,4,5 float64 loss:" in dry.stdout and "built-in:" in dry.stdout and not file.exists()
    done = run_cli("tune", *quick, "--onehot")  # one-hot: rnn_forward (dense only) is left out
    assert done.returncode == 0, done.stderr
    assert "recorded 2 plans" in done.stdout and "rnn_forward" not in done.stdout
    shown = run_cli("tune", "--show")
    assert shown.returncode == 0 and "2 plans recorded" in shown.stdout
    assert "numba float64 loss_and_grads dense m=4 T=5 n_x=0 n_a=8 n_y=4" in shown.stdout
    forgotten = run_cli("tune", "--forget")
    assert forgotten.returncode == 0 and "removed 2 plans" in forgotten.stdout
    assert "0 plans recorded" in run_cli("tune", "--show").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shape", "4,8,4"], "--shape: expected five ints"),
        (["--sizes", "huge"], "--sizes: unknown size(s) huge"),
        (["--sizes", "none"], "nothing to tune"),
        (["--sizes", "tiny", "--calls", "train"], "--calls: expected some of"),
        (["--sizes", "tiny"], "FASTRNN_WISDOM=off: nothing to record in"),
    ],
)
def test_tune_errors_are_one_line(args, message, monkeypatch):
    monkeypatch.setenv("FASTRNN_WISDOM", "off")
    result = run_cli("tune", *args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
