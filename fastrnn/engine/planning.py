"""How a call runs: which path, how many shards, threads and BLAS threads (``parallel.plan``).

The engine asks here once per call.  The crossovers themselves (how much work a shard
must hold, when BLAS threads pay) are ``parallel.plan``'s; this module says what a call's
work is in the terms it takes.
"""

import numpy as np

from .. import parallel
from ..params import is_single_layer


def uses_packed_path(dims, lengths):
    """Whether a call goes the packed way: more than one layer or direction, or
    ``lengths`` (checked, and None where every sequence is full length); else the dense
    path of one layer in one direction over full-length sequences."""
    return lengths is not None or not is_single_layer(dims.num_layers, dims.directions)


def plan_call(workers, inputs, dims, lengths, backend, call):
    """``(plan, packed)``: the ``parallel.Plan`` of a call on time-major ``inputs`` (T, m,
    n_x) or one-hot (T, m) (whose input layer is a lookup, no product: n_x counts as 0),
    and whether it takes the packed path (``uses_packed_path``).  ``call`` is what the plan
    is kept for if measured (``wisdom.CALLS``).  Every call asks, so this is kept to a few
    hundred nanoseconds."""
    shape = inputs.shape
    n_x = shape[2] if len(shape) == 3 else 0
    # uses_packed_path, spelled out: this is the one check every call of the dense path makes
    if lengths is None and dims.num_layers == 1 and dims.directions == 1:
        run = parallel.plan(
            workers, shape[1], shape[0], n_x, dims.n_a, dims.n_y, backend, dtype=dims.dtype, call=call
        )
        return run, False
    return plan_sizes(workers, shape[0], shape[1], n_x, dims, lengths, backend, call), True


def plan_sizes(workers, T, m, n_x, dims, lengths, backend, call):
    """The plan of ``plan_call``, from the sizes."""
    path, *sizes = planned_sizes(T, m, n_x, dims, lengths)
    return parallel.plan(workers, *sizes, backend, dtype=dims.dtype, call=call, path=path)


def planned_sizes(T, m, n_x, dims, lengths):
    """``(path, m, T, n_x, n_a, n_y)``: the path (``"dense"`` or ``"packed"``) and the sizes
    ``parallel.plan`` takes for a call.  A packed call's products are those of
    ``num_layers * D`` one-layer networks over the real steps (the upper layers' inputs
    are D * n_a wide), so it is planned as one layer of that many steps."""
    if not uses_packed_path(dims, lengths):
        return "dense", m, T, n_x, dims.n_a, dims.n_y
    steps = T if lengths is None else max(1, int(np.sum(lengths)) // m)
    return "packed", m, steps * dims.num_layers * dims.directions, n_x, dims.n_a, dims.n_y
