"""fastrnn: a fast CPU backend for a vanilla (tanh or ReLU) RNN with a softmax output layer,
of one or more layers, in one direction or both, over sequences of any lengths.

Forward pass, cross-entropy loss and backpropagation through time, on two backends that
compute the same thing: ``"numba"`` (compiled time loops, the default where Numba imports)
and ``"numpy"`` (the readable reference).  The contract is ``docs/contract.rst``.

Layout of the package:

- ``api``: the public functions below (validate, lay out, dispatch);
- ``validation``: argument checks shared by both backends;
- ``packing``: the packed layout of networks with layers, directions or ``lengths``;
- ``workspace``: reusable memory for repeated training steps;
- ``parallel``: ``workers=``, a batch cut into shards run in threads;
- ``distributed``: training and scoring on a Dask cluster (the ``distributed`` extra;
  imported only when asked for);
- ``optim``, ``model``, ``text``: optimizers, the ``RNN`` model, character language models;
- ``backends.numpy_backend``: the reference implementation;
- ``backends.numba_backend`` + ``backends.numba_kernels``: allocation, and the jitted kernels;
- ``backends._jit``: the JIT options every kernel uses.
"""

from .api import (
    CellCache,
    ForwardCache,
    NetworkCache,
    available_backends,
    init_params,
    loss,
    loss_and_grads,
    loss_and_grads_onehot,
    loss_onehot,
    rnn_backward,
    rnn_cell_backward,
    rnn_cell_forward,
    rnn_forward,
)
from .model import RNN, CheckpointError
from .validation import NonFiniteResultError
from .workspace import Workspace

__version__ = "0.1.0"

# The submodules users reach for, as attributes after a plain ``import fastrnn``.
from . import optim, parallel, text  # noqa: E402

__all__ = [
    "optim",
    "parallel",
    "text",
    "CellCache",
    "ForwardCache",
    "NetworkCache",
    "available_backends",
    "init_params",
    "loss",
    "loss_onehot",
    "loss_and_grads",
    "loss_and_grads_onehot",
    "rnn_backward",
    "rnn_cell_backward",
    "rnn_cell_forward",
    "rnn_forward",
    "Workspace",
    "RNN",
    "CheckpointError",
    "NonFiniteResultError",
]
