"""The parameter-key schema: which keys a network's params dict has, and what they mean.

One place for the names that every layer of fastrnn reads a params dict by: the API and
the model, the backends, the optimizers and the distributed step.

- The seed's network (one layer, one direction) has ``W_ax``, ``W_aa``, ``b_a`` (the hidden
  layer) and ``W_ya``, ``b_y`` (the output layer): ``SINGLE_LAYER_NAMES``.
- Each further layer ``l`` has the hidden-layer names suffixed ``_l{l}``, and each reverse
  direction the suffix ``_reverse`` (``layer_key``): ``W_ax_l1_reverse`` is PyTorch's
  ``weight_ih_l1_reverse``.
- Gradients are keyed ``"d" + key`` (``gradient_names``).

The architecture is read from the keys (``architecture``): the layers are the ``W_aa``
keys without ``_reverse``, and the network is bidirectional when ``W_aa_reverse`` is
present.
"""

import re

#: The seed's network: one layer, one direction.
SINGLE_LAYER_NAMES = ("W_ax", "W_aa", "b_a", "W_ya", "b_y")
#: Each layer and direction has these, suffixed by ``layer_key``.
HIDDEN_NAMES = ("W_ax", "W_aa", "b_a")
#: The output layer, on the top layer's states.
OUTPUT_NAMES = ("W_ya", "b_y")


def layer_key(name, layer, reverse):
    """The key of a hidden-layer parameter: ``layer_key("W_ax", 1, True)`` is
    ``"W_ax_l1_reverse"``, ``layer_key("W_ax", 0, False)`` the seed's ``"W_ax"``."""
    return name + (f"_l{layer}" if layer else "") + ("_reverse" if reverse else "")


def param_names(num_layers=1, directions=1):
    """Every parameter key of a network, in canonical order: layer by layer, each layer's
    forward direction then its reverse one, then the output layer."""
    return (
        tuple(
            layer_key(name, layer, direction == 1)
            for layer in range(num_layers)
            for direction in range(directions)
            for name in HIDDEN_NAMES
        )
        + OUTPUT_NAMES
    )


def gradient_names(num_layers=1, directions=1):
    """The keys of every weight gradient of a network: ``"d" + key`` of ``param_names``."""
    return tuple("d" + name for name in param_names(num_layers, directions))


def is_single_layer(num_layers, directions):
    """Whether a network is one layer in one direction: the seed's network."""
    return num_layers == 1 and directions == 1


_LAYER_SUFFIX = re.compile(r"_l([1-9][0-9]*)(?:_reverse)?$")
_PARAM_NAME = re.compile(r"^(?:(?:W_ax|W_aa|b_a)(?:_l[1-9][0-9]*)?(?:_reverse)?|W_ya|b_y)$")


def is_param_name(name):
    """Whether ``name`` is a parameter key of some network (``layer_key``, ``W_ya``, ``b_y``)."""
    return isinstance(name, str) and _PARAM_NAME.match(name) is not None


def architecture(keys, owner="params", prefix=""):
    """``(num_layers, directions, names)`` read from a params dict's ``keys``, ``names``
    in canonical order; a ``ValueError`` naming the key when they are not one complete
    set.  ``owner`` and ``prefix`` say whose keys they are, for messages (``"grads"``,
    ``"d"``).

    The layers are the ``W_aa`` keys without ``_reverse`` (a skipped layer shows as a
    missing key); the network is bidirectional when ``W_aa_reverse`` is present.
    """
    keys = list(keys)
    not_str = [key for key in keys if not isinstance(key, str)]
    if not_str:
        raise ValueError(f"{owner} has a key that is not a parameter name: {not_str[0]!r}")
    num_layers = 1
    for key in keys:
        match = _LAYER_SUFFIX.search(key)
        if match and key.startswith(HIDDEN_NAMES):
            num_layers = max(num_layers, int(match.group(1)) + 1)
    directions = 2 if "W_aa_reverse" in keys else 1
    names = param_names(num_layers, directions)
    kind = f"a network of {num_layers} layer(s), {'bidirectional' if directions == 2 else 'one direction'},"
    missing = [name for name in names if name not in keys]
    if missing:
        raise ValueError(
            f"{owner} is missing {prefix}{missing[0]}: {kind} needs {', '.join(prefix + name for name in names)} "
            f"(see fastrnn.init_params)"
        )
    unexpected = [key for key in keys if key not in names]
    if unexpected:
        raise ValueError(
            f"{owner} has an unexpected key {prefix + unexpected[0]!r}: {kind} has exactly "
            f"{', '.join(prefix + name for name in names)}"
        )
    return num_layers, directions, names
