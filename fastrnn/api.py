"""The public functions: validate, lay out, dispatch to a backend, lay back out.

Every function here takes and returns arrays in the seed notebook's layout (features x
batch x time, see ``shared/SPEC.md``).  The backends work on a time-major copy in which each
time step is one contiguous (batch, features) block (``numpy_backend`` explains it); the
conversion happens here, once each way:

- inputs are checked (``validation``), cast to the parameters' dtype and copied into the
  time-major layout (no copy when an input already is, e.g. an ``x`` in Fortran order);
- results come back as transposed *views* of the backend's arrays: same shapes as the seed's,
  Fortran-ordered in memory, no copy.
"""

from typing import NamedTuple

import numpy as np

from . import backends
from .validation import (
    FLOAT_DTYPES,
    PARAM_LABELS,
    check_array,
    check_finite_together,
    check_labels,
    check_params,
    check_results_finite,
    report_non_finite_results,
)
from .workspace import Workspace, new_array


class CellCache(NamedTuple):
    """What ``rnn_cell_backward`` needs from ``rnn_cell_forward`` (the seed's cache, plus the
    backend that made it)."""

    a_t: np.ndarray  # (n_a, m)
    a_prev: np.ndarray  # (n_a, m)
    x_t: np.ndarray  # (n_x, m)
    params: dict
    backend: str


class ForwardCache(NamedTuple):
    """What ``rnn_backward`` needs from ``rnn_forward``, in the backends' time-major layout.
    It shares memory with the ``a`` that ``rnn_forward`` returned."""

    xs: np.ndarray  # (T, m, n_x)
    h: np.ndarray  # (T + 1, m, n_a), h[0] = a0
    params: dict
    backend: str


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


def _check_inputs(params, x, a0, names=("x", "a0"), x_axes="(n_x, m, T)"):
    """Checked params, their Dims, and ``x`` (n_x, m, T) or (n_x, m) and ``a0`` (n_a, m) in
    the params' dtype; ``names`` name x and a0 in messages.  Finiteness is checked last,
    for all seven arrays in one pass."""
    p, dims = check_params(params, finite=False)
    x_shape = (dims.n_x,) + (None,) * x_axes.count(",")  # free sizes: m and T
    x = check_array(x, names[0], x_shape, x_axes, dims.dtype, finite=False)
    a0 = check_array(a0, names[1], (dims.n_a, x.shape[1]), "(n_a, m)", dims.dtype, finite=False)
    check_finite_together((*p.values(), x, a0), PARAM_LABELS + names)
    return p, dims, x, a0


def _backend_name(module):
    return module.__name__.rsplit(".", 1)[-1].removesuffix("_backend")


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
    for name, size in (("n_x", n_x), ("n_a", n_a), ("n_y", n_y)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(size).__name__}")
        if size < 1:
            raise ValueError(f"{name} must be at least 1, got {size}")
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


def rnn_cell_forward(x_t, a_prev, params, *, backend=None):
    """One step: ``a_t = tanh(W_ax x_t + W_aa a_prev + b_a)``, ``y_hat_t = softmax(W_ya a_t + b_y)``.

    Parameters
    ----------
    x_t : array_like, shape (n_x, m)
    a_prev : array_like, shape (n_a, m)
    params : dict
        As from ``init_params``; its dtype is the dtype of the results.
    backend : {"numba", "numpy"} or None

    Returns
    -------
    a_t : ndarray, shape (n_a, m)
    y_hat_t : ndarray, shape (n_y, m)
    cache : CellCache
        For ``rnn_cell_backward``.
    """
    impl = backends.resolve(backend)
    p, dims, x_t, a_prev = _check_inputs(params, x_t, a_prev, ("x_t", "a_prev"), "(n_x, m)")
    # The cell is the T = 1 case of the forward pass: one code path for both.
    h, y_hat = impl.forward(np.ascontiguousarray(x_t.T[None]), a_prev.T, p)  # a_prev: copied into h[0]
    check_results_finite({"a_t": h, "y_hat_t": y_hat}, dims.dtype, "rnn_cell_forward")
    a_t = h[1].T
    return a_t, y_hat[0].T, CellCache(a_t, a_prev, x_t, p, _backend_name(impl))


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
        raise TypeError(f"cache must be the CellCache returned by rnn_cell_forward, got {type(cache).__name__}")
    n_a, m = cache.a_t.shape
    da_t = check_array(da_t, "da_t", (n_a, m), "(n_a, m)", cache.a_t.dtype)
    impl = backends.resolve(cache.backend)
    h = np.stack([cache.a_prev.T, cache.a_t.T])  # (2, m, n_a): a<t-1>, a<t>
    grads = impl.backward(np.ascontiguousarray(da_t.T[None]), np.ascontiguousarray(cache.x_t.T[None]), h, cache.params)
    check_results_finite(grads, h.dtype, "rnn_cell_backward")
    return {
        "dx_t": grads["dx"][0].T,
        "da_prev": grads["da0"].T,
        "dW_ax": grads["dW_ax"],
        "dW_aa": grads["dW_aa"],
        "db_a": grads["db_a"],
    }


def rnn_forward(x, a0, params, *, backend=None):
    """Forward pass over a batch of sequences.

    Parameters
    ----------
    x : array_like, shape (n_x, m, T)
    a0 : array_like, shape (n_a, m)
    params : dict
        As from ``init_params``; its dtype is the dtype of the results.
    backend : {"numba", "numpy"} or None
        None: ``FASTRNN_BACKEND`` if set, else Numba where it imports, else NumPy.

    Returns
    -------
    a : ndarray, shape (n_a, m, T)
        Hidden states a<1..T>.
    y_hat : ndarray, shape (n_y, m, T)
        Softmax outputs (over axis 0).
    cache : ForwardCache
        For ``rnn_backward``.
    """
    impl = backends.resolve(backend)
    p, dims, x, a0 = _check_inputs(params, x, a0)
    xs = _to_time_major(x)
    h, y_hat = impl.forward(xs, a0.T, p)  # a0 goes in as a view: the backends copy it into h[0]
    check_results_finite({"a": h, "y_hat": y_hat}, dims.dtype, "rnn_forward")
    cache = ForwardCache(xs, h, p, _backend_name(impl))
    return _from_time_major(h[1:]), _from_time_major(y_hat), cache


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
        ``dx`` (n_x, m, T), ``da0`` (n_a, m), ``dW_ax`` (n_a, n_x), ``dW_aa`` (n_a, n_a),
        ``db_a`` (n_a, 1).
    """
    if not isinstance(cache, ForwardCache):
        raise TypeError(f"cache must be the ForwardCache returned by rnn_forward, got {type(cache).__name__}")
    T, m, n_a = cache.h[1:].shape
    da = check_array(da, "da", (n_a, m, T), "(n_a, m, T)", cache.h.dtype)
    impl = backends.resolve(cache.backend)
    grads = impl.backward(_to_time_major(da), cache.xs, cache.h, cache.params)
    check_results_finite(grads, cache.h.dtype, "rnn_backward")
    grads["dx"] = _from_time_major(grads["dx"])
    grads["da0"] = grads["da0"].T
    return grads


def loss_and_grads(x, a0, y, params, *, backend=None, workspace=None, return_state=False):
    """Cross-entropy loss of a batch of sequences and the gradient of every input.

    ``L = -(1/m) sum_{i,t} log y_hat[y[i, t], i, t]``: summed over time, averaged over the
    batch, computed with log-sum-exp so that it is finite for any finite logits.

    Parameters
    ----------
    x : array_like, shape (n_x, m, T)
    a0 : array_like, shape (n_a, m)
    y : array_like of int, shape (m, T)
        Target class of each sequence at each step, in ``[0, n_y)``.
    params : dict
        As from ``init_params``; its dtype is the dtype of the results.
    backend : {"numba", "numpy"} or None
    workspace : Workspace or None
        Reuse this workspace's arrays instead of allocating: a training loop of one shape
        then allocates nothing after its first step (Numba backend; the NumPy reference
        still makes its temporaries).  The returned gradients are views of the workspace,
        overwritten by its next use.
    return_state : bool
        Also return the last hidden state a<T>, shape (n_a, m), to carry over to the next
        chunk of a long sequence (truncated BPTT: pass it as the next ``a0``).

    Returns
    -------
    loss : numpy.float32 or numpy.float64
        Accumulated in float64, returned in the parameters' dtype.
    grads : dict
        ``dW_ax, dW_aa, db_a, dW_ya, db_y`` (the parameters' shapes), ``dx`` (n_x, m, T),
        ``da0`` (n_a, m).
    a_last : ndarray, shape (n_a, m)
        Only with ``return_state=True``.
    """
    impl, empty = _resolve(backend, workspace)
    p, dims, x, a0 = _check_inputs(params, x, a0)
    xs = _to_time_major(x, empty, "xs")
    # dx may overwrite xs when xs is a copy made here, not a view of the caller's x.
    scratch = not np.may_share_memory(xs, x)
    return _loss_and_grads(impl, empty, xs, a0, y, p, dims, return_state, xs_is_scratch=scratch)


def loss_and_grads_onehot(x_index, a0, y, params, *, backend=None, workspace=None, return_state=False):
    """``loss_and_grads`` for one-hot inputs given by the index of their 1 (text, tokens).

    The same result as ``loss_and_grads`` on the dense one-hot ``x`` (``x[x_index[i, t], i,
    t] = 1``), without building it: a one-hot x<t> selects a column of ``W_ax``, so the
    input projection is a lookup and ``dW_ax`` a scatter-add.

    Parameters
    ----------
    x_index : array_like of int, shape (m, T)
        Index in ``[0, n_x)`` of each input's 1.
    a0, y, params, backend, workspace, return_state
        As in ``loss_and_grads``.

    Returns
    -------
    loss, grads[, a_last]
        As in ``loss_and_grads``, but ``grads`` has no ``dx``.
    """
    impl, empty = _resolve(backend, workspace)
    p, dims = check_params(params, finite=False)
    x_index = check_labels(x_index, "x_index", (None, None), dims.n_x, what="one-hot indices")
    a0 = check_array(a0, "a0", (dims.n_a, x_index.shape[0]), "(n_a, m)", dims.dtype, finite=False)
    check_finite_together((*p.values(), a0), PARAM_LABELS + ("a0",))
    x_index_tm = _contiguous(x_index.T, empty, "x_index")
    return _loss_and_grads(impl, empty, x_index_tm, a0, y, p, dims, return_state)


def _resolve(backend, workspace):
    """The backend module and the allocator for a call."""
    impl = backends.resolve(backend)
    if workspace is None:
        return impl, new_array
    if not isinstance(workspace, Workspace):
        raise TypeError(f"workspace must be a fastrnn.Workspace or None, got {type(workspace).__name__}")
    return impl, workspace.empty


def _loss_and_grads(impl, empty, inputs, a0, y, p, dims, return_state, xs_is_scratch=False):
    """The shared second half of the two loss functions: labels, dispatch, lay back out.

    ``inputs`` are already time-major: ``xs`` (T, m, n_x) or ``x_index`` (T, m).
    """
    T, m = inputs.shape[:2]
    labels = check_labels(y, "y", (m, T), dims.n_y)
    labels_tm = _contiguous(labels.T, empty, "labels")
    # a0 goes in as a view: the backends copy it into h[0].
    loss, grads, a_last, finite = impl.loss_and_grads(
        inputs, a0.T, labels_tm, p, empty=empty, xs_is_scratch=xs_is_scratch
    )
    if not finite:  # the backend scanned its results (cheaper than NumPy calls here)
        report_non_finite_results({"the loss": loss, **grads}, dims.dtype, "loss_and_grads")
    if "dx" in grads:
        grads["dx"] = _from_time_major(grads["dx"])
    grads["da0"] = grads["da0"].T
    loss = dims.dtype.type(loss)
    return (loss, grads, a_last.T) if return_state else (loss, grads)
