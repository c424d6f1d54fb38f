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

import numpy as np

from . import backends
from .validation import FLOAT_DTYPES, PARAM_NAMES


def _checked_pairs(params, grads):
    """(name, param, grad) for the five parameters, after the checks the kernels rely on:
    a writeable C-contiguous float param, and a float grad of its shape (``_param_grads``),
    cast to the param's dtype."""
    if not hasattr(params, "keys"):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    pairs = []
    for name, grad in zip(PARAM_NAMES, _param_grads(grads)):
        if name not in params:
            raise ValueError(f"params is missing {name}")
        param = params[name]
        if not isinstance(param, np.ndarray) or param.dtype not in FLOAT_DTYPES:
            raise TypeError(f"params['{name}'] must be a float32 or float64 ndarray, got {type(param).__name__}")
        if not (param.flags.c_contiguous and param.flags.writeable):
            raise ValueError(f"params['{name}'] must be a writeable C-contiguous array (as from init_params) to update in place")
        if grad.shape != param.shape:
            raise ValueError(f"grads['d{name}'] must have the shape of params['{name}'], {param.shape}, got {grad.shape}")
        pairs.append((name, param, grad.astype(param.dtype, copy=False)))
    return pairs


def _check_positive(name, value, *, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


class Optimizer:
    """Base class: holds ``lr``, the backend and one state array per parameter and slot."""

    slots = ()  # names of the per-parameter state arrays

    def __init__(self, lr, *, backend=None):
        self.lr = _check_positive("lr", lr)
        self.backend = backend
        backends.resolve(backend)  # an unknown backend fails here, not at the first step
        self.state = {}
        self.steps = 0

    def _slots(self, name, param):
        """The state arrays of one parameter, created as zeros on first use."""
        key = (name, param.shape, param.dtype)
        if key not in self.state:
            self.state[key] = [np.zeros_like(param) for _ in self.slots]
        return self.state[key]

    def step(self, params, grads):
        """Update every parameter in place from its gradient."""
        impl = backends.resolve(self.backend)
        pairs = _checked_pairs(params, grads)
        self.steps += 1
        for name, param, grad in pairs:
            self._update(impl, param, grad, *self._slots(name, param))

    def _update(self, impl, param, grad, *slots):
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum:
    ``v = momentum * v + grad``, ``param -= lr * v``."""

    slots = ("velocity",)

    def __init__(self, lr=0.01, momentum=0.0, *, backend=None):
        super().__init__(lr, backend=backend)
        self.momentum = _check_positive("momentum", momentum, allow_zero=True)

    def _update(self, impl, param, grad, velocity):
        dtype = param.dtype.type
        impl.sgd_update(param, grad, velocity, dtype(self.lr), dtype(self.momentum))


class Adagrad(Optimizer):
    """Adagrad, the classic char-RNN choice: ``G += grad**2``, ``param -= lr * grad / sqrt(G + eps)``."""

    slots = ("sum_sq",)

    def __init__(self, lr=0.1, eps=1e-8, *, backend=None):
        super().__init__(lr, backend=backend)
        self.eps = _check_positive("eps", eps)

    def _update(self, impl, param, grad, sum_sq):
        dtype = param.dtype.type
        impl.adagrad_update(param, grad, sum_sq, dtype(self.lr), dtype(self.eps))


class Adam(Optimizer):
    """Adam with bias correction (Kingma and Ba, 2015)."""

    slots = ("m", "v")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, *, backend=None):
        super().__init__(lr, backend=backend)
        self.beta1 = _check_positive("beta1", beta1, allow_zero=True)
        self.beta2 = _check_positive("beta2", beta2, allow_zero=True)
        if self.beta1 >= 1 or self.beta2 >= 1:
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1} and {beta2}")
        self.eps = _check_positive("eps", eps)

    def _update(self, impl, param, grad, m, v):
        dtype = param.dtype.type
        impl.adam_update(param, grad, m, v, dtype(self.lr), dtype(self.beta1), dtype(self.beta2), dtype(self.eps), self.steps)


OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}


def _param_grads(grads):
    """The five parameter gradients of ``grads`` as C-contiguous float arrays; any that had
    to be copied to be so is put back into ``grads``, so that in-place clipping shows."""
    if not hasattr(grads, "keys"):
        raise TypeError(f"grads must be a dict, got {type(grads).__name__}")
    result = []
    for name in PARAM_NAMES:
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
    limit = _check_positive("limit", limit)
    impl = backends.resolve(backend)
    for grad in _param_grads(grads):
        impl.clip_by_value(grad, grad.dtype.type(limit))


def clip_by_global_norm(grads, max_norm, *, backend=None):
    """Scale all parameter gradients by ``max_norm / norm`` when their global L2 norm
    exceeds ``max_norm``, in place.

    Returns
    -------
    float
        The global norm before clipping.
    """
    max_norm = _check_positive("max_norm", max_norm)
    impl = backends.resolve(backend)
    grad_list = _param_grads(grads)
    norm = math.sqrt(sum(impl.sum_of_squares(grad) for grad in grad_list))
    if norm > max_norm:
        for grad in grad_list:
            impl.scale(grad, grad.dtype.type(max_norm / norm))
    return norm
