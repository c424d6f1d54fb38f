"""fastrnn reproduces the seed notebook's forward pass (shared/seeds/000_3b32fd00c31d8854.txt).

The seed's functions are re-typed here as they are, except ``softmax_func``, which in the
seed subtracts the maximum of the whole array instead of each column's (SPEC.md lists it
among the bugs not to copy).
"""

import numpy as np

import fastrnn


def softmax_func(yhat):
    t = np.exp(yhat - np.max(yhat, axis=0, keepdims=True))  # fixed: per column
    return t / np.sum(t, axis=0)


def cell_rnn(a_prev, x_curr, weight_dict):
    W_ax = weight_dict["W_ax"]
    b_a = weight_dict["b_a"]
    W_aa = weight_dict["W_aa"]
    W_ya = weight_dict["W_ya"]
    b_y = weight_dict["b_y"]
    a_curr = np.tanh((np.dot(W_ax, x_curr) + np.dot(W_aa, a_prev) + b_a))
    y_hat_curr = softmax_func(np.dot(W_ya, a_curr) + b_y)
    cache = (a_curr, a_prev, x_curr, weight_dict)
    return a_curr, y_hat_curr, cache


def forward_rnn(x, a0, weight_dict):
    cache = []
    k = x.shape[1]
    T_x = x.shape[2]
    n_a = a0.shape[0]
    n_y = weight_dict["W_ya"].shape[0]
    y_hat_all = np.zeros((n_y, k, T_x))
    a_all = np.zeros((n_a, k, T_x))
    a_cur = a0
    for count_t in range(T_x):
        current_x = x[:, :, count_t]
        a_cur, yhat, cache_return = cell_rnn(a_cur, current_x, weight_dict)
        y_hat_all[:, :, count_t] = yhat
        a_all[:, :, count_t] = a_cur
        cache.append(cache_return)
    caches = (cache, x)
    return a_all, y_hat_all, caches


def test_forward_matches_the_seed(backend):
    rng = np.random.default_rng(30)
    n_x, n_a, n_y, m, T = 5, 7, 4, 3, 6
    params = fastrnn.init_params(n_x, n_a, n_y, seed=31)
    params["b_a"][:] = rng.standard_normal((n_a, 1))
    params["b_y"][:] = rng.standard_normal((n_y, 1))
    x = rng.standard_normal((n_x, m, T))
    a0 = rng.standard_normal((n_a, m))
    a_seed, y_hat_seed, _ = forward_rnn(x, a0, params)
    a, y_hat, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    np.testing.assert_allclose(a, a_seed, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(y_hat, y_hat_seed, rtol=1e-12, atol=1e-14)


def test_columns_far_below_the_global_max_keep_their_softmax(backend):
    # The seed's global-max shift sends a column whose logits all sit ~1000 below the
    # largest logit elsewhere to exp(-1000)/sum = 0/0.  Per-column shifting must not.
    params = fastrnn.init_params(2, 3, 2, seed=32)
    params["W_ya"][:] = [[1000.0, 0, 0], [-1000.0, 0, 0]]
    x = np.zeros((2, 2, 1))
    a0 = np.zeros((3, 2))
    params["W_ax"][:] = 0
    params["W_aa"][:] = 0
    params["b_a"][:] = [[0.0], [0.0], [0.0]]
    # Drive a<1> of sequence 0 to +1 through x and leave sequence 1 at 0.
    params["W_ax"][0, 0] = 50.0
    x[0, 0, 0] = 1.0
    _, y_hat, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    assert np.isfinite(y_hat).all()
    np.testing.assert_allclose(y_hat[:, 1, 0], [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(y_hat[:, 0, 0], [1.0, 0.0], atol=1e-300)
