"""The Numba backend: allocate the arrays, then run each operation in one compiled call.

``forward``, ``backward`` and ``loss_and_grads`` take and return what their twins in
``numpy_backend.py`` do (time-major arrays, see there).  Each allocates every array the
kernels need and calls one kernel from ``numba_kernels.py``, which runs the whole operation,
time loops and matrix products included, without coming back to Python.

Importing this module imports Numba (and SciPy, whose BLAS Numba's ``np.dot`` calls); the
kernels compile on first use per dtype, or load from Numba's on-disk cache.
"""

import numpy as np

from . import numba_kernels as kernels


def _kernel_params(p):
    """The parameters as the kernels take them: ``W_aa.T`` contiguous, biases 1-D."""
    return {
        "W_ax": p["W_ax"],
        "W_aa": p["W_aa"],
        "W_aa_T": np.ascontiguousarray(p["W_aa"].T),
        "b_a": p["b_a"].reshape(-1),
        "W_ya": p["W_ya"],
        "b_y": p["b_y"].reshape(-1),
    }


def _hidden_states(a0, T):
    """The (T + 1, m, n_a) array of hidden states with ``h[0] = a0``."""
    h = np.empty((T + 1,) + a0.shape, dtype=a0.dtype)
    h[0] = a0
    return h


def forward(xs, a0, p):
    """Hidden states (T + 1, m, n_a) and softmax outputs (T, m, n_y)."""
    k = _kernel_params(p)
    T, m, _ = xs.shape
    h = _hidden_states(a0, T)
    y_hat = np.empty((T, m, k["b_y"].size), dtype=xs.dtype)
    rec = np.empty(a0.shape, dtype=xs.dtype)
    kernels.forward_kernel(xs, k["W_ax"], k["W_aa_T"], k["b_a"], k["W_ya"], k["b_y"], h, rec, y_hat)
    return h, y_hat


def backward(da, xs, h, p):
    """BPTT for an outside ``da`` (T, m, n_a); ``da`` is not modified."""
    dz = da.copy()  # the kernel turns da into dz in place
    grads = _allocate_hidden_grads(xs, p)
    kernels.backward_kernel(
        dz, xs, h, p["W_ax"], p["W_aa"], grads["da0"], grads["dx"],
        grads["dW_ax"], grads["dW_aa"], grads["db_a"].reshape(-1),
    )  # fmt: skip
    return grads


def _allocate_hidden_grads(xs, p):
    T, m, n_x = xs.shape
    n_a = p["W_aa"].shape[0]
    return {
        "dx": np.empty((T, m, n_x), dtype=xs.dtype),
        "da0": np.empty((m, n_a), dtype=xs.dtype),
        "dW_ax": np.empty((n_a, n_x), dtype=xs.dtype),
        "dW_aa": np.empty((n_a, n_a), dtype=xs.dtype),
        "db_a": np.empty((n_a, 1), dtype=xs.dtype),
    }


def loss_and_grads(xs, a0, labels, p):
    """Loss and every gradient of one training step (see ``numpy_backend.loss_and_grads``)."""
    k = _kernel_params(p)
    T, m, _ = xs.shape
    n_a, n_y = a0.shape[1], k["b_y"].size
    h = _hidden_states(a0, T)
    grads = _allocate_hidden_grads(xs, p)
    grads["dW_ya"] = np.empty((n_y, n_a), dtype=xs.dtype)
    grads["db_y"] = np.empty((n_y, 1), dtype=xs.dtype)
    loss = kernels.loss_and_grads_kernel(
        xs, labels, k["W_ax"], k["W_aa"], k["W_aa_T"], k["b_a"], k["W_ya"], k["b_y"],
        h,
        np.empty((m, n_a), dtype=xs.dtype),  # rec
        np.empty((T, m, n_y), dtype=xs.dtype),  # logits
        np.empty((T, m, n_a), dtype=xs.dtype),  # dz
        grads["da0"], grads["dx"], grads["dW_ax"], grads["dW_aa"], grads["db_a"].reshape(-1),
        grads["dW_ya"], grads["db_y"].reshape(-1),
    )  # fmt: skip
    return loss, grads
