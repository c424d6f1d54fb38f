"""Reusable memory for repeated training steps of the same shape."""

import functools
import math
import threading

import numpy as np


def new_array(name, shape, dtype):
    """The allocator used without a workspace: a new uninitialised array every call."""
    return np.empty(shape, dtype=dtype)


class Workspace:
    """Arrays that repeated ``loss_and_grads`` calls reuse, so that a training loop of one
    shape allocates nothing the size of its arrays after its first step (Numba backend,
    any network: layers, directions, lengths).

    Pass the same workspace to every call (``loss_and_grads(..., workspace=ws)``).  Each
    internal array (hidden states, logits, the time-major copy of ``x``, every gradient) is
    kept under a name and reused while its shape and dtype stay the same; a call with other
    shapes reallocates what changed.

    The gradients a call returns are views of the workspace's arrays: **the next call with
    the same workspace overwrites them**.  Copy what you keep, and give each thread its own
    workspace.  A call with several ``workers`` keeps each shard's arrays in a workspace of
    its own inside this one (``shard``), so one workspace serves any ``workers``.

    Examples
    --------
    >>> ws = fastrnn.Workspace()
    >>> for x, y in batches:
    ...     loss, grads = fastrnn.loss_and_grads(x, a0, y, params, workspace=ws)
    ...     for name in params:
    ...         params[name] -= lr * grads["d" + name]
    """

    def __init__(self):
        self._arrays = {}
        self._shards = {}

    def shard(self, index):
        """The workspace of shard ``index`` of a call with several ``workers``: a workspace
        of its own, kept inside this one, so that one workspace serves any ``workers``."""
        child = self._shards.get(index)
        if child is None:
            child = self._shards[index] = Workspace()
        return child

    def empty(self, name, shape, dtype):
        """The array kept under ``name``, reallocated if its shape or dtype differ.

        Its contents are whatever the last call left there.
        """
        shape = tuple(shape)
        array = self._arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self._arrays[name] = np.empty(shape, dtype=dtype)
        return array

    def holds(self, array):
        """Whether ``array`` is (a view of) memory of this workspace or of its shards': an
        array the next call with this workspace overwrites."""
        if any(np.shares_memory(array, own) for own in self._arrays.values()):
            return True
        return any(child.holds(array) for child in self._shards.values())

    @property
    def nbytes(self):
        """Bytes held by the workspace's arrays, its shards' included."""
        own = sum(array.nbytes for array in self._arrays.values())
        return own + sum(child.nbytes for child in self._shards.values())

    def __repr__(self):
        shards = f", {len(self._shards)} shards" if self._shards else ""
        return f"Workspace({len(self._arrays)} arrays{shards}, {self.nbytes / 2**20:.1f} MiB)"


class ScratchArrays:
    """An allocator (``empty(name, shape, dtype)``, the backends' protocol) that reuses, in
    each thread, the memory of the arrays whose names start with one of ``prefixes``: arrays
    a call fills and drops, never returns (a backward pass's ``dz``).  Every other array is
    new (``new_array``).

    Why: a new array of a few MB gets new pages from the operating system on every call
    (glibc gives blocks that large back when they are freed), and each page costs a fault.
    In the PyTorch door's char-rnn backward pass in float64, ``dz`` alone took 512 faults,
    1.1 ms of a 10 ms step.  Each thread keeps the largest array it was asked for under
    each name and returns views of its first entries: a C-contiguous array of ``shape``.
    """

    def __init__(self, prefixes):
        self.prefixes = tuple(prefixes)
        self._local = threading.local()

    def empty(self, name, shape, dtype):
        if not name.startswith(self.prefixes):
            return new_array(name, shape, dtype)
        return self._reused(self._local.__dict__.setdefault("buffers", {}), name, shape, dtype)

    def bound(self):
        """``empty`` on the calling thread's memory, from whichever thread calls it: for a
        call that hands tasks to other threads and reads their arrays after them (a layer's
        two directions run side by side, ``backends.layers``).  A pool thread's own memory
        would not do: its next task, another caller's perhaps, would write over an array
        still in use.  Tasks that run at once must ask for different names."""
        return functools.partial(self._bound_empty, self._local.__dict__.setdefault("buffers", {}))

    def _bound_empty(self, buffers, name, shape, dtype):
        if not name.startswith(self.prefixes):
            return new_array(name, shape, dtype)
        return self._reused(buffers, name, shape, dtype)

    @staticmethod
    def _reused(buffers, name, shape, dtype):
        """A view of ``buffers``' array for ``name``, grown where it is too small."""
        dtype = np.dtype(dtype)
        size = math.prod(shape)
        buffer = buffers.get((name, dtype))
        if buffer is None or buffer.size < size:
            buffer = buffers[name, dtype] = np.empty(size, dtype=dtype)
        return buffer[:size].reshape(shape)
