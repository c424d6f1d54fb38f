"""``a0``: None (zeros), (n_a, m), or per layer, (num_layers * D, n_a, m) = (1, n_a, m) for a
one-layer, one-direction network; ``da0`` and the final state come back in a0's layout."""

import numpy as np
import pytest

import fastrnn
from helpers import make_problem

N_X, N_A, N_Y, M, T = 3, 5, 4, 3, 6


@pytest.fixture
def problem():
    x, _, y, params = make_problem(N_X, N_A, N_Y, M, T, seed=2)
    a0 = np.random.default_rng(3).standard_normal((N_A, M))
    x_index = np.random.default_rng(4).integers(0, N_X, size=(M, T))
    return x, x_index, a0, y, params


@pytest.mark.parametrize("workers", [1, 2])
def test_none_is_zeros_and_per_layer_is_the_same_state(backend, problem, workers):
    x, x_index, a0, y, params = problem
    options = dict(backend=backend, workers=workers, return_state=True)
    for function, inputs in ((fastrnn.loss_and_grads, x), (fastrnn.loss_and_grads_onehot, x_index)):
        for given, per_layer, state in (
            (None, True, np.zeros((N_A, M))),
            (a0[None], True, a0),
            (a0, False, a0),
        ):
            loss, grads, a_last = function(inputs, given, y, params, **options)
            expected_loss, expected, expected_last = function(inputs, state, y, params, **options)
            shape = (1, N_A, M) if per_layer else (N_A, M)
            assert grads["da0"].shape == shape and a_last.shape == shape
            assert loss == expected_loss
            np.testing.assert_array_equal(grads["da0"].reshape(N_A, M), expected["da0"])
            np.testing.assert_array_equal(a_last.reshape(N_A, M), expected_last)
            np.testing.assert_array_equal(grads["dW_aa"], expected["dW_aa"])


def test_the_loss_and_the_forward_pass_take_it_too(backend, problem):
    x, x_index, a0, y, params = problem
    for given, state in ((None, np.zeros((N_A, M))), (a0[None], a0)):
        loss, a_last = fastrnn.loss(x, given, y, params, backend=backend, return_state=True)
        assert a_last.shape == (1, N_A, M)
        assert loss == fastrnn.loss(x, state, y, params, backend=backend)
        assert fastrnn.loss_onehot(x_index, given, y, params, backend=backend) == fastrnn.loss_onehot(
            x_index, state, y, params, backend=backend
        )
        a, y_hat, cache = fastrnn.rnn_forward(x, given, params, backend=backend)
        np.testing.assert_array_equal(a, fastrnn.rnn_forward(x, state, params, backend=backend)[0])
        grads = fastrnn.rnn_backward(np.ones_like(a), cache)
        assert grads["da0"].shape == (1, N_A, M)
    a, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend)
    assert fastrnn.rnn_backward(np.ones_like(a), cache)["da0"].shape == (N_A, M)


@pytest.mark.parametrize(
    "a0, error, match",
    [
        (np.zeros((2, N_A, M)), ValueError, r"a0 must have shape \(num_layers \* D, n_a, m\)"),
        (np.zeros((1, N_A, M + 1)), ValueError, "a0 must have shape"),
        (np.zeros((1, 1, N_A, M)), ValueError, "a0 must be 2-dimensional"),
        (np.full((1, N_A, M), np.nan), ValueError, "a0"),
        ([[0.0], [0.0, 1.0]], TypeError, "a0"),  # ragged
    ],
)
def test_bad_initial_states_are_named(backend, problem, a0, error, match):
    x, x_index, _, y, params = problem
    with pytest.raises(error, match=match):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    with pytest.raises(error, match=match):
        fastrnn.loss_onehot(x_index, a0, y, params, backend=backend)


@pytest.mark.parametrize("lengths", [None, "some shorter"], ids=["dense path", "packed path"])
def test_a_cache_checks_its_state_shape(problem, lengths):
    x, _, a0, _, params = problem
    if lengths is not None:
        lengths = np.maximum(1, np.arange(x.shape[1]) % x.shape[2])
    a, _, cache = fastrnn.rnn_forward(x, None, params, lengths=lengths)
    with pytest.raises(ValueError, match="cache.state_shape"):
        fastrnn.rnn_backward(np.ones_like(a), cache._replace(state_shape="yes"))
    with pytest.raises(TypeError, match="cache.state_shape"):
        fastrnn.rnn_backward(np.ones_like(a), cache._replace(state_shape=1))
