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


def test_workspace_holds_its_arrays_and_its_shards():
    ws = fastrnn.Workspace()
    own, shard = ws.empty("a", (3, 4), np.float64), ws.shard(1).empty("b", (5,), np.float32)
    assert ws.holds(own) and ws.holds(own[1:].T) and ws.holds(shard)
    assert not ws.holds(np.zeros(3)) and not ws.shard(0).holds(shard)


_NETWORK_CASES = {  # num_layers, bidirectional, lengths, one-hot inputs, workers
    "2 layers bidirectional ragged": (2, True, "ragged", False, 1),
    "1 layer ragged": (1, False, "ragged", False, 1),
    "1 layer ragged one-hot, 2 workers": (1, False, "ragged", True, 2),
    "2 layers full length, 2 workers": (2, True, "full", False, 2),
    "3 layers ragged one-hot": (3, False, "ragged", True, 1),
    "bidirectional sequence labels, 2 workers": (1, True, "ragged", False, 2),
}


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="plain-Python kernels allocate NumPy temporaries")
@pytest.mark.parametrize("case", list(_NETWORK_CASES))
def test_a_network_step_in_a_workspace_allocates_nothing_of_its_size(case):
    """Layers, directions and lengths (the packed path): with a workspace, a repeated step
    allocates nothing the size of its arrays.  What remains is Python objects and the
    argument checks of labels with lengths (a mask of the padding, m * T bytes)."""
    from helpers import random_network

    num_layers, bidirectional, lengths_kind, one_hot, workers = _NETWORK_CASES[case]
    labels = "sequence" if "sequence labels" in case else "step"
    params, x, x_index, a0, y, lengths = random_network(
        32, 48, 8, 48, 80, num_layers=num_layers, bidirectional=bidirectional, lengths_kind=lengths_kind,
        labels=labels, seed=3,
    )  # fmt: skip
    inputs, step = (x_index, fastrnn.loss_and_grads_onehot) if one_hot else (x, fastrnn.loss_and_grads)

    def peak(workspace):
        call = lambda: step(inputs, a0, y, params, workspace=workspace, lengths=lengths, workers=workers)  # noqa: E731
        call()
        tracemalloc.start()
        try:
            call()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    ws = fastrnn.Workspace()
    peak(ws)  # the workspace's arrays are made
    with_workspace, without = peak(ws), peak(None)
    # One float array of the step's size (N rows of n_a, N ~ m * T / 2) is 192 * m * T
    # bytes here; the checks' masks of labels and indices are a few m * T bytes.
    m, T = y.shape[0], x.shape[2]
    assert with_workspace < 32 * m * T, (with_workspace, m * T)
    assert without > 10 * with_workspace, (with_workspace, without)


def test_scratch_arrays_reuse_their_named_memory_in_each_thread():
    import threading

    from fastrnn.workspace import ScratchArrays

    scratch = ScratchArrays(("dz", "d_top"))
    dz = scratch.empty("dz_l0", (6, 4), np.float64)
    assert dz.shape == (6, 4) and dz.flags.c_contiguous
    # Asked again, or for fewer rows: the same memory; for more, new memory kept from then on.
    assert np.shares_memory(scratch.empty("dz_l0", (6, 4), np.float64), dz)
    assert np.shares_memory(scratch.empty("dz_l0", (3, 4), np.float64), dz)
    bigger = scratch.empty("dz_l0", (8, 4), np.float64)
    assert not np.shares_memory(bigger, dz)
    assert np.shares_memory(scratch.empty("dz_l0", (2, 4), np.float64), bigger)
    # Each name and dtype has its own; other names are new arrays every call.
    assert not np.shares_memory(scratch.empty("dz_l1", (6, 4), np.float64), bigger)
    assert scratch.empty("dz_l0", (6, 4), np.float32).dtype == np.float32
    dW = scratch.empty("dW_aa", (4, 4), np.float64)
    assert not np.shares_memory(scratch.empty("dW_aa", (4, 4), np.float64), dW)
    # Another thread never gets this thread's memory.
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(scratch.empty("dz_l0", (2, 4), np.float64)))
    worker.start()
    worker.join(timeout=60)
    assert theirs and not np.shares_memory(theirs[0], bigger)


def test_bound_scratch_arrays_are_the_calling_threads_from_any_thread():
    # What a call hands to another thread and reads after it (a layer's directions side by
    # side): the arrays come from the caller's memory, never the helper thread's own.
    import threading

    from fastrnn.workspace import ScratchArrays

    scratch = ScratchArrays(("dz",))
    mine = scratch.empty("dz_l0", (6, 4), np.float64)
    bound = scratch.bound()
    got = {}

    def helper():
        got["bound"] = bound("dz_l0", (6, 4), np.float64)
        got["own"] = scratch.empty("dz_l0", (6, 4), np.float64)
        got["other name"] = bound("dz_l0_reverse", (6, 4), np.float64)
        got["not scratch"] = bound("dW_aa", (4, 4), np.float64)

    worker = threading.Thread(target=helper)
    worker.start()
    worker.join(timeout=60)
    assert np.shares_memory(got["bound"], mine)
    assert not np.shares_memory(got["own"], mine)
    # a name first asked for on the helper thread is kept for the caller
    assert np.shares_memory(scratch.empty("dz_l0_reverse", (6, 4), np.float64), got["other name"])
    assert not np.shares_memory(scratch.empty("dz_l0_reverse", (6, 4), np.float64), got["own"])
    assert got["not scratch"].shape == (4, 4) and not np.shares_memory(got["not scratch"], mine)
