"""Sequence labels (many-to-one): ``y`` of shape (m,) is one class per sequence, predicted
from its last state a<T>; the loss is the batch mean of that prediction's cross-entropy."""

import numpy as np
import pytest

import fastrnn
from fastrnn.problems import torch_modules
from helpers import BACKENDS, assert_agree, check, make_problem, numeric_gradient

SHAPES = [(3, 5, 4, 3, 6), (2, 3, 2, 1, 1), (4, 6, 3, 1, 5), (3, 4, 5, 4, 1)]  # m = 1 and T = 1 included


def problem(shape, dtype=np.float64, seed=0):
    x, a0, _, params = make_problem(*shape, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 100)
    n_x, _, n_y, m, T = shape
    return x, rng.integers(0, n_x, size=(m, T)), a0, rng.integers(0, n_y, size=m), params


def loss_by_the_equations(x, a0, y, params, nonlinearity="tanh"):
    """``mean_i logsumexp(z_i) - z_i[y_i]`` with ``z = W_ya a<T> + b_y``, in float64."""
    p = {name: value.astype(np.float64) for name, value in params.items()}
    f = np.tanh if nonlinearity == "tanh" else (lambda z: np.maximum(z, 0))
    a = a0.astype(np.float64)
    for t in range(x.shape[2]):
        a = f(p["W_ax"] @ x[:, :, t] + p["W_aa"] @ a + p["b_a"])
    z = p["W_ya"] @ a + p["b_y"]
    top = z.max(axis=0)
    return float(np.mean(top + np.log(np.exp(z - top).sum(axis=0)) - z[y, np.arange(len(y))]))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_loss_follows_the_equations(backend, dtype, shape, nonlinearity):
    x, _, a0, y, params = problem(shape, dtype)
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, nonlinearity=nonlinearity)
    assert loss.dtype == np.dtype(dtype)
    assert_agree(loss, loss_by_the_equations(x, a0, y, params, nonlinearity), dtype, "loss")
    expected = fastrnn.loss(x, a0, y, params, backend=backend, per_sequence=True, nonlinearity=nonlinearity)
    assert expected.shape == (shape[3],)
    assert_agree(expected.mean(), loss, dtype, "mean of the per-sequence losses")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_backends_agree(dtype, shape, nonlinearity):
    x, x_index, a0, y, params = problem(shape, dtype, seed=1)
    results = {}
    for backend in BACKENDS:
        options = dict(backend=backend, nonlinearity=nonlinearity)
        loss, grads = fastrnn.loss_and_grads(x, a0, y, params, **options)
        loss_1h, grads_1h = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, **options)
        losses = fastrnn.loss_onehot(x_index, a0, y, params, per_sequence=True, **options)
        results[backend] = dict(
            loss=loss, loss_1h=loss_1h, losses=losses,
            **{f"grads.{k}": v for k, v in grads.items()}, **{f"onehot.{k}": v for k, v in grads_1h.items()},
        )  # fmt: skip
    for name, value in results["numba"].items():
        assert_agree(value, results["numpy"][name], dtype, name)


def test_one_step_is_the_same_either_way(backend, dtype):
    # With T = 1 a class per sequence and a class per step are the same labels.
    x, _, a0, y, params = problem((3, 4, 5, 6, 1), dtype)
    per_sequence = fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    per_step = fastrnn.loss_and_grads(x, a0, y[:, None], params, backend=backend)
    assert per_sequence[0] == per_step[0]
    for name in per_step[1]:
        np.testing.assert_array_equal(per_sequence[1][name], per_step[1][name], err_msg=name)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", [(3, 4, 3, 2, 4), (2, 3, 2, 1, 1), (2, 5, 3, 3, 5)], ids=str)
def test_gradients_match_central_differences(backend, shape, nonlinearity):
    x, _, a0, y, params = problem(shape, seed=5)
    params["b_a"] += 0.1 if nonlinearity == "tanh" else 0.5  # relu: most units on, so that gradients reach a0
    options = dict(backend=backend, nonlinearity=nonlinearity)
    _, grads = fastrnn.loss_and_grads(x, a0, y, params, **options)

    def loss():
        return float(fastrnn.loss_and_grads(x, a0, y, params, **options)[0])

    for name in ("W_ax", "W_aa", "b_a", "W_ya", "b_y"):
        check(numeric_gradient(loss, params[name]), grads["d" + name], "d" + name)
    check(numeric_gradient(loss, x), grads["dx"], "dx")
    check(numeric_gradient(loss, a0), grads["da0"], "da0")


def test_one_hot_gradients_match_central_differences(backend):
    _, x_index, a0, y, params = problem((4, 3, 3, 3, 5), seed=6)
    _, grads = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend)

    def loss():
        return float(fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend)[0])

    for name in ("W_ax", "W_aa", "b_a", "W_ya", "b_y"):
        check(numeric_gradient(loss, params[name]), grads["d" + name], "d" + name)


@pytest.mark.parametrize("workers", [2, 3, -1])
def test_workers_agree_with_one(backend, dtype, workers):
    x, x_index, a0, y, params = problem((4, 6, 3, 7, 5), dtype, seed=3)
    for function, inputs in ((fastrnn.loss_and_grads, x), (fastrnn.loss_and_grads_onehot, x_index)):
        one = function(inputs, a0, y, params, backend=backend, workers=1)
        many = function(inputs, a0, y, params, backend=backend, workers=workers)
        assert_agree(many[0], one[0], dtype, "loss")
        for name in one[1]:
            assert_agree(many[1][name], one[1][name], dtype, name)


def test_a_workspace_serves_both_kinds_of_labels(backend):
    x, _, a0, y, params = problem((3, 4, 5, 4, 6), seed=2)
    y_steps = np.random.default_rng(2).integers(0, 5, size=(4, 6))
    workspace = fastrnn.Workspace()
    for labels in (y, y_steps, y, y_steps):
        loss, grads = fastrnn.loss_and_grads(x, a0, labels, params, backend=backend, workspace=workspace)
        expected_loss, expected = fastrnn.loss_and_grads(x, a0, labels, params, backend=backend)
        assert loss == expected_loss
        for name in expected:
            np.testing.assert_array_equal(grads[name], expected[name], err_msg=name)


@pytest.mark.parametrize(
    "y, match",
    [
        (np.zeros(5, dtype=int), r"y must have shape \(m,\), one class per sequence"),
        (np.zeros((4, 6, 1), dtype=int), r"y must be 2-dimensional \(m, T\), one class per step, or \(m,\)"),
        (np.zeros((4, 5), dtype=int), "y must have shape"),
        (np.array([0, 1, 2, 5]), r"y must hold class labels in \[0, 5\), got 5 at index \(3,\)"),
        (np.array([0, -1, 2, 3]), r"got -1 at index \(1,\)"),
    ],
)
def test_bad_sequence_labels_are_named(backend, y, match):
    x, x_index, a0, _, params = problem((3, 4, 5, 4, 6))
    with pytest.raises(ValueError, match=match):
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    with pytest.raises(ValueError, match=match):
        fastrnn.loss_onehot(x_index, a0, y, params, backend=backend)


def test_the_model_trains_a_sequence_classifier(backend):
    model = fastrnn.RNN(4, 8, 2, backend=backend, seed=0)
    rng = np.random.default_rng(0)
    x_index = rng.integers(0, 4, size=(32, 6))
    y = (x_index == 0).sum(axis=1) % 2  # the parity of the zeros: the whole sequence decides
    optimizer = fastrnn.optim.Adam(lr=0.05)
    first = model.evaluate(x_index, y)
    for _ in range(150):
        model.train_step(x_index, y, optimizer, carry_state=False)
    assert model.evaluate(x_index, y) < 0.5 * first
    assert model.evaluate(x_index, y, per_sequence=True).shape == (32,)


def test_matches_torch_on_the_last_hidden_state():
    torch = pytest.importorskip("torch", reason="PyTorch is not a test dependency; checked where installed")
    x, _, a0, y, params = problem((4, 6, 5, 3, 7), seed=11)
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params)
    rnn, linear = torch_modules(params)
    _, h_n = rnn(
        torch.from_numpy(np.ascontiguousarray(x.transpose(2, 1, 0))), torch.from_numpy(a0.T.copy())[None]
    )
    torch_loss = torch.nn.functional.cross_entropy(linear(h_n[0]), torch.from_numpy(y))
    torch_loss.backward()
    assert abs(float(torch_loss.detach()) - loss) <= 1e-12 * loss
    assert_agree(grads["dW_ya"], linear.weight.grad.numpy(), np.float64, "dW_ya")
    assert_agree(grads["dW_aa"], rnn.weight_hh_l0.grad.numpy(), np.float64, "dW_aa")
    assert_agree(grads["dW_ax"], rnn.weight_ih_l0.grad.numpy(), np.float64, "dW_ax")
