"""The lean lane: a small training step or loss of the seed's network, its checks in a kernel.

For a small problem the Python path around a kernel costs more than the kernel: the tiny
step (8, 16, 8, 1, 100) spent about 40 of its 65 us in checks, copies and allocations
(docs/performance.md, "Where a call's time goes").  A call that needs nothing but the
seed's network, one shard, on C-contiguous arrays of the parameters' dtype (``a0`` in any
layout, copied), comes here from the NumPy door: ``fastrnn.loss_and_grads`` and
``loss_and_grads_onehot`` (with or without a workspace), ``loss`` and ``loss_onehot``.

- Python looks at what picks a compiled variant (types, dtypes, numbers of dimensions,
  memory layout) and at nothing else;
- one kernel (``numba_kernels.checked_step_inputs_into``) checks the rest (shapes,
  finiteness, label and index ranges) before it reads through any of it, and copies the
  arrays time-major; then the dense path's own kernels run the step or the loss: bitwise
  their results.

Anything else returns None here, and so does a call the kernel refuses: the door then
takes the full path, whose checks name what is wrong (or, if nothing is, compute the same
step).  So the lane changes neither a result nor an error, only the time.  A backend
without a lane (``checked_loss_and_grads`` None: the NumPy reference, whose time is its
own NumPy calls) always takes the full path.
"""

import numpy as np

from .. import backends, parallel
from ..workspace import Workspace, new_array
from . import finish

_INTP = np.dtype(np.intp)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NONLINEARITIES = ("tanh", "relu")


def _plain(array, dtype, ndim):
    """Whether ``array`` is an ndarray of ``dtype`` with ``ndim`` dimensions, C-contiguous,
    aligned and writable: what the lane's kernel is compiled for."""
    return type(array) is np.ndarray and array.dtype == dtype and array.ndim == ndim and array.flags.carray


def loss_and_grads(backend, workspace, inputs, a0, y, params, workers, nonlinearity, return_state, onehot):
    """``engine.loss_and_grads``'s ``(loss, grads, final)`` for the door's arguments, or
    None where the lane does not take the call (module docstring).

    ``inputs`` (dense ``x`` (n_x, m, T), or with ``onehot`` ``x_index`` (m, T) of intp),
    ``a0`` (n_a, m) or None, ``y`` (m, T) and ``params`` as the user passed them; ``grads`` come
    back time-major (``dx`` (T, m, n_x), ``da0`` (1, m, n_a)), as from the engine, in the
    ``workspace``'s arrays where there is one.  Raises only what the full path raises
    first: a bad ``backend`` or ``workers``.
    """
    if workspace is not None and not isinstance(workspace, Workspace):
        return None  # the full path says what is wrong
    lane = _lane(backend, inputs, a0, y, params, workers, nonlinearity, onehot, "loss_and_grads")
    if lane is None:
        return None
    checked, run, a0, dtype = lane
    empty = new_array if workspace is None else workspace.empty
    status, loss, grads, h, finite = parallel.call_with_blas_threads(
        run.blas_threads, checked, inputs, a0, y, params, nonlinearity, empty
    )
    if status:  # refused: the full path's checks say why
        return None
    loss = finish.finished_loss(loss, grads, finite, dtype, "loss_and_grads")
    grads["da0"] = grads["da0"][None]
    return loss, grads, h[-1][None] if return_state else None


def losses(backend, inputs, a0, y, params, workers, nonlinearity, onehot):
    """``engine.losses``'s ``(sequence_losses, final)`` for the door's arguments (as
    ``loss_and_grads``, no workspace), or None where the lane does not take the call."""
    lane = _lane(backend, inputs, a0, y, params, workers, nonlinearity, onehot, "loss")
    if lane is None:
        return None
    checked, run, a0, dtype = lane
    status, sequence_losses, a_last, finite = parallel.call_with_blas_threads(
        run.blas_threads, checked, inputs, a0, y, params, nonlinearity
    )
    if status:
        return None
    return finish.finished_losses(sequence_losses, finite, dtype, "loss"), a_last[None]


def _lane(backend, inputs, a0, y, params, workers, nonlinearity, onehot, call):
    """``(checked, run, a0, dtype)`` for a ``call`` (``"loss_and_grads"`` or ``"loss"``) the
    lane takes: the backend's lane function for it, its plan (one shard), ``a0`` (zeros
    for None) and the params' dtype; None for any other call."""
    impl = backends.resolve(backend)
    checked = impl.checked_loss_and_grads if call == "loss_and_grads" else impl.checked_sequence_losses
    if checked is None or type(params) is not dict or len(params) != 5:
        return None
    if type(nonlinearity) is not str or nonlinearity not in _NONLINEARITIES:
        return None
    workers = parallel.check_workers(workers)
    get = params.get
    W_ax, W_aa, b_a, W_ya, b_y = get("W_ax"), get("W_aa"), get("b_a"), get("W_ya"), get("b_y")
    if type(W_aa) is not np.ndarray or W_aa.dtype not in _FLOATS:
        return None
    dtype = W_aa.dtype
    # Plain expressions, no loops: the path around a tiny step's kernel is most of its time.
    if not (
        _plain(W_ax, dtype, 2) and _plain(W_aa, dtype, 2) and _plain(b_a, dtype, 2) and _plain(W_ya, dtype, 2)
        and _plain(b_y, dtype, 2) and _plain(y, _INTP, 2)
        and (_plain(inputs, _INTP, 2) if onehot else _plain(inputs, dtype, 3))
        and inputs.size and W_aa.size and W_ya.size
    ):  # fmt: skip
        return None
    m, T = inputs.shape[-2:]
    if a0 is None:
        a0 = np.zeros((W_aa.shape[0], m), dtype)
    elif not _plain(a0, dtype, 2):
        if type(a0) is not np.ndarray or a0.dtype != dtype or a0.ndim != 2:
            return None
        # A state carried from the last call (``return_state``: a transposed view) or
        # read-only: a C-ordered copy, the variant the kernel is compiled for.
        a0 = np.array(a0, order="C")
    n_x = 0 if onehot else inputs.shape[0]  # one-hot inputs are a lookup, no product (planning)
    run = parallel.plan(workers, m, T, n_x, W_aa.shape[0], W_ya.shape[0], impl.NAME, dtype=dtype, call=call)
    return None if run.shards != 1 else (checked, run, a0, dtype)
