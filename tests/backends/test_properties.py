"""Property-based tests (hypothesis): shapes, dtypes, value ranges and memory layouts drawn
at random; the backends must agree and the gradients must pass a finite-difference check."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn
from helpers import AGREEMENT, relative_error

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sizes = st.tuples(
    st.integers(1, 6),  # n_x
    st.integers(1, 9),  # n_a
    st.integers(1, 6),  # n_y
    st.integers(1, 5),  # m
    st.integers(1, 9),  # T
)
LAYOUTS = ("C", "F", "strided", "reversed", "read-only")


def lay_out(array, layout):
    """The same values in another memory layout."""
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":
        return np.repeat(array, 2, axis=-1)[..., ::2]
    if layout == "reversed":
        return np.flip(np.flip(array, axis=0).copy(), axis=0)
    if layout == "read-only":
        array = array.copy()
        array.flags.writeable = False
    return array


@st.composite
def problems(draw, dtypes=(np.float64, np.float32)):
    n_x, n_a, n_y, m, T = draw(sizes)
    dtype = draw(st.sampled_from(dtypes))
    scale = draw(st.sampled_from([0.01, 1.0, 5.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    params = {k: (v * scale).astype(dtype) for k, v in fastrnn.init_params(n_x, n_a, n_y, seed=rng).items()}
    params["b_a"] += dtype(rng.standard_normal() * 0.1)
    x = (rng.standard_normal((n_x, m, T)) * scale).astype(dtype)
    a0 = np.tanh(rng.standard_normal((n_a, m))).astype(dtype)
    y = rng.integers(0, n_y, size=(m, T))
    layout = draw(st.sampled_from(LAYOUTS))
    return lay_out(x, layout), lay_out(a0, layout), lay_out(y, layout), params, dtype


def gradient_tolerance(a, dtype):
    """The contract's tolerance, widened where units saturate.

    The backward pass uses ``1 - a**2`` of the cached ``a`` (docs/contract.rst): where ``|a|`` is within
    a few ulp of 1, a 1-ulp difference between the backends' tanh becomes a relative
    difference of ``eps / (1 - a**2)`` in that unit's gradient, which no implementation of
    that formula avoids (found by this test: ``z = -12.8``, float64, 7.6e-6).
    """
    eps = np.finfo(dtype).eps
    one_minus_a2 = np.min(1 - np.asarray(a, np.float64) ** 2)
    return max(AGREEMENT[np.dtype(dtype)], 8 * eps / max(one_minus_a2, eps))


@SETTINGS
@given(problems())
def test_backends_agree_on_any_problem(problem):
    x, a0, y, params, dtype = problem
    tolerance = AGREEMENT[np.dtype(dtype)]
    a_np, y_np, _ = fastrnn.rnn_forward(x, a0, params, backend="numpy")
    a_nb, y_nb, _ = fastrnn.rnn_forward(x, a0, params, backend="numba")
    assert relative_error(a_nb, a_np) <= tolerance
    assert relative_error(y_nb, y_np) <= tolerance
    loss_np, grads_np = fastrnn.loss_and_grads(x, a0, y, params, backend="numpy")
    loss_nb, grads_nb = fastrnn.loss_and_grads(x, a0, y, params, backend="numba")
    assert_losses_agree(loss_nb, loss_np, a_np, params, y, dtype)
    # A drawn problem can make a gradient the small remainder of a cancelling sum (found by
    # this test: float32 db_y = 1e-4 from summands of 0.3; db_a = 1e-8 from 1e-6), whose
    # relative error says nothing about either backend.  So each difference is measured
    # against the scale of the whole gradient (all seven arrays), and in float32 both
    # backends are compared with a float64 computation of the same problem: the Numba
    # backend's error may not exceed the NumPy reference's by more than 4x plus the contract's 1e-4.
    assert_gradients_agree(grads_nb, grads_np, (x, a0, y, params), dtype, gradient_tolerance(a_np, dtype))


def assert_losses_agree(loss_nb, loss_np, a, params, y, dtype):
    """The losses agree to the contract's relative tolerance, or to the rounding of what they
    are computed from: each labelled row's loss is ``logsumexp(z) - z[label]``, a difference
    of two numbers of the size of its logits, so a small loss from large logits carries an
    absolute error of a few ulp of those logits (found by this test: float32, logits of 4,
    a loss of 7e-4, relative difference 3e-4 between backends that both round correctly)."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    logits = np.einsum("ya,amt->ymt", p["W_ya"], np.asarray(a, np.float64)) + p["b_y"][:, :, None]
    largest = np.abs(logits).max(axis=0)  # (m, T): each row's largest |logit|
    if np.ndim(y) == 1:  # one label per sequence: only the last row is read
        largest = largest[:, -1:]
    rounding = 16 * np.finfo(dtype).eps * (largest.sum() / largest.shape[0] + 1)
    difference = abs(float(loss_nb) - float(loss_np))
    assert difference <= max(AGREEMENT[np.dtype(dtype)] * abs(float(loss_np)), rounding), (
        difference,
        rounding,
    )


def assert_gradients_agree(grads_nb, grads_np, problem, dtype, gradient_bound, **options):
    """Each gradient's difference against the scale of the whole gradient; in float32, each
    backend's error against a float64 computation (see the comment above)."""
    x, a0, y, params = problem
    scale = max(float(np.max(np.abs(g))) for g in grads_np.values()) or 1.0
    if dtype == np.float32:
        _, exact = fastrnn.loss_and_grads(
            np.asarray(x, np.float64),
            a0,
            y,
            {k: v.astype(np.float64) for k, v in params.items()},
            backend="numpy",
            **options,
        )
    # db_y sums (y_hat - one-hot) / m over the labelled rows, each term at most 1 / m: its
    # float32 rounding is a few ulp of that sum's terms, however small the sum (found by this
    # test: labels [1, 0, 0, 1] on two nearly uniform classes, db_y 1e-8 from terms of 0.125
    # and every gradient below 5e-6, so that the scale above was no bound for it).
    db_y_rounding = 8 * np.finfo(np.float32).eps * np.size(y) / np.shape(y)[0]
    for key in grads_np:
        numba_value = np.asarray(grads_nb[key], np.float64)
        if dtype == np.float32:
            numba_error = np.max(np.abs(numba_value - exact[key]))
            numpy_error = np.max(np.abs(np.asarray(grads_np[key], np.float64) - exact[key]))
            rounding = db_y_rounding if key == "db_y" else 0.0
            assert numba_error <= 4 * numpy_error + gradient_bound * scale + rounding, (
                key,
                numba_error,
                numpy_error,
            )
        else:
            difference = np.max(np.abs(numba_value - grads_np[key]))
            # Plus the rounding of a gradient that is exactly 0 (found by this test: relu
            # with every unit off, all gradients 1e-17 and one backend's db_y exactly 0).
            assert difference <= gradient_bound * scale + 16 * np.finfo(np.float64).eps, (
                key,
                difference / scale,
            )


@SETTINGS
@given(problems(), st.sampled_from(["tanh", "relu"]), st.booleans(), st.sampled_from([1, 2]))
def test_backends_agree_with_every_option(problem, nonlinearity, one_label_per_sequence, workers):
    x, a0, y, params, dtype = problem
    if one_label_per_sequence:
        y = np.asarray(y)[:, -1]
    options = dict(nonlinearity=nonlinearity)
    loss_np, grads_np = fastrnn.loss_and_grads(x, a0, y, params, backend="numpy", **options)
    loss_nb, grads_nb = fastrnn.loss_and_grads(x, a0, y, params, backend="numba", workers=workers, **options)
    a_np, _, _ = fastrnn.rnn_forward(x, a0, params, backend="numpy", **options)
    assert_losses_agree(loss_nb, loss_np, a_np, params, y, dtype)
    # relu has no saturation; tanh's units near +-1 widen the bound (gradient_tolerance).
    bound = gradient_tolerance(a_np, dtype) if nonlinearity == "tanh" else AGREEMENT[np.dtype(dtype)]
    assert_gradients_agree(grads_nb, grads_np, (x, a0, y, params), dtype, bound, **options)
    losses = fastrnn.loss(x, a0, y, params, backend="numba", per_sequence=True, **options)
    assert_losses_agree(np.mean(losses, dtype=np.float64), loss_np, a_np, params, y, dtype)


@st.composite
def networks(draw):
    """A problem of ``problems`` with a network drawn over it: layers, directions, lengths
    (or none), the label kind; its params rescaled as the drawn problem's."""
    x, _, y, seed_params, dtype = draw(problems())
    num_layers, bidirectional = draw(st.sampled_from([1, 2, 3])), draw(st.booleans())
    n_a, n_x = seed_params["W_ax"].shape
    m, T = np.shape(y)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = float(np.max(np.abs(seed_params["W_aa"]))) * np.sqrt(n_a)  # the drawn problem's weight scale
    params = {
        name: (value * scale).astype(dtype)
        for name, value in fastrnn.init_params(
            n_x, n_a, seed_params["W_ya"].shape[0], num_layers=num_layers, bidirectional=bidirectional, seed=rng
        ).items()
    }  # fmt: skip
    D = 2 if bidirectional else 1
    a0 = np.tanh(rng.standard_normal((num_layers * D, n_a, m))).astype(dtype)
    lengths = rng.integers(1, T + 1, size=m) if draw(st.booleans()) else None
    if draw(st.booleans()):
        y = np.asarray(y)[:, 0]
    return x, a0, y, params, dtype, lengths


@SETTINGS
@given(networks(), st.sampled_from(["tanh", "relu"]), st.sampled_from([1, 2]))
def test_networks_agree_on_any_problem(problem, nonlinearity, workers):
    x, a0, y, params, dtype, lengths = problem
    options = dict(nonlinearity=nonlinearity, lengths=lengths)
    loss_np, grads_np = fastrnn.loss_and_grads(x, a0, y, params, backend="numpy", **options)
    loss_nb, grads_nb = fastrnn.loss_and_grads(x, a0, y, params, backend="numba", workers=workers, **options)
    a_np, y_hat_np, _ = fastrnn.rnn_forward(x, a0, params, backend="numpy", **options)
    a_nb, y_hat_nb, _ = fastrnn.rnn_forward(x, a0, params, backend="numba", workers=workers, **options)
    tolerance = AGREEMENT[np.dtype(dtype)]
    assert relative_error(y_hat_nb, y_hat_np) <= tolerance
    # Each layer's units near +-1 widen the bound (gradient_tolerance); relu's do not saturate.
    bound = gradient_tolerance(a_np, dtype) if nonlinearity == "tanh" else tolerance
    assert relative_error(a_nb, a_np) <= max(bound, tolerance)
    # The loss: relative, or to the rounding of logits of the size the outputs allow (a
    # probability p >= tiny needs logits spread by at most -log(p)).
    spread = -np.log(max(float(np.min(y_hat_np[y_hat_np > 0])), np.finfo(dtype).tiny))
    rounding = 16 * np.finfo(dtype).eps * (spread + 1) * (np.size(y) / np.shape(y)[0])
    assert abs(float(loss_nb) - float(loss_np)) <= max(tolerance * abs(float(loss_np)), rounding)
    assert_gradients_agree(grads_nb, grads_np, (x, a0, y, params), dtype, bound, **options)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(dtypes=(np.float64,)), st.sampled_from(["numpy", "numba"]))
def test_gradients_match_finite_differences_on_any_problem(problem, backend):
    x, a0, y, params, _ = problem
    x, a0 = np.array(x), np.array(a0)  # writeable copies, perturbed below
    params = {k: np.array(v) for k, v in params.items()}
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    step = 1e-5
    for name, array, grad in [
        ("W_aa", params["W_aa"], grads["dW_aa"]),
        ("W_ya", params["W_ya"], grads["dW_ya"]),
        ("x", x, grads["dx"]),
    ]:
        numeric = np.empty_like(array)
        for index in np.ndindex(array.shape):
            saved = array[index]
            array[index] = saved + step
            plus = float(fastrnn.loss_and_grads(x, a0, y, params, backend=backend)[0])
            array[index] = saved - step
            minus = float(fastrnn.loss_and_grads(x, a0, y, params, backend=backend)[0])
            array[index] = saved
            numeric[index] = (plus - minus) / (2 * step)
        # Relative error below 1e-6, or below the rounding floor of central differences,
        # eps * |L| / h per entry, for gradients so small that the floor dominates (found by
        # this test: weights of 0.01 give a dx of 1e-6, a floor of 1e-11 absolute).
        floor = 10 * np.finfo(np.float64).eps * max(abs(float(loss)), 1.0) / step * np.sqrt(array.size)
        error = np.linalg.norm(numeric - grad)
        assert error <= max(1e-6 * (np.linalg.norm(numeric) + np.linalg.norm(grad)), floor), (name, error)


def test_random_bad_arguments_never_crash():
    # In a subprocess, so that a crash (a segfault from an unchecked kernel) fails this test
    # instead of killing the test run.
    script = Path(__file__).with_name("fuzz_bad_arguments.py")
    result = subprocess.run([sys.executable, str(script), "400"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    assert "examples: 400" in result.stdout, result.stdout
