"""The public functions: validate, lay out, dispatch to a backend, lay back out.

Every function here takes and returns arrays in the seed's layout (features x batch x
time, see ``docs/contract.rst``).  The backends work on a time-major copy in which each
time step is one contiguous (batch, features) block (``numpy_backend`` explains it); the
conversion happens here, once each way:

- inputs are checked (``validation``), cast to the parameters' dtype and copied into the
  time-major layout (no copy when an input already is, e.g. an ``x`` in Fortran order);
- results come back as transposed *views* of the backend's arrays: same shapes as the seed's,
  Fortran-ordered in memory, no copy.
"""

import math
from typing import NamedTuple

import numpy as np

from . import backends, packing, parallel
from .validation import (
    FLOAT_DTYPES,
    PARAM_NAMES,
    all_finite,
    check_array,
    check_finite_together,
    check_int,
    check_labels,
    check_lengths,
    check_nonlinearity,
    check_params,
    check_targets,
    is_seed_network,
    layer_key,
    param_labels,
    param_names,
    report_non_finite_results,
)
from .workspace import Workspace, new_array


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


class ForwardCache(NamedTuple):
    """What ``rnn_backward`` needs from ``rnn_forward``, in the backends' time-major layout.

    It owns its arrays (a copy of the params, and of ``x`` where the time-major layout was a
    view of it), so that changing them in place after the forward pass does not change the
    gradients.  ``h`` is the memory of the ``a`` that ``rnn_forward`` returned, which is
    read-only for that reason.  ``rnn_backward`` checks every array against the params
    before a kernel reads it."""

    xs: np.ndarray  # (T, m, n_x)
    h: np.ndarray  # (T + 1, m, n_a), h[0] = a0
    params: dict
    backend: str
    nonlinearity: str = "tanh"
    a0_per_layer: bool = False  # a0 was None or (1, n_a, m): rnn_backward returns da0 so


def _contiguous(view, empty=new_array, name=None):
    """``view`` itself when C-contiguous, else a copy in ``empty(name, shape, dtype)``."""
    if view.flags.c_contiguous:
        return view
    out = empty(name, view.shape, view.dtype)
    np.copyto(out, view)
    return out


def _to_time_major(array, empty=new_array, name=None):
    """(n, m, T) -> C-contiguous (T, m, n); no copy when already laid out so."""
    return _contiguous(array.transpose(2, 1, 0), empty, name)


def _from_time_major(array):
    """(T, m, n) -> (n, m, T), a view."""
    return array.transpose(2, 1, 0)


def _check_cell_inputs(params, x_t, a_prev):
    """Checked params, their Dims, and one step's ``x_t`` (n_x, m) and ``a_prev`` (n_a, m) in
    the params' dtype.  Finiteness is checked last, for all seven arrays in one pass."""
    p, dims = check_params(params, finite=False)
    if not is_seed_network(dims):
        raise ValueError(
            "params of a cell are one layer's, in one direction (W_ax, W_aa, b_a, W_ya, b_y); "
            f"these have {dims.num_layers} layer(s) and {dims.directions} direction(s): run the "
            "whole network with rnn_forward"
        )
    x_t = check_array(x_t, "x_t", (dims.n_x, None), "(n_x, m)", dims.dtype, finite=False)
    a_prev = check_array(a_prev, "a_prev", (dims.n_a, x_t.shape[1]), "(n_a, m)", dims.dtype, finite=False)
    check_finite_together((*p.values(), x_t, a_prev), param_labels(p) + ("x_t", "a_prev"))
    return p, dims, x_t, a_prev


def _check_sequence_inputs(params, x, a0, lengths=None):
    """Checked params, their Dims, a batch of sequences ``x`` (n_x, m, T), ``a0`` in the
    params' dtype and the layout of the states returned (``da0``, the final state), then
    the checked ``lengths``.  Finiteness is checked last, for all arrays in one pass.

    ``a0`` is (n_a, m) for the seed's network with full-length sequences
    (``_check_initial_state``), else (num_layers * D, n_a, m) (``_check_network_state``):
    ``_is_network_call`` says which.
    """
    p, dims = check_params(params, finite=False)
    x = check_array(x, "x", (dims.n_x, None, None), "(n_x, m, T)", dims.dtype, finite=False)
    _, m, T = x.shape
    lengths = _without_full_lengths(check_lengths(lengths, m, T), T)
    if _is_network_call(dims, lengths):
        a0, layout = _check_network_state(a0, dims, m)
    else:
        a0, layout = _check_initial_state(a0, dims, m)
    # Padding may hold anything (it is never read): with lengths, x is checked once packed,
    # real steps only (_packed_call_inputs), before any computation.
    finite_x = x if lengths is None else np.zeros(0, x.dtype)
    check_finite_together((*p.values(), finite_x, a0), param_labels(p) + ("x", "a0"))
    return p, dims, x, a0, layout, lengths


def _without_full_lengths(lengths, T):
    """None for lengths that are all ``T`` (no padding: the call is the one without
    ``lengths``, which the seed's network runs on its own kernels), else ``lengths``."""
    return None if lengths is not None and lengths.min() == T else lengths


def _is_network_call(dims, lengths):
    """Whether a call goes the packed way (``fastrnn.packing``): more than one layer or
    direction, or ``lengths``; else the seed's network over full-length sequences, which
    has kernels of its own and stays bitwise what it was."""
    return lengths is not None or not is_seed_network(dims)


def _check_finite_steps(time_major, lengths, name, sequence_ids=None):
    """A ``ValueError`` naming ``name`` for a non-finite entry at a real step; ``time_major``
    is (T, m, ...), the caller's sequences ``sequence_ids`` (None: 0, 1, ...).  Padding
    may hold anything: it is never read."""
    T, m = time_major.shape[:2]
    padding = np.arange(T)[:, None] >= lengths[None, :]
    finite = np.isfinite(time_major).reshape(T, m, -1).all(axis=-1) | padding
    if not finite.all():
        t, i = np.argwhere(~finite)[0]
        sequence = i if sequence_ids is None else sequence_ids[i]
        raise ValueError(
            f"{name} must be finite at every real step, got a non-finite value at sequence {sequence}, step {t}"
        )


def _check_network_state(a0, dims, m):
    """``a0`` of a network call as (num_layers * D, n_a, m) in the params' dtype, and the
    layout of the states it returns (``da0``, the final state), taking that stack.

    ``a0`` is None (zeros), (num_layers * D, n_a, m) indexed ``layer * D + direction``
    (PyTorch's order), or (n_a, m) for one layer in one direction; the states come back in
    the shape given ((num_layers * D, n_a, m) for None).
    """
    layers = dims.num_layers * dims.directions
    if a0 is None:
        return np.zeros((layers, dims.n_a, m), dtype=dims.dtype), _as_given
    meaning = f"(num_layers * D, n_a, m), num_layers * D = {layers} for these params"
    try:
        per_layer = np.ndim(a0) == 3
    except (TypeError, ValueError):  # e.g. a ragged list: check_array says what is wrong
        per_layer = True
    if per_layer or layers > 1:
        return check_array(a0, "a0", (layers, dims.n_a, m), meaning, dims.dtype, finite=False), _as_given
    a0 = check_array(a0, "a0", (dims.n_a, m), "(n_a, m)", dims.dtype, finite=False)
    return a0[None], _single_layer


def _check_initial_state(a0, dims, m):
    """``a0`` as (n_a, m) in the params' dtype (its finiteness is checked by the caller), and
    the layout the states a call returns take: a0's own.

    ``a0`` is None (zeros), (n_a, m), or (num_layers * D, n_a, m) indexed ``layer * D +
    direction`` (PyTorch's order), which is (1, n_a, m) for this one-layer, one-direction
    network.  With None or the per-layer shape, ``da0`` and the final state come back per
    layer, (1, n_a, m); with (n_a, m), as (n_a, m).
    """
    if a0 is None:
        return np.zeros((dims.n_a, m), dtype=dims.dtype), _per_layer
    try:
        per_layer = np.ndim(a0) == 3
    except (TypeError, ValueError):  # e.g. a ragged list: check_array says what is wrong
        per_layer = False
    if per_layer:
        meaning = "(num_layers * D, n_a, m), which is (1, n_a, m) for one layer in one direction"
        return check_array(a0, "a0", (1, dims.n_a, m), meaning, dims.dtype, finite=False)[0], _per_layer
    return check_array(a0, "a0", (dims.n_a, m), "(n_a, m)", dims.dtype, finite=False), _as_given


def _per_layer(state):
    """A state (n_a, m) in the per-layer layout (num_layers * D, n_a, m) = (1, n_a, m)."""
    return state[None]


def _as_given(state):
    return state


def _single_layer(states):
    """A stack of states (1, n_a, m) in the shape (n_a, m) that ``a0`` was given in."""
    return states[0]


def _time_major_labels(labels):
    """Checked labels as the backends take them: (T, m) for labels (m, T), one class per
    step; (1, m) for labels (m,), one class per sequence (a view either way)."""
    return labels.T if labels.ndim == 2 else labels[None]


def _check_onehot_inputs(params, x_index, a0, y, lengths=None):
    """Checked params, their Dims, one-hot ``x_index`` (m, T), ``a0`` in the params' dtype
    (as ``_check_sequence_inputs``), the labels ``y`` (m, T) or (m,), the layout of the
    states returned and ``lengths``; finiteness of params and a0 checked in one pass.
    With ``lengths``, indices and labels at padding steps may be anything."""
    p, dims = check_params(params, finite=False)
    x_index = _as_index_array(x_index)
    if not isinstance(x_index, np.ndarray) or x_index.ndim != 2:  # check_labels says what is wrong
        check_labels(x_index, "x_index", (None, None), dims.n_x, what="one-hot indices")
    m, T = x_index.shape
    lengths = _without_full_lengths(check_lengths(lengths, m, T), T)
    x_index = check_labels(
        x_index, "x_index", (None, None), dims.n_x, what="one-hot indices", lengths=lengths
    )
    if _is_network_call(dims, lengths):
        a0, layout = _check_network_state(a0, dims, m)
    else:
        a0, layout = _check_initial_state(a0, dims, m)
    check_finite_together((*p.values(), a0), param_labels(p) + ("a0",))
    return p, dims, x_index, a0, check_targets(y, "y", m, T, dims.n_y, lengths), layout, lengths


def _as_index_array(x_index):
    """``x_index`` as an array whose shape can be read, or as given when it is not one
    (``check_labels`` then says what is wrong)."""
    if isinstance(x_index, (dict, str, bytes, np.ma.MaskedArray)) or x_index is None:
        return x_index
    try:
        return np.asarray(x_index)
    except (TypeError, ValueError):  # ragged lists
        return x_index


def _backend_name(module):
    return module.NAME


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
    impl, p, x_t, h, y_hat = _cell_step(x_t, a_prev, params, backend, nonlinearity)
    a_t = _read_only(h[1].T)
    cache = CellCache(
        a_t, _read_only(h[0].T), _read_only(np.array(x_t)), _owned(p), _backend_name(impl), nonlinearity
    )
    return a_t, y_hat[0].T, cache


def _cell_step(x_t, a_prev, params, backend, nonlinearity="tanh"):
    """``rnn_cell_forward`` without its cache (for sampling, which needs none): the backend,
    the checked params and x_t, ``h`` (2, m, n_a) = (a_prev, a_t) and ``y_hat`` (1, m, n_y)."""
    impl = backends.resolve(backend)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x_t, a_prev = _check_cell_inputs(params, x_t, a_prev)
    # The cell is the T = 1 case of the forward pass: one code path for both.  a_prev goes
    # in as a view: the backends copy it into h[0].
    h, y_hat, finite = impl.forward(np.ascontiguousarray(x_t.T[None]), a_prev.T, p, nonlinearity)
    if not finite:
        report_non_finite_results({"a_t": h, "y_hat_t": y_hat}, dims.dtype, "rnn_cell_forward")
    return impl, p, x_t, h, y_hat


def _read_only(array):
    """A read-only view of ``array``: what a cache keeps for the backward pass."""
    view = array.view()
    view.flags.writeable = False
    return view


def _owned(p):
    """Read-only copies of the params, for a cache."""
    return {name: _read_only(value.copy()) for name, value in p.items()}


def _checked_cache_params(cache, kind):
    """A cache's backend module and checked params (the checks of any argument)."""
    if not (isinstance(cache.backend, str) and cache.backend in backends.BACKENDS):
        raise ValueError(
            f"cache.backend must name a backend ({', '.join(backends.BACKENDS)}), got {cache.backend!r}"
        )
    if not isinstance(cache.params, dict):
        raise TypeError(
            f"cache.params must be the params dict {kind} was given, got {type(cache.params).__name__}"
        )
    p, dims = check_params(cache.params)
    check_nonlinearity(cache.nonlinearity, "cache.nonlinearity")
    return backends.resolve(cache.backend), p, dims


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
    impl, p, dims = _checked_cache_params(cache, "rnn_cell_forward")
    a_t = check_array(cache.a_t, "cache.a_t", (dims.n_a, None), "(n_a, m)", dims.dtype)
    m = a_t.shape[1]
    a_prev = check_array(cache.a_prev, "cache.a_prev", (dims.n_a, m), "(n_a, m)", dims.dtype)
    x_t = check_array(cache.x_t, "cache.x_t", (dims.n_x, m), "(n_x, m)", dims.dtype)
    da_t = check_array(da_t, "da_t", (dims.n_a, m), "(n_a, m)", dims.dtype)
    h = np.stack([a_prev.T, a_t.T])  # (2, m, n_a): a<t-1>, a<t>
    grads, finite = impl.backward(
        np.ascontiguousarray(da_t.T[None]), np.ascontiguousarray(x_t.T[None]), h, p, cache.nonlinearity
    )
    if not finite:
        report_non_finite_results(grads, h.dtype, "rnn_cell_backward")
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
    cache : ForwardCache or NetworkCache
        For ``rnn_backward``.
    a_last : ndarray
        Only with ``return_state=True``.
    """
    impl = backends.resolve(backend)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x, a0, layout, lengths = _check_sequence_inputs(params, x, a0, lengths)
    if _is_network_call(dims, lengths):
        a, y_hat, cache, final = _network_forward(
            impl, workers, x, a0, lengths, p, dims, nonlinearity, layout
        )
        return (a, y_hat, cache, layout(final)) if return_state else (a, y_hat, cache)
    xs = _to_time_major(x)
    T, m, _ = xs.shape
    run = parallel.plan(workers, m, T, dims.n_x, dims.n_a, dims.n_y, _backend_name(impl))
    with parallel.blas_threads(run.blas_threads):
        if run.shards == 1:
            # a0 goes in as a view: the backends copy it into h[0]
            h, y_hat, finite = impl.forward(xs, a0.T, p, nonlinearity)
        else:
            h, y_hat, finite = _sharded_forward(impl, run, xs, a0, p, dims, nonlinearity)
    if not finite:
        report_non_finite_results({"a": h, "y_hat": y_hat}, dims.dtype, "rnn_forward")
    if np.may_share_memory(xs, x):  # the time-major layout was the caller's x itself
        xs = xs.copy()
    cache = ForwardCache(
        _read_only(xs), _read_only(h), _owned(p), _backend_name(impl), nonlinearity, layout is _per_layer
    )
    a, y_hat = _from_time_major(cache.h[1:]), _from_time_major(y_hat)
    return (a, y_hat, cache, layout(h[-1].T.copy())) if return_state else (a, y_hat, cache)


def _network_forward(impl, workers, x, a0, lengths, p, dims, nonlinearity, layout):
    """``rnn_forward`` of a network (``_is_network_call``): the top layer's states (D * n_a,
    m, T), the outputs (n_y, m, T), 0 at padding, and a ``NetworkCache``."""
    n_x, m, T = x.shape
    run = _network_plan(workers, m, T, n_x, dims, lengths, _backend_name(impl))
    pk, packed, a0_rows = _packed_call_inputs(impl, x, a0, lengths)
    # One shard: the threads a sharded plan would use go to BLAS.
    blas_threads = None if run.blas_threads is None else run.threads * run.blas_threads
    states, y_hat, finite = _run_with_blas_threads(
        blas_threads, impl.network_forward_outputs,
        packed, a0_rows, p, dims.num_layers, dims.directions, pk.batch_sizes, pk.offsets, nonlinearity,
    )  # fmt: skip
    top = np.concatenate(states[-1], axis=1) if dims.directions == 2 else states[-1][0]
    if not finite:
        report_non_finite_results({"a": top, "y_hat": y_hat}, dims.dtype, "rnn_forward")
    # The cache owns its arrays: none may be the caller's (a0's sorted rows can be a0 itself).
    packed, a0_rows = (array.copy() if np.may_share_memory(array, x) or np.may_share_memory(array, a0) else array
                       for array in (packed, a0_rows))  # fmt: skip
    cache = NetworkCache(
        _read_only(packed), tuple(_read_only(H) for layer in states for H in layer), _read_only(a0_rows),
        None if lengths is None else _read_only(lengths.copy()), T, _owned(p), _backend_name(impl),
        nonlinearity, layout is _single_layer,
    )  # fmt: skip
    final = _states_back(packing.final_states(states, pk.last_rows), pk)
    return (
        _from_time_major(packing.unpack(top, pk)),
        _from_time_major(packing.unpack(y_hat, pk)),
        cache,
        final,
    )


def _sharded_forward(impl, run, xs, a0, p, dims, nonlinearity):
    """``impl.forward`` shard by shard, each shard's states and outputs copied into its rows
    of the whole batch's ``h`` and ``y_hat``."""
    T, m, _ = xs.shape
    h = np.empty((T + 1, m, dims.n_a), dtype=dims.dtype)
    y_hat = np.empty((T, m, dims.n_y), dtype=dims.dtype)
    shards = parallel.split_batch(m, run.shards)

    def forward_shard(k):
        rows = shards[k]
        h_k, y_hat_k, finite = impl.forward(np.ascontiguousarray(xs[:, rows]), a0[:, rows].T, p, nonlinearity)
        h[:, rows] = h_k
        y_hat[:, rows] = y_hat_k
        return finite

    finite = all(parallel.run_shards(forward_shard, run.shards, run.threads))
    return h, y_hat, finite


def rnn_backward(da, cache):
    """Backpropagation through time for ``da`` = dL/da<t> coming from outside the recurrence.

    Parameters
    ----------
    da : array_like, shape (D * n_a, m, T)
        dL/d(the top layer's states); with ``lengths``, its padding is never read.
    cache : ForwardCache or NetworkCache
        From ``rnn_forward``; the backend that made it computes the gradients.

    Returns
    -------
    dict
        ``dx`` (n_x, m, T) (0 at padding), ``da0`` in the shape of rnn_forward's ``a0``,
        and ``"d" + key`` of every hidden-layer parameter: ``dW_ax`` (n_a, n_x),
        ``dW_aa`` (n_a, n_a), ``db_a`` (n_a, 1), ``dW_ax_l1``, ... .
    """
    if isinstance(cache, NetworkCache):
        return _network_backward(da, cache)
    if not isinstance(cache, ForwardCache):
        raise TypeError(f"cache must be the ForwardCache returned by rnn_forward, got {type(cache).__name__}")
    # Every array of the cache against its params: the kernels trust shapes (Numba does not
    # check bounds), and a cache may have been changed or built by hand.
    impl, p, dims = _checked_cache_params(cache, "rnn_forward")
    h = check_array(cache.h, "cache.h", (None, None, dims.n_a), "(T + 1, m, n_a)", dims.dtype)
    if h.shape[0] < 2:
        raise ValueError(f"cache.h must hold a0 and at least one step, shape (T + 1, m, n_a), got {h.shape}")
    T, m = h.shape[0] - 1, h.shape[1]
    xs = check_array(cache.xs, "cache.xs", (T, m, dims.n_x), "(T, m, n_x)", dims.dtype)
    h, xs = np.ascontiguousarray(h), np.ascontiguousarray(xs)
    if not isinstance(cache.a0_per_layer, (bool, np.bool_)):
        raise TypeError(f"cache.a0_per_layer must be a bool, got {type(cache.a0_per_layer).__name__}")
    da = check_array(da, "da", (dims.n_a, m, T), "(n_a, m, T)", dims.dtype)
    grads, finite = impl.backward(_to_time_major(da), xs, h, p, cache.nonlinearity)
    if not finite:
        report_non_finite_results(grads, dims.dtype, "rnn_backward")
    grads["dx"] = _from_time_major(grads["dx"])
    grads["da0"] = (_per_layer if cache.a0_per_layer else _as_given)(grads["da0"].T)
    return grads


def _network_backward(da, cache):
    """``rnn_backward`` for a ``NetworkCache``: every array checked against the params and
    the packing before a kernel reads it."""
    impl, p, dims = _checked_cache_params(cache, "rnn_forward")
    if not isinstance(cache.T, int) or isinstance(cache.T, bool) or cache.T < 1:
        raise ValueError(f"cache.T must be the sequences' padded length, an int >= 1, got {cache.T!r}")
    a0 = check_array(cache.a0, "cache.a0", (dims.num_layers * dims.directions, None, dims.n_a),
                     "(num_layers * D, m, n_a)", dims.dtype)  # fmt: skip
    m = a0.shape[1]
    lengths = check_lengths(cache.lengths, m, cache.T)
    pk = packing.make_packing(lengths, m, cache.T)
    inputs = check_array(cache.inputs, "cache.inputs", (pk.N, dims.n_x), "(N, n_x)", dims.dtype)
    if not isinstance(cache.states, tuple) or len(cache.states) != a0.shape[0]:
        raise ValueError(f"cache.states must be a tuple of num_layers * D = {a0.shape[0]} arrays")
    states = [
        np.ascontiguousarray(check_array(H, f"cache.states[{k}]", (pk.N, dims.n_a), "(N, n_a)", dims.dtype))
        for k, H in enumerate(cache.states)
    ]
    width = dims.directions * dims.n_a
    da = check_array(da, "da", (width, m, cache.T), "(D * n_a, m, T)", dims.dtype, finite=False)
    if lengths is None:
        check_finite_together([da], ["da"])
    else:
        _check_finite_steps(da.transpose(2, 1, 0), lengths, "da")
    d_top = packing.pack(da.transpose(2, 1, 0), pk)
    grads, finite = impl.network_backward_grads(
        d_top, np.ascontiguousarray(inputs), np.ascontiguousarray(a0), _nested(states, dims.directions), p,
        pk.batch_sizes, pk.offsets, cache.nonlinearity,
    )  # fmt: skip
    if not finite:
        report_non_finite_results(grads, dims.dtype, "rnn_backward")
    grads["dx"] = _from_time_major(packing.unpack(grads["dx"], pk))
    grads["da0"] = _states_back(grads["da0"], pk)
    if cache.a0_single:
        grads["da0"] = grads["da0"][0]
    return grads


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
        then allocates nothing after its first step (Numba backend; the NumPy reference
        still makes its temporaries).  The returned gradients are views of the workspace,
        overwritten by its next use.  One workspace serves any ``workers``.
    return_state : bool
        Also return the final state (forward at each sequence's last step, reverse at step
        0), in a0's shape, to carry over to the next chunk of a long sequence (truncated
        BPTT, one direction: pass it as the next ``a0``).
    workers : int or None
        Threads to use.  An int ``k >= 1`` cuts the batch into ``k`` shards of whole
        sequences (at most ``m``), run by at most as many threads as this process has cores,
        each with one BLAS thread; -1 is one shard per core; None (the default) lets
        fastrnn choose from the problem's size and the cores (README, "Every core").
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
    impl, empty, workspace = _resolve(backend, workspace)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x, a0, layout, lengths = _check_sequence_inputs(params, x, a0, lengths)
    n_x, m, T = x.shape
    labels = check_targets(y, "y", m, T, dims.n_y, lengths)
    if _is_network_call(dims, lengths):
        run = _network_plan(workers, m, T, n_x, dims, lengths, _backend_name(impl))
        result = _network_loss_and_grads(impl, run, x, a0, labels, lengths, p, dims, nonlinearity)
        return _in_workspace(_network_results(result, dims, return_state, layout), workspace)
    run = parallel.plan(workers, m, T, dims.n_x, dims.n_a, dims.n_y, _backend_name(impl))
    if run.shards > 1:
        return _sharded_loss_and_grads(
            impl, run, workspace, x, a0, labels, p, dims, return_state, nonlinearity, layout
        )
    xs = _to_time_major(x, empty, "xs")
    # dx may overwrite xs when xs is a copy made here, not a view of the caller's x.
    scratch = not np.may_share_memory(xs, x)
    result = _run_with_blas_threads(
        run.blas_threads, _shard_loss_and_grads, impl, empty, xs, a0.T, _time_major_labels(labels), p, m, nonlinearity,
        xs_is_scratch=scratch,
    )  # fmt: skip
    return _results(result, dims, return_state, layout)


def loss_and_grads_onehot(
    x_index,
    a0,
    y,
    params,
    *,
    backend=None,
    workspace=None,
    return_state=False,
    workers=None,
    nonlinearity="tanh",
    lengths=None,
):
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
    impl, empty, workspace = _resolve(backend, workspace)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x_index, a0, labels, layout, lengths = _check_onehot_inputs(params, x_index, a0, y, lengths)
    m, T = x_index.shape
    if _is_network_call(dims, lengths):
        run = _network_plan(workers, m, T, 0, dims, lengths, _backend_name(impl))
        result = _network_loss_and_grads(impl, run, x_index, a0, labels, lengths, p, dims, nonlinearity)
        return _in_workspace(_network_results(result, dims, return_state, layout), workspace)
    # n_x = 0: the input layer of one-hot inputs is a lookup, no matrix product.
    run = parallel.plan(workers, m, T, 0, dims.n_a, dims.n_y, _backend_name(impl))
    if run.shards > 1:
        return _sharded_loss_and_grads(
            impl, run, workspace, x_index, a0, labels, p, dims, return_state, nonlinearity, layout
        )
    result = _run_with_blas_threads(
        run.blas_threads,
        _shard_loss_and_grads,
        impl,
        empty,
        x_index.T,
        a0.T,
        _time_major_labels(labels),
        p,
        m,
        nonlinearity,
    )
    return _results(result, dims, return_state, layout)


def loss(
    x,
    a0,
    y,
    params,
    *,
    backend=None,
    per_sequence=False,
    return_state=False,
    workers=None,
    nonlinearity="tanh",
    lengths=None,
):
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
    impl = backends.resolve(backend)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x, a0, layout, lengths = _check_sequence_inputs(params, x, a0, lengths)
    n_x, m, T = x.shape
    labels = check_targets(y, "y", m, T, dims.n_y, lengths)
    if _is_network_call(dims, lengths):
        run = _network_plan(workers, m, T, n_x, dims, lengths, _backend_name(impl))
        result = _network_forward_losses(impl, run, x, a0, labels, lengths, p, dims, nonlinearity)
        return _loss_results(result, dims, per_sequence, return_state, layout, stacked=True)
    run = parallel.plan(workers, m, T, dims.n_x, dims.n_a, dims.n_y, _backend_name(impl))
    result = _forward_losses(impl, run, x.transpose(2, 1, 0), a0, labels, p, dims, nonlinearity)
    return _loss_results(result, dims, per_sequence, return_state, layout)


def loss_onehot(
    x_index,
    a0,
    y,
    params,
    *,
    backend=None,
    per_sequence=False,
    return_state=False,
    workers=None,
    nonlinearity="tanh",
    lengths=None,
):
    """``loss`` for one-hot inputs given by the index of their 1 (as ``loss_and_grads_onehot``).

    Parameters
    ----------
    x_index : array_like of int, shape (m, T)
    a0, y, params, backend, per_sequence, return_state, workers, nonlinearity, lengths
        As in ``loss``.
    """
    impl = backends.resolve(backend)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x_index, a0, labels, layout, lengths = _check_onehot_inputs(params, x_index, a0, y, lengths)
    m, T = x_index.shape
    if _is_network_call(dims, lengths):
        run = _network_plan(workers, m, T, 0, dims, lengths, _backend_name(impl))
        result = _network_forward_losses(impl, run, x_index, a0, labels, lengths, p, dims, nonlinearity)
        return _loss_results(result, dims, per_sequence, return_state, layout, stacked=True)
    run = parallel.plan(workers, m, T, 0, dims.n_a, dims.n_y, _backend_name(impl))
    result = _forward_losses(impl, run, x_index.T, a0, labels, p, dims, nonlinearity)
    return _loss_results(result, dims, per_sequence, return_state, layout)


def _forward_losses(impl, run, inputs, a0, labels, p, dims, nonlinearity):
    """Each sequence's loss and last state, shard by shard (``run``).

    ``inputs`` is a time-major view, ``xs`` (T, m, n_x) or ``x_index`` (T, m), copied here to
    be contiguous per shard; ``a0`` is (n_a, m), ``labels`` (m, T).  Returns ``losses``
    (m,) float64, ``a_last`` (m, n_a) and whether every loss is finite.
    """
    m = inputs.shape[1]
    shards = parallel.split_batch(m, run.shards)
    losses = np.empty(m, dtype=np.float64)
    a_last = np.empty((m, dims.n_a), dtype=dims.dtype)

    def run_shard(k):
        rows = shards[k]
        shard_losses, h_last, finite = impl.sequence_losses(
            np.ascontiguousarray(inputs[:, rows]),
            a0[:, rows].T,
            np.ascontiguousarray(_time_major_labels(labels[rows])),
            p,
            nonlinearity,
        )
        losses[rows] = shard_losses
        a_last[rows] = h_last
        return finite

    with parallel.blas_threads(run.blas_threads):
        finite = all(parallel.run_shards(run_shard, run.shards, run.threads))
    return losses, a_last, finite


def _loss_results(result, dims, per_sequence, return_state, layout, stacked=False):
    """The public results of ``loss``: non-finite losses reported (in the params' dtype),
    the mean or each sequence's loss, and the state in the seed's layout."""
    losses, a_last, finite = result
    mean = float(np.sum(losses)) / losses.size
    largest = _LARGEST[dims.dtype]
    if not (finite and np.abs(losses).max() <= largest):
        as_returned = np.where(np.abs(losses) > largest, np.inf, losses)  # what the dtype would hold
        report_non_finite_results({"the loss": as_returned}, dims.dtype, "loss")
    value = losses.astype(dims.dtype) if per_sequence else dims.dtype.type(mean)
    if not return_state:
        return value
    return value, layout(a_last if stacked else a_last.T)  # stacked: a network's (num_layers * D, n_a, m)


def _run_with_blas_threads(blas_threads, function, *args, **kwargs):
    """``function(*args, **kwargs)`` with the BLAS libraries set to ``blas_threads`` threads
    (``parallel.blas_threads``); called straight when there is nothing to set, so that tiny
    problems pay for no context manager."""
    if blas_threads is None:
        return function(*args, **kwargs)
    with parallel.blas_threads(blas_threads):
        return function(*args, **kwargs)


def _resolve(backend, workspace):
    """The backend module, the allocator for a call, and the workspace (or None)."""
    impl = backends.resolve(backend)
    if workspace is None:
        return impl, new_array, None
    if not isinstance(workspace, Workspace):
        raise TypeError(f"workspace must be a fastrnn.Workspace or None, got {type(workspace).__name__}")
    return impl, workspace.empty, workspace


def _shard_loss_and_grads(
    impl, empty, inputs, a0_rows, labels, p, batch_size, nonlinearity, xs_is_scratch=False
):
    """One backend's training step on a batch or a shard of one, in the time-major layout.

    Parameters
    ----------
    impl : module
        The backend.
    empty : callable
        ``empty(name, shape, dtype)``: the allocator (a workspace's, or ``new_array``).
    inputs : ndarray
        ``xs`` (T, m, n_x) or ``x_index`` (T, m), in any layout: made contiguous here.
    a0_rows : ndarray, shape (m, n_a)
        A view is fine: the backends copy it into ``h[0]``.
    labels : ndarray of intp, shape (T, m) or (1, m)
        Checked; one class per step, or per sequence (``_time_major_labels``).
    p : dict
        Checked parameters.
    batch_size : int
        The whole batch's ``m``, which the loss is averaged over (a shard's share of it).
    nonlinearity : {"tanh", "relu"}
        Checked.
    xs_is_scratch : bool
        ``inputs`` is a copy that ``dx`` may overwrite (see ``numba_backend``).

    Returns
    -------
    loss, grads, a_last, finite
        As the backends' ``loss_and_grads``; ``grads`` in the time-major layout.
    """
    inputs = _contiguous(inputs, empty, "x_index" if inputs.ndim == 2 else "xs")
    labels = _contiguous(labels, empty, "labels")
    loss, grads, a_last, finite = impl.loss_and_grads(
        inputs, a0_rows, labels, p, empty=empty, xs_is_scratch=xs_is_scratch, batch_size=batch_size,
        nonlinearity=nonlinearity,
    )  # fmt: skip
    if empty is not new_array and not impl.RESULTS_IN_WORKSPACE:
        # A workspace holds the results whatever the backend: this layer puts them there.
        for name, value in grads.items():
            grads[name] = empty(name, value.shape, value.dtype)
            np.copyto(grads[name], value)
    return loss, grads, a_last, finite


def _sharded_loss_and_grads(
    impl, run, workspace, inputs, a0, labels, p, dims, return_state, nonlinearity, layout=None
):
    """``loss_and_grads`` (dense ``x`` (n_x, m, T) or one-hot ``x_index`` (m, T)) cut into
    ``run.shards`` shards of whole sequences, run on ``run.threads`` threads.

    Each shard computes its share of the whole batch's loss and gradients
    (``batch_size=m``), in arrays of its own (a ``Workspace.shard``, or new ones), except
    ``da0``, whose rows it writes in place.  ``dx`` and the last states are copied into
    their rows of the whole batch's arrays by the shard's own thread; the weight gradients
    are added in shard order (``parallel.sum_in_order``).
    """
    dense = inputs.ndim == 3
    m = inputs.shape[1] if dense else inputs.shape[0]
    T = inputs.shape[-1]
    shards = parallel.split_batch(m, run.shards)
    empty = new_array if workspace is None else workspace.empty
    da0 = empty("da0", (m, dims.n_a), dims.dtype)
    a_last = empty("a_last", (m, dims.n_a), dims.dtype) if return_state else None
    dx = empty("dx", (T, m, dims.n_x), dims.dtype) if dense else None

    def shard_allocator(k):
        own = new_array if workspace is None else workspace.shard(k).empty
        rows = shards[k]

        def empty_for_shard(name, shape, dtype):
            return da0[rows] if name == "da0" else own(name, shape, dtype)

        return empty_for_shard

    allocators = [shard_allocator(k) for k in range(run.shards)]

    def run_shard(k):
        rows = shards[k]
        if dense:
            shard_inputs = _to_time_major(inputs[:, rows], allocators[k], "xs")
            scratch = not np.may_share_memory(shard_inputs, inputs)  # never write dx over the caller's x
        else:
            shard_inputs, scratch = inputs[rows].T, False
        loss, grads, h_last, finite = _shard_loss_and_grads(
            impl, allocators[k], shard_inputs, a0[:, rows].T, _time_major_labels(labels[rows]), p, m, nonlinearity,
            xs_is_scratch=scratch,
        )  # fmt: skip
        if dense:
            dx[:, rows] = grads.pop("dx")
        if return_state:
            a_last[rows] = h_last
        return loss, grads, finite

    with parallel.blas_threads(run.blas_threads):
        parts = parallel.run_shards(run_shard, run.shards, run.threads)
    grads = parallel.sum_in_order([part[1] for part in parts], WEIGHT_GRADIENTS)
    grads["da0"] = da0
    if dense:
        grads["dx"] = dx
    loss = sum(part[0] for part in parts)  # in shard order
    # Finite shards can still sum to inf in float32: the sums are checked too (few entries).
    finite = all(part[2] for part in parts) and all(
        np.isfinite(grads[name]).all() for name in WEIGHT_GRADIENTS
    )
    return _results((loss, grads, a_last, finite), dims, return_state, layout)


# -- networks: several layers, two directions, variable lengths -------------------------
#
# These calls go the packed way (``fastrnn.packing``): the batch sorted by length, one row
# per real step.  Each function below takes the caller's layout and returns it: ``x`` (n_x,
# m, T) or ``x_index`` (m, T), ``a0`` and the states (num_layers * D, n_a, m), results at
# padding steps 0.


class NetworkCache(NamedTuple):
    """What ``rnn_backward`` needs from ``rnn_forward`` of a network with more than one
    layer or direction, or with ``lengths``: packed arrays (``fastrnn.packing``), which it
    owns (changing the inputs or params in place after the forward pass changes nothing)."""

    inputs: np.ndarray  # (N, n_x), packed x
    states: tuple  # num_layers * D arrays (N, n_a), index layer * D + direction
    a0: np.ndarray  # (num_layers * D, m, n_a), rows in the packing's sorted order
    lengths: object  # (m,) intp, or None for every sequence T steps long
    T: int
    params: dict
    backend: str
    nonlinearity: str = "tanh"
    a0_single: bool = False  # a0 was (n_a, m): da0 comes back so


def _nested(flat, directions):
    """``states[layer][direction]`` from a flat sequence indexed ``layer * D + direction``."""
    return [list(flat[k : k + directions]) for k in range(0, len(flat), directions)]


def _caller_sequences(pk, rows):
    """The caller's index of each packed row's sequence, for a shard ``rows`` of the batch
    (a slice, or the sequences' indices)."""
    if isinstance(rows, slice):
        return pk.sequences + (rows.start or 0)
    return rows[pk.sequences]


def _packed_call_inputs(impl, inputs, a0, lengths, rows=slice(None)):
    """The packing of a call's sequences ``rows`` (a shard: a slice or indices; or all),
    their packed inputs and sorted ``a0`` rows.

    ``inputs`` is the whole batch's dense ``x`` (n_x, m, T) or one-hot ``x_index`` (m,
    T); ``a0`` (num_layers * D, n_a, m) and ``lengths`` (m,) are the shard's.  Returns
    ``(packing, packed_inputs, a0_rows)``: (N, n_x) or (N,), and (num_layers * D, m_k,
    n_a).
    """
    m_k, T = a0.shape[-1], inputs.shape[-1]
    pk = impl.make_packing(lengths, m_k, T)
    sequences = _caller_sequences(pk, rows)
    if inputs.ndim == 3:  # the backend gathers the rows (a kernel in Numba's)
        packed = impl.pack_rows(inputs, sequences, pk.steps)
        if lengths is not None and not all_finite(packed):  # without lengths x was checked whole
            ids = np.arange(inputs.shape[1])[rows]
            _check_finite_steps(inputs[:, ids].transpose(2, 1, 0), lengths, "x", ids)
    else:
        packed = inputs[sequences, pk.steps]
    return pk, packed, packing.sort_rows(a0.transpose(0, 2, 1), pk)


def _packed_labels(labels, pk):
    """Labels as the backends' network functions take them: (N,) one per packed row, or
    (1, m) one per sorted sequence."""
    if labels.ndim == 2:
        return packing.pack(labels.T, pk)
    return labels[pk.order][None]


def _states_back(sorted_states, pk):
    """(num_layers * D, m, n_a) in sorted rows -> (num_layers * D, n_a, m) in the caller's."""
    return packing.unsort_rows(sorted_states, pk).transpose(0, 2, 1)


def _network_step_inputs(impl, inputs, a0, labels, lengths, rows=slice(None)):
    """What a backend's ``network_loss_and_grads`` takes for a batch or a shard of one
    (``rows`` of the whole batch's ``inputs``; ``a0``, ``labels`` and ``lengths`` are the
    shard's): the packing, then the packed inputs, sorted ``a0`` rows and packed labels."""
    pk, packed, a0_rows = _packed_call_inputs(impl, inputs, a0, lengths, rows)
    return pk, (packed, a0_rows, _packed_labels(labels, pk))


def _network_step_results(impl, pk, result, rows=slice(None), dx=None):
    """A backend's ``network_loss_and_grads`` result for the shard ``rows`` in the caller's
    layout: ``loss``, ``grads`` (``da0`` (num_layers * D, n_a, m_k)), ``final``
    (num_layers * D, n_a, m_k), ``finite``.  Dense inputs' ``dx`` is written into the
    shard's rows of ``dx``, the whole batch's (T, m, n_x), whose padding stays 0."""
    loss, grads, final, finite = result
    if "dx" in grads:
        impl.unpack_rows(grads.pop("dx"), _caller_sequences(pk, rows), pk.steps, dx)
    grads["da0"] = _states_back(grads["da0"], pk)
    return loss, grads, _states_back(final, pk), finite


def _network_losses(impl, inputs, a0, labels, lengths, p, dims, nonlinearity, rows=slice(None)):
    """``loss`` of a network on a batch or a shard (as ``_network_step_inputs``): each sequence's
    loss (m_k,) float64 in the caller's order, ``final`` (num_layers * D, n_a, m_k),
    ``finite``."""
    pk, packed, a0_rows = _packed_call_inputs(impl, inputs, a0, lengths, rows)
    sorted_losses, final, finite = impl.network_sequence_losses(
        packed, a0_rows, _packed_labels(labels, pk), p, dims.num_layers, dims.directions,
        pk.batch_sizes, pk.offsets, pk.last_rows, nonlinearity,
    )  # fmt: skip
    losses = np.empty_like(sorted_losses)
    losses[pk.order] = sorted_losses
    return losses, _states_back(final, pk), finite


def _network_shards(run, m, lengths):
    """The shards of a network call: whole sequences, balanced by their lengths.

    With ``lengths``, the sorted batch is cut into ranges (as indices of the caller's
    sequences): the longest sequences in one shard, the shortest in another, rather than
    a mix of lengths in each.  Each shard then runs only as many steps as its own longest
    sequence, with more sequences per step: fewer steps in all, whose fixed costs (a product
    and a pass over the running rows each) no longer add up in every shard."""
    if lengths is None or run.shards == 1:
        return parallel.split_batch(m, run.shards)
    order = np.argsort(-lengths, kind="stable")
    return tuple(order[rows] for rows in parallel.split_batch(m, run.shards, lengths[order]))


def _scatter_sequences(parts, shards, shape, dtype):
    """Per-shard arrays whose last axis runs over a shard's sequences, put together
    (``shape``, the whole batch's) in the caller's order."""
    out = np.empty(shape, dtype=dtype)
    for part, rows in zip(parts, shards):
        out[..., rows] = part
    return out


def _network_loss_and_grads(impl, run, inputs, a0, labels, lengths, p, dims, nonlinearity):
    """A network's training step on the whole batch, cut into ``run.shards`` shards of
    whole sequences (each its own packing) run on ``run.threads`` threads; the weight
    gradients added in shard order."""
    m, T = inputs.shape[-2:]
    # dx of dense inputs, (T, m, n_x): each shard writes its real steps; padding stays 0.
    dx = np.zeros((T, m, dims.n_x), dtype=dims.dtype) if inputs.ndim == 3 else None
    shards = _network_shards(run, m, lengths)

    def run_shard(k):  # each thread packs and unpacks its own shard, overlapping the others' kernels
        rows = shards[k]
        pk, (packed, a0_rows, shard_labels) = _network_step_inputs(
            impl, inputs, a0[:, :, rows], labels[rows], None if lengths is None else lengths[rows], rows
        )
        result = impl.network_loss_and_grads(
            packed, a0_rows, shard_labels, p, dims.num_layers, dims.directions, pk.batch_sizes, pk.offsets,
            pk.last_rows, batch_size=m, nonlinearity=nonlinearity,
        )  # fmt: skip
        return _network_step_results(impl, pk, result, rows, dx)

    parts = _run_with_blas_threads(run.blas_threads, parallel.run_shards, run_shard, run.shards, run.threads)
    names = ["d" + name for name in param_names(dims.num_layers, dims.directions)]
    grads = parallel.sum_in_order([part[1] for part in parts], names)
    shape = (a0.shape[0], dims.n_a, m)
    grads["da0"] = _scatter_sequences([part[1]["da0"] for part in parts], shards, shape, dims.dtype)
    if dx is not None:
        grads["dx"] = dx
    final = _scatter_sequences([part[2] for part in parts], shards, shape, dims.dtype)
    loss = sum(part[0] for part in parts)  # in shard order
    # Finite shards can still sum to inf in float32: the sums are checked too.
    finite = all(part[3] for part in parts) and (
        len(parts) == 1 or all(all_finite(grads[name]) for name in names)
    )
    return loss, grads, final, finite


def _network_forward_losses(impl, run, inputs, a0, labels, lengths, p, dims, nonlinearity):
    """``_network_losses`` shard by shard (``run``)."""
    m = inputs.shape[-2]
    shards = _network_shards(run, m, lengths)

    def run_shard(k):
        rows = shards[k]
        return _network_losses(
            impl, inputs, a0[:, :, rows], labels[rows], None if lengths is None else lengths[rows],
            p, dims, nonlinearity, rows=rows,
        )  # fmt: skip

    with parallel.blas_threads(run.blas_threads):
        parts = parallel.run_shards(run_shard, run.shards, run.threads)
    losses = _scatter_sequences([part[0] for part in parts], shards, (m,), np.float64)
    final = _scatter_sequences([part[1] for part in parts], shards, (a0.shape[0], dims.n_a, m), dims.dtype)
    return losses, final, all(part[2] for part in parts)


def _network_results(result, dims, return_state, layout):
    """The public results of a network's training step: as ``_results``, with ``da0`` and
    the final state stacks (num_layers * D, n_a, m) in a0's layout."""
    loss, grads, final, finite = result
    largest = _LARGEST[dims.dtype]
    if not (finite and abs(loss) <= largest):
        as_returned = math.inf if abs(loss) > largest else loss
        report_non_finite_results({"the loss": as_returned, **grads}, dims.dtype, "loss_and_grads")
    if "dx" in grads:
        grads["dx"] = _from_time_major(grads["dx"])
    grads["da0"] = layout(grads["da0"])
    loss = dims.dtype.type(loss)
    return (loss, grads, layout(final)) if return_state else (loss, grads)


def _in_workspace(results, workspace):
    """A network step's results with its gradients copied into ``workspace`` (when one is
    given): they are then its views, overwritten by its next use, as for the seed's network."""
    if workspace is None:
        return results
    grads = results[1]
    for name, value in grads.items():
        grads[name] = workspace.empty(name, value.shape, value.dtype)
        np.copyto(grads[name], value)
    return results


def _network_plan(workers, m, T, n_x, dims, lengths, backend):
    """``parallel.plan`` for a network: its products are those of ``num_layers * D``
    one-layer networks over the real steps (the upper layers' inputs are D * n_a wide)."""
    steps = T if lengths is None else max(1, int(np.sum(lengths)) // m)
    layers = dims.num_layers * dims.directions
    return parallel.plan(workers, m, steps * layers, n_x, dims.n_a, dims.n_y, backend)


WEIGHT_GRADIENTS = tuple("d" + name for name in PARAM_NAMES)
_LARGEST = {dtype: float(np.finfo(dtype).max) for dtype in FLOAT_DTYPES}


def _results(result, dims, return_state, layout=None):
    """The public results of a training step from the backend's: non-finite results
    reported, arrays laid back out in the seed's layout (``da0`` and the final state in
    a0's, ``layout``), the loss in the params' dtype."""
    layout = layout or _as_given
    loss, grads, a_last, finite = result
    # The loss is accumulated in float64: it can be finite there and overflow float32 here,
    # so it is checked against the largest value of its own dtype (in plain Python: cheap).
    largest = _LARGEST[dims.dtype]
    if not (finite and abs(loss) <= largest):  # the backend scanned the rest
        as_returned = math.inf if abs(loss) > largest else loss  # what the dtype would hold (NaN stays NaN)
        report_non_finite_results({"the loss": as_returned, **grads}, dims.dtype, "loss_and_grads")
    loss = dims.dtype.type(loss)
    if "dx" in grads:
        grads["dx"] = _from_time_major(grads["dx"])
    grads["da0"] = layout(grads["da0"].T)
    return (loss, grads, layout(a_last.T)) if return_state else (loss, grads)
