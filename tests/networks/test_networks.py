"""Networks of several layers, two directions and variable lengths (SPEC version 2):
parameter keys, both backends against each other and against central differences, padding
that is never read, the final states, workers, and the mapping to PyTorch (optional)."""

import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn import optim, validation
from helpers import BACKENDS, assert_agree, check, numeric_gradient, padding_of, random_network

LAYERS = (1, 2, 3)
LENGTH_KINDS = ("full", "ragged", "all one", "all T")


# -- parameters ------------------------------------------------------------------------------


def test_init_params_keys_and_shapes():
    params = fastrnn.init_params(3, 4, 5, num_layers=2, bidirectional=True, seed=0)
    assert list(params) == [
        "W_ax", "W_aa", "b_a", "W_ax_reverse", "W_aa_reverse", "b_a_reverse",
        "W_ax_l1", "W_aa_l1", "b_a_l1", "W_ax_l1_reverse", "W_aa_l1_reverse", "b_a_l1_reverse",
        "W_ya", "b_y",
    ]  # fmt: skip
    assert params["W_ax"].shape == params["W_ax_reverse"].shape == (4, 3)
    assert params["W_ax_l1"].shape == params["W_ax_l1_reverse"].shape == (4, 8)
    assert params["W_ya"].shape == (5, 8)
    assert all(value.flags.c_contiguous for value in params.values())
    # The defaults draw the seed's network exactly as before version 2.
    seed_params = fastrnn.init_params(3, 4, 5, seed=0)
    assert list(seed_params) == ["W_ax", "W_aa", "b_a", "W_ya", "b_y"]
    rng = np.random.default_rng(0)
    for name, fan_in in (("W_ax", 3), ("W_aa", 4), ("W_ya", 4)):
        bound = 1 / np.sqrt(fan_in)
        np.testing.assert_array_equal(seed_params[name], rng.uniform(-bound, bound, seed_params[name].shape))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p: p.pop("W_aa_l1"), "params is missing W_aa_l1"),
        (lambda p: p.pop("b_a_reverse"), "params is missing b_a_reverse"),
        (lambda p: p.update(W_aa_l3=p["W_aa_l1"]), "params is missing W_ax_l2"),  # a layer skipped
        (lambda p: p.update(extra=p["b_y"]), "unexpected key 'extra'"),
        (lambda p: [p.pop(k) for k in ("W_ax_l1_reverse", "W_aa_l1_reverse", "b_a_l1_reverse")],
         "params is missing W_ax_l1_reverse"),  # reverse keys for some layers only
        (lambda p: p.update(W_ax_l1=np.zeros((4, 4))), r"params\['W_ax_l1'\] must have shape \(n_a, D \* n_a\)"),
        (lambda p: p.update(W_ya=np.zeros((5, 4))), r"params\['W_ya'\] must have shape \(n_y, D \* n_a\)"),
    ],
)  # fmt: skip
def test_inconsistent_key_sets_are_named(change, match):
    params = fastrnn.init_params(3, 4, 5, num_layers=2, bidirectional=True, seed=0)
    change(params)
    x = np.zeros((3, 2, 3))
    with pytest.raises(ValueError, match=match):
        fastrnn.loss_and_grads(x, None, np.zeros((2, 3), dtype=int), params)


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda p: p.update(W_aa_l1=np.asfortranarray(p["W_aa_l1"])), None),  # copied C-contiguous
        (lambda p: p.update(b_a_reverse=p["b_a_reverse"].tolist()), None),  # converted
        (lambda p: p.update(W_ax_l1=p["W_ax_l1"].astype(np.float32)), TypeError),
        (lambda p: p.update(W_aa_l1_reverse=np.zeros((4, 5))), ValueError),
        (lambda p: p.update(W_ya=np.zeros((5, 4))), ValueError),
        (lambda p: p.update(b_y=np.full((5, 1), np.nan)), ValueError),
        (lambda p: p.pop("b_a_l1"), ValueError),
    ],
)  # fmt: skip
def test_layered_params_take_the_fast_checks_only_when_plainly_valid(change, error):
    # Layered and bidirectional params of C-contiguous arrays are checked by check_params'
    # fast path, with the thorough checks' result; anything else goes to the thorough
    # checks, which convert it or name what is wrong.
    params = fastrnn.init_params(3, 4, 5, num_layers=2, bidirectional=True, seed=0)
    p, dims = validation.check_params(params)
    assert list(p) == list(params) and all(p[name] is params[name] for name in params)
    assert dims == (3, 4, 5, np.float64, 2, 2)
    assert validation._params_if_plainly_valid(params, True) == (p, dims)
    change(params)
    assert validation._params_if_plainly_valid(params, True) is None
    if error is None:
        p, dims = validation.check_params(params)
        assert dims.num_layers == 2 and all(
            a.flags.c_contiguous and a.dtype == np.float64 for a in p.values()
        )
    else:
        with pytest.raises(error):
            validation.check_params(params)


# -- the backends agree --------------------------------------------------------------------


def all_results(backend, params, x, x_index, a0, y, lengths, nonlinearity):
    """Every public result of the sequence functions, by name."""
    options = dict(backend=backend, nonlinearity=nonlinearity, lengths=lengths)
    loss, grads, final = fastrnn.loss_and_grads(x, a0, y, params, return_state=True, **options)
    loss_1h, grads_1h = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, **options)
    per_sequence = fastrnn.loss(x, a0, y, params, per_sequence=True, **options)
    per_sequence_1h, final_1h = fastrnn.loss_onehot(
        x_index, a0, y, params, per_sequence=True, return_state=True, **options
    )
    a, y_hat, cache, forward_final = fastrnn.rnn_forward(x, a0, params, return_state=True, **options)
    backward = fastrnn.rnn_backward(np.ones_like(a), cache)
    return dict(
        loss=loss, loss_1h=loss_1h, per_sequence=per_sequence, per_sequence_1h=per_sequence_1h, final=final,
        final_1h=final_1h, a=a, y_hat=y_hat, forward_final=forward_final,
        **{f"grads.{k}": v for k, v in grads.items()}, **{f"onehot.{k}": v for k, v in grads_1h.items()},
        **{f"backward.{k}": v for k, v in backward.items()},
    )  # fmt: skip


@pytest.mark.parametrize("labels", ["step", "sequence"])
@pytest.mark.parametrize("lengths_kind", LENGTH_KINDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("num_layers", LAYERS)
def test_the_backends_agree(dtype, num_layers, bidirectional, lengths_kind, labels):
    nonlinearity = "relu" if (num_layers + bidirectional) % 2 else "tanh"
    for shape in ((3, 4, 5, 4, 6), (2, 3, 3, 1, 5), (3, 2, 4, 3, 1)):  # m = 1 and T = 1 among them
        problem = random_network(*shape, num_layers=num_layers, bidirectional=bidirectional,
                                  lengths_kind=lengths_kind, labels=labels, dtype=dtype, seed=sum(shape))  # fmt: skip
        results = {backend: all_results(backend, *problem, nonlinearity) for backend in BACKENDS}
        for name, value in results["numba"].items():
            expected = results["numpy"][name]
            assert np.shape(value) == np.shape(expected), name
            assert np.asarray(value).dtype == np.dtype(dtype), name
            assert_agree(value, expected, dtype, f"{shape} {name}")
        numba = results["numba"]
        assert_agree(numba["per_sequence"].mean(), numba["loss"], dtype, "mean of the per-sequence losses")
        np.testing.assert_array_equal(numba["final"], numba["forward_final"])


def test_results_have_the_documented_shapes():
    params, x, x_index, a0, y, lengths = random_network(3, 4, 5, 6, 7, num_layers=2, bidirectional=True)
    loss, grads, final = fastrnn.loss_and_grads(x, None, y, params, lengths=lengths, return_state=True)
    assert set(grads) == {"d" + k for k in params} | {"dx", "da0"}
    assert grads["dx"].shape == x.shape and grads["da0"].shape == final.shape == (4, 4, 6)
    a, y_hat, cache = fastrnn.rnn_forward(x, a0, params, lengths=lengths)
    assert a.shape == (8, 6, 7) and y_hat.shape == (5, 6, 7)
    seq_loss, seq_grads = fastrnn.loss_and_grads(x, a0, y[:, 0], params, lengths=lengths)
    assert seq_grads["dx"].shape == x.shape
    # a0 of one layer in one direction may be (n_a, m): da0 and the state come back so.
    one, x1, _, a0_1, y1, lengths1 = random_network(3, 4, 5, 6, 7, num_layers=1, bidirectional=False)
    _, g1, s1 = fastrnn.loss_and_grads(x1, a0_1[0], y1, one, lengths=lengths1, return_state=True)
    _, g3, s3 = fastrnn.loss_and_grads(x1, a0_1, y1, one, lengths=lengths1, return_state=True)
    assert g1["da0"].shape == s1.shape == (4, 6)
    np.testing.assert_array_equal(g1["da0"], g3["da0"][0])
    np.testing.assert_array_equal(s1, s3[0])


# -- against central differences (float64) -------------------------------------------------


# Every combination but the seed's network (one layer, forward, full length), which
# test_gradcheck.py, test_nonlinearity.py and test_sequence_labels.py check.
NETWORKS = [
    (layers, bidirectional, lengths_kind)
    for layers, bidirectional, lengths_kind in itertools.product([1, 2], [False, True], ["full", "ragged"])
    if (layers, bidirectional, lengths_kind) != (1, False, "full")
]


@pytest.mark.parametrize("labels", ["step", "sequence"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers, bidirectional, lengths_kind", NETWORKS, ids=str)
def test_gradients_match_central_differences(
    backend, num_layers, bidirectional, nonlinearity, lengths_kind, labels
):
    params, x, x_index, a0, y, lengths = random_network(
        3, 3, 3, 3, 4, num_layers=num_layers, bidirectional=bidirectional, lengths_kind=lengths_kind,
        labels=labels, seed=11,
    )  # fmt: skip
    if nonlinearity == "relu":  # keep units alive, so that every gradient is checked on non-zero values
        for name in params:
            if name.startswith("b_a"):
                params[name] += 1.0
    options = dict(nonlinearity=nonlinearity, lengths=lengths)
    _, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, **options)
    _, grads_1h = fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend, **options)

    def dense():
        return float(fastrnn.loss_and_grads(x, a0, y, params, backend="numpy", **options)[0])

    def one_hot():
        return float(fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend="numpy", **options)[0])

    for name in params:
        check(numeric_gradient(dense, params[name]), grads["d" + name], f"d{name}")
        check(numeric_gradient(one_hot, params[name]), grads_1h["d" + name], f"one-hot d{name}")
    check(numeric_gradient(dense, x), grads["dx"], "dx")
    check(numeric_gradient(dense, a0), grads["da0"], "da0")
    assert np.all(grads["dx"][:, padding_of(lengths, 3, 4)] == 0)


def test_rnn_backward_matches_central_differences(backend):
    params, x, _, a0, _, lengths = random_network(3, 3, 3, 3, 4, num_layers=2, bidirectional=True, seed=12)
    weights = np.random.default_rng(1).normal(size=(6, 3, 4))  # L = sum(weights * a)

    def objective():
        return float(
            np.sum(weights * fastrnn.rnn_forward(x, a0, params, backend="numpy", lengths=lengths)[0])
        )

    _, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend, lengths=lengths)
    grads = fastrnn.rnn_backward(weights, cache)
    for name in params:
        if name in ("W_ya", "b_y"):
            assert "d" + name not in grads
            continue
        check(numeric_gradient(objective, params[name]), grads["d" + name], f"d{name}")
    check(numeric_gradient(objective, x), grads["dx"], "dx")
    check(numeric_gradient(objective, a0), grads["da0"], "da0")


# -- padding is never read ------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["step", "sequence"])
def test_padding_is_never_read(backend, dtype, labels):
    params, x, x_index, a0, y, lengths = random_network(
        3, 4, 5, 5, 6, num_layers=2, bidirectional=True, labels=labels, dtype=dtype, seed=3
    )
    padding = padding_of(lengths, 5, 6)
    assert padding.any()
    clean = all_results(backend, params, x, x_index, a0, y, lengths, "tanh")
    x[:, padding] = np.nan
    x_index[padding] = -1
    if labels == "step":
        y[padding] = -1
    dirty = all_results(backend, params, x, x_index, a0, y, lengths, "tanh")
    for name, value in clean.items():
        np.testing.assert_array_equal(dirty[name], value, err_msg=name)
    for name in ("a", "y_hat", "grads.dx", "backward.dx"):
        assert np.all(clean[name][:, padding] == 0), name


@pytest.mark.parametrize("layout", ["F", "strided"])
def test_inputs_in_any_layout_give_the_same_bits(backend, layout):
    params, x, _, a0, y, lengths = random_network(3, 4, 5, 4, 6, num_layers=2, bidirectional=True, seed=6)
    other = np.asfortranarray(x) if layout == "F" else np.repeat(x, 2, axis=1)[:, ::2]
    expected = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, lengths=lengths)
    got = fastrnn.loss_and_grads(other, a0, y, params, backend=backend, lengths=lengths)
    assert got[0] == expected[0]
    for name in expected[1]:
        np.testing.assert_array_equal(got[1][name], expected[1][name], err_msg=name)


def test_the_cache_owns_its_arrays(backend):
    """Changing x, a0, lengths or params after rnn_forward changes nothing in rnn_backward."""
    params, x, _, a0, _, lengths = random_network(3, 4, 5, 4, 6, num_layers=2, bidirectional=True, seed=9)
    a0 = np.ascontiguousarray(a0.transpose(0, 2, 1)).transpose(0, 2, 1)  # its sorted rows can be a0 itself
    lengths = lengths.astype(np.intp)  # taken as it is
    a, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend, lengths=lengths)
    da = np.random.default_rng(0).normal(size=a.shape)
    expected = fastrnn.rnn_backward(da, cache)
    x[...], a0[...], lengths[:] = 7.0, 3.0, 1
    for value in params.values():
        value[...] = 0.5
    got = fastrnn.rnn_backward(da, cache)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_a_batch_of_lengths_equals_each_sequence_alone(backend):
    """A sequence's results do not depend on the others' lengths or on its padding."""
    params, x, _, a0, y, lengths = random_network(3, 4, 5, 4, 6, num_layers=2, bidirectional=True, seed=5)
    losses = fastrnn.loss(x, a0, y, params, backend=backend, lengths=lengths, per_sequence=True)
    _, _, _, final = fastrnn.rnn_forward(x, a0, params, backend=backend, lengths=lengths, return_state=True)
    for i, length in enumerate(lengths):
        alone = fastrnn.loss(x[:, i : i + 1, :length], a0[:, :, i : i + 1], y[i : i + 1, :length], params,
                             backend=backend, per_sequence=True)  # fmt: skip
        assert_agree(losses[i : i + 1], alone, np.float64, f"sequence {i}")
        *_, final_alone = fastrnn.rnn_forward(x[:, i : i + 1, :length], a0[:, :, i : i + 1], params,
                                              backend=backend, return_state=True)  # fmt: skip
        assert_agree(final[:, :, i : i + 1], final_alone, np.float64, f"final state {i}")


# -- the seed's network is untouched ----------------------------------------------------------


def test_the_packed_path_at_full_length_agrees_with_the_seed_kernels(backend, dtype):
    """The two internal paths of the seed's network, side by side at the backend level
    (through the API, lengths all T take the dense path's kernels: the next test)."""
    from fastrnn import backends, packing

    impl = backends.resolve(backend)
    params, x, x_index, a0, y, _ = random_network(
        3, 4, 5, 4, 6, num_layers=1, bidirectional=False, dtype=dtype
    )
    pk = packing.make_packing(None, 4, 6)
    xs = np.ascontiguousarray(x.transpose(2, 1, 0))
    labels = np.ascontiguousarray(y.T)
    for inputs, packed in ((xs, xs.reshape(-1, 3)), (np.ascontiguousarray(x_index.T), x_index.T.reshape(-1))):
        loss, grads, a_last, _ = impl.loss_and_grads(inputs, a0[0].T, labels, params)
        packed_loss, packed_grads, final, _ = impl.packed_loss_and_grads(
            packed, np.ascontiguousarray(a0.transpose(0, 2, 1)), labels.reshape(-1), params, 1, 1,
            pk.batch_sizes, pk.offsets, pk.last_rows, batch_size=4, nonlinearity="tanh",
        )  # fmt: skip
        assert_agree(packed_loss, loss, dtype, "loss")
        for name in grads:
            expected = grads[name]
            got = (
                packed_grads[name].reshape(expected.shape) if name == "dx" else np.squeeze(packed_grads[name])
            )
            assert_agree(got, np.squeeze(expected), dtype, name)
        assert_agree(final[0], a_last, dtype, "final state")


def test_lengths_all_T_are_the_call_without_lengths(backend):
    params, x, x_index, a0, y, _ = random_network(3, 4, 5, 4, 6, num_layers=1, bidirectional=False)
    without = all_results(backend, params, x, x_index, a0, y, None, "tanh")
    full = all_results(backend, params, x, x_index, a0, y, np.full(4, 6), "tanh")
    for name, value in without.items():
        np.testing.assert_array_equal(full[name], value, err_msg=name)


def test_one_layer_gives_the_same_bits_whatever_the_a0_layout(backend):
    params, x, _, a0, y, _ = random_network(3, 4, 5, 4, 6, num_layers=1, bidirectional=False)
    results = [fastrnn.loss_and_grads(x, state, y, params, backend=backend) for state in (a0, a0[0])]
    assert results[0][0] == results[1][0]
    for name in results[0][1]:
        np.testing.assert_array_equal(np.squeeze(results[0][1][name]), np.squeeze(results[1][1][name]))


# -- workers, workspaces, optimizers ----------------------------------------------------------


def test_workers_agree_with_one_and_repeat_bitwise(backend, dtype):
    params, x, x_index, a0, y, lengths = random_network(
        3, 6, 5, 9, 7, num_layers=2, bidirectional=True, dtype=dtype, seed=8
    )
    one = fastrnn.loss_and_grads(
        x, a0, y, params, backend=backend, lengths=lengths, workers=1, return_state=True
    )
    for workers in (2, 3, -1):
        first, second = (
            fastrnn.loss_and_grads(x, a0, y, params, backend=backend, lengths=lengths, workers=workers, return_state=True)
            for _ in range(2)
        )  # fmt: skip
        assert_agree(first[0], one[0], dtype, "loss")
        assert first[0] == second[0]
        for name in one[1]:
            assert_agree(first[1][name], one[1][name], dtype, name)
            np.testing.assert_array_equal(first[1][name], second[1][name])
        assert_agree(first[2], one[2], dtype, "final state")
        losses = fastrnn.loss_onehot(x_index, a0, y, params, backend=backend, lengths=lengths, workers=workers,
                                     per_sequence=True)  # fmt: skip
        expected = fastrnn.loss_onehot(x_index, a0, y, params, backend=backend, lengths=lengths, per_sequence=True,
                                       workers=1)  # fmt: skip
        assert_agree(losses, expected, dtype, "per-sequence losses")


def test_a_workspace_holds_the_gradients_of_any_network(backend):
    params, x, _, a0, y, lengths = random_network(3, 4, 5, 4, 6, num_layers=2, bidirectional=True)
    workspace = fastrnn.Workspace()
    loss, grads = fastrnn.loss_and_grads(
        x, a0, y, params, backend=backend, lengths=lengths, workspace=workspace
    )
    expected_loss, expected = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, lengths=lengths)
    assert loss == expected_loss
    for name, value in expected.items():
        np.testing.assert_array_equal(grads[name], value)
        assert workspace.holds(grads[name]), name
    # Views of the workspace: its next use overwrites them, in place.
    first = {name: value.copy() for name, value in grads.items()}
    _, again = fastrnn.loss_and_grads(
        2 * x, a0, y, params, backend=backend, lengths=lengths, workspace=workspace
    )
    for name in first:
        assert np.shares_memory(grads[name], again[name]), name
        assert not np.array_equal(grads[name], first[name]), name


@pytest.mark.parametrize("optimizer", [optim.SGD(lr=0.1, momentum=0.9), optim.Adagrad(), optim.Adam()],
                         ids=lambda o: type(o).__name__)  # fmt: skip
def test_optimizers_and_clipping_update_every_key(optimizer):
    params, x, _, a0, y, lengths = random_network(3, 4, 5, 4, 6, num_layers=2, bidirectional=True)
    before = {name: value.copy() for name, value in params.items()}
    _, grads = fastrnn.loss_and_grads(x, a0, y, params, lengths=lengths)
    norm = np.sqrt(sum(np.sum(grads["d" + name] ** 2) for name in params))
    clipped = optim.clip_by_global_norm(grads, norm / 2)
    assert clipped == pytest.approx(norm)
    assert np.sqrt(sum(np.sum(grads["d" + name] ** 2) for name in params)) == pytest.approx(norm / 2)
    optimizer.step(params, grads)
    assert all(not np.array_equal(params[name], before[name]) for name in params)
    state = optimizer.state_dict()
    assert set(state["state"]) == set(params)
    restored = optim.from_state_dict(state)
    assert restored.state_dict()["steps"] == 1
    del grads["dW_aa_l1_reverse"]
    with pytest.raises(ValueError, match="grads is missing dW_aa_l1_reverse"):
        optim.clip_by_value(grads, 1.0)


# -- argument errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        (np.ones(3), TypeError, "lengths must hold integers"),
        (np.ones((3, 1), dtype=int), ValueError, r"lengths must be 1-dimensional \(m,\)"),
        (np.ones(2, dtype=int), ValueError, r"lengths must have shape \(m,\)"),
        (np.array([1, 0, 2]), ValueError, r"lengths must lie in \[1, T\] = \[1, 4\], got 0 at index 1"),
        (np.array([1, 5, 2]), ValueError, r"lengths must lie in \[1, T\] = \[1, 4\], got 5 at index 1"),
        ("3", TypeError, "lengths must be None or an integer array of shape"),
    ],
)
def test_bad_lengths_are_named(lengths, error, match):
    params, x, x_index, a0, y, _ = random_network(3, 4, 5, 3, 4, num_layers=2, bidirectional=False)
    for call in (
        lambda: fastrnn.loss_and_grads(x, a0, y, params, lengths=lengths),
        lambda: fastrnn.loss_onehot(x_index, a0, y, params, lengths=lengths),
        lambda: fastrnn.rnn_forward(x, a0, params, lengths=lengths),
    ):
        with pytest.raises(error, match=match):
            call()


def test_other_bad_arguments_are_named():
    params, x, x_index, a0, y, lengths = random_network(3, 4, 5, 3, 4, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=r"a0 must have shape \(num_layers \* D, n_a, m\)"):
        fastrnn.loss_and_grads(x, a0[:2], y, params)
    with pytest.raises(ValueError, match=r"a0 must be 3-dimensional \(num_layers \* D, n_a, m\)"):
        fastrnn.loss_and_grads(x, a0[0], y, params)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        fastrnn.loss_and_grads(x, a0, y, params, nonlinearity="sigmoid")
    x[0, 2, 1] = np.nan  # a real step of sequence 2
    with pytest.raises(ValueError, match="x must be finite at every real step.*sequence 2, step 1"):
        fastrnn.loss_and_grads(x, a0, y, params, lengths=np.array([4, 1, 2]))
    with pytest.raises(ValueError, match="x_index must hold one-hot indices in"):
        bad = x_index.copy()
        bad[0, 0] = -1
        fastrnn.loss_onehot(bad, a0, y, params, lengths=lengths)
    with pytest.raises(ValueError, match="params of a cell are one layer's"):
        fastrnn.rnn_cell_forward(x[:, :, 1], a0[0], params)


# -- the model ----------------------------------------------------------------------------------


def test_a_stacked_bidirectional_model_trains_saves_and_loads(tmp_path):
    params, x, _, _, y, lengths = random_network(
        3, 4, 5, 6, 7, num_layers=2, bidirectional=True, labels="sequence"
    )
    model = fastrnn.RNN(3, 4, 5, num_layers=2, bidirectional=True, seed=1)
    assert (model.num_layers, model.bidirectional) == (2, True)
    optimizer = optim.Adam(lr=0.05)
    losses = [model.train_step(x, y, optimizer, lengths=lengths) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert model.state is None  # nothing is carried in a bidirectional network
    with pytest.raises(ValueError, match="carry_state=True is for networks in one direction"):
        model.loss_and_grads(x, y, carry_state=True)
    path = model.save(tmp_path / "model.npz", optimizer=optimizer)
    loaded = fastrnn.RNN.load(path)
    assert (loaded.num_layers, loaded.bidirectional) == (2, True)
    for name, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
    assert loaded.evaluate(x, y, lengths=lengths) == model.evaluate(x, y, lengths=lengths)
    resumed = optim.from_state_dict(loaded.optimizer_state)
    assert set(resumed.state_dict()["state"]) == set(model.params)
    a, logits = model(x, lengths=lengths, logits=True)
    _, y_hat = model(x, lengths=lengths)
    assert a.shape == (8, 6, 7)
    shifted = np.exp(logits - logits.max(axis=0))
    valid = ~padding_of(lengths, 6, 7)
    assert_agree(
        (shifted / shifted.sum(axis=0))[:, valid], y_hat[:, valid], np.float64, "softmax of the logits"
    )
    assert np.all(logits[:, ~valid] == 0)


def test_a_stacked_model_carries_every_layers_state():
    model = fastrnn.RNN(3, 4, 5, num_layers=2, seed=1)
    params, x, _, _, y, _ = random_network(3, 4, 5, 2, 5, num_layers=2, bidirectional=False)
    model.loss_and_grads(x, y, carry_state=True)
    assert model.state.shape == (2, 4, 2)
    *_, final = fastrnn.rnn_forward(x, None, model.params, return_state=True)
    np.testing.assert_array_equal(model.state, final)
    # The next chunk starts from it: the same as the two chunks in one call.
    loss_1, _ = model.loss_and_grads(x, y, carry_state=True)
    *_, both = fastrnn.rnn_forward(np.concatenate([x, x], axis=2), None, model.params, return_state=True)
    assert_agree(model.state, both, np.float64, "state after two chunks")


# -- PyTorch (optional: not a test dependency) -------------------------------------------------


def torch_network(params, nonlinearity):
    """``torch.nn.RNN`` and ``nn.Linear`` holding ``params`` (float64), mapped by name."""
    torch = pytest.importorskip("torch", reason="PyTorch is not a test dependency; checked where installed")
    dims = fastrnn.validation.check_params(params)[1]
    D = dims.directions
    rnn = torch.nn.RNN(dims.n_x, dims.n_a, num_layers=dims.num_layers, nonlinearity=nonlinearity,
                       bidirectional=D == 2).double()  # fmt: skip
    linear = torch.nn.Linear(D * dims.n_a, dims.n_y).double()
    with torch.no_grad():
        for layer, direction in itertools.product(range(dims.num_layers), range(D)):
            ours = fastrnn.params.layer_key("", layer, direction == 1)
            theirs = f"_l{layer}" + ("_reverse" if direction else "")
            getattr(rnn, "weight_ih" + theirs).copy_(torch.from_numpy(params["W_ax" + ours]))
            getattr(rnn, "weight_hh" + theirs).copy_(torch.from_numpy(params["W_aa" + ours]))
            getattr(rnn, "bias_ih" + theirs).copy_(torch.from_numpy(params["b_a" + ours][:, 0]))
            getattr(rnn, "bias_hh" + theirs).zero_()
        linear.weight.copy_(torch.from_numpy(params["W_ya"]))
        linear.bias.copy_(torch.from_numpy(params["b_y"][:, 0]))
    return torch, rnn, linear


@pytest.mark.parametrize("labels", ["step", "sequence"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_equals_pytorch_with_packed_sequences(labels, nonlinearity):
    params, x, _, a0, y, lengths = random_network(
        3, 4, 5, 5, 6, num_layers=2, bidirectional=True, labels=labels, seed=2
    )
    torch, rnn, linear = torch_network(params, nonlinearity)
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 1, 0))).requires_grad_(True)
    h0 = torch.from_numpy(np.ascontiguousarray(a0.transpose(0, 2, 1))).requires_grad_(True)
    packed = pack_padded_sequence(inputs, torch.from_numpy(lengths), enforce_sorted=False)
    output, h_n = rnn(packed, h0)
    if labels == "step":
        padded, _ = pad_packed_sequence(output, total_length=6)  # (T, m, D * n_a)
        log_p = torch.log_softmax(linear(padded), dim=-1)
        valid = torch.from_numpy(~padding_of(lengths, 5, 6).T)
        picked = log_p.gather(2, torch.from_numpy(np.where(valid.numpy(), y.T, 0))[..., None])[..., 0]
        loss = -(picked * valid).sum() / 5
    else:
        top = torch.cat([h_n[-2], h_n[-1]], dim=1)
        loss = torch.nn.functional.cross_entropy(linear(top), torch.from_numpy(y), reduction="mean")
    loss.backward()
    ours, grads, final = fastrnn.loss_and_grads(x, a0, y, params, lengths=lengths, nonlinearity=nonlinearity,
                                                return_state=True)  # fmt: skip
    assert abs(float(ours) - loss.item()) < 1e-12
    np.testing.assert_allclose(final, h_n.detach().numpy().transpose(0, 2, 1), atol=1e-12)
    np.testing.assert_allclose(grads["dx"], inputs.grad.numpy().transpose(2, 1, 0), atol=1e-12)
    np.testing.assert_allclose(grads["da0"], h0.grad.numpy().transpose(0, 2, 1), atol=1e-12)
    np.testing.assert_allclose(grads["dW_aa_l1_reverse"], rnn.weight_hh_l1_reverse.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(grads["dW_ya"], linear.weight.grad.numpy(), atol=1e-12)
