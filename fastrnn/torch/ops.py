"""fastrnn's recurrence for PyTorch: its forward and backward passes on tensors, as
PyTorch operators and as an autograd function.

- ``forward_impl(input, hx, weights, batch_sizes, dropout_masks, ...) -> (output, h_n,
  lower)`` runs ``engine.recurrence.forward``; ``backward_impl`` runs
  ``engine.recurrence.backward`` for the gradients of ``output`` and ``h_n``.
- ``rnn_op`` (``torch.ops.fastrnn.rnn``) and ``rnn_backward_op``
  (``torch.ops.fastrnn.rnn_backward``) are the two as ``torch.library.custom_op`` operators, each
  with a fake implementation that gives its results' shapes, the second registered as the
  first's autograd formula: what ``torch.compile`` traces (no graph break) and
  ``torch.library.opcheck`` checks.
- ``rnn`` is what the module calls: the operator under ``torch.compile``, else
  ``_RNNFunction``, a ``torch.autograd.Function`` over the same two functions, cheaper to
  dispatch, or for the smallest one-layer calls ``_OneLayerFunction``, over the engine's
  one-direction functions that the first reaches for one layer.  None can be
  differentiated twice.

The tensors share memory with the arrays the kernels read and write (``Tensor.numpy()``,
``torch.from_numpy``): nothing is copied on the way in or out.  ``input`` is packed rows
(N, n_x) with ``batch_sizes`` (a ``PackedSequence``'s), or time-major (T, m, n_x) with
``batch_sizes`` None (every sequence T steps long, whose rows are already packed), and
C-contiguous either way; ``hx`` (num_layers * D, m, n_a) is in the rows' sorted order
(``rnn`` also takes None, for zeros);
``weights`` is ``nn.RNN``'s ``_flat_weights`` (per layer, per direction: ``weight_ih``,
``weight_hh`` and, with ``has_biases``, ``bias_ih`` and ``bias_hh``); ``workers`` is the
module's (0 for None).  ``lower`` holds the lower layers' states ((num_layers - 1) * D, N,
n_a), what the backward pass reads again; the top layer's are ``output`` itself.  The
module (``fastrnn.torch.RNN``) checks every argument before it calls these (the kernels
trust shapes).
"""

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import backends, packing, parallel
from ..engine import recurrence
from ..params import layer_key
from ..workspace import ScratchArrays

Tensor = torch.Tensor


def _array(tensor):
    """The ndarray that shares ``tensor``'s memory."""
    return tensor.detach().numpy()


def _params(weights, num_layers, directions, has_biases):
    """The kernels' params dict from ``nn.RNN``'s flat weights: ``W_ax``, ``W_aa`` and one
    ``b_a`` (n_a, 1), the sum of PyTorch's two biases (zero without them)."""
    per = 4 if has_biases else 2
    p = {}
    for layer in range(num_layers):
        for direction in range(directions):
            group = weights[(layer * directions + direction) * per :][:per]
            reverse = direction == 1
            # (a weight made non-contiguous in place, e.g. through .data, is copied for the kernels)
            w_ih, w_hh = np.ascontiguousarray(_array(group[0])), np.ascontiguousarray(_array(group[1]))
            p[layer_key("W_ax", layer, reverse)] = w_ih
            p[layer_key("W_aa", layer, reverse)] = w_hh
            if has_biases:
                b_a = np.add(_array(group[2]), _array(group[3]))
            else:
                b_a = np.zeros(w_hh.shape[0], dtype=w_hh.dtype)
            p[layer_key("b_a", layer, reverse)] = b_a.reshape(-1, 1)
    return p


def _rows(input, batch_sizes, m):
    """``input`` as packed rows (N, n_x), and their ``packing.Rows``."""
    if batch_sizes is None:
        T = input.shape[0]
        return _array(input).reshape(T * m, input.shape[2]), packing.full_rows(T, m)
    return _array(input), packing.rows_of_batch_sizes(np.asarray(_array(batch_sizes), dtype=np.intp), m)


class Dropout:
    """Between layers (``backends.layers``): each layer but the last's output times its
    mask (drawn by the module with PyTorch's generator, already scaled by 1 / (1 - p))."""

    def __init__(self, masks):
        self.masks = masks  # (num_layers - 1, N, D * n_a)

    def forward(self, layer, output):
        return np.multiply(output, self.masks[layer])

    def backward(self, layer, d_read):
        return np.multiply(d_read, self.masks[layer])


def _between(dropout_masks):
    return None if dropout_masks is None else Dropout(_array(dropout_masks))


def _matmul_into(a, b, out):
    """``out = a @ b`` by PyTorch (its BLAS, on its threads)."""
    torch.mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))


def _matmul_transposed_into(a, b, out):
    """``out = a.T @ b`` by PyTorch."""
    torch.mm(torch.from_numpy(a).t(), torch.from_numpy(b), out=torch.from_numpy(out))


def _add_matmul_into(a, b, out):
    """``out += a @ b`` by PyTorch, in place (its BLAS adds into ``out``: no scratch)."""
    torch.from_numpy(out).addmm_(torch.from_numpy(a), torch.from_numpy(b))


_DIRECTION_OPS = {}


def _direction_ops(impl, run):
    """The direction functions the door runs on the plan ``run``: the Numba backend's with
    PyTorch's matrix products, so that the products outside the recurrence (input
    projections, weight and input gradients) run on PyTorch's threads, which a training
    loop keeps busy anyway, and never beside them (docs/pytorch.md, "Threads").  On one
    shard, so do the recurrences' own products where they are large enough
    (``numba_backend.STEP_PRODUCT_MULTIPLY_ADDS``); shards make theirs in their kernels.
    Where every product is too small for threads (``run.blas_threads`` None), the kernels'
    own: a call into PyTorch costs more than such a product.  The NumPy reference as it is."""
    if not hasattr(impl, "direction_ops") or run.blas_threads is None:
        return impl.DIRECTION_OPS
    key = (impl.NAME, run.shards == 1)
    if key not in _DIRECTION_OPS:
        steps = _add_matmul_into if run.shards == 1 else None
        _DIRECTION_OPS[key] = impl.direction_ops(impl.Products(_matmul_into, _matmul_transposed_into, steps))
    return _DIRECTION_OPS[key]


#: Multiply-adds of one direction's recurrence (its rows times n_a times n_a) from which a
#: bidirectional layer's two directions run side by side (``_side_by_side``).  A PyTorch
#: training step, side by side against one after the other, alternating in one process,
#: float64 / float32 (docs/pytorch.md, "Threads"): at 4.2 and 6.6 million a direction
#: 1.10x / 1.07x and 1.16x / 1.09x faster, at the char-rnn size (33.6 million) 1.14x /
#: 1.16x; at about 1 million 0.96x to 1.03x, and at the tiny size (25,600) 0.71x to 0.83x.
SIDE_BY_SIDE_MULTIPLY_ADDS = 2_000_000


def _side_by_side(impl, workers, run, inputs, hx, directions):
    """What runs a bidirectional layer's two directions at once (``layers.network_forward``),
    or None for one after the other.

    Side by side: the calling thread and one of fastrnn's pool, where the call is the
    door's default plan (``workers`` left out: one shard), PyTorch's thread setting allows
    two threads, the recurrences run in the kernels (not step by step on PyTorch's
    threads, ``numba_backend.STEP_PRODUCT_MULTIPLY_ADDS``), and each is long enough
    (``SIDE_BY_SIDE_MULTIPLY_ADDS``) to be worth a second thread beside PyTorch's spinning
    ones.  The recurrences' own products (the gradient of ``W_aa``) stay PyTorch's, called
    from each task's thread: made by the kernels' BLAS there instead, a step was 0.88x to
    0.94x as fast as one direction after the other.  The products outside the
    recurrences are the calling thread's, before and after."""
    if directions == 1 or workers or run.shards != 1 or not hasattr(impl, "direction_ops"):
        return None
    N, m, n_a = inputs.shape[0], hx.shape[1], hx.shape[2]
    if N * n_a * n_a < SIDE_BY_SIDE_MULTIPLY_ADDS:
        return None
    if m * n_a * n_a >= impl.STEP_PRODUCT_MULTIPLY_ADDS[hx.element_size()]:
        return None
    if torch.get_num_threads() < 2 or parallel.available_cores() < 2:
        return None
    return _run_side_by_side


def _run_side_by_side(task, count):
    """``[task(0), ..., task(count - 1)]`` on the calling thread and a pool thread."""
    return parallel.run_shards(task, count, count)


#: The arrays a pass makes and drops, which no result is a view of: the backward pass's
#: ``dz`` of every layer and direction, the top layer's output gradient plus ``h_n``'s, the
#: gradients of the layers' inputs above the first, the top layer's directions made
#: contiguous; and in both passes, a lower layer's directions side by side as the next
#: layer reads them.  Their memory is kept by each thread and reused by the next pass, not
#: new pages every step (``workspace.ScratchArrays``: ``dz`` alone cost 1.1 ms of a 10 ms
#: char-rnn step in float64; the others, 1.15x of a 2-layer bidirectional one).
_SCRATCH = ScratchArrays(("dz", "d_top", "output_l", "d_input_l", "top_states"))

#: The backend whose kernels the one-layer lane calls (``_one_layer_lane``).
_NUMBA_NAME = "numba"


def _plan(impl, workers, inputs, hx, num_layers, directions):
    """The call's ``parallel.Plan`` (``engine.recurrence.plan``; ``workers`` 0: None)."""
    m, n_a = hx.shape[1], hx.shape[2]
    return recurrence.plan(
        workers or None, m, inputs.shape[0], inputs.shape[1], n_a, num_layers, directions, impl.NAME
    )


def forward_impl(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    batch_sizes: Tensor | None,
    dropout_masks: Tensor | None,
    num_layers: int,
    bidirectional: bool,
    has_biases: bool,
    nonlinearity: str,
    backend: str,
    workers: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The forward pass: ``(output, h_n, lower)`` (see the module)."""
    p = _params(weights, num_layers, 2 if bidirectional else 1, has_biases)
    return _forward(
        p, input, hx, batch_sizes, dropout_masks, num_layers, bidirectional, has_biases, nonlinearity, backend,
        workers,
    )[0]  # fmt: skip


class _Pass:
    """What a forward pass ran on, as the kernels take it: its backward pass runs on the
    same (the eager path keeps it, rather than making it again from the saved tensors:
    9.8 us a backward pass at the tiny size)."""

    __slots__ = ("impl", "plan", "inputs", "rows", "a0", "between", "side_by_side", "ops", "output", "lower")

    def __init__(self, input, hx, batch_sizes, dropout_masks, num_layers, directions, backend, workers):
        self.inputs, self.rows = _rows(input, batch_sizes, hx.shape[1])
        self.impl = backends.resolve(backend)
        self.plan = _plan(self.impl, workers, self.inputs, hx, num_layers, directions)
        self.a0 = _array(hx)
        self.between = _between(dropout_masks)
        self.side_by_side = _side_by_side(self.impl, workers, self.plan, self.inputs, hx, directions)
        self.ops = _direction_ops(self.impl, self.plan)
        self.output = self.lower = None  # the forward pass's results, as arrays (N, D * n_a) and lower

    def scratch(self):
        """The pass's allocator: the calling thread's scratch memory, bound to it where the
        directions run side by side (the pool thread's arrays come back to this one)."""
        return _SCRATCH.empty if self.side_by_side is None else _SCRATCH.bound()


def _forward(
    p, input, hx, batch_sizes, dropout_masks, num_layers, bidirectional, has_biases, nonlinearity, backend, workers
):  # fmt: skip
    """``forward_impl`` on the kernels' params ``p`` (``_params``) instead of ``weights``:
    ``((output, h_n, lower), call)``, ``call`` the ``_Pass`` for the backward pass."""
    directions = 2 if bidirectional else 1
    call = _Pass(input, hx, batch_sizes, dropout_masks, num_layers, directions, backend, workers)
    call.output, final, call.lower = recurrence.forward(
        call.impl, call.plan, call.inputs, call.a0, p, num_layers, directions, call.rows, nonlinearity,
        call.between, call.ops, call.scratch(), call.side_by_side,
    )  # fmt: skip
    output = torch.from_numpy(call.output)
    if batch_sizes is None:
        output = output.view(input.shape[0], hx.shape[1], directions * hx.shape[2])
    return (output, torch.from_numpy(final), torch.from_numpy(call.lower)), call


#: ``forward_impl`` as a PyTorch operator (its schema read from the annotations).
rnn_op = torch.library.custom_op("fastrnn::rnn", forward_impl, mutates_args=(), device_types="cpu")


@rnn_op.register_fake
def _(input, hx, weights, batch_sizes, dropout_masks, num_layers, bidirectional, has_biases, nonlinearity,
      backend, workers):  # fmt: skip
    directions = 2 if bidirectional else 1
    n_a = hx.shape[2]
    N = input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]
    output_shape = input.shape[:-1] + (directions * n_a,)
    return (
        input.new_empty(output_shape),
        hx.new_empty(hx.shape),
        input.new_empty(((num_layers - 1) * directions, N, n_a)),
    )


def backward_impl(
    grad_output: Tensor | None,
    grad_h_n: Tensor | None,
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    batch_sizes: Tensor | None,
    dropout_masks: Tensor | None,
    output: Tensor,
    lower: Tensor,
    num_layers: int,
    bidirectional: bool,
    has_biases: bool,
    nonlinearity: str,
    backend: str,
    workers: int,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """The gradients of ``input``, ``hx`` and every weight, for those of ``output`` and
    ``h_n`` (C-contiguous, as ``rnn``'s results)."""
    directions = 2 if bidirectional else 1
    call = _Pass(input, hx, batch_sizes, dropout_masks, num_layers, directions, backend, workers)
    call.output = _array(output).reshape(call.inputs.shape[0], -1)
    call.lower = _array(lower)
    p = _params(weights, num_layers, directions, has_biases)
    return _backward(
        call, p, grad_output, grad_h_n, input.shape, num_layers, directions, has_biases, nonlinearity
    )


def _backward(
    call, p, grad_output, grad_h_n, input_shape, num_layers, directions, has_biases, nonlinearity,
    input_gradient=True,
):  # fmt: skip
    """``backward_impl`` on the forward pass's ``_Pass`` and params ``p``.  ``input_gradient``
    False: the input needs no gradient (``ctx.needs_input_grad``, as ``nn.RNN``'s backward
    skips it), so its product is not made and ``d_input`` is None."""
    d_output = None if grad_output is None else _array(grad_output).reshape(call.output.shape)
    grads = recurrence.backward(
        call.impl, call.plan, d_output, None if grad_h_n is None else _array(grad_h_n), call.inputs, call.a0,
        call.output, call.lower, p, call.rows, nonlinearity, call.between, call.ops, call.scratch(),
        input_gradient=input_gradient, side_by_side=call.side_by_side,
    )  # fmt: skip
    return _gradient_tensors(grads, input_shape, num_layers, directions, has_biases, input_gradient)


def _gradient_tensors(grads, input_shape, num_layers, directions, has_biases, input_gradient):
    """``(d_input, d_hx, d_weights)`` as tensors from the engine's ``grads`` (sharing their
    memory), ``d_weights`` in the order of ``nn.RNN``'s flat weights."""
    d_weights = []
    for layer in range(num_layers):
        for direction in range(directions):
            reverse = direction == 1
            d_weights.append(torch.from_numpy(grads["d" + layer_key("W_ax", layer, reverse)]))
            d_weights.append(torch.from_numpy(grads["d" + layer_key("W_aa", layer, reverse)]))
            if has_biases:
                db_a = grads["d" + layer_key("b_a", layer, reverse)].reshape(-1)
                d_weights.append(torch.from_numpy(db_a))  # both biases get dL/db_a
                d_weights.append(torch.from_numpy(db_a.copy()))
    d_input = torch.from_numpy(grads["dx"]).view(input_shape) if input_gradient else None
    return d_input, torch.from_numpy(grads["da0"]), d_weights


#: ``backward_impl`` as a PyTorch operator.
rnn_backward_op = torch.library.custom_op(
    "fastrnn::rnn_backward", backward_impl, mutates_args=(), device_types="cpu"
)


@rnn_backward_op.register_fake
def _(grad_output, grad_h_n, input, hx, weights, batch_sizes, dropout_masks, output, lower, num_layers,
      bidirectional, has_biases, nonlinearity, backend, workers):  # fmt: skip
    return input.new_empty(input.shape), hx.new_empty(hx.shape), [w.new_empty(w.shape) for w in weights]


def _setup_context(ctx, inputs, output):
    input, hx, weights, batch_sizes, dropout_masks, *settings = inputs
    out, _, lower = output
    ctx.settings = settings
    ctx.n_weights = len(weights)
    ctx.has_batch_sizes = batch_sizes is not None
    ctx.has_masks = dropout_masks is not None
    saved = [input, hx, out, lower, *weights]
    saved += [batch_sizes] if batch_sizes is not None else []
    saved += [dropout_masks] if dropout_masks is not None else []
    ctx.save_for_backward(*saved)  # PyTorch's version counters: in-place changes are its usual error


def _contiguous(grad):
    """A result's gradient as the kernels read it; None (zero) stays None: the autograd
    engine gives None for an unused result (``set_materialize_grads(False)``), which the
    kernels skip."""
    return None if grad is None else grad.contiguous()


def _gradients(ctx, grad_output, grad_h_n, backward):
    """The gradients of ``rnn``'s inputs, by ``backward`` (``backward_impl`` or its
    operator), for those of its results."""
    saved = list(ctx.saved_tensors)
    input, hx, out, lower = saved[:4]
    weights = saved[4 : 4 + ctx.n_weights]
    rest = saved[4 + ctx.n_weights :]
    batch_sizes = rest.pop(0) if ctx.has_batch_sizes else None
    dropout_masks = rest.pop(0) if ctx.has_masks else None
    d_input, d_hx, d_weights = backward(
        _contiguous(grad_output), _contiguous(grad_h_n), input, hx, weights, batch_sizes, dropout_masks, out, lower,
        *ctx.settings,
    )  # fmt: skip
    return d_input, d_hx, list(d_weights)


def _op_backward(ctx, grad_output, grad_h_n, grad_lower):
    # input, hx and the weights; none for batch_sizes, the masks and the six settings
    return *_gradients(ctx, grad_output, grad_h_n, rnn_backward_op), *(None,) * 8


rnn_op.register_autograd(_op_backward, setup_context=_setup_context)


class _RNNFunction(torch.autograd.Function):
    """``rnn_op``'s autograd without the operator: what eager calls run.  The operator's
    Python dispatch (its schema's defaults and pytree flattening, twice per step) added
    0.22 ms to a forward and backward pass at the tiny size (0.54 against 0.32 ms through
    this function), more than the kernels' whole work there.  Under ``torch.compile`` the
    operator runs instead (``rnn``), which the compiler traces without a graph break."""

    @staticmethod
    def forward(ctx, input, hx, batch_sizes, dropout_masks, settings, *weights):
        # (forward with ctx, not setup_context: Function.apply then binds no signature, 30 us saved)
        num_layers, bidirectional, has_biases = settings[:3]
        # The kernels' params, kept for the backward pass rather than built again from the
        # weights (views of them, and the biases' sum: 7 us a pass at the tiny size).  An
        # in-place change to a weight before backward is still PyTorch's error: the weights
        # are saved tensors, whose version counters are checked before these are used.
        ctx.params = _params(weights, num_layers, 2 if bidirectional else 1, has_biases)
        # The same for the arrays the forward pass ran on (``_Pass``): views of saved
        # tensors, used only after ``ctx.saved_tensors`` has checked their versions.
        output, ctx.call = _forward(ctx.params, input, hx, batch_sizes, dropout_masks, *settings)
        ctx.input_shape = input.shape
        _setup_context(ctx, (input, hx, weights, batch_sizes, dropout_masks, *settings), output)
        ctx.mark_non_differentiable(output[2])
        ctx.set_materialize_grads(False)  # None for an unused result: no gradient to add
        return output

    @staticmethod
    @once_differentiable  # no double backward: differentiating these gradients is PyTorch's clear error
    def backward(ctx, grad_output, grad_h_n, grad_lower):
        ctx.saved_tensors  # noqa: B018 (PyTorch's error for a saved tensor changed in place since forward)
        num_layers, bidirectional, has_biases, nonlinearity = ctx.settings[:4]
        d_input, d_hx, d_weights = _backward(
            ctx.call, ctx.params, _contiguous(grad_output), _contiguous(grad_h_n), ctx.input_shape, num_layers,
            2 if bidirectional else 1, has_biases, nonlinearity, ctx.needs_input_grad[0],
        )  # fmt: skip
        return d_input, d_hx, None, None, None, *d_weights


class _OneLayerFunction(torch.autograd.Function):
    """``_RNNFunction`` for the smallest calls (``_one_layer_lane``): the same engine
    functions on the same arrays (``recurrence.one_direction_forward`` and
    ``one_direction_backward``, which ``_RNNFunction`` reaches through the general pass),
    so the same results to the bit, without that pass's bookkeeping (the pass object,
    its plan, its threads and allocator, every layer's names): a training step at the
    tiny size 1.08x faster (docs/pytorch.md, "How it plugs into PyTorch")."""

    @staticmethod
    def forward(ctx, input, hx, nonlinearity, *weights):
        T, m = input.shape[:2]
        n_a = weights[1].shape[0]
        ctx.nonlinearity, ctx.input_shape = nonlinearity, input.shape
        ctx.inputs, ctx.rows = _rows(input, None, m)
        # hx None (the module's, for none given): zeros without a tensor of them
        ctx.a0 = np.zeros((1, m, n_a), dtype=ctx.inputs.dtype) if hx is None else _array(hx)
        # The kernels' params and arrays, kept for the backward pass (views of saved
        # tensors, used only after ``ctx.saved_tensors`` has checked their versions).
        ctx.has_biases = len(weights) == 4
        ctx.params = _params(weights, 1, 1, ctx.has_biases)
        ctx.ops = backends.resolve(_NUMBA_NAME).DIRECTION_OPS
        ctx.output, final, _ = recurrence.one_direction_forward(
            ctx.ops, ctx.inputs, ctx.a0, ctx.params, ctx.rows, nonlinearity
        )
        output = torch.from_numpy(ctx.output).view(T, m, n_a)
        ctx.save_for_backward(input, hx, output, *weights)
        ctx.set_materialize_grads(False)
        return output, torch.from_numpy(final)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_h_n):
        ctx.saved_tensors  # noqa: B018 (as _RNNFunction.backward)
        if grad_output is None:
            d_output, d_is_scratch = np.zeros_like(ctx.output), True
        else:
            d_output, d_is_scratch = _array(grad_output.contiguous()).reshape(ctx.output.shape), False
        input_gradient = ctx.needs_input_grad[0]
        grads = recurrence.one_direction_backward(
            ctx.ops, d_output, None if grad_h_n is None else _array(grad_h_n.contiguous()),
            ctx.inputs, ctx.a0, ctx.output, ctx.params, ctx.rows, ctx.nonlinearity, d_is_scratch, _SCRATCH.empty,
            input_gradient,
        )  # fmt: skip
        d_input, d_hx, d_weights = _gradient_tensors(
            grads, ctx.input_shape, 1, 1, ctx.has_biases, input_gradient
        )
        return d_input, d_hx if ctx.needs_input_grad[1] else None, None, *d_weights


def _one_layer_lane(input, batch_sizes, num_layers, bidirectional, backend, workers, n_a):
    """Whether a call takes ``_OneLayerFunction``: one layer in one direction on a
    time-major tensor (its rows all full-length), by the Numba backend, on a plan that runs
    everything on this thread in the kernels (``recurrence.plan``'s default where every
    product is too small for BLAS threads: no ``workers``, no PyTorch products)."""
    if num_layers != 1 or bidirectional or batch_sizes is not None or backend != _NUMBA_NAME or workers:
        return False
    T, m, n_x = input.shape
    return recurrence.plan(None, m, T * m, n_x, n_a, 1, 1, backend).blas_threads is None


def rnn(input, hx, weights, batch_sizes, dropout_masks, num_layers, bidirectional, has_biases, nonlinearity,
        backend, workers):  # fmt: skip
    """``(output, h_n)`` of fastrnn's recurrence with PyTorch's autograd: ``rnn_op`` under
    ``torch.compile``, the same functions through ``_RNNFunction`` in eager mode (or
    ``_OneLayerFunction``, where ``_one_layer_lane`` allows).  ``hx`` None: zeros."""
    n_a = weights[1].shape[0]  # weight_hh_l0 (H, H)
    compiling = torch.compiler.is_compiling()
    lane = not compiling and _one_layer_lane(
        input, batch_sizes, num_layers, bidirectional, backend, workers, n_a
    )
    if lane:
        return _OneLayerFunction.apply(input, hx, nonlinearity, *weights)
    if hx is None:
        m = input.shape[1] if batch_sizes is None else int(batch_sizes[0])
        hx = input.new_zeros(((2 if bidirectional else 1) * num_layers, m, n_a))
    settings = (num_layers, bidirectional, has_biases, nonlinearity, backend, workers)
    if compiling:
        output, h_n, _ = rnn_op(input, hx, weights, batch_sizes, dropout_masks, *settings)
    else:
        output, h_n, _ = _RNNFunction.apply(input, hx, batch_sizes, dropout_masks, settings, *weights)
    return output, h_n
