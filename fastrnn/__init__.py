"""fastrnn: a fast CPU backend for a vanilla (tanh or ReLU) RNN with a softmax output layer,
of one or more layers, in one direction or both, over sequences of any lengths.

Forward pass, cross-entropy loss and backpropagation through time, on two backends that
compute the same thing: ``"numba"`` (compiled time loops, the default where Numba imports)
and ``"numpy"`` (the readable reference).  The contract is ``docs/contract.rst``.

Layout of the package, from the doors down to the kernels:

- ``api``: the NumPy front door, the public functions below (check the arguments, hand
  the engine time-major views, lay the results back out in the seed's layout);
- ``engine``: the one place a call is planned and run, on time-major arrays: its dense
  path (one layer, one direction, full lengths) and its packed path (layers, directions,
  ``lengths``), their caches, and the finishing of every result;
- ``params``: the parameter-key schema (which keys a network has, and their order);
- ``validation``: argument checks shared by every door;
- ``packing``: the packed layout of networks with layers, directions or ``lengths``;
- ``workspace``: reusable memory for repeated training steps;
- ``parallel``: ``workers=``, a batch cut into shards run in threads;
- ``wisdom``, ``tuning``: plans measured on this machine (``tune``) and kept between
  processes;
- ``distributed``: training and scoring on a Dask cluster (the ``distributed`` extra;
  imported only when asked for);
- ``optim``, ``model``, ``text``: optimizers, the ``RNN`` model, character language models;
- ``backends.numpy_backend``: the reference implementation;
- ``backends.numba_backend`` + ``backends.numba_kernels``: allocation, and the jitted kernels;
- ``backends.layers``: the layer x direction loop both backends share;
- ``backends._jit``: the JIT options every kernel uses.
"""

from .api import (
    CellCache,
    ForwardCache,
    NetworkCache,
    PackedCache,
    available_backends,
    init_params,
    loss,
    loss_and_grads,
    loss_and_grads_onehot,
    loss_onehot,
    plan_of,
    rnn_backward,
    rnn_cell_backward,
    rnn_cell_forward,
    rnn_forward,
)
from .model import RNN, CheckpointError
from .tuning import tune
from .validation import NonFiniteResultError
from .workspace import Workspace

__version__ = "0.1.0"

# The submodules users reach for, as attributes after a plain ``import fastrnn``.
from . import optim, parallel, text, wisdom  # noqa: E402

__all__ = [
    "optim",
    "parallel",
    "text",
    "wisdom",
    "CellCache",
    "ForwardCache",
    "NetworkCache",
    "PackedCache",
    "available_backends",
    "init_params",
    "loss",
    "loss_onehot",
    "loss_and_grads",
    "loss_and_grads_onehot",
    "plan_of",
    "rnn_backward",
    "rnn_cell_backward",
    "rnn_cell_forward",
    "rnn_forward",
    "tune",
    "Workspace",
    "RNN",
    "CheckpointError",
    "NonFiniteResultError",
]
