"""Streams (``RNN.stream``): T calls of ``step`` are one ``rnn_forward`` over T steps, on both
backends, for every network in one direction; states can be read, set and reset; bad
input is a clear error that leaves the state as it was."""

import threading

import numpy as np
import pytest

import fastrnn
from fastrnn.model import RNN
from fastrnn.validation import NonFiniteResultError
from helpers import assert_agree

N_X, N_A, N_Y = 6, 7, 5


def model_of(num_layers, nonlinearity, dtype, backend, seed=3):
    return RNN(N_X, N_A, N_Y, num_layers=num_layers, dtype=dtype, seed=seed, nonlinearity=nonlinearity,
               backend=backend)  # fmt: skip


def one_hot(index, n):
    """(m, T) indices as dense (n, m, T)."""
    return np.eye(n)[index].transpose(2, 0, 1)


def stepped(stream, inputs, **options):
    """``stream.step`` over the last axis of ``inputs``, outputs stacked as (n_y, m, T)."""
    return np.stack([stream.step(inputs[..., t], **options) for t in range(inputs.shape[-1])], axis=-1)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("m, T", [(1, 1), (1, 9), (4, 6)])
def test_steps_are_the_forward_pass(num_layers, nonlinearity, m, T, backend, dtype):
    model = model_of(num_layers, nonlinearity, dtype, backend)
    rng = np.random.default_rng(m * 10 + T)
    x = rng.standard_normal((N_X, m, T)).astype(dtype)
    _, y_hat, _, a_last = fastrnn.rnn_forward(
        x, None, model.params, backend=backend, nonlinearity=nonlinearity, return_state=True
    )
    stream = model.stream(batch=m)
    assert_agree(stepped(stream, x), y_hat, dtype, "dense steps")
    assert_agree(stream.state, a_last[0] if num_layers == 1 else a_last, dtype, "state")
    _, logits = model.forward(x, logits=True)
    assert_agree(stepped(model.stream(m), x, logits=True), logits, dtype, "logits")

    index = rng.integers(0, N_X, size=(m, T))
    _, y_index = model.forward(one_hot(index, N_X).astype(dtype))
    by_index = model.stream(m)
    assert_agree(stepped(by_index, index), y_index, dtype, "index steps")


@pytest.mark.parametrize("num_layers", [1, 2])
def test_backends_agree_step_by_step(num_layers, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_X, 3, 5)).astype(dtype)
    outputs = {}
    for backend in ("numpy", "numba"):
        stream = model_of(num_layers, "tanh", dtype, backend).stream(3)
        outputs[backend] = (stepped(stream, x), stream.state)
    for got, expected in zip(outputs["numba"], outputs["numpy"]):
        assert_agree(got, expected, dtype, "numba against numpy")


def test_a_set_state_is_rnn_forwards_a0_and_reset_zeroes_rows(backend):
    model = model_of(2, "tanh", np.float64, backend)
    rng = np.random.default_rng(1)
    a0 = rng.standard_normal((2, N_A, 3))
    x = rng.standard_normal((N_X, 3, 4))
    stream = model.stream(3)
    stream.state = a0
    np.testing.assert_allclose(stream.state, a0)
    _, y_hat = model.forward(x, a0)
    np.testing.assert_allclose(stepped(stream, x), y_hat, rtol=1e-12, atol=1e-14)

    carried = stream.state
    stream.reset(rows=[1])
    expected = carried.copy()
    expected[:, :, 1] = 0
    np.testing.assert_array_equal(stream.state, expected)
    more = rng.standard_normal((N_X, 3, 2))
    _, y_more = model.forward(more, expected)
    np.testing.assert_allclose(stepped(stream, more), y_more, rtol=1e-12, atol=1e-14)
    stream.reset(np.array([True, False, True]))
    assert not stream.state[:, :, [0, 2]].any() and stream.state[:, :, 1].any()
    stream.reset()
    assert not stream.state.any()


def test_one_layer_state_is_n_a_by_m_and_float32_input_is_cast(backend):
    model = model_of(1, "tanh", np.float64, backend)
    stream = model.stream(2)
    assert stream.state.shape == (N_A, 2)
    x = np.random.default_rng(2).standard_normal((N_X, 2)).astype(np.float32)
    cast = stream.step(x)
    stream.reset()
    np.testing.assert_array_equal(stream.step(x.astype(np.float64)), cast)
    stream.reset()
    np.testing.assert_array_equal(stream.step(np.asfortranarray(x.astype(np.float64))), cast)
    assert cast.shape == (N_Y, 2) and cast.dtype == np.float64
    np.testing.assert_allclose(cast.sum(axis=0), 1)
    stream.reset()
    strided = np.array([1, 0, 4, 0])[::2]
    ints = [np.array([1, 4], dtype=t) for t in (np.int8, np.int32, np.uint16, np.intp)] + [
        [1, 4],
        (1, 4),
        strided,
    ]
    outputs = []
    for index in ints:
        stream.reset()
        outputs.append(stream.step(index))
    assert all(np.array_equal(out, outputs[0]) for out in outputs)


def test_a_stream_is_a_snapshot_of_the_parameters(backend):
    model = model_of(1, "tanh", np.float64, backend)
    stream = model.stream()
    before = stream.step(np.array([2]))
    model.params["W_ya"] *= 2  # training would do this
    stream.reset()
    np.testing.assert_array_equal(stream.step(np.array([2])), before)
    assert not np.array_equal(model.stream().step(np.array([2])), before)


BAD_INPUTS = [
    (np.zeros((N_X, 3)), ValueError, r"x_t must have shape \(6, 2\)|x_t"),
    (np.zeros((N_X + 1, 2)), ValueError, "x_t"),
    (np.zeros((N_X, 2, 1)), ValueError, "x_t"),
    (np.array([0, 1, 2]), ValueError, "x_t"),
    (np.array([0, N_X]), ValueError, r"x_t must hold symbol indices in \[0, 6\), got 6 at index \(1,\)"),
    (np.array([-1, 0]), ValueError, r"got -1 at index \(0,\)"),
    (np.array([0.0, 1.0]), TypeError, "x_t must hold integer"),
    (np.array([True, False]), TypeError, "x_t"),
    ("ab", TypeError, "x_t"),
    (None, TypeError, "x_t"),
]


@pytest.mark.parametrize("x_t, error, match", BAD_INPUTS)
def test_bad_input_is_a_clear_error_and_leaves_the_state(x_t, error, match, backend):
    stream = model_of(2, "tanh", np.float64, backend).stream(2)
    stream.step(np.array([1, 2]))
    state = stream.state
    with pytest.raises(error, match=match):
        stream.step(x_t)
    np.testing.assert_array_equal(stream.state, state)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_found_by_the_kernel_and_leaves_the_state(bad, backend):
    stream = model_of(1, "tanh", np.float32, backend).stream(2)
    stream.step(np.ones((N_X, 2), np.float32))
    state = stream.state
    x = np.ones((N_X, 2), np.float32)
    x[4, 1] = bad
    with pytest.raises(ValueError, match=r"x_t must be finite, got .* at index \(4, 1\)"):
        stream.step(x)
    np.testing.assert_array_equal(stream.state, state)


def test_overflow_is_reported_and_leaves_the_state(backend):
    model = model_of(1, "relu", np.float32, backend)
    model.params["W_ax"][...] = 1e30
    model.params["W_ya"][...] = 1e20  # logits of 1e50: beyond float32
    stream = model.stream()
    with pytest.raises(NonFiniteResultError, match="float32"):
        stream.step(np.array([0]))
    assert not stream.state.any()


def test_bad_streams_states_and_rows(backend):
    with pytest.raises(ValueError, match="bidirectional"):
        RNN(3, 4, 3, bidirectional=True, backend=backend).stream()
    model = model_of(2, "tanh", np.float64, backend)
    with pytest.raises(ValueError, match="batch"):
        model.stream(0)
    with pytest.raises(TypeError, match="batch"):
        model.stream(1.5)
    stream = model.stream(3)
    for bad_state, match in [
        (np.zeros((N_A, 3)), "state"),
        (np.full((2, N_A, 3), np.nan), "state must be finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            stream.state = bad_state
    for rows, error in [([3], ValueError), ([-1], ValueError), (np.ones(2, bool), ValueError), ("a", TypeError),
                        ([0.5], TypeError)]:  # fmt: skip
        with pytest.raises(error, match="rows"):
            stream.reset(rows)
    assert "batch=3" in repr(stream)


def test_separate_streams_over_one_model_step_in_threads(backend):
    model = model_of(2, "tanh", np.float32, backend)
    rng = np.random.default_rng(5)
    inputs = [rng.integers(0, N_X, size=(2, 300)) for _ in range(4)]
    expected = [stepped(model.stream(2), index) for index in inputs]
    results = [None] * 4

    def run(k):
        results[k] = stepped(model.stream(2), inputs[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
