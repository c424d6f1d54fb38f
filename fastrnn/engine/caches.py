"""What a backward pass needs from its forward pass: the engine's caches, and their checks.

A cache owns its arrays (copies of the params, and of any input it would otherwise share
with the caller), so that changing the caller's arrays in place after the forward pass
does not change the gradients; the arrays it shares with the results it returned are
read-only for that reason.  A cache may still have been changed or built by hand, and the
kernels trust shapes (Numba does not check bounds): every array of a cache is checked
against its params before a kernel reads it (``checked_dense_cache``,
``checked_packed_cache``).

``state_shape`` records the shape the caller gave ``a0`` in, so that ``da0`` comes back
in it: ``"stacked"`` (num_layers * D, n_a, m) (also for ``a0=None``), or ``"single"``
(n_a, m), the seed's shape for one layer in one direction.
"""

from typing import NamedTuple

import numpy as np

from .. import backends, packing, parallel
from ..validation import check_array, check_lengths, check_nonlinearity, check_params

STATE_SHAPES = ("stacked", "single")


class ForwardCache(NamedTuple):
    """The cache of the dense path (one layer, one direction, every sequence full length),
    in the time-major layout.  ``h`` is the memory of the ``a`` that ``rnn_forward``
    returned, which is read-only for that reason."""

    xs: np.ndarray  # (T, m, n_x)
    h: np.ndarray  # (T + 1, m, n_a), h[0] = a0
    params: dict
    backend: str
    nonlinearity: str = "tanh"
    state_shape: str = "stacked"
    workers: object = None  # rnn_forward's: the backward pass runs on the same plan


class PackedCache(NamedTuple):
    """The cache of the packed path (several layers, two directions or ``lengths``): packed
    arrays (``fastrnn.packing``)."""

    inputs: np.ndarray  # (N, n_x), packed x
    states: tuple  # num_layers * D arrays (N, n_a), index layer * D + direction
    a0: np.ndarray  # (num_layers * D, m, n_a), rows in the packing's sorted order
    lengths: object  # (m,) intp, or None for every sequence T steps long
    T: int
    params: dict
    backend: str
    nonlinearity: str = "tanh"
    state_shape: str = "stacked"
    workers: object = None  # rnn_forward's: the backward pass runs on the same plan
    between_layers: object = None  # what the door did between layers (backends.layers)


def read_only(array):
    """A read-only view of ``array``: what a cache keeps for the backward pass."""
    view = array.view()
    view.flags.writeable = False
    return view


def owned_params(p):
    """Read-only copies of the params, for a cache."""
    return {name: read_only(value.copy()) for name, value in p.items()}


def checked_cache_params(cache, kind):
    """A cache's backend module, checked params and their Dims (the checks of any
    argument); ``kind`` is the function whose cache it is, for messages."""
    if not (isinstance(cache.backend, str) and cache.backend in backends.BACKENDS):
        raise ValueError(
            f"cache.backend must name a backend ({', '.join(backends.BACKENDS)}), got {cache.backend!r}"
        )
    if not isinstance(cache.params, dict):
        raise TypeError(
            f"cache.params must be the params dict {kind} was given, got {type(cache.params).__name__}"
        )
    p, dims = check_params(cache.params)
    check_nonlinearity(cache.nonlinearity, "cache.nonlinearity")
    return backends.resolve(cache.backend), p, dims


def _check_state_shape(cache):
    parallel.check_workers(cache.workers, "cache.workers")
    if not isinstance(cache.state_shape, str):
        raise TypeError(f"cache.state_shape must be a str, got {type(cache.state_shape).__name__}")
    if cache.state_shape not in STATE_SHAPES:
        raise ValueError(f"cache.state_shape must be one of {STATE_SHAPES}, got {cache.state_shape!r}")


def checked_dense_cache(cache):
    """``(impl, p, dims, xs, h)`` of a ``ForwardCache``, every array checked against the
    params and C-contiguous."""
    impl, p, dims = checked_cache_params(cache, "rnn_forward")
    _check_state_shape(cache)
    h = check_array(cache.h, "cache.h", (None, None, dims.n_a), "(T + 1, m, n_a)", dims.dtype)
    if h.shape[0] < 2:
        raise ValueError(f"cache.h must hold a0 and at least one step, shape (T + 1, m, n_a), got {h.shape}")
    T, m = h.shape[0] - 1, h.shape[1]
    xs = check_array(cache.xs, "cache.xs", (T, m, dims.n_x), "(T, m, n_x)", dims.dtype)
    return impl, p, dims, np.ascontiguousarray(xs), np.ascontiguousarray(h)


def checked_packed_cache(cache):
    """``(impl, p, dims, lengths, packing, inputs, a0, states)`` of a ``PackedCache``,
    every array checked against the params and the packing, C-contiguous."""
    impl, p, dims = checked_cache_params(cache, "rnn_forward")
    _check_state_shape(cache)
    if not isinstance(cache.T, int) or isinstance(cache.T, bool) or cache.T < 1:
        raise ValueError(f"cache.T must be the sequences' padded length, an int >= 1, got {cache.T!r}")
    a0 = check_array(cache.a0, "cache.a0", (dims.num_layers * dims.directions, None, dims.n_a),
                     "(num_layers * D, m, n_a)", dims.dtype)  # fmt: skip
    m = a0.shape[1]
    lengths = check_lengths(cache.lengths, m, cache.T)
    pk = packing.make_packing(lengths, m, cache.T)
    inputs = check_array(cache.inputs, "cache.inputs", (pk.N, dims.n_x), "(N, n_x)", dims.dtype)
    if not isinstance(cache.states, tuple) or len(cache.states) != a0.shape[0]:
        raise ValueError(f"cache.states must be a tuple of num_layers * D = {a0.shape[0]} arrays")
    states = [
        np.ascontiguousarray(check_array(H, f"cache.states[{k}]", (pk.N, dims.n_a), "(N, n_a)", dims.dtype))
        for k, H in enumerate(cache.states)
    ]
    return impl, p, dims, lengths, pk, np.ascontiguousarray(inputs), np.ascontiguousarray(a0), states
