"""Packed sequences: the layout of networks with several layers, two directions or
variable lengths (``lengths=``), in both backends.

The batch is sorted by length, longest first (stably, so equal lengths keep their order),
and the steps of all sequences are stored as rows of one (N, n) matrix, N the sum of the
lengths, step by step: the rows of step t are ``offsets[t] : offsets[t] + batch_sizes[t]``,
one per sequence still running at step t, and since the batch is sorted these are always
the first ``batch_sizes[t]`` sequences.  This is PyTorch's ``PackedSequence`` layout.  So:

- padding is never stored, hence never read: a row exists only for a real step;
- each step's products shrink with the number of running sequences, and every product
  outside the recurrence (input projection, output layer, weight gradients) is one
  product over the N rows: the cost follows the sum of the lengths, not m * T;
- with every sequence T steps long the packed rows are the time-major (T * m, n) rows
  that the dense path's kernels use.

- ``order`` (m,): sorted row j is the caller's sequence ``order[j]``;
- ``lengths`` (m,): the sorted lengths, non-increasing;
- ``batch_sizes`` (T_run,): the sequences running at step t (T_run, the longest length);
- ``offsets`` (T_run + 1,): the first packed row of step t; ``offsets[-1]`` is N;
- ``last_rows`` (m,): the packed row of each sorted sequence's last step.

The reverse direction of a bidirectional layer runs each sequence from its last step down
to its first (``pack_padded_sequence`` semantics): at step t it reads the state its sequence
had at step t + 1, or ``a0`` for a sequence whose last step is t.
"""

import functools
from typing import NamedTuple

import numpy as np


class Packing(NamedTuple):
    """How a batch of ``m`` sequences of ``T`` steps (padded) is packed; see the module."""

    order: np.ndarray
    lengths: np.ndarray
    batch_sizes: np.ndarray
    offsets: np.ndarray
    last_rows: np.ndarray
    steps: np.ndarray  # (N,) the step of each packed row
    sequences: np.ndarray  # (N,) the caller's sequence of each packed row
    T: int  # the padded length of the caller's arrays
    full: bool  # every sequence is T steps long and none is moved: packed rows = time-major rows

    @property
    def m(self):
        return self.order.size

    @property
    def N(self):
        return int(self.offsets[-1])


def make_packing(lengths, m, T):
    """The ``Packing`` of ``m`` sequences of the checked ``lengths`` (None: all ``T``)."""
    if lengths is None:
        order = np.arange(m)
        sorted_lengths = np.full(m, T, dtype=np.intp)
    else:
        order = np.argsort(-lengths, kind="stable")
        sorted_lengths = lengths[order]
    T_run = int(sorted_lengths[0])
    # batch_sizes[t]: the number of sequences longer than t
    batch_sizes = np.count_nonzero(sorted_lengths[None, :] > np.arange(T_run)[:, None], axis=1).astype(
        np.intp
    )
    offsets = _offsets(batch_sizes)
    last_rows = _last_rows(offsets, sorted_lengths)
    steps = np.repeat(np.arange(T_run), batch_sizes)
    sequences = order[np.arange(offsets[-1]) - offsets[steps]]
    full = lengths is None
    return Packing(order, sorted_lengths, batch_sizes, offsets, last_rows, steps, sequences, T, full)


class Rows(NamedTuple):
    """Packed rows as they come (a PyTorch ``PackedSequence``'s, or a full batch's), without
    the caller's order: ``batch_sizes`` (T_run,), ``offsets`` (T_run + 1,) and ``last_rows``
    (m,) as in ``Packing``."""

    batch_sizes: np.ndarray
    offsets: np.ndarray
    last_rows: np.ndarray


def _offsets(batch_sizes):
    """The first packed row of each step, and N last: (T_run + 1,)."""
    offsets = np.zeros(batch_sizes.size + 1, dtype=np.intp)
    np.cumsum(batch_sizes, out=offsets[1:])
    return offsets


def _last_rows(offsets, sorted_lengths):
    """The packed row of each sorted sequence's last step."""
    return offsets[sorted_lengths - 1] + np.arange(sorted_lengths.size)


def rows_of_batch_sizes(batch_sizes, m):
    """The ``Rows`` given by ``batch_sizes`` (T_run,) intp, a checked non-increasing
    sequence starting at ``m`` (a PyTorch ``PackedSequence``'s)."""
    offsets = _offsets(batch_sizes)
    return Rows(batch_sizes, offsets, _last_rows(offsets, sorted_lengths_of(batch_sizes, m)))


@functools.lru_cache(maxsize=64)
def full_rows(T, m):
    """The ``Rows`` of ``m`` sequences all ``T`` steps long (read-only, kept: a training loop
    asks for the same ones at every step)."""
    rows = rows_of_batch_sizes(np.full(T, m, dtype=np.intp), m)
    for array in rows:
        array.flags.writeable = False
    return rows


def sorted_lengths_of(batch_sizes, m):
    """The lengths (m,) of the sorted sequences of packed rows given by ``batch_sizes``."""
    # sorted sequence j runs while batch_sizes[t] > j: its length is the first t where not
    return np.searchsorted(-batch_sizes, -np.arange(m), side="left")


def shard_rows(rows, start, stop):
    """The sorted sequences ``start:stop`` of packed ``rows`` (a ``Rows``) as packed rows of
    their own: ``(own, taken)``, their ``Rows`` and which rows (N_k,) of the whole packing
    they are, in their own packed order."""
    sizes = np.clip(rows.batch_sizes - start, 0, stop - start)
    sizes = sizes[: np.count_nonzero(sizes)]  # non-increasing: the running steps are a prefix
    own_offsets = _offsets(sizes)
    steps = np.repeat(np.arange(sizes.size), sizes)
    taken = rows.offsets[steps] + start + (np.arange(own_offsets[-1]) - own_offsets[steps])
    own = Rows(sizes, own_offsets, _last_rows(own_offsets, sorted_lengths_of(sizes, stop - start)))
    return own, taken


def pack(time_major, packing):
    """(T, m, ...) -> the (N, ...) packed rows, C-contiguous; padding is not read."""
    if packing.full:
        return np.ascontiguousarray(time_major).reshape((-1,) + time_major.shape[2:])
    return time_major[packing.steps, packing.sequences]


def unpack(packed, packing):
    """(N, ...) packed rows -> (T, m, ...) time-major, zeros at the padding."""
    if packing.full:
        return packed.reshape((packing.T, packing.m) + packed.shape[1:])
    out = np.zeros((packing.T, packing.m) + packed.shape[1:], dtype=packed.dtype)
    out[packing.steps, packing.sequences] = packed
    return out


def sort_rows(per_sequence, packing, out=None, scratch=None):
    """An array whose axis 1 runs over the caller's sequences (e.g. a0 (L * D, m, n_a)),
    in the packing's sorted order, C-contiguous (``out``, when given; ``scratch``, an
    array of the same shape, then holds a contiguous copy of a non-contiguous input, which
    ``np.take`` would otherwise make)."""
    if out is None:
        if packing.full:
            return np.ascontiguousarray(per_sequence)
        return np.ascontiguousarray(per_sequence[:, packing.order])
    if packing.full:
        np.copyto(out, per_sequence)
        return out
    if scratch is not None and not per_sequence.flags.c_contiguous:
        np.copyto(scratch, per_sequence)
        per_sequence = scratch
    np.take(per_sequence, packing.order, axis=1, out=out, mode="clip")  # clip: unbuffered (valid order)
    return out


def unsort_rows(sorted_rows, packing, out=None):
    """``sort_rows`` undone: axis 1 back in the caller's order (in ``out``, when given)."""
    if packing.full and out is None:
        return sorted_rows
    if out is None:
        out = np.empty_like(sorted_rows)
    out[:, packing.order] = sorted_rows
    return out


def final_states(states, last_rows, out=None):
    """The state each direction ends in, (num_layers * D, m, n_a): forward at each
    sequence's last step, reverse at step 0 (PyTorch's ``h_n``); in ``out`` if given."""
    m = last_rows.size
    flat = [H for layer in states for H in layer]
    if out is None:
        out = np.empty((len(flat), m, flat[0].shape[1]), dtype=flat[0].dtype)
    directions = len(states[0])
    for k, H in enumerate(flat):
        if k % directions == 0:
            np.take(H, last_rows, axis=0, out=out[k], mode="clip")  # clip: unbuffered (valid rows)
        else:
            out[k] = H[:m]
    return out
