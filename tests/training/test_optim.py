"""Optimizers against their formulas on hand-computed cases, and clipping; both backends."""

import numpy as np
import pytest

import fastrnn
from fastrnn import optim
from fastrnn.params import SINGLE_LAYER_NAMES as PARAM_NAMES


def one_value_problem(value, grad, dtype=np.float64):
    """Params and grads whose every entry is ``value`` and ``grad`` (shapes of a tiny RNN)."""
    params = {k: np.full_like(v, value) for k, v in fastrnn.init_params(2, 3, 2, dtype=dtype).items()}
    grads = {"d" + k: np.full_like(v, grad) for k, v in params.items()}
    return params, grads


def assert_all(params, expected, dtype):
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    for name in PARAM_NAMES:
        np.testing.assert_allclose(params[name], expected, rtol=rtol, err_msg=name)
        assert params[name].dtype == np.dtype(dtype)


def test_sgd(backend, dtype):
    params, grads = one_value_problem(1.0, 0.5, dtype)
    opt = optim.SGD(lr=0.1, backend=backend)
    opt.step(params, grads)
    assert_all(params, 1.0 - 0.1 * 0.5, dtype)


def test_sgd_with_momentum(backend, dtype):
    params, grads = one_value_problem(1.0, 0.5, dtype)
    opt = optim.SGD(lr=0.1, momentum=0.9, backend=backend)
    opt.step(params, grads)  # v = 0.5, p = 1 - 0.05 = 0.95
    opt.step(params, grads)  # v = 0.9*0.5 + 0.5 = 0.95, p = 0.95 - 0.095 = 0.855
    assert_all(params, 0.855, dtype)


def test_adagrad(backend, dtype):
    params, grads = one_value_problem(1.0, 0.5, dtype)
    opt = optim.Adagrad(lr=0.1, eps=1e-8, backend=backend)
    opt.step(params, grads)  # G = 0.25, p = 1 - 0.1*0.5/sqrt(0.25 + 1e-8)
    first = 1.0 - 0.1 * 0.5 / np.sqrt(0.25 + 1e-8)
    assert_all(params, first, dtype)
    opt.step(params, grads)  # G = 0.5
    assert_all(params, first - 0.1 * 0.5 / np.sqrt(0.5 + 1e-8), dtype)


def test_adam(backend, dtype):
    params, grads = one_value_problem(1.0, 0.5, dtype)
    opt = optim.Adam(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, backend=backend)
    opt.step(params, grads)
    # Step 1: m = 0.05, v = 0.00025, m_hat = 0.5, v_hat = 0.25: p = 1 - 0.01 * 0.5 / (0.5 + 1e-8).
    first = 1.0 - 0.01 * 0.5 / (0.5 + 1e-8)
    assert_all(params, first, dtype)
    grads = {k: np.full_like(v, -1.0) for k, v in grads.items()}
    opt.step(params, grads)
    m = 0.9 * 0.05 + 0.1 * -1.0
    v = 0.999 * 0.00025 + 0.001 * 1.0
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.999**2)
    assert_all(params, first - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8), dtype)


@pytest.mark.parametrize(
    "make",
    [
        lambda b: optim.SGD(0.05, momentum=0.5, backend=b),
        lambda b: optim.Adagrad(0.05, backend=b),
        lambda b: optim.Adam(0.01, backend=b),
    ],
    ids=["sgd", "adagrad", "adam"],
)
def test_backends_take_the_same_steps(make, dtype):
    rng = np.random.default_rng(90)
    base = fastrnn.init_params(3, 4, 3, seed=91, dtype=dtype)
    grad_seq = [
        {"d" + k: rng.standard_normal(v.shape).astype(dtype) for k, v in base.items()} for _ in range(3)
    ]
    results = {}
    for backend in ("numpy", "numba"):
        params = {k: v.copy() for k, v in base.items()}
        opt = make(backend)
        for grads in grad_seq:
            opt.step(params, {k: v.copy() for k, v in grads.items()})
        results[backend] = params
    for name in PARAM_NAMES:
        np.testing.assert_allclose(
            results["numba"][name], results["numpy"][name], rtol=1e-5 if dtype == np.float32 else 1e-13
        )


def test_clip_by_value(backend, dtype):
    _, grads = one_value_problem(0.0, 0.0, dtype)
    grads["dW_aa"][:] = [[-10, 0.5, 3], [7, -0.1, -2], [0, 5, -5]]
    optim.clip_by_value(grads, 2.0, backend=backend)
    np.testing.assert_array_equal(
        grads["dW_aa"], np.array([[-2, 0.5, 2], [2, -0.1, -2], [0, 2, -2]], dtype=dtype)
    )


def test_clip_by_global_norm(backend, dtype):
    _, grads = one_value_problem(0.0, 1.0, dtype)
    count = sum(g.size for g in grads.values())
    norm = optim.clip_by_global_norm(grads, 1.0, backend=backend)
    np.testing.assert_allclose(norm, np.sqrt(count), rtol=1e-6)
    clipped = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    np.testing.assert_allclose(clipped, 1.0, rtol=1e-6)
    # Below the threshold nothing changes.
    before = {k: v.copy() for k, v in grads.items()}
    optim.clip_by_global_norm(grads, 10.0, backend=backend)
    for key in grads:
        np.testing.assert_array_equal(grads[key], before[key])


def test_clipping_a_non_contiguous_gradient_shows_in_the_dict(backend):
    _, grads = one_value_problem(0.0, 3.0)
    grads["dW_aa"] = np.full((3, 6), 3.0)[:, ::2]  # a strided view
    optim.clip_by_value(grads, 1.0, backend=backend)
    assert (grads["dW_aa"] == 1.0).all()


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: optim.SGD(lr=0), ValueError),
        (lambda: optim.SGD(lr=-1), ValueError),
        (lambda: optim.SGD(lr="fast"), TypeError),
        (lambda: optim.Adam(beta1=1.0), ValueError),
        (lambda: optim.Adagrad(eps=0), ValueError),
        (lambda: optim.SGD(backend="gpu"), ValueError),
    ],
)
def test_bad_optimizer_settings(make, error):
    with pytest.raises(error):
        make()


def test_step_checks_params_and_grads(backend):
    params, grads = one_value_problem(1.0, 0.5)
    opt = optim.SGD(0.1, backend=backend)
    bad = dict(grads, dW_aa=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"grads\['dW_aa'\].*\(3, 3\)"):
        opt.step(params, bad)
    with pytest.raises(ValueError, match="dW_ya"):
        opt.step(params, {k: v for k, v in grads.items() if k != "dW_ya"})
    strided = dict(params, W_aa=np.zeros((3, 6))[:, ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        opt.step(strided, grads)


# -- nothing silent: every way a step could turn parameters into NaN or inf ---------------


def _params_and_grads(dtype=np.float64, scale=1.0):
    params = fastrnn.init_params(3, 4, 3, seed=500, dtype=dtype)
    rng = np.random.default_rng(500)
    grads = {
        "d" + name: (scale * rng.standard_normal(value.shape)).astype(dtype) for name, value in params.items()
    }
    return params, grads


def _unchanged(params, before):
    return all(np.array_equal(params[name], before[name]) for name in params)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_gradient_is_refused_and_changes_nothing(backend, bad):
    params, grads = _params_and_grads()
    grads["dW_aa"][1, 2] = bad
    before = {k: v.copy() for k, v in params.items()}
    for opt in (
        optim.SGD(0.1, backend=backend),
        optim.Adagrad(0.1, backend=backend),
        optim.Adam(0.1, backend=backend),
    ):
        with pytest.raises(ValueError, match=r"grads\['dW_aa'\] must be finite"):
            opt.step(params, grads)
        assert _unchanged(params, before) and opt.steps == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda b: optim.SGD(lr=1e39, backend=b), "lr = 1e[+]39 is not finite in float32"),
        (lambda b: optim.Adagrad(lr=0.1, eps=1e-50, backend=b), "eps = 1e-50 rounds to 0 in float32"),
        (lambda b: optim.Adam(beta2=0.99999999, backend=b), "beta2 = 0.99999999 rounds to 1 in float32"),
        (lambda b: optim.Adam(beta1=0.999999999, backend=b), "beta1 = 0.999999999 rounds to 1 in float32"),
        (lambda b: optim.Adam(lr=1e-50, backend=b), "lr = 1e-50 rounds to 0 in float32"),
    ],
    ids=["lr", "eps", "beta2", "beta1", "tiny lr"],
)
def test_settings_the_parameters_dtype_cannot_hold_are_named(backend, make, message):
    params, grads = _params_and_grads(np.float32)
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match=message):
        make(backend).step(params, grads)
    assert _unchanged(params, before)
    params64, grads64 = _params_and_grads(np.float64)
    opt = make(backend)
    opt.step(params64, grads64)  # the same setting is fine in float64
    assert all(np.isfinite(v).all() for v in params64.values())


def test_settings_are_checked_whenever_they_are_set():
    opt = optim.Adam(0.01)
    for name, value, error in [("lr", float("nan"), ValueError), ("lr", -1.0, ValueError), ("eps", 0.0, ValueError),
                               ("beta1", 1.0, ValueError), ("beta2", float("inf"), ValueError), ("lr", "fast", TypeError)]:  # fmt: skip
        with pytest.raises(error, match=name):
            setattr(opt, name, value)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(0.1).momentum = -0.5
    assert opt.settings == {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


def test_a_step_that_would_overflow_raises_and_changes_nothing(backend):
    params, grads = _params_and_grads(np.float32, scale=1e10)
    before = {k: v.copy() for k, v in params.items()}
    opt = optim.SGD(lr=1e30, backend=backend)  # finite in float32, but lr * grad is not
    with pytest.raises(
        fastrnn.NonFiniteResultError, match=r"would make params\['W_ax'\].*no parameter was changed"
    ):
        opt.step(params, grads)
    assert _unchanged(params, before) and opt.steps == 0
    assert all(not s.any() for arrays in opt._state.values() for s in arrays)  # momentum state untouched too


def test_the_global_norm_of_huge_finite_gradients_does_not_overflow(backend):
    params, grads = _params_and_grads(scale=1e160)
    expected = float(np.sqrt(sum(np.sum((g / 1e160) ** 2) for g in grads.values()))) * 1e160
    norm = optim.clip_by_global_norm(grads, 5.0, backend=backend)
    assert np.isfinite(norm) and abs(norm - expected) <= 1e-12 * expected
    clipped = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
    assert abs(clipped - 5.0) < 1e-9  # clipped to max_norm, not zeroed
    grads["db_y"][0, 0] = np.nan
    assert np.isnan(optim.clip_by_global_norm(grads, 5.0, backend=backend))


def test_one_optimizer_does_not_silently_serve_two_models(backend):
    first, grads = _params_and_grads()
    second, _ = _params_and_grads()
    opt = optim.Adam(0.01, backend=backend)
    opt.step(first, grads)
    with pytest.raises(ValueError, match="belongs to another array: use one optimizer per model"):
        opt.step(second, grads)
    opt.reset()
    opt.step(second, grads)  # after reset() the state is the second model's


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "adam"])
def test_state_dict_resumes_exactly(backend, kind):
    params, grads = _params_and_grads()
    opt = optim.OPTIMIZERS[kind](lr=0.05, backend=backend)
    for _ in range(3):
        opt.step(params, grads)
    saved_params = {k: v.copy() for k, v in params.items()}
    resumed = optim.from_state_dict(opt.state_dict(), backend=backend)
    assert resumed.settings == opt.settings and resumed.steps == 3
    for _ in range(4):
        opt.step(params, grads)
        resumed.step(saved_params, grads)
    for name in params:
        np.testing.assert_array_equal(saved_params[name], params[name])
    with pytest.raises(ValueError, match="not a SGD's"):
        optim.SGD(0.1).load_state_dict(optim.Adam(0.1).state_dict())
    with pytest.raises(ValueError, match="names no optimizer"):
        optim.from_state_dict({"optimizer": "Lion"})
