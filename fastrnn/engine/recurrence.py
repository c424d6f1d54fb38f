"""The recurrence alone, on packed rows: the engine's entry for a door that keeps its own
output layer (the PyTorch door, ``fastrnn.torch``).

PyTorch's ``PackedSequence`` is fastrnn's packed layout (``fastrnn.packing``): rows sorted by
length, step by step, ``batch_sizes`` sequences at step t.  And a batch of full-length
sequences, time-major (T, m, n) and C-contiguous, is already its packed rows (T * m, n).
So this path takes packed rows as they come, without packing or sorting anything: no
output layer, no loss, no finiteness checks (PyTorch propagates NaN; so does this).

``inputs`` (N, n_x) and ``a0`` (num_layers * D, m, n_a) (in the packing's sorted order)
are C-contiguous; ``p`` holds the hidden layers' params (``params.layer_key``);
``rows`` (``packing.Rows``) describes the packed rows: its ``batch_sizes`` (T_run,) are
checked by the door (non-increasing, from ``m``, summing to N), as the kernels trust them.
Every layer and direction runs through the backends' shared layer loop
(``backends.layers``), by the backend's direction functions or by ``ops``, the same
functions with a door's own matrix products (``numba_backend.direction_ops``).

``forward`` and ``backward`` run a call on its plan (``plan``).  One shard runs on the
calling thread (``forward_rows``, ``backward_rows``), its BLAS calls on the plan's BLAS
threads.  Several shards: the sorted sequences are cut into shards (balanced by their
lengths), each shard's rows gathered into packed rows of its own and run by a thread of
fastrnn's pool with one BLAS thread, the results scattered back and the weight gradients
added in shard order (deterministic: the plan decides the bits).  A call with a
``between`` runs as one shard, as the engine's other paths do.
"""

import functools

import numpy as np

from .. import packing, parallel
from ..backends import layers
from ..params import gradient_names
from ..workspace import new_array


def plan(workers, m, N, n_x, n_a, num_layers, directions, backend):
    """The ``parallel.Plan`` of a call on packed rows.

    ``workers`` None: the calling thread alone, its BLAS calls on one thread (None, left as
    set, where every product is too small for BLAS threads anyway).  An int: that many
    shards (``parallel.plan``'s rules), each with one BLAS thread.

    Why one thread by default: this path serves the PyTorch door, whose caller runs
    PyTorch's operators between its calls, and PyTorch's OpenMP threads keep spinning after
    each of them.  Any thread of fastrnn's then competes with them for the cores: at the
    char-rnn size a PyTorch training step took 6.0 ms with this plan, 9.0 ms with two
    shards and 8.0 ms with one shard on two BLAS threads (inference: 1.7, 2.2 and 8.0 ms),
    and nothing was faster at any size measured (docs/pytorch.md, "Threads").
    """
    if workers is None:
        largest_product = N * n_a * max(n_x, directions * n_a)
        return parallel.Plan(1, 1, None if largest_product < parallel.BLAS_SINGLE_THREAD_MULTIPLY_ADDS else 1)
    steps = max(1, N // max(m, 1)) * num_layers * directions
    run = parallel.plan(workers, m, steps, n_x, n_a, 0, backend)
    return run if run.shards > 1 or run.blas_threads is None else parallel.Plan(1, 1, 1)


def forward(
    impl, run, inputs, a0, p, num_layers, directions, rows, nonlinearity, between=None, ops=None,
    empty=new_array, side_by_side=None,
):  # fmt: skip
    """``forward_rows`` on the plan ``run`` (see the module): ``(output, final, lower)``.
    ``side_by_side``: for one shard, as ``forward_rows``'s (shards ignore it)."""
    if run.shards == 1 or between is not None:
        return forward_rows(
            impl, inputs, a0, p, num_layers, directions, rows, nonlinearity, _one_shard_blas(run), between,
            ops=ops, empty=empty, side_by_side=side_by_side,
        )  # fmt: skip
    N, m, n_a = inputs.shape[0], a0.shape[1], a0.shape[2]
    output = np.empty((N, directions * n_a), dtype=a0.dtype)
    final = np.empty_like(a0)
    lower = np.empty(((num_layers - 1) * directions, N, n_a), dtype=a0.dtype)
    shards = _shards(run, rows, m)

    def run_shard(k):
        sequences, own_rows, taken = shards[k]
        out_k, final_k, lower_k = forward_rows(
            impl, inputs[taken], np.ascontiguousarray(a0[:, sequences]), p, num_layers, directions, own_rows,
            nonlinearity, ops=ops, empty=empty,
        )  # fmt: skip
        output[taken], final[:, sequences], lower[:, taken] = out_k, final_k, lower_k

    with parallel.blas_threads(run.blas_threads):
        parallel.run_shards(run_shard, run.shards, run.threads)
    return output, final, lower


def backward(
    impl, run, d_output, d_final, inputs, a0, output, lower, p, rows, nonlinearity, between=None, ops=None,
    empty=new_array, input_gradient=True, side_by_side=None,
):  # fmt: skip
    """``backward_rows`` on the plan ``run`` of its forward pass (see the module);
    ``side_by_side`` as in ``forward``."""
    if run.shards == 1 or between is not None:
        return backward_rows(
            impl, d_output, d_final, inputs, a0, output, lower, p, rows, nonlinearity, _one_shard_blas(run),
            between, ops, empty, input_gradient, side_by_side,
        )  # fmt: skip
    directions = output.shape[1] // a0.shape[2]
    num_layers = a0.shape[0] // directions
    m = a0.shape[1]
    dx = np.empty_like(inputs) if input_gradient else None
    da0 = np.empty_like(a0)
    shards = _shards(run, rows, m)

    def run_shard(k):
        sequences, own_rows, taken = shards[k]
        grads = backward_rows(
            impl, None if d_output is None else d_output[taken],
            None if d_final is None else np.ascontiguousarray(d_final[:, sequences]), inputs[taken],
            # (np.take: lower[:, taken] of 3 layers or more would be strided, rows (L - 1) * D * n_a apart)
            np.ascontiguousarray(a0[:, sequences]), output[taken], np.take(lower, taken, axis=1), p, own_rows,
            nonlinearity, ops=ops, empty=empty, input_gradient=input_gradient,
        )  # fmt: skip
        da0[:, sequences] = grads.pop("da0")
        if dx is not None:
            dx[taken] = grads.pop("dx")
        return grads

    with parallel.blas_threads(run.blas_threads):
        parts = parallel.run_shards(run_shard, run.shards, run.threads)
    grads = parallel.sum_in_order(parts, gradient_names(num_layers, directions)[:-2])  # no output layer
    grads["da0"] = da0
    if dx is not None:
        grads["dx"] = dx
    return grads


def _one_shard_blas(run):
    """A one-shard call's BLAS threads: the plan's, or its shard threads' where a
    ``between`` made it one shard."""
    if run.shards == 1 or run.blas_threads is None:
        return run.blas_threads
    return run.threads * run.blas_threads


def _shards(run, rows, m):
    """Each shard's ``(sequences, own_rows, taken)``: its slice of the sorted sequences,
    balanced by their lengths, its packed rows as a ``packing.Rows`` of their own, and which
    rows of the whole call they are (``packing.shard_rows``)."""
    lengths = packing.sorted_lengths_of(rows.batch_sizes, m)
    return [
        (sequences, *packing.shard_rows(rows, sequences.start, sequences.stop))
        for sequences in parallel.split_batch(m, run.shards, lengths)
    ]


class RowsAllocator:
    """``empty(name, shape, dtype)`` for the layer loop (``backends.layers``) that puts the
    top layer's output straight into ``output`` (N, D * n_a) and every lower layer's states
    into ``lower[layer * D + direction]`` (N, n_a): the arrays a door returns, written by
    the kernels, not copied there.  (The Numba backend computes a direction's states in its
    input projection's memory, ``"z" + tag``; the NumPy reference allocates its own, which
    ``forward_rows`` copies.)  Every other array comes from ``empty``."""

    def __init__(self, output, lower, num_layers, directions, empty=new_array):
        self.named = {
            name: output if index is None else lower[index]
            for name, index in _rows_names(num_layers, directions)
        }
        self.empty = empty

    def __call__(self, name, shape, dtype):
        array = self.named.get(name)
        if array is not None and array.shape == shape and array.dtype == dtype:
            return array
        return self.empty(name, shape, dtype)


@functools.lru_cache(maxsize=64)
def _rows_names(num_layers, directions):
    """``RowsAllocator``'s names, each with its index in ``lower`` (None: ``output``)."""
    names = [(f"output_l{num_layers - 1}", None)]
    for layer_directions in layers.network_directions(num_layers, directions):
        for d in layer_directions:
            if d.layer < num_layers - 1:
                names.append(("z" + d.tag, d.layer * directions + d.direction))
            elif directions == 1:
                names.append(("z" + d.tag, None))
    return tuple(names)


def forward_rows(impl, inputs, a0, p, num_layers, directions, rows, nonlinearity, blas_threads=None,
                 between=None, ops=None, empty=new_array, side_by_side=None):  # fmt: skip
    """Every layer and direction over packed rows, by ``ops`` (a ``layers.DirectionOps``;
    None: the backend's own, ``impl.DIRECTION_OPS``).  ``empty``: the allocator of the
    arrays the call drops (a lower layer's output as the next layer reads it), as in
    ``backward_rows``; ``side_by_side``: what runs a layer's two directions at once
    (``layers.network_forward``), or None.

    Returns
    -------
    output, final, lower
        The top layer's output (N, D * n_a); the final states (num_layers * D, m, n_a),
        in the sorted order (``packing.final_states``); the lower layers' states.
    """
    ops = ops or impl.DIRECTION_OPS
    if num_layers == 1 and directions == 1 and between is None:
        with parallel.blas_threads(blas_threads):
            return one_direction_forward(ops, inputs, a0, p, rows, nonlinearity)
    N, n_a = inputs.shape[0], a0.shape[2]
    output = np.empty((N, directions * n_a), dtype=a0.dtype)
    lower = np.empty(((num_layers - 1) * directions, N, n_a), dtype=a0.dtype)
    empty = RowsAllocator(output, lower, num_layers, directions, empty)
    with parallel.blas_threads(blas_threads):
        states = layers.network_forward(
            ops, inputs, a0, p, num_layers, directions, rows.batch_sizes, rows.offsets,
            nonlinearity,
            empty, between, side_by_side,
        )  # fmt: skip
    for layer in range(num_layers - 1):  # the NumPy reference's own arrays
        for direction in range(directions):
            H = states[layer][direction]
            if H is not lower[layer * directions + direction]:
                lower[layer * directions + direction] = H
    top = layers.layer_output(states[-1], empty, f"output_l{num_layers - 1}")  # two directions: into output
    if top is not output:
        output[...] = top
    return output, packing.final_states(states, rows.last_rows), lower


def one_direction_forward(ops, inputs, a0, p, rows, nonlinearity):
    """``forward_rows`` of one layer in one direction: the direction functions called as
    ``layers.network_forward`` calls them, without its loop's bookkeeping (names, views,
    the allocator: about 7 us of a 30 us call at the tiny size, and 9 us of the backward
    pass's 39 us; docs/performance.md, "PyTorch models").  With the loop's names made once
    per architecture (``layers.network_directions``) the loop still cost 3.6 us of a 19 us
    forward call and 2.5 to 6 us of the backward pass, 3% to 6% of a PyTorch training
    step at the tiny size, so this stays."""
    z = ops.packed_projection(inputs, p["W_ax"])
    H = ops.direction_forward(
        z, a0[0], p["W_aa"], p["b_a"], rows.batch_sizes, rows.offsets, False, nonlinearity
    )
    # packing.final_states of one forward direction, without its loop over layers (1.8 us)
    return H, H.take(rows.last_rows, axis=0)[None], np.empty((0,) + H.shape, dtype=H.dtype)


def one_direction_backward(
    ops, d_output, d_final, inputs, a0, output, p, rows, nonlinearity, d_is_scratch, empty, input_gradient
):
    """``backward_rows`` of one layer in one direction (as ``one_direction_forward``):
    ``layers.network_backward``'s calls, in its order, on the same arrays."""
    if d_final is not None:
        if not d_is_scratch:  # d_final is added into it
            copy = empty("d_top", d_output.shape, d_output.dtype)
            np.copyto(copy, d_output)
            d_output, d_is_scratch = copy, True
        layers.add_final_gradients(d_output, d_final, 0, 1, rows.last_rows)
    dz, da0, dW_aa, db_a = ops.direction_backward(
        d_output, output, a0[0], p["W_aa"], rows.batch_sizes, rows.offsets, False, nonlinearity,
        dH_is_scratch=d_is_scratch, empty=empty,
    )  # fmt: skip
    dW_ax, dx = ops.packed_input_backward(dz, inputs, p["W_ax"], empty=empty, input_gradient=input_gradient)
    grads = {"dW_ax": dW_ax, "dW_aa": dW_aa, "db_a": db_a, "da0": da0[None]}
    if dx is not None:
        grads["dx"] = dx
    return grads


def states_of(output, lower, num_layers, directions, empty=new_array):
    """``states[layer][direction]`` (N, n_a) again, from ``forward_rows``' output and lower
    layers' states (the top layer's directions are column blocks of the output, copied
    into ``empty("top_states" + direction)``, contiguous for the kernels)."""
    n_a = output.shape[1] // directions
    states = [[lower[layer * directions + d] for d in range(directions)] for layer in range(num_layers - 1)]
    if directions == 1:
        return states + [[output]]
    top = []
    for d in range(directions):
        copy = empty(f"top_states{d}", (output.shape[0], n_a), output.dtype)
        np.copyto(copy, output[:, d * n_a : (d + 1) * n_a])
        top.append(copy)
    return states + [top]


def backward_rows(impl, d_output, d_final, inputs, a0, output, lower, p, rows, nonlinearity,
                  blas_threads=None, between=None, ops=None, empty=new_array, input_gradient=True,
                  side_by_side=None):  # fmt: skip
    """Backpropagation through every layer and direction of ``forward_rows`` (``ops`` and
    ``side_by_side`` as there; ``empty``: the allocator of the arrays,
    ``workspace.ScratchArrays`` for one that reuses the scratch ones).  ``input_gradient``
    False: no ``dx``, whose product is then skipped (a door's inputs that need no
    gradient: data, not a layer's output).

    Parameters
    ----------
    d_output : ndarray, shape (N, D * n_a), or None (zero)
        dL/d(the top layer's output).
    d_final : ndarray, shape (num_layers * D, m, n_a), or None (zero)
        dL/d(the final states), sorted order.
    output, lower
        ``forward_rows``' results (read, not written).

    Returns
    -------
    grads : dict
        ``"d" + key`` of every hidden-layer parameter (``db_a`` (n_a, 1)), ``da0``
        (num_layers * D, m, n_a) sorted, and ``dx`` (N, n_x) with ``input_gradient``.
    """
    directions = output.shape[1] // a0.shape[2]
    num_layers = a0.shape[0] // directions
    scratch = False
    if d_output is None:
        d_output, scratch = np.zeros_like(output), True
    ops = ops or impl.DIRECTION_OPS
    if num_layers == 1 and directions == 1 and between is None:
        with parallel.blas_threads(blas_threads):
            return one_direction_backward(
                ops, d_output, d_final, inputs, a0, output, p, rows, nonlinearity, scratch, empty,
                input_gradient,
            )  # fmt: skip
    states = states_of(output, lower, num_layers, directions, empty)
    with parallel.blas_threads(blas_threads):
        return layers.network_backward(
            ops, d_output, inputs, a0, states, p, rows.batch_sizes, rows.offsets,
            nonlinearity,
            d_top_is_scratch=scratch, empty=empty, between=between, d_final=d_final, last_rows=rows.last_rows,
            input_gradient=input_gradient, side_by_side=side_by_side,
        )  # fmt: skip
