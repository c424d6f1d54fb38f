"""The engine: the one place a call is planned and run, on time-major arrays.

Every front door (the NumPy API in ``fastrnn.api``, in the seed's layout) checks its
arguments, hands the engine time-major views, and lays the results back out.  The engine
takes:

==========  ===================================  =========================================
name        shape                                meaning
==========  ===================================  =========================================
``inputs``  (T, m, n_x), or (T, m) intp          dense inputs, or one-hot indices
``a0``      (num_layers * D, m, n_a)             initial states, ``layer * D + direction``
``labels``  (T, m) intp, or (m,) intp            a class per step, or per sequence
``lengths`` None, or (m,) intp                   None: every sequence T steps long (the
                                                 doors pass lengths all T as None)
==========  ===================================  =========================================

views in any memory layout (the engine copies only what a kernel needs contiguous), and
returns time-major results: ``dx`` (T, m, n_x), ``da0`` and final states (num_layers * D,
m, n_a), outputs (T, m, ...), 0 at padding.  Arguments are trusted: the doors check them.

A call takes one of two paths (``planning.uses_packed_path``):

- ``dense``: one layer, one direction, full-length sequences; the seed's network, whose
  kernels run a whole step in one call;
- ``packed``: several layers, two directions or ``lengths``; packed rows
  (``fastrnn.packing``) through the backends' layer x direction loop, where a door may act
  between layers (``between_layers``: the PyTorch door's dropout; ``backends.layers``).

Both cut the batch into shards of whole sequences run by threads (``planning``,
``fastrnn.parallel``); both end in ``finish`` (non-finite results reported, results put in
a workspace); their caches (``caches``) carry what a backward pass needs.

``lean`` is the one entry that takes the door's arguments unchecked, in the seed's layout:
a small training step or loss of the seed's network, its checks in a kernel, before the
door checks anything (see there).
"""

from typing import NamedTuple

import numpy as np

from .. import packing, parallel
from . import caches, dense, finish, lean, packed
from .caches import ForwardCache, PackedCache, owned_params, read_only
from .planning import plan_call, plan_sizes, planned_sizes, uses_packed_path

__all__ = [
    "BackwardInputs",
    "ForwardCache",
    "PackedCache",
    "backward",
    "backward_inputs",
    "forward",
    "lean",
    "loss_and_grads",
    "losses",
    "plan_call",
    "plan_sizes",
    "planned_sizes",
    "uses_packed_path",
]


def loss_and_grads(
    impl, inputs, a0, labels, p, dims, *, workers=None, nonlinearity="tanh", lengths=None, workspace=None,
    return_state=False, between_layers=None, what="loss_and_grads",
):  # fmt: skip
    """A training step: ``(loss, grads, final)``.

    ``loss`` is in the params' dtype; ``grads`` holds ``"d" + key`` of every parameter,
    ``da0`` (num_layers * D, m, n_a) and, for dense inputs, ``dx`` (T, m, n_x); ``final``
    is (num_layers * D, m, n_a) with ``return_state``, else None.  (A plain tuple: the
    tiny step pays for every object made.)  ``what`` names the caller's function in a
    ``NonFiniteResultError``.  With a ``workspace``, the gradients are its views,
    overwritten by its next use.  ``between_layers``: what the door does between layers
    (``backends.layers``), for networks of several layers; such a step runs as one shard.
    """
    run, packed_path = plan_call(workers, inputs, dims, lengths, impl.NAME, "loss_and_grads")
    if packed_path:
        if between_layers is not None:
            run = _one_shard(run)
        loss, grads, final, finite = packed.loss_and_grads(
            impl, run, inputs, a0, labels, lengths, p, dims, nonlinearity, workspace, between_layers
        )
        loss = finish.finished_loss(loss, grads, finite, dims.dtype, what)
        if not impl.RESULTS_IN_WORKSPACE:  # the NumPy reference's gradients are its own
            grads = finish.into_workspace(grads, None if workspace is None else workspace.empty)
        return loss, grads, final if return_state else None
    step_labels = labels if labels.ndim == 2 else labels[None]  # (1, m): one class per sequence
    loss, grads, a_last, finite = dense.loss_and_grads(
        impl, run, workspace, inputs, a0[0], step_labels, p, dims, nonlinearity, return_state
    )
    loss = finish.finished_loss(loss, grads, finite, dims.dtype, what)
    grads["da0"] = grads["da0"][None]
    return loss, grads, a_last[None] if return_state else None


def losses(
    impl, inputs, a0, labels, p, dims, *, workers=None, nonlinearity="tanh", lengths=None, what="loss"
):
    """Each sequence's loss (m,) float64 (summed over its real steps) and the final
    states (num_layers * D, m, n_a): a forward pass that keeps nothing for a backward
    one."""
    run, packed_path = plan_call(workers, inputs, dims, lengths, impl.NAME, "loss")
    if packed_path:
        sequence_losses, final, finite = packed.losses(
            impl, run, inputs, a0, labels, lengths, p, dims, nonlinearity
        )
    else:
        step_labels = labels if labels.ndim == 2 else labels[None]
        sequence_losses, a_last, finite = dense.losses(
            impl, run, inputs, a0[0], step_labels, p, dims, nonlinearity
        )
        final = a_last[None]
    return finish.finished_losses(sequence_losses, finite, dims.dtype, what), final


def forward(
    impl, xs, a0, p, dims, *, workers=None, nonlinearity="tanh", lengths=None, state_shape="stacked",
    return_state=False, between_layers=None, what="rnn_forward",
):  # fmt: skip
    """The forward pass of dense inputs ``xs`` (T, m, n_x): ``(outputs, y_hat, cache,
    final)``, the top layer's states (T, m, D * n_a), the softmax outputs (T, m, n_y), a
    cache for ``backward`` that owns its arrays (``state_shape`` and ``workers`` are kept
    in it: ``caches``), and the final states (num_layers * D, m, n_a), None unless asked
    for (``return_state``).  (A plain tuple: the tiny call pays for every object made.)"""
    run, packed_path = plan_call(workers, xs, dims, lengths, impl.NAME, "rnn_forward")
    if packed_path:
        return _packed_forward(
            impl, run, xs, a0, p, dims, nonlinearity, lengths, state_shape, workers, return_state, between_layers,
            what,
        )  # fmt: skip
    xs_c = dense.contiguous(xs)
    h, y_hat, finite = dense.forward(impl, run, xs_c, a0[0], p, dims, nonlinearity)
    if not finite:
        finish.report_non_finite({"a": h, "y_hat": y_hat}, dims.dtype, what)
    if xs_c is xs:  # the time-major layout was the caller's x itself
        xs_c = xs_c.copy()
    cache = ForwardCache(
        read_only(xs_c), read_only(h), owned_params(p), impl.NAME, nonlinearity, state_shape, workers
    )
    return cache.h[1:], y_hat, cache, h[-1][None].copy() if return_state else None


def _packed_forward(
    impl,
    run,
    xs,
    a0,
    p,
    dims,
    nonlinearity,
    lengths,
    state_shape,
    workers,
    return_state,
    between_layers,
    what,
):
    pk, inputs, a0_rows, states, top, y_hat, finite = packed.forward(
        impl, run, xs, a0, lengths, p, dims, nonlinearity, between_layers
    )
    if not finite:
        finish.report_non_finite({"a": top, "y_hat": y_hat}, dims.dtype, what)
    # The cache owns its arrays: none may be the caller's (a0's sorted rows can be a0 itself).
    inputs, a0_rows = (array.copy() if np.may_share_memory(array, xs) or np.may_share_memory(array, a0) else array
                       for array in (inputs, a0_rows))  # fmt: skip
    cache = PackedCache(
        read_only(inputs), tuple(read_only(H) for layer in states for H in layer), read_only(a0_rows),
        None if lengths is None else read_only(lengths.copy()), xs.shape[0], owned_params(p), impl.NAME,
        nonlinearity, state_shape, workers, between_layers,
    )  # fmt: skip
    final = packing.unsort_rows(packing.final_states(states, pk.last_rows), pk) if return_state else None
    return packing.unpack(top, pk), packing.unpack(y_hat, pk), cache, final


def _one_shard(run):
    """``run`` on one shard, the threads it would have used given to BLAS."""
    blas_threads = None if run.blas_threads is None else run.threads * run.blas_threads
    return parallel.Plan(1, 1, blas_threads)


class BackwardInputs(NamedTuple):
    """A cache, checked (``backward_inputs``): what ``backward`` runs on, and the sizes a
    door checks the output gradient against (``d_states`` (T, m, D * n_a))."""

    cache: object
    impl: object
    p: dict
    dims: object
    T: int
    m: int
    lengths: object  # None, or (m,) intp
    arrays: tuple  # dense: (xs, h); packed: (packing, inputs, a0, states)


def backward_inputs(cache):
    """``cache`` (from ``forward``) checked against its params, array by array, before any
    kernel reads it: a ``BackwardInputs``.  A ``TypeError`` for anything but a cache."""
    if isinstance(cache, PackedCache):
        impl, p, dims, lengths, pk, inputs, a0, states = caches.checked_packed_cache(cache)
        return BackwardInputs(cache, impl, p, dims, cache.T, a0.shape[1], lengths, (pk, inputs, a0, states))
    if not isinstance(cache, ForwardCache):
        raise TypeError(f"cache must be the ForwardCache returned by rnn_forward, got {type(cache).__name__}")
    impl, p, dims, xs, h = caches.checked_dense_cache(cache)
    return BackwardInputs(cache, impl, p, dims, xs.shape[0], xs.shape[1], None, (xs, h))


def backward(checked, d_states, what="rnn_backward"):
    """Backpropagation through time for ``d_states`` (T, m, D * n_a), dL/d(the top layer's
    states) from outside the recurrence, on a checked cache (``backward_inputs``).

    Returns the gradients: ``dx`` (T, m, n_x), ``da0`` (num_layers * D, m, n_a) and
    ``"d" + key`` of every hidden-layer parameter.
    """
    impl, p, dims, cache = checked.impl, checked.p, checked.dims, checked.cache
    if isinstance(cache, PackedCache):
        pk, inputs, a0, states = checked.arrays
        run = plan_sizes(
            cache.workers, checked.T, checked.m, dims.n_x, dims, checked.lengths, impl.NAME, "rnn_forward"
        )
        states = [states[k : k + dims.directions] for k in range(0, len(states), dims.directions)]
        grads, finite = packed.backward(
            impl, run, d_states, pk, inputs, a0, states, p, cache.nonlinearity, cache.between_layers
        )
    else:
        xs, h = checked.arrays
        run = plan_call(cache.workers, xs, dims, None, impl.NAME, "rnn_forward")[0]
        grads, finite = dense.backward(impl, run, d_states, xs, h, p, dims, cache.nonlinearity)
        grads["da0"] = grads["da0"][None]
    if not finite:
        finish.report_non_finite(grads, dims.dtype, what)
    return grads
