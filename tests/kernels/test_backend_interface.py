"""The backends are interchangeable modules, and the Numba backend calls its kernels with
their arguments in the kernels' order (17 positional arguments may not drift)."""

import inspect
import types

import numpy as np
import pytest

import fastrnn
from fastrnn.backends import numba_backend, numba_kernels, numpy_backend
from helpers import make_problem

INTERFACE = [
    "forward", "cell_forward", "backward", "loss_and_grads", "sequence_losses", "sgd_update", "adagrad_update", "adam_update",
    "clip_by_value", "max_abs", "sum_of_squares", "scale",
    "make_packing", "pack_rows", "unpack_rows", "packed_forward_outputs", "packed_backward_grads",
    "packed_loss_and_grads", "packed_sequence_losses", "stream_step", "generate",
]  # fmt: skip


def test_only_the_numba_backend_has_a_lean_lane():
    """``checked_loss_and_grads`` and ``checked_sequence_losses`` (``fastrnn.engine.lean``):
    functions in the Numba backend, None in the NumPy reference, which always takes the
    full path."""
    assert numpy_backend.checked_loss_and_grads is None and numpy_backend.checked_sequence_losses is None
    assert list(inspect.signature(numba_backend.checked_loss_and_grads).parameters) == [
        "inputs", "a0", "y", "p", "nonlinearity", "empty",
    ]  # fmt: skip
    assert list(inspect.signature(numba_backend.checked_sequence_losses).parameters) == [
        "inputs", "a0", "y", "p", "nonlinearity",
    ]  # fmt: skip


@pytest.mark.parametrize("name", INTERFACE)
def test_both_backends_have_the_same_functions(name):
    numpy_signature = inspect.signature(getattr(numpy_backend, name))
    numba_signature = inspect.signature(getattr(numba_backend, name))
    assert list(numpy_signature.parameters) == list(numba_signature.parameters), name
    assert {numpy_backend.NAME, numba_backend.NAME} == {"numpy", "numba"}
    assert isinstance(numpy_backend.RESULTS_IN_WORKSPACE, bool) and isinstance(
        numba_backend.RESULTS_IN_WORKSPACE, bool
    )


N_X, N_A, N_Y, M, T = 3, 5, 4, 2, 7  # every size distinct, so that shapes tell arrays apart
EXPECTED_SHAPES = {
    "xs": (T, M, N_X), "x_index": (T, M), "labels": (T, M), "dx": (T, M, N_X), "dz": (T, M, N_A),
    "W_ax": (N_A, N_X), "W_aa": (N_A, N_A), "b_a": (N_A, 1), "W_ya": (N_Y, N_A), "b_y": (N_Y, 1),
    "dW_ax": (N_A, N_X), "dW_aa": (N_A, N_A), "db_a": (N_A, 1), "dW_ya": (N_Y, N_A), "db_y": (N_Y, 1),
    "dW_ax_T": (N_X, N_A), "h": (T + 1, M, N_A), "logits": (T, M, N_Y), "y_hat": (T, M, N_Y),
    "da0": (M, N_A), "losses": (M,),
}  # fmt: skip
FLAT = {"dz_buffer", "scratch"}  # one-dimensional buffers, sized by numba_backend


ENTRY_POINTS = (
    "forward_kernel",
    "backward_kernel",
    "loss_and_grads_kernel",
    "loss_and_grads_onehot_kernel",
    "sequence_losses_kernel",
    "sequence_losses_onehot_kernel",
    "checked_step_inputs_into",
    "checked_onehot_step_inputs_into",
)  # the kernels numba_backend calls
# The lean lane's kernels take the seed's layout (engine.lean): their own names and shapes.
SEED_LAYOUT_SHAPES = {"x": (N_X, M, T), "x_index": (M, T), "a0": (N_A, M), "y": (M, T), "index": (T, M)}


def _recording_kernels(calls, entry_points=ENTRY_POINTS):
    """A stand-in for the kernels module: each entry point binds its arguments to the real
    kernel's parameter names, records them, then runs the real kernel."""
    fake = types.SimpleNamespace(**vars(numba_kernels))
    for name in entry_points:
        real = getattr(numba_kernels, name)
        signature = inspect.signature(getattr(real, "py_func", real))

        def record(*args, real=real, signature=signature, name=name):
            calls[name] = signature.bind(*args).arguments
            return real(*args)

        setattr(fake, name, record)
    return fake


def test_kernels_get_each_argument_under_its_own_name(monkeypatch):
    calls = {}
    monkeypatch.setattr(numba_backend, "kernels", _recording_kernels(calls))
    x, a0, y, params = make_problem(N_X, N_A, N_Y, M, T, seed=600)
    x_index = np.random.default_rng(600).integers(0, N_X, size=(M, T))
    relu = dict(backend="numba", workers=1, nonlinearity="relu")  # relu: the flag must arrive as True
    for workspace in (None, fastrnn.Workspace()):  # the lean lane (engine.lean), then the full path
        fastrnn.loss_and_grads(x, a0, y, params, workspace=workspace, **relu)
        fastrnn.loss_and_grads_onehot(x_index, a0, y, params, workspace=workspace, **relu)
    a, _, cache = fastrnn.rnn_forward(x, a0, params, **relu)
    fastrnn.rnn_backward(np.ones(a.shape), cache)
    fastrnn.loss(x, a0, y, params, **relu)
    fastrnn.loss_onehot(x_index, a0, y, params, **relu)
    assert set(calls) == set(ENTRY_POINTS)  # every entry point was called
    for kernel, arguments in calls.items():
        seed_layout = kernel.startswith("checked_")  # the lean lane's
        shapes = {**EXPECTED_SHAPES, **SEED_LAYOUT_SHAPES} if seed_layout else EXPECTED_SHAPES
        for name, value in arguments.items():
            if name == "batch_size":
                assert value == M, kernel
            elif name == "relu":
                assert value is True, kernel
            elif name in FLAT:
                assert value.ndim == 1, (kernel, name)
            else:
                assert name in shapes, (kernel, name)
                assert value.shape == shapes[name], (kernel, name, value.shape)


PACKED_ENTRY_POINTS = ("packed_loss_and_grads_kernel", "packed_loss_and_grads_onehot_kernel")
LENGTHS = np.array([4, T, 1])  # unsorted, one full, one of a single step
N = int(LENGTHS.sum())


def test_packed_kernels_get_each_argument_under_its_own_name(monkeypatch):
    calls = {}
    monkeypatch.setattr(numba_backend, "kernels", _recording_kernels(calls, PACKED_ENTRY_POINTS))
    x, _, y, params = make_problem(N_X, N_A, N_Y, 3, T, seed=601)
    x_index = np.random.default_rng(601).integers(0, N_X, size=(3, T))
    options = dict(backend="numba", workers=1, nonlinearity="relu", lengths=LENGTHS)
    expected = {
        "xs": (N, N_X), "index": (N,), "labels": (N,), "a0": (3, N_A), "batch_sizes": (T,), "offsets": (T + 1,),
        "last_rows": (3,), "h": (N, N_A), "dz": (N, N_A), "logits": (N, N_Y), "final": (3, N_A), "da0": (3, N_A),
        "dx": (N, N_X), "dW_ax_T": (N_X, N_A),
    }  # fmt: skip
    for call in (fastrnn.loss_and_grads, fastrnn.loss_and_grads_onehot):
        calls.clear()
        call(x if call is fastrnn.loss_and_grads else x_index, None, y, params, **options)
        ((kernel, arguments),) = calls.items()
        for name, value in arguments.items():
            if name in ("batch_size", "one_per_sequence", "relu"):
                assert value == {"batch_size": 3, "one_per_sequence": False, "relu": True}[name], (
                    kernel,
                    name,
                )
            elif name == "scratch":
                assert value.ndim == 1, kernel
            elif name in expected:
                assert value.shape == expected[name], (kernel, name, value.shape)
            else:
                assert value.shape == EXPECTED_SHAPES[name], (kernel, name, value.shape)
    assert set(PACKED_ENTRY_POINTS) >= set(calls)


STEP_ENTRY_POINTS = ("stream_step_index_kernel", "stream_step_dense_kernel", "generate_kernel")


def test_step_kernels_get_each_argument_under_its_own_name(monkeypatch):
    calls = {}
    monkeypatch.setattr(numba_backend, "kernels", _recording_kernels(calls, STEP_ENTRY_POINTS))
    layers, m, n_steps = 3, 2, 4
    params = fastrnn.init_params(N_X, N_A, N_X, num_layers=layers, seed=602)
    model = fastrnn.RNN.from_params(params, backend="numba", nonlinearity="relu")
    stream = model.stream(batch=m)
    stream.step(np.array([0, 2]))
    stream.step(np.ones((N_X, m)))
    model.generate(n_steps, prime=[1], n_samples=m, seed=0, top_k=2, top_p=0.5, stop=1)
    assert set(calls) == set(STEP_ENTRY_POINTS)
    expected = {
        "index": (m,), "x": (N_X, m), "feed": (m,), "running": (m,), "previous": (layers, m, N_A),
        "states": (layers, m, N_A), "W_ax_T": (N_X, N_A), "W_ax_T_upper": (layers - 1, N_A, N_A),
        "W_aa_T": (layers, N_A, N_A), "b_a": (layers, N_A), "W_ya_T": (N_A, N_X), "b_y": (N_X,),
        "z": (m, N_A), "rec": (m, N_A), "out": (m, N_X), "logits": (m, N_X), "weights": (N_X,), "order": (N_X,),
        "uniforms": (n_steps, m), "symbols": (m, n_steps), "lengths": (m,),
    }  # fmt: skip
    scalars = {"relu": True, "probabilities": True, "temperature": 1.0, "top_k": 2, "top_p": 0.5, "stop": 1}
    for kernel, arguments in calls.items():
        for name, value in arguments.items():
            if name in scalars:
                assert value == scalars[name] and type(value) is type(scalars[name]), (kernel, name, value)
            else:
                assert value.shape == expected[name], (kernel, name, value.shape)
