"""Bad input gets a clear TypeError or ValueError naming the argument (docs/contract.rst, "Bad input"),
before any kernel runs, and the caller's arrays are never modified."""

import re

import numpy as np
import pytest

import fastrnn
from helpers import make_problem

N_X, N_A, N_Y, M, T = 3, 4, 5, 2, 6


@pytest.fixture
def problem():
    return make_problem(N_X, N_A, N_Y, M, T, seed=40)


def raises(error, *names):
    """pytest.raises whose message must mention every one of ``names``."""
    return pytest.raises(error, match=".*".join(re.escape(n) for n in names))


# -- loss_and_grads: one test per case -------------------------------------------------


def test_x_of_wrong_rank(problem, backend):
    x, a0, y, params = problem
    with raises(ValueError, "x", "3-dimensional", "(n_x, m, T)"):
        fastrnn.loss_and_grads(x[:, :, 0], a0, y, params, backend=backend)


def test_x_with_wrong_number_of_features(problem, backend):
    x, a0, y, params = problem
    with raises(ValueError, "x", f"({N_X + 1}, {M}, {T})"):
        fastrnn.loss_and_grads(np.ones((N_X + 1, M, T)), a0, y, params, backend=backend)


def test_a0_of_wrong_shape(problem, backend):
    x, a0, y, params = problem
    with raises(ValueError, "a0", f"({N_A}, {M})", f"({N_A}, {M + 1})"):
        fastrnn.loss_and_grads(x, np.zeros((N_A, M + 1)), y, params, backend=backend)


def test_y_of_wrong_shape(problem, backend):
    x, a0, y, params = problem
    with raises(ValueError, "y", f"({M}, {T})", f"({T}, {M})"):
        fastrnn.loss_and_grads(x, a0, y.T, params, backend=backend)


@pytest.mark.parametrize("bad", [-1, N_Y, 10**9], ids=["negative", "n_y", "huge"])
def test_label_out_of_range(problem, backend, bad):
    x, a0, y, params = problem
    y = y.copy()
    y[1, 4] = bad
    with raises(ValueError, "y", f"[0, {N_Y})", str(bad), "(1, 4)"):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, bool], ids=["float64", "float32", "bool"])
def test_labels_that_are_not_integers(problem, backend, dtype):
    x, a0, y, params = problem
    with raises(TypeError, "y", "integer"):
        fastrnn.loss_and_grads(x, a0, y.astype(dtype), params, backend=backend)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "a0", "W_aa", "b_y"])
@pytest.mark.parametrize(
    "T_steps", [T, 1000], ids=["joined", "one by one"]
)  # arrays checked in one call up to 4096 entries
def test_non_finite_values(backend, value, where, T_steps):
    x, a0, y, params = make_problem(N_X, N_A, N_Y, M, T_steps, seed=40)
    target = {"x": x, "a0": a0}.get(where, params.get(where))
    target.flat[-1] = value
    with raises(ValueError, where, "finite"):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)


@pytest.mark.parametrize("where", ["a0", "W_ax"])
def test_non_finite_values_one_hot_and_cell(problem, backend, where):
    x, a0, y, params = problem
    target = {"a0": a0}.get(where, params.get(where))
    target.flat[0] = np.nan
    with raises(ValueError, where, "finite"):
        fastrnn.loss_and_grads_onehot(y % N_X, a0, y, params, backend=backend)
    with raises(ValueError, where.replace("a0", "a_prev"), "finite"):
        fastrnn.rnn_cell_forward(x[:, :, 0], a0, params, backend=backend)


@pytest.mark.parametrize("where", ["W_ax", "W_aa", "b_a", "W_ya", "b_y", "x_t", "a_prev"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_input_of_a_cell_is_scanned_to_its_last_entry(problem, backend, where, bad):
    """The cell's finiteness check runs inside the backend (compiled, for Numba), over every
    entry of all seven inputs, before any product reads them."""
    x, a0, _, params = problem
    arrays = dict(params, x_t=x[:, :, 0].copy(), a_prev=a0.copy())
    arrays[where].flat[-1] = bad
    names = {"x_t": "x_t", "a_prev": "a_prev"}
    with raises(ValueError, names.get(where, f"params['{where}']"), "finite"):
        fastrnn.rnn_cell_forward(
            arrays["x_t"], arrays["a_prev"], {k: arrays[k] for k in params}, backend=backend
        )


def test_float64_input_that_overflows_float32(backend):
    x, a0, y, params = make_problem(N_X, N_A, N_Y, M, T, dtype=np.float32, seed=41)
    x = x.astype(np.float64)
    x[0, 0, 0] = 1e300
    with raises(ValueError, "x", "finite"):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)


@pytest.mark.parametrize("axis", [1, 2], ids=["m=0", "T=0"])
def test_empty_batch_or_time(problem, backend, axis):
    x, a0, y, params = problem
    shape = list(x.shape)
    shape[axis] = 0
    with raises(ValueError, "x", "empty"):
        fastrnn.loss_and_grads(np.zeros(shape), a0, y, params, backend=backend)


def test_empty_parameter(backend):
    params = fastrnn.init_params(N_X, N_A, N_Y)
    params["W_ax"] = np.zeros((N_A, 0))
    with raises(ValueError, "W_ax", "empty"):
        fastrnn.loss_and_grads(
            np.zeros((0, M, T)), np.zeros((N_A, M)), np.zeros((M, T), int), params, backend=backend
        )


@pytest.mark.parametrize("name", ["W_ax", "W_aa", "b_a", "W_ya", "b_y"])
def test_missing_parameter(problem, backend, name):
    x, a0, y, params = problem
    del params[name]
    with raises(ValueError, "params", name):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("W_aa", (N_A, N_A + 1)),
        ("b_a", (N_A,)),
        ("b_a", (1, N_A)),
        ("W_ya", (N_Y, N_A + 1)),
        ("b_y", (N_Y + 1, 1)),
        ("W_ax", (N_A, N_X, 1)),
    ],
)
def test_parameter_of_wrong_shape(problem, backend, name, shape):
    x, a0, y, params = problem
    params[name] = np.zeros(shape)
    with raises(ValueError, f"params['{name}']", str(shape)):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)


def test_parameters_of_mixed_dtypes(problem, backend):
    x, a0, y, params = problem
    params["W_aa"] = params["W_aa"].astype(np.float32)
    with raises(TypeError, "params", "W_aa: float32"):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.complex128])
def test_parameters_of_unsupported_dtype(problem, backend, dtype):
    x, a0, y, params = problem
    params = {k: v.astype(dtype) for k, v in params.items()}
    with raises(TypeError, "params['W_ax']"):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)


@pytest.mark.parametrize(
    "bad", [None, "abc", {"a": 1}, np.array(["a", "b"]), np.ones((N_X, M, T), complex)], ids=repr
)
def test_x_of_wrong_kind(problem, backend, bad):
    _, a0, y, params = problem
    with raises(TypeError, "x"):
        fastrnn.loss_and_grads(bad, a0, y, params, backend=backend)


@pytest.mark.parametrize("bad", [None, [1, 2], (1, 2)], ids=repr)
def test_params_of_wrong_kind(problem, backend, bad):
    x, a0, y, _ = problem
    with raises(TypeError, "params"):
        fastrnn.loss_and_grads(x, a0, y, bad, backend=backend)


def test_ragged_list(problem, backend):
    x, a0, y, params = problem
    with raises(TypeError, "x must be"):
        fastrnn.loss_and_grads([[[1.0]], [[1.0, 2.0]]], a0, y, params, backend=backend)
    with raises(TypeError, "y must be an integer array"):
        fastrnn.loss_and_grads(x, a0, [[1], [1, 2]], params, backend=backend)
    with raises(TypeError, "x_index must be an integer array"):
        fastrnn.loss_and_grads_onehot([[1], [1, 2]], a0, y, params, backend=backend)


# -- the other functions -----------------------------------------------------------------


def test_rnn_forward_checks_its_arguments(problem, backend):
    x, a0, _, params = problem
    with raises(ValueError, "x", "(n_x, m, T)"):
        fastrnn.rnn_forward(x[0], a0, params, backend=backend)
    with raises(ValueError, "a0"):
        fastrnn.rnn_forward(x, a0[:, :1], params, backend=backend)
    with raises(ValueError, "params", "W_ya"):
        fastrnn.rnn_forward(x, a0, {k: v for k, v in params.items() if k != "W_ya"}, backend=backend)


def test_rnn_backward_checks_its_arguments(problem, backend):
    x, a0, _, params = problem
    _, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend)
    with raises(ValueError, "da", f"({N_A}, {M}, {T})"):
        fastrnn.rnn_backward(np.zeros((N_A, M, T + 1)), cache)
    with raises(ValueError, "da", "finite"):
        fastrnn.rnn_backward(np.full((N_A, M, T), np.nan), cache)
    with raises(TypeError, "cache", "rnn_forward"):
        fastrnn.rnn_backward(np.zeros((N_A, M, T)), (cache.xs, cache.h))


def test_cell_functions_check_their_arguments(problem, backend):
    _, _, _, params = problem
    with raises(ValueError, "x_t", "(n_x, m)"):
        fastrnn.rnn_cell_forward(np.zeros((N_X + 1, M)), np.zeros((N_A, M)), params, backend=backend)
    with raises(ValueError, "a_prev", f"({N_A}, {M})"):
        fastrnn.rnn_cell_forward(np.zeros((N_X, M)), np.zeros((N_A, M + 1)), params, backend=backend)
    _, _, cache = fastrnn.rnn_cell_forward(np.zeros((N_X, M)), np.zeros((N_A, M)), params, backend=backend)
    with raises(ValueError, "da_t", f"({N_A}, {M})"):
        fastrnn.rnn_cell_backward(np.zeros((N_A + 1, M)), cache)
    with raises(TypeError, "cache", "rnn_cell_forward"):
        fastrnn.rnn_cell_backward(np.zeros((N_A, M)), tuple(cache)[:4])


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(n_x=0, n_a=2, n_y=2), ValueError, "n_x"),
        (dict(n_x=2, n_a=-1, n_y=2), ValueError, "n_a"),
        (dict(n_x=2, n_a=2, n_y=2.0), TypeError, "n_y"),
        (dict(n_x=2, n_a=2, n_y=2, dtype=np.int32), TypeError, "dtype"),
        (dict(n_x=2, n_a=2, n_y=2, dtype="not a dtype"), TypeError, "dtype"),
    ],
)
def test_init_params_checks_its_arguments(kwargs, error, name):
    with raises(error, name):
        fastrnn.init_params(**kwargs)


# -- inputs are never modified -----------------------------------------------------------


def test_inputs_are_not_modified(backend, dtype):
    x, a0, y, params = make_problem(N_X, N_A, N_Y, M, T, dtype=dtype, seed=42)
    da = np.random.default_rng(43).standard_normal((N_A, M, T)).astype(dtype)
    copies = [a.copy() for a in (x, a0, y, da, *params.values())]
    fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    _, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend)
    fastrnn.rnn_backward(da, cache)
    _, _, cell = fastrnn.rnn_cell_forward(x[:, :, 0], a0, params, backend=backend)
    fastrnn.rnn_cell_backward(da[:, :, 0], cell)
    for before, after in zip(copies, (x, a0, y, da, *params.values())):
        np.testing.assert_array_equal(before, after)


def test_read_only_inputs_are_accepted(backend):
    x, a0, y, params = make_problem(N_X, N_A, N_Y, M, T, seed=44)
    for array in (x, a0, y, *params.values()):
        array.flags.writeable = False
    loss, _ = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    assert np.isfinite(loss)
