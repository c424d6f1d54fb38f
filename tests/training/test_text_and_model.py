"""Character models: training, truncated BPTT, checkpoints, sampling (both backends)."""

import math

import numpy as np
import pytest

import fastrnn
from fastrnn import optim, text
from fastrnn.model import RNN, CheckpointError

CORPUS = text.builtin_corpus()


def test_builtin_corpus_is_the_zen_of_python():
    assert CORPUS.startswith("The Zen of Python, by Tim Peters")
    assert "Namespaces are one honking great idea" in CORPUS


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_training_lowers_the_loss(backend):
    run = text.train_char_rnn(CORPUS, hidden=32, seq_length=16, batch=4, steps=300, backend=backend, seed=1)
    uniform = math.log(len(set(CORPUS)))
    assert abs(run.losses[0] - uniform) < 0.1  # small initial weights: near uniform
    assert np.mean(run.losses[-30:]) < 0.75 * uniform
    assert run.characters == 300 * 4 * 16


def test_backends_follow_the_same_trajectory():
    # Training is chaotic: float64 differences of 1e-16 grow about 10x every few steps, so
    # the comparison covers the first steps only, where both must agree closely.
    losses = {
        backend: text.train_char_rnn(
            CORPUS,
            hidden=16,
            seq_length=8,
            batch=3,
            steps=12,
            lr=0.05,
            backend=backend,
            dtype=np.float64,
            seed=2,
        ).losses
        for backend in ("numpy", "numba")
    }
    np.testing.assert_allclose(losses["numba"], losses["numpy"], rtol=1e-9)


def test_stream_batches_cover_every_character():
    data = np.arange(101)
    seen = np.zeros(101, bool)
    chunks = text.stream_batches(data, batch=3, seq_length=7)
    starts = []
    for _ in range(40):
        x, y, starts_pass = next(chunks)
        assert x.shape == y.shape == (3, 7)
        np.testing.assert_array_equal(y, x + 1)  # targets are the next character
        seen[x.ravel()] = True
        starts.append(starts_pass)
    # Every character is an input some time, except the (101 - 1) % 3 = 1 left after
    # cutting 3 equal streams (and the last, which is only ever a target).
    assert seen[:99].all()
    assert starts[0] and starts[:5] == [True, False, False, False, True]  # 33 // 7 = 4 chunks a pass


def test_fit_batch_shape():
    assert text.fit_batch_shape(10_000, 16, 32) == (16, 32)
    assert text.fit_batch_shape(856, 16, 32) == (6, 32)  # 4 chunks per stream
    assert text.fit_batch_shape(50, 16, 32) == (1, 32)
    assert text.fit_batch_shape(5, 16, 32) == (1, 4)


def test_model_dense_and_onehot_inputs_agree(backend):
    model = RNN(5, 7, 5, seed=3, backend=backend)
    rng = np.random.default_rng(4)
    index, y = rng.integers(0, 5, (2, 6)), rng.integers(0, 5, (2, 6))
    dense = np.zeros((5, 2, 6))
    np.put_along_axis(dense, index[None], 1, axis=0)
    loss_index, grads_index = model.loss_and_grads(index, y)
    loss_dense, grads_dense = model.loss_and_grads(dense, y)
    np.testing.assert_allclose(loss_index, loss_dense, rtol=1e-12)
    for key in grads_index:
        np.testing.assert_allclose(grads_index[key], grads_dense[key], rtol=1e-10, atol=1e-14)


def test_carried_state(backend):
    model = RNN(5, 7, 5, seed=5, backend=backend)
    rng = np.random.default_rng(6)
    index, y = rng.integers(0, 5, (2, 8)), rng.integers(0, 5, (2, 8))
    whole, _ = model.loss_and_grads(index, y)
    first, _ = model.loss_and_grads(index[:, :4], y[:, :4], carry_state=True)
    assert model.state.shape == (7, 2)
    second, _ = model.loss_and_grads(index[:, 4:], y[:, 4:], carry_state=True)
    np.testing.assert_allclose(first + second, whole, rtol=1e-12)
    model.reset_state()
    assert model.state is None


def test_save_and_load_round_trip(tmp_path, backend):
    run = text.train_char_rnn(CORPUS, hidden=8, seq_length=8, batch=2, steps=5, backend=backend)
    path = tmp_path / "model.npz"
    run.model.save(path)
    loaded = RNN.load(path, backend=backend)
    assert loaded.vocab == run.model.vocab
    assert loaded.settings == run.model.settings
    for name, value in run.model.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
        assert loaded.params[name].dtype == value.dtype
    assert text.sample(loaded, 50, seed=7) == text.sample(run.model, 50, seed=7)


def test_load_refuses_what_is_not_a_checkpoint(tmp_path):
    model = RNN(3, 4, 3, seed=0)
    model.vocab = "abc"
    good = tmp_path / "good.npz"
    model.save(good)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3))
    contents = dict(np.load(good))
    wrong_vocab = tmp_path / "wrong_vocab.npz"
    np.savez(
        wrong_vocab,
        **dict(contents, vocab=np.array(list("abcd")), vocab_codepoints=np.array([97, 98, 99, 100])),
    )
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, **dict(contents, W_aa=np.ones((4, 5))))
    non_finite = tmp_path / "non_finite.npz"
    np.savez(non_finite, **dict(contents, b_y=np.full((3, 1), np.nan)))
    for path, match in [
        (tmp_path / "missing.npz", "no such checkpoint"),
        (garbage, "not a fastrnn checkpoint"),
        (truncated, "not a fastrnn checkpoint"),
        (other, "expected format"),
        (wrong_vocab, "vocabulary of 4 characters"),
        (wrong_shape, "W_aa"),
        (non_finite, "finite"),
    ]:
        with pytest.raises(CheckpointError, match=match):
            RNN.load(path)


def test_sampling_is_reproducible_and_respects_its_arguments(backend):
    run = text.train_char_rnn(CORPUS, hidden=16, seq_length=8, batch=2, steps=20, backend=backend)
    model = run.model
    first = text.sample(model, 80, prime="Beautiful", temperature=0.7, seed=11)
    assert first == text.sample(model, 80, prime="Beautiful", temperature=0.7, seed=11)
    assert first != text.sample(model, 80, prime="Beautiful", temperature=0.7, seed=12)
    assert first.startswith("Beautiful") and len(first) == len("Beautiful") + 80
    assert set(first) <= set(model.vocab)
    assert len(text.sample(model, 25, seed=1)) == 25
    assert text.sample(model, 0) == ""
    # A very low temperature is (nearly) greedy: the same text whatever the seed.
    assert text.sample(model, 40, prime="The", temperature=1e-3, seed=1) == text.sample(
        model, 40, prime="The", temperature=1e-3, seed=2
    )
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            text.sample(model, 10, temperature=bad)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        text.sample(model, 10, prime="\u20ac")


@pytest.mark.parametrize(
    "content, match",
    [(b"", "empty"), (b"abc\0def", "binary"), (b"\xff\xfeabc", "UTF-8"), (b"zzzzzz", "distinct")],
)
def test_read_text_refuses_what_cannot_be_trained_on(tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(text.TextError, match=match):
        text.read_text(path)


def test_train_step_checks_its_optimizer():
    model = RNN(3, 4, 3, seed=0)
    with pytest.raises(TypeError, match="optimizer"):
        model.train_step(np.zeros((1, 2), int), np.zeros((1, 2), int), "adam")
    loss = model.train_step(
        np.zeros((1, 2), int), np.zeros((1, 2), int), optim.Adam(0.01), clip_value=1.0, clip_norm=1.0
    )
    assert np.isfinite(loss)


@pytest.mark.parametrize(
    "setting, error",
    [
        (dict(hidden=0), ValueError),
        (dict(steps=1.5), TypeError),  # the wrong kind of value: a TypeError, as everywhere
        (dict(batch=-2), ValueError),
        (dict(seq_length=True), TypeError),
        (dict(optimizer="lbfgs"), ValueError),
    ],
)
def test_train_char_rnn_checks_its_settings(setting, error):
    with pytest.raises(error, match=next(iter(setting))):
        text.train_char_rnn(CORPUS, **setting)


def test_a_model_from_given_params_copies_and_checks_them():
    params = fastrnn.init_params(3, 5, 4, seed=7, dtype=np.float32)
    model = RNN.from_params(params)
    assert (model.n_x, model.n_a, model.n_y, model.dtype) == (3, 5, 4, np.float32)
    params["W_aa"][:] = 0  # the model holds its own copy
    assert model.params["W_aa"].any()
    with pytest.raises(ValueError, match=r"sizes \(n_x, n_a, n_y\) = \(3, 5, 4\)"):
        RNN(3, 6, 4, dtype=np.float32, params=params)
    with pytest.raises(ValueError, match="W_aa"):
        RNN.from_params({**params, "W_aa": np.zeros((2, 2), np.float32)})
