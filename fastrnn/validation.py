"""Argument checks shared by every public function and both backends.

Everything here runs before any kernel: the Numba kernels do not check shapes or bounds,
so a bad shape or an out-of-range label that got through would read or write outside an
array.  Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape, empty dimension, non-finite value, label out of range) with a message that
names the argument, what was expected and what was given.  Nothing here modifies an input:
conversions make new arrays.
"""

import functools
import math
import numbers
import sys
from collections import namedtuple

import numpy as np

from .params import SINGLE_LAYER_NAMES, architecture, layer_key

PARAM_LABELS = tuple(f"params['{name}']" for name in SINGLE_LAYER_NAMES)  # as messages name them
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
NONLINEARITIES = ("tanh", "relu")  # the hidden layer's f in a<t> = f(W_ax x<t> + W_aa a<t-1> + b_a)

Dims = namedtuple("Dims", "n_x n_a n_y dtype num_layers directions", defaults=(1, 1))
Dims.__doc__ = """Sizes and dtype fixed by the parameters, and the architecture their keys
describe (``fastrnn.params``): ``num_layers`` stacked layers, ``directions`` 1 or 2
(bidirectional)."""


def param_labels(p):
    """The names of the arrays of a params dict, as messages name them."""
    return PARAM_LABELS if len(p) == len(SINGLE_LAYER_NAMES) else tuple(f"params['{name}']" for name in p)


def _describe(value):
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"array of shape {tuple(shape)} and dtype {dtype}"
    return type(value).__name__


def _as_array(value, name, what):
    """``value`` as an ndarray, or a TypeError saying that ``name`` must be ``what``."""
    if type(value) is np.ndarray:
        return value
    if isinstance(value, (dict, str, bytes)) or value is None:
        raise TypeError(f"{name} must be {what}, got {_describe(value)}")
    if isinstance(value, np.ma.MaskedArray):  # np.asarray would drop the mask and use what is under it
        raise TypeError(
            f"{name} is a masked array, and fastrnn has no missing values: pass {name}.filled(value) "
            f"with the value you mean (for sequences of different lengths, pass lengths=: padding is never read)"
        )
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:  # ragged lists, objects NumPy cannot take
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}: {error}") from None


def _as_real_array(value, name):
    """``value`` as an ndarray of real numbers, or a TypeError naming ``name``."""
    array = _as_array(value, name, "an array of real numbers")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got {_describe(array)}")
    return array


def _check_shape(array, name, expected, meaning):
    """``expected`` is a tuple of ints; ``meaning`` names the axes, e.g. "(n_a, m)"."""
    if array.ndim != len(expected):
        raise ValueError(
            f"{name} must be {len(expected)}-dimensional {meaning} = {expected}, got {array.ndim} dimensions, shape {array.shape}"
        )
    if array.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(expected)}, got {array.shape}")


def _shape_fits(shape, expected):
    """Whether ``shape`` has ``expected``'s rank, no 0 and its fixed sizes (None: free)."""
    if len(shape) != len(expected) or 0 in shape:
        return False
    for got, want in zip(shape, expected):
        if want is not None and got != want:
            return False
    return True


def _check_dims(array, name, expected, meaning):
    """Rank, non-empty sizes and shape; ``expected`` may hold None for free sizes."""
    if _shape_fits(array.shape, expected):
        return
    if array.ndim != len(expected):
        raise ValueError(
            f"{name} must be {len(expected)}-dimensional {meaning}, got {array.ndim} dimensions, shape {array.shape}"
        )
    _check_nonempty(array, name, meaning)
    _check_shape(
        array, name, tuple(got if want is None else want for want, got in zip(expected, array.shape)), meaning
    )


def _check_nonempty(array, name, meaning):
    if 0 in array.shape:
        raise ValueError(
            f"{name} has an empty dimension: shape {array.shape} for {meaning}; every size must be at least 1"
        )


def check_nonlinearity(nonlinearity, name="nonlinearity"):
    """``nonlinearity`` as one of ``NONLINEARITIES``; anything else is a TypeError or
    ValueError naming it."""
    if not isinstance(nonlinearity, str):
        raise TypeError(f"{name} must be 'tanh' or 'relu', got {_describe(nonlinearity)}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{name} must be 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity


def check_int(value, name, *, minimum):
    """``value`` as an int of at least ``minimum``: a ``TypeError`` for anything but an
    integer (bools included), a ``ValueError`` below ``minimum``, each naming ``name``.
    The one check of counts and sizes, for the API, the optimizers and the command line."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_real(value, name, *, minimum=None, above=None, below=None):
    """``value`` as a finite float within the bounds given (``minimum`` inclusive, ``above``
    and ``below`` exclusive): a ``TypeError`` for anything but a real number, a
    ``ValueError`` for a non-finite or out-of-range one, each naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be > {above}, got {value}")
    if below is not None and not value < below:
        raise ValueError(f"{name} must be < {below}, got {value}")
    return value


_SMALL = 1024  # arrays up to this size are checked with isfinite(a).all()


def _all_finite(array):
    """Whether every entry is finite, without a temporary larger than 1 KiB.

    Small arrays: ``isfinite(a).all()``.  Larger ones: the sum is finite when every entry
    is (NaN and inf propagate), unless it overflows; only then do min and max decide.  No
    BLAS here (no ``np.dot``): waking NumPy's OpenBLAS threads before a kernel runs on
    SciPy's slows the kernel down (docs/performance.md, "Measurements behind the code").
    """
    if array.dtype.kind in "iub":
        return True
    if array.size <= _SMALL:
        return bool(np.isfinite(array).all())
    scan = _compiled_scan()
    if scan is not None and array.flags.c_contiguous:
        return scan(array.reshape(-1))
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum means "look closer"
        if math.isfinite(np.add.reduce(array, axis=None)):
            return True
    return bool(np.isfinite(array.min()) and np.isfinite(array.max()))


def _compiled_scan():
    """The Numba kernel ``all_finite`` (one vectorised pass, 2 to 4 times faster than the
    NumPy reductions at the parameters' sizes: docs/performance.md, "Where a call's time
    goes"), once the Numba backend is loaded in this process and compiles; else None, so
    that checks never import Numba themselves."""
    kernels = sys.modules.get("fastrnn.backends.numba_kernels")
    scan = getattr(kernels, "all_finite", None)
    return scan if hasattr(scan, "py_func") else None  # not under NUMBA_DISABLE_JIT=1


def all_finite(array):
    """Whether every entry of ``array`` is finite (cheaply: ``_all_finite``)."""
    return _all_finite(array)


def _check_finite(array, name):
    if not _all_finite(array):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name} must be finite, got {array[bad]} at index {bad}")


_JOIN_LIMIT = 4096  # entries: arrays this small in all are checked together


def check_finite_together(arrays, names):
    """``ValueError`` naming the first of ``arrays`` with a non-finite entry, if any.

    A NumPy call has a fixed cost however small its array, which dominated a tiny training
    step's checks; so arrays of at most ``_JOIN_LIMIT`` entries in all are joined and
    checked in one call (docs/performance.md, "Measurements behind the code").  ``names`` are the
    arrays' names, for the message.
    """
    if sum(array.size for array in arrays) <= _JOIN_LIMIT:
        if np.isfinite(np.concatenate(arrays, axis=None)).all():
            return
    for array, name in zip(arrays, names):
        _check_finite(array, name)


class NonFiniteResultError(ValueError):
    """Finite inputs whose results overflow the dtype (e.g. float32 logits above 3.4e38)."""


def check_results_finite(results, dtype, what):
    """Raise ``NonFiniteResultError`` unless every array (or scalar) in ``results`` is finite.

    Inputs are checked before the kernels run, so a non-finite result means that the
    computation itself overflowed ``dtype``: the message says so and what to do.
    """
    bad = [name for name, value in results.items() if not _all_finite(np.asarray(value))]
    if bad:
        raise NonFiniteResultError(
            f"{what}: {bad[0]} is not finite although every input is: the computation overflows "
            f"{np.dtype(dtype).name} (weights or inputs too large for it); scale them down or use float64"
        )


def report_non_finite_results(results, dtype, what):
    """For a backend that found a non-finite result: raise ``NonFiniteResultError`` naming
    the first (as ``check_results_finite``)."""
    check_results_finite(results, dtype, what)
    raise NonFiniteResultError(f"{what}: a result is not finite although every input is")


def check_params(params, *, finite=True):
    """Check the parameter dict and return it as contiguous arrays of one float dtype.

    Parameters
    ----------
    params : dict
        The seed's ``W_ax`` (n_a, n_x), ``W_aa`` (n_a, n_a), ``b_a`` (n_a, 1), ``W_ya``
        (n_y, D * n_a), ``b_y`` (n_y, 1); for more layers and the reverse direction, the
        same hidden-layer keys suffixed (``layer_key``, ``architecture``), where layer
        ``l >= 1`` has ``W_ax_l{l}`` of shape (n_a, D * n_a).  All float32 or all float64.
    finite : bool
        Also check that every entry is finite.  False: the caller does it, with
        ``check_finite_together`` (names in ``param_labels``).

    Returns
    -------
    p : dict of ndarray
        The arrays in canonical order (``param_names``), C-contiguous (the caller's own
        arrays where they already are).
    dims : Dims
    """
    return _params_if_plainly_valid(params, finite) or _check_params_thoroughly(params, finite)


def _params_if_plainly_valid(params, finite):
    """``check_params``'s result for the common case, in a few attribute reads: a dict of
    the seed's five C-contiguous float arrays of one dtype with consistent, non-empty
    shapes (and finite entries, with ``finite``).

    None when anything differs; ``_check_params_thoroughly`` then converts what it can and
    says what is wrong.
    """
    # Plain loops and lookups, no generators: this runs on every call (a tiny step's
    # checks are mostly the interpreter's fixed costs).
    if type(params) is not dict:
        return None
    if len(params) != len(SINGLE_LAYER_NAMES):
        return _layered_params_if_plainly_valid(params, finite)
    get = params.get
    W_ax, W_aa, b_a, W_ya, b_y = arrays = (get("W_ax"), get("W_aa"), get("b_a"), get("W_ya"), get("b_y"))
    if type(W_ax) is not np.ndarray or W_ax.dtype not in FLOAT_DTYPES:
        return None
    dtype = W_ax.dtype
    for array in arrays:
        if type(array) is not np.ndarray or array.dtype != dtype or not array.flags.c_contiguous:
            return None
    if W_ax.ndim != 2 or W_ya.ndim != 2:
        return None
    (n_a, n_x), n_y = W_ax.shape, W_ya.shape[0]
    shapes = (W_aa.shape, b_a.shape, W_ya.shape, b_y.shape)
    if not (n_x and n_a and n_y) or shapes != ((n_a, n_a), (n_a, 1), (n_y, n_a), (n_y, 1)):
        return None
    if finite:
        for array in arrays:
            if not _all_finite(array):
                return None
    return {"W_ax": W_ax, "W_aa": W_aa, "b_a": b_a, "W_ya": W_ya, "b_y": b_y}, Dims(n_x, n_a, n_y, dtype)


def _layered_params_if_plainly_valid(params, finite):
    """``_params_if_plainly_valid`` for more layers or two directions: the same checks as
    ``_check_params_thoroughly``, with the architecture and the shapes it implies
    remembered for each set of keys and sizes (2 layers: 25 -> 4 us; 2 layers in both
    directions: 52 -> 6 us)."""
    found = _architecture_if_valid(tuple(params))
    if found is None:
        return None
    num_layers, directions, names = found
    W_ax, W_ya = params["W_ax"], params["W_ya"]
    if type(W_ax) is not np.ndarray or W_ax.dtype not in FLOAT_DTYPES or W_ax.ndim != 2:
        return None
    if type(W_ya) is not np.ndarray or W_ya.ndim != 2:
        return None
    (n_a, n_x), n_y = W_ax.shape, W_ya.shape[0]
    if not (n_x and n_a and n_y):
        return None
    dtype = W_ax.dtype
    p = {}
    for name, shape in zip(names, _param_shapes(num_layers, directions, n_x, n_a, n_y)):
        array = params[name]
        if type(array) is not np.ndarray or array.dtype != dtype or array.shape != shape:
            return None
        if not array.flags.c_contiguous or (finite and not _all_finite(array)):
            return None
        p[name] = array
    return p, Dims(n_x, n_a, n_y, dtype, num_layers, directions)


@functools.lru_cache(maxsize=64)
def _architecture_if_valid(keys):
    """``architecture(keys)``, or None where it raises (the thorough checks then say why)."""
    try:
        return architecture(keys)
    except ValueError:
        return None


@functools.lru_cache(maxsize=64)
def _param_shapes(num_layers, directions, n_x, n_a, n_y):
    """The shape of every parameter, in ``param_names`` order: what
    ``_check_params_thoroughly`` requires of each."""
    shapes = []
    for layer in range(num_layers):
        width = directions * n_a if layer else n_x  # layer l >= 1 reads the one below
        shapes += [(n_a, width), (n_a, n_a), (n_a, 1)] * directions
    return tuple(shapes) + ((n_y, directions * n_a), (n_y, 1))


def _check_params_thoroughly(params, finite):
    """``check_params`` one check at a time, each with its own message; accepts any
    mapping, array-likes and non-contiguous arrays (copied)."""
    if not hasattr(params, "keys") or not hasattr(params, "__getitem__"):
        raise TypeError(
            f"params must be a dict with keys {', '.join(SINGLE_LAYER_NAMES)} (more for more layers or "
            f"directions, see fastrnn.init_params), got {type(params).__name__}"
        )
    num_layers, directions, names = architecture(params.keys())
    arrays = {name: _as_real_array(params[name], f"params['{name}']") for name in names}
    for name, array in arrays.items():
        if array.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"params['{name}'] must be float32 or float64, got {_describe(array)}; convert them all with .astype()"
            )
    dtypes = {array.dtype for array in arrays.values()}
    if len(dtypes) > 1:
        found = ", ".join(f"{name}: {array.dtype}" for name, array in arrays.items())
        raise TypeError(f"params must all have one dtype (float32 or float64), got {found}")
    dtype = dtypes.pop()
    W_ax, W_ya = arrays["W_ax"], arrays["W_ya"]
    for name in ("W_ax", "W_ya"):
        if arrays[name].ndim != 2:
            raise ValueError(f"params['{name}'] must be 2-dimensional, got shape {arrays[name].shape}")
    n_a, n_x = W_ax.shape
    n_y = W_ya.shape[0]
    _check_nonempty(W_ax, "params['W_ax']", "(n_a, n_x)")
    concatenated = "D * n_a" if directions == 2 else "n_a"
    # The shapes are _param_shapes' (the fast path's too); the messages say where they come from.
    expected = dict(zip(names, _param_shapes(num_layers, directions, n_x, n_a, n_y)))
    for layer in range(num_layers):
        for reverse in range(directions):
            key = functools.partial(layer_key, layer=layer, reverse=bool(reverse))
            if layer:
                _check_shape(
                    arrays[key("W_ax")], f"params['{key('W_ax')}']", expected[key("W_ax")],
                    f"(n_a, {concatenated}) with n_a from W_ax (it reads the layer below)",
                )  # fmt: skip
            elif reverse:
                _check_shape(
                    arrays[key("W_ax")],
                    f"params['{key('W_ax')}']",
                    expected[key("W_ax")],
                    "(n_a, n_x) as W_ax",
                )
            _check_shape(
                arrays[key("W_aa")], f"params['{key('W_aa')}']", expected[key("W_aa")],
                "(n_a, n_a) with n_a from W_ax",
            )  # fmt: skip
            _check_shape(
                arrays[key("b_a")],
                f"params['{key('b_a')}']",
                expected[key("b_a")],
                "(n_a, 1) with n_a from W_ax",
            )
    _check_shape(W_ya, "params['W_ya']", expected["W_ya"], f"(n_y, {concatenated}) with n_a from W_ax")
    _check_nonempty(W_ya, "params['W_ya']", "(n_y, n_a)")
    _check_shape(arrays["b_y"], "params['b_y']", expected["b_y"], "(n_y, 1) with n_y from W_ya")
    if finite:
        for name, array in arrays.items():
            _check_finite(array, f"params['{name}']")
    p = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    return p, Dims(n_x, n_a, n_y, dtype, num_layers, directions)


def check_lengths(lengths, m, T):
    """Sequence lengths: None (every sequence T steps long), or integers of shape (m,) in
    ``[1, T]``, returned as intp (a new array where the dtype differs)."""
    if lengths is None:
        return None
    array = _as_array(lengths, "lengths", "None or an integer array of shape (m,)")
    if array.dtype.kind not in "iu":
        raise TypeError(
            f"lengths must hold integers (each sequence's number of steps), got {_describe(array)}"
        )
    _check_shape(array, "lengths", (m,), "(m,), one length per sequence")
    low, high = int(array.min()), int(array.max())
    if low < 1 or high > T:
        bad_value = low if low < 1 else high
        bad = int(np.argwhere(array == bad_value)[0, 0])
        raise ValueError(f"lengths must lie in [1, T] = [1, {T}], got {bad_value} at index {bad}")
    return array.astype(np.intp, copy=False)


def check_finite_steps(time_major, lengths, name, sequence_ids=None):
    """A ``ValueError`` naming ``name`` for a non-finite entry at a real step; ``time_major``
    is (T, m, ...), the caller's sequences ``sequence_ids`` (None: 0, 1, ...).  Padding
    may hold anything: it is never read."""
    T, m = time_major.shape[:2]
    padding = np.arange(T)[:, None] >= lengths[None, :]
    finite = np.isfinite(time_major).reshape(T, m, -1).all(axis=-1) | padding
    if not finite.all():
        t, i = np.argwhere(~finite)[0]
        sequence = i if sequence_ids is None else sequence_ids[i]
        raise ValueError(
            f"{name} must be finite at every real step, got a non-finite value at sequence {sequence}, step {t}"
        )


def check_array(value, name, expected, meaning, dtype, *, finite=True):
    """Check a float input (x, a0, da, ...) and return it as an array of ``dtype``.

    Parameters
    ----------
    value : array_like of real numbers
    name : str
        The argument's name, for messages.
    expected : tuple of int or None
        The required shape; None entries are free sizes (checked to be at least 1).
    meaning : str
        The axes' names, e.g. ``"(n_x, m, T)"``.
    dtype : numpy.dtype
        The parameters' dtype; other real dtypes are cast (a new array).
    finite : bool
        Also check that every entry is finite (always checked after a cast, which can
        overflow).  False: the caller does it, with ``check_finite_together``.

    Returns
    -------
    ndarray
        Of ``dtype`` and the checked shape (not necessarily contiguous, not a copy when
        nothing needed changing).
    """
    if type(value) is np.ndarray and value.dtype == dtype and _shape_fits(value.shape, expected):
        array = value  # the common case, without the conversions below
    else:
        array = _as_real_array(value, name)
        _check_dims(array, name, expected, meaning)
    if array.dtype == dtype:
        if finite:
            _check_finite(array, name)
        return array
    with np.errstate(over="ignore"):  # an overflowing cast becomes inf, reported next
        converted = array.astype(dtype)
    if not _all_finite(converted) and _all_finite(array):
        raise ValueError(
            f"{name} must be finite in {dtype} (the parameters' dtype); its values overflow it: largest magnitude {np.abs(array).max()}"
        )
    _check_finite(converted, name)
    return converted


def check_targets(value, name, m, T, n_classes, lengths=None):
    """Training targets: class labels of shape (m, T), one per step, or (m,), one per
    sequence (the class of the whole sequence, predicted from its last state).  With
    ``lengths``, labels at padding steps may be anything and come back as 0."""
    array = _as_array(value, name, "an integer array of class labels")
    if array.ndim == 1:
        return check_labels(array, name, (m,), n_classes, meaning="(m,), one class per sequence")
    return check_labels(
        array, name, (m, T), n_classes, meaning="(m, T), one class per step, or (m,), one class per sequence",
        lengths=lengths,
    )  # fmt: skip


def check_labels(value, name, expected, n_classes, what="class labels", meaning="(m, T)", lengths=None):
    """Check integer labels (or indices) of shape ``expected``, each in ``[0, n_classes)``.

    Parameters
    ----------
    expected : tuple of int or None
        The required shape, e.g. (m, T); None entries are free sizes (at least 1).
    what : str
        What the integers are, for messages ("class labels", "one-hot indices").
    lengths : ndarray of shape (m,) or None
        For (m, T) labels of sequences of these lengths: the padding steps are not
        checked, and come back as 0.
    meaning : str
        What the axes of ``expected`` are, for messages.

    Returns
    -------
    ndarray of intp
        The labels (a new array where the dtype differs).
    """
    array = _as_array(value, name, f"an integer array of {what}")
    if array.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must hold integer {what} in [0, {n_classes}), got {_describe(array)}; "
            f"convert with .astype(int) if the values are whole numbers"
        )
    _check_dims(array, name, expected, meaning)
    if lengths is not None:  # (m, T) with padding, never read: its values do not matter
        padding = np.arange(array.shape[1])[None, :] >= lengths[:, None]
        array = np.where(padding, 0, array)
    # One reduction: seen as unsigned, a negative label is larger than any class.
    if array.view(array.dtype.str.replace("i", "u")).max() >= n_classes:
        low, high = array.min(), array.max()
        bad_value = low if low < 0 else high
        bad = tuple(int(i) for i in np.argwhere(array == bad_value)[0])
        raise ValueError(f"{name} must hold {what} in [0, {n_classes}), got {bad_value} at index {bad}")
    return array.astype(np.intp, copy=False)
