"""The dense path: one layer, one direction, every sequence full length (the seed's network).

Its backends' kernels take the time-major arrays of ``numpy_backend`` as they are (``xs``
(T, m, n_x), ``h`` (T + 1, m, n_a), ...), and run a whole training step, forward pass or
backward pass each in one call.  With several shards (``parallel.plan``), the batch is cut
into shards of whole sequences, each run by one thread, and the weight gradients are added
in shard order.

Every function takes time-major views in any memory layout, and makes what a kernel reads
C-contiguous (a copy only where a view is not).  States are (m, n_a) rows here; the
engine's entry points (``fastrnn.engine``) stack them as (1, m, n_a).
"""

import numpy as np

from .. import parallel
from ..params import gradient_names
from ..workspace import new_array
from . import finish

WEIGHT_GRADIENTS = gradient_names(1, 1)


def contiguous(view, empty=new_array, name=None):
    """``view`` itself when C-contiguous, else a copy in ``empty(name, shape, dtype)``."""
    if view.flags.c_contiguous:
        return view
    out = empty(name, view.shape, view.dtype)
    np.copyto(out, view)
    return out


def shard_loss_and_grads(
    impl, empty, inputs, a0_rows, labels, p, batch_size, nonlinearity, inputs_are_scratch
):
    """One backend's training step on a batch or a shard of one.

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
        One class per step, or per sequence.
    batch_size : int
        The whole batch's ``m``, which the loss is averaged over (a shard's share of it).
    inputs_are_scratch : bool
        ``inputs`` is a copy made for this call, which ``dx`` may overwrite.

    Returns
    -------
    loss, grads, a_last, finite
        As the backends' ``loss_and_grads``; ``grads`` in the time-major layout.
    """
    inputs = contiguous(inputs, empty, "x_index" if inputs.ndim == 2 else "xs")
    labels = contiguous(labels, empty, "labels")
    loss, grads, a_last, finite = impl.loss_and_grads(
        inputs, a0_rows, labels, p, empty=empty, xs_is_scratch=inputs_are_scratch, batch_size=batch_size,
        nonlinearity=nonlinearity,
    )  # fmt: skip
    if empty is not new_array and not impl.RESULTS_IN_WORKSPACE:
        # A workspace holds the results whatever the backend: this layer puts them there.
        grads = finish.into_workspace(grads, empty)
    return loss, grads, a_last, finite


def _step_inputs(inputs, rows, empty):
    """A shard's inputs, and whether ``dx`` may be written over them: dense ``xs`` are
    copied time-major into ``empty``'s memory (unless already so, when they are the
    caller's: never written over); one-hot indices are made contiguous later."""
    if inputs.ndim == 2:
        return inputs[:, rows], False
    view = inputs[:, rows]
    shard = contiguous(view, empty, "xs")
    return shard, shard is not view  # a copy made here, never the caller's memory


def loss_and_grads(impl, run, workspace, inputs, a0_rows, labels, p, dims, nonlinearity, return_state):
    """A training step of the dense path.

    Parameters
    ----------
    run : parallel.Plan
    workspace : Workspace or None
    inputs : ndarray
        ``xs`` (T, m, n_x) or one-hot ``x_index`` (T, m), time-major views.
    a0_rows : ndarray, shape (m, n_a)
    labels : ndarray of intp, shape (T, m) or (1, m)

    Returns
    -------
    loss : float
        Accumulated in float64.
    grads : dict
        Weight gradients, ``da0`` (m, n_a) and, for dense inputs, ``dx`` (T, m, n_x).
    a_last : ndarray, shape (m, n_a), or None without ``return_state``
    finite : bool
    """
    m = inputs.shape[1]
    empty = new_array if workspace is None else workspace.empty
    if run.shards == 1:  # the common case, inline: a tiny step pays for every call made
        shard_inputs = inputs if inputs.ndim == 2 else contiguous(inputs, empty, "xs")
        scratch = shard_inputs is not inputs  # a copy made here, never the caller's memory
        return parallel.call_with_blas_threads(
            run.blas_threads, shard_loss_and_grads, impl, empty, shard_inputs, a0_rows, labels, p, m, nonlinearity,
            scratch,
        )  # fmt: skip
    return _sharded_loss_and_grads(
        impl, run, workspace, inputs, a0_rows, labels, p, dims, nonlinearity, return_state
    )


def _sharded_loss_and_grads(
    impl, run, workspace, inputs, a0_rows, labels, p, dims, nonlinearity, return_state
):
    """``loss_and_grads`` cut into ``run.shards`` shards of whole sequences, run on
    ``run.threads`` threads.

    Each shard computes its share of the whole batch's loss and gradients
    (``batch_size=m``), in arrays of its own (a ``Workspace.shard``, or new ones), except
    ``da0``, whose rows it writes in place.  ``dx`` and the last states are copied into
    their rows of the whole batch's arrays by the shard's own thread; the weight gradients
    are added in shard order (``parallel.sum_in_order``).
    """
    dense = inputs.ndim == 3
    T, m = inputs.shape[:2]
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
        shard_inputs, scratch = _step_inputs(inputs, rows, allocators[k])
        loss, grads, h_last, finite = shard_loss_and_grads(
            impl, allocators[k], shard_inputs, a0_rows[rows], labels[:, rows], p, m, nonlinearity, scratch
        )
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
    finite = finish.summed_in_shard_order_finite((part[2] for part in parts), grads, WEIGHT_GRADIENTS)
    return loss, grads, a_last, finite


def forward(impl, run, inputs, a0_rows, p, dims, nonlinearity):
    """The dense path's forward pass: ``h`` (T + 1, m, n_a), ``y_hat`` (T, m, n_y), and
    whether both are finite.  ``inputs`` is a C-contiguous ``xs`` (T, m, n_x)."""
    with parallel.blas_threads(run.blas_threads):
        if run.shards == 1:
            return impl.forward(inputs, a0_rows, p, nonlinearity)  # the backends copy a0 into h[0]
        return _sharded_forward(impl, run, inputs, a0_rows, p, dims, nonlinearity)


def _sharded_forward(impl, run, xs, a0_rows, p, dims, nonlinearity):
    """``impl.forward`` shard by shard, each shard's states and outputs copied into its rows
    of the whole batch's ``h`` and ``y_hat``."""
    T, m, _ = xs.shape
    h = np.empty((T + 1, m, dims.n_a), dtype=dims.dtype)
    y_hat = np.empty((T, m, dims.n_y), dtype=dims.dtype)
    shards = parallel.split_batch(m, run.shards)

    def forward_shard(k):
        rows = shards[k]
        h_k, y_hat_k, finite = impl.forward(np.ascontiguousarray(xs[:, rows]), a0_rows[rows], p, nonlinearity)
        h[:, rows] = h_k
        y_hat[:, rows] = y_hat_k
        return finite

    finite = all(parallel.run_shards(forward_shard, run.shards, run.threads))
    return h, y_hat, finite


def backward(impl, run, d_states, xs, h, p, dims, nonlinearity):
    """BPTT of the dense path for ``d_states`` (T, m, n_a) from outside the recurrence,
    on the forward pass's plan ``run``: the gradients (``dx`` (T, m, n_x), ``da0`` (m,
    n_a), the hidden layer's) and whether all are finite.

    With several shards, each shard's rows of ``dx`` and ``da0`` are copied into the whole
    batch's arrays by its own thread, and the weight gradients are added in shard order.
    The forward pass and its backward pass on one plan: threads of one kind, never
    fastrnn's shard threads and the BLAS library's own taking turns on the same cores
    (docs/guide.md, "Every core").
    """
    with parallel.blas_threads(run.blas_threads):
        if run.shards == 1:
            return impl.backward(contiguous(d_states), xs, h, p, nonlinearity)
        return _sharded_backward(impl, run, d_states, xs, h, p, dims, nonlinearity)


def _sharded_backward(impl, run, d_states, xs, h, p, dims, nonlinearity):
    T, m = xs.shape[:2]
    shards = parallel.split_batch(m, run.shards)
    dx = np.empty((T, m, dims.n_x), dtype=dims.dtype)
    da0 = np.empty((m, dims.n_a), dtype=dims.dtype)

    def backward_shard(k):
        rows = shards[k]
        grads, finite = impl.backward(
            np.ascontiguousarray(d_states[:, rows]), np.ascontiguousarray(xs[:, rows]),
            np.ascontiguousarray(h[:, rows]), p, nonlinearity,
        )  # fmt: skip
        dx[:, rows] = grads.pop("dx")
        da0[rows] = grads.pop("da0")
        return grads, finite

    parts = parallel.run_shards(backward_shard, run.shards, run.threads)
    names = gradient_names(1, 1)[:3]  # the hidden layer's: dW_ax, dW_aa, db_a
    grads = parallel.sum_in_order([part[0] for part in parts], names)
    grads["dx"], grads["da0"] = dx, da0
    return grads, finish.summed_in_shard_order_finite((part[1] for part in parts), grads, names)


def losses(impl, run, inputs, a0_rows, labels, p, dims, nonlinearity):
    """Each sequence's loss and last state, shard by shard (``run``), without gradients.

    ``inputs`` is a time-major view, ``xs`` (T, m, n_x) or ``x_index`` (T, m), copied here
    to be contiguous per shard; ``a0_rows`` is (m, n_a), ``labels`` (T, m) or (1, m).
    Returns ``losses`` (m,) float64, ``a_last`` (m, n_a) and whether every loss is finite.
    """
    m = inputs.shape[1]
    shards = parallel.split_batch(m, run.shards)
    sequence_losses = np.empty(m, dtype=np.float64)
    a_last = np.empty((m, dims.n_a), dtype=dims.dtype)

    def run_shard(k):
        rows = shards[k]
        shard_losses, h_last, finite = impl.sequence_losses(
            np.ascontiguousarray(inputs[:, rows]), a0_rows[rows], np.ascontiguousarray(labels[:, rows]), p,
            nonlinearity,
        )  # fmt: skip
        sequence_losses[rows] = shard_losses
        a_last[rows] = h_last
        return finite

    with parallel.blas_threads(run.blas_threads):
        finite = all(parallel.run_shards(run_shard, run.shards, run.threads))
    return sequence_losses, a_last, finite
