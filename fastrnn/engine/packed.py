"""The packed path: several layers, two directions, or sequences of their own lengths.

The batch is packed (``fastrnn.packing``): sorted by length, one row per real step, so that
padding is never stored nor read.  A call is cut into shards of whole sequences (balanced
by their lengths), each packed by its own thread, run by a backend's ``packed_*``
functions (the layer x direction loop of ``backends.layers``), and unpacked into the
whole batch's arrays; the weight gradients are added in shard order.

Every function takes time-major views: dense inputs ``xs`` (T, m, n_x) or one-hot indices
(T, m); states (num_layers * D, m, n_a); labels (T, m) per step or (m,) per sequence.
Results are time-major too, and 0 at padding.
"""

import numpy as np

from .. import packing, parallel
from ..params import gradient_names
from ..validation import all_finite, check_finite_steps
from ..workspace import new_array
from . import finish


def _caller_sequences(pk, rows, empty=new_array):
    """The caller's index of each packed row's sequence, for a shard ``rows`` of the batch
    (a slice, or the sequences' indices)."""
    out = empty("packing.caller_sequences", pk.sequences.shape, pk.sequences.dtype)
    if isinstance(rows, slice):
        return np.add(pk.sequences, rows.start or 0, out=out)
    return np.take(rows, pk.sequences, out=out, mode="clip")  # clip: unbuffered (valid indices)


def _packed_call_inputs(impl, inputs, a0, lengths, rows=slice(None), empty=new_array):
    """The packing of a call's sequences ``rows`` (a shard: a slice or indices; or all),
    their packed inputs and sorted ``a0`` rows, in ``empty``'s memory.

    ``inputs`` is the whole batch's (T, m, n_x) or (T, m); ``a0`` (num_layers * D, m_k,
    n_a) and ``lengths`` (m_k,) are the shard's.  Returns ``(packing, sequences,
    packed_inputs, a0_rows)``: the caller's sequence of each packed row (N,), (N, n_x) or
    (N,), and (num_layers * D, m_k, n_a), C-contiguous.
    """
    m_k, T = a0.shape[1], inputs.shape[0]
    pk = impl.make_packing(lengths, m_k, T, empty)
    sequences = _caller_sequences(pk, rows, empty)
    if inputs.ndim == 3:  # the backend gathers the rows (a kernel in Numba's)
        packed = impl.pack_rows(
            inputs, sequences, pk.steps, empty("packed_inputs", (pk.N, inputs.shape[2]), inputs.dtype)
        )
        if lengths is not None and not all_finite(packed):  # without lengths x was checked whole
            ids = np.arange(inputs.shape[1])[rows]
            check_finite_steps(inputs[:, ids], lengths, "x", ids)
    else:  # one-hot indices, gathered as one-feature rows
        out = empty("packed_inputs", (pk.N, 1), inputs.dtype)
        packed = impl.pack_rows(inputs[..., None], sequences, pk.steps, out).reshape(-1)
    a0_rows = packing.sort_rows(
        a0, pk, empty("a0_rows", a0.shape, a0.dtype), empty("a0_copy", a0.shape, a0.dtype)
    )
    return pk, sequences, packed, a0_rows


def _packed_labels(labels, rows, pk, sequences, impl, empty=new_array):
    """A shard's labels as the backends' network functions take them, from the whole
    batch's ``labels``: (N,) one per packed row, or (1, m_k) one per sorted sequence."""
    if labels.ndim == 1:
        out = empty("labels", (1, pk.m), labels.dtype)
        np.take(labels[rows], pk.order, out=out[0], mode="clip")  # clip: unbuffered (valid order)
        return out
    out = empty("labels", (pk.N, 1), labels.dtype)
    return impl.pack_rows(labels[..., None], sequences, pk.steps, out).reshape(-1)


def _shards(run, m, lengths):
    """The shards of a call: whole sequences, balanced by their lengths.

    With ``lengths``, the sorted batch is cut into ranges (as indices of the caller's
    sequences): the longest sequences in one shard, the shortest in another, rather than
    a mix of lengths in each.  Each shard then runs only as many steps as its own longest
    sequence, with more sequences per step: fewer steps in all, whose fixed costs (a product
    and a pass over the running rows each) no longer add up in every shard."""
    if lengths is None or run.shards == 1:
        return parallel.split_batch(m, run.shards)
    order = np.argsort(-lengths, kind="stable")
    return tuple(order[rows] for rows in parallel.split_batch(m, run.shards, lengths[order]))


def _gathered(parts, shards, shape, dtype):
    """Per-shard arrays whose axis 1 (or only axis) runs over a shard's sequences, put
    together (``shape``, the whole batch's) in the caller's order."""
    out = np.empty(shape, dtype=dtype)
    for part, rows in zip(parts, shards):
        if out.ndim == 1:
            out[rows] = part
        else:
            out[:, rows] = part
    return out


def _shard_of(array, rows):
    return None if array is None else array[rows]


def loss_and_grads(
    impl, run, inputs, a0, labels, lengths, p, dims, nonlinearity, workspace=None, between=None
):
    """A training step of the packed path on the whole batch.

    With a ``workspace`` every array of the step lives there (each shard's in a
    ``Workspace.shard`` of its own), so that on the Numba backend a step of one shape
    allocates nothing after its first; the results are its views.  ``between``: what the
    door does between layers (``backends.layers``; the caller runs it on one shard).

    Returns
    -------
    loss : float
    grads : dict
        ``"d" + key`` of every parameter, ``da0`` (num_layers * D, m, n_a) and, for dense
        inputs, ``dx`` (T, m, n_x), 0 at padding.
    final : ndarray, shape (num_layers * D, m, n_a)
    finite : bool
    """
    T, m = inputs.shape[:2]
    empty = new_array if workspace is None else workspace.empty
    # dx of dense inputs: each shard writes its real steps; padding stays 0.
    dx = None
    if inputs.ndim == 3:
        dx = empty("dx", (T, m, dims.n_x), dims.dtype)
        dx[...] = 0
    shards = _shards(run, m, lengths)
    shape = (a0.shape[0], m, dims.n_a)
    da0, final = empty("da0", shape, dims.dtype), empty("final", shape, dims.dtype)

    def run_shard(k):  # each thread packs and unpacks its own shard, overlapping the others' kernels
        rows = shards[k]
        own = new_array if workspace is None else workspace.shard(k).empty
        pk, sequences, packed, a0_rows = _packed_call_inputs(
            impl, inputs, a0[:, rows], _shard_of(lengths, rows), rows, own
        )
        loss, grads, shard_final, finite = impl.packed_loss_and_grads(
            packed, a0_rows, _packed_labels(labels, rows, pk, sequences, impl, own), p, dims.num_layers,
            dims.directions, pk.batch_sizes, pk.offsets, pk.last_rows, batch_size=m, nonlinearity=nonlinearity,
            empty=own, between=between,
        )  # fmt: skip
        if "dx" in grads:
            impl.unpack_rows(grads.pop("dx"), sequences, pk.steps, dx)
        _unsort_into(grads.pop("da0"), pk, da0, rows, own)
        _unsort_into(shard_final, pk, final, rows, own)
        return loss, grads, finite

    parts = parallel.call_with_blas_threads(
        run.blas_threads, parallel.run_shards, run_shard, run.shards, run.threads
    )
    names = gradient_names(dims.num_layers, dims.directions)
    grads = parallel.sum_in_order([part[1] for part in parts], names)
    grads["da0"] = da0
    if dx is not None:
        grads["dx"] = dx
    loss = sum(part[0] for part in parts)  # in shard order
    finite = finish.summed_in_shard_order_finite((part[2] for part in parts), grads, names)
    return loss, grads, final, finite


def _unsort_into(sorted_rows, pk, out, rows, empty):
    """A shard's per-sequence array (num_layers * D, m_k, n_a), in the packing's sorted
    order, into its sequences ``rows`` of the whole batch's ``out``."""
    if isinstance(rows, slice) and (rows.start or 0) == 0 and rows.stop in (None, out.shape[1]):
        packing.unsort_rows(sorted_rows, pk, out)  # the whole batch: straight into out
    else:
        out[:, rows] = packing.unsort_rows(
            sorted_rows, pk, empty("unsorted", sorted_rows.shape, sorted_rows.dtype)
        )


def losses(impl, run, inputs, a0, labels, lengths, p, dims, nonlinearity):
    """Each sequence's loss (m,) float64 in the caller's order, the final states
    (num_layers * D, m, n_a) and whether every loss is finite, shard by shard."""
    m = inputs.shape[1]
    shards = _shards(run, m, lengths)

    def run_shard(k):
        rows = shards[k]
        pk, sequences, packed, a0_rows = _packed_call_inputs(
            impl, inputs, a0[:, rows], _shard_of(lengths, rows), rows
        )
        sorted_losses, final, finite = impl.packed_sequence_losses(
            packed, a0_rows, _packed_labels(labels, rows, pk, sequences, impl), p, dims.num_layers, dims.directions,
            pk.batch_sizes, pk.offsets, pk.last_rows, nonlinearity,
        )  # fmt: skip
        shard_losses = np.empty_like(sorted_losses)
        shard_losses[pk.order] = sorted_losses
        return shard_losses, packing.unsort_rows(final, pk), finite

    with parallel.blas_threads(run.blas_threads):
        parts = parallel.run_shards(run_shard, run.shards, run.threads)
    sequence_losses = _gathered([part[0] for part in parts], shards, (m,), np.float64)
    final = _gathered([part[1] for part in parts], shards, (a0.shape[0], m, dims.n_a), dims.dtype)
    return sequence_losses, final, all(part[2] for part in parts)


def forward(impl, run, inputs, a0, lengths, p, dims, nonlinearity, between=None):
    """The packed path's forward pass, on one shard (the threads a sharded plan would use
    go to BLAS).

    Returns
    -------
    packing : fastrnn.packing.Packing
    packed : ndarray
        The packed inputs (N, n_x) or (N,).
    a0_rows : ndarray, shape (num_layers * D, m, n_a)
        In the packing's sorted order.
    states : list of lists of ndarray
        ``states[layer][direction]`` (N, n_a).
    top : ndarray, shape (N, D * n_a)
    y_hat : ndarray, shape (N, n_y)
    finite : bool
    """
    pk, _, packed, a0_rows = _packed_call_inputs(impl, inputs, a0, lengths)
    blas_threads = None if run.blas_threads is None else run.threads * run.blas_threads
    with parallel.blas_threads(blas_threads):
        states, y_hat, finite = impl.packed_forward_outputs(
            packed,
            a0_rows,
            p,
            dims.num_layers,
            dims.directions,
            pk.batch_sizes,
            pk.offsets,
            nonlinearity,
            between,
        )
    top = np.concatenate(states[-1], axis=1) if dims.directions == 2 else states[-1][0]
    return pk, packed, a0_rows, states, top, y_hat, finite


def backward(impl, run, d_top, pk, inputs, a0, states, p, nonlinearity, between=None):
    """The packed path's backward pass for ``d_top`` (T, m, D * n_a) from outside the
    recurrences (its padding never read), on one shard with the BLAS threads of the
    forward pass's plan ``run``: the gradients, ``dx`` (T, m, n_x) and ``da0``
    (num_layers * D, m, n_a) in the caller's order, and whether all are finite."""
    blas_threads = None if run.blas_threads is None else run.threads * run.blas_threads
    with parallel.blas_threads(blas_threads):
        grads, finite = impl.packed_backward_grads(
            packing.pack(d_top, pk), inputs, a0, states, p, pk.batch_sizes, pk.offsets, nonlinearity, between
        )
    grads["dx"] = packing.unpack(grads["dx"], pk)
    grads["da0"] = packing.unsort_rows(grads["da0"], pk)
    return grads, finite
