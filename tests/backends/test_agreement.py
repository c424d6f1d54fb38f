"""The Numba backend computes what the NumPy reference computes (the contract's tolerances, docs/contract.rst)."""

import numpy as np
import pytest

import fastrnn
from helpers import assert_agree, make_problem

# (n_x, n_a, n_y, m, T): degenerate sizes, both paths of the recurrent product (plain loops
# up to n_a**2 = 8192 for one sequence and m * n_a**2 = 512 for several, BLAS above), and a
# long sequence.
SHAPES = [
    (1, 1, 2, 1, 1),
    (3, 1, 2, 1, 7),
    (4, 5, 3, 1, 1),
    (4, 5, 3, 7, 1),
    (8, 16, 8, 1, 100),
    (3, 40, 3, 1, 5),
    (3, 8, 3, 4, 5),
    (6, 32, 5, 16, 9),
    (32, 64, 32, 16, 20),
    pytest.param((65, 128, 65, 32, 16), marks=pytest.mark.slow),
    pytest.param((5, 8, 4, 3, 3000), id="T=3000", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_loss_and_grads_agree(shape, dtype):
    x, a0, y, params = make_problem(*shape, dtype=dtype, seed=1)
    loss_np, grads_np = fastrnn.loss_and_grads(x, a0, y, params, backend="numpy")
    loss_nb, grads_nb = fastrnn.loss_and_grads(x, a0, y, params, backend="numba")
    assert loss_np.dtype == loss_nb.dtype == np.dtype(dtype)
    assert_agree(loss_nb, loss_np, dtype, "loss")
    assert set(grads_nb) == set(grads_np) == {"dW_ax", "dW_aa", "db_a", "dW_ya", "db_y", "dx", "da0"}
    for key in grads_np:
        assert grads_nb[key].dtype == np.dtype(dtype), key
        assert_agree(grads_nb[key], grads_np[key], dtype, key)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_agree(shape, dtype):
    x, a0, _, params = make_problem(*shape, dtype=dtype, seed=2)
    n_a, m, T = shape[1], shape[3], shape[4]
    da = np.random.default_rng(3).standard_normal((n_a, m, T)).astype(dtype)
    results = {}
    for backend in ("numpy", "numba"):
        a, y_hat, cache = fastrnn.rnn_forward(x, a0, params, backend=backend)
        results[backend] = (a, y_hat, fastrnn.rnn_backward(da, cache))
    (a_np, y_np, g_np), (a_nb, y_nb, g_nb) = results["numpy"], results["numba"]
    assert a_nb.shape == (n_a, m, T) and y_nb.shape == (shape[2], m, T)
    assert_agree(a_nb, a_np, dtype, "a")
    assert_agree(y_nb, y_np, dtype, "y_hat")
    assert set(g_nb) == set(g_np) == {"dx", "da0", "dW_ax", "dW_aa", "db_a"}
    for key in g_np:
        assert g_nb[key].shape == g_np[key].shape
        assert_agree(g_nb[key], g_np[key], dtype, key)


@pytest.mark.parametrize("shape", [(1, 1, 2, 1), (4, 5, 3, 1), (6, 32, 5, 16), (65, 128, 65, 1)], ids=str)
def test_cell_agrees(shape, dtype):
    n_x, n_a, n_y, m = shape
    rng = np.random.default_rng(4)
    params = fastrnn.init_params(n_x, n_a, n_y, seed=5, dtype=dtype)
    x_t = rng.standard_normal((n_x, m)).astype(dtype)
    a_prev = rng.standard_normal((n_a, m)).astype(dtype)
    da_t = rng.standard_normal((n_a, m)).astype(dtype)
    out = {}
    for backend in ("numpy", "numba"):
        a_t, y_hat_t, cache = fastrnn.rnn_cell_forward(x_t, a_prev, params, backend=backend)
        out[backend] = (a_t, y_hat_t, fastrnn.rnn_cell_backward(da_t, cache))
    (a_np, y_np, g_np), (a_nb, y_nb, g_nb) = out["numpy"], out["numba"]
    assert a_nb.shape == (n_a, m) and y_nb.shape == (n_y, m)
    assert_agree(a_nb, a_np, dtype, "a_t")
    assert_agree(y_nb, y_np, dtype, "y_hat_t")
    assert set(g_nb) == {"dx_t", "da_prev", "dW_ax", "dW_aa", "db_a"}
    for key in g_np:
        assert_agree(g_nb[key], g_np[key], dtype, key)


def test_cell_is_one_step_of_the_forward_pass(backend, dtype):
    x, a0, _, params = make_problem(4, 6, 3, 2, 3, dtype=dtype, seed=6)
    a, y_hat, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    a_prev = a0
    for t in range(3):
        a_t, y_hat_t, _ = fastrnn.rnn_cell_forward(x[:, :, t], a_prev, params, backend=backend)
        assert_agree(a_t, a[:, :, t], dtype, f"a<{t + 1}>")
        assert_agree(y_hat_t, y_hat[:, :, t], dtype, f"y_hat<{t + 1}>")
        a_prev = a_t


def test_cell_inputs_of_any_layout_give_the_same_step(dtype):
    """The Numba cell runs one compiled variant: read-only inputs (a loop of cells passes
    a_t back as a_prev; a cache's params are read-only) and strided ones are taken as
    they are or copied first, with the same results as contiguous, writable inputs."""
    from fastrnn.backends import numba_kernels

    x, a0, _, params = make_problem(4, 6, 3, 2, 3, dtype=dtype, seed=9)
    a_t, y_hat_t, cache = fastrnn.rnn_cell_forward(
        np.ascontiguousarray(x[:, :, 0]), a0, params, backend="numba"
    )
    assert not a_t.flags.writeable and not cache.params["W_aa"].flags.writeable
    expected = fastrnn.rnn_cell_forward(x[:, :, 1].copy(), a_t.copy(), params, backend="numba")
    variants = [
        (x[:, :, 1], a_t, params),  # strided x_t, read-only a_prev
        (np.asfortranarray(x[:, :, 1]), np.asfortranarray(a_t), cache.params),  # read-only params
    ]
    for x_t, a_prev, p in variants:
        got = fastrnn.rnn_cell_forward(x_t, a_prev, p, backend="numba")
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    if hasattr(numba_kernels.cell_forward_kernel, "signatures"):  # not under NUMBA_DISABLE_JIT=1
        signatures = [
            sig for sig in numba_kernels.cell_forward_kernel.signatures if str(np.dtype(dtype)) in str(sig[0])
        ]
        assert len(signatures) == 1, signatures


def test_softmax_columns_sum_to_one(backend, dtype):
    x, a0, _, params = make_problem(5, 7, 6, 3, 4, dtype=dtype, seed=7)
    _, y_hat, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    np.testing.assert_allclose(y_hat.sum(axis=0), 1.0, rtol=1e-5)
    assert (y_hat >= 0).all()


def test_dtype_is_the_params_dtype(backend, dtype):
    # Inputs of another dtype (here float16 x and int a0) are cast to the params' dtype.
    x, a0, y, params = make_problem(3, 4, 2, 2, 3, dtype=dtype, seed=8)
    loss, grads = fastrnn.loss_and_grads(
        x.astype(np.float16), np.zeros((4, 2), dtype=int), y, params, backend=backend
    )
    assert loss.dtype == np.dtype(dtype)
    assert all(g.dtype == np.dtype(dtype) for g in grads.values())
    a, y_hat, _ = fastrnn.rnn_forward(x.astype(np.float16), a0, params, backend=backend)
    assert a.dtype == y_hat.dtype == np.dtype(dtype)


def test_inputs_in_any_memory_order_give_the_same_result(backend):
    x, a0, y, params = make_problem(4, 6, 3, 5, 7, seed=9)
    reference = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    variants = {
        "fortran": (np.asfortranarray(x), np.asfortranarray(a0), np.asfortranarray(y)),
        "strided": (
            np.repeat(x, 2, axis=1)[:, ::2],
            np.repeat(a0, 2, axis=1)[:, ::2],
            np.repeat(y, 2, axis=0)[::2],
        ),
        "lists": (x.tolist(), a0.tolist(), y.tolist()),
    }
    for name, (xv, a0v, yv) in variants.items():
        loss, grads = fastrnn.loss_and_grads(xv, a0v, yv, params, backend=backend)
        assert loss == reference[0], name
        for key in grads:
            np.testing.assert_array_equal(grads[key], reference[1][key], err_msg=f"{name}: {key}")


def test_repeated_calls_are_bitwise_identical(backend, dtype):
    x, a0, y, params = make_problem(8, 16, 8, 4, 30, dtype=dtype, seed=10)
    first = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    second = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    assert first[0] == second[0]
    for key in first[1]:
        np.testing.assert_array_equal(first[1][key], second[1][key])


def test_loss_is_finite_for_huge_logits(backend, dtype):
    # Logits of order 1e4 (float32) / 1e30 (float64): exp overflows unless shifted per row.
    x, a0, y, params = make_problem(3, 4, 5, 2, 3, dtype=dtype, seed=11)
    params["W_ya"] = params["W_ya"] * dtype(1e4 if dtype == np.float32 else 1e30)
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    assert np.isfinite(loss) and loss > 0
    assert all(np.isfinite(g).all() for g in grads.values())
    _, y_hat, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    assert np.isfinite(y_hat).all()
    np.testing.assert_allclose(y_hat.sum(axis=0), 1.0, rtol=1e-5)
