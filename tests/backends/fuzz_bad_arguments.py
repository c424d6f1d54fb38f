"""Random bad arguments for every public function: each call must return normally or raise
ValueError / TypeError whose message names the argument, never crash or raise anything else.

Run by ``test_properties.test_random_bad_arguments_never_crash`` in a subprocess:
``python fuzz_bad_arguments.py N`` tries N examples and prints ``examples: N``.
"""

import os
import re
import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn

N_X, N_A, N_Y, M, T = 3, 4, 5, 2, 6
GOOD = {
    "x": np.random.default_rng(0).standard_normal((N_X, M, T)),
    "a0": np.zeros((N_A, M)),
    "y": np.random.default_rng(1).integers(0, N_Y, (M, T)),
    "x_index": np.random.default_rng(2).integers(0, N_X, (M, T)),
    "params": fastrnn.init_params(N_X, N_A, N_Y, seed=3),
    "network": fastrnn.init_params(N_X, N_A, N_Y, num_layers=2, bidirectional=True, seed=4),
    "lengths": np.array([T, 2]),
}
bad_lengths = st.sampled_from(
    [np.array([0, 1]), np.array([1, T + 1]), np.array([1.0, 2.0]), np.array([1, 2, 3]), np.array([[1, 2]]),
     np.array([-1, 2]), np.array([True, True]), np.array(["1", "2"])]
)  # fmt: skip

garbage = st.one_of(
    st.none(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4),
    st.lists(st.lists(st.integers(-3, 9), max_size=3), max_size=3),
    st.just({}),
    st.just({"W_ax": 1}),
    st.builds(
        lambda shape, dtype: np.zeros(shape, dtype=dtype),
        st.lists(st.integers(0, 7), min_size=0, max_size=4).map(tuple),
        st.sampled_from(
            [np.float64, np.float32, np.float16, np.int64, np.int8, np.uint64, bool, np.complex128, object]
        ),
    ),
    st.builds(
        lambda shape, value: np.full(shape, value),
        st.sampled_from([(N_X, M, T), (N_A, M), (M, T), (N_A, N_A), (N_A, 1)]),
        st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1, N_Y, N_X, 10**18, 0.5]),
    ),
)


@st.composite
def calls(draw):
    function = draw(
        st.sampled_from(
            [
                "loss_and_grads",
                "loss_and_grads_onehot",
                "rnn_forward",
                "rnn_cell_forward",
                "loss",
                "loss_onehot",
            ]
        )
    )
    names = {"loss_and_grads": ["x", "a0", "y", "params"], "loss_and_grads_onehot": ["x_index", "a0", "y", "params"],
             "rnn_forward": ["x", "a0", "params"], "rnn_cell_forward": ["x", "a0", "params"],
             "loss": ["x", "a0", "y", "params"], "loss_onehot": ["x_index", "a0", "y", "params"]}[function]  # fmt: skip
    args = {name: GOOD[name] for name in names}
    options = {}
    if draw(st.booleans()):  # a keyword argument, good or bad
        options["nonlinearity"] = draw(
            st.one_of(st.sampled_from(["tanh", "relu", "sigmoid", "ReLU", ""]), garbage)
        )
    if function != "rnn_cell_forward" and draw(st.booleans()):
        options["lengths"] = draw(st.one_of(st.just(GOOD["lengths"]), bad_lengths, garbage))
    if draw(st.booleans()):  # a network of two layers, both directions: a0 (N_A, M) has the wrong layer count
        network = dict(GOOD["network"])
        change = draw(st.sampled_from(["none", "drop", "add", "garbage"]))
        key = draw(st.sampled_from(sorted(network)))
        if change == "drop":
            del network[key]
        elif change == "add":
            network[draw(st.sampled_from(["W_aa_l2", "W_ax_l5_reverse", "extra", "b_a_reverse2"]))] = network[
                key
            ]
        elif change == "garbage":
            network[key] = draw(garbage)
        args["params"] = network
        if draw(st.booleans()):
            args["a0"] = np.zeros((4, N_A, M))
    if function == "rnn_cell_forward":
        args["x"] = GOOD["x"][:, :, 0]
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True)):
        if name == "params" and draw(st.booleans()):
            params = dict(GOOD["params"])
            params[draw(st.sampled_from(sorted(params)))] = draw(garbage)
            args[name] = params
        else:
            args[name] = draw(garbage)
    backend = draw(st.sampled_from(["numba", "numpy"]))
    return function, args, options, backend


count = 0


@settings(max_examples=int(sys.argv[1]) if len(sys.argv) > 1 else 100, deadline=None, database=None,
          suppress_health_check=list(HealthCheck),
          derandomize=os.environ.get("CI", "").lower() in ("1", "true", "yes"))  # as conftest's "ci" profile  # fmt: skip
@given(calls())
def fuzz(call):
    global count
    count += 1
    function, args, options, backend = call
    try:
        getattr(fastrnn, function)(*args.values(), backend=backend, **options)
    except (ValueError, TypeError) as error:
        message = str(error)
        assert message, "an empty error message"
        # The argument named as a word ("y must ...", "params['W_ax']"), not merely its
        # letters somewhere in NumPy's own wording.
        names = list(args) + list(options) + ["x_t", "a_prev", "params", "backend"]
        assert any(re.search(rf"(^|[^A-Za-z_]){name}([^A-Za-z_0-9]|$)", message) for name in names), message


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")  # e.g. NumPy's overflow warnings when casting 1e300 to float16
    fuzz()
    print(f"examples: {count}")
