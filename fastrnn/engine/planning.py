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


def plan_call(workers, inputs, dims, lengths, backend):
    """``(plan, packed)``: the ``parallel.Plan`` of a call on time-major ``inputs`` (T, m,
    n_x) or one-hot (T, m) (whose input layer is a lookup, no product: n_x counts as 0),
    and whether it takes the packed path (``uses_packed_path``).  Every call asks, so this
    is kept to a few hundred nanoseconds."""
    shape = inputs.shape
    n_x = shape[2] if len(shape) == 3 else 0
    # uses_packed_path, spelled out: this is the one check every call of the dense path makes
    if lengths is None and dims.num_layers == 1 and dims.directions == 1:
        return parallel.plan(workers, shape[1], shape[0], n_x, dims.n_a, dims.n_y, backend), False
    return plan_sizes(workers, shape[0], shape[1], n_x, dims, lengths, backend), True


def plan_sizes(workers, T, m, n_x, dims, lengths, backend):
    """The plan of ``plan_call``, from the sizes.  A packed call's products are those of
    ``num_layers * D`` one-layer networks over the real steps (the upper layers' inputs
    are D * n_a wide)."""
    if not uses_packed_path(dims, lengths):
        return parallel.plan(workers, m, T, n_x, dims.n_a, dims.n_y, backend)
    steps = T if lengths is None else max(1, int(np.sum(lengths)) // m)
    layers = dims.num_layers * dims.directions
    return parallel.plan(workers, m, steps * layers, n_x, dims.n_a, dims.n_y, backend)
