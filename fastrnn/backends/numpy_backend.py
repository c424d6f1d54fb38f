"""The NumPy backend: the readable reference for every computation in fastrnn.

Each function here has a twin of the same name in ``numba_backend.py``; the Numba kernels
mirror these lines step by step.  Read this file first.

Internal layout (both backends).  The public API takes the seed's layout
(features x batch x time); ``fastrnn.api`` converts once, at the boundary, to a time-major
"row" layout in which every time step is one C-contiguous (batch, features) block:

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

from ..workspace import new_array
from . import overflow_reported_by_the_api

NAME = "numpy"  # what ``backend=`` calls this backend
# The gradients are NumPy temporaries, not arrays from ``empty``: with a workspace,
# fastrnn.api copies them into it (the Numba backend allocates them there).
RESULTS_IN_WORKSPACE = False


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


@overflow_reported_by_the_api
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


@overflow_reported_by_the_api
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


@overflow_reported_by_the_api
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


@overflow_reported_by_the_api
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


@overflow_reported_by_the_api  # fastrnn.optim reports a step that overflows
def sgd_update(param, grad, velocity, lr, momentum, commit=True):
    """``velocity = momentum * velocity + grad``; ``param -= lr * velocity`` (PyTorch's form)."""
    new_velocity = momentum * velocity + grad
    new_param = param - lr * new_velocity
    return _finish_update(commit, (new_param, new_velocity), (param, velocity))


@overflow_reported_by_the_api  # fastrnn.optim reports a step that overflows
def adagrad_update(param, grad, sum_sq, lr, eps, commit=True):
    """``sum_sq += grad**2``; ``param -= lr * grad / sqrt(sum_sq + eps)`` (min-char-rnn's form)."""
    new_sum_sq = sum_sq + grad * grad
    new_param = param - lr * grad / np.sqrt(new_sum_sq + eps)
    return _finish_update(commit, (new_param, new_sum_sq), (param, sum_sq))


@overflow_reported_by_the_api  # fastrnn.optim reports a step that overflows
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
