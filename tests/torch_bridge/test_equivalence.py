"""``fastrnn.torch.RNN`` against ``torch.nn.RNN`` with the same weights: outputs, ``h_n`` and
every gradient, for every kind of network and every kind of input ``nn.RNN`` takes."""

import itertools

import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is optional (pip install 'fastrnn[torch]'); .ci/run installs a CPU build"
)

from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import fastrnn.torch as ft  # noqa: E402

N_X, N_A, M, T = 4, 5, 3, 6
TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}
INPUTS = ("padded", "batch_first", "unbatched", "packed_sorted", "packed_unsorted")
NETWORKS = list(itertools.product((1, 2, 3), (False, True), ("tanh", "relu"), (True, False)))


def pair(num_layers, bidirectional, nonlinearity, bias, dtype, batch_first=False, backend=None, seed=0):
    """``(nn.RNN, fastrnn.torch.RNN)`` of the same settings and weights."""
    torch.manual_seed(seed)
    settings = dict(
        num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nonlinearity, bias=bias,
        batch_first=batch_first, dtype=dtype,
    )  # fmt: skip
    reference = nn.RNN(N_X, N_A, **settings)
    ours = ft.RNN(N_X, N_A, backend=backend, **settings)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def make_input(kind, dtype, generator):
    """The leaf tensor of an input of ``kind`` (it requires grad)."""
    shape = {"unbatched": (T, N_X), "batch_first": (M, T, N_X)}.get(kind, (T, M, N_X))
    return torch.randn(shape, dtype=dtype, generator=generator, requires_grad=True)


def given(x, kind, lengths):
    """What the RNN is given: ``x`` itself, or packed (a new graph for each module)."""
    if kind.startswith("packed"):
        return pack_padded_sequence(x, lengths, enforce_sorted=kind == "packed_sorted")
    return x


def run(module, given, hx, output_weights, h_weights):
    """Output and h_n, and after a backward pass of a loss on both, every gradient."""
    output, h_n = module(given, hx)
    data = output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output
    loss = (data * output_weights[: data.numel()].view_as(data)).sum() + (
        h_n * h_weights[: h_n.numel()].view_as(h_n)
    ).sum()
    loss.backward()
    return data.detach().clone(), h_n.detach().clone()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize(
    "network",
    NETWORKS,
    ids=lambda n: f"L{n[0]}-{'bi' if n[1] else 'uni'}-{n[2]}-{'bias' if n[3] else 'nobias'}",
)
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no-hx"])
def test_same_results_and_gradients_as_nn_rnn(network, kind, dtype, with_hx):
    num_layers, bidirectional, nonlinearity, bias = network
    generator = torch.Generator().manual_seed(hash((network, kind)) % 2**31)
    lengths = torch.tensor([T, 1, 4]) if kind == "packed_unsorted" else torch.tensor([T, 4, 1])
    D = 2 if bidirectional else 1
    x = make_input(kind, dtype, generator)
    hx_shape = (num_layers * D, N_A) if kind == "unbatched" else (num_layers * D, M, N_A)
    hx = torch.randn(hx_shape, dtype=dtype, generator=generator, requires_grad=True) if with_hx else None
    output_weights = torch.randn(T * M * D * N_A, dtype=dtype, generator=generator)
    h_weights = torch.randn(num_layers * D * M * N_A, dtype=dtype, generator=generator)

    results = []
    for module in pair(*network, dtype, batch_first=kind == "batch_first"):
        for tensor in (x, hx):
            if tensor is not None:
                tensor.grad = None
        data, h_n = run(module, given(x, kind, lengths), hx, output_weights, h_weights)
        grads = [x.grad.clone()] + ([hx.grad.clone()] if with_hx else [])
        grads += [p.grad.clone() for p in module.parameters()]
        results.append((data, h_n, grads))
    (want_out, want_h, want_grads), (got_out, got_h, got_grads) = results
    torch.testing.assert_close(got_out, want_out, **TOLERANCE[dtype])
    torch.testing.assert_close(got_h, want_h, **TOLERANCE[dtype])
    assert len(got_grads) == len(want_grads)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("m, steps", [(1, 1), (1, 7), (5, 1)], ids=["m1-T1", "m1", "T1"])
@pytest.mark.parametrize("network", [(1, False), (2, True)], ids=["one-layer", "two-layers-bi"])
def test_backends_agree(network, m, steps, dtype):
    """The NumPy reference and the Numba kernels behind the same door: the same outputs and
    gradients (m = 1 and T = 1 included)."""
    num_layers, bidirectional = network
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(steps, m, N_X, dtype=dtype, generator=generator)
    results = []
    for backend in ("numpy", "numba"):
        _, module = pair(num_layers, bidirectional, "tanh", True, dtype, backend=backend)
        xx = x.clone().requires_grad_()
        output, h_n = module(xx)
        (output.square().sum() + h_n.sum()).backward()
        results.append([output.detach(), h_n.detach(), xx.grad] + [p.grad for p in module.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_sharded_plans_give_the_same_results(workers):
    """Shards of whole sequences (``workers``) change the order of the weight gradients'
    sums only: the same results within rounding, and packed batches' rows land where they
    belong."""
    generator = torch.Generator().manual_seed(4)
    lengths = torch.tensor([6, 2, 5, 1, 6, 3, 4])
    x = torch.randn(6, 7, N_X, dtype=torch.float64, generator=generator)
    results = []
    for w in (1, workers):
        _, module = pair(2, True, "tanh", True, torch.float64)
        module.workers = w
        xx = x.clone().requires_grad_()
        output, h_n = module(pack_padded_sequence(xx, lengths, enforce_sorted=False))
        (output.data.square().sum() + h_n.sin().sum()).backward()
        results.append([output.data.detach(), h_n.detach(), xx.grad] + [p.grad for p in module.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "network", [(1, False, "tanh"), (2, True, "relu")], ids=["one-layer", "two-layers-bi-relu"]
)
@pytest.mark.parametrize("kind", ["padded", "packed_unsorted"])
def test_recurrent_products_by_steps_as_nn_rnn(network, kind, dtype, monkeypatch):
    """Where the recurrences' products are large enough, PyTorch makes them step by step on
    its threads (``numba_backend.STEP_PRODUCT_MULTIPLY_ADDS``): forced here at a small size,
    the same results and gradients as ``nn.RNN``, both directions, variable lengths."""
    from fastrnn import parallel
    from fastrnn.backends import numba_backend, numba_kernels
    from fastrnn.engine import recurrence

    monkeypatch.setattr(numba_backend, "STEP_PRODUCT_MULTIPLY_ADDS", {4: 0, 8: 0})
    monkeypatch.setattr(recurrence, "plan", lambda *args: parallel.Plan(1, 1, 1))  # PyTorch's products
    steps = []
    real_activation = numba_kernels.activation_rows_in_place
    monkeypatch.setattr(
        numba_kernels, "activation_rows_in_place", lambda *args: steps.append(1) or real_activation(*args)
    )
    num_layers, bidirectional, nonlinearity = network
    generator = torch.Generator().manual_seed(5)
    lengths = torch.tensor([T, 1, 4])
    x = make_input(kind, dtype, generator)
    hx_shape = (num_layers * (2 if bidirectional else 1), M, N_A)
    hx = torch.randn(hx_shape, dtype=dtype, generator=generator, requires_grad=True)
    results = []
    for module in pair(num_layers, bidirectional, nonlinearity, True, dtype):
        x.grad = hx.grad = None
        output, h_n = module(given(x, kind, lengths), hx)
        data = output.data if kind.startswith("packed") else output
        (data.square().sum() + h_n.sin().sum()).backward()
        results.append([data.detach(), h_n.detach(), x.grad, hx.grad] + [p.grad for p in module.parameters()])
    assert steps  # the steps ran
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("network", [(1, False), (2, True)], ids=["one-layer", "two-layers-bi"])
@pytest.mark.parametrize("kind", ["padded", "batch_first", "packed_unsorted"])
def test_inputs_without_gradient_skip_their_product(network, kind, dtype, monkeypatch):
    """Data that needs no gradient (the usual first layer's input): the backward pass is
    not asked for ``dx``, as ``nn.RNN``'s is not, and every other gradient is the same."""
    from fastrnn.backends import layers
    from fastrnn.engine import recurrence

    # What each layer's backward pass is asked for: one layer in one direction (either
    # pass, ``ops._OneLayerFunction`` or the general one), or the layer loop.
    asked = []
    real_one_direction, real_network = recurrence.one_direction_backward, layers.network_backward

    def spy_one_direction(*args):
        asked.append(args[-1])  # input_gradient
        return real_one_direction(*args)

    def spy_network(*args, input_gradient=True, **kwargs):
        asked.append(input_gradient)
        return real_network(*args, input_gradient=input_gradient, **kwargs)

    monkeypatch.setattr(recurrence, "one_direction_backward", spy_one_direction)
    monkeypatch.setattr(layers, "network_backward", spy_network)
    num_layers, bidirectional = network
    generator = torch.Generator().manual_seed(6)
    lengths = torch.tensor([T, 1, 4])
    x = make_input(kind, dtype, generator).detach()  # data: no gradient
    results = []
    for module in pair(num_layers, bidirectional, "tanh", True, dtype, batch_first=kind == "batch_first"):
        output, h_n = module(given(x, kind, lengths))
        data = output.data if kind.startswith("packed") else output
        (data.square().sum() + h_n.sin().sum()).backward()
        results.append([data.detach(), h_n.detach()] + [p.grad for p in module.parameters()])
    assert asked == [False] and x.grad is None
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("network", [(2, True), (3, True), (2, False)], ids=["L2-bi", "L3-bi", "L2-uni"])
def test_graphs_alive_together_keep_their_own_gradients(network):
    """The door reuses the memory of the arrays a pass drops (``ops._SCRATCH``) in each
    thread: two forward passes before either backward pass, and their backward passes in
    the other order, give each graph the gradients it gets alone."""
    num_layers, bidirectional = network
    _, ours = pair(num_layers, bidirectional, "tanh", True, torch.float64)
    generator = torch.Generator().manual_seed(7)
    inputs = [make_input("padded", torch.float64, generator) for _ in range(2)]
    weights = [torch.randn(T * M * (2 if bidirectional else 1) * N_A, dtype=torch.float64, generator=generator)
               for _ in range(2)]  # fmt: skip

    def loss(x, w):
        output, h_n = ours(x)
        return (output * w.view_as(output)).sum() + h_n.sin().sum()

    alone = []
    for x, w in zip(inputs, weights):
        ours.zero_grad()
        loss(x, w).backward()
        alone.append([x.grad.clone()] + [p.grad.clone() for p in ours.parameters()])
        x.grad = None
    losses = [loss(x, w) for x, w in zip(inputs, weights)]  # both graphs alive
    together = [None, None]
    for k in (1, 0):
        ours.zero_grad()
        losses[k].backward()
        together[k] = [inputs[k].grad] + [p.grad.clone() for p in ours.parameters()]
    for got, want in zip(together, alone):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
