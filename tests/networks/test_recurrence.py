"""The engine's recurrence on packed rows (``engine.recurrence``: what the PyTorch door
runs), without PyTorch: both backends agree, the gradients (the final states' included)
match central differences, and shards change nothing but rounding."""

import threading

import numpy as np
import pytest

from fastrnn import backends, packing, parallel
from fastrnn.engine import recurrence
from fastrnn.params import HIDDEN_NAMES, layer_key
from fastrnn.workspace import ScratchArrays, new_array
from helpers import BACKENDS, assert_agree, check, numeric_gradient

N_X, N_A = 3, 4
LENGTHS = np.array([5, 5, 3, 1])  # sorted, as packed rows are


def problem(num_layers, directions, lengths, dtype, seed=0):
    """Packed inputs, sorted a0, the hidden layers' params and the rows' ``packing.Rows``."""
    rng = np.random.default_rng(seed)
    m = lengths.size
    batch_sizes = np.count_nonzero(lengths[None, :] > np.arange(lengths.max())[:, None], axis=1).astype(
        np.intp
    )
    rows = packing.rows_of_batch_sizes(batch_sizes, m)
    N = int(lengths.sum())
    p = {}
    for layer in range(num_layers):
        for direction in range(directions):
            width = N_X if layer == 0 else directions * N_A
            reverse = direction == 1
            p[layer_key("W_ax", layer, reverse)] = rng.standard_normal((N_A, width)) * 0.5
            p[layer_key("W_aa", layer, reverse)] = rng.standard_normal((N_A, N_A)) * 0.5
            p[layer_key("b_a", layer, reverse)] = rng.standard_normal((N_A, 1)) * 0.1
    p = {key: value.astype(dtype) for key, value in p.items()}
    inputs = rng.standard_normal((N, N_X)).astype(dtype)
    a0 = rng.standard_normal((num_layers * directions, m, N_A)).astype(dtype)
    return inputs, a0, p, rows


def run(
    backend, inputs, a0, p, rows, d_output, d_final, num_layers, directions, workers=None, input_gradient=True,
    side_by_side=None, empty=new_array,
):  # fmt: skip
    impl = backends.resolve(backend)
    run_plan = recurrence.plan(
        workers, a0.shape[1], inputs.shape[0], N_X, N_A, num_layers, directions, backend
    )
    output, final, lower = recurrence.forward(
        impl, run_plan, inputs, a0, p, num_layers, directions, rows, "tanh", empty=empty,
        side_by_side=side_by_side,
    )  # fmt: skip
    grads = recurrence.backward(
        impl, run_plan, d_output, d_final, inputs, a0, output, lower, p, rows, "tanh", empty=empty,
        input_gradient=input_gradient, side_by_side=side_by_side,
    )  # fmt: skip
    return output, final, grads


NETWORKS = [(1, 1), (2, 2), (3, 1)]


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: f"L{n[0]}-D{n[1]}")
@pytest.mark.parametrize(
    "lengths",
    [LENGTHS, np.array([1]), np.array([1, 1, 1]), np.array([6])],
    ids=["ragged", "m1-T1", "T1", "m1"],
)
def test_backends_agree(network, lengths, dtype):
    num_layers, directions = network
    inputs, a0, p, rows = problem(num_layers, directions, lengths, dtype)
    rng = np.random.default_rng(1)
    d_output = rng.standard_normal((inputs.shape[0], directions * N_A)).astype(dtype)
    d_final = rng.standard_normal(a0.shape).astype(dtype)
    results = [
        run(backend, inputs, a0, p, rows, d_output, d_final, num_layers, directions) for backend in BACKENDS
    ]
    (out_a, final_a, grads_a), (out_b, final_b, grads_b) = results
    assert_agree(out_b, out_a, dtype, "output")
    assert_agree(final_b, final_a, dtype, "final states")
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        assert_agree(grads_b[key], grads_a[key], dtype, key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: f"L{n[0]}-D{n[1]}")
def test_gradients_match_central_differences(backend, network):
    """float64; a loss on the top layer's output and on every final state (PyTorch's h_n)."""
    num_layers, directions = network
    inputs, a0, p, rows = problem(num_layers, directions, LENGTHS, np.float64)
    rng = np.random.default_rng(2)
    w_output = rng.standard_normal((inputs.shape[0], directions * N_A))
    w_final = rng.standard_normal(a0.shape)
    impl = backends.resolve(backend)

    def loss():
        output, final, _ = recurrence.forward_rows(impl, inputs, a0, p, num_layers, directions, rows, "tanh")
        return float(np.sum(output * w_output) + np.sum(final * w_final))

    _, _, grads = run(backend, inputs, a0, p, rows, w_output, w_final, num_layers, directions)
    check(numeric_gradient(loss, inputs), grads["dx"], "dx")
    check(numeric_gradient(loss, a0), grads["da0"], "da0")
    for layer in range(num_layers):
        for direction in range(directions):
            for name in HIDDEN_NAMES:
                key = layer_key(name, layer, direction == 1)
                check(numeric_gradient(loss, p[key]), grads["d" + key], "d" + key)


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_shards_change_only_rounding(backend, workers):
    inputs, a0, p, rows = problem(2, 2, LENGTHS, np.float64)
    rng = np.random.default_rng(3)
    d_output = rng.standard_normal((inputs.shape[0], 2 * N_A))
    d_final = rng.standard_normal(a0.shape)
    one = run(backend, inputs, a0, p, rows, d_output, d_final, 2, 2, workers=1)
    several = run(backend, inputs, a0, p, rows, d_output, d_final, 2, 2, workers=workers)
    assert recurrence.plan(workers, 4, inputs.shape[0], N_X, N_A, 2, 2, backend).shards == workers
    for got, want, what in zip(several[:2], one[:2], ("output", "final states")):
        assert_agree(got, want, np.float64, what)  # the products' rounding depends on their rows
    for key in one[2]:
        assert_agree(several[2][key], one[2][key], np.float64, key)


@pytest.mark.parametrize("workers", [None, 2])
@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: f"L{n[0]}-D{n[1]}")
def test_without_the_input_gradient(backend, network, workers, dtype, monkeypatch):
    # Inputs that need no gradient (PyTorch's data): no dx, its product skipped, every
    # other gradient bitwise what the full backward pass gives, on one shard or several.
    num_layers, directions = network
    inputs, a0, p, rows = problem(num_layers, directions, LENGTHS, dtype)
    rng = np.random.default_rng(4)
    d_output = rng.standard_normal((inputs.shape[0], directions * N_A)).astype(dtype)
    d_final = rng.standard_normal(a0.shape).astype(dtype)
    arguments = (backend, inputs, a0, p, rows, d_output, d_final, num_layers, directions, workers)
    impl = backends.resolve(backend)
    calls = []

    def spy(*args, input_gradient=True, **kwargs):
        calls.append(input_gradient)
        return impl.packed_input_backward(*args, input_gradient=input_gradient, **kwargs)

    full = run(*arguments)
    # the layer loop calls the backend's DIRECTION_OPS
    monkeypatch.setattr(impl, "DIRECTION_OPS", impl.DIRECTION_OPS._replace(packed_input_backward=spy))
    without = run(*arguments, input_gradient=False)
    assert "dx" in full[2] and "dx" not in without[2]
    assert set(without[2]) == set(full[2]) - {"dx"}
    for key in without[2]:
        np.testing.assert_array_equal(without[2][key], full[2][key], err_msg=key)
    shards = 1 if workers is None else workers
    # every direction of every shard asked, and only the first layer's without dx
    assert sorted(calls) == sorted(
        [False] * directions * shards + [True] * (num_layers - 1) * directions * shards
    )


@pytest.mark.parametrize("network", [(1, 2), (2, 2), (3, 2)], ids=lambda n: f"L{n[0]}-D{n[1]}")
@pytest.mark.parametrize("lengths", [LENGTHS, np.array([6, 6, 6])], ids=["ragged", "full"])
def test_directions_side_by_side_change_nothing(backend, network, lengths, dtype):
    # A door may run a layer's two directions on two threads at once (layers.network_forward's
    # side_by_side); with the memory of its arrays bound to the calling thread (as the PyTorch
    # door does), every result is bitwise what one direction after the other gives.
    num_layers, directions = network
    inputs, a0, p, rows = problem(num_layers, directions, lengths, dtype)
    rng = np.random.default_rng(5)
    d_output = rng.standard_normal((inputs.shape[0], directions * N_A)).astype(dtype)
    d_final = rng.standard_normal(a0.shape).astype(dtype)
    arguments = (backend, inputs, a0, p, rows, d_output, d_final, num_layers, directions)
    threads_seen = []

    def side_by_side(task, count):
        def task_on_its_thread(k):
            threads_seen.append(threading.get_ident())
            return task(k)

        return parallel.run_shards(task_on_its_thread, count, count)

    scratch = ScratchArrays(("dz", "d_top", "output_l", "d_input_l", "top_states"))
    one_after_the_other = run(*arguments, empty=scratch.empty)
    together = run(*arguments, side_by_side=side_by_side, empty=scratch.bound())
    # every layer's two directions, in both passes, went to side_by_side
    assert len(threads_seen) == 2 * 2 * num_layers
    for got, want in zip(together[:2], one_after_the_other[:2]):
        np.testing.assert_array_equal(got, want)
    assert together[2].keys() == one_after_the_other[2].keys()
    for key in together[2]:
        np.testing.assert_array_equal(together[2][key], one_after_the_other[2][key], err_msg=key)


def test_default_plan_is_the_calling_thread():
    assert recurrence.plan(None, 32, 64 * 32, 65, 128, 1, 1, "numba") == parallel.Plan(1, 1, 1)
    assert recurrence.plan(None, 1, 100, 8, 16, 1, 1, "numba") == parallel.Plan(
        1, 1, None
    )  # too small for BLAS threads
