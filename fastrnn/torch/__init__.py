"""fastrnn for PyTorch models: ``fastrnn.torch.RNN``, a drop-in ``torch.nn.RNN``.

Change one import and a PyTorch model's recurrent layer runs on fastrnn's kernels::

    from fastrnn.torch import RNN          # instead of: from torch.nn import RNN
    rnn = RNN(65, 128, num_layers=2, batch_first=True)

The module is an ``nn.RNN`` (the same constructor, parameters, ``state_dict``, forward
signature and errors); its CPU forward and backward are fastrnn's (``ops``: two
``torch.library`` custom operators, so autograd and ``torch.compile`` see PyTorch
operators).  ``replace_rnns(model)`` swaps the ``nn.RNN``\\ s of an existing model in
place; ``to_fastrnn`` and ``from_fastrnn`` convert between a ``fastrnn.RNN`` and a
(``fastrnn.torch.RNN``, ``nn.Linear``) pair.

PyTorch is optional for fastrnn: ``import fastrnn`` never imports it, and this module
needs ``pip install 'fastrnn[torch]'``.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised without torch installed
    raise ImportError("fastrnn.torch needs PyTorch: pip install 'fastrnn[torch]'") from error

from .convert import from_fastrnn, replace_rnns, to_fastrnn
from .module import RNN

__all__ = ["RNN", "from_fastrnn", "replace_rnns", "to_fastrnn"]
