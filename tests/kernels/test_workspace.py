"""A Workspace gives the same results and lets repeated training steps allocate nothing."""

import tracemalloc

import numba
import numpy as np
import pytest

import fastrnn
from helpers import make_problem


def test_same_results_with_and_without_a_workspace(backend, dtype):
    x, a0, y, params = make_problem(6, 9, 5, 4, 11, dtype=dtype, seed=70)
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    ws = fastrnn.Workspace()
    for _ in range(2):  # the second call runs in reused arrays
        loss_ws, grads_ws = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workspace=ws)
        assert loss_ws == loss
        for key in grads:
            np.testing.assert_array_equal(grads_ws[key], grads[key], err_msg=key)


def test_gradients_live_in_the_workspace(backend):
    x, a0, y, params = make_problem(3, 4, 2, 2, 5, seed=71)
    ws = fastrnn.Workspace()
    _, first = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workspace=ws)
    saved = {key: value.copy() for key, value in first.items()}
    _, second = fastrnn.loss_and_grads(2 * x, a0, y, params, backend=backend, workspace=ws)
    assert np.shares_memory(first["dW_aa"], second["dW_aa"])
    assert not np.array_equal(first["dW_aa"], saved["dW_aa"])  # overwritten, as documented
    assert ws.nbytes > 0


def test_a_new_shape_reallocates(backend, dtype):
    ws = fastrnn.Workspace()
    for shape in [(3, 4, 2, 2, 5), (3, 4, 2, 3, 7), (3, 4, 2, 1, 2)]:
        x, a0, y, params = make_problem(*shape, dtype=dtype, seed=72)
        expected_loss, expected = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
        loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workspace=ws)
        assert loss == expected_loss
        for key in expected:
            np.testing.assert_array_equal(grads[key], expected[key], err_msg=f"{shape} {key}")


@pytest.mark.skipif(
    numba.config.DISABLE_JIT,
    reason="NUMBA_DISABLE_JIT=1 runs the kernels as plain Python, which makes NumPy temporaries; the promise is about compiled kernels",
)
@pytest.mark.parametrize("layout", ["C", "F"])
def test_numba_steps_with_a_workspace_allocate_nothing(layout):
    x, a0, y, params = make_problem(16, 32, 16, 8, 40, seed=73)
    if layout == "F":
        x = np.asfortranarray(x)  # then x is used in place, without a time-major copy
    ws = fastrnn.Workspace()
    fastrnn.loss_and_grads(x, a0, y, params, backend="numba", workspace=ws)
    tracemalloc.start()
    try:
        fastrnn.loss_and_grads(x, a0, y, params, backend="numba", workspace=ws)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Small Python objects (the grads dict, views) only: not even a bool array the size of x.
    assert peak < x.size, (peak, ws)


def test_workspace_of_wrong_type():
    x, a0, y, params = make_problem(3, 4, 2, 2, 5, seed=74)
    with pytest.raises(TypeError, match="workspace must be a fastrnn.Workspace"):
        fastrnn.loss_and_grads(x, a0, y, params, workspace={})
