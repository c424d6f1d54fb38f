"""Arrays as users make them, threads, determinism and extreme values (both backends)."""

import concurrent.futures
import subprocess
import sys
import textwrap
import tracemalloc

import numba
import numpy as np
import pytest

import fastrnn
from fastrnn.backends import numba_kernels
from helpers import assert_agree, assert_identical, make_problem

SHAPE = (4, 6, 5, 3, 7)  # n_x, n_a, n_y, m, T


def _reference(backend, dtype=np.float64):
    x, a0, y, params = make_problem(*SHAPE, dtype=dtype, seed=100)
    return (x, a0, y, params), fastrnn.loss_and_grads(x, a0, y, params, backend=backend)


def _strided(a, axis):
    """``a`` as a view with a step of 2 along ``axis`` (same values)."""
    doubled = np.repeat(a, 2, axis=axis)
    index = [slice(None)] * a.ndim
    index[axis] = slice(None, None, 2)
    return doubled[tuple(index)]


def _reversed_view(a, axis):
    """``a`` as a view with a negative stride along ``axis`` (same values)."""
    flipped = np.flip(a, axis=axis).copy()
    return np.flip(flipped, axis=axis)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


X_LAYOUTS = {
    "fortran": np.asfortranarray,
    "moved-axes": lambda x: np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 2, 0)), 0, 2),
    "read-only": _read_only,
    "list": lambda x: x.tolist(),
    **{f"step-2-axis-{k}": (lambda x, k=k: _strided(x, k)) for k in range(3)},
    **{f"negative-stride-axis-{k}": (lambda x, k=k: _reversed_view(x, k)) for k in range(3)},
}


@pytest.mark.parametrize("layout", list(X_LAYOUTS))
def test_x_and_a0_in_any_layout(backend, layout):
    (x, a0, y, params), expected = _reference(backend)
    change = X_LAYOUTS[layout]
    x2 = change(x)
    a0_layouts = {"fortran": np.asfortranarray, "read-only": _read_only, "list": lambda a: a.tolist()}
    a02 = a0_layouts.get(layout, lambda a: _reversed_view(a, 1))(a0)
    assert_identical(fastrnn.loss_and_grads(x2, a02, y, params, backend=backend), expected, layout)
    a, y_hat, _ = fastrnn.rnn_forward(x2, a02, params, backend=backend)
    a_ref, y_hat_ref, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    np.testing.assert_array_equal(a, a_ref)
    np.testing.assert_array_equal(y_hat, y_hat_ref)


@pytest.mark.parametrize(
    "dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.intp]
)
def test_labels_of_any_integer_dtype(backend, dtype):
    (x, a0, y, params), expected = _reference(backend)
    assert_identical(
        fastrnn.loss_and_grads(x, a0, y.astype(dtype), params, backend=backend),
        expected,
        np.dtype(dtype).name,
    )


@pytest.mark.parametrize("layout", ["fortran", "negative-stride", "read-only", "list"])
def test_labels_and_indices_in_any_layout(backend, layout):
    (x, a0, y, params), expected = _reference(backend)
    change = {
        "fortran": np.asfortranarray,
        "negative-stride": lambda a: _reversed_view(a, 1),
        "read-only": _read_only,
        "list": lambda a: a.tolist(),
    }[layout]
    assert_identical(fastrnn.loss_and_grads(x, a0, change(y), params, backend=backend), expected, layout)
    x_index = np.random.default_rng(101).integers(0, SHAPE[0], size=y.shape)
    one_hot = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend)
    assert_identical(
        fastrnn.loss_and_grads_onehot(change(x_index), a0, change(y), params, backend=backend),
        one_hot,
        layout,
    )


@pytest.mark.parametrize("layout", ["fortran", "strided", "read-only"])
def test_params_in_any_layout(backend, layout):
    (x, a0, y, params), expected = _reference(backend)
    change = {"fortran": np.asfortranarray, "strided": lambda a: _strided(a, 0), "read-only": _read_only}[
        layout
    ]
    assert_identical(
        fastrnn.loss_and_grads(x, a0, y, {k: change(v) for k, v in params.items()}, backend=backend),
        expected,
        layout,
    )


# -- threads ------------------------------------------------------------------------------


@pytest.mark.skipif(
    numba.config.DISABLE_JIT, reason="NUMBA_DISABLE_JIT=1: nothing is compiled, so no kernel has a GIL option"
)
def test_every_kernel_releases_the_gil():
    dispatchers = [
        obj
        for obj in vars(numba_kernels).values()
        if hasattr(obj, "targetoptions") and hasattr(obj, "py_func")
    ]
    compiled_entry_points = [d for d in dispatchers if not d.targetoptions.get("inline") == "always"]
    assert len(compiled_entry_points) >= 10, [d.__name__ for d in dispatchers]
    for dispatcher in compiled_entry_points:
        assert dispatcher.targetoptions.get("nogil") is True, dispatcher.__name__


@pytest.mark.parametrize("use_workspaces", [False, True], ids=["fresh-arrays", "workspace-per-thread"])
def test_concurrent_calls_match_sequential_ones(backend, use_workspaces):
    problems = [
        make_problem(8, 24, 8, 4, 30, dtype=dtype, seed=110 + k)
        for k, dtype in enumerate([np.float64, np.float32] * 6)
    ]
    sequential = [fastrnn.loss_and_grads(*p, backend=backend) for p in problems]
    sequential = [(loss, {k: v.copy() for k, v in grads.items()}) for loss, grads in sequential]

    def work(k):
        workspace = fastrnn.Workspace() if use_workspaces else None
        results = []
        for _ in range(5):
            loss, grads = fastrnn.loss_and_grads(*problems[k], backend=backend, workspace=workspace)
            results.append((loss, {key: value.copy() for key, value in grads.items()}))
        return results

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(work, range(len(problems))))
    for k, results in enumerate(outcomes):
        for result in results:
            assert_identical(result, sequential[k], f"problem {k}")


# -- determinism ---------------------------------------------------------------------------


def test_blas_thread_count_changes_at_most_the_last_bits():
    # With another BLAS thread count a matrix product may sum in another order: results
    # may differ in the last bits (so bitwise equality is only promised at equal thread
    # counts, docs/robustness.md), but must stay within the contract's tolerances.
    script = textwrap.dedent(
        """
        import sys, numpy as np, fastrnn
        from fastrnn.problems import make_problem
        loss, grads = fastrnn.loss_and_grads(*make_problem(64, 256, 64, 32, 20, seed=121), backend="numba")
        np.savez(sys.argv[1], loss=loss, **grads)
        """
    )
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        outputs = []
        for threads in ("1", "2"):
            path = f"{folder}/{threads}.npz"
            env = dict(os.environ, OPENBLAS_NUM_THREADS=threads)
            result = subprocess.run(
                [sys.executable, "-c", script, path], capture_output=True, text=True, timeout=300, env=env
            )
            assert result.returncode == 0, result.stderr
            outputs.append(dict(np.load(path)))
    for key in outputs[0]:
        assert_agree(outputs[1][key], outputs[0][key], np.float64, key)


# -- extremes ------------------------------------------------------------------------------


def test_saturated_tanh(backend, dtype):
    x, a0, y, params = make_problem(*SHAPE, dtype=dtype, seed=130)
    params["W_ax"] = params["W_ax"] * dtype(1e3)
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    a, _, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
    assert np.abs(a).max() <= 1 and np.mean(np.abs(a) == 1) > 0.5  # mostly saturated


def test_weights_of_1e3(backend, dtype):
    x, a0, y, params = make_problem(*SHAPE, dtype=dtype, seed=131)
    params = {k: v * dtype(1e3) for k, v in params.items()}
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
    other = fastrnn.loss_and_grads(x, a0, y, params, backend="numpy" if backend == "numba" else "numba")
    assert_agree(loss, other[0], dtype, "loss")


def test_logits_near_the_float32_limit_and_beyond(backend):
    x, a0, y, params = make_problem(3, 4, 5, 2, 3, dtype=np.float32, seed=132)
    params["W_aa"][:] = 0
    params["W_ax"][:] = 0
    params["b_a"][:] = 10.0  # a = tanh(10) = 1 exactly in float32: logits = sum of W_ya rows
    params["W_ya"][:] = np.float32(1e37) * np.array([[1], [-1], [2], [0.5], [-3]], np.float32)
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)  # logits up to 8e37
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
    params["W_ya"][:] = np.float32(1e38)  # 4 * 1e38 overflows float32
    with pytest.raises(fastrnn.NonFiniteResultError, match="overflows float32"):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)


def test_every_operation_reports_its_own_overflow(backend):
    """Each backend scans what it computes; the API turns a non-finite result of finite
    inputs into NonFiniteResultError, for every public operation."""
    x, a0, y, params = make_problem(3, 4, 5, 4, 3, dtype=np.float32, seed=133)
    params["W_aa"][:] = 0
    params["W_ax"][:] = 0
    params["b_a"][:] = 10.0
    params["W_ya"][:] = np.float32(1e38)  # logits of 4e38: inf
    for workers in (1, 2):
        with pytest.raises(fastrnn.NonFiniteResultError, match="rnn_forward"):
            fastrnn.rnn_forward(x, a0, params, backend=backend, workers=workers)
    with pytest.raises(fastrnn.NonFiniteResultError, match="rnn_cell_forward"):
        fastrnn.rnn_cell_forward(x[:, :, 0], a0, params, backend=backend)
    x, a0, y, params = make_problem(3, 4, 5, 4, 3, dtype=np.float32, seed=134)
    a, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend)
    with pytest.raises(fastrnn.NonFiniteResultError, match="rnn_backward"):
        fastrnn.rnn_backward(np.full(a.shape, 3e38, np.float32), cache)  # finite, but the sums are not
    a_t, _, cell = fastrnn.rnn_cell_forward(x[:, :, 0], a0, params, backend=backend)
    with pytest.raises(fastrnn.NonFiniteResultError, match="rnn_cell_backward"):
        fastrnn.rnn_cell_backward(np.full(a_t.shape, 3e38, np.float32), cell)


@pytest.mark.slow
def test_a_sequence_of_100000_steps():
    x_index = np.random.default_rng(140).integers(0, 4, size=(1, 100_000))
    y = np.roll(x_index, -1, axis=1)
    params = fastrnn.init_params(4, 8, 4, seed=141)
    results = {
        b: fastrnn.loss_and_grads_onehot(x_index, np.zeros((8, 1)), y, params, backend=b)
        for b in ("numpy", "numba")
    }
    for key in results["numpy"][1]:
        assert np.isfinite(results["numba"][1][key]).all()
        assert_agree(results["numba"][1][key], results["numpy"][1][key], np.float64, key)


@pytest.mark.slow
def test_a_batch_of_10000(backend):
    x, a0, y, params = make_problem(4, 8, 4, 10_000, 3, seed=142)
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    assert np.isfinite(loss) and grads["dx"].shape == (4, 10_000, 3)


@pytest.mark.slow
def test_memory_grows_linearly_with_T():
    params = fastrnn.init_params(8, 16, 8, seed=143)

    def peak(T):
        x, a0, y, _ = make_problem(8, 16, 8, 2, T, seed=144)
        tracemalloc.start()
        try:
            fastrnn.loss_and_grads(x, a0, y, params, backend="numba")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(5_000), peak(50_000)
    assert 9 < large / small < 11, (small, large)
    # And it matches the formula of docs/robustness.md within 5%: itemsize * ((T+1) m n_a + T m (n_a + n_y + n_x)) + labels
    n_x, n_a, n_y, m, T = 8, 16, 8, 2, 50_000
    formula = 8 * ((T + 1) * m * n_a + T * m * (n_a + n_y + n_x)) + 8 * T * m
    assert abs(large - formula) / formula < 0.05, (large, formula)
