"""One-hot inputs by index, and the last hidden state for truncated BPTT."""

import numpy as np
import pytest

import fastrnn
from helpers import assert_agree, make_problem


def one_hot_problem(n_x, n_a, n_y, m, T, dtype, seed):
    _, a0, y, params = make_problem(n_x, n_a, n_y, m, T, dtype=dtype, seed=seed)
    x_index = np.random.default_rng(seed).integers(0, n_x, size=(m, T))
    x = np.zeros((n_x, m, T), dtype=dtype)
    np.put_along_axis(x, x_index[None], 1, axis=0)
    return x_index, x, a0, y, params


@pytest.mark.parametrize(
    "shape",
    [
        (2, 1, 2, 1, 1),
        (5, 8, 4, 3, 7),
        pytest.param((65, 128, 65, 32, 16), marks=pytest.mark.slow),
        (7, 16, 7, 1, 300),
    ],
    ids=str,
)
def test_onehot_equals_dense_inputs(backend, dtype, shape):
    x_index, x, a0, y, params = one_hot_problem(*shape, dtype, seed=80)
    loss_dense, grads_dense = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    loss, grads = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend)
    assert set(grads) == set(grads_dense) - {"dx"}
    assert_agree(loss, loss_dense, dtype, "loss")
    for key in grads:
        assert grads[key].dtype == np.dtype(dtype)
        assert_agree(grads[key], grads_dense[key], dtype, key)


@pytest.mark.parametrize(
    "shape", [(5, 8, 4, 3, 7), pytest.param((65, 128, 65, 32, 16), marks=pytest.mark.slow)], ids=str
)
def test_onehot_backends_agree(dtype, shape):
    x_index, _, a0, y, params = one_hot_problem(*shape, dtype, seed=81)
    loss_np, grads_np = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend="numpy")
    loss_nb, grads_nb = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend="numba")
    assert_agree(loss_nb, loss_np, dtype, "loss")
    for key in grads_np:
        assert_agree(grads_nb[key], grads_np[key], dtype, key)


def test_repeated_indices_accumulate(backend):
    # Every input the same index: dW_ax is zero but for that one column, the sum of all dz.
    _, _, a0, y, params = one_hot_problem(4, 5, 3, 2, 6, np.float64, seed=82)
    x_index = np.full((2, 6), 2)
    _, grads = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend)
    assert np.count_nonzero(grads["dW_ax"][:, [0, 1, 3]]) == 0
    np.testing.assert_allclose(grads["dW_ax"][:, 2], grads["db_a"][:, 0], rtol=1e-12)


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (4, ValueError), (1.0, TypeError)])
def test_bad_indices(backend, bad, error):
    x_index, _, a0, y, params = one_hot_problem(4, 5, 3, 2, 6, np.float64, seed=83)
    x_index = x_index.astype(type(bad))
    x_index[1, 2] = bad
    with pytest.raises(error, match="x_index"):
        fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend)


def test_onehot_shapes_are_checked(backend):
    x_index, _, a0, y, params = one_hot_problem(4, 5, 3, 2, 6, np.float64, seed=84)
    with pytest.raises(ValueError, match="x_index.*2-dimensional"):
        fastrnn.loss_and_grads_onehot(x_index[0], a0, y, params, backend=backend)
    with pytest.raises(ValueError, match="a0"):
        fastrnn.loss_and_grads_onehot(x_index[:1], a0, y, params, backend=backend)
    with pytest.raises(ValueError, match="y"):
        fastrnn.loss_and_grads_onehot(x_index[:, :3], a0, y, params, backend=backend)


def test_return_state_is_the_last_hidden_state(backend, dtype):
    x, a0, y, params = make_problem(4, 6, 3, 2, 5, dtype=dtype, seed=85)
    loss, grads, a_last = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, return_state=True)
    a, _, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    assert a_last.shape == (6, 2)
    assert_agree(a_last, a[:, :, -1], dtype, "a_last")
    assert loss == fastrnn.loss_and_grads(x, a0, y, params, backend=backend)[0]


def test_chunks_with_carried_state_add_up_to_the_whole_sequence(backend):
    # Truncated BPTT: the forward pass (and so the loss) is exact across chunks.
    x_index, _, a0, y, params = one_hot_problem(6, 8, 6, 3, 12, np.float64, seed=86)
    whole = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend)[0]
    state, total = a0, 0.0
    for start in range(0, 12, 4):
        chunk = slice(start, start + 4)
        loss, _, state = fastrnn.loss_and_grads_onehot(
            x_index[:, chunk], state, y[:, chunk], params, backend=backend, return_state=True
        )
        state = state.copy()
        total += loss
    np.testing.assert_allclose(total, whole, rtol=1e-12)
