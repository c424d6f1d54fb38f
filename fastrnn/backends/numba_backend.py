"""The Numba backend: allocate the arrays, then run each operation in one compiled call.

``forward``, ``backward`` and ``loss_and_grads`` take and return what their twins in
``numpy_backend.py`` do (time-major arrays, see there).  Each allocates every array the
kernels need, through ``empty(name, shape, dtype)`` (a ``Workspace`` reuses them across
calls), and calls one kernel from ``numba_kernels.py``, which runs the whole operation,
time loops and matrix products included, without coming back to Python.

Importing this module imports Numba (and SciPy, whose BLAS Numba's ``np.dot`` calls); the
kernels compile on first use per dtype, or load from Numba's on-disk cache.
"""

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import config

from .. import packing
from ..packing import Packing
from ..workspace import new_array
from . import layers, overflow_reported_by_the_engine
from . import numba_kernels as kernels

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
    grads = {}
    for name, key in _STEP_GRADIENTS if output_layer else _HIDDEN_GRADIENTS:  # a plain loop: every step pays
        grads[name] = empty(name, p[key].shape, p[key].dtype)
    grads["da0"] = empty("da0", (m, p["W_aa"].shape[0]), p["W_aa"].dtype)
    return grads


_HIDDEN_GRADIENTS = (("dW_ax", "W_ax"), ("dW_aa", "W_aa"), ("db_a", "b_a"))  # (gradient, parameter)
_STEP_GRADIENTS = _HIDDEN_GRADIENTS + (("dW_ya", "W_ya"), ("db_y", "b_y"))


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


def cell_forward(x_t, a_prev, p, nonlinearity="tanh"):
    """``numpy_backend.cell_forward`` in one compiled call: the kernel copies the inputs in
    the pass that checks their finiteness, then runs the step in the seed's layout (no
    transposes: a cell uses each weight once)."""
    dtype = a_prev.dtype
    inputs, copies = [], []
    for array in (p["W_ax"], p["W_aa"], p["b_a"], p["W_ya"], p["b_y"], x_t, a_prev):
        if not array.flags.carray:  # C-contiguous, aligned and writable
            # One compiled variant: Numba types read-only arrays apart, and a loop of cells
            # passes the read-only a_t back as a_prev.
            array = np.array(array, order="C")
        inputs.append(array)
        copies.append(np.empty(array.shape, dtype))
    n_a, m = a_prev.shape
    n_y = p["b_y"].shape[0]
    a_t = np.empty((n_a, m), dtype)
    y_hat = np.empty((n_y, m), dtype)
    scratch = np.empty((n_a + n_y) * m, dtype)
    inputs, copies = tuple(inputs), tuple(copies)
    bad, finite = kernels.cell_forward_kernel(
        inputs, copies, scratch, a_t, y_hat, kernels.NONLINEARITY[nonlinearity]
    )
    if bad >= 0:
        return None, None, None, bad, False
    for copy in copies:
        copy.flags.writeable = False
    return a_t, y_hat, copies, -1, finite


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
    h = _hidden_states(a0, T, empty)
    batch_size = m if batch_size is None else batch_size
    return _step_from_states(inputs, h, labels, p, empty, xs_is_scratch, batch_size, nonlinearity)


def _step_from_states(inputs, h, labels, p, empty, xs_is_scratch, batch_size, nonlinearity):
    """``loss_and_grads`` with ``h`` (T + 1, m, n_a) made, ``h[0]`` holding a0."""
    T, m, n_a = h.shape[0] - 1, h.shape[1], h.shape[2]
    dtype = p["W_aa"].dtype
    grads = _grads(p, m, empty, output_layer=True)
    arrays = (
        p["W_ax"], p["W_aa"], p["b_a"], p["W_ya"], p["b_y"],
        h, empty("logits", (labels.shape[0], m, p["b_y"].size), dtype),
        empty("dz_buffer", (dz_buffer_size(p, T, m),), dtype), grads["da0"],
    )  # fmt: skip
    gradients = (grads["dW_ax"], grads["dW_aa"], grads["db_a"], grads["dW_ya"], grads["db_y"])
    relu = kernels.NONLINEARITY[nonlinearity]
    if inputs.ndim == 2:  # one-hot x_index
        dW_ax_T = empty("dW_ax_T", (p["W_ax"].shape[1], n_a), dtype)
        loss, finite = kernels.loss_and_grads_onehot_kernel(
            inputs, labels, batch_size, *arrays, dW_ax_T, *gradients, relu
        )
    else:
        grads["dx"] = inputs if xs_is_scratch else empty("dx", inputs.shape, dtype)
        loss, finite = kernels.loss_and_grads_kernel(
            inputs, labels, batch_size, *arrays, grads["dx"], *gradients, relu
        )
    return loss, grads, h[-1], finite


def checked_loss_and_grads(inputs, a0, y, p, nonlinearity, empty=new_array):
    """A training step of the seed's network on the caller's own arrays, checked by a
    kernel first (``fastrnn.engine.lean``): ``_checked_step_inputs``, then the full path's
    step on them (``loss_and_grads``, from its states on).

    Parameters
    ----------
    inputs : ndarray
        Dense ``x`` (n_x, m, T), or one-hot ``x_index`` (m, T) intp.
    a0 : ndarray, shape (n_a, m)
    y : ndarray of intp, shape (m, T)
    p : dict
        The seed's five parameters.  Every array is C-contiguous, writable and of the
        parameters' dtype (or intp), with the numbers of dimensions above: the caller
        makes sure, since these pick the compiled variant.  The kernel checks the rest.
    nonlinearity : {"tanh", "relu"}
    empty : callable
        The allocator, ``empty(name, shape, dtype)`` (a workspace's: the arrays of the
        names the full path gives them).

    Returns
    -------
    status : int
        ``numba_kernels.RAN``, or why the kernel refused the call (nothing computed; the
        other results are then 0.0, None, None, False).
    loss : float
    grads : dict
        As ``loss_and_grads``'s, time-major: ``dW_ax`` ... ``db_y``, ``da0`` (m, n_a) and,
        for dense inputs, ``dx`` (T, m, n_x).
    h : ndarray, shape (T + 1, m, n_a)
    finite : bool
    """
    status, xs, h, labels = _checked_step_inputs(inputs, a0, y, p, empty)
    if status != kernels.RAN:
        return status, 0.0, None, None, False
    loss, grads, _, finite = _step_from_states(xs, h, labels, p, empty, True, h.shape[1], nonlinearity)
    return status, loss, grads, h, finite


def checked_sequence_losses(inputs, a0, y, p, nonlinearity):
    """``sequence_losses`` on the caller's own arrays, checked by a kernel first (as
    ``checked_loss_and_grads``, whose arguments it takes): ``(status, losses, a_last,
    finite)``, ``losses`` (m,) float64 and ``a_last`` (m, n_a) None where refused."""
    status, xs, h, labels = _checked_step_inputs(inputs, a0, y, p, new_array)
    if status != kernels.RAN:
        return status, None, None, False
    return (status, *_sequence_losses_from_states(xs, h, labels, p, nonlinearity))


def _checked_step_inputs(inputs, a0, y, p, empty):
    """``(status, xs, h, labels)``: the seed's arrays checked and laid out time-major by
    ``numba_kernels.checked_step_inputs_into`` (or its one-hot twin), into ``xs`` (T, m,
    n_x) (one-hot: ``x_index`` (T, m)), ``h[0]`` of ``h`` (T + 1, m, n_a) and ``labels``
    (T, m); ``status`` ``RAN``, or why the kernel refused them (nothing written)."""
    W_ax, W_aa, b_a, W_ya, b_y = p["W_ax"], p["W_aa"], p["b_a"], p["W_ya"], p["b_y"]
    m, T = inputs.shape[-2:]
    h, labels = empty("h", (T + 1, m, W_aa.shape[0]), W_aa.dtype), empty("labels", (T, m), np.intp)
    if inputs.ndim == 3:  # the time-major copy of x, which dx may overwrite (xs_is_scratch)
        xs = empty("xs", (T, m, inputs.shape[0]), W_aa.dtype)
        status = kernels.checked_step_inputs_into(inputs, a0, y, W_ax, W_aa, b_a, W_ya, b_y, xs, h, labels)
    else:
        xs = empty("x_index", (T, m), np.intp)
        status = kernels.checked_onehot_step_inputs_into(
            inputs, a0, y, W_ax, W_aa, b_a, W_ya, b_y, xs, h, labels
        )
    return status, xs, h, labels


def sequence_losses(inputs, a0, labels, p, nonlinearity="tanh"):
    """Each sequence's loss, no gradient (see ``numpy_backend.sequence_losses``): one kernel
    call; ``h`` and ``logits`` are the call's own temporaries, kept for nothing after it."""
    return _sequence_losses_from_states(
        inputs, _hidden_states(a0, inputs.shape[0], new_array), labels, p, nonlinearity
    )


def _sequence_losses_from_states(inputs, h, labels, p, nonlinearity):
    """``sequence_losses`` with ``h`` (T + 1, m, n_a) made, ``h[0]`` holding a0."""
    m = h.shape[1]
    dtype = p["W_aa"].dtype
    logits = np.empty((labels.shape[0], m, p["b_y"].size), dtype=dtype)  # the labelled steps
    scratch = np.empty(forward_scratch_size(p, m), dtype=dtype)
    losses = np.empty(m, dtype=np.float64)
    kernel = kernels.sequence_losses_onehot_kernel if inputs.ndim == 2 else kernels.sequence_losses_kernel
    finite = kernel(
        inputs, labels, p["W_ax"], p["W_aa"], p["b_a"], p["W_ya"], p["b_y"], scratch, h, logits, losses,
        kernels.NONLINEARITY[nonlinearity],
    )  # fmt: skip
    return losses, h[-1], finite


# -- networks: stacked layers, two directions, variable lengths (packed rows) -------------
# numpy_backend's functions of the same names, over its arrays (see there); each layer and
# direction is a few kernel calls.


def make_packing(lengths, m, T, empty=new_array):
    """``fastrnn.packing.make_packing``, its arrays filled by one kernel (a counting sort)
    instead of a dozen NumPy calls: the shards of a call pack at once, without the GIL.
    ``empty`` allocates them (a workspace's).  Lengths None (every sequence T steps
    long) are packed as lengths all T, which they are."""
    full = lengths is None
    if full:
        lengths = empty("packing.full_lengths", (m,), np.intp)
        lengths[...] = T
    T_run, N = int(lengths.max()), int(lengths.sum())
    order, sorted_lengths, last_rows = empty("packing.sequences", (3, m), np.intp)
    batch_sizes, offsets = (
        empty("packing.batch_sizes", (T_run,), np.intp),
        empty("packing.offsets", (T_run + 1,), np.intp),
    )
    steps, sequences = empty("packing.rows", (2, N), np.intp)
    kernels.packing_into(lengths, order, sorted_lengths, batch_sizes, offsets, last_rows, steps, sequences)
    return Packing(order, sorted_lengths, batch_sizes, offsets, last_rows, steps, sequences, T, full)


def pack_rows(xs, sequences, steps, out=None):
    """As the reference's; a kernel where ``xs`` (T, m, n) is the transpose of a
    C-contiguous (n, m, T) array, the seed's layout (from each plane, one contiguous
    (m, T) block at a time), NumPy's gather otherwise."""
    x = xs.transpose(2, 1, 0)
    if out is None:
        out = np.empty((sequences.size, x.shape[0]), dtype=x.dtype)
    if not x.flags.c_contiguous:
        out[...] = xs[steps, sequences]
        return out
    kernels.pack_rows_into(x, sequences, steps, out)
    return out


def unpack_rows(packed, sequences, steps, out):
    """As the reference's, by a kernel (``out`` is the engine's C-contiguous array)."""
    kernels.unpack_rows_into(packed, sequences, steps, out)


class Products(NamedTuple):
    """The matrix products of the direction functions below: ``matmul_into(a, b, out)``,
    ``out = a @ b``, ``matmul_transposed_into(a, b, out)``, ``out = a.T @ b``, and
    ``add_matmul_into(a, b, out)``, ``out += a @ b``, or None.  The kernels' (SciPy's BLAS,
    ``KERNEL_PRODUCTS``) by default; a door may bring its own (the PyTorch door runs them on
    PyTorch's threads: ``fastrnn.torch.ops``).  With ``add_matmul_into``, the recurrences'
    products large enough to gain from those threads are made step by step
    (``STEP_PRODUCT_MULTIPLY_ADDS``); without it, the kernels make every recurrent product."""

    matmul_into: object
    matmul_transposed_into: object
    add_matmul_into: object = None


KERNEL_PRODUCTS = Products(kernels.matmul_into, kernels.matmul_transposed_into)

#: Multiply-adds of a step's recurrent product (rows x n_a x n_a, at the first step) from
#: which a door's ``add_matmul_into`` makes it, the time loop then running here, in Python,
#: with a kernel per step for the activation: the kernel's loop runs its products on the
#: calling thread, and a door's threads (PyTorch's, awake in a training loop) are worth
#: the loop's 10 us or so a step above this.  A PyTorch training step against the kernel's
#: loop, float32 / float64, by the step's product: 64 x 512 x 512, 1.42x / 1.41x faster;
#: 32 x 256 x 256, 1.23x / 1.25x; 48 x 128 x 128, float64, 1.00x; in a prototype, 64 x 128
#: x 128, 0.96x / 1.18x, and 16 x 128 x 128, 0.66x / 0.75x (docs/pytorch.md, "Threads").
STEP_PRODUCT_MULTIPLY_ADDS = {4: 1_500_000, 8: 750_000}  # by itemsize


def _by_steps(products, a0):
    """Whether the recurrences of a direction with ``a0`` (m, n_a) make their products by
    ``products.add_matmul_into``, step by step (``STEP_PRODUCT_MULTIPLY_ADDS``)."""
    m, n_a = a0.shape
    return products.add_matmul_into is not None and m * n_a * n_a >= STEP_PRODUCT_MULTIPLY_ADDS[a0.itemsize]


def _transposed(W, empty=new_array, name="W_T"):
    """``W.T`` C-contiguous (in ``empty(name, ...)``), for the products that multiply by it
    from the right."""
    out = empty(name, W.shape[::-1], W.dtype)
    np.copyto(out, W.T)
    return out


def packed_projection(layer_input, W_ax, empty=new_array, tag="", products=KERNEL_PRODUCTS):
    """As the reference's; ``empty`` allocates (a workspace's, with names ending in ``tag``:
    the layer and direction, ``params.layer_key("", layer, reverse)``); ``products``: whose
    matrix products (``Products``)."""
    z = empty("z" + tag, (layer_input.shape[0], W_ax.shape[0]), W_ax.dtype)
    W_ax_T = _transposed(W_ax, empty, "W_ax_T" + tag)
    if layer_input.ndim == 1:
        kernels.packed_lookup_into(layer_input, W_ax_T, z)
    else:
        products.matmul_into(layer_input, W_ax_T, z)
    return z


def direction_forward(
    z, a0, W_aa, b_a, batch_sizes, offsets, reverse, nonlinearity, empty=new_array, tag="", products=KERNEL_PRODUCTS
):  # fmt: skip
    """The states (N, n_a), computed in ``z``'s memory: by the kernel, or step by step where
    ``products`` make the recurrent products (``_by_steps``)."""
    relu = kernels.NONLINEARITY[nonlinearity]
    if _by_steps(products, a0):
        _direction_forward_by_steps(
            W_aa, b_a.reshape(-1), a0, z, batch_sizes, offsets, reverse, relu, products
        )
        return z
    kernels.direction_forward_in_place(
        _transposed(W_aa, empty, "W_aa_T" + tag), b_a.reshape(-1), a0, z, batch_sizes, offsets, reverse,
        empty("rows" + tag, a0.shape[-2:], a0.dtype), relu,
    )  # fmt: skip
    return z


def _direction_forward_by_steps(W_aa, b_a, a0, h, batch_sizes, offsets, reverse, relu, products):
    """``kernels.direction_forward_in_place``'s time loop, line for line, with each step's
    product by ``products.add_matmul_into`` and its activation by a kernel."""
    add_matmul_into, W_aa_T = products.add_matmul_into, W_aa.T
    n_steps = batch_sizes.size
    for s in range(n_steps):
        t = n_steps - 1 - s if reverse else s
        n, start = batch_sizes[t], offsets[t]
        n_running, running_row = kernels.rows_read(batch_sizes, offsets, t, reverse)
        if n_running > 0:
            add_matmul_into(h[running_row : running_row + n_running], W_aa_T, h[start : start + n_running])
        if n_running < n:  # the sequences that start here read a0
            add_matmul_into(a0[n_running:n], W_aa_T, h[start + n_running : start + n])
        kernels.activation_rows_in_place(h, start, n, b_a, relu)


def direction_backward(
    dH, H, a0, W_aa, batch_sizes, offsets, reverse, nonlinearity, dH_is_scratch=False, H_is_scratch=False,
    empty=new_array, tag="", products=KERNEL_PRODUCTS,
):  # fmt: skip
    """As the reference's, by the kernel or step by step (as ``direction_forward``).
    ``dH_is_scratch``: ``dH`` is a C-contiguous array of the caller's own, which becomes
    ``dz``; ``H_is_scratch``: ``H`` is not needed after this call and becomes
    ``previous_states`` (no copy, no fresh memory either way)."""
    if dH_is_scratch:
        dz = dH
    else:  # the kernel turns it into dz in place
        dz = empty("dz" + tag, dH.shape, dH.dtype)
        np.copyto(dz, dH)
    da0 = empty("da0_direction" + tag, a0.shape, a0.dtype)
    db_a = empty("db_a" + tag, (W_aa.shape[0], 1), W_aa.dtype)
    relu = kernels.NONLINEARITY[nonlinearity]
    if _by_steps(products, a0):
        _direction_backward_by_steps(
            dz, H, a0, W_aa, batch_sizes, offsets, reverse, da0, db_a.reshape(-1), relu, products
        )
    else:
        kernels.direction_backward_in_place(
            dz, H, a0, W_aa, batch_sizes, offsets, reverse, da0, db_a.reshape(-1),
            empty("rows" + tag, a0.shape[-2:], a0.dtype), relu,
        )  # fmt: skip
    dW_aa = recurrent_weight_gradient(
        dz, H, a0, batch_sizes, offsets, reverse, H_is_scratch, empty, tag, products
    )
    return dz, da0, dW_aa, db_a


def _direction_backward_by_steps(dz, h, a0, W_aa, batch_sizes, offsets, reverse, da0, db_a, relu, products):
    """``kernels.direction_backward_in_place``'s time loop, line for line, with each step's
    product by ``products.add_matmul_into`` and its activation gradient by a kernel."""
    add_matmul_into = products.add_matmul_into
    da0[...] = 0
    db_a[...] = 0
    n_steps = batch_sizes.size
    for s in range(n_steps):
        t = s if reverse else n_steps - 1 - s  # the forward pass's order, reversed
        n, start = batch_sizes[t], offsets[t]
        kernels.activation_gradient_rows_in_place(dz, h, start, n, db_a, relu)
        n_running, running_row = kernels.rows_read(batch_sizes, offsets, t, reverse)
        if n_running > 0:  # back to the rows step t read
            add_matmul_into(dz[start : start + n_running], W_aa, dz[running_row : running_row + n_running])
        if n_running < n:
            add_matmul_into(dz[start + n_running : start + n], W_aa, da0[n_running:n])


def recurrent_weight_gradient(
    dz, H, a0, batch_sizes, offsets, reverse, H_is_scratch=False, empty=new_array, tag="", products=KERNEL_PRODUCTS
):  # fmt: skip
    """As the reference's: full-length rows take two products on views of ``H`` (no
    gathered copy of the states the steps read: at the char-rnn size in float64 that copy,
    into fresh memory, took 0.8 ms of a 7.6 ms forward and backward); rows of variable
    lengths gather them (``previous_states_into``, over ``H`` itself with ``H_is_scratch``),
    and so do the strided states of one direction of a bidirectional layer (half of each
    row of the layer's output) for the kernels' own products, which take C-contiguous
    arrays only (PyTorch's take the strided views)."""
    dW_aa = empty("dW_aa" + tag, (dz.shape[1], H.shape[1]), dz.dtype)
    m, N = a0.shape[0], H.shape[0]
    if batch_sizes[-1] < m or (products is KERNEL_PRODUCTS and not H.flags.c_contiguous):
        prev = H if H_is_scratch else empty("previous" + tag, H.shape, H.dtype)
        kernels.previous_states_into(H, a0, batch_sizes, offsets, reverse, prev)
        products.matmul_transposed_into(dz, prev, dW_aa)
        return dW_aa
    read_a0 = dz[N - m :] if reverse else dz[:m]  # the step that read a0
    if N == m:  # one step
        products.matmul_transposed_into(read_a0, a0, dW_aa)
        return dW_aa
    if reverse:  # step t read step t + 1's states
        products.matmul_transposed_into(dz[: N - m], H[m:], dW_aa)
    else:
        products.matmul_transposed_into(dz[m:], H[: N - m], dW_aa)
    from_a0 = empty("dW_aa_a0" + tag, dW_aa.shape, dW_aa.dtype)
    products.matmul_transposed_into(read_a0, a0, from_a0)
    np.add(dW_aa, from_a0, out=dW_aa)
    return dW_aa


def packed_input_backward(
    dz, layer_input, W_ax, empty=new_array, tag="", products=KERNEL_PRODUCTS, input_gradient=True
):
    dW_ax = empty("dW_ax" + tag, W_ax.shape, W_ax.dtype)
    if layer_input.ndim == 1:
        kernels.packed_lookup_backward_into(
            dz, layer_input, empty("dW_ax_T" + tag, W_ax.T.shape, W_ax.dtype), dW_ax
        )
        return dW_ax, None
    products.matmul_transposed_into(dz, layer_input, dW_ax)
    if not input_gradient:
        return dW_ax, None
    d_input = empty("d_input" + tag, layer_input.shape, dz.dtype)
    products.matmul_into(dz, W_ax, d_input)
    return dW_ax, d_input


def direction_ops(products):
    """This backend's direction functions with ``products`` (``Products``) for their matrix
    products, as a ``layers.DirectionOps``."""
    return layers.DirectionOps(
        functools.partial(packed_projection, products=products),
        functools.partial(direction_forward, products=products),
        functools.partial(direction_backward, products=products),
        functools.partial(packed_input_backward, products=products),
    )


# The layer x direction loop is the reference's (``layers``), over this backend's direction functions.
DIRECTION_OPS = layers.DirectionOps(
    packed_projection, direction_forward, direction_backward, packed_input_backward
)


def network_forward(
    inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity, empty=new_array, between=None
):
    return layers.network_forward(
        DIRECTION_OPS, inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity, empty=empty,
        between=between,
    )  # fmt: skip


def network_backward(
    d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity, d_top_is_scratch=False,
    states_are_scratch=False, empty=new_array, between=None,
):  # fmt: skip
    """As the reference's, with the scratch flags of ``layers.network_backward``."""
    return layers.network_backward(
        DIRECTION_OPS, d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity,
        d_top_is_scratch=d_top_is_scratch, states_are_scratch=states_are_scratch, empty=empty, between=between,
    )  # fmt: skip


def _output_logits(top, p, empty=new_array):
    """``top @ W_ya.T`` (R, n_y), without ``b_y`` (the softmax kernels add it)."""
    logits = empty("logits", (top.shape[0], p["W_ya"].shape[0]), top.dtype)
    kernels.matmul_into(np.ascontiguousarray(top), _transposed(p["W_ya"], empty, "W_ya_T"), logits)
    return logits


def packed_forward_outputs(
    inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity, between=None
):
    states = network_forward(
        inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity, between=between
    )
    top = layers.layer_output(states[-1])
    y_hat = _output_logits(top, p)
    finite = kernels.softmax_rows_with_bias(y_hat, p["b_y"].reshape(-1)) and kernels.all_finite(top)
    return states, y_hat, finite


def packed_backward_grads(d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity, between=None):
    grads = network_backward(
        d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity, between=between
    )
    return grads, all(kernels.all_finite(np.ascontiguousarray(g)) for g in grads.values())


def packed_loss_and_grads(
    inputs, a0, labels, p, num_layers, directions, batch_sizes, offsets, last_rows, *, batch_size, nonlinearity,
    empty=new_array, between=None,
):  # fmt: skip
    """As the reference's; every array it returns or uses is allocated through ``empty``
    (a workspace's: a step of one shape then allocates nothing after its first)."""
    if num_layers == 1 and directions == 1:  # e.g. variable lengths: one kernel call
        return _one_direction_loss_and_grads(
            inputs, a0, labels, p, batch_sizes, offsets, last_rows, batch_size, nonlinearity, empty
        )
    sequence_labels = labels.ndim == 2
    states = network_forward(
        inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity, empty, between
    )
    top = layers.network_top(states, last_rows, sequence_labels, empty)
    dlogits = _output_logits(top, p, empty)
    db_y = empty("db_y", p["b_y"].shape, p["b_y"].dtype)
    loss = kernels.cross_entropy_rows_with_bias(
        dlogits, p["b_y"].reshape(-1), np.ascontiguousarray(labels.reshape(-1)), db_y.reshape(-1), batch_size
    )
    d_top_read = empty("d_top_read", top.shape, top.dtype)
    kernels.matmul_into(dlogits, p["W_ya"], d_top_read)
    d_top = layers.scatter_top(d_top_read, states, last_rows, sequence_labels, empty)
    grads = {"dW_ya": empty("dW_ya", p["W_ya"].shape, p["W_ya"].dtype), "db_y": db_y}
    kernels.matmul_transposed_into(dlogits, top, grads["dW_ya"])
    # The final states, before the backward pass reuses the states' memory
    final = packing.final_states(states, last_rows, empty("final", a0.shape, a0.dtype))
    grads.update(
        network_backward(
            d_top,
            inputs,
            a0,
            states,
            p,
            batch_sizes,
            offsets,
            nonlinearity,
            d_top_is_scratch=True,
            states_are_scratch=True,
            empty=empty,
            between=between,
        )  # fmt: skip
    )
    finite = math.isfinite(loss) and all(kernels.all_finite(np.ascontiguousarray(g)) for g in grads.values())
    return loss, grads, final, finite


def _one_direction_loss_and_grads(
    inputs, a0, labels, p, batch_sizes, offsets, last_rows, batch_size, nonlinearity, empty=new_array
):
    """``packed_loss_and_grads`` of one layer in one direction: the whole step in one
    kernel (``numba_kernels.packed_loss_and_grads_kernel``), as the dense path has."""
    N, m = inputs.shape[0], last_rows.size
    n_x, n_a, n_y = p["W_ax"].shape[1], p["W_aa"].shape[0], p["b_y"].size
    dtype = p["W_aa"].dtype
    grads = {
        "d" + name: empty("d" + name, p[name].shape, dtype) for name in ("W_ax", "W_aa", "b_a", "W_ya", "b_y")
    }
    da0, final = empty("da0", (1, m, n_a), dtype), empty("final", (1, m, n_a), dtype)
    arrays = (
        labels.reshape(-1), labels.ndim == 2, last_rows, batch_size,
        p["W_ax"], p["W_aa"], p["b_a"], p["W_ya"], p["b_y"], a0[0], batch_sizes, offsets,
        empty("forward_scratch", (forward_scratch_size(p, m) + m * n_a,), dtype), empty("h", (N, n_a), dtype),
        final[0], empty("logits", (labels.size, n_y), dtype), empty("dz", (N, n_a), dtype), da0[0],
    )  # fmt: skip
    weight_grads = (grads["dW_aa"], grads["db_a"], grads["dW_ya"], grads["db_y"])
    relu = kernels.NONLINEARITY[nonlinearity]
    if inputs.ndim == 1:
        loss, finite = kernels.packed_loss_and_grads_onehot_kernel(
            inputs, *arrays, empty("dW_ax_T", (n_x, n_a), dtype), grads["dW_ax"], *weight_grads, relu
        )
    else:
        # The packed inputs are the engine's copy for this call: dx is written over them, after
        # their last read (as ``xs_is_scratch`` on the dense path).
        grads["dx"] = inputs
        loss, finite = kernels.packed_loss_and_grads_kernel(
            inputs, *arrays, grads["dx"], grads["dW_ax"], *weight_grads, relu
        )
    grads["da0"] = da0
    return loss, grads, final, finite


def packed_sequence_losses(
    inputs, a0, labels, p, num_layers, directions, batch_sizes, offsets, last_rows, nonlinearity
):
    sequence_labels = labels.ndim == 2
    states = network_forward(inputs, a0, p, num_layers, directions, batch_sizes, offsets, nonlinearity)
    top = np.ascontiguousarray(layers.network_top(states, last_rows, sequence_labels))
    logits = _output_logits(top, p)
    m = last_rows.size
    losses = np.empty(m, dtype=np.float64)
    if sequence_labels:  # one row per sequence: one "step" of m rows
        batch_sizes, offsets = np.array([m], dtype=np.intp), np.array([0, m], dtype=np.intp)
    finite = kernels.sequence_cross_entropy_rows_with_bias(
        logits, p["b_y"].reshape(-1), np.ascontiguousarray(labels.reshape(-1)), batch_sizes, offsets, losses
    )
    return losses, packing.final_states(states, last_rows), finite


# -- one step at a time: streaming and generation (numpy_backend's last section) -----------


def stream_step(inputs, previous, states, w, probabilities, nonlinearity, scratch):
    """``numpy_backend.stream_step`` in one kernel call; ``scratch`` (2, m, n_a) holds the
    layers' pre-activations and the recurrent products (the stream keeps it)."""
    step = kernels.stream_step_index_kernel if inputs.ndim == 1 else kernels.stream_step_dense_kernel
    out = np.empty((previous.shape[1], w.b_y.size), dtype=previous.dtype)
    bad, finite = step(
        inputs, previous, states, w.W_ax_T, w.W_ax_T_upper, w.W_aa_T, w.b_a, w.W_ya_T, w.b_y, scratch[0],
        scratch[1], out, probabilities, kernels.NONLINEARITY[nonlinearity],
    )  # fmt: skip
    return out, bad, finite


def generate(feed, running, states, w, uniforms, temperature, top_k, top_p, stop, nonlinearity):
    """``numpy_backend.generate``: every step of every stream in one kernel call."""
    feed, running = feed.copy(), running.copy()
    m, n_a = states.shape[1:]
    n_y = w.b_y.size
    symbols = np.zeros((m, uniforms.shape[0]), dtype=np.intp)
    lengths = np.zeros(m, dtype=np.intp)
    finite = kernels.generate_kernel(
        feed, running, states, w.W_ax_T, w.W_ax_T_upper, w.W_aa_T, w.b_a, w.W_ya_T, w.b_y, uniforms,
        float(temperature), int(top_k), float(top_p), int(stop), np.empty((m, n_a), states.dtype),
        np.empty((m, n_a), states.dtype), np.empty((m, n_y), states.dtype), np.empty(n_y), np.empty(n_y, np.intp),
        symbols, lengths, kernels.NONLINEARITY[nonlinearity],
    )  # fmt: skip
    return symbols, lengths, finite


if config.DISABLE_JIT:  # the kernels run as plain Python: NumPy warns where compiled code is silent
    forward, cell_forward, backward, loss_and_grads, sequence_losses = map(
        overflow_reported_by_the_engine, (forward, cell_forward, backward, loss_and_grads, sequence_losses)
    )
    packed_forward_outputs, packed_backward_grads, packed_loss_and_grads, packed_sequence_losses = map(
        overflow_reported_by_the_engine,
        (packed_forward_outputs, packed_backward_grads, packed_loss_and_grads, packed_sequence_losses),
    )
    stream_step, generate, checked_loss_and_grads, checked_sequence_losses = map(
        overflow_reported_by_the_engine,
        (stream_step, generate, checked_loss_and_grads, checked_sequence_losses),
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
        overflow_reported_by_the_engine, (sgd_update, adagrad_update, adam_update)
    )
