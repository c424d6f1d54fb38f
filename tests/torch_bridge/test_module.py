"""``fastrnn.torch.RNN`` behaves as an ``nn.RNN`` beyond ``forward``: construction and its
errors, initialisation, serialisation, conversions, PyTorch's errors, the fallback, threads,
dropout."""

import copy
import io
import pickle
import warnings

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is optional (pip install 'fastrnn[torch]'); .ci/run installs a CPU build"
)

from torch import nn  # noqa: E402

import fastrnn.torch as ft  # noqa: E402
from fastrnn import parallel  # noqa: E402
from fastrnn.engine import recurrence  # noqa: E402


def test_is_an_nn_rnn_with_the_same_parameters_and_initialisation():
    torch.manual_seed(7)
    reference = nn.RNN(3, 4, num_layers=2, bidirectional=True)
    torch.manual_seed(7)
    ours = ft.RNN(3, 4, num_layers=2, bidirectional=True)
    assert isinstance(ours, nn.RNN)
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in reference.named_parameters()]
    for (_, got), (_, want) in zip(ours.named_parameters(), reference.named_parameters()):
        assert got.shape == want.shape
        assert torch.equal(got, want)  # the same draws for the same seed
    # state_dicts load both ways
    reference.load_state_dict(ours.state_dict())
    ours.load_state_dict(reference.state_dict())
    ours.flatten_parameters()  # a no-op, as nn.RNN's on the CPU


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((3, 4), dict(nonlinearity="sigmoid")),
        ((3, 4), dict(dropout=1.5)),
        ((3, 0), {}),
        ((3, 4), dict(num_layers=0)),
        ((3, 4), dict(proj_size=2)),
    ],
)
def test_constructor_errors_are_nn_rnns(args, kwargs):
    with pytest.raises(Exception) as want:
        nn.RNN(*args, **kwargs)
    with pytest.raises(type(want.value)) as got:
        ft.RNN(*args, **kwargs)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m(torch.randn(6, 3, 7)),  # wrong input_size
        lambda m: m(torch.randn(6, 3, 4), torch.randn(2, 3, 5)),  # wrong hx shape
        lambda m: m(torch.randn(6, 3, 4, dtype=torch.float64)),  # dtype mismatch with the weights
        lambda m: m(torch.randn(6, 3, 4), torch.randn(1, 3, 5, dtype=torch.float64)),  # hx of another dtype
        lambda m: m(torch.randn(2, 6, 3, 4)),  # 4-D input
        lambda m: m(torch.randn(6, 4), torch.randn(1, 1, 5)),  # unbatched input, batched hx
        lambda m: m(torch.randn(6, 3, 4), torch.randn(3, 5)),  # batched input, unbatched hx
    ],
    ids=["input_size", "hx-shape", "dtype", "hx-dtype", "4-D", "unbatched-hx", "batched-hx"],
)
def test_bad_input_gets_pytorchs_own_error(call):
    torch.manual_seed(0)
    reference = nn.RNN(4, 5)
    ours = ft.RNN(4, 5, fallback=False)
    with pytest.raises(Exception) as want:
        call(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no fallback warning on the way
        with pytest.raises(type(want.value)) as got:
            call(ours)
    assert str(got.value) == str(want.value)


def test_a_weight_of_another_shape_gets_pytorchs_error_not_a_kernel():
    """The kernels trust shapes: a parameter replaced by one of another shape goes to
    PyTorch's own path, which raises its error."""
    torch.manual_seed(0)
    reference, ours = nn.RNN(4, 5), ft.RNN(4, 5, fallback=False)
    for module in (reference, ours):
        module.weight_hh_l0 = nn.Parameter(torch.randn(5, 3))
    x = torch.randn(6, 3, 4)
    with pytest.raises(Exception) as want:
        reference(x)
    with pytest.raises(type(want.value)) as got:
        ours(x)
    assert str(got.value) == str(want.value)


def test_malformed_packed_sequence_is_an_error_before_any_kernel():
    from torch.nn.utils.rnn import PackedSequence

    rnn = ft.RNN(4, 5)
    data = torch.randn(6, 4)
    for batch_sizes, match in [
        (torch.tensor([2, 3, 1]), "non-increasing"),
        (torch.tensor([3, 3, 1]), "sum to 7"),
        (torch.tensor([3, 3, 0]), "positive"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            rnn(PackedSequence(data, batch_sizes))


def test_serialisation_copies_and_dtype_moves():
    torch.manual_seed(1)
    rnn = ft.RNN(3, 4, num_layers=2, workers=1)
    x = torch.randn(5, 2, 3)
    want = rnn(x)[0]
    buffer = io.BytesIO()
    torch.save(rnn, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (loaded, pickle.loads(pickle.dumps(rnn)), copy.deepcopy(rnn)):
        assert type(other) is ft.RNN and other.workers == 1
        assert torch.equal(other(x)[0], want)
    state = io.BytesIO()
    torch.save(rnn.state_dict(), state)
    state.seek(0)
    fresh = ft.RNN(3, 4, num_layers=2)
    fresh.load_state_dict(torch.load(state))
    assert torch.equal(fresh(x)[0], want)
    doubled = copy.deepcopy(rnn).double()
    assert doubled.weight_ih_l0.dtype == torch.float64
    torch.testing.assert_close(doubled(x.double())[0].float(), want, rtol=1e-5, atol=1e-6)
    assert doubled.float().to("cpu")(x)[0].dtype == torch.float32


def test_fallback_for_what_the_kernels_cannot_run(monkeypatch):
    monkeypatch.setattr(ft.module, "_warned", set())
    torch.manual_seed(2)
    reference = nn.RNN(3, 4, dtype=torch.bfloat16)
    ours = ft.RNN(3, 4, dtype=torch.bfloat16)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="bfloat16"):
        got = ours(x)[0]
    assert torch.equal(got, reference(x)[0])  # PyTorch's own path: the same bits
    strict = ft.RNN(3, 4, dtype=torch.bfloat16, fallback=False)
    with pytest.raises(RuntimeError, match="fallback=False"):
        strict(x)


class _Subclass(torch.Tensor):
    pass


def test_fallback_for_a_tensor_subclass(monkeypatch):
    monkeypatch.setattr(ft.module, "_warned", set())  # the warning is given once per reason per process
    torch.manual_seed(3)
    ours = ft.RNN(3, 4)
    x = torch.randn(5, 2, 3).as_subclass(_Subclass)
    with pytest.warns(RuntimeWarning, match="the input is a _Subclass"):
        output = ours(x)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(x)  # once only
    reference = nn.RNN(3, 4)
    reference.load_state_dict(ours.state_dict())
    torch.testing.assert_close(torch.Tensor(output), torch.Tensor(reference(torch.Tensor(x))[0]))
    with pytest.raises(RuntimeError, match="_Subclass"):
        ft.RNN(3, 4, fallback=False)(x)


def test_threads_default_to_the_calling_thread_and_workers_overrides(monkeypatch):
    """By default the kernels run on the calling thread with one BLAS thread, whatever
    ``torch.set_num_threads`` says (so ``set_num_threads(1)`` means one thread); ``workers=``
    cuts the batch into that many shards, run by fastrnn's pool."""
    plans, shard_calls = [], []
    real_plan, real_run_shards = recurrence.plan, parallel.run_shards

    def spy_plan(*args):
        plans.append(real_plan(*args))
        return plans[-1]

    def spy_run_shards(task, shards, threads):
        shard_calls.append((shards, threads))
        return real_run_shards(task, shards, threads)

    monkeypatch.setattr(recurrence, "plan", spy_plan)
    monkeypatch.setattr(parallel, "run_shards", spy_run_shards)
    x = torch.randn(64, 32, 65)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ft.RNN(65, 128)(x)[0].sum().backward()
    finally:
        torch.set_num_threads(before)
    assert plans and all(plan == parallel.Plan(1, 1, 1) for plan in plans)
    assert shard_calls == []
    plans.clear()
    ft.RNN(65, 128, workers=3)(x)[0].sum().backward()
    assert [plan.shards for plan in plans] == [3]  # planned by the forward pass, kept for the backward pass
    assert [calls[0] for calls in shard_calls] == [3, 3]  # both passes ran it


def test_weights_replaced_between_calls_are_the_ones_used():
    """The module's cheap check that its flat weights are its parameters (``RNN.
    _update_flat_weights``) falls back to PyTorch's for every other case: a weight
    reassigned, changed through ``.data``, parametrized, or swapped in by
    ``torch.func.functional_call``.  Each call uses the weights ``nn.RNN`` uses."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, weight):
            return 2 * weight

    torch.manual_seed(12)
    reference = nn.RNN(3, 4, num_layers=2, dtype=torch.float64)
    ours = ft.RNN(3, 4, num_layers=2, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def same():
        for got, want in zip(ours(x), reference(x)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    same()
    new_weight = torch.randn(4, 4, dtype=torch.float64)
    for module in (ours, reference):
        module.weight_hh_l1 = nn.Parameter(new_weight.clone())  # reassigned
    same()
    for module in (ours, reference):
        module.weight_ih_l0.data = module.weight_ih_l0.data * 0.5  # the same Parameter, new data
    same()
    swapped = {"bias_hh_l0": torch.randn(4, dtype=torch.float64)}
    for got, want in zip(
        torch.func.functional_call(ours, swapped, (x,)), torch.func.functional_call(reference, swapped, (x,))
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    same()  # and back to the module's own afterwards
    for module in (ours, reference):
        parametrize.register_parametrization(module, "weight_hh_l0", Doubled())
    same()
    with torch.no_grad():
        for module in (ours, reference):
            module.parametrizations.weight_hh_l0.original.mul_(-1)  # the parametrization recomputed
    same()


@pytest.fixture
def two_torch_threads():
    """PyTorch's thread setting at 2 for the test (the door's budget), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_side_by_side_only_where_it_pays(two_torch_threads, monkeypatch):
    """A bidirectional layer's two directions run on two threads only in the door's default
    plan, within PyTorch's thread setting, for recurrences run by the kernels and long
    enough (``ops.SIDE_BY_SIDE_MULTIPLY_ADDS``)."""
    from fastrnn import backends
    from fastrnn.torch import ops

    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    numba_impl, numpy_impl = backends.resolve("numba"), backends.resolve("numpy")

    def decide(impl=numba_impl, workers=0, T=64, m=32, n_a=128, directions=2, dtype=torch.float32):
        inputs = torch.empty(T * m, 65, dtype=dtype)
        hx = torch.empty(directions, m, n_a, dtype=dtype)
        plan = ops._plan(impl, workers, inputs, hx, 1, directions)
        return ops._side_by_side(impl, workers, plan, inputs, hx, directions)

    assert decide() is ops._run_side_by_side  # char-rnn size, both dtypes
    assert decide(dtype=torch.float64) is ops._run_side_by_side
    assert decide(directions=1) is None
    assert decide(workers=1) is None and decide(workers=2) is None  # the user's plan
    assert decide(impl=numpy_impl) is None  # the reference stays one thread
    assert decide(T=100, m=1, n_a=16) is None  # tiny: 25,600 multiply-adds a direction
    assert decide(T=50, m=64, n_a=512) is None  # recurrences step by step on PyTorch's threads
    torch.set_num_threads(1)
    assert decide() is None  # one thread in all
    torch.set_num_threads(2)
    monkeypatch.setattr(parallel, "available_cores", lambda: 1)
    assert decide() is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_directions_side_by_side_give_the_same_bits(
    num_layers, packed, dtype, two_torch_threads, monkeypatch
):
    """Forced on at a small size, the directions side by side give outputs, ``h_n`` and every
    gradient bitwise as one after the other (in training, with dropout between layers), and
    as ``nn.RNN``'s within rounding."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from fastrnn.torch import ops

    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    calls = []
    real_run_shards = parallel.run_shards

    def spy_run_shards(task, shards, threads):
        calls.append((shards, threads))
        return real_run_shards(task, shards, threads)

    monkeypatch.setattr(parallel, "run_shards", spy_run_shards)
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(7, 4, 3, dtype=dtype, generator=generator, requires_grad=True)
    hx = torch.randn(2 * num_layers, 4, 5, dtype=dtype, generator=generator, requires_grad=True)
    lengths = torch.tensor([7, 2, 5, 1])
    torch.manual_seed(3)
    reference = nn.RNN(3, 5, num_layers=num_layers, bidirectional=True, dtype=dtype)
    ours = ft.RNN(
        3, 5, num_layers=num_layers, bidirectional=True, dtype=dtype, dropout=0.3 if num_layers > 1 else 0.0
    )
    ours.load_state_dict(reference.state_dict())

    def results(module, threshold, training):
        monkeypatch.setattr(ops, "SIDE_BY_SIDE_MULTIPLY_ADDS", threshold)
        module.train(training)
        module.zero_grad()
        x.grad = hx.grad = None
        torch.manual_seed(11)  # the same dropout masks
        output, h_n = module(pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x, hx)
        data = output.data if packed else output
        (data.square().sum() + h_n.sin().sum()).backward()
        return [data.detach(), h_n.detach(), x.grad, hx.grad] + [p.grad.clone() for p in module.parameters()]

    for training in (False, True):
        calls.clear()
        together = results(ours, 0, training)
        assert calls == [(2, 2)] * 2 * num_layers  # every layer, both passes
        calls.clear()
        one_after_the_other = results(ours, 10**18, training)
        assert calls == []
        for got, want in zip(together, one_after_the_other):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for got, want in zip(results(ours, 0, False), results(reference, 0, False)):
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize(
    "num_layers, bidirectional, function",
    [(2, True, "_RNNFunctionBackward"), (1, False, "_OneLayerFunctionBackward")],
    ids=["side-by-side", "one-layer-lane"],
)
def test_calls_from_several_threads_keep_their_own_results(
    num_layers, bidirectional, function, two_torch_threads, monkeypatch
):
    """Two threads training their own models at once, each gets, at every step, the bits it
    gets alone: bidirectional models side by side (four threads on fastrnn's pool and the
    callers), and one-layer models in the lane (each thread's own scratch memory)."""
    from concurrent.futures import ThreadPoolExecutor

    from fastrnn.torch import ops

    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    monkeypatch.setattr(ops, "SIDE_BY_SIDE_MULTIPLY_ADDS", 0)

    def model(seed):  # made on this thread: PyTorch's global generator is shared by all
        torch.manual_seed(seed)
        rnn = ft.RNN(3, 6, num_layers=num_layers, bidirectional=bidirectional, dtype=torch.float64)
        x = torch.randn(9, 5, 3, dtype=torch.float64)
        assert type(rnn(x)[0].grad_fn).__name__ == function
        return rnn, x

    def steps(rnn, x):
        got = []
        for _ in range(100):
            rnn.zero_grad()
            output, h_n = rnn(x)
            (output.square().sum() + h_n.sum()).backward()
            got.append(
                torch.cat([output.detach().reshape(-1)] + [p.grad.reshape(-1) for p in rnn.parameters()])
            )
        return got

    models = [model(seed) for seed in (1, 2)]
    alone = [steps(*models[k]) for k in range(2)]
    with ThreadPoolExecutor(2) as pool:
        together = [
            future.result(timeout=120) for future in [pool.submit(steps, *models[k]) for k in range(2)]
        ]
    for got, want in zip(together, alone):
        for step_got, step_want in zip(got, want):
            torch.testing.assert_close(step_got, step_want, rtol=0, atol=0)


def test_one_layer_lane_only_for_the_smallest_calls():
    """``ops._OneLayerFunction`` runs one layer in one direction on a time-major tensor, by
    the Numba backend in the default plan, where every product is too small for BLAS
    threads; every other call runs the general pass (``ops._RNNFunction``)."""
    from fastrnn.torch import ops

    def lane(T, m, n_x, n_a, num_layers=1, bidirectional=False, packed=False, backend="numba", workers=0):
        batch_sizes = torch.full((T,), m) if packed else None
        return ops._one_layer_lane(
            torch.empty(T, m, n_x), batch_sizes, num_layers, bidirectional, backend, workers, n_a
        )

    assert lane(100, 1, 8, 16)  # tiny: 25,600 multiply-adds in its largest product
    assert not lane(100, 16, 32, 64)  # small: 6.6 million
    assert not lane(100, 1, 8, 16, num_layers=2)
    assert not lane(100, 1, 8, 16, bidirectional=True)
    assert not lane(100, 1, 8, 16, packed=True)
    assert not lane(100, 1, 8, 16, backend="numpy")  # the reference stays on the general pass
    assert not lane(100, 1, 8, 16, workers=1)  # the user's plan

    def function_of(module, input):
        output, _ = module(input)
        return type(output.grad_fn).__name__

    x = torch.randn(100, 1, 8)
    assert function_of(ft.RNN(8, 16), x) == "_OneLayerFunctionBackward"
    assert function_of(ft.RNN(8, 16, num_layers=2), x) == "_RNNFunctionBackward"
    assert function_of(ft.RNN(8, 16, workers=1), x) == "_RNNFunctionBackward"
    assert function_of(ft.RNN(8, 16, backend="numpy"), x) == "_RNNFunctionBackward"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("nonlinearity, bias", [("tanh", True), ("relu", False)], ids=["tanh", "relu-nobias"])
@pytest.mark.parametrize("m, steps", [(1, 1), (1, 7), (5, 1), (3, 6)], ids=["m1-T1", "m1", "T1", "m3-T6"])
def test_one_layer_lane_gives_the_general_pass_bits(m, steps, nonlinearity, bias, dtype, monkeypatch):
    """The lane runs the engine functions the general pass runs for one layer, on the same
    arrays: outputs, ``h_n`` and every gradient bitwise the same, whichever results the loss
    reads, with and without ``hx``, for inputs that need a gradient and inputs that do not."""
    from fastrnn.torch import ops

    lane = ops._one_layer_lane
    generator = torch.Generator().manual_seed(12)
    torch.manual_seed(5)
    module = ft.RNN(4, 5, nonlinearity=nonlinearity, bias=bias, dtype=dtype)
    x = torch.randn(steps, m, 4, dtype=dtype, generator=generator)
    hx = torch.randn(1, m, 5, dtype=dtype, generator=generator)

    def results(in_lane, reads, with_hx, input_gradient):
        monkeypatch.setattr(ops, "_one_layer_lane", lane if in_lane else lambda *args: False)
        module.zero_grad()
        xx = x.clone().requires_grad_(input_gradient)
        h0 = hx.clone().requires_grad_() if with_hx else None
        output, h_n = module(xx, h0)
        function = "_OneLayerFunctionBackward" if in_lane else "_RNNFunctionBackward"
        assert type(output.grad_fn).__name__ == function
        loss = {"output": output.square().sum(), "h_n": h_n.sin().sum()}
        loss["both"] = loss["output"] + loss["h_n"]
        loss[reads].backward()
        grads = [xx.grad, h0.grad if with_hx else None] + [p.grad for p in module.parameters()]
        missing = [g is None for g in grads]
        return [output.detach(), h_n.detach()] + [g for g in grads if g is not None], missing

    for reads, with_hx, input_gradient in [
        ("both", True, True), ("output", True, False), ("h_n", False, True), ("both", False, False)
    ]:  # fmt: skip
        got, got_missing = results(True, reads, with_hx, input_gradient)
        want, want_missing = results(False, reads, with_hx, input_gradient)
        assert got_missing == want_missing == [not input_gradient, not with_hx] + [False] * (4 if bias else 2)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dropout_is_drawn_by_torch_and_off_in_eval():
    torch.manual_seed(4)
    rnn = ft.RNN(3, 4, num_layers=3, dropout=0.5, bidirectional=True)
    x = torch.randn(5, 2, 3)
    torch.manual_seed(10)
    first = rnn(x)[0]
    torch.manual_seed(10)
    assert torch.equal(rnn(x)[0], first)  # torch.manual_seed decides the masks
    assert not torch.equal(rnn(x)[0], first)
    rnn.eval()
    reference = nn.RNN(3, 4, num_layers=3, dropout=0.5, bidirectional=True).eval()
    reference.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(rnn(x)[0], reference(x)[0])


def test_dropout_gradients_match_central_differences():
    torch.manual_seed(5)
    rnn = ft.RNN(3, 4, num_layers=2, dropout=0.3, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x):
        torch.manual_seed(11)  # the same masks at every evaluation
        return rnn(x)[0]

    assert torch.autograd.gradcheck(f, (x,))


def test_zero_dropout_probability_one_keeps_nothing():
    rnn = ft.RNN(3, 4, num_layers=2, dropout=1.0)
    reference = nn.RNN(3, 4, num_layers=2, dropout=1.0)
    reference.load_state_dict(rnn.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(rnn(x)[0], reference(x)[0])  # the second layer sees only zeros


def test_replace_rnns_changes_no_output():
    torch.manual_seed(6)
    model = nn.Sequential()
    model.add_module("rnn", nn.RNN(3, 4, num_layers=2, batch_first=True))
    model.add_module("inner", nn.ModuleDict({"rnn": nn.RNN(4, 4, nonlinearity="relu", bias=False)}))
    x = torch.randn(2, 5, 3)

    def run(model):
        h = model.rnn(x)[0]
        return model.inner["rnn"](h.transpose(0, 1))[0]

    want = run(model)
    assert ft.replace_rnns(model) == 2
    assert isinstance(model.rnn, ft.RNN) and isinstance(model.inner["rnn"], ft.RNN)
    assert model.inner["rnn"].nonlinearity == "relu" and not model.inner["rnn"].bias
    torch.testing.assert_close(run(model), want)
    assert ft.replace_rnns(model) == 0  # already fastrnn's


@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True)])
def test_conversion_both_ways_with_a_fastrnn_model(layers, bidirectional):
    import fastrnn

    model = fastrnn.RNN(3, 4, 5, num_layers=layers, bidirectional=bidirectional, seed=0)
    rnn, linear = ft.from_fastrnn(model)
    x = np.random.default_rng(0).standard_normal((3, 2, 6))  # (n_x, m, T): fastrnn's layout
    want = model.forward(x)[1]  # (n_y, m, T) probabilities
    logits = linear(rnn(torch.from_numpy(x.transpose(2, 1, 0).copy()))[0])
    got = torch.softmax(logits, -1).detach().numpy().transpose(2, 1, 0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    back = ft.to_fastrnn(rnn, linear)
    for name, value in model.params.items():
        np.testing.assert_allclose(back.params[name], value, rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="in_features"):
        ft.to_fastrnn(rnn, nn.Linear(3, 5, dtype=torch.float64))
