"""Backend selection: which implementation runs a call, and what a backend is.

A backend is a module with the functions below, over the time-major arrays described in
``numpy_backend`` (``xs`` (T, m, n_x), ``h`` (T + 1, m, n_a), ...); ``numpy_backend`` is the
reference, ``numba_backend`` the fast one, and ``tests/test_backend_interface.py`` checks
that both have exactly these signatures.  Numba is imported only when the Numba backend is
first asked for, so ``import fastrnn`` stays fast and works without Numba.

========================================================  ========================================
function                                                  returns
========================================================  ========================================
``NAME``                                                  ``"numba"`` or ``"numpy"``
``RESULTS_IN_WORKSPACE``                                  whether ``loss_and_grads`` allocates its
                                                          results through ``empty`` (else the
                                                          engine copies them there)
``forward(xs, a0, p, nonlinearity)``                      ``h``, ``y_hat`` (T, m, n_y), ``finite``
``cell_forward(x_t, a_prev, p, nonlinearity)``            ``a_t`` (n_a, m), ``y_hat`` (n_y, m),
                                                          read-only copies of the inputs, ``bad``
                                                          (-1, or the first input that is not
                                                          finite), ``finite``
``backward(da, xs, h, p, nonlinearity)``                  dict (``dx``, ``da0``, ``dW_ax``,
                                                          ``dW_aa``, ``db_a``), ``finite``
``loss_and_grads(inputs, a0, labels, p, *, empty,``       ``loss``, grads (dict, with ``dx`` for
``xs_is_scratch, batch_size, nonlinearity)``              dense inputs), ``a_last`` (m, n_a),
                                                          ``finite`` (bool)
``sequence_losses(inputs, a0, labels, p,``                ``losses`` (m,) float64, each sequence's
``nonlinearity)``                                         summed over time; ``a_last``; ``finite``
``sgd_update(param, grad, velocity, lr, momentum,``       whether every new value is finite
``commit)``, ``adagrad_update(param, grad, sum_sq, lr,``  (``commit=False``, nothing written) or
``eps, commit)``, ``adam_update(param, grad, m, v, lr,``  True (``commit=True``, all written)
``beta1, beta2, eps, correction1, correction2, commit)``
``clip_by_value(grad, limit)``, ``scale(grad, factor)``   None (in place)
``max_abs(grad)``, ``sum_of_squares(grad, inv_scale)``    float
``make_packing(lengths, m, T, empty)``                    ``fastrnn.packing.Packing``
``pack_rows(xs, sequences, steps, out)``                  packed rows (N, n) of ``xs`` (T, m, n)
``unpack_rows(packed, sequences, steps, out)``            None (rows written into ``out`` (T, m, n))
``packed_forward_outputs(inputs, a0, p, num_layers,``    ``states`` (``[layer][direction]`` (N,
``directions, batch_sizes, offsets, nonlinearity)``       n_a)), ``y_hat`` (N, n_y), ``finite``
``packed_backward_grads(d_top, inputs, a0, states, p,``  dict (``"d" + key`` of the hidden layers,
``batch_sizes, offsets, nonlinearity)``                   ``da0``, ``dx``), ``finite``
``packed_loss_and_grads(inputs, a0, labels, p,``         ``loss``, grads, ``final`` (num_layers *
``num_layers, directions, batch_sizes, offsets,``         D, m, n_a), ``finite``
``last_rows, *, batch_size, nonlinearity, empty)``
``packed_sequence_losses(inputs, a0, labels, p,``        ``losses`` (m,) float64, ``final``,
``num_layers, directions, batch_sizes, offsets,``         ``finite``
``last_rows, nonlinearity)``
``stream_step(inputs, previous, states, w,``             ``out`` (m, n_y), ``bad`` (-1, or where
``probabilities, nonlinearity, scratch)``                 the input is bad), ``finite``; the new
                                                          states written into ``states``
``generate(feed, running, states, w, uniforms,``         ``symbols`` (m, n_steps), ``lengths``
``temperature, top_k, top_p, stop, nonlinearity)``        (m,), ``finite``
``checked_loss_and_grads(inputs, a0, y, p,``              ``status`` (0: ran), ``loss``, grads,
``nonlinearity, empty)``, or None                         ``h``, ``finite``: the lean lane's step
``checked_sequence_losses(inputs, a0, y, p,``             ``status``, ``losses``, ``a_last``,
``nonlinearity)``, or None                                ``finite``: the lean lane's loss
========================================================  ========================================

The ``packed_*`` functions run networks of several layers, two directions or variable
lengths over packed rows (``fastrnn.packing``, ``numpy_backend``'s last section): ``inputs``
(N, n_x) or one-hot (N,), ``a0`` (num_layers * D, m, n_a) in the packing's sorted order,
``labels`` (N,) per step or (1, m) per sequence.  ``packed_loss_and_grads`` may write
``dx`` over dense ``inputs``: the engine packs a copy for each call.  Both backends chain
layers and directions with the same loop (``layers``), over their own functions for one
direction of one layer (``layers.DirectionOps``).

``cell_forward`` is ``rnn_cell_forward``'s one step in the seed's layout ``(n, m)``, for
one layer in one direction: it checks its inputs' finiteness before it computes anything,
and copies them for the cell's cache (``p``'s arrays, ``x_t``, ``a_prev``, in that order).

``stream_step`` and ``generate`` run a network in one direction one time step at a time
(``fastrnn.generation``): ``w`` is a ``layers.StepWeights``, ``states`` (num_layers, m,
n_a); ``stream_step`` checks its input (index ranges, finiteness) before it reads through
it.

``checked_loss_and_grads`` and ``checked_sequence_losses`` are the lean lane's training step
and loss (``fastrnn.engine.lean``): on the seed's own arrays (``x`` (n_x, m, T) or
``x_index`` (m, T), ``a0`` (n_a, m), ``y`` (m, T)), whose shapes, finiteness and ranges a
kernel checks before anything is computed; ``status`` says whether it ran.  Only the Numba
backend has them (None in the reference).

``finite`` says whether every result is finite: each backend scans its own results (the
Numba kernels in compiled code), and the engine alone reports a non-finite one, as
``NonFiniteResultError`` (``fastrnn.engine.finish``).  ``nonlinearity`` is ``"tanh"`` or
``"relu"`` (checked by the API).  ``a0`` may be a view (the backends copy it into
``h[0]``); ``p`` holds the checked, C-contiguous parameters of one dtype, in which
everything is computed.  ``empty(name,
shape, dtype)`` allocates what a call returns (a ``Workspace`` reuses it); ``batch_size``
is the ``m`` the loss is averaged over (None: the call's own).
"""

import functools
import importlib
import os

import numpy as np

ENV_VAR = "FASTRNN_BACKEND"
BACKENDS = ("numba", "numpy")


@functools.cache
def _import_error(name):
    """Why backend ``name`` cannot be imported, or None when it can."""
    try:
        importlib.import_module(f"fastrnn.backends.{name}_backend")
    except ImportError as error:  # Numba or SciPy missing or broken
        return f"{type(error).__name__}: {error}"
    return None


def available_backends():
    """Names of the backends that work in this environment, fastest first.

    Returns
    -------
    tuple of str
        ``("numba", "numpy")`` where Numba (and SciPy) import, else ``("numpy",)``.
    """
    return tuple(name for name in BACKENDS if _import_error(name) is None)


def resolve(backend=None):
    """The backend module for a ``backend=`` argument.

    ``None`` means automatic: the ``FASTRNN_BACKEND`` environment variable if it is set
    and not empty, else ``"numba"`` where it imports, else ``"numpy"``.

    Raises
    ------
    TypeError
        ``backend`` is not a str or None.
    ValueError
        ``backend`` or ``FASTRNN_BACKEND`` names no backend.
    ImportError
        The Numba backend was asked for by name but Numba or SciPy cannot be imported.
    """
    if backend is None:
        return _resolve_cached(None, os.environ.get(ENV_VAR, ""))
    if isinstance(backend, str):
        return _resolve_cached(backend, None)
    raise TypeError(
        f"backend must be a str ({' or '.join(map(repr, BACKENDS))}) or None, got {type(backend).__name__}"
    )


@functools.lru_cache(maxsize=64)
def _resolve_cached(backend, from_env):
    """``resolve`` for a str or None ``backend`` and the environment variable's value:
    cached, since every public call resolves (errors are raised, not cached)."""
    from_env = (from_env or "").strip()
    if backend is not None:
        name, source = backend.strip().lower(), f"backend={backend!r}"
    elif from_env:
        name, source = from_env.lower(), f"environment variable {ENV_VAR}={from_env!r}"
    else:
        name, source = ("numba" if _import_error("numba") is None else "numpy"), None
    if name not in BACKENDS:
        raise ValueError(f"{source} names no backend; expected one of {', '.join(map(repr, BACKENDS))}")
    reason = _import_error(name)
    if reason is not None:
        raise ImportError(
            f"{source} asks for the {name} backend, which cannot be imported here ({reason}); "
            f"install numba and scipy, or use backend='numpy'"
        )
    return importlib.import_module(f"fastrnn.backends.{name}_backend")


def overflow_reported_by_the_engine(function):
    """Run a backend function with NumPy's overflow warnings off: ``fastrnn.engine`` turns a
    non-finite result into a clear ``NonFiniteResultError`` right after.  For the NumPy
    backend, and for the Numba one when its kernels run as plain Python
    (``NUMBA_DISABLE_JIT=1``); compiled kernels warn about nothing."""

    @functools.wraps(function)
    def quiet(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return function(*args, **kwargs)

    return quiet
