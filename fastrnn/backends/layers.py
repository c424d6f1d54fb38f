"""The layer x direction loop of a network over packed rows, shared by both backends.

A network of several layers, two directions or variable lengths runs as packed rows
(``fastrnn.packing``).  What differs between the backends is how one direction of one
layer is computed (a NumPy loop, or a Numba kernel); how the layers and directions are
chained is the same maths for both, and lives here once:

- forward: layer ``l`` reads layer ``l - 1``'s output, its directions' states side by
  side (``layer_output``); each direction projects that input (``packed_projection``) and
  runs its recurrence (``direction_forward``);
- backward: from the top layer down, each direction's recurrence is run backwards
  (``direction_backward``), then its input gradients (``packed_input_backward``); the
  directions' gradients of the layer's input add up.

A backend passes its four direction functions as a ``DirectionOps``.  Every array here is
NumPy; nothing is compiled.  ``empty(name, shape, dtype)`` allocates (a workspace's, so that
a step of one shape allocates nothing after its first); the direction functions get it
with ``tag``, the suffix of their layer and direction (``params.layer_key("", layer,
reverse)``), to name their arrays apart.  The NumPy reference takes both and allocates its
own temporaries.

``between`` lets a front door act between layers (PyTorch's dropout on the outputs of every
layer but the last, in training): an object with ``forward(layer, output)``, what layer
``layer + 1`` reads instead of ``output`` (N, D * n_a), a new array (``output`` may be
the layer's own states, which stay as they are), and ``backward(layer, d_read)``,
dL/d(``output``) from dL/d(what was read).  The backward pass calls ``forward`` again for
the same layer and output, so it must give the same array again (a dropout mask drawn
once per step and kept).

``side_by_side`` lets a door run the recurrences of a layer's two directions at once, on
two threads: a function ``side_by_side(task, count)`` returning ``[task(0), ...,
task(count - 1)]`` (``parallel.run_shards``).  Only ``direction_forward`` and
``direction_backward`` go to it: two independent sequential loops, which one thread runs
on one core however many it has.  The projections and the input gradients, large products
that BLAS threads share out, stay on the calling thread, one after the other.  A task's
arrays come back to the calling thread, so ``empty`` must hand out memory that stays the
caller's (``workspace.ScratchArrays.bound``); the two directions ask for different names.
None (the default): one direction after the other.  The results are the same bits either
way: each direction's arithmetic is its own.
"""

import functools
from typing import NamedTuple

import numpy as np

from ..packing import final_states
from ..params import HIDDEN_NAMES, layer_key
from ..workspace import new_array


class DirectionOps(NamedTuple):
    """A backend's functions for one direction of one layer (``numpy_backend`` documents
    each; ``numba_backend`` has twins of the same names and arguments).  Each also takes
    the keywords ``empty`` and ``tag``."""

    packed_projection: object  # (layer_input, W_ax) -> z (N, n_a)
    direction_forward: object  # (z, a0, W_aa, b_a, batch_sizes, offsets, reverse, nonlinearity) -> H
    direction_backward: object  # (dH, H, a0, W_aa, ..., dH_is_scratch, H_is_scratch) -> dz, da0, dW_aa, db_a
    packed_input_backward: object  # (dz, layer_input, W_ax, ..., input_gradient) -> dW_ax, d_input or None


class Direction(NamedTuple):
    """One layer and direction of a network, as the loops below name it."""

    layer: int
    direction: int
    reverse: bool
    tag: str  # ``layer_key("", layer, reverse)``: the suffix of its arrays' names
    param_keys: tuple  # its W_ax, W_aa, b_a
    gradient_keys: tuple  # "d" + each


@functools.lru_cache(maxsize=64)
def network_directions(num_layers, directions):
    """``network_directions(L, D)[layer]``: the ``Direction``s of each layer, made once per
    architecture (the loops run at every call, and at small sizes the names cost as much
    as a direction's kernels)."""
    return tuple(
        tuple(
            Direction(
                layer,
                direction,
                direction == 1,
                layer_key("", layer, direction == 1),
                tuple(layer_key(name, layer, direction == 1) for name in HIDDEN_NAMES),
                tuple("d" + layer_key(name, layer, direction == 1) for name in HIDDEN_NAMES),
            )  # fmt: skip
            for direction in range(directions)
        )
        for layer in range(num_layers)
    )


def layer_output(layer_states, empty=None, name="output"):
    """A layer's directions' states side by side, (N, D * n_a): what the next layer reads
    (in ``empty(name, ...)``'s memory when given)."""
    if len(layer_states) == 1:
        return layer_states[0]
    if empty is None:
        return np.concatenate(layer_states, axis=1)
    first = layer_states[0]
    out = empty(name, (first.shape[0], len(layer_states) * first.shape[1]), first.dtype)
    return np.concatenate(layer_states, axis=1, out=out)


def network_forward(
    ops,
    inputs,
    a0,
    p,
    num_layers,
    directions,
    batch_sizes,
    offsets,
    nonlinearity,
    empty=new_array,
    between=None,
    side_by_side=None,
):
    """Every layer and direction of a network over packed rows.

    Parameters
    ----------
    ops : DirectionOps
        The backend's direction functions.
    inputs : ndarray
        Packed dense inputs (N, n_x), or one-hot indices (N,).
    a0 : ndarray, shape (num_layers * D, m, n_a)
        In the packing's sorted order.
    empty : callable
        The allocator (see the module).
    between : object or None
        What a front door does between layers (see the module).
    side_by_side : callable or None
        Runs a layer's directions' recurrences at once (see the module).

    Returns
    -------
    states : list of lists of ndarray
        ``states[layer][direction]``, (N, n_a) each.
    """
    states = []
    layer_input = inputs
    for layer, layer_directions in enumerate(network_directions(num_layers, directions)):
        zs = [ops.packed_projection(layer_input, p[d.param_keys[0]], empty=empty, tag=d.tag)
              for d in layer_directions]  # fmt: skip

        def recurrence(k, layer=layer, layer_directions=layer_directions, zs=zs):
            d = layer_directions[k]
            return ops.direction_forward(
                zs[k], a0[layer * directions + d.direction], p[d.param_keys[1]], p[d.param_keys[2]], batch_sizes,
                offsets, d.reverse, nonlinearity, empty=empty, tag=d.tag,
            )  # fmt: skip

        layer_states = _run_directions(recurrence, len(layer_directions), side_by_side)
        states.append(layer_states)
        if layer < num_layers - 1:
            layer_input = layer_output(layer_states, empty, f"output_l{layer}")
            if between is not None:
                layer_input = between.forward(layer, layer_input)
    return states


def network_backward(
    ops, d_top, inputs, a0, states, p, batch_sizes, offsets, nonlinearity, d_top_is_scratch=False,
    states_are_scratch=False, empty=new_array, between=None, d_final=None, last_rows=None, input_gradient=True,
    side_by_side=None,
):  # fmt: skip
    """Backpropagation through every layer and direction, from ``d_top`` (N, D * n_a),
    dL/d(the top layer's output) from outside the recurrences, and ``d_final`` (num_layers
    * D, m, n_a) when given: dL/d(the final states) from outside (PyTorch's ``h_n``), added
    at each sequence's last packed row ``last_rows`` (m,) for the forward direction and at
    step 0 for the reverse one (``packing.final_states``).

    ``d_top_is_scratch``: ``d_top`` may be overwritten; ``states_are_scratch``: so may
    ``states``, each after its last read (a layer's states are read by the layer above's
    gradients first, then by its own).  The NumPy reference ignores both.
    ``input_gradient`` False: no ``dx`` (the inputs need no gradient; one product fewer).
    ``side_by_side``: as ``network_forward``'s.

    Returns
    -------
    grads : dict
        ``"d" + key`` of every hidden-layer parameter, ``da0`` (num_layers * D, m, n_a),
        and ``dx`` (N, n_x) for dense inputs with ``input_gradient``.
    """
    num_layers, directions = len(states), len(states[0])
    n_a = a0.shape[-1]
    grads = {}
    da0 = empty("da0", a0.shape, a0.dtype)
    d_output = d_top
    if d_final is not None and not d_top_is_scratch:  # d_final is added into it
        d_output, d_top_is_scratch = empty("d_top", d_top.shape, d_top.dtype), True
        np.copyto(d_output, d_top)
    for layer_directions in reversed(network_directions(num_layers, directions)):
        layer = layer_directions[0].layer
        if d_final is not None:
            add_final_gradients(d_output, d_final, layer, directions, last_rows)
        layer_input = inputs if layer == 0 else layer_output(states[layer - 1], empty, f"output_l{layer - 1}")
        if between is not None and layer > 0:
            layer_input = between.forward(layer - 1, layer_input)

        def recurrence(k, layer=layer, layer_directions=layer_directions, d_output=d_output,
                       d_is_scratch=directions == 1 and d_top_is_scratch):  # fmt: skip
            d = layer_directions[k]
            d_states = (
                d_output[:, d.direction * n_a : (d.direction + 1) * n_a] if directions == 2 else d_output
            )
            index = layer * directions + d.direction
            # With one direction, d_output is the caller's d_top, or an array of this loop's own
            return ops.direction_backward(
                d_states, states[layer][d.direction], a0[index], p[d.param_keys[1]], batch_sizes, offsets, d.reverse,
                nonlinearity, dH_is_scratch=d_is_scratch, H_is_scratch=states_are_scratch, empty=empty, tag=d.tag,
            )  # fmt: skip

        recurrences = _run_directions(recurrence, len(layer_directions), side_by_side)
        d_top_is_scratch = True
        d_input = None
        for d, (dz, da0_direction, dW_aa, db_a) in zip(layer_directions, recurrences):
            da0[layer * directions + d.direction] = da0_direction
            dW_ax, d_part = ops.packed_input_backward(
                dz, layer_input, p[d.param_keys[0]], empty=empty, tag=d.tag,
                input_gradient=input_gradient or layer > 0,
            )  # fmt: skip
            grads.update(zip(d.gradient_keys, (dW_ax, dW_aa, db_a)))
            if d_part is not None:
                d_input = d_part if d_input is None else np.add(d_input, d_part, out=d_input)
        if between is not None and layer > 0:
            d_input = between.backward(layer - 1, d_input)
        d_output = d_input
    grads["da0"] = da0
    if d_output is not None:
        grads["dx"] = d_output
    return grads


def _run_directions(task, count, side_by_side):
    """``[task(0), ..., task(count - 1)]``: by ``side_by_side`` for a layer's two
    directions where a door gave it, else one after the other."""
    if side_by_side is None or count == 1:
        return [task(k) for k in range(count)]
    return side_by_side(task, count)


def add_final_gradients(d_output, d_final, layer, directions, last_rows):
    """dL/d(layer ``layer``'s final states) added into dL/d(its output) (N, D * n_a), in
    place: the forward direction's at each sequence's last row, the reverse one's at step 0."""
    n_a, m = d_final.shape[2], d_final.shape[1]
    for direction in range(directions):
        columns = slice(direction * n_a, (direction + 1) * n_a)
        if direction == 0:
            d_output[last_rows, columns] += d_final[layer * directions]  # distinct rows: no repeats
        else:
            d_output[:m, columns] += d_final[layer * directions + 1]


def network_top(states, last_rows, sequence_labels, empty=None):
    """What the output layer reads, C-contiguous: the top layer's output at every step
    (N, D * n_a), or for one label per sequence its final states side by side (m, D *
    n_a); in ``empty``'s memory when given."""
    if not sequence_labels:
        return np.ascontiguousarray(layer_output(states[-1], empty, "top"))
    top_layer = states[-1]
    shape = (len(top_layer), last_rows.size, top_layer[0].shape[1])
    finals = final_states(
        [top_layer], last_rows, None if empty is None else empty("top_finals", shape, top_layer[0].dtype)
    )
    return np.ascontiguousarray(layer_output(list(finals), empty, "top"))


def scatter_top(d_top_read, states, last_rows, sequence_labels, empty=new_array):
    """dL/d(the top layer's output) (N, D * n_a) from dL/d(what ``network_top`` read):
    itself at every step, or the final states' rows for one label per sequence."""
    if not sequence_labels:
        return d_top_read
    n_a = states[-1][0].shape[1]
    m = last_rows.size
    d_top = empty("d_top", (states[-1][0].shape[0], d_top_read.shape[1]), d_top_read.dtype)
    d_top[...] = 0
    d_top[last_rows, :n_a] = d_top_read[:, :n_a]  # the forward direction's last steps
    d_top[:m, n_a:] = d_top_read[:, n_a:]  # the reverse direction's step 0
    return d_top


class StepWeights(NamedTuple):
    """A network in one direction, laid out for running it one time step at a time (streams
    and generation, ``fastrnn.generation``): every weight transposed, so that a step's rows
    multiply from the left, and stacked by layer.  Made once by ``step_weights``; every
    array is a C-contiguous copy of the params' dtype (the params may change after)."""

    W_ax_T: np.ndarray  # (n_x, n_a): layer 0's W_ax.T; row s is the projection of symbol s
    W_ax_T_upper: np.ndarray  # (num_layers - 1, n_a, n_a): the W_ax.T of the layers above
    W_aa_T: np.ndarray  # (num_layers, n_a, n_a)
    b_a: np.ndarray  # (num_layers, n_a)
    W_ya_T: np.ndarray  # (n_a, n_y)
    b_y: np.ndarray  # (n_y,)


def step_weights(p, num_layers):
    """``StepWeights`` of checked params ``p`` of ``num_layers`` layers in one direction."""
    n_a = p["W_aa"].shape[0]
    copy = functools.partial(np.array, dtype=p["W_aa"].dtype, order="C")
    upper = [p[layer_key("W_ax", layer, False)].T for layer in range(1, num_layers)]
    return StepWeights(
        W_ax_T=copy(p["W_ax"].T),
        W_ax_T_upper=copy(upper) if upper else np.zeros((0, n_a, n_a), p["W_aa"].dtype),
        W_aa_T=copy([p[layer_key("W_aa", layer, False)].T for layer in range(num_layers)]),
        b_a=copy([p[layer_key("b_a", layer, False)][:, 0] for layer in range(num_layers)]),
        W_ya_T=copy(p["W_ya"].T),
        b_y=copy(p["b_y"][:, 0]),
    )
