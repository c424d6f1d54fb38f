"""The NumPy backend: the readable reference for every computation in fastrnn.

Each function here has a twin of the same name in ``numba_backend.py``; the Numba kernels
mirror these lines step by step.  Read this file first.

Internal layout (both backends).  The public API takes the seed's layout
(features x batch x time); the engine (``fastrnn.engine``) works in a time-major "row"
layout in which every time step is one C-contiguous (batch, features) block:

==========  ================  =====================================================
name        shape             meaning
==========  ================  =====================================================
``xs``      (T, m, n_x)       inputs; ``xs[t]`` is x<t+1> transposed
``x_index`` (T, m) intp       one-hot inputs, given by the index of their 1
``h``       (T + 1, m, n_a)   hidden states; ``h[0]`` is a0, ``h[t]`` is a<t>
``logits``  (L, m, n_y)       ``W_ya a<t> + b_y`` transposed, for the last L steps
``labels``  (L, m) intp       target class of each row: L = T (one class per step),
                              or L = 1 (one class per sequence, read from a<T>)
==========  ================  =====================================================

In row form the seed's ``a<t> = tanh(W_ax x<t> + W_aa a<t-1> + b_a)`` reads
``h[t] = tanh(xs[t-1] @ W_ax.T + h[t-1] @ W_aa.T + b_a.T)``; with ``nonlinearity="relu"``,
``max(., 0)`` takes tanh's place (``activation``).  Keeping ``h[0] = a0`` in the
same buffer makes ``h[:-1]`` (all a<t-1>) and ``h[1:]`` (all a<t>) contiguous, so that the
weight gradients are single matrix products.

Only the two recurrences (``hidden_forward`` and ``hidden_backward``) loop over time; the
input projection, the output layer and all weight gradients are one matrix product each
over all ``T * m`` rows.  Functions that take ``inputs`` accept either ``xs`` or
``x_index``: a one-hot x<t> selects a column of ``W_ax``, so the projection becomes a
lookup and ``dW_ax`` a scatter-add, and no dense one-hot array is ever built.  The params dict ``p`` holds C-contiguous arrays of one dtype
(float32 or float64) in the seed's shapes; every function computes in that dtype.
"""

import numpy as np

from .. import packing
from ..packing import final_states
from ..workspace import new_array
from . import layers, overflow_reported_by_the_engine
from .layers import layer_output, network_top, scatter_top

NAME = "numpy"  # what ``backend=`` calls this backend
# The gradients are NumPy temporaries, not arrays from ``empty``: with a workspace,
# the engine copies them into it (the Numba backend allocates them there).
RESULTS_IN_WORKSPACE = False
# The lean lane (``fastrnn.engine.lean``, the Numba backend's ``checked_*`` functions)
# exists to cut the Python path around a small kernel; the reference's time is its own
# NumPy calls, and it always takes the full path, whose checks are the door's.
checked_loss_and_grads = checked_sequence_losses = None


def rows(a):
    """View a (T, m, n) block as the (T * m, n) matrix of its rows (no copy)."""
    return a.reshape(-1, a.shape[-1])


# -- forward -----------------------------------------------------------------------------


def input_projection(inputs, p):
    """``W_ax x<t>`` for every step at once, as rows: shape (T, m, n_a).

    Parameters
    ----------
    inputs : ndarray
        Dense ``xs`` (T, m, n_x): one (T*m, n_x) @ (n_x, n_a) product.  Or ``x_index``
        (T, m) of one-hot inputs: each row is the column of ``W_ax`` its index selects.
    """
    if inputs.ndim == 2:
        return p["W_ax"].T[inputs]
    T, m, _ = inputs.shape
    return (rows(inputs) @ p["W_ax"].T).reshape(T, m, -1)


def activation(z, nonlinearity):
    """The hidden layer's nonlinearity: ``tanh(z)``, or ``max(z, 0)`` for ``"relu"``."""
    return np.tanh(z) if nonlinearity == "tanh" else np.maximum(z, 0)


def activation_derivative(a, nonlinearity):
    """``f'(z)`` from the activation's own output ``a = f(z)`` (no z is kept): ``1 - a**2``
    for tanh; for relu 1 where ``a > 0`` and 0 elsewhere (``z <= 0``; the kink counts as 0,
    as in PyTorch)."""
    return 1 - a**2 if nonlinearity == "tanh" else (a > 0).astype(a.dtype)


def hidden_forward(z_x, a0, p, empty=new_array, nonlinearity="tanh"):
    """Run the recurrence over all time steps.

    Parameters
    ----------
    z_x : ndarray, shape (T, m, n_a)
        The input projection (``input_projection``).
    a0 : ndarray, shape (m, n_a)
    p : dict of ndarray (the five parameters)
    empty : callable
        ``empty(name, shape, dtype)`` gives the array for ``h`` (a ``Workspace`` reuses it).
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    h : ndarray, shape (T + 1, m, n_a)
        ``h[0] = a0``, ``h[t] = a<t>``.
    """
    T, m, n_a = z_x.shape
    h = empty("h", (T + 1, m, n_a), z_x.dtype)
    h[0] = a0
    b_a = p["b_a"].T  # (1, n_a), broadcast over the batch
    for t in range(T):
        # The only sequential part: W_aa a<t-1> needs the previous step.
        h[t + 1] = activation(z_x[t] + h[t] @ p["W_aa"].T + b_a, nonlinearity)
    return h


def output_logits(h, p):
    """Output layer for all time steps: ``logits = h[1:] @ W_ya.T + b_y.T``, shape (T, m, n_y)."""
    T, m, _ = h[1:].shape
    return (rows(h[1:]) @ p["W_ya"].T + p["b_y"].T).reshape(T, m, -1)


def labelled_states(h, labels):
    """The states the output layer reads, as a block whose ``[1:]`` are they: ``h`` itself
    for labels at every step (``labels`` (T, m)), ``h[-2:]`` for one label per sequence
    (``labels`` (1, m): the prediction from the last state a<T>)."""
    return h[h.shape[0] - 1 - labels.shape[0] :]


def softmax(logits):
    """Softmax over the last axis (the classes), shifted by each row's own maximum."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


@overflow_reported_by_the_engine
def forward(xs, a0, p, nonlinearity="tanh"):
    """Hidden states and softmax outputs (``nonlinearity``: ``hidden_forward``'s).

    Returns
    -------
    h : ndarray, shape (T + 1, m, n_a)
    y_hat : ndarray, shape (T, m, n_y)
    finite : bool
        Whether both are (finite inputs can still overflow; the caller reports it).
    """
    h = hidden_forward(input_projection(xs, p), a0, p, nonlinearity=nonlinearity)
    y_hat = softmax(output_logits(h, p))
    return h, y_hat, _all_finite(h, y_hat)


@overflow_reported_by_the_engine
def cell_forward(x_t, a_prev, p, nonlinearity="tanh"):
    """One time step in the seed's layout, for ``rnn_cell_forward``: the inputs' finiteness
    first, then ``forward`` with T = 1, and copies of the inputs for the cell's cache.

    Parameters
    ----------
    x_t : ndarray, shape (n_x, m)
    a_prev : ndarray, shape (n_a, m)
    p : dict
        One layer in one direction: ``W_ax``, ``W_aa``, ``b_a``, ``W_ya``, ``b_y``.

    Returns
    -------
    a_t : ndarray, shape (n_a, m)
    y_hat : ndarray, shape (n_y, m)
    copies : tuple of ndarray
        Read-only copies of ``(*p.values(), x_t, a_prev)``, in that order, that no caller
        holds: the cache's own.
    bad : int
        -1, or the index in that order of the first input with an entry that is not
        finite; then nothing is computed and the other results are None.
    finite : bool
        Whether ``a_t`` and ``y_hat`` are.
    """
    inputs = (*p.values(), x_t, a_prev)
    for index, array in enumerate(inputs):
        if not _all_finite(array):
            return None, None, None, index, False
    h, y_hat, finite = forward(np.ascontiguousarray(x_t.T[None]), a_prev.T, p, nonlinearity)
    copies = tuple(np.array(array) for array in inputs)
    for copy in copies:
        copy.flags.writeable = False
    return h[1].T, y_hat[0].T, copies, -1, finite


def _all_finite(*arrays):
    return all(bool(np.isfinite(a).all()) for a in arrays)


# -- loss --------------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels, batch_size=None):
    """Cross-entropy summed over time, averaged over the batch, and its gradient.

    ``L = -(1/m) sum_{t,i} log softmax(logits[t, i])[labels[t, i]]``, computed as
    ``logsumexp(z) - z[label]`` so that it stays finite for any finite logits.

    Parameters
    ----------
    logits : ndarray, shape (L, m, n_y)
        The labelled steps' logits (all T steps, or the last one: ``labelled_states``).
    labels : ndarray of intp, shape (L, m)
    batch_size : int or None
        The ``m`` of ``1/m``: None for these ``m`` sequences.  A shard of a larger batch
        passes the whole batch's size, so that its loss and gradients are its share of the
        whole batch's, and the shards' results simply add up (``fastrnn.parallel``).

    Returns
    -------
    loss : float
        Accumulated in float64 whatever the dtype of ``logits``.
    dlogits : ndarray, shape (T, m, n_y)
        ``dL/dlogits = (softmax(logits) - onehot(labels)) / m``.
    """
    m = logits.shape[1] if batch_size is None else batch_size
    row_losses, e, sum_e, target = _cross_entropy_rows(logits, labels)
    loss = np.sum(row_losses, dtype=np.float64) / m
    dlogits = e / sum_e
    dlogits[target] -= 1
    dlogits /= m
    return loss, dlogits


def _cross_entropy_rows(logits, labels):
    """Each row's ``logsumexp(z) - z[label]``, shape (L, m), and what the gradient reuses:
    ``e = exp(z - max(z))``, its row sums ``sum_e`` (L, m, 1), and the index of each row's
    target entry in ``logits``."""
    t, i = np.indices(labels.shape)
    target = (t, i, labels)  # logits[target] picks each row's target class
    row_max = logits.max(axis=-1, keepdims=True)
    e = np.exp(logits - row_max)
    sum_e = e.sum(axis=-1, keepdims=True)
    log_sum_exp = row_max[..., 0] + np.log(sum_e[..., 0])
    return log_sum_exp - logits[target], e, sum_e, target


def sequence_cross_entropy(logits, labels):
    """Each sequence's cross-entropy, summed over its steps: no gradient, no ``1/m``.

    Parameters
    ----------
    logits : ndarray, shape (L, m, n_y)
        The labelled steps' logits (all T steps, or the last one: ``labelled_states``).
    labels : ndarray of intp, shape (L, m)

    Returns
    -------
    ndarray of float64, shape (m,)
        ``sum_t logsumexp(logits[t, i]) - logits[t, i, labels[t, i]]`` (as in
        ``softmax_cross_entropy``, whose loss is their sum over the batch divided by ``m``).
    """
    row_losses = _cross_entropy_rows(logits, labels)[0]
    return np.sum(row_losses, axis=0, dtype=np.float64)


@overflow_reported_by_the_engine
def sequence_losses(inputs, a0, labels, p, nonlinearity="tanh"):
    """Each sequence's loss, from a forward pass that keeps nothing for a backward one.

    Parameters
    ----------
    inputs : ndarray
        ``xs`` (T, m, n_x) or one-hot ``x_index`` (T, m).
    a0 : ndarray, shape (m, n_a)
    labels : ndarray of intp, shape (T, m) or (1, m)
        A class per step, or one per sequence (``labelled_states``).
    p : dict of ndarray

    Returns
    -------
    losses : ndarray of float64, shape (m,)
        ``sequence_cross_entropy``.
    a_last : ndarray, shape (m, n_a)
    finite : bool
        Whether every loss is finite (float32 logits can overflow; the caller reports it).
    """
    h = hidden_forward(input_projection(inputs, p), a0, p, nonlinearity=nonlinearity)
    losses = sequence_cross_entropy(output_logits(labelled_states(h, labels), p), labels)
    return losses, h[-1], _all_finite(losses)


# -- backward ----------------------------------------------------------------------------


def output_backward(dlogits, h, p):
    """Gradients of the output layer and the gradient that flows into the hidden states.

    Returns
    -------
    dW_ya : ndarray, shape (n_y, n_a)
    db_y : ndarray, shape (n_y, 1)
    da : ndarray, shape (T, m, n_a)
        ``dL/da<t>`` from the output layer (the recurrence adds its own part later).
    """
    dlogits_rows = rows(dlogits)
    dW_ya = dlogits_rows.T @ rows(h[1:])
    db_y = dlogits_rows.sum(axis=0)[:, None]
    da = (dlogits_rows @ p["W_ya"]).reshape(h[1:].shape)
    return dW_ya, db_y, da


def hidden_backward(da, h, p, nonlinearity="tanh"):
    """Backpropagation through time (the seed's ``backward_pass``, with its bugs fixed).

    Parameters
    ----------
    da : ndarray, shape (T, m, n_a)
        ``dL/da<t>`` from outside the recurrence.
    h : ndarray, shape (T + 1, m, n_a)
        From ``hidden_forward``; the derivative of the nonlinearity comes from it
        (``activation_derivative``: ``1 - h**2`` for tanh), no tanh is recomputed.
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    dz : ndarray, shape (T, m, n_a)
        ``dL/dz<t>``, z<t> the argument of the nonlinearity at step t (for ``input_backward``).
    grads : dict
        ``da0`` (m, n_a), ``dW_aa`` (n_a, n_a), ``db_a`` (n_a, 1).
    """
    dz = np.empty_like(da)
    da_next = np.zeros_like(da[0])  # dL/da<t> through a<t+1>; zero after the last step
    for t in range(da.shape[0] - 1, -1, -1):
        dz[t] = (da[t] + da_next) * activation_derivative(h[t + 1], nonlinearity)
        da_next = dz[t] @ p["W_aa"]
    # The weight gradients at once, over the T*m rows.
    dz_rows = rows(dz)
    return dz, {"da0": da_next, "dW_aa": dz_rows.T @ rows(h[:-1]), "db_a": dz_rows.sum(axis=0)[:, None]}


def input_backward(dz, inputs, p):
    """``dW_ax`` (n_a, n_x) and ``dx`` (T, m, n_x), or None for one-hot ``x_index`` inputs.

    For one-hot inputs ``dW_ax = dz.T @ onehot(x_index)``: each row of ``dz`` is added to
    the column of ``dW_ax`` its input selected.
    """
    dz_rows = rows(dz)
    if inputs.ndim == 2:
        dW_ax_T = np.zeros(p["W_ax"].T.shape, dtype=dz.dtype)
        np.add.at(dW_ax_T, inputs.reshape(-1), dz_rows)
        return np.ascontiguousarray(dW_ax_T.T), None
    return dz_rows.T @ rows(inputs), (dz_rows @ p["W_ax"]).reshape(inputs.shape)


@overflow_reported_by_the_engine
def backward(da, xs, h, p, nonlinearity="tanh"):
    """Gradients for an outside ``da``: the public ``rnn_backward``.

    Returns
    -------
    grads : dict
        ``dx`` (T, m, n_x), ``da0`` (m, n_a), ``dW_ax``, ``dW_aa``, ``db_a``.
    finite : bool
        Whether every gradient is.
    """
    dz, grads = hidden_backward(da, h, p, nonlinearity)
    grads["dW_ax"], grads["dx"] = input_backward(dz, xs, p)
    return grads, _all_finite(*grads.values())


@overflow_reported_by_the_engine
def loss_and_grads(
    inputs, a0, labels, p, *, empty=new_array, xs_is_scratch=False, batch_size=None, nonlinearity="tanh"
):
    """Loss and every gradient of one training step.

    Parameters
    ----------
    inputs : ndarray
        ``xs`` (T, m, n_x) or one-hot ``x_index`` (T, m).
    a0 : ndarray, shape (m, n_a)
    labels : ndarray of intp, shape (T, m) or (1, m)
        A class per step, or one per sequence (``labelled_states``).
    p : dict of ndarray
    empty : callable
        Allocates ``h`` (a ``Workspace`` reuses it); the reference's other arrays, the
        gradients included, are NumPy temporaries (``RESULTS_IN_WORKSPACE``).
    xs_is_scratch : bool
        The caller allows ``dx`` to overwrite ``xs``: accepted for the backends' common
        signature and ignored, the reference keeps them apart.
    batch_size : int or None
        Normalise by this batch size instead of ``m`` (``softmax_cross_entropy``).
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    loss : float
    grads : dict
        ``dW_ax, dW_aa, db_a, dW_ya, db_y`` in the parameters' shapes, ``da0`` (m, n_a),
        and ``dx`` (T, m, n_x) for dense inputs.
    a_last : ndarray, shape (m, n_a)
        The last hidden state a<T>, for carrying over to the next chunk of a stream.
    finite : bool
        Whether the loss and every gradient are finite.  Finite inputs can still overflow
        (float32 logits above 3.4e38); the caller reports it.
    """
    h = hidden_forward(input_projection(inputs, p), a0, p, empty, nonlinearity)
    top = labelled_states(h, labels)
    loss, dlogits = softmax_cross_entropy(output_logits(top, p), labels, batch_size)
    dW_ya, db_y, da = output_backward(dlogits, top, p)
    if top.shape[0] < h.shape[0]:  # one label per sequence: dL/da<t> is 0 before the last step
        da = np.concatenate([np.zeros((h.shape[0] - top.shape[0],) + da.shape[1:], da.dtype), da])
    dz, grads = hidden_backward(da, h, p, nonlinearity)
    grads["dW_ax"], dx = input_backward(dz, inputs, p)
    if dx is not None:
        grads["dx"] = dx
    grads["dW_ya"] = dW_ya
    grads["db_y"] = db_y
    finite = bool(np.isfinite(loss)) and _all_finite(*grads.values())
    return loss, grads, h[-1], finite


# -- networks: stacked layers, two directions, variable lengths (packed rows) -------------
#
# The layout is ``fastrnn.packing``'s: each array holds one row per real step, step after
# step, (N, n); step t's rows are ``offsets[t] : offsets[t] + batch_sizes[t]``, the
# sequences still running, always a prefix of the batch (sorted by length).  ``a0`` is
# (num_layers * D, m, n_a), indexed ``layer * D + direction``.  ``states[layer][direction]``
# is that direction's (N, n_a) hidden states; a layer's output, what the layer above (or
# the output layer) reads, is its directions' states side by side, (N, D * n_a).  One layer
# in one direction over full-length sequences (the dense path) has the functions above.


def make_packing(lengths, m, T, empty=None):
    """``fastrnn.packing.make_packing`` (``empty``: the Numba backend's allocator; this
    reference makes its own arrays)."""
    return packing.make_packing(lengths, m, T)


def pack_rows(xs, sequences, steps, out=None):
    """The packed rows of dense inputs: ``xs[steps[r], sequences[r]]`` for every packed row
    r, shape (N, n_x), from time-major ``xs`` (T, m, n_x) in any memory layout
    (``fastrnn.packing``)."""
    if out is None:
        return xs[steps, sequences]
    out[...] = xs[steps, sequences]
    return out


def unpack_rows(packed, sequences, steps, out):
    """``pack_rows`` undone: each packed row (N, n) into the time-major (T, m, n) ``out``
    at its step and sequence (the padding of ``out`` is left as it is)."""
    out[steps, sequences] = packed


def time_order(T, reverse):
    """The steps in the order a direction computes them."""
    return range(T - 1, -1, -1) if reverse else range(T)


def step_rows(batch_sizes, offsets, t):
    """The packed rows of step ``t``."""
    return slice(offsets[t], offsets[t] + batch_sizes[t])


def previous_block(H, a0, batch_sizes, offsets, t, reverse):
    """The states step ``t`` reads, (batch_sizes[t], n_a): a<t-1> for the forward
    direction (``a0`` at t = 0); for the reverse one a<t+1> of the sequences that have a
    step t + 1, and ``a0`` for those whose last step is t."""
    n = batch_sizes[t]
    if not reverse:
        return a0[:n] if t == 0 else H[offsets[t - 1] : offsets[t - 1] + n]
    n_next = batch_sizes[t + 1] if t + 1 < batch_sizes.size else 0
    return np.concatenate([H[offsets[t + 1] : offsets[t + 1] + n_next], a0[n_next:n]])


def previous_states(H, a0, batch_sizes, offsets, reverse):
    """``previous_block`` of every step as one (N, n_a) matrix, row for row with ``H``:
    what ``dW_aa`` multiplies."""
    prev = np.empty_like(H)
    for t in range(batch_sizes.size):
        prev[step_rows(batch_sizes, offsets, t)] = previous_block(H, a0, batch_sizes, offsets, t, reverse)
    return prev


def direction_forward(z, a0, W_aa, b_a, batch_sizes, offsets, reverse, nonlinearity, empty=None, tag=""):
    """One direction of one layer: ``hidden_forward`` over packed rows.

    Parameters
    ----------
    z : ndarray, shape (N, n_a)
        The input projection of every step (``packed_projection``).
    a0 : ndarray, shape (m, n_a)
    reverse : bool
        Run each sequence from its last step to its first.

    Returns
    -------
    H : ndarray, shape (N, n_a)
    """
    H = np.empty_like(z)
    for t in time_order(batch_sizes.size, reverse):
        rows = step_rows(batch_sizes, offsets, t)
        # The only sequential part: the product with the state the step reads.
        recurrent = previous_block(H, a0, batch_sizes, offsets, t, reverse) @ W_aa.T
        H[rows] = activation(z[rows] + recurrent + b_a.T, nonlinearity)
    return H


def direction_backward(
    dH, H, a0, W_aa, batch_sizes, offsets, reverse, nonlinearity, dH_is_scratch=False, H_is_scratch=False,
    empty=None, tag="",
):  # fmt: skip
    """``hidden_backward`` of one direction over packed rows.

    Parameters
    ----------
    dH : ndarray, shape (N, n_a)
        dL/dH from outside the recurrence (the output layer, or the layer above).
    dH_is_scratch, H_is_scratch : bool
        Whether ``dH`` and ``H`` may be overwritten (the Numba backend's memory savings;
        this reference never writes over its arguments).
    empty, tag
        The Numba backend's allocator and array names (``layers``); this reference makes
        its own temporaries.

    Returns
    -------
    dz : ndarray, shape (N, n_a)
    da0 : ndarray, shape (m, n_a)
    dW_aa : ndarray, shape (n_a, n_a)
    db_a : ndarray, shape (n_a, 1)
    """
    g = dH.copy()  # dL/da of each row: from outside, plus what the step that read it adds
    dz = np.empty_like(dH)
    da0 = np.zeros_like(a0)
    n_steps = batch_sizes.size
    for t in reversed(time_order(n_steps, reverse)):
        rows = step_rows(batch_sizes, offsets, t)
        n = batch_sizes[t]
        dz[rows] = g[rows] * activation_derivative(H[rows], nonlinearity)
        d_previous = dz[rows] @ W_aa  # dL/d(the states step t read)
        if not reverse:
            if t == 0:
                da0[:n] += d_previous
            else:
                g[offsets[t - 1] : offsets[t - 1] + n] += d_previous
        else:
            n_next = batch_sizes[t + 1] if t + 1 < n_steps else 0
            g[offsets[t + 1] : offsets[t + 1] + n_next] += d_previous[:n_next]
            da0[n_next:n] += d_previous[n_next:]
    return (
        dz,
        da0,
        recurrent_weight_gradient(dz, H, a0, batch_sizes, offsets, reverse),
        dz.sum(axis=0)[:, None],
    )


def recurrent_weight_gradient(dz, H, a0, batch_sizes, offsets, reverse):
    """``dW_aa``, the sum over the steps of ``dz_t.T @ (the states step t read)``.

    Where every step holds the whole batch (every sequence full length: the rows are time
    steps of ``m`` rows each), the states the steps read are ``H`` shifted by one step, and
    ``a0`` for the step that starts: two products on views of ``H``.  Otherwise one product
    with the states each row read, gathered row for row (``previous_states``).
    """
    m, N = a0.shape[0], H.shape[0]
    if batch_sizes[-1] < m:  # sequences of their own lengths
        return dz.T @ previous_states(H, a0, batch_sizes, offsets, reverse)
    if reverse:  # step t read step t + 1's states; the last step read a0
        return dz[: N - m].T @ H[m:] + dz[N - m :].T @ a0
    return dz[m:].T @ H[: N - m] + dz[:m].T @ a0


def packed_projection(layer_input, W_ax, empty=None, tag=""):
    """``W_ax x`` of every packed row, (N, n_a): a product, or a lookup of ``W_ax``'s
    columns for one-hot indices (N,) (``input_projection``)."""
    if layer_input.ndim == 1:
        return W_ax.T[layer_input]
    return layer_input @ W_ax.T


def packed_input_backward(dz, layer_input, W_ax, empty=None, tag="", input_gradient=True):
    """``dW_ax`` and ``dL/d(layer_input)`` (None for one-hot indices, and where
    ``input_gradient`` is False: nobody asked for it), as ``input_backward``."""
    if layer_input.ndim == 1:
        dW_ax_T = np.zeros(W_ax.T.shape, dtype=dz.dtype)
        np.add.at(dW_ax_T, layer_input, dz)
        return np.ascontiguousarray(dW_ax_T.T), None
    return dz.T @ layer_input, (dz @ W_ax if input_gradient else None)


# The layer x direction loop is the same for both backends (``layers``); this backend's
# direction functions plug into it.
DIRECTION_OPS = layers.DirectionOps(
    packed_projection, direction_forward, direction_backward, packed_input_backward
)


def network_forward(inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity, between=None):
    """``layers.network_forward`` on this backend: ``states[layer][direction]`` (N, n_a)."""
    return layers.network_forward(
        DIRECTION_OPS,
        inputs,
        a0,
        p,
        num_layers,
        directions,
        batch_sizes,
        offsets,
        nonlinearity,
        between=between,
    )


def network_backward(d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity, between=None):
    """``layers.network_backward`` on this backend: the hidden layers' gradients, ``da0``
    and, for dense inputs, ``dx`` (N, n_x)."""
    return layers.network_backward(
        DIRECTION_OPS, d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity, between=between
    )


@overflow_reported_by_the_engine
def packed_forward_outputs(
    inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity, between=None
):
    """``forward`` of a network over packed rows: ``states``, softmax outputs (N, n_y) of
    every step, and whether both are finite.  ``between``: ``layers``."""
    states = network_forward(
        inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity, between
    )
    top = layer_output(states[-1])
    y_hat = softmax(top @ p["W_ya"].T + p["b_y"].T)
    return states, y_hat, _all_finite(top, y_hat)


@overflow_reported_by_the_engine
def packed_backward_grads(d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity, between=None):
    """``backward`` of a network over packed rows: ``network_backward`` and whether every
    gradient is finite."""
    grads = network_backward(d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity, between)
    return grads, _all_finite(*grads.values())


@overflow_reported_by_the_engine
def packed_loss_and_grads(
    inputs,
    a0,
    labels,
    p,
    num_layers,
    directions,
    batch_sizes,
    offsets,
    last_rows,
    *,
    batch_size,
    nonlinearity,
    empty=None,
    between=None,
):
    """``loss_and_grads`` of a network over packed rows (``empty``: the Numba backend's
    allocator; this reference makes its own arrays, and the engine copies its results
    into a workspace).

    Parameters
    ----------
    inputs : ndarray
        Packed dense inputs (N, n_x) or one-hot indices (N,).
    a0 : ndarray, shape (num_layers * D, m, n_a)
    labels : ndarray of intp
        (N,): a class per packed row (per step); or (1, m): one class per sequence, of
        its final states (``network_top``).
    batch_size : int
        The ``m`` the loss is averaged over (``softmax_cross_entropy``).

    Returns
    -------
    loss, grads, final, finite
        ``grads`` holds ``"d" + key`` of every parameter, ``da0`` and, for dense inputs,
        ``dx`` (N, n_x); ``final`` is ``final_states`` (num_layers * D, m, n_a).
    """
    sequence_labels = labels.ndim == 2
    states = network_forward(
        inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity, between
    )
    top = network_top(states, last_rows, sequence_labels)
    logits = top @ p["W_ya"].T + p["b_y"].T
    loss, dlogits = softmax_cross_entropy(logits[None], labels.reshape(1, -1), batch_size)
    dlogits = dlogits[0]
    d_top = scatter_top(dlogits @ p["W_ya"], states, last_rows, sequence_labels)
    grads = network_backward(d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity, between)
    grads["dW_ya"] = dlogits.T @ top
    grads["db_y"] = dlogits.sum(axis=0)[:, None]
    finite = bool(np.isfinite(loss)) and _all_finite(*grads.values())
    return loss, grads, final_states(states, last_rows), finite


@overflow_reported_by_the_engine
def packed_sequence_losses(
    inputs, a0, labels, p, num_layers, directions, batch_sizes, offsets, last_rows, nonlinearity
):
    """``sequence_losses`` of a network over packed rows: each sorted sequence's loss
    (m,) float64, the ``final_states``, and whether every loss is finite."""
    sequence_labels = labels.ndim == 2
    states = network_forward(inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity)
    top = network_top(states, last_rows, sequence_labels)
    row_losses = _cross_entropy_rows((top @ p["W_ya"].T + p["b_y"].T)[None], labels.reshape(1, -1))[0][0]
    m = last_rows.size
    if sequence_labels:
        losses = row_losses.astype(np.float64)
    else:  # add each packed row's loss to its sequence's (row offsets[t] + j is sequence j)
        sequence = np.arange(row_losses.size) - np.repeat(offsets[:-1], batch_sizes)
        losses = np.bincount(sequence, weights=row_losses.astype(np.float64), minlength=m)
    return losses, final_states(states, last_rows), _all_finite(losses)


# -- optimizers: in-place parameter updates (fastrnn.optim) ------------------------------
# Each takes one parameter array, its gradient and the optimizer's state arrays of the same
# shape.  It computes the new values of all of them; with ``commit=False`` it only returns
# whether they are all finite, with ``commit=True`` it writes them (in place) and returns
# True.  fastrnn.optim checks every parameter before it commits any, so that a step that
# would overflow changes nothing.  Scalars are of the parameter's dtype.


def _finish_update(commit, new_values, targets):
    if not commit:
        return all(bool(np.isfinite(value).all()) for value in new_values)
    for target, value in zip(targets, new_values):
        target[...] = value
    return True


@overflow_reported_by_the_engine  # fastrnn.optim reports a step that overflows
def sgd_update(param, grad, velocity, lr, momentum, commit=True):
    """``velocity = momentum * velocity + grad``; ``param -= lr * velocity`` (PyTorch's form)."""
    new_velocity = momentum * velocity + grad
    new_param = param - lr * new_velocity
    return _finish_update(commit, (new_param, new_velocity), (param, velocity))


@overflow_reported_by_the_engine  # fastrnn.optim reports a step that overflows
def adagrad_update(param, grad, sum_sq, lr, eps, commit=True):
    """``sum_sq += grad**2``; ``param -= lr * grad / sqrt(sum_sq + eps)`` (min-char-rnn's form)."""
    new_sum_sq = sum_sq + grad * grad
    new_param = param - lr * grad / np.sqrt(new_sum_sq + eps)
    return _finish_update(commit, (new_param, new_sum_sq), (param, sum_sq))


@overflow_reported_by_the_engine  # fastrnn.optim reports a step that overflows
def adam_update(param, grad, m, v, lr, beta1, beta2, eps, correction1, correction2, commit=True):
    """Adam (Kingma and Ba) with bias correction.

    ``m = beta1 m + (1 - beta1) grad``, ``v = beta2 v + (1 - beta2) grad**2``,
    ``param -= lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / correction1``,
    ``v_hat = v / correction2``; the caller computes ``correction1 = 1 - beta1**step`` and
    ``correction2 = 1 - beta2**step`` (in float64, once, for both backends).
    """
    one = param.dtype.type(1)
    new_m = beta1 * m + (one - beta1) * grad
    new_v = beta2 * v + (one - beta2) * grad * grad
    new_param = param - lr * (new_m / correction1) / (np.sqrt(new_v / correction2) + eps)
    return _finish_update(commit, (new_param, new_m, new_v), (param, m, v))


def clip_by_value(grad, limit):
    """Clip every entry of ``grad`` to ``[-limit, limit]``, in place."""
    np.clip(grad, -limit, limit, out=grad)


def max_abs(grad):
    """``max |grad|`` as a float (for scaling the global norm)."""
    return float(np.max(np.abs(grad)))


def sum_of_squares(grad, inv_scale):
    """``sum((grad * inv_scale)**2)`` in float64: the global norm's sum, scaled (as BLAS
    ``nrm2`` does) so that gradients near float64's limit do not overflow it."""
    flat = grad.reshape(-1).astype(np.float64) * inv_scale
    return float(flat @ flat)


def scale(grad, factor):
    """``grad *= factor``, in place."""
    grad *= factor


# -- one step at a time: streaming and generation (fastrnn.generation) -------------------
# A trained network in one direction, run one time step at a time for a few rows.  ``w`` is
# a ``layers.StepWeights`` (the transposed weights, stacked by layer); ``states`` are
# (num_layers, m, n_a).  The Numba twins run a whole step (streaming) or every step
# (generation) in one call.


def network_step(z, previous, nonlinearity, w):
    """Every layer's state after one step, (num_layers, m, n_a), from ``previous`` and
    ``z`` (m, n_a), layer 0's input projection: layer ``l`` reads the new state of layer
    ``l - 1``, as in the forward pass."""
    states = np.empty_like(previous)
    for layer in range(previous.shape[0]):
        if layer > 0:
            z = states[layer - 1] @ w.W_ax_T_upper[layer - 1]
        states[layer] = activation(z + previous[layer] @ w.W_aa_T[layer] + w.b_a[layer], nonlinearity)
    return states


@overflow_reported_by_the_engine  # fastrnn.generation reports non-finite results
def stream_step(inputs, previous, states, w, probabilities, nonlinearity, scratch):
    """One step of every layer and the output layer, for a stream (``Stream.step``).

    Parameters
    ----------
    inputs : ndarray
        Symbol indices (m,) intp, or dense input (n_x, m), C-contiguous.
    previous : ndarray, shape (num_layers, m, n_a)
    states : ndarray, shape (num_layers, m, n_a)
        Receives the new states.
    w : layers.StepWeights
    probabilities : bool
        Softmax outputs; False: the logits.
    scratch : ndarray, shape (2, m, n_a)
        The Numba twin's workspace, kept by the stream; the reference allocates its own.

    Returns
    -------
    out : ndarray, shape (m, n_y)
    bad : int
        -1; else the position of the first index out of ``[0, n_x)`` (indices) or the flat
        position of the first non-finite entry (dense), and nothing was computed.
    finite : bool
        Whether every new state and output is finite.
    """
    if inputs.ndim == 1:
        wrong = np.flatnonzero((inputs < 0) | (inputs >= w.W_ax_T.shape[0]))
        if wrong.size:
            return None, int(wrong[0]), False
        z = w.W_ax_T[inputs]
    else:
        wrong = np.flatnonzero(~np.isfinite(inputs))
        if wrong.size:
            return None, int(wrong[0]), False
        z = inputs.T @ w.W_ax_T
    states[...] = network_step(z, previous, nonlinearity, w)
    out = states[-1] @ w.W_ya_T + w.b_y
    if probabilities:
        out = softmax(out)
    return out, -1, _all_finite(out, states)


def ranked(weights, limit):
    """The ``limit`` likeliest symbols, best first; ties go to the lower index (a total
    order, which the Numba twin's heap gives too)."""
    return np.lexsort((np.arange(weights.size), -weights))[:limit]


def draw_symbol(logits, temperature, top_k, top_p, u):
    """One symbol drawn from ``softmax(logits / temperature)`` (``logits`` (n_y,), the
    output layer's, bias included), with ``u`` uniform in [0, 1).

    The likeliest ``top_k`` symbols are kept (``top_k >= n_y``: all), then the smallest
    prefix of them whose mass reaches ``top_p`` of theirs (``top_p = 1``: all); the draw
    walks the kept symbols' cumulative weights (in index order when nothing is filtered,
    else best first) to ``u`` times their total.  Computed in float64 for both dtypes.
    """
    logits = logits.astype(np.float64)
    weights = np.exp((logits - logits.max()) / temperature)
    n = weights.size
    limit = min(top_k, n)
    if limit == n and top_p >= 1.0:
        order = np.arange(n)
    else:
        order = ranked(weights, limit)
        if top_p < 1.0:
            cumulative = np.cumsum(weights[order])
            order = order[: int(np.argmax(cumulative >= top_p * cumulative[-1])) + 1]
    cumulative = np.cumsum(weights[order])  # sequential sums, as the Numba twin adds
    past = np.flatnonzero(cumulative > u * cumulative[-1])
    if past.size:
        return int(order[past[0]])
    possible = np.flatnonzero(weights[order] > 0)  # rounding left the target unreached
    return int(order[possible[-1]]) if possible.size else int(order[0])


@overflow_reported_by_the_engine  # fastrnn.generation reports non-finite results
def generate(feed, running, states, w, uniforms, temperature, top_k, top_p, stop, nonlinearity):
    """Generation: ``uniforms.shape[0]`` steps of ``m`` streams, each feeding back the
    symbol it drew.

    Parameters
    ----------
    feed : ndarray, shape (m,) intp
        Each stream's first input symbol (checked by the caller).
    running : ndarray, shape (m,) bool
        Which streams generate; a stream stops after drawing ``stop``.
    states : ndarray, shape (num_layers, m, n_a)
        The states before ``feed``; updated in place.
    w : layers.StepWeights
    uniforms : ndarray, shape (n_steps, m) float64
        ``uniforms[t, i]`` draws stream ``i``'s symbol at step ``t`` (``draw_symbol``).
    temperature, top_p : float
    top_k : int
        ``n_y`` or more: no top-k filter.
    stop : int
        The stop symbol; -1: none.

    Returns
    -------
    symbols : ndarray, shape (m, n_steps) intp
        Stream ``i``'s symbols are ``symbols[i, :lengths[i]]``.
    lengths : ndarray, shape (m,) intp
    finite : bool
        Whether every output was finite.
    """
    feed, running = feed.copy(), running.copy()
    m = feed.size
    symbols = np.zeros((m, uniforms.shape[0]), dtype=np.intp)
    lengths = np.zeros(m, dtype=np.intp)
    finite = True
    for t in range(uniforms.shape[0]):
        if not running.any():
            break
        states[...] = network_step(w.W_ax_T[feed], states, nonlinearity, w)
        logits = states[-1] @ w.W_ya_T + w.b_y
        finite &= _all_finite(logits)
        for i in np.flatnonzero(running):
            symbol = draw_symbol(logits[i], temperature, top_k, top_p, uniforms[t, i])
            symbols[i, lengths[i]] = symbol
            lengths[i] += 1
            feed[i] = symbol
            running[i] = symbol != stop
    return symbols, lengths, finite
