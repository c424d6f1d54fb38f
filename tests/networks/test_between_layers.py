"""What a front door does between layers (``backends.layers``' ``between``; the PyTorch
door's dropout): both backends agree, the gradients are those of the network with the
door's transform (central differences), and a transform that changes nothing changes no bit."""

import numpy as np
import pytest

from fastrnn import backends, engine
from fastrnn.validation import check_params
from helpers import BACKENDS, assert_agree, check, numeric_gradient, random_network


class FixedDropout:
    """Inverted dropout with masks drawn once per layer and kept, as a training step's are."""

    def __init__(self, seed, p=0.4):
        self.rng, self.p, self.masks = np.random.default_rng(seed), p, {}

    def forward(self, layer, output):
        key = (layer, output.shape)
        if key not in self.masks:
            self.masks[key] = (self.rng.random(output.shape) >= self.p).astype(output.dtype) / (1 - self.p)
        return output * self.masks[key]

    def backward(self, layer, d_read):
        return d_read * self.masks[(layer, d_read.shape)]


class Unchanged:
    def forward(self, layer, output):
        return output.copy()

    def backward(self, layer, d_read):
        return d_read


def _engine_step(backend, problem, between, **options):
    """``engine.loss_and_grads`` on a ``random_network`` problem, in the engine's layout."""
    params, x, _, a0, y, lengths = problem
    p, dims = check_params(params)
    return engine.loss_and_grads(
        backends.resolve(backend), x.transpose(2, 1, 0), a0.transpose(0, 2, 1), y.T, p, dims,
        lengths=None if lengths is None else np.asarray(lengths), between_layers=between, **options,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("lengths_kind", ["full", "ragged"])
def test_the_backends_agree_with_a_transform_between_layers(dtype, bidirectional, lengths_kind):
    problem = random_network(4, 5, 3, 6, 7, num_layers=3, bidirectional=bidirectional, lengths_kind=lengths_kind,
                             dtype=dtype, seed=31)  # fmt: skip
    results = {backend: _engine_step(backend, problem, FixedDropout(seed=32)) for backend in BACKENDS}
    without = _engine_step("numba", problem, None)
    assert_agree(results["numba"][0], results["numpy"][0], dtype, "loss")
    assert results["numba"][0] != without[0]  # the transform took part
    for key, value in results["numpy"][1].items():
        assert_agree(results["numba"][1][key], value, dtype, key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_with_a_transform_between_layers_match_central_differences(backend):
    problem = random_network(3, 4, 3, 3, 5, num_layers=3, bidirectional=True, lengths_kind="ragged", seed=33)
    params, x, _, a0, _, _ = problem
    dropout = FixedDropout(seed=34)
    _, grads, _ = _engine_step(backend, problem, dropout)

    def objective():
        return float(_engine_step(backend, problem, dropout)[0])

    for name in ("W_ax", "W_aa_l1", "W_ax_l2_reverse", "b_a_l1_reverse", "W_ya"):
        check(numeric_gradient(objective, params[name]), grads["d" + name], "d" + name)
    check(numeric_gradient(objective, a0), grads["da0"].transpose(0, 2, 1), "da0")
    check(numeric_gradient(objective, x), grads["dx"].transpose(2, 1, 0), "dx")


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_backward_passes_keep_the_transform_in_the_cache(backend):
    problem = random_network(3, 4, 3, 3, 5, num_layers=2, bidirectional=False, lengths_kind="ragged", seed=35)
    params, x, _, a0, _, lengths = problem
    p, dims = check_params(params)
    impl, dropout = backends.resolve(backend), FixedDropout(seed=36)
    weights = np.random.default_rng(37).standard_normal((x.shape[2], x.shape[1], 4))

    def run():
        outputs, _, cache, _ = engine.forward(
            impl, x.transpose(2, 1, 0), a0.transpose(0, 2, 1), p, dims, lengths=np.asarray(lengths),
            between_layers=dropout,
        )  # fmt: skip
        return outputs, cache

    outputs, cache = run()
    assert cache.between_layers is dropout
    grads = engine.backward(engine.backward_inputs(cache), weights)

    def objective():
        return float(np.sum(run()[0] * weights))

    for name in ("W_ax", "W_aa", "W_ax_l1", "b_a_l1"):
        check(numeric_gradient(objective, params[name]), grads["d" + name], "d" + name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_transform_that_changes_nothing_changes_no_bit(backend):
    problem = random_network(4, 5, 3, 6, 7, num_layers=2, bidirectional=True, seed=38)
    plain = _engine_step(backend, problem, None, workers=1)
    unchanged = _engine_step(backend, problem, Unchanged(), workers=1)
    assert unchanged[0] == plain[0]
    for key, value in plain[1].items():
        np.testing.assert_array_equal(unchanged[1][key], value, err_msg=key)
