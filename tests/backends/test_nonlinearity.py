"""``nonlinearity="relu"``: ``a<t> = max(W_ax x<t> + W_aa a<t-1> + b_a, 0)`` on both backends,
through every public operation, checked against the equations, between the backends,
against central finite differences (float64) and, where PyTorch is installed, against
``torch.nn.RNN(nonlinearity="relu")``."""

import numpy as np
import pytest

import fastrnn
from fastrnn.cli import main
from fastrnn.problems import torch_modules
from helpers import BACKENDS, assert_agree, check, make_problem, numeric_gradient

SHAPES = [(3, 5, 4, 3, 6), (2, 3, 2, 1, 1), (4, 6, 3, 1, 5), (3, 4, 5, 4, 1)]  # m = 1 and T = 1 included


def relu_problem(shape, dtype=np.float64, seed=0):
    x, a0, y, params = make_problem(*shape, dtype=dtype, seed=seed)
    params["b_a"] += params["b_a"].dtype.type(0.1)  # some units on, some off
    return x, np.abs(a0), y, params  # a0 as a relu state would be


def pre_activations(x, a0, params):
    """``z<t> = W_ax x<t> + W_aa a<t-1> + b_a`` of every step, shape (n_a, m, T)."""
    a, zs = a0, []
    for t in range(x.shape[2]):
        zs.append(params["W_ax"] @ x[:, :, t] + params["W_aa"] @ a + params["b_a"])
        a = np.maximum(zs[-1], 0)
    return np.stack(zs, axis=2)


def relu_forward_by_the_equations(x, a0, params):
    """``a<t> = max(W_ax x<t> + W_aa a<t-1> + b_a, 0)`` and the softmax, step by step."""
    a, states = a0, []
    for t in range(x.shape[2]):
        a = np.maximum(params["W_ax"] @ x[:, :, t] + params["W_aa"] @ a + params["b_a"], 0)
        states.append(a)
    a = np.stack(states, axis=2)
    logits = np.einsum("ya,amt->ymt", params["W_ya"], a) + params["b_y"][:, :, None]
    e = np.exp(logits - logits.max(axis=0))
    return a, e / e.sum(axis=0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_follows_the_equations(backend, dtype, shape):
    x, a0, _, params = relu_problem(shape, dtype)
    a, y_hat, cache = fastrnn.rnn_forward(x, a0, params, backend=backend, nonlinearity="relu")
    expected_a, expected_y_hat = relu_forward_by_the_equations(x, a0, params)
    assert_agree(a, expected_a, dtype, "a")
    assert_agree(y_hat, expected_y_hat, dtype, "y_hat")
    assert a.min() == 0 and (a > 0).any()  # both sides of the kink are exercised
    assert cache.nonlinearity == "relu"
    a_tanh, _, _ = fastrnn.rnn_forward(x, a0, params, backend=backend)
    assert not np.allclose(a_tanh, a)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_backends_agree(dtype, shape):
    x, a0, y, params = relu_problem(shape, dtype, seed=1)
    x_index = np.random.default_rng(1).integers(0, shape[0], size=shape[3:])
    results = {}
    for backend in BACKENDS:
        relu = dict(backend=backend, nonlinearity="relu")
        loss, grads = fastrnn.loss_and_grads(x, a0, y, params, **relu)
        loss_1h, grads_1h = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, **relu)
        a, y_hat, cache = fastrnn.rnn_forward(x, a0, params, **relu)
        backward = fastrnn.rnn_backward(np.ones_like(a), cache)
        losses = fastrnn.loss(x, a0, y, params, per_sequence=True, **relu)
        a_t, _, cell = fastrnn.rnn_cell_forward(x[:, :, 0], a0, params, **relu)
        cell_grads = fastrnn.rnn_cell_backward(np.ones_like(a_t), cell)
        results[backend] = dict(
            loss=loss, loss_1h=loss_1h, a=a, y_hat=y_hat, losses=losses, a_t=a_t,
            **{f"grads.{k}": v for k, v in grads.items()}, **{f"onehot.{k}": v for k, v in grads_1h.items()},
            **{f"backward.{k}": v for k, v in backward.items()}, **{f"cell.{k}": v for k, v in cell_grads.items()},
        )  # fmt: skip
    for name, value in results["numba"].items():
        assert_agree(value, results["numpy"][name], dtype, name)
    assert_agree(results["numba"]["losses"].mean(), results["numba"]["loss"], dtype, "loss per sequence")


@pytest.mark.parametrize("shape", [(3, 4, 3, 2, 4), (2, 3, 2, 1, 1), (2, 5, 3, 3, 5)], ids=str)
def test_gradients_match_central_differences(backend, shape):
    x, a0, y, params = relu_problem(shape, seed=7)
    relu = dict(backend=backend, nonlinearity="relu")
    _, grads = fastrnn.loss_and_grads(x, a0, y, params, **relu)
    # No pre-activation lies within the step of the kink, where a difference is not a derivative.
    assert np.abs(pre_activations(x, a0, params)).min() > 1e-3

    def loss():
        return float(fastrnn.loss_and_grads(x, a0, y, params, **relu)[0])

    for name in ("W_ax", "W_aa", "b_a", "W_ya", "b_y"):
        check(numeric_gradient(loss, params[name]), grads["d" + name], "d" + name)
    check(numeric_gradient(loss, x), grads["dx"], "dx")
    check(numeric_gradient(loss, a0), grads["da0"], "da0")


def test_backward_matches_central_differences(backend):
    x, a0, _, params = relu_problem((3, 4, 3, 2, 4), seed=8)
    weights = np.random.default_rng(8).standard_normal((4, 2, 4))  # L = sum(weights * a)
    a, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend, nonlinearity="relu")
    grads = fastrnn.rnn_backward(weights, cache)

    def objective():
        return float(
            np.sum(weights * fastrnn.rnn_forward(x, a0, params, backend=backend, nonlinearity="relu")[0])
        )

    for name in ("W_ax", "W_aa", "b_a"):
        check(numeric_gradient(objective, params[name]), grads["d" + name], "d" + name)
    check(numeric_gradient(objective, x), grads["dx"], "dx")


@pytest.mark.parametrize("workers", [2, 3, -1])
def test_workers_agree_with_one(backend, dtype, workers):
    x, a0, y, params = relu_problem((4, 6, 3, 7, 5), dtype, seed=3)
    one = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=1, nonlinearity="relu")
    many = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=workers, nonlinearity="relu")
    assert_agree(many[0], one[0], dtype, "loss")
    for name in one[1]:
        assert_agree(many[1][name], one[1][name], dtype, name)


@pytest.mark.parametrize(
    "bad, error", [("sigmoid", ValueError), ("ReLU", ValueError), (None, TypeError), (1, TypeError)]
)
def test_other_nonlinearities_are_named(bad, error):
    x, a0, y, params = relu_problem((3, 4, 3, 2, 4))
    x_index = np.zeros((2, 4), dtype=int)
    calls = [
        lambda: fastrnn.loss_and_grads(x, a0, y, params, nonlinearity=bad),
        lambda: fastrnn.loss_and_grads_onehot(x_index, a0, y, params, nonlinearity=bad),
        lambda: fastrnn.rnn_forward(x, a0, params, nonlinearity=bad),
        lambda: fastrnn.rnn_cell_forward(x[:, :, 0], a0, params, nonlinearity=bad),
        lambda: fastrnn.loss(x, a0, y, params, nonlinearity=bad),
        lambda: fastrnn.loss_onehot(x_index, a0, y, params, nonlinearity=bad),
        lambda: fastrnn.RNN(3, 4, 3, nonlinearity=bad),
    ]
    for call in calls:
        with pytest.raises(error, match="nonlinearity must be 'tanh' or 'relu'"):
            call()


def test_a_cache_names_its_nonlinearity():
    x, a0, _, params = relu_problem((3, 4, 3, 2, 4))
    a, _, cache = fastrnn.rnn_forward(x, a0, params, nonlinearity="relu")
    with pytest.raises(ValueError, match="cache.nonlinearity"):
        fastrnn.rnn_backward(np.ones_like(a), cache._replace(nonlinearity="sigmoid"))
    a_t, _, cell = fastrnn.rnn_cell_forward(x[:, :, 0], a0, params, nonlinearity="relu")
    with pytest.raises(ValueError, match="cache.nonlinearity"):
        fastrnn.rnn_cell_backward(np.ones_like(a_t), cell._replace(nonlinearity="sigmoid"))


def test_the_model_keeps_its_nonlinearity(backend, tmp_path):
    model = fastrnn.RNN(5, 6, 5, nonlinearity="relu", backend=backend, seed=0)
    x_index = np.random.default_rng(0).integers(0, 5, size=(3, 4))
    y = np.random.default_rng(1).integers(0, 5, size=(3, 4))
    a0 = np.zeros((6, 3))
    loss, _ = model.loss_and_grads(x_index, y)
    expected, _ = fastrnn.loss_and_grads_onehot(
        x_index, a0, y, model.params, backend=backend, nonlinearity="relu"
    )
    assert loss == expected
    assert model.evaluate(x_index, y) == fastrnn.loss_onehot(
        x_index, a0, y, model.params, nonlinearity="relu", backend=backend
    )
    model.save(tmp_path / "relu.npz")
    loaded = fastrnn.RNN.load(tmp_path / "relu.npz", backend=backend)
    assert loaded.nonlinearity == "relu"
    assert loaded.loss_and_grads(x_index, y)[0] == model.loss_and_grads(x_index, y)[0]


def test_checkpoints_without_a_nonlinearity_load_as_tanh(tmp_path):
    model = fastrnn.RNN(5, 6, 5, seed=0)
    model.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as archive:
        members = {name: archive[name] for name in archive.files if name != "nonlinearity"}
    np.savez(tmp_path / "old.npz", **members)  # as written before relu existed
    assert fastrnn.RNN.load(tmp_path / "old.npz").nonlinearity == "tanh"
    members["nonlinearity"] = np.array("sigmoid")
    np.savez(tmp_path / "bad.npz", **members)
    with pytest.raises(fastrnn.CheckpointError, match="nonlinearity"):
        fastrnn.RNN.load(tmp_path / "bad.npz")


def test_train_nonlinearity_relu(tmp_path, capsys):
    out = tmp_path / "relu.npz"
    argv = ["train", "--steps", "30", "--hidden", "16", "--nonlinearity", "relu", "--out", str(out),
            "--plot", "none", "--sample-every", "0", "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert '"nonlinearity": "relu"' in summary
    model = fastrnn.RNN.load(out)
    assert model.nonlinearity == "relu"
    assert fastrnn.text.sample(model, 20, seed=0)  # sampling runs the relu cell
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--nonlinearity", "sigmoid"])
    assert exit_.value.code == 2


def test_matches_torch_relu_rnn():
    torch = pytest.importorskip("torch", reason="PyTorch is not a test dependency; checked where installed")
    x, a0, y, params = relu_problem((4, 6, 5, 3, 7), seed=11)
    loss, grads = fastrnn.loss_and_grads(x, a0, y, params, nonlinearity="relu")
    rnn, linear = torch_modules(params, nonlinearity="relu")
    hidden, _ = rnn(
        torch.from_numpy(np.ascontiguousarray(x.transpose(2, 1, 0))), torch.from_numpy(a0.T.copy())[None]
    )
    logits = linear(hidden).reshape(-1, 5)
    targets = torch.from_numpy(np.ascontiguousarray(y.T).reshape(-1))
    torch_loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / 3
    torch_loss.backward()
    assert abs(float(torch_loss.detach()) - loss) <= 1e-12 * loss
    assert_agree(grads["dW_aa"], rnn.weight_hh_l0.grad.numpy(), np.float64, "dW_aa")
    assert_agree(grads["dW_ax"], rnn.weight_ih_l0.grad.numpy(), np.float64, "dW_ax")
    assert_agree(grads["db_a"][:, 0], rnn.bias_ih_l0.grad.numpy(), np.float64, "db_a")
