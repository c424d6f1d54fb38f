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

from . import backends, parallel
from .validation import (
    FLOAT_DTYPES,
    PARAM_LABELS,
    PARAM_NAMES,
    check_array,
    check_finite_together,
    check_int,
    check_labels,
    check_nonlinearity,
    check_params,
    check_targets,
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
    x_t = check_array(x_t, "x_t", (dims.n_x, None), "(n_x, m)", dims.dtype, finite=False)
    a_prev = check_array(a_prev, "a_prev", (dims.n_a, x_t.shape[1]), "(n_a, m)", dims.dtype, finite=False)
    check_finite_together((*p.values(), x_t, a_prev), PARAM_LABELS + ("x_t", "a_prev"))
    return p, dims, x_t, a_prev


def _check_sequence_inputs(params, x, a0):
    """Checked params, their Dims, a batch of sequences ``x`` (n_x, m, T) and ``a0`` (n_a, m)
    in the params' dtype, ``a0`` given as None, (n_a, m) or per layer
    (``_check_initial_state``), and the layout of the states returned (``da0``, the final
    state).  Finiteness is checked last, for all seven arrays in one pass."""
    p, dims = check_params(params, finite=False)
    x = check_array(x, "x", (dims.n_x, None, None), "(n_x, m, T)", dims.dtype, finite=False)
    a0, layout = _check_initial_state(a0, dims, x.shape[1])
    check_finite_together((*p.values(), x, a0), PARAM_LABELS + ("x", "a0"))
    return p, dims, x, a0, layout


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


def _time_major_labels(labels):
    """Checked labels as the backends take them: (T, m) for labels (m, T), one class per
    step; (1, m) for labels (m,), one class per sequence (a view either way)."""
    return labels.T if labels.ndim == 2 else labels[None]


def _check_onehot_inputs(params, x_index, a0, y):
    """Checked params, their Dims, one-hot ``x_index`` (m, T), ``a0`` (n_a, m) in the params'
    dtype (``_check_initial_state``, whose layout comes last) and the labels ``y`` (m, T) or
    (m,); finiteness of params and a0 checked in one pass."""
    p, dims = check_params(params, finite=False)
    x_index = check_labels(x_index, "x_index", (None, None), dims.n_x, what="one-hot indices")
    m, T = x_index.shape
    a0, layout = _check_initial_state(a0, dims, m)
    check_finite_together((*p.values(), a0), PARAM_LABELS + ("a0",))
    return p, dims, x_index, a0, check_targets(y, "y", m, T, dims.n_y), layout


def _backend_name(module):
    return module.NAME


def available_backends():
    """Names of the backends that work here, fastest first, e.g. ``("numba", "numpy")``."""
    return backends.available_backends()


def init_params(n_x, n_a, n_y, *, seed=None, dtype=np.float64):
    """Random parameters for an RNN with ``n_x`` inputs, ``n_a`` hidden units, ``n_y`` classes.

    Weights are uniform in ``+-1/sqrt(fan_in)`` (fan_in = n_x for ``W_ax``, n_a for ``W_aa``
    and ``W_ya``); biases are zero.  They are drawn in float64 and then cast, so the same
    ``seed`` gives the same parameters (to rounding) in float32 and float64.

    Parameters
    ----------
    n_x, n_a, n_y : int
        Positive sizes.
    seed : int, numpy.random.Generator or None
    dtype : float32 or float64

    Returns
    -------
    dict
        ``W_ax`` (n_a, n_x), ``W_aa`` (n_a, n_a), ``b_a`` (n_a, 1), ``W_ya`` (n_y, n_a),
        ``b_y`` (n_y, 1), C-contiguous, of ``dtype``.
    """
    n_x, n_a, n_y = (
        check_int(size, name, minimum=1) for name, size in (("n_x", n_x), ("n_a", n_a), ("n_y", n_y))
    )
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

    return {
        "W_ax": uniform((n_a, n_x), n_x),
        "W_aa": uniform((n_a, n_a), n_a),
        "b_a": np.zeros((n_a, 1), dtype=dtype),
        "W_ya": uniform((n_y, n_a), n_a),
        "b_y": np.zeros((n_y, 1), dtype=dtype),
    }


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


def rnn_forward(x, a0, params, *, backend=None, workers=None, nonlinearity="tanh"):
    """Forward pass over a batch of sequences.

    Parameters
    ----------
    x : array_like, shape (n_x, m, T)
    a0 : array_like of shape (n_a, m) or (num_layers * D, n_a, m) = (1, n_a, m), or None
        The initial state; None: zeros.  Given per layer, or None, ``da0`` and the
        final state come back per layer too, (1, n_a, m).
    params : dict
        As from ``init_params``; its dtype is the dtype of the results.
    backend : {"numba", "numpy"} or None
        None: ``FASTRNN_BACKEND`` if set, else Numba where it imports, else NumPy.
    workers : int or None
        Threads, as in ``loss_and_grads``.
    nonlinearity : {"tanh", "relu"}
        The hidden layer's ``f`` in ``a<t> = f(W_ax x<t> + W_aa a<t-1> + b_a)``.

    Returns
    -------
    a : ndarray, shape (n_a, m, T)
        Hidden states a<1..T>: a read-only view of the cache's (copy it to change it).
    y_hat : ndarray, shape (n_y, m, T)
        Softmax outputs (over axis 0).
    cache : ForwardCache
        For ``rnn_backward``.
    """
    impl = backends.resolve(backend)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x, a0, layout = _check_sequence_inputs(params, x, a0)
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
    return _from_time_major(cache.h[1:]), _from_time_major(y_hat), cache


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
    da : array_like, shape (n_a, m, T)
    cache : ForwardCache
        From ``rnn_forward``; the backend that made it computes the gradients.

    Returns
    -------
    dict
        ``dx`` (n_x, m, T), ``da0`` (n_a, m) or, as rnn_forward's a0, (1, n_a, m), ``dW_ax`` (n_a, n_x), ``dW_aa`` (n_a, n_a),
        ``db_a`` (n_a, 1).
    """
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


def loss_and_grads(
    x, a0, y, params, *, backend=None, workspace=None, return_state=False, workers=None, nonlinearity="tanh"
):
    """Cross-entropy loss of a batch of sequences and the gradient of every input.

    ``L = -(1/m) sum_{i,t} log y_hat[y[i, t], i, t]``: summed over time, averaged over the
    batch, computed with log-sum-exp so that it is finite for any finite logits.

    Parameters
    ----------
    x : array_like, shape (n_x, m, T)
    a0 : array_like of shape (n_a, m) or (num_layers * D, n_a, m) = (1, n_a, m), or None
        The initial state; None: zeros.  Given per layer, or None, ``da0`` and the
        final state come back per layer too, (1, n_a, m).
    y : array_like of int, shape (m, T) or (m,)
        Target class of each sequence at each step, in ``[0, n_y)``; or one class per
        sequence (many-to-one), predicted from its last state a<T>: the loss is then the
        mean over the batch of that one prediction's cross-entropy, and ``W_ya``, ``b_y``
        see only a<T>.
    params : dict
        As from ``init_params``; its dtype is the dtype of the results.
    backend : {"numba", "numpy"} or None
    workspace : Workspace or None
        Reuse this workspace's arrays instead of allocating: a training loop of one shape
        then allocates nothing after its first step (Numba backend; the NumPy reference
        still makes its temporaries).  The returned gradients are views of the workspace,
        overwritten by its next use.  One workspace serves any ``workers``.
    return_state : bool
        Also return the last hidden state a<T>, shape (n_a, m), to carry over to the next
        chunk of a long sequence (truncated BPTT: pass it as the next ``a0``).
    workers : int or None
        Threads to use.  An int ``k >= 1`` cuts the batch into ``k`` shards of whole
        sequences (at most ``m``), run by at most as many threads as this process has cores,
        each with one BLAS thread; -1 is one shard per core; None (the default) lets
        fastrnn choose from the problem's size and the cores (README, "Every core").
        Results agree with ``workers=1`` to rounding and are bitwise the same from run to
        run for the same ``workers``.
    nonlinearity : {"tanh", "relu"}
        The hidden layer's ``f`` in ``a<t> = f(W_ax x<t> + W_aa a<t-1> + b_a)``; ``relu``
        is ``max(z, 0)``, whose derivative at 0 counts as 0 (as in PyTorch).

    Returns
    -------
    loss : numpy.float32 or numpy.float64
        Accumulated in float64, returned in the parameters' dtype.
    grads : dict
        ``dW_ax, dW_aa, db_a, dW_ya, db_y`` (the parameters' shapes), ``dx`` (n_x, m, T),
        ``da0`` (n_a, m), or (1, n_a, m) (as ``a0``).
    a_last : ndarray, shape (n_a, m), or (1, n_a, m) (as ``a0``)
        Only with ``return_state=True``.
    """
    impl, empty, workspace = _resolve(backend, workspace)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x, a0, layout = _check_sequence_inputs(params, x, a0)
    n_x, m, T = x.shape
    labels = check_targets(y, "y", m, T, dims.n_y)
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
):
    """``loss_and_grads`` for one-hot inputs given by the index of their 1 (text, tokens).

    The same result as ``loss_and_grads`` on the dense one-hot ``x`` (``x[x_index[i, t], i,
    t] = 1``), without building it: a one-hot x<t> selects a column of ``W_ax``, so the
    input projection is a lookup and ``dW_ax`` a scatter-add.

    Parameters
    ----------
    x_index : array_like of int, shape (m, T)
        Index in ``[0, n_x)`` of each input's 1.
    a0, y, params, backend, workspace, return_state, workers, nonlinearity
        As in ``loss_and_grads``.

    Returns
    -------
    loss, grads[, a_last]
        As in ``loss_and_grads``, but ``grads`` has no ``dx``.
    """
    impl, empty, workspace = _resolve(backend, workspace)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x_index, a0, labels, layout = _check_onehot_inputs(params, x_index, a0, y)
    m, T = x_index.shape
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
):
    """The loss of ``loss_and_grads``, without gradients: for validation and scoring.

    A forward pass that keeps nothing for a backward one (no cache, no gradient memory),
    and computes the cross-entropy from the logits with log-sum-exp, as ``loss_and_grads``.

    Parameters
    ----------
    x, a0, y, params, backend, workers, nonlinearity
        As in ``loss_and_grads``.
    per_sequence : bool
        Return each sequence's loss, summed over its steps, instead of their mean.
    return_state : bool
        Also return the last hidden state a<T>, shape (n_a, m), or (1, n_a, m) (as ``a0``).

    Returns
    -------
    loss : numpy.float32 or numpy.float64, or ndarray of shape (m,) with ``per_sequence``
        In the parameters' dtype (accumulated in float64).  ``L = mean(per-sequence losses)``
        equals ``loss_and_grads``'s loss to rounding.
    a_last : ndarray, shape (n_a, m), or (1, n_a, m) (as ``a0``)
        Only with ``return_state=True``.
    """
    impl = backends.resolve(backend)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x, a0, layout = _check_sequence_inputs(params, x, a0)
    n_x, m, T = x.shape
    labels = check_targets(y, "y", m, T, dims.n_y)
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
):
    """``loss`` for one-hot inputs given by the index of their 1 (as ``loss_and_grads_onehot``).

    Parameters
    ----------
    x_index : array_like of int, shape (m, T)
    a0, y, params, backend, per_sequence, return_state, workers, nonlinearity
        As in ``loss``.
    """
    impl = backends.resolve(backend)
    workers = parallel.check_workers(workers)
    nonlinearity = check_nonlinearity(nonlinearity)
    p, dims, x_index, a0, labels, layout = _check_onehot_inputs(params, x_index, a0, y)
    m, T = x_index.shape
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


def _loss_results(result, dims, per_sequence, return_state, layout):
    """The public results of ``loss``: non-finite losses reported (in the params' dtype),
    the mean or each sequence's loss, and the state in the seed's layout."""
    losses, a_last, finite = result
    mean = float(np.sum(losses)) / losses.size
    largest = _LARGEST[dims.dtype]
    if not (finite and np.abs(losses).max() <= largest):
        as_returned = np.where(np.abs(losses) > largest, np.inf, losses)  # what the dtype would hold
        report_non_finite_results({"the loss": as_returned}, dims.dtype, "loss")
    value = losses.astype(dims.dtype) if per_sequence else dims.dtype.type(mean)
    return (value, layout(a_last.T)) if return_state else value


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
