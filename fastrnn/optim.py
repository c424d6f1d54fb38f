"""Optimizers and gradient clipping: in-place parameter updates on both backends.

The update formulas live in ``backends/numpy_backend.py`` (reference) and
``backends/numba_kernels.py`` (compiled loops); the classes here hold the state arrays
and dispatch.  Each works on the params dict of ``init_params`` and the grads dict of
``loss_and_grads``: every parameter ``name`` is updated with ``grads["d" + name]``.

>>> optimizer = fastrnn.optim.Adagrad(lr=0.1)
>>> loss, grads = fastrnn.loss_and_grads(x, a0, y, params)
>>> fastrnn.optim.clip_by_global_norm(grads, 5.0)
>>> optimizer.step(params, grads)
"""

import math
import numbers
import weakref

import numpy as np

from . import backends
from .params import architecture, is_param_name
from .validation import FLOAT_DTYPES, NonFiniteResultError, check_finite_together, check_real

# Keys of a grads dict that are not parameter gradients.
_INPUT_GRADIENTS = ("dx", "da0")


def _checked_pairs(params, grads):
    """(name, param, grad) for every parameter (any network's keys,
    ``validation.architecture``), after the checks the kernels rely on: a writeable
    C-contiguous float param, and a float grad of its shape (``_param_grads``), cast to
    the param's dtype."""
    if not hasattr(params, "keys"):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    names = architecture(params.keys())[2]
    grad_list = _param_grads(grads, names)
    pairs = []
    for name, grad in zip(names, grad_list):
        param = params[name]
        if not isinstance(param, np.ndarray) or param.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"params['{name}'] must be a float32 or float64 ndarray, got {type(param).__name__}"
            )
        if not (param.flags.c_contiguous and param.flags.writeable):
            raise ValueError(
                f"params['{name}'] must be a writeable C-contiguous array (as from init_params) to update in place"
            )
        if grad.shape != param.shape:
            raise ValueError(
                f"grads['d{name}'] must have the shape of params['{name}'], {param.shape}, got {grad.shape}"
            )
        pairs.append((name, param, grad.astype(param.dtype, copy=False)))
    return pairs


class _Setting:
    """An optimizer setting, checked (``validation.check_real`` with these bounds) whenever it
    is set: at construction and after (``optimizer.lr = float("nan")`` is an error, not a
    silent NaN at the next step)."""

    def __init__(self, **bounds):
        self.bounds = bounds

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, instance, owner=None):
        return self if instance is None else instance.__dict__[self.name]

    def __set__(self, instance, value):
        instance.__dict__[self.name] = check_real(value, self.name, **self.bounds)


def _in_dtype(name, value, dtype, *, nonzero=False, below_one=False):
    """The setting ``value`` in the parameters' ``dtype``, which must keep its meaning there:
    finite, not rounded to 0 (``nonzero``) or to 1 (``below_one``)."""
    with np.errstate(over="ignore"):
        cast = dtype.type(value)
    if not np.isfinite(cast):
        raise ValueError(f"{name} = {value} is not finite in {dtype.name}, the parameters' dtype")
    if nonzero and value != 0 and cast == 0:
        raise ValueError(
            f"{name} = {value} rounds to 0 in {dtype.name}, the parameters' dtype; use at least {np.finfo(dtype).tiny}"
        )
    if below_one and cast >= 1:
        largest = np.nextafter(dtype.type(1), dtype.type(0))
        raise ValueError(
            f"{name} = {value} rounds to 1 in {dtype.name}, the parameters' dtype; use at most {largest}"
        )
    return cast


class Optimizer:
    """Base class: settings, the backend, and state arrays for the parameters it updates.

    The state belongs to the parameter arrays of the first ``step``: a step with other
    arrays (a second model, or parameters replaced by new arrays) is an error, not a silent
    sharing of moments; use one optimizer per model, or ``reset()``.  ``state_dict()`` and
    ``load_state_dict()`` carry the state (by parameter name) across a checkpoint.
    """

    slots = ()  # names of the per-parameter state arrays
    lr = _Setting(above=0)

    def __init__(self, lr, *, backend=None):
        self.lr = lr
        self.backend = backend
        backends.resolve(backend)  # an unknown backend fails here, not at the first step
        self.steps = 0
        self.reset()

    @property
    def settings(self):
        """The settings, by name (what ``state_dict`` saves)."""
        names = [
            name
            for cls in reversed(type(self).__mro__)
            for name, value in vars(cls).items()
            if isinstance(value, _Setting)
        ]
        return {name: getattr(self, name) for name in names}

    def reset(self):
        """Forget every state array and the parameters they belonged to (the step count stays)."""
        self._state = {}  # parameter name -> its state arrays, one per slot
        self._owners = {}  # parameter name -> weak reference to the array the state belongs to
        self._loaded = {}  # parameter name -> state arrays from load_state_dict, not yet bound

    def _slots(self, name, param):
        """The state arrays of one parameter: bound to ``param`` on first use (zeros, or what
        ``load_state_dict`` gave); another array under the same name is an error."""
        owner = self._owners.get(name)
        if owner is not None:
            if owner() is not param:
                raise ValueError(
                    f"this {type(self).__name__}'s state for {name} belongs to another array: "
                    f"use one optimizer per model, or call reset() after replacing the parameters"
                )
            return self._state[name]
        arrays = self._loaded.pop(name, None)
        if arrays is None:
            arrays = [np.zeros_like(param) for _ in self.slots]
        elif any(a.shape != param.shape or a.dtype != param.dtype for a in arrays):
            raise ValueError(
                f"the loaded {type(self).__name__} state for {name} has shape {arrays[0].shape} and dtype "
                f"{arrays[0].dtype}, params['{name}'] {param.shape} and {param.dtype}"
            )
        self._owners[name] = weakref.ref(param)
        self._state[name] = arrays
        return arrays

    def step(self, params, grads):
        """Update every parameter in place from its gradient, or change nothing and raise.

        Raises
        ------
        ValueError
            A gradient that is not finite (NaN or inf), a setting that the parameters' dtype
            cannot hold (``lr`` beyond float32's range, ``eps`` that rounds to 0, a beta
            that rounds to 1), or parameters this optimizer's state does not belong to.
        NonFiniteResultError (a ValueError)
            The step would make a parameter or a state array non-finite.
        """
        impl = backends.resolve(self.backend)
        pairs = _checked_pairs(params, grads)
        check_finite_together([grad for _, _, grad in pairs], [f"grads['d{name}']" for name, _, _ in pairs])
        scalars = {}
        for _, param, _ in pairs:
            if param.dtype not in scalars:
                scalars[param.dtype] = self._scalars(param.dtype, self.steps + 1)
        updates = [
            (name, param, grad, self._slots(name, param), scalars[param.dtype]) for name, param, grad in pairs
        ]
        # Check every new value first, then write: a step that would overflow changes nothing.
        for name, param, grad, state, values in updates:
            if not self._update(impl, param, grad, state, values, commit=False):
                raise NonFiniteResultError(
                    f"this {type(self).__name__} step would make params['{name}'] (or its state) non-finite in "
                    f"{param.dtype} (lr = {self.lr}); no parameter was changed"
                )
        for _, param, grad, state, values in updates:
            self._update(impl, param, grad, state, values, commit=True)
        self.steps += 1

    def _scalars(self, dtype, step):
        """The settings the update takes, in ``dtype`` (checked there), for step ``step``."""
        raise NotImplementedError

    def _update(self, impl, param, grad, state, scalars, commit):
        raise NotImplementedError

    # -- checkpoints ---------------------------------------------------------------------

    def state_dict(self):
        """What resuming needs: the optimizer's kind, settings, step count and state arrays
        (copies, by parameter name)."""
        state = {name: arrays for name, arrays in self._loaded.items()} | self._state
        return {
            "optimizer": type(self).__name__,
            "settings": self.settings,
            "steps": self.steps,
            "state": {
                name: dict(zip(self.slots, (a.copy() for a in arrays))) for name, arrays in state.items()
            },
        }

    def load_state_dict(self, state_dict):
        """Take the settings, step count and state of ``state_dict()``.  The state binds to
        the parameter arrays of the next ``step``, which must have its shapes and dtype."""
        if not isinstance(state_dict, dict) or state_dict.get("optimizer") != type(self).__name__:
            found = state_dict.get("optimizer") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"state_dict is not a {type(self).__name__}'s (got {found!r})")
        settings, steps, state = state_dict.get("settings"), state_dict.get("steps"), state_dict.get("state")
        if not isinstance(settings, dict) or set(settings) != set(self.settings):
            raise ValueError(f"state_dict settings must be {sorted(self.settings)}, got {settings!r}")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"state_dict steps must be an int >= 0, got {steps!r}")
        if not isinstance(state, dict) or not all(is_param_name(name) for name in state):
            raise ValueError(
                "state_dict state must map parameter names (W_ax, W_aa, b_a, W_ya, b_y, W_ax_l1, "
                "W_aa_reverse, ...) to arrays"
            )
        loaded = {}
        for name, arrays in state.items():
            if not isinstance(arrays, dict) or set(arrays) != set(self.slots):
                raise ValueError(f"state_dict state for {name} must have the arrays {', '.join(self.slots)}")
            values = [np.array(arrays[slot], order="C") for slot in self.slots]
            if any(v.dtype not in FLOAT_DTYPES or v.shape != values[0].shape for v in values):
                raise ValueError(f"state_dict state for {name} must be float arrays of one shape")
            check_finite_together(values, [f"state_dict state for {name}: {slot}" for slot in self.slots])
            loaded[name] = values
        for name, value in settings.items():
            setattr(self, name, value)  # checked as at construction
        self.reset()
        self._loaded = loaded
        self.steps = int(steps)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum:
    ``v = momentum * v + grad``, ``param -= lr * v``."""

    slots = ("velocity",)
    momentum = _Setting(minimum=0)

    def __init__(self, lr=0.01, momentum=0.0, *, backend=None):
        super().__init__(lr, backend=backend)
        self.momentum = momentum

    def _scalars(self, dtype, step):
        return _in_dtype("lr", self.lr, dtype, nonzero=True), _in_dtype("momentum", self.momentum, dtype)

    def _update(self, impl, param, grad, state, scalars, commit):
        return impl.sgd_update(param, grad, *state, *scalars, commit)


class Adagrad(Optimizer):
    """Adagrad, the classic char-RNN choice: ``G += grad**2``, ``param -= lr * grad / sqrt(G + eps)``."""

    slots = ("sum_sq",)
    eps = _Setting(above=0)

    def __init__(self, lr=0.1, eps=1e-8, *, backend=None):
        super().__init__(lr, backend=backend)
        self.eps = eps

    def _scalars(self, dtype, step):
        return _in_dtype("lr", self.lr, dtype, nonzero=True), _in_dtype("eps", self.eps, dtype, nonzero=True)

    def _update(self, impl, param, grad, state, scalars, commit):
        return impl.adagrad_update(param, grad, *state, *scalars, commit)


class Adam(Optimizer):
    """Adam with bias correction (Kingma and Ba, 2015).  The corrections ``1 - beta**step``
    are computed here, in float64, for both backends."""

    slots = ("m", "v")
    beta1 = _Setting(minimum=0, below=1)
    beta2 = _Setting(minimum=0, below=1)
    eps = _Setting(above=0)

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, *, backend=None):
        super().__init__(lr, backend=backend)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def _scalars(self, dtype, step):
        return (
            _in_dtype("lr", self.lr, dtype, nonzero=True),
            _in_dtype("beta1", self.beta1, dtype, below_one=True),
            _in_dtype("beta2", self.beta2, dtype, below_one=True),
            _in_dtype("eps", self.eps, dtype, nonzero=True),
            _in_dtype("1 - beta1**step", 1 - self.beta1**step, dtype, nonzero=True),
            _in_dtype("1 - beta2**step", 1 - self.beta2**step, dtype, nonzero=True),
        )

    def _update(self, impl, param, grad, state, scalars, commit):
        return impl.adam_update(param, grad, *state, *scalars, commit)


OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}


def from_state_dict(state_dict, *, backend=None):
    """A new optimizer of the kind ``state_dict`` was saved from, with its state."""
    kinds = {cls.__name__: cls for cls in OPTIMIZERS.values()}
    kind = state_dict.get("optimizer") if isinstance(state_dict, dict) else None
    if kind not in kinds:
        raise ValueError(f"state_dict names no optimizer of fastrnn ({', '.join(kinds)}), got {kind!r}")
    optimizer = kinds[kind](backend=backend)
    optimizer.load_state_dict(state_dict)
    return optimizer


def _param_grads(grads, names=None):
    """The parameter gradients of ``grads`` as C-contiguous float arrays, in the order of
    ``names`` (by default, the network that ``grads``' own keys describe); any that had to
    be copied to be so is put back into ``grads``, so that in-place clipping shows."""
    if not hasattr(grads, "keys"):
        raise TypeError(f"grads must be a dict, got {type(grads).__name__}")
    if names is None:
        keys = [key for key in grads.keys() if key not in _INPUT_GRADIENTS]
        bad = [key for key in keys if not (isinstance(key, str) and key.startswith("d"))]
        if bad:
            raise ValueError(f"grads has a key that is no parameter's gradient: {bad[0]!r}")
        names = architecture([key[1:] for key in keys], owner="grads", prefix="d")[2]
    result = []
    for name in names:
        key = "d" + name
        if key not in grads:
            raise ValueError(f"grads is missing {key}")
        grad = np.asarray(grads[key])
        if grad.dtype not in FLOAT_DTYPES:
            raise TypeError(f"grads['{key}'] must be float32 or float64, got {grad.dtype}")
        if not (grad.flags.c_contiguous and grad.flags.writeable):
            grad = np.array(grad, order="C")  # one copy, contiguous and writeable
        grads[key] = grad
        result.append(grad)
    return result


def clip_by_value(grads, limit, *, backend=None):
    """Clip every parameter gradient ``grads["d" + name]`` to ``[-limit, limit]``, in place."""
    limit = check_real(limit, "limit", above=0)
    impl = backends.resolve(backend)
    for grad in _param_grads(grads):
        impl.clip_by_value(grad, grad.dtype.type(limit))


def clip_by_global_norm(grads, max_norm, *, backend=None):
    """Scale all parameter gradients by ``max_norm / norm`` when their global L2 norm
    exceeds ``max_norm``, in place.

    The norm is computed as ``largest * sqrt(sum((grad / largest)**2))`` with ``largest``
    the largest magnitude (as BLAS ``nrm2`` scales), so that finite gradients near float64's
    limit (1e160 and above, whose squares overflow) are clipped instead of zeroed.

    Returns
    -------
    float
        The global norm before clipping; NaN when a gradient is not finite (nothing is
        scaled then, and an optimizer's ``step`` refuses such gradients).
    """
    max_norm = check_real(max_norm, "max_norm", above=0)
    impl = backends.resolve(backend)
    grad_list = _param_grads(grads)
    largest = max(impl.max_abs(grad) for grad in grad_list)
    if not math.isfinite(largest):
        return math.nan
    if largest == 0:
        return 0.0
    norm = largest * math.sqrt(sum(impl.sum_of_squares(grad, 1.0 / largest) for grad in grad_list))
    if norm > max_norm:
        for grad in grad_list:
            impl.scale(grad, grad.dtype.type(max_norm / norm))
    return norm
