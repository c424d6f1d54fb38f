"""Every gradient against central finite differences, float64, both backends.

The measure and its bound are ``helpers.check``'s.
"""

import numpy as np
import pytest

import fastrnn
from helpers import check, check_hidden_layer, make_problem, numeric_gradient


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
