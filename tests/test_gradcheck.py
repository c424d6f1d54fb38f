"""Every gradient against central finite differences, float64, both backends.

The error measure is ``||numeric - analytic|| / (||numeric|| + ||analytic||)`` (the CS231n
relative error taken over the whole array, so that entries that happen to be near zero do
not dominate); the bound: below 1e-6.  With step h = 1e-5 the truncation error is
O(h**2) ~ 1e-10 and the rounding error ~ eps * |L| / h ~ 1e-10.
"""

import numpy as np
import pytest

import fastrnn
from conftest import make_problem

STEP = 1e-5
BOUND = 1e-6


def numeric_gradient(f, array):
    """Central differences of the scalar ``f()`` with respect to every entry of ``array``,
    which ``f`` reads (perturbed in place, restored after)."""
    grad = np.empty_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + STEP
        plus = f()
        array[index] = saved - STEP
        minus = f()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * STEP)
    return grad


def check(numeric, analytic, what):
    error = np.linalg.norm(numeric - analytic) / max(
        np.linalg.norm(numeric) + np.linalg.norm(analytic), 1e-300
    )
    assert error < BOUND, f"{what}: relative error {error:.1e}"
    assert np.linalg.norm(analytic) > 0, f"{what}: a zero gradient checks nothing"


def check_hidden_layer(objective, params, grads, inputs):
    """Check dW_ax, dW_aa, db_a and the gradient of each input (``{grad key: array}``)."""
    for name in ("W_ax", "W_aa", "b_a"):
        check(numeric_gradient(objective, params[name]), grads["d" + name], "d" + name)
    for key, array in inputs.items():
        check(numeric_gradient(objective, array), grads[key], key)


@pytest.mark.parametrize("shape", [(3, 4, 3, 2, 4), (2, 3, 2, 1, 1), (2, 1, 3, 3, 5)], ids=str)
def test_loss_and_grads(backend, shape):
    x, a0, y, params = make_problem(*shape, seed=20)
    params["b_a"] += 0.1  # non-zero biases, so db_a is not a special case
    params["b_y"] -= 0.2
    _, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)

    def loss():
        return float(fastrnn.loss_and_grads(x, a0, y, params, backend=backend)[0])

    for name in ("W_ax", "W_aa", "b_a", "W_ya", "b_y"):
        check(numeric_gradient(loss, params[name]), grads["d" + name], "d" + name)
    check(numeric_gradient(loss, x), grads["dx"], "dx")
    check(numeric_gradient(loss, a0), grads["da0"], "da0")


def test_rnn_backward(backend):
    # rnn_backward(da) is the gradient of L = sum(da * a) for a fixed outside da.
    x, a0, _, params = make_problem(3, 4, 2, 2, 5, seed=21)
    da = np.random.default_rng(22).standard_normal((4, 2, 5))
    _, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend)
    grads = fastrnn.rnn_backward(da, cache)

    def objective():
        a, _, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
        return float(np.sum(da * a))

    check_hidden_layer(objective, params, grads, {"dx": x, "da0": a0})


def test_rnn_cell_backward(backend):
    rng = np.random.default_rng(23)
    params = fastrnn.init_params(3, 4, 2, seed=24)
    params["b_a"] += 0.3
    x_t, a_prev, da_t = rng.standard_normal((3, 2)), rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    _, _, cache = fastrnn.rnn_cell_forward(x_t, a_prev, params, backend=backend)
    grads = fastrnn.rnn_cell_backward(da_t, cache)

    def objective():
        a_t, _, _ = fastrnn.rnn_cell_forward(x_t, a_prev, params, backend=backend)
        return float(np.sum(da_t * a_t))

    check_hidden_layer(objective, params, grads, {"dx_t": x_t, "da_prev": a_prev})
