"""The lean lane (``fastrnn.engine.lean``): a small training step or loss, its checks in a
kernel.  It must change neither a result nor an error, only the time: every test here
compares a call through the lane with the same call on the full path."""

import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import engine
from fastrnn.backends import numba_backend, numba_kernels
from helpers import assert_identical, copy_results, make_problem

STEPS = {"dense": fastrnn.loss_and_grads, "one-hot": fastrnn.loss_and_grads_onehot}
LOSSES = {"dense": fastrnn.loss, "one-hot": fastrnn.loss_onehot}
SHAPES = [(8, 16, 8, 1, 100), (3, 5, 4, 2, 7), (3, 5, 4, 1, 1), (1, 1, 1, 1, 1), (5, 40, 6, 3, 9)]


def _inputs(kind, shape, dtype=np.float64, seed=0):
    x, a0, y, params = make_problem(*shape, dtype=dtype, seed=seed)
    if kind == "one-hot":
        x = np.random.default_rng(seed).integers(0, shape[0], size=(shape[3], shape[4]))
    return x, a0, y, params


LANES = ("loss_and_grads", "losses")  # engine.lean's entry points


@pytest.fixture
def lane_calls(monkeypatch):
    """The calls the lane took (its results, None where it declined)."""
    taken = []
    for name in LANES:
        real = getattr(engine.lean, name)

        def spy(*args, real=real):
            taken.append(real(*args))
            return taken[-1]

        monkeypatch.setattr(engine.lean, name, spy)
    return taken


def _full_path(monkeypatch):
    """Turn the lane off: every call takes the full path."""
    for name in LANES:
        monkeypatch.setattr(engine.lean, name, lambda *args: None)


def _copied(result):
    """A call's results, copied: a training step's ``(loss, grads[, state])``, or a loss's
    value or ``(value, state)``."""
    if isinstance(result, tuple) and isinstance(result[1], dict):
        return copy_results(result)
    return tuple(np.copy(value) for value in result) if isinstance(result, tuple) else np.copy(result)


def _both_ways(monkeypatch, step, *args, **kwargs):
    """``step(*args, **kwargs)`` through the lane, then on the full path (copied results, or
    the exception each raised)."""
    outcomes = []
    for lane in (True, False):
        with monkeypatch.context() as patch:
            if not lane:
                _full_path(patch)
            try:
                outcomes.append(_copied(step(*args, **kwargs)))
            except Exception as error:  # noqa: BLE001  (compared below)
                outcomes.append(error)
    return outcomes


def _through_the_lane(monkeypatch, lane_calls, function, *args, **kwargs):
    """``_both_ways``, for a call the lane must take (asserted: it took exactly that one)."""
    lane_calls.clear()
    outcomes = _both_ways(monkeypatch, function, *args, **kwargs)
    assert len(lane_calls) == 1 and lane_calls[0] is not None, "the lane did not take the call"
    return outcomes


def _assert_same_loss(result, expected, what):
    """Two ``loss`` results, bitwise, with the same types, dtypes and shapes."""
    result, expected = (result, expected) if isinstance(expected, tuple) else ((result,), (expected,))
    for value, wanted in zip(result, expected, strict=True):
        assert type(value) is type(wanted) and value.dtype == wanted.dtype and value.shape == wanted.shape, (
            what
        )
        np.testing.assert_array_equal(value, wanted, err_msg=what)


@pytest.mark.parametrize("kind", STEPS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_the_lane_gives_the_full_paths_results_bitwise(
    monkeypatch, lane_calls, kind, shape, nonlinearity, dtype
):
    x, a0, y, params = _inputs(kind, shape, dtype)
    for initial in (a0, None):
        for return_state in (False, True):
            options = dict(backend="numba", nonlinearity=nonlinearity, return_state=return_state)
            through_lane, full = _through_the_lane(
                monkeypatch, lane_calls, STEPS[kind], x, initial, y, params, **options
            )
            assert_identical(
                through_lane, full, f"{kind} {shape} a0={'given' if initial is not None else None}"
            )
            if return_state:
                np.testing.assert_array_equal(through_lane[2], full[2])
            for key, value in through_lane[1].items():  # the same public shapes and dtypes
                assert value.shape == full[1][key].shape and value.dtype == full[1][key].dtype, key
            assert type(through_lane[0]) is type(full[0]) is np.dtype(dtype).type


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_lane_gives_the_full_paths_losses_bitwise(monkeypatch, lane_calls, kind, shape, dtype):
    x, a0, y, params = _inputs(kind, shape, dtype, seed=1)
    for initial in (a0, None):
        for per_sequence in (False, True):
            for return_state in (False, True):
                options = dict(backend="numba", per_sequence=per_sequence, return_state=return_state)
                through_lane, full = _through_the_lane(
                    monkeypatch, lane_calls, LOSSES[kind], x, initial, y, params, **options
                )
                _assert_same_loss(through_lane, full, f"{kind} {shape} {options}")


@pytest.mark.parametrize("kind", STEPS)
def test_a_carried_state_takes_the_lane(monkeypatch, lane_calls, kind):
    """Truncated BPTT: the state a call returns (a transposed view), passed as the next
    call's ``a0``, is copied for the kernel, with the full path's results; so is a
    read-only ``a0``."""
    x, a0, y, params = _inputs(kind, (3, 5, 4, 2, 7), seed=10)
    _, _, a_last = STEPS[kind](x, a0, y, params, backend="numba", return_state=True)
    assert not a_last.flags.c_contiguous
    read_only = a0.copy()
    read_only.flags.writeable = False
    for initial in (a_last, read_only):
        through_lane, full = _through_the_lane(
            monkeypatch, lane_calls, STEPS[kind], x, initial, y, params, backend="numba"
        )
        assert_identical(through_lane, full, kind)
    bad = np.asfortranarray(_set(a_last, (0, 1), np.nan))  # the copy's finiteness is checked
    through_lane, full = _both_ways(monkeypatch, STEPS[kind], x, bad, y, params, backend="numba")
    assert isinstance(full, ValueError) and str(through_lane) == str(full)


@pytest.mark.parametrize("kind", STEPS)
def test_the_lane_agrees_with_the_numpy_reference(kind, dtype):
    x, a0, y, params = _inputs(kind, (3, 5, 4, 2, 7), dtype, seed=3)
    numba = STEPS[kind](x, a0, y, params, backend="numba")
    numpy = STEPS[kind](x, a0, y, params, backend="numpy")
    tolerance = 1e-10 if np.dtype(dtype) == np.float64 else 1e-4
    assert abs(numba[0] - numpy[0]) <= tolerance * abs(numpy[0])
    for key in numpy[1]:
        np.testing.assert_allclose(numba[1][key], numpy[1][key], rtol=tolerance, atol=tolerance)


def _set(array, index, value):
    array = array.copy()
    array[index] = value
    return array


def _bad_calls(kind):
    """``(what, x, a0, y, params)``: each a mistake the lane's kernel must refuse."""
    x, a0, y, params = _inputs(kind, (3, 5, 4, 2, 7), seed=4)
    calls = [
        ("label too large", x, a0, _set(y, (1, 6), 4), params),
        ("negative label", x, a0, _set(y, (0, 0), -1), params),
        ("a0's shape", x, a0[:, :1].copy(), y, params),
        ("y's shape", x, a0, y[:, :6].copy(), params),
        ("NaN in a0", x, _set(a0, (2, 1), np.nan), y, params),
        ("W_aa's shape", x, a0, y, {**params, "W_aa": np.ones((5, 4))}),
        ("b_y's shape", x, a0, y, {**params, "b_y": np.ones((3, 1))}),
        ("W_ya's width", x, a0, y, {**params, "W_ya": np.ones((4, 6))}),
    ]
    for name in params:
        calls.append((f"inf in {name}", x, a0, y, {**params, name: _set(params[name], (0, 0), np.inf)}))
    if kind == "dense":
        calls += [
            ("NaN in x", _set(x, (2, 1, 6), np.nan), a0, y, params),
            ("x's n_x", np.ones((4, 2, 7)), a0, y, params),
            ("an empty batch", np.ones((3, 0, 7)), np.ones((5, 0)), np.ones((0, 7), np.intp), params),
        ]
    else:
        calls += [
            ("index too large", _set(x, (1, 3), 3), a0, y, params),
            ("negative index", _set(x, (0, 6), -2), a0, y, params),
            ("x_index's shape", x[:, :5].copy(), a0, y, params),
        ]
    return calls


@pytest.mark.parametrize("call", ["step", "loss"])
@pytest.mark.parametrize("kind", STEPS)
def test_every_mistake_is_the_full_paths_error(monkeypatch, lane_calls, kind, call):
    function = (STEPS if call == "step" else LOSSES)[kind]
    for what, x, a0, y, params in _bad_calls(kind):
        lane_calls.clear()
        through_lane, full = _both_ways(monkeypatch, function, x, a0, y, params, backend="numba")
        assert isinstance(full, Exception), what
        assert type(through_lane) is type(full) and str(through_lane) == str(full), what
        assert lane_calls == [None], what  # the lane declined (or its kernel refused)


@pytest.mark.parametrize("kind", STEPS)
def test_the_kernel_refuses_each_mistake_before_computing(kind):
    """The statuses themselves: shapes, finiteness and ranges are the kernel's checks."""
    expected = {
        "label too large": numba_kernels.REFUSED_OUT_OF_RANGE, "negative label": numba_kernels.REFUSED_OUT_OF_RANGE,
        "index too large": numba_kernels.REFUSED_OUT_OF_RANGE, "negative index": numba_kernels.REFUSED_OUT_OF_RANGE,
        "NaN in a0": numba_kernels.REFUSED_NOT_FINITE, "NaN in x": numba_kernels.REFUSED_NOT_FINITE,
    }  # fmt: skip
    for what, x, a0, y, params in _bad_calls(kind):
        if what == "an empty batch":
            continue  # the lane declines it before its kernel (nothing to allocate)
        status, loss, *_ = numba_backend.checked_loss_and_grads(x, a0, y, params, "tanh")
        if what.startswith("inf in"):
            assert status == numba_kernels.REFUSED_NOT_FINITE, what
        else:
            assert status == expected.get(what, numba_kernels.REFUSED_SHAPES), what
        assert loss == 0.0, what
        assert numba_backend.checked_sequence_losses(x, a0, y, params, "tanh")[0] == status, what
    x, a0, y, params = _inputs(kind, (3, 5, 4, 2, 7), seed=4)
    assert numba_backend.checked_loss_and_grads(x, a0, y, params, "tanh")[0] == numba_kernels.RAN
    assert numba_backend.checked_sequence_losses(x, a0, y, params, "tanh")[0] == numba_kernels.RAN


def _declined_calls():
    """``(what, step, x, a0, y, params, options)`` the lane leaves to the full path."""
    x, a0, y, params = make_problem(3, 5, 4, 4, 7, seed=5)
    read_only = {key: value.copy() for key, value in params.items()}
    read_only["W_aa"].flags.writeable = False
    dense = fastrnn.loss_and_grads
    return [
        ("read-only weights", dense, x, a0, y, read_only, {}),
        ("x not C-contiguous", dense, np.asfortranarray(x), a0, y, params, {}),
        ("int32 labels", dense, x, a0, y.astype(np.int32), params, {}),
        ("float32 x, float64 params", dense, x.astype(np.float32), a0, y, params, {}),
        ("a list for x", dense, x.tolist(), a0, y, params, {}),
        ("a0 stacked", dense, x, a0[None], y, params, {}),
        ("two shards", dense, x, a0, y, params, {"workers": 2}),
        ("lengths", dense, x, a0, y, params, {"lengths": np.array([7, 3, 7, 1])}),
        ("the NumPy backend", dense, x, a0, y, params, {"backend": "numpy"}),
        ("one label per sequence", dense, x, a0, y[:, 0].copy(), params, {}),
        ("int32 indices", fastrnn.loss_and_grads_onehot, (y % 3).astype(np.int32), a0, y, params, {}),
    ]


@pytest.mark.parametrize("case", _declined_calls(), ids=lambda case: case[0])
def test_calls_the_lane_declines_run_the_full_path(monkeypatch, lane_calls, case):
    what, step, x, a0, y, params, options = case
    options = {"backend": "numba", **options}
    through_lane, full = _both_ways(monkeypatch, step, x, a0, y, params, **options)
    assert_identical(through_lane, full, what)
    assert all(taken is None for taken in lane_calls), what


@pytest.mark.parametrize("kind", STEPS)
def test_with_a_workspace_the_lane_fills_the_workspace(monkeypatch, lane_calls, kind, dtype):
    """The full path's arrays, under the same names: the results are the workspace's views,
    bitwise the full path's, and the next call writes over them."""
    x, a0, y, params = _inputs(kind, (3, 5, 4, 2, 7), dtype, seed=8)
    other = _inputs(kind, (3, 5, 4, 2, 7), dtype, seed=9)[0]
    lane_space, full_space = fastrnn.Workspace(), fastrnn.Workspace()
    result = STEPS[kind](x, a0, y, params, backend="numba", workspace=lane_space, return_state=True)
    assert lane_calls[-1] is not None, "the lane did not take the call"
    with monkeypatch.context() as patch:
        _full_path(patch)
        expected = STEPS[kind](x, a0, y, params, backend="numba", workspace=full_space, return_state=True)
    assert_identical(copy_results(result), copy_results(expected), kind)
    np.testing.assert_array_equal(result[2], expected[2])
    assert all(lane_space.holds(value) for value in (*result[1].values(), result[2]))
    assert lane_space.nbytes == full_space.nbytes
    before = copy_results(result)
    STEPS[kind](other, a0, y, params, backend="numba", workspace=lane_space)
    assert not np.array_equal(result[1]["dW_ax"], before[1]["dW_ax"])  # overwritten, as documented


@pytest.mark.parametrize("function", [fastrnn.loss_and_grads, fastrnn.loss], ids=lambda f: f.__name__)
def test_a_result_that_overflows_is_the_full_paths_error(monkeypatch, function):
    x, a0, y, params = make_problem(3, 5, 4, 1, 7, dtype=np.float32, seed=6)
    params = {**params, "W_ya": np.full((4, 5), 3e38, np.float32)}
    through_lane, full = _both_ways(monkeypatch, function, x, a0, y, params, backend="numba")
    assert isinstance(full, fastrnn.NonFiniteResultError)
    assert type(through_lane) is type(full) and str(through_lane) == str(full)


def test_bad_backend_workers_and_workspace_are_reported_as_before(monkeypatch):
    x, a0, y, params = make_problem(3, 5, 4, 2, 7, seed=7)
    bad = ({"backend": "fortran"}, {"backend": 3}, {"workers": 0}, {"workers": 1.5}, {"workspace": {}})
    for options in bad:
        through_lane, full = _both_ways(monkeypatch, fastrnn.loss_and_grads, x, a0, y, params, **options)
        assert type(through_lane) is type(full) and str(through_lane) == str(full), options


def test_threads_run_the_lane_at_once_with_their_own_results():
    problems = [make_problem(8, 16, 8, 1, 50, seed=seed) for seed in range(4)]
    expected = [copy_results(fastrnn.loss_and_grads(*problem, backend="numba")) for problem in problems]
    results = [None] * len(problems)

    def run(k):
        for _ in range(20):
            results[k] = copy_results(fastrnn.loss_and_grads(*problems[k], backend="numba"))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(problems))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    for k in range(len(problems)):
        assert_identical(results[k], expected[k], f"thread {k}")
