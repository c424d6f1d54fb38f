"""The Numba backend: allocate the arrays, then run each operation in one compiled call.

``forward``, ``backward`` and ``loss_and_grads`` take and return what their twins in
``numpy_backend.py`` do (time-major arrays, see there).  Each allocates every array the
kernels need, through ``empty(name, shape, dtype)`` (a ``Workspace`` reuses them across
calls), and calls one kernel from ``numba_kernels.py``, which runs the whole operation,
time loops and matrix products included, without coming back to Python.

Importing this module imports Numba (and SciPy, whose BLAS Numba's ``np.dot`` calls); the
kernels compile on first use per dtype, or load from Numba's on-disk cache.
"""

import numpy as np
from numba import config

from ..workspace import new_array
from . import numba_kernels as kernels
from . import overflow_reported_by_the_api

NAME = "numba"  # what ``backend=`` calls this backend
RESULTS_IN_WORKSPACE = True  # every result is allocated through ``empty`` (see numpy_backend)


def forward_scratch_size(p, m):
    """Entries of the kernels' forward scratch: the weights' transposes and ``rec`` (m, n_a)
    (``numba_kernels.forward_scratch``)."""
    n_a = p["W_aa"].shape[0]
    return p["W_ax"].size + p["W_aa"].size + p["W_ya"].size + m * n_a


def dz_buffer_size(p, T, m):
    """Entries of a training step's flat ``dz_buffer``: the forward scratch, then dL/dz
    (T, m, n_a) in the same memory."""
    return max(forward_scratch_size(p, m), T * m * p["W_aa"].shape[0])


def _hidden_states(a0, T, empty):
    """The (T + 1, m, n_a) array of hidden states with ``h[0] = a0``."""
    h = empty("h", (T + 1,) + a0.shape, a0.dtype)
    h[0] = a0
    return h


def _grads(p, m, empty, *, output_layer):
    """Arrays for ``da0`` (m, n_a) and the gradients of the hidden layer's parameters, and of
    the output layer's with ``output_layer``."""
    names = ("W_ax", "W_aa", "b_a") + (("W_ya", "b_y") if output_layer else ())
    grads = {"d" + name: empty("d" + name, p[name].shape, p[name].dtype) for name in names}
    grads["da0"] = empty("da0", (m, p["W_aa"].shape[0]), p["W_aa"].dtype)
    return grads


def forward(xs, a0, p, nonlinearity="tanh"):
    """Hidden states (T + 1, m, n_a), softmax outputs (T, m, n_y), and whether both are
    finite (scanned by the kernel).  The kernels take ``nonlinearity`` as ``relu``
    (``numba_kernels.NONLINEARITY``)."""
    T, m, _ = xs.shape
    h = _hidden_states(a0, T, new_array)
    y_hat = np.empty((T, m, p["b_y"].size), dtype=xs.dtype)
    scratch = np.empty(forward_scratch_size(p, m), dtype=xs.dtype)
    finite = kernels.forward_kernel(
        xs,
        p["W_ax"],
        p["W_aa"],
        p["b_a"],
        p["W_ya"],
        p["b_y"],
        scratch,
        h,
        y_hat,
        kernels.NONLINEARITY[nonlinearity],
    )
    return h, y_hat, finite


def backward(da, xs, h, p, nonlinearity="tanh"):
    """BPTT for an outside ``da`` (T, m, n_a); ``da`` is not modified.  Returns the
    gradients and whether all are finite (scanned by the kernel)."""
    dz = da.copy()  # the kernel turns da into dz in place
    grads = _grads(p, da.shape[1], new_array, output_layer=False)
    grads["dx"] = np.empty(xs.shape, dtype=xs.dtype)
    finite = kernels.backward_kernel(
        dz, xs, h, p["W_ax"], p["W_aa"],
        grads["da0"], grads["dx"], grads["dW_ax"], grads["dW_aa"], grads["db_a"], kernels.NONLINEARITY[nonlinearity],
    )  # fmt: skip
    return grads, finite


def loss_and_grads(
    inputs, a0, labels, p, *, empty=new_array, xs_is_scratch=False, batch_size=None, nonlinearity="tanh"
):
    """Loss and every gradient of one training step (see ``numpy_backend.loss_and_grads``).

    ``inputs`` is dense ``xs`` (T, m, n_x) or one-hot ``x_index`` (T, m).
    ``xs_is_scratch``: ``xs`` is a copy the caller made for this call, so ``dx`` may be
    written over it (the kernel reads ``xs`` for the last time before it writes ``dx``);
    this saves a (T, m, n_x) array.  ``batch_size``: normalise by this batch size instead
    of ``m`` (a shard of a larger batch, see ``numpy_backend.softmax_cross_entropy``).

    Returns
    -------
    loss : float
    grads : dict
    a_last : ndarray, shape (m, n_a)
    finite : bool
        Whether the loss and every gradient are finite (checked by the kernel).
    """
    T, m = inputs.shape[:2]
    n_x, n_a, n_y = p["W_ax"].shape[1], a0.shape[1], p["b_y"].size
    dtype = p["W_aa"].dtype
    batch_size = m if batch_size is None else batch_size
    h = _hidden_states(a0, T, empty)
    grads = _grads(p, m, empty, output_layer=True)
    arrays = (
        p["W_ax"], p["W_aa"], p["b_a"], p["W_ya"], p["b_y"],
        h, empty("logits", (labels.shape[0], m, n_y), dtype), empty("dz_buffer", (dz_buffer_size(p, T, m),), dtype),
        grads["da0"],
    )  # fmt: skip
    gradients = (grads["dW_ax"], grads["dW_aa"], grads["db_a"], grads["dW_ya"], grads["db_y"])
    relu = kernels.NONLINEARITY[nonlinearity]
    if inputs.ndim == 2:  # one-hot x_index
        dW_ax_T = empty("dW_ax_T", (n_x, n_a), dtype)
        loss, finite = kernels.loss_and_grads_onehot_kernel(
            inputs, labels, batch_size, *arrays, dW_ax_T, *gradients, relu
        )
    else:
        grads["dx"] = inputs if xs_is_scratch else empty("dx", inputs.shape, dtype)
        loss, finite = kernels.loss_and_grads_kernel(
            inputs, labels, batch_size, *arrays, grads["dx"], *gradients, relu
        )
    return loss, grads, h[-1], finite


def sequence_losses(inputs, a0, labels, p, nonlinearity="tanh"):
    """Each sequence's loss, no gradient (see ``numpy_backend.sequence_losses``): one kernel
    call; ``h`` and ``logits`` are the call's own temporaries, kept for nothing after it."""
    T, m = inputs.shape[:2]
    dtype = p["W_aa"].dtype
    h = _hidden_states(a0, T, new_array)
    logits = np.empty((labels.shape[0], m, p["b_y"].size), dtype=dtype)  # the labelled steps
    scratch = np.empty(forward_scratch_size(p, m), dtype=dtype)
    losses = np.empty(m, dtype=np.float64)
    kernel = kernels.sequence_losses_onehot_kernel if inputs.ndim == 2 else kernels.sequence_losses_kernel
    finite = kernel(
        inputs, labels, p["W_ax"], p["W_aa"], p["b_a"], p["W_ya"], p["b_y"], scratch, h, logits, losses,
        kernels.NONLINEARITY[nonlinearity],
    )  # fmt: skip
    return losses, h[-1], finite


if config.DISABLE_JIT:  # the kernels run as plain Python: NumPy warns where compiled code is silent
    forward, backward, loss_and_grads, sequence_losses = map(
        overflow_reported_by_the_api, (forward, backward, loss_and_grads, sequence_losses)
    )


# -- optimizers: numpy_backend's functions, on flat views of contiguous arrays ------------


def _flat(*arrays):
    return [a.reshape(-1) for a in arrays]


def sgd_update(param, grad, velocity, lr, momentum, commit=True):
    return kernels.sgd_update(*_flat(param, grad, velocity), lr, momentum, commit)


def adagrad_update(param, grad, sum_sq, lr, eps, commit=True):
    return kernels.adagrad_update(*_flat(param, grad, sum_sq), lr, eps, commit)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, correction1, correction2, commit=True):
    return kernels.adam_update(
        *_flat(param, grad, m, v), lr, beta1, beta2, eps, correction1, correction2, commit
    )


def clip_by_value(grad, limit):
    kernels.clip_by_value(grad.reshape(-1), limit)


def max_abs(grad):
    return kernels.max_abs(grad.reshape(-1))


def sum_of_squares(grad, inv_scale):
    return kernels.sum_of_squares(grad.reshape(-1), inv_scale)


def scale(grad, factor):
    kernels.scale(grad.reshape(-1), factor)


if config.DISABLE_JIT:  # as above: fastrnn.optim reports a step that would overflow
    sgd_update, adagrad_update, adam_update = map(
        overflow_reported_by_the_api, (sgd_update, adagrad_update, adam_update)
    )
