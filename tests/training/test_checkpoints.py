"""Checkpoints: saved atomically at exactly the path given, every character kept, and
loaded without trusting the file (only needed members read, each header checked first)."""

import io
import json
import time
import zipfile

import numpy as np
import pytest

from fastrnn import text
from fastrnn.model import RNN, CheckpointError


def _model(vocab="abc"):
    model = RNN(len(vocab), 4, len(vocab), seed=0)
    model.vocab = vocab
    model.settings = {"hidden": 4}
    return model


def test_save_writes_exactly_the_path_given(tmp_path):
    model = _model()
    for name in ("mymodel", "mymodel.npz", "model.ckpt"):
        written = model.save(tmp_path / name)
        assert written == str(tmp_path / name) and (tmp_path / name).exists()
        assert RNN.load(tmp_path / name).vocab == "abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "mymodel", "mymodel.npz"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_an_interrupted_save_leaves_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch, failure):
    path = tmp_path / "model.npz"
    _model("abc").save(path)
    before = path.read_bytes()

    def half_written(file, **members):
        file.write(b"PK\x03\x04 half of an archive")
        raise failure

    monkeypatch.setattr(np, "savez", half_written)
    with pytest.raises(type(failure)):
        _model("xyz").save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_every_character_survives_a_checkpoint(tmp_path):
    corpus = "a\0b\0c " * 30 + "\ud7ff\U0001f600 "  # NUL, and characters beyond one UTF-16 unit
    run = text.train_char_rnn(corpus, hidden=8, seq_length=8, batch=2, steps=3)
    path = run.model.save(tmp_path / "nul.npz")
    loaded = RNN.load(path)
    assert loaded.vocab == run.model.vocab and "\0" in loaded.vocab
    assert text.sample(loaded, 20, seed=1) == text.sample(run.model, 20, seed=1)


def test_checkpoints_of_the_first_format_still_load(tmp_path):
    """Before code points were stored, the vocabulary was one <U1 entry per character."""
    path = tmp_path / "old.npz"
    model = _model("abc")
    np.savez(path, format=np.array("fastrnn.RNN/1"), vocab=np.array(list("abc")), has_vocab=np.array(True),
             settings=np.array(json.dumps({"hidden": 4})), backend=np.array(""), **model.params)  # fmt: skip
    loaded = RNN.load(path)
    assert loaded.vocab == "abc" and loaded.settings == {"hidden": 4}


def _members(model):
    """The members (name -> bytes) of ``model``'s checkpoint, to change and write back."""
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array("fastrnn.RNN/1"), vocab=np.array(list(model.vocab)),
             vocab_codepoints=np.array([ord(c) for c in model.vocab], dtype=np.int32),
             has_vocab=np.array(True), settings=np.array(json.dumps(model.settings)),
             backend=np.array(""), **model.params)  # fmt: skip
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _write(path, members, compressed=()):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            kind = zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED
            archive.writestr(name, data, compress_type=kind)
    return path


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npy_header_claiming(shape, descr="<f8", data=b"\0" * 64):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def test_members_that_are_never_used_are_never_read(tmp_path):
    members = _members(_model())
    members["junk.npy"] = b"\x78\x9c this is not a zlib stream at all"
    path = _write(tmp_path / "junk.npz", members, compressed={"junk.npy"})
    start = time.perf_counter()
    assert RNN.load(path).vocab == "abc"
    assert time.perf_counter() - start < 5


CRAFTED = {
    "a needed member that expands 500 times": (
        lambda m: {**m, "W_aa.npy": _npy(np.zeros((64, 64)))},
        {"W_aa.npy"},
        "expand",
    ),
    "a header claiming 10**13 entries": (
        lambda m: {**m, "W_aa.npy": _npy_header_claiming((10**13,))},
        (),
        "claims shape",
    ),
    "a header claiming a shape that does not fit": (
        lambda m: {**m, "W_aa.npy": _npy(np.zeros((4, 5)))},
        (),
        "W_aa",
    ),
    "settings nested 100,000 deep": (
        lambda m: {**m, "settings.npy": _npy(np.array("[" * 100_000 + "]" * 100_000))},
        (),
        "bad checkpoint contents",
    ),
    "a has_vocab of 2 entries": (
        lambda m: {**m, "has_vocab.npy": _npy(np.array([True, False]))},
        (),
        "has_vocab",
    ),
    "a 0-d vocabulary": (
        lambda m: {
            k: v for k, v in {**m, "vocab.npy": _npy(np.array("abc"))}.items() if k != "vocab_codepoints.npy"
        },
        (),
        "vocab",
    ),
    "code points beyond Unicode": (
        lambda m: {**m, "vocab_codepoints.npy": _npy(np.array([97, 98, 99, 0x110000]))},
        (),
        "code points",
    ),
    "an object array": (lambda m: {**m, "b_a.npy": _npy_header_claiming((4, 1), descr="|O")}, (), "b_a"),
    "a missing parameter": (lambda m: {k: v for k, v in m.items() if k != "W_ya.npy"}, (), "missing W_ya"),
    "a format string of a megabyte": (
        lambda m: {**m, "format.npy": _npy(np.array("x" * 2**20))},
        (),
        "format",
    ),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_checkpoints_are_refused_quickly(tmp_path, case):
    change, compressed, message = CRAFTED[case]
    path = _write(tmp_path / "crafted.npz", change(_members(_model("abcd"))), compressed)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message):
        RNN.load(path)
    assert time.perf_counter() - start < 5
