"""The NumPy front door: the public functions, in the seed's layout.

Every function here takes and returns arrays in the seed's layout (features x batch x
time, see ``docs/contract.rst``), checks its arguments (``validation``) before anything
runs, and hands the engine (``fastrnn.engine``) time-major views of them: each time step
one (batch, features) block, the layout the kernels walk.  The conversion is a transpose
each way, never a copy here:

- an input ``x`` (n_x, m, T) goes in as the view ``x.transpose(2, 1, 0)`` (T, m, n_x); the
  engine copies what a kernel needs contiguous (nothing, for an ``x`` in Fortran order);
- states go in and come back as (num_layers * D, m, n_a) views of the caller's
  (num_layers * D, n_a, m) or (n_a, m);
- results come back as transposed *views* of the engine's arrays: the seed's shapes,
  Fortran-ordered in memory.
"""

from typing import NamedTuple

import numpy as np

from . import backends, engine, parallel, wisdom
from .engine import ForwardCache, PackedCache
from .engine.caches import checked_cache_params
from .engine.finish import report_non_finite
from .params import is_single_layer, layer_key
from .validation import (
    FLOAT_DTYPES,
    check_array,
    check_finite_steps,
    check_finite_together,
    check_int,
    check_labels,
    check_lengths,
    check_nonlinearity,
    check_params,
    check_targets,
    param_labels,
)
from .workspace import Workspace

#: The packed path's cache, under the name it had before the engine (version 2).
NetworkCache = PackedCache

__all__ = [
    "CellCache",
    "ForwardCache",
    "NetworkCache",
    "PackedCache",
    "available_backends",
    "init_params",
    "loss",
    "loss_and_grads",
    "loss_and_grads_onehot",
    "loss_onehot",
    "plan_of",
    "rnn_backward",
    "rnn_cell_backward",
    "rnn_cell_forward",
    "rnn_forward",
]


class CellCache(NamedTuple):
    """What ``rnn_cell_backward`` needs from ``rnn_cell_forward`` (the seed's cache, plus the
    backend that made it).  It owns its arrays: changing the inputs or the params in place
    after the forward step does not change the gradients; ``a_t`` is read-only."""

    a_t: np.ndarray  # (n_a, m)
    a_prev: np.ndarray  # (n_a, m)
    x_t: np.ndarray  # (n_x, m)
    params: dict
    backend: str
    nonlinearity: str = "tanh"


# -- layouts: the seed's (n, m, T) outside, the engine's time-major (T, m, n) inside --------


def _time_major(array):
    """(n, m, T) -> (T, m, n), or (m, T) -> (T, m): a view."""
    return array.T if array.ndim == 2 else array.transpose(2, 1, 0)


def _from_time_major(array):
    """(T, m, n) -> (n, m, T), a view."""
    return array.transpose(2, 1, 0)


def _time_major_labels(labels):
    """Checked labels as the engine takes them: (T, m) for labels (m, T), one class per
    step; (m,) for one class per sequence (a view either way)."""
    return labels.T if labels.ndim == 2 else labels


def _states_out(stack, state_shape):
    """States (num_layers * D, m, n_a) from the engine in the shape the caller gave ``a0``
    in: (num_layers * D, n_a, m), or (n_a, m) for ``"single"`` (views)."""
    return stack[0].T if state_shape == "single" else stack.transpose(0, 2, 1)


# -- argument checks ----------------------------------------------------------------------


def _check_initial_states(a0, dims, m):
    """``a0`` checked, in the params' dtype (its finiteness is checked by the caller), its
    (num_layers * D, m, n_a) view for the engine, and the shape the states a call
    returns take (``engine.caches``).

    ``a0`` is None (zeros), (num_layers * D, n_a, m) indexed ``layer * D + direction``
    (PyTorch's order), or (n_a, m) for one layer in one direction; the states come back
    in the shape given ((num_layers * D, n_a, m) for None).
    """
    layers = dims.num_layers * dims.directions
    if a0 is None:
        zeros = np.zeros((layers, m, dims.n_a), dtype=dims.dtype)
        return zeros, zeros, "stacked"
    try:
        stacked = np.ndim(a0) == 3
    except (TypeError, ValueError):  # e.g. a ragged list: check_array says what is wrong
        stacked = True
    if stacked or layers > 1:
        meaning = f"(num_layers * D, n_a, m), num_layers * D = {layers} for these params"
        a0 = check_array(a0, "a0", (layers, dims.n_a, m), meaning, dims.dtype, finite=False)
        return a0, a0.transpose(0, 2, 1), "stacked"
    a0 = check_array(a0, "a0", (dims.n_a, m), "(n_a, m)", dims.dtype, finite=False)
    return a0, a0.T[None], "single"


def _without_full_lengths(lengths, T):
    """None for lengths that are all ``T`` (no padding: the call is the one without
    ``lengths``, which runs on the dense path), else ``lengths``."""
    return None if lengths is not None and lengths.min() == T else lengths


def _check_sequence_inputs(params, x, a0, lengths=None):
    """Checked params, their Dims, a batch of sequences ``x`` (n_x, m, T), the initial
    states (``_check_initial_states``) and the shape of the states returned, then the
    checked ``lengths``.  Finiteness is checked last, for all arrays in one pass."""
    p, dims = check_params(params, finite=False)
    x = check_array(x, "x", (dims.n_x, None, None), "(n_x, m, T)", dims.dtype, finite=False)
    _, m, T = x.shape
    lengths = _without_full_lengths(check_lengths(lengths, m, T), T)
    a0, a0_rows, state_shape = _check_initial_states(a0, dims, m)
    # Padding may hold anything (it is never read): with lengths, x is checked once packed,
    # real steps only (by the engine), before any computation.
    finite_x = x if lengths is None else np.zeros(0, x.dtype)
    check_finite_together((*p.values(), finite_x, a0), param_labels(p) + ("x", "a0"))
    return p, dims, x, a0_rows, state_shape, lengths


def _as_index_array(x_index):
    """``x_index`` as an array whose shape can be read, or as given when it is not one
    (``check_labels`` then says what is wrong)."""
    if isinstance(x_index, (dict, str, bytes, np.ma.MaskedArray)) or x_index is None:
        return x_index
    try:
        return np.asarray(x_index)
    except (TypeError, ValueError):  # ragged lists
        return x_index


def _check_onehot_inputs(params, x_index, a0, y, lengths=None):
    """Checked params, their Dims, one-hot ``x_index`` (m, T), the initial states (as
    ``_check_sequence_inputs``), the labels ``y`` (m, T) or (m,), the shape of the states
    returned and ``lengths``; finiteness of params and a0 checked in one pass.  With
    ``lengths``, indices and labels at padding steps may be anything."""
    p, dims = check_params(params, finite=False)
    x_index = _as_index_array(x_index)
    if not isinstance(x_index, np.ndarray) or x_index.ndim != 2:  # check_labels says what is wrong
        check_labels(x_index, "x_index", (None, None), dims.n_x, what="one-hot indices")
    m, T = x_index.shape
    lengths = _without_full_lengths(check_lengths(lengths, m, T), T)
    x_index = check_labels(
        x_index, "x_index", (None, None), dims.n_x, what="one-hot indices", lengths=lengths
    )
    a0, a0_rows, state_shape = _check_initial_states(a0, dims, m)
    check_finite_together((*p.values(), a0), param_labels(p) + ("a0",))
    return p, dims, x_index, a0_rows, check_targets(y, "y", m, T, dims.n_y, lengths), state_shape, lengths


def _check_cell_inputs(params, x_t, a_prev):
    """Checked params, their Dims, and one step's ``x_t`` (n_x, m) and ``a_prev`` (n_a, m) in
    the params' dtype; their finiteness is left to the backend's ``cell_forward``."""
    p, dims = check_params(params, finite=False)
    if not is_single_layer(dims.num_layers, dims.directions):
        raise ValueError(
            "params of a cell are one layer's, in one direction (W_ax, W_aa, b_a, W_ya, b_y); "
            f"these have {dims.num_layers} layer(s) and {dims.directions} direction(s): run the "
            "whole network with rnn_forward"
        )
    x_t = check_array(x_t, "x_t", (dims.n_x, None), "(n_x, m)", dims.dtype, finite=False)
    a_prev = check_array(a_prev, "a_prev", (dims.n_a, x_t.shape[1]), "(n_a, m)", dims.dtype, finite=False)
    return p, dims, x_t, a_prev


def _resolve(backend, workspace):
    """The backend module and the workspace (or None), checked."""
    impl = backends.resolve(backend)
    if workspace is not None and not isinstance(workspace, Workspace):
        raise TypeError(f"workspace must be a fastrnn.Workspace or None, got {type(workspace).__name__}")
    return impl, workspace


# -- the public functions -----------------------------------------------------------------


def plan_of(inputs, params, *, workers=None, lengths=None, backend=None, call="loss_and_grads"):
    """The plan a call on ``inputs`` runs: how many shards, threads and BLAS threads.

    Every sequence function (``loss_and_grads``, ``loss``, ``rnn_forward`` and its
    ``rnn_backward``, and their one-hot twins) runs the plan given here for the same
    arguments and ``call``; ``fastrnn.parallel.describe(plan)`` says it in words.  With
    ``workers=None``, that is the plan ``fastrnn.tune`` recorded for the call on this
    machine, where it did, else the built-in crossovers' (docs/guide.md, "Every core").

    Parameters
    ----------
    inputs : array_like
        Dense ``x`` (n_x, m, T), or one-hot indices ``x_index`` (m, T).
    params : dict
        As from ``init_params``.
    workers, lengths, backend
        As in ``loss_and_grads``.
    call : str
        The function whose plan is asked for: ``"loss_and_grads"``, ``"rnn_forward"``,
        ``"rnn_backward"`` (its forward pass's), ``"loss"``, or a one-hot twin.

    Returns
    -------
    fastrnn.parallel.Plan
    """
    workers = parallel.check_workers(workers)
    impl, dims, planned_as, sizes = planning_key(inputs, params, lengths, backend, call)
    path, *sizes = sizes
    return parallel.plan(workers, *sizes, impl.NAME, dtype=dims.dtype, call=planned_as, path=path)


def planning_key(inputs, params, lengths, backend, call):
    """What a call's plan depends on, checked (for ``plan_of`` and ``fastrnn.tune``):
    ``(impl, dims, planned_as, (path, m, T, n_x, n_a, n_y))``, the backend module, the
    params' sizes, ``call`` as its plan is kept (``wisdom.PLANNED_AS``) and
    ``engine.planned_sizes``.  A ``ValueError`` names a bad ``call``."""
    impl = backends.resolve(backend)
    if not isinstance(call, str) or call not in wisdom.PLANNED_AS:
        raise ValueError(f"call must be one of {', '.join(map(repr, wisdom.PLANNED_AS))}, got {call!r}")
    _, dims = check_params(params, finite=False)
    inputs = _as_index_array(inputs)
    if not isinstance(inputs, np.ndarray) or inputs.ndim not in (2, 3):
        raise ValueError("inputs must be x (n_x, m, T) or one-hot indices x_index (m, T)")
    m, T = inputs.shape[-2:]
    n_x = inputs.shape[0] if inputs.ndim == 3 else 0
    lengths = _without_full_lengths(check_lengths(lengths, m, T), T)
    return impl, dims, wisdom.PLANNED_AS[call], engine.planned_sizes(T, m, n_x, dims, lengths)


def available_backends():
    """Names of the backends that work here, fastest first, e.g. ``("numba", "numpy")``."""
    return backends.available_backends()


def init_params(n_x, n_a, n_y, *, num_layers=1, bidirectional=False, seed=None, dtype=np.float64):
    """Random parameters for an RNN with ``n_x`` inputs, ``n_a`` hidden units, ``n_y`` classes.

    Weights are uniform in ``+-1/sqrt(fan_in)`` (fan_in = n_x for ``W_ax``, n_a for ``W_aa``,
    D * n_a for the upper layers' ``W_ax`` and for ``W_ya``); biases are zero.  They are
    drawn in float64 and then cast, so the same ``seed`` gives the same parameters (to
    rounding) in float32 and float64; with the defaults, the seed's network is drawn as
    before version 2.

    Parameters
    ----------
    n_x, n_a, n_y : int
        Positive sizes.
    num_layers : int
        Stacked layers; layer l >= 1 reads the layer below's states (both directions').
    bidirectional : bool
        Give every layer a reverse direction too (D = 2), run from each sequence's end.
    seed : int, numpy.random.Generator or None
    dtype : float32 or float64

    Returns
    -------
    dict
        C-contiguous arrays of ``dtype``: ``W_ax`` (n_a, n_x), ``W_aa`` (n_a, n_a), ``b_a``
        (n_a, 1) for layer 0; ``W_ax_l1`` (n_a, D * n_a), ``W_aa_l1``, ``b_a_l1`` for
        layer 1, and so on; the same keys with ``_reverse`` for the reverse directions;
        ``W_ya`` (n_y, D * n_a), ``b_y`` (n_y, 1).  Keys in this order (layer by layer,
        forward then reverse, output last).
    """
    n_x, n_a, n_y, num_layers = (
        check_int(size, name, minimum=1)
        for name, size in (("n_x", n_x), ("n_a", n_a), ("n_y", n_y), ("num_layers", num_layers))
    )
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise TypeError(f"bidirectional must be a bool, got {type(bidirectional).__name__}")
    directions = 2 if bidirectional else 1
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    rng = np.random.default_rng(seed)

    def uniform(shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(dtype)

    params = {}
    for layer in range(num_layers):
        n_in = n_x if layer == 0 else directions * n_a
        for reverse in (False, True)[:directions]:
            params[layer_key("W_ax", layer, reverse)] = uniform((n_a, n_in), n_in)
            params[layer_key("W_aa", layer, reverse)] = uniform((n_a, n_a), n_a)
            params[layer_key("b_a", layer, reverse)] = np.zeros((n_a, 1), dtype=dtype)
    params["W_ya"] = uniform((n_y, directions * n_a), directions * n_a)
    params["b_y"] = np.zeros((n_y, 1), dtype=dtype)
    return params


def rnn_cell_forward(x_t, a_prev, params, *, backend=None, nonlinearity="tanh"):
    """One step: ``a_t = f(W_ax x_t + W_aa a_prev + b_a)``, ``y_hat_t = softmax(W_ya a_t + b_y)``,
    ``f`` the ``nonlinearity`` (tanh by default).

    Parameters
    ----------
    x_t : array_like, shape (n_x, m)
    a_prev : array_like, shape (n_a, m)
    params : dict
        As from ``init_params``; its dtype is the dtype of the results.
    backend : {"numba", "numpy"} or None
    nonlinearity : {"tanh", "relu"}
        ``relu``: ``max(z, 0)``.

    Returns
    -------
    a_t : ndarray, shape (n_a, m)
    y_hat_t : ndarray, shape (n_y, m)
    cache : CellCache
        For ``rnn_cell_backward``.
    """
    impl = backends.resolve(backend)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x_t, a_prev = _check_cell_inputs(params, x_t, a_prev)
    # The backend checks the inputs' finiteness (compiled, in the pass that copies them
    # for the cache) before it computes anything.
    a_t, y_hat, copies, bad, finite = impl.cell_forward(x_t, a_prev, p, nonlinearity)
    if bad >= 0:
        check_finite_together((*p.values(), x_t, a_prev), param_labels(p) + ("x_t", "a_prev"))
    if not finite:
        report_non_finite({"a_t": a_t, "y_hat_t": y_hat}, dims.dtype, "rnn_cell_forward")
    W_ax, W_aa, b_a, W_ya, b_y, x_copy, a_prev_copy = copies
    a_t.flags.writeable = False  # the backend's own array, which the cache shares
    owned = {"W_ax": W_ax, "W_aa": W_aa, "b_a": b_a, "W_ya": W_ya, "b_y": b_y}
    return a_t, y_hat, CellCache(a_t, a_prev_copy, x_copy, owned, impl.NAME, nonlinearity)


def rnn_cell_backward(da_t, cache):
    """Gradients of one step, given ``da_t`` = dL/da_t.

    Parameters
    ----------
    da_t : array_like, shape (n_a, m)
    cache : CellCache
        From ``rnn_cell_forward``; the backend that made it computes the gradients.

    Returns
    -------
    dict
        ``dx_t`` (n_x, m), ``da_prev`` (n_a, m), ``dW_ax`` (n_a, n_x), ``dW_aa`` (n_a, n_a),
        ``db_a`` (n_a, 1).
    """
    if not isinstance(cache, CellCache):
        raise TypeError(
            f"cache must be the CellCache returned by rnn_cell_forward, got {type(cache).__name__}"
        )
    # Every array of the cache against its params: the kernels trust shapes (Numba does not
    # check bounds), and a cache may have been changed or built by hand.
    impl, p, dims = checked_cache_params(cache, "rnn_cell_forward")
    a_t = check_array(cache.a_t, "cache.a_t", (dims.n_a, None), "(n_a, m)", dims.dtype)
    m = a_t.shape[1]
    a_prev = check_array(cache.a_prev, "cache.a_prev", (dims.n_a, m), "(n_a, m)", dims.dtype)
    x_t = check_array(cache.x_t, "cache.x_t", (dims.n_x, m), "(n_x, m)", dims.dtype)
    da_t = check_array(da_t, "da_t", (dims.n_a, m), "(n_a, m)", dims.dtype)
    h = np.empty((2, m, dims.n_a), dims.dtype)  # a<t-1>, a<t>, C-contiguous whatever their layouts
    h[0], h[1] = a_prev.T, a_t.T
    grads, finite = impl.backward(
        np.ascontiguousarray(da_t.T[None]), np.ascontiguousarray(x_t.T[None]), h, p, cache.nonlinearity
    )
    if not finite:
        report_non_finite(grads, h.dtype, "rnn_cell_backward")
    return {
        "dx_t": grads["dx"][0].T,
        "da_prev": grads["da0"].T,
        "dW_ax": grads["dW_ax"],
        "dW_aa": grads["dW_aa"],
        "db_a": grads["db_a"],
    }


def rnn_forward(
    x, a0, params, *, backend=None, workers=None, nonlinearity="tanh", lengths=None, return_state=False
):
    """Forward pass over a batch of sequences, through every layer and direction.

    Parameters
    ----------
    x : array_like, shape (n_x, m, T)
    a0 : array_like of shape (num_layers * D, n_a, m), or (n_a, m) for one layer in one direction, or None
        The initial state of each layer and direction, indexed ``layer * D + direction``
        (PyTorch's order); None: zeros.  ``da0`` and the final state come back in the
        shape given ((num_layers * D, n_a, m) for None).
    params : dict
        As from ``init_params``; its dtype is the dtype of the results.
    backend : {"numba", "numpy"} or None
        None: ``FASTRNN_BACKEND`` if set, else Numba where it imports, else NumPy.
    workers : int or None
        Threads, as in ``loss_and_grads``.
    nonlinearity : {"tanh", "relu"}
        The hidden layer's ``f`` in ``a<t> = f(W_ax x<t> + W_aa a<t-1> + b_a)``.
    lengths : array_like of int, shape (m,), optional
        Each sequence's length, in ``[1, T]``: its steps from ``lengths[i]`` on are
        padding, never read (any value, NaN included), and its results there are 0.  The
        reverse direction runs from each sequence's own last step.  None: all ``T``.
    return_state : bool
        Also return the final state: the forward direction's at each sequence's last step,
        the reverse direction's at step 0 (PyTorch's ``h_n``), in a0's shape.

    Returns
    -------
    a : ndarray, shape (D * n_a, m, T)
        The top layer's hidden states a<1..T> (forward direction first); for the seed's
        network a read-only view of the cache's (copy it to change it).
    y_hat : ndarray, shape (n_y, m, T)
        Softmax outputs (over axis 0).
    cache : ForwardCache or PackedCache
        For ``rnn_backward``.
    a_last : ndarray
        Only with ``return_state=True``.
    """
    impl = backends.resolve(backend)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x, a0, state_shape, lengths = _check_sequence_inputs(params, x, a0, lengths)
    outputs, y_hat, cache, final = engine.forward(
        impl, _time_major(x), a0, p, dims, workers=workers, nonlinearity=nonlinearity, lengths=lengths,
        state_shape=state_shape, return_state=return_state,
    )  # fmt: skip
    a, y_hat = _from_time_major(outputs), _from_time_major(y_hat)
    if return_state:
        return a, y_hat, cache, _states_out(final, state_shape)
    return a, y_hat, cache


def rnn_backward(da, cache):
    """Backpropagation through time for ``da`` = dL/da<t> coming from outside the recurrence.

    Parameters
    ----------
    da : array_like, shape (D * n_a, m, T)
        dL/d(the top layer's states); with ``lengths``, its padding is never read.
    cache : ForwardCache or PackedCache
        From ``rnn_forward``; the backend that made it computes the gradients.

    Returns
    -------
    dict
        ``dx`` (n_x, m, T) (0 at padding), ``da0`` in the shape of rnn_forward's ``a0``,
        and ``"d" + key`` of every hidden-layer parameter: ``dW_ax`` (n_a, n_x),
        ``dW_aa`` (n_a, n_a), ``db_a`` (n_a, 1), ``dW_ax_l1``, ... .
    """
    checked = engine.backward_inputs(cache)
    dims = checked.dims
    if isinstance(cache, PackedCache):
        width = dims.directions * dims.n_a
        da = check_array(da, "da", (width, checked.m, checked.T), "(D * n_a, m, T)", dims.dtype, finite=False)
        if checked.lengths is None:
            check_finite_together([da], ["da"])
        else:
            check_finite_steps(_time_major(da), checked.lengths, "da")
    else:
        da = check_array(da, "da", (dims.n_a, checked.m, checked.T), "(n_a, m, T)", dims.dtype)
    grads = engine.backward(checked, _time_major(da))
    grads["dx"] = _from_time_major(grads["dx"])
    grads["da0"] = _states_out(grads["da0"], cache.state_shape)
    return grads


def _step_results(result, state_shape, return_state):
    """A training step's public results from the engine's: ``dx`` and the states laid
    back out (views)."""
    loss, grads, final = result
    if "dx" in grads:
        grads["dx"] = _from_time_major(grads["dx"])
    grads["da0"] = _states_out(grads["da0"], state_shape)
    if return_state:
        return loss, grads, _states_out(final, state_shape)
    return loss, grads


def loss_and_grads(
    x, a0, y, params, *, backend=None, workspace=None, return_state=False, workers=None, nonlinearity="tanh",
    lengths=None,
):  # fmt: skip
    """Cross-entropy loss of a batch of sequences and the gradient of every input.

    ``L = -(1/m) sum_{i,t} log y_hat[y[i, t], i, t]``: summed over time (each sequence's
    real steps), averaged over the batch, computed with log-sum-exp so that it is finite
    for any finite logits.

    Parameters
    ----------
    x : array_like, shape (n_x, m, T)
    a0 : array_like of shape (num_layers * D, n_a, m), or (n_a, m) for one layer in one direction, or None
        The initial state of each layer and direction, indexed ``layer * D + direction``;
        None: zeros.  ``da0`` and the final state come back in the shape given
        ((num_layers * D, n_a, m) for None).
    y : array_like of int, shape (m, T) or (m,)
        Target class of each sequence at each step, in ``[0, n_y)``; or one class per
        sequence (many-to-one), predicted from the top layer's final state (``h_n``, both
        directions): the loss is then the mean over the batch of that one prediction's
        cross-entropy, and ``W_ya``, ``b_y`` see only that state.
    params : dict
        As from ``init_params`` (any number of layers, one direction or both); its dtype
        is the dtype of the results.
    backend : {"numba", "numpy"} or None
    workspace : Workspace or None
        Reuse this workspace's arrays instead of allocating: a training loop of one shape
        then allocates nothing the size of its arrays after its first step, for any
        network (Numba backend; the NumPy reference still makes its temporaries).  The returned gradients are views of the workspace,
        overwritten by its next use.  One workspace serves any ``workers``.
    return_state : bool
        Also return the final state (forward at each sequence's last step, reverse at step
        0), in a0's shape, to carry over to the next chunk of a long sequence (truncated
        BPTT, one direction: pass it as the next ``a0``).
    workers : int or None
        Threads to use.  An int ``k >= 1`` cuts the batch into ``k`` shards of whole
        sequences (at most ``m``), run by at most as many threads as this process has cores,
        each with one BLAS thread; -1 is one shard per core; None (the default) lets
        fastrnn choose from the problem's size and the cores (docs/guide.md, "Every core").
        Results agree with ``workers=1`` to rounding and are bitwise the same from run to
        run for the same ``workers``.
    nonlinearity : {"tanh", "relu"}
        The hidden layers' ``f`` in ``a<t> = f(W_ax x<t> + W_aa a<t-1> + b_a)``; ``relu``
        is ``max(z, 0)``, whose derivative at 0 counts as 0 (as in PyTorch).
    lengths : array_like of int, shape (m,), optional
        Each sequence's length in ``[1, T]`` (``rnn_forward``): padding is never read, and
        ``dx`` is 0 there.  None: every sequence is ``T`` steps long.

    Returns
    -------
    loss : numpy.float32 or numpy.float64
        Accumulated in float64, returned in the parameters' dtype.
    grads : dict
        ``"d" + key`` of every parameter (its shape), ``dx`` (n_x, m, T), ``da0`` (as
        ``a0``).
    a_last : ndarray, in a0's shape
        Only with ``return_state=True``.
    """
    if lengths is None:  # a small step's own lane first (engine.lean)
        lean = engine.lean.loss_and_grads(
            backend, workspace, x, a0, y, params, workers, nonlinearity, return_state, False
        )
        if lean is not None:
            return _step_results(lean, "stacked" if a0 is None else "single", return_state)
    impl, workspace = _resolve(backend, workspace)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x, a0, state_shape, lengths = _check_sequence_inputs(params, x, a0, lengths)
    n_x, m, T = x.shape
    labels = check_targets(y, "y", m, T, dims.n_y, lengths)
    result = engine.loss_and_grads(
        impl, _time_major(x), a0, _time_major_labels(labels), p, dims, workers=workers, nonlinearity=nonlinearity,
        lengths=lengths, workspace=workspace, return_state=return_state,
    )  # fmt: skip
    return _step_results(result, state_shape, return_state)


def loss_and_grads_onehot(
    x_index, a0, y, params, *, backend=None, workspace=None, return_state=False, workers=None, nonlinearity="tanh",
    lengths=None,
):  # fmt: skip
    """``loss_and_grads`` for one-hot inputs given by the index of their 1 (text, tokens).

    The same result as ``loss_and_grads`` on the dense one-hot ``x`` (``x[x_index[i, t], i,
    t] = 1``), without building it: a one-hot x<t> selects a column of ``W_ax``, so the
    input projection is a lookup and ``dW_ax`` a scatter-add.

    Parameters
    ----------
    x_index : array_like of int, shape (m, T)
        Index in ``[0, n_x)`` of each input's 1.
    a0, y, params, backend, workspace, return_state, workers, nonlinearity, lengths
        As in ``loss_and_grads`` (with ``lengths``, indices at padding may be anything).

    Returns
    -------
    loss, grads[, a_last]
        As in ``loss_and_grads``, but ``grads`` has no ``dx``.
    """
    if lengths is None:  # a small step's own lane first (engine.lean)
        lean = engine.lean.loss_and_grads(
            backend, workspace, x_index, a0, y, params, workers, nonlinearity, return_state, True
        )
        if lean is not None:
            return _step_results(lean, "stacked" if a0 is None else "single", return_state)
    impl, workspace = _resolve(backend, workspace)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x_index, a0, labels, state_shape, lengths = _check_onehot_inputs(params, x_index, a0, y, lengths)
    result = engine.loss_and_grads(
        impl, _time_major(x_index), a0, _time_major_labels(labels), p, dims, workers=workers,
        nonlinearity=nonlinearity, lengths=lengths, workspace=workspace, return_state=return_state,
    )  # fmt: skip
    return _step_results(result, state_shape, return_state)


def _loss_results(sequence_losses, final, dtype, per_sequence, return_state, state_shape):
    """The public results of ``loss``: the mean or each sequence's loss in the params'
    ``dtype``, and the state laid back out."""
    if per_sequence:
        value = sequence_losses.astype(dtype)
    else:
        value = dtype.type(float(np.sum(sequence_losses)) / sequence_losses.size)
    return (value, _states_out(final, state_shape)) if return_state else value


def _lean_loss_results(lean, params, a0, per_sequence, return_state):
    """``_loss_results`` of the lean lane's ``(sequence_losses, final)`` (``a0`` as given:
    None or (n_a, m), which the lane takes alone)."""
    state_shape = "stacked" if a0 is None else "single"
    return _loss_results(*lean, params["W_aa"].dtype, per_sequence, return_state, state_shape)


def loss(
    x, a0, y, params, *, backend=None, per_sequence=False, return_state=False, workers=None, nonlinearity="tanh",
    lengths=None,
):  # fmt: skip
    """The loss of ``loss_and_grads``, without gradients: for validation and scoring.

    A forward pass that keeps nothing for a backward one (no cache, no gradient memory),
    and computes the cross-entropy from the logits with log-sum-exp, as ``loss_and_grads``.

    Parameters
    ----------
    x, a0, y, params, backend, workers, nonlinearity, lengths
        As in ``loss_and_grads``.
    per_sequence : bool
        Return each sequence's loss, summed over its (real) steps, instead of their mean.
    return_state : bool
        Also return the final state, in a0's shape (``loss_and_grads``).

    Returns
    -------
    loss : numpy.float32 or numpy.float64, or ndarray of shape (m,) with ``per_sequence``
        In the parameters' dtype (accumulated in float64).  ``L = mean(per-sequence losses)``
        equals ``loss_and_grads``'s loss to rounding.
    a_last : ndarray, in a0's shape
        Only with ``return_state=True``.
    """
    if lengths is None:  # a small call's own lane first (engine.lean)
        lean = engine.lean.losses(backend, x, a0, y, params, workers, nonlinearity, False)
        if lean is not None:
            return _lean_loss_results(lean, params, a0, per_sequence, return_state)
    impl = backends.resolve(backend)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x, a0, state_shape, lengths = _check_sequence_inputs(params, x, a0, lengths)
    n_x, m, T = x.shape
    labels = check_targets(y, "y", m, T, dims.n_y, lengths)
    sequence_losses, final = engine.losses(
        impl, _time_major(x), a0, _time_major_labels(labels), p, dims, workers=workers, nonlinearity=nonlinearity,
        lengths=lengths,
    )  # fmt: skip
    return _loss_results(sequence_losses, final, dims.dtype, per_sequence, return_state, state_shape)


def loss_onehot(
    x_index, a0, y, params, *, backend=None, per_sequence=False, return_state=False, workers=None,
    nonlinearity="tanh", lengths=None,
):  # fmt: skip
    """``loss`` for one-hot inputs given by the index of their 1 (as ``loss_and_grads_onehot``).

    Parameters
    ----------
    x_index : array_like of int, shape (m, T)
    a0, y, params, backend, per_sequence, return_state, workers, nonlinearity, lengths
        As in ``loss``.
    """
    if lengths is None:  # a small call's own lane first (engine.lean)
        lean = engine.lean.losses(backend, x_index, a0, y, params, workers, nonlinearity, True)
        if lean is not None:
            return _lean_loss_results(lean, params, a0, per_sequence, return_state)
    impl = backends.resolve(backend)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x_index, a0, labels, state_shape, lengths = _check_onehot_inputs(params, x_index, a0, y, lengths)
    sequence_losses, final = engine.losses(
        impl, _time_major(x_index), a0, _time_major_labels(labels), p, dims, workers=workers,
        nonlinearity=nonlinearity, lengths=lengths,
    )  # fmt: skip
    return _loss_results(sequence_losses, final, dims.dtype, per_sequence, return_state, state_shape)
