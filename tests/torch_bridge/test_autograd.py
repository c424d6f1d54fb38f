"""Autograd through fastrnn's kernels: ``gradcheck``, ``opcheck`` of the operators,
``torch.compile``, PyTorch's saved-tensor rules, double backward, and a model trained with
either RNN giving the same losses."""

import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is optional (pip install 'fastrnn[torch]'); .ci/run installs a CPU build"
)

from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import fastrnn.torch as ft  # noqa: E402
from fastrnn.torch import ops  # noqa: E402

KINDS = [(1, False, "tanh"), (2, True, "tanh"), (3, False, "relu"), (2, True, "relu")]
DOUBLE = torch.float64


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"L{k[0]}-{'bi' if k[1] else 'uni'}-{k[2]}")
def test_gradcheck(kind, packed, backend):
    """Central differences (float64) for the input, hx and every parameter."""
    num_layers, bidirectional, nonlinearity = kind
    torch.manual_seed(0)
    rnn = ft.RNN(3, 4, num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nonlinearity, dtype=DOUBLE,
                 backend=backend)  # fmt: skip
    D = 2 if bidirectional else 1
    x = torch.randn(5, 3, 3, dtype=DOUBLE, requires_grad=True)
    hx = torch.randn(num_layers * D, 3, 4, dtype=DOUBLE, requires_grad=True)
    lengths = torch.tensor([2, 5, 1])
    names = [name for name, _ in rnn.named_parameters()]

    def f(x, hx, *params):
        given = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        # the gradcheck's perturbed copies of the parameters
        output, h_n = torch.func.functional_call(rnn, dict(zip(names, params)), (given, hx))
        return (output.data if packed else output), h_n

    params = [p.detach().clone().requires_grad_() for p in rnn.parameters()]
    assert torch.autograd.gradcheck(f, (x, hx, *params))


def _op_arguments(packed, nonlinearity="tanh"):
    torch.manual_seed(1)
    rnn = ft.RNN(3, 4, num_layers=2, bidirectional=True, dtype=DOUBLE)
    weights = [w.detach().clone().requires_grad_() for w in rnn._flat_weights]
    hx = torch.randn(4, 3, 4, dtype=DOUBLE, requires_grad=True)
    if packed:
        x = torch.randn(8, 3, dtype=DOUBLE, requires_grad=True)
        batch_sizes = torch.tensor([3, 3, 1, 1])
    else:
        x = torch.randn(4, 3, 3, dtype=DOUBLE, requires_grad=True)
        batch_sizes = None
    masks = torch.rand(1, x.shape[0] * (1 if packed else x.shape[1]), 8, dtype=DOUBLE) if packed else None
    return (x, hx, weights, batch_sizes, masks, 2, True, True, nonlinearity, "numba", 0)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed-with-dropout"])
def test_opcheck(packed):
    """The operators' schema, fake (meta) implementation, autograd registration and
    ``torch.compile``'s AOT dispatch, as PyTorch checks them."""
    results = torch.library.opcheck(ops.rnn_op, _op_arguments(packed))
    assert set(results.values()) == {"SUCCESS"}


def test_compiled_training_step_equals_eager():
    """With Dynamo allowed to enter RNN modules (``allow_rnn``; it refuses every
    ``nn.RNN`` otherwise, and runs it eagerly), the loss compiles into one graph
    (``fullgraph=True``: no graph break) whose loss and gradients are the eager step's,
    bit for bit."""
    import torch._dynamo

    torch.manual_seed(2)
    rnn = ft.RNN(3, 4, num_layers=2, bidirectional=True, dtype=DOUBLE)
    linear = nn.Linear(8, 5, dtype=DOUBLE)
    x = torch.randn(6, 3, 3, dtype=DOUBLE)
    y = torch.randint(0, 5, (6 * 3,))

    def loss_of(x):
        output, _ = rnn(x)
        return nn.functional.cross_entropy(linear(output).reshape(-1, 5), y)

    torch._dynamo.reset()
    compiled = torch.compile(loss_of, backend="aot_eager", fullgraph=True)
    results = []
    with torch._dynamo.config.patch(allow_rnn=True):
        for run in (compiled, loss_of):
            for p in list(rnn.parameters()) + list(linear.parameters()):
                p.grad = None
            loss = run(x)
            loss.backward()  # through the compiled graph's backward, the fastrnn::rnn_backward operator
            results.append([loss.detach()] + [p.grad.clone() for p in rnn.parameters()])
    torch._dynamo.reset()
    for got, want in zip(*results):
        assert torch.equal(got, want)


def test_without_allow_rnn_a_compiled_model_still_runs():
    """Dynamo's default: a graph break at the RNN module, which runs eagerly."""
    import torch._dynamo

    torch.manual_seed(3)
    rnn = ft.RNN(3, 4)
    x = torch.randn(5, 2, 3)
    torch._dynamo.reset()
    got = torch.compile(lambda x: rnn(x)[0].tanh(), backend="eager")(x)
    torch._dynamo.reset()
    assert torch.equal(got, rnn(x)[0].tanh())


def test_double_backward_is_a_clear_error():
    rnn = ft.RNN(3, 4, dtype=DOUBLE)
    x = torch.randn(5, 2, 3, dtype=DOUBLE, requires_grad=True)
    output, _ = rnn(x)
    (grad,) = torch.autograd.grad(output.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


def test_in_place_change_before_backward_is_pytorchs_error():
    """Saved with ``save_for_backward``: PyTorch's version counter catches it."""
    rnn = ft.RNN(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    output, _ = rnn(x * 1)
    loss = output.sum()
    with torch.no_grad():
        output.add_(1)  # the top layer's states, which the backward pass reads
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(2)
    output, _ = rnn(x)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()
    # The backward pass reuses the forward pass's params (views of the weights, the two
    # biases' sum): a bias changed in between is the same error, not a stale sum.
    output, _ = rnn(x)
    with torch.no_grad():
        rnn.bias_ih_l0.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()


def test_a_retained_graph_gives_the_same_gradients_twice():
    """The params the forward pass built serve every backward pass of its graph."""
    rnn = ft.RNN(3, 4, num_layers=2, bidirectional=True, dtype=DOUBLE)
    x = torch.randn(5, 2, 3, dtype=DOUBLE, requires_grad=True)
    output, h_n = rnn(x)
    loss = output.square().sum() + h_n.sum()
    first = torch.autograd.grad(loss, [x, *rnn.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *rnn.parameters()])
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_no_copies_of_a_contiguous_time_major_input():
    """The kernels read the caller's memory: a contiguous time-major input reaches them as
    it is, and the output is the memory they wrote."""
    seen = []
    real = ops._rows

    def spy(input, batch_sizes, m):
        rows, sizes = real(input, batch_sizes, m)
        seen.append(rows.__array_interface__["data"][0])
        return rows, sizes

    x = torch.randn(5, 2, 3)
    rnn = ft.RNN(3, 4)
    try:
        ops._rows = spy
        with torch.no_grad():
            rnn(x)
    finally:
        ops._rows = real
    assert seen == [x.data_ptr()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_a_model_trains_as_with_nn_rnn(dtype):
    """Embedding -> RNN -> Linear, 50 Adam steps: the same losses with either RNN."""
    vocab, steps = 11, 50

    def train(rnn_class):
        torch.manual_seed(4)
        model = nn.ModuleDict(
            {
                "embed": nn.Embedding(vocab, 6, dtype=dtype),
                "rnn": rnn_class(6, 8, num_layers=2, batch_first=True, dtype=dtype),
                "out": nn.Linear(8, vocab, dtype=dtype),
            }
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(5)
        text = torch.randint(0, vocab, (4, 13), generator=generator)
        losses = []
        for _ in range(steps):
            output, _ = model["rnn"](model["embed"](text[:, :-1]))
            loss = nn.functional.cross_entropy(
                model["out"](output).reshape(-1, vocab), text[:, 1:].reshape(-1)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    want, got = train(nn.RNN), train(ft.RNN)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    assert got[-1] < got[0]  # it learns
    for a, b in zip(got, want):
        assert abs(a - b) <= tolerance * max(1.0, abs(b))
