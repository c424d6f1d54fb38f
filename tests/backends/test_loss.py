"""``fastrnn.loss`` and ``loss_onehot``: the loss of ``loss_and_grads`` from a forward pass
that keeps nothing for a backward one, per batch or per sequence."""

import numpy as np
import pytest

import fastrnn
from fastrnn.validation import NonFiniteResultError
from helpers import BACKENDS, assert_agree, make_problem

SHAPES = [(5, 7), (1, 1), (1, 6), (6, 1), (9, 3)]  # (m, T): m=1 and T=1 included


def _one_hot_problem(m, T, dtype, seed):
    x, a0, y, params = make_problem(6, 8, 4, m, T, dtype=dtype, seed=seed)
    x_index = np.random.default_rng(seed).integers(0, 6, size=(m, T))
    return x, x_index, a0, y, params


@pytest.mark.parametrize("m, T", SHAPES)
def test_loss_equals_the_training_steps_loss(backend, dtype, m, T):
    x, x_index, a0, y, params = _one_hot_problem(m, T, dtype, seed=m * 10 + T)
    expected, _ = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    loss = fastrnn.loss(x, a0, y, params, backend=backend)
    assert loss.dtype == np.dtype(dtype)
    assert_agree(loss, expected, dtype, "loss")
    expected, _ = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend)
    assert_agree(
        fastrnn.loss_onehot(x_index, a0, y, params, backend=backend), expected, dtype, "one-hot loss"
    )


@pytest.mark.parametrize("m, T", SHAPES)
def test_the_backends_agree_per_sequence(dtype, m, T):
    x, x_index, a0, y, params = _one_hot_problem(m, T, dtype, seed=3 + m + T)
    results = {
        backend: (
            fastrnn.loss(x, a0, y, params, backend=backend, per_sequence=True, return_state=True),
            fastrnn.loss_onehot(x_index, a0, y, params, backend=backend, per_sequence=True),
        )
        for backend in BACKENDS
    }
    (dense, state), one_hot = results["numba"]
    (dense_ref, state_ref), one_hot_ref = results["numpy"]
    assert dense.shape == (m,) and dense.dtype == np.dtype(dtype)
    assert_agree(dense, dense_ref, dtype, "per-sequence losses")
    assert_agree(one_hot, one_hot_ref, dtype, "one-hot per-sequence losses")
    assert_agree(state, state_ref, dtype, "last state")


def test_each_sequences_loss_is_its_own_batch_of_one(backend):
    x, x_index, a0, y, params = _one_hot_problem(7, 5, np.float64, seed=11)
    losses = fastrnn.loss(x, a0, y, params, backend=backend, per_sequence=True)
    for i in range(7):
        alone = fastrnn.loss(x[:, i : i + 1], a0[:, i : i + 1], y[i : i + 1], params, backend=backend)
        assert abs(losses[i] - alone) <= 1e-12 * abs(alone)
    assert abs(losses.mean() - fastrnn.loss(x, a0, y, params, backend=backend)) <= 1e-12 * losses.mean()


def test_the_state_is_the_forward_pass_last(backend, dtype):
    x, _, a0, y, params = _one_hot_problem(4, 6, dtype, seed=5)
    _, state = fastrnn.loss(x, a0, y, params, backend=backend, return_state=True)
    a, _, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    assert_agree(state, a[:, :, -1], dtype, "state")


@pytest.mark.parametrize("workers", [2, 3, 5, -1])
def test_workers_agree_with_one(backend, dtype, workers):
    x, x_index, a0, y, params = _one_hot_problem(9, 4, dtype, seed=workers + 20)
    one = fastrnn.loss(x, a0, y, params, backend=backend, per_sequence=True, workers=1)
    many = fastrnn.loss(x, a0, y, params, backend=backend, per_sequence=True, workers=workers)
    assert_agree(many, one, dtype, "per-sequence losses")  # to rounding: BLAS blocks by the shard's size
    one = fastrnn.loss_onehot(x_index, a0, y, params, backend=backend, workers=1)
    assert_agree(
        fastrnn.loss_onehot(x_index, a0, y, params, backend=backend, workers=workers), one, dtype, "mean"
    )


def test_a_float32_loss_beyond_float32_is_an_error(backend):
    x, _, a0, y, params = _one_hot_problem(3, 4, np.float32, seed=8)
    params["W_ya"][:] = 0
    params["b_y"][:] = 0
    params["b_y"][0] = 3e38  # logits of 3e38 against 0: a finite float64 loss, beyond float32
    y[:] = 1
    with pytest.raises(NonFiniteResultError, match="loss"):
        fastrnn.loss(x, a0, y, params, backend=backend)


def test_the_model_evaluates_without_changing_its_state(backend):
    model = fastrnn.RNN(6, 8, 4, backend=backend, seed=2)
    x, x_index, a0, y, _ = _one_hot_problem(3, 5, np.float64, seed=9)
    model.loss_and_grads(x_index, y, carry_state=True)
    state = model.state.copy()
    expected = fastrnn.loss_onehot(
        x_index, np.zeros((8, 3)), y, model.params, backend=backend, per_sequence=True
    )
    np.testing.assert_array_equal(model.evaluate(x_index, y, per_sequence=True), expected)
    np.testing.assert_array_equal(model.state, state)
    assert model.evaluate(x, y, a0=a0) == fastrnn.loss(x, a0, y, model.params, backend=backend)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a.update(y=a["y"][:, :-1]), ValueError, "y"),
        (lambda a: a.update(y=a["y"] + 4), ValueError, "y"),
        (lambda a: a.update(a0=a["a0"][:-1]), ValueError, "a0"),
        (lambda a: a.update(x=a["x"][:-1]), ValueError, "x"),
        (lambda a: a.update(workers=0), ValueError, "workers"),
        (lambda a: a.update(workers="2"), TypeError, "workers"),
    ],
)
def test_bad_arguments_are_named(change, error, match):
    x, _, a0, y, params = _one_hot_problem(3, 4, np.float64, seed=1)
    arguments = dict(x=x, a0=a0, y=y, workers=None)
    change(arguments)
    with pytest.raises(error, match=match):
        fastrnn.loss(arguments["x"], arguments["a0"], arguments["y"], params, workers=arguments["workers"])


def test_bad_one_hot_indices_are_named():
    _, x_index, a0, y, params = _one_hot_problem(3, 4, np.float64, seed=1)
    with pytest.raises(ValueError, match="x_index"):
        fastrnn.loss_onehot(x_index + 6, a0, y, params)


def test_the_model_runs_when_called_and_gives_logits(backend, dtype):
    model = fastrnn.RNN(6, 8, 4, dtype=dtype, backend=backend, seed=3)
    x, _, a0, _, _ = _one_hot_problem(3, 5, dtype, seed=4)
    a, y_hat = model(x, a0)
    expected_a, expected_y_hat = model.forward(x, a0)
    np.testing.assert_array_equal(a, expected_a)
    np.testing.assert_array_equal(y_hat, expected_y_hat)
    _, logits = model(x, a0, logits=True)
    assert logits.shape == (4, 3, 5) and logits.dtype == np.dtype(dtype)
    e = np.exp(logits - logits.max(axis=0))
    assert_agree(e / e.sum(axis=0), y_hat, dtype, "softmax of the logits")
    direct = np.einsum("ya,amt->ymt", model.params["W_ya"], a) + model.params["b_y"][:, :, None]
    assert_agree(logits, direct, dtype, "logits")
