"""Between fastrnn's two doors, and into existing PyTorch models.

- ``to_fastrnn(rnn, linear)``: an ``nn.RNN`` (or ``fastrnn.torch.RNN``) and its output
  layer, an ``nn.Linear``, as a ``fastrnn.RNN`` (the NumPy door's model, with its softmax
  output layer);
- ``from_fastrnn(model)``: the other way, a ``(fastrnn.torch.RNN, nn.Linear)`` pair;
- ``replace_rnns(module)``: every ``nn.RNN`` inside a model swapped, in place, for a
  ``fastrnn.torch.RNN`` with the same weights.

PyTorch's two biases are one ``b_a`` to fastrnn (their sum); from fastrnn, ``bias_ih``
takes ``b_a`` and ``bias_hh`` is zero.  The outputs are the same either way.
"""

import numpy as np
import torch
from torch import nn

from ..model import RNN as FastRNN
from ..params import layer_key
from .module import RNN


def _suffix(layer, reverse):
    return f"_l{layer}" + ("_reverse" if reverse else "")


def to_fastrnn(rnn, linear, *, backend=None):
    """A ``fastrnn.RNN`` computing what ``linear(rnn(x)[0])`` followed by a softmax does.

    Parameters
    ----------
    rnn : torch.nn.RNN
        Without ``batch_first`` or dropout meaning anything to the result (fastrnn's model
        has its own layout, and no dropout).
    linear : torch.nn.Linear
        The output layer, ``in_features = D * hidden_size``; without a bias, ``b_y`` is 0.
    """
    if not isinstance(rnn, nn.RNN):
        raise TypeError(f"rnn must be a torch.nn.RNN, got {type(rnn).__name__}")
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
    directions = 2 if rnn.bidirectional else 1
    if linear.in_features != directions * rnn.hidden_size:
        raise ValueError(
            f"linear.in_features is {linear.in_features}, but the RNN's output is {directions * rnn.hidden_size} wide"
        )
    dtype = rnn.weight_ih_l0.dtype
    if dtype not in (torch.float32, torch.float64) or linear.weight.dtype != dtype:
        raise ValueError(
            f"the RNN and the Linear must both be float32 or both float64, got {dtype} and {linear.weight.dtype}"
        )
    params = {}
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            for direction in range(directions):
                reverse = direction == 1
                suffix = _suffix(layer, reverse)
                w_hh = getattr(rnn, "weight_hh" + suffix)
                params[layer_key("W_ax", layer, reverse)] = _numpy(getattr(rnn, "weight_ih" + suffix))
                params[layer_key("W_aa", layer, reverse)] = _numpy(w_hh)
                if rnn.bias:
                    b_a = getattr(rnn, "bias_ih" + suffix) + getattr(rnn, "bias_hh" + suffix)
                else:
                    b_a = torch.zeros(w_hh.shape[0], dtype=dtype)
                params[layer_key("b_a", layer, reverse)] = _numpy(b_a).reshape(-1, 1)
        params["W_ya"] = _numpy(linear.weight)
        b_y = linear.bias if linear.bias is not None else torch.zeros(linear.out_features, dtype=dtype)
        params["b_y"] = _numpy(b_y).reshape(-1, 1)
    return FastRNN.from_params(params, backend=backend, nonlinearity=rnn.nonlinearity)


def from_fastrnn(model, *, batch_first=False, **kwargs):
    """``(fastrnn.torch.RNN, nn.Linear)`` computing ``model``'s hidden layers and output
    logits (``model`` a ``fastrnn.RNN``; ``kwargs`` go to ``fastrnn.torch.RNN``)."""
    if not isinstance(model, FastRNN):
        raise TypeError(f"model must be a fastrnn.RNN, got {type(model).__name__}")
    dtype = torch.float64 if model.dtype == np.float64 else torch.float32
    directions = 2 if model.bidirectional else 1
    rnn = RNN(
        model.n_x, model.n_a, num_layers=model.num_layers, nonlinearity=model.nonlinearity,
        bidirectional=model.bidirectional, batch_first=batch_first, dtype=dtype, **kwargs,
    )  # fmt: skip
    linear = nn.Linear(directions * model.n_a, model.n_y, dtype=dtype)
    p = model.params
    with torch.no_grad():
        for layer in range(model.num_layers):
            for direction in range(directions):
                reverse = direction == 1
                suffix = _suffix(layer, reverse)
                getattr(rnn, "weight_ih" + suffix).copy_(
                    torch.from_numpy(p[layer_key("W_ax", layer, reverse)])
                )
                getattr(rnn, "weight_hh" + suffix).copy_(
                    torch.from_numpy(p[layer_key("W_aa", layer, reverse)])
                )
                getattr(rnn, "bias_ih" + suffix).copy_(
                    torch.from_numpy(p[layer_key("b_a", layer, reverse)].reshape(-1))
                )
                getattr(rnn, "bias_hh" + suffix).zero_()
        linear.weight.copy_(torch.from_numpy(p["W_ya"]))
        linear.bias.copy_(torch.from_numpy(p["b_y"].reshape(-1)))
    return rnn, linear


def _numpy(tensor):
    return tensor.detach().cpu().numpy().copy()


def replace_rnns(module, **kwargs):
    """Swap every ``torch.nn.RNN`` inside ``module`` (not ``module`` itself) for a
    ``fastrnn.torch.RNN`` with the same settings, weights, device, dtype and training
    mode, in place; ``kwargs`` go to ``fastrnn.torch.RNN``.  Returns how many were
    replaced (a ``fastrnn.torch.RNN`` already there is left as it is)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.RNN) and not isinstance(child, RNN):
                setattr(parent, name, _replacement(child, **kwargs))
                replaced += 1
    return replaced


def _replacement(rnn, **kwargs):
    first = rnn.weight_ih_l0
    new = RNN(
        rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers, nonlinearity=rnn.nonlinearity, bias=rnn.bias,
        batch_first=rnn.batch_first, dropout=rnn.dropout, bidirectional=rnn.bidirectional, device=first.device,
        dtype=first.dtype, **kwargs,
    )  # fmt: skip
    new.load_state_dict(rnn.state_dict())
    new.train(rnn.training)
    return new
