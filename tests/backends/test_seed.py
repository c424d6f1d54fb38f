"""fastrnn's forward pass is the seed's: the equations of docs/contract.rst, step by step.

The seed (the NumPy tutorial fastrnn grew from) runs one cell per time step over the
features x batch x time layout.  ``forward_by_the_equations`` does the same, column by
column, from the contract's equations, with the per-column softmax shift the tutorial
lacked, so that it checks the layout and the maths independently of fastrnn's time-major
code paths.
"""

import numpy as np

import fastrnn


def softmax_by_columns(z):
    """softmax over axis 0 (the classes) of each column, shifted by the column's maximum."""
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def forward_by_the_equations(x, a0, params):
    """a<t> = tanh(W_ax x<t> + W_aa a<t-1> + b_a), y_hat<t> = softmax(W_ya a<t> + b_y),
    for t = 1..T, in the seed's (features, batch, time) layout."""
    n_x, m, T = x.shape
    a = np.empty((params["W_aa"].shape[0], m, T))
    y_hat = np.empty((params["W_ya"].shape[0], m, T))
    a_prev = a0
    for t in range(T):
        a_prev = np.tanh(params["W_ax"] @ x[:, :, t] + params["W_aa"] @ a_prev + params["b_a"])
        a[:, :, t] = a_prev
        y_hat[:, :, t] = softmax_by_columns(params["W_ya"] @ a_prev + params["b_y"])
    return a, y_hat


def test_forward_matches_the_seed(backend):
    rng = np.random.default_rng(30)
    n_x, n_a, n_y, m, T = 5, 7, 4, 3, 6
    params = fastrnn.init_params(n_x, n_a, n_y, seed=31)
    params["b_a"][:] = rng.standard_normal((n_a, 1))
    params["b_y"][:] = rng.standard_normal((n_y, 1))
    x = rng.standard_normal((n_x, m, T))
    a0 = rng.standard_normal((n_a, m))
    a_seed, y_hat_seed = forward_by_the_equations(x, a0, params)
    a, y_hat, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    np.testing.assert_allclose(a, a_seed, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(y_hat, y_hat_seed, rtol=1e-12, atol=1e-14)


def test_columns_far_below_the_global_max_keep_their_softmax(backend):
    # A shift by the whole array's maximum (the seed's mistake) sends a column whose logits all sit ~1000 below the
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
