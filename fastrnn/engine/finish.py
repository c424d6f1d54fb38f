"""The last step of every call: non-finite results reported, results put in a workspace.

Inputs are checked before any kernel runs, so a non-finite result means that the
computation itself overflowed the dtype; the backends scan their own results (the Numba
kernels in compiled code) and say whether all are finite.  Only then is anything scanned
here, to name the first non-finite result in the ``NonFiniteResultError``.
"""

import math

import numpy as np

from ..validation import FLOAT_DTYPES, all_finite, report_non_finite_results

#: The largest finite value of each dtype.  Losses are accumulated in float64: one can be
#: finite there and overflow float32, so it is checked against its own dtype's limit.
LARGEST = {dtype: float(np.finfo(dtype).max) for dtype in FLOAT_DTYPES}


def finished_loss(loss, grads, finite, dtype, what):
    """The loss of a training step in ``dtype``, after a ``NonFiniteResultError`` if the
    loss (in ``dtype``) or a gradient is not finite (``finite``: the backends' verdict on
    the gradients)."""
    largest = LARGEST[dtype]
    if not (finite and abs(loss) <= largest):
        as_returned = math.inf if abs(loss) > largest else loss  # what the dtype holds (NaN stays NaN)
        report_non_finite_results({"the loss": as_returned, **grads}, dtype, what)
    return dtype.type(loss)


def finished_losses(losses, finite, dtype, what):
    """Each sequence's loss (m,) float64, after a ``NonFiniteResultError`` if one is not
    finite in ``dtype``."""
    largest = LARGEST[dtype]
    if not (finite and np.abs(losses).max() <= largest):
        as_returned = np.where(np.abs(losses) > largest, np.inf, losses)
        report_non_finite_results({"the loss": as_returned}, dtype, what)
    return losses


def report_non_finite(results, dtype, what):
    """A ``NonFiniteResultError`` naming the first non-finite array of ``results`` (a
    dict), for a backend that found one; callers check the backend's ``finite`` first, so
    that a finite call builds nothing."""
    report_non_finite_results(results, dtype, what)


def summed_in_shard_order_finite(parts_finite, grads, names):
    """Whether a sharded step's results are finite: every shard's, and the weight
    gradients' sums, which finite shards can still overflow (few entries to scan)."""
    parts_finite = list(parts_finite)
    return all(parts_finite) and (len(parts_finite) == 1 or all(all_finite(grads[name]) for name in names))


def into_workspace(grads, empty):
    """``grads`` with each array copied into ``empty(name, shape, dtype)``, a workspace's
    allocator (None: no workspace, nothing copied): they are then its views, overwritten
    by its next use.  For a backend that does not allocate through the workspace itself
    (``RESULTS_IN_WORKSPACE``)."""
    if empty is None:
        return grads
    for name, value in grads.items():
        grads[name] = empty(name, value.shape, value.dtype)
        np.copyto(grads[name], value)
    return grads
