"""``fastrnn.torch.RNN``: ``torch.nn.RNN`` whose CPU forward and backward are fastrnn's.

It *is* an ``nn.RNN`` (a subclass): the same constructor, parameters, initialisation,
argument checks and errors, ``state_dict``, ``repr``, pickling.  Only the computation
differs: where ``nn.RNN.forward`` calls ATen's per-step loop, this one calls
``torch.ops.fastrnn.rnn`` (``ops``), fastrnn's kernels over packed rows; ``forward`` is
``nn.RNN.forward``'s own steps otherwise, in the same order, so that every shape and every
error is PyTorch's.

What the kernels cannot run (a device other than the CPU, a dtype other than float32 and
float64, tensor subclasses, empty batches, weights of another dtype than the input)
runs PyTorch's own path for that call, after a one-time warning (``fallback=False``: a
``RuntimeError`` instead).
"""

import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .. import backends, parallel
from . import ops

_KERNEL_DTYPES = (torch.float32, torch.float64)
_PYTORCH_ERROR = "PyTorch's own error"
_warned = set()


class RNN(nn.RNN):
    """``torch.nn.RNN``, run by fastrnn's kernels on the CPU.

    Parameters
    ----------
    input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, dropout, bidirectional, device, dtype
        As ``torch.nn.RNN``'s, checked the same way; the parameters are made and
        initialised by ``nn.RNN`` itself (the same draws for the same ``torch.manual_seed``).
    fallback : bool, default True
        What the kernels cannot run (see the module) runs PyTorch's own path, after a
        warning given once per reason; False makes it a ``RuntimeError``.
    workers : int or None
        None: the kernels run on the calling thread, within any ``torch.set_num_threads``
        (PyTorch's own threads, spinning after its operators, would only compete with more:
        see docs/pytorch.md, "Threads"), except that a bidirectional layer large enough
        runs its two directions' recurrences on the calling thread and one of fastrnn's
        pool at once where ``torch.get_num_threads()`` is 2 or more.  An int (or -1, every
        core): that many shards of whole sequences, run by fastrnn's thread pool; 1 runs
        everything on the calling thread.
    backend : {"numba", "numpy"} or None
        fastrnn's backend (None: ``fastrnn``'s default, ``FASTRNN_BACKEND``).

    Notes
    -----
    Dropout between layers (``dropout > 0``, training mode) draws its masks with PyTorch's
    generator, so ``torch.manual_seed`` decides them, but not the way ``nn.RNN`` draws its
    own: the masks differ from ``nn.RNN``'s for the same seed.  There is no double backward.
    """

    def __init__(self, *args, fallback=True, workers=None, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        if workers is not None:
            parallel.check_workers(workers)
        self.fallback = bool(fallback)
        self.workers = workers
        self.backend = backends.resolve(backend).NAME
        self._expected_shapes = self._weight_shapes()

    def flatten_parameters(self):
        """Nothing to do: the kernels read the parameters where they are (``nn.RNN``'s does
        something only for cuDNN)."""

    def _update_flat_weights(self):
        """``nn.RNN``'s, after a cheaper check first: where every flat weight is the very
        ``Parameter`` the module holds under its name (the usual case, at every call),
        nothing has changed.  Otherwise (a weight reassigned, deleted, parametrized, or
        swapped in by ``torch.func.functional_call``) PyTorch's own check and refresh run.
        PyTorch's compares weak references through ``getattr``, 5 us of a 90 us forward pass
        at the tiny size; this, 0.5 us."""
        parameters = self._parameters
        for weight, name in zip(self._flat_weights, self._flat_weights_names):
            if parameters.get(name) is not weight:
                super()._update_flat_weights()
                return

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"

    def forward(self, input, hx=None):
        """As ``torch.nn.RNN.forward``: ``(output, h_n)``, for a tensor (time-major (L, N,
        H_in), ``batch_first`` (N, L, H_in), or unbatched (L, H_in)) or a
        ``PackedSequence``, and ``hx`` (num_layers * D, N, H) or None (zeros)."""
        self._update_flat_weights()
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0]) if batch_sizes.numel() else 0
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = unsorted_indices = None
        if hx is None:
            # nn.RNN's zeros would pass its check of the state: only the input's is left.
            # The kernels get None (ops.rnn makes zeros where it needs a tensor: not in
            # the one-layer lane, where that tensor was 2.5% of the tiny training step).
            self.check_input(input, batch_sizes)
        else:
            hx = self.permute_hidden(hx, sorted_indices)
            self.check_forward_args(input, hx, batch_sizes)

        reason = self._unsupported(input, hx)
        if reason is None:
            output, hidden = self._fastrnn(input, hx, batch_sizes)
        else:
            if reason is not _PYTORCH_ERROR:
                self._fall_back(reason)
            if hx is None:
                hx = self._zero_state(input, max_batch_size)
            output, hidden = self._pytorch(input, hx, batch_sizes)

        if isinstance(orig_input, PackedSequence):
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
                hidden, unsorted_indices
            )
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)

    def _zero_state(self, input, max_batch_size):
        """The zeros (num_layers * D, N, H) that ``nn.RNN`` starts from without ``hx``."""
        num_directions = 2 if self.bidirectional else 1
        shape = (self.num_layers * num_directions, max_batch_size, self.hidden_size)
        return torch.zeros(shape, dtype=input.dtype, device=input.device)

    # -- the two paths ----------------------------------------------------------------------

    def _fastrnn(self, input, hx, batch_sizes):
        """``(output, h_n)`` by fastrnn's kernels, in ``nn.RNN``'s layout (``batch_first``
        honoured; rows in the packed order for a ``PackedSequence``)."""
        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)  # the kernels run time-major: one copy below
        input = input.contiguous()
        if hx is not None:
            hx = hx.contiguous()
        if batch_sizes is not None:
            _check_batch_sizes(batch_sizes, input.shape[0])
        masks = self._dropout_masks(input, batch_sizes)
        output, h_n = ops.rnn(
            input, hx, self._flat_weights, batch_sizes, masks, self.num_layers, self.bidirectional, self.bias,
            self.nonlinearity, self.backend, self.workers or 0,
        )  # fmt: skip
        if batch_sizes is None and self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n

    def _pytorch(self, input, hx, batch_sizes):
        """``nn.RNN``'s own computation (``torch._VF``), for what the kernels cannot run."""
        run = torch._VF.rnn_tanh if self.nonlinearity == "tanh" else torch._VF.rnn_relu
        settings = (self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if batch_sizes is None:
            return run(input, hx, self._flat_weights, *settings, self.batch_first)
        return run(input, batch_sizes, hx, self._flat_weights, *settings)

    def _unsupported(self, input, hx):
        """Why the kernels cannot run this call, or None; ``_PYTORCH_ERROR`` for a call
        that PyTorch's path rejects with its own error (hx of another dtype)."""
        dtype = input.dtype
        for k, tensor in enumerate((input, hx, *self._flat_weights)):  # one pass: every call pays for it
            if tensor is None:  # no hx: zeros of the input's dtype and device
                continue
            if not tensor.is_cpu:  # (``is_cpu``: 0.05 us a tensor; ``device.type``, 0.3)
                return f"the tensors are on {tensor.device.type}"
            if tensor.dtype != dtype:
                return _PYTORCH_ERROR if dtype in _KERNEL_DTYPES else f"the dtype is {dtype}"
            if type(tensor) is not torch.Tensor and type(tensor) is not nn.Parameter:
                return f"{('the input', 'hx')[k] if k < 2 else 'a weight'} is a {type(tensor).__name__}"
        if dtype not in _KERNEL_DTYPES:
            return f"the dtype is {dtype} (fastrnn's kernels take float32 and float64)"
        if [tuple(w.shape) for w in self._flat_weights] != self._expected_shapes:
            return _PYTORCH_ERROR  # a parameter replaced by one of another shape: the kernels trust shapes
        if input.numel() == 0 or (hx is not None and hx.numel() == 0):
            return "the batch is empty"
        return None

    def _weight_shapes(self):
        """The shapes ``_flat_weights`` must have (per layer and direction: ``weight_ih``,
        ``weight_hh`` and the two biases): the kernels read them without checking."""
        H, directions = self.hidden_size, 2 if self.bidirectional else 1
        shapes = []
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else directions * H
            shapes += ([(H, width), (H, H)] + ([(H,), (H,)] if self.bias else [])) * directions
        return shapes

    def _fall_back(self, reason):
        if not self.fallback:
            raise RuntimeError(f"fastrnn.torch.RNN cannot run this call ({reason}) and fallback=False")
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(
                f"fastrnn.torch.RNN runs PyTorch's own RNN for this call: {reason} "
                f"(warned once; fallback=False makes it an error)",
                RuntimeWarning,
                stacklevel=4,
            )

    def _dropout_masks(self, input, batch_sizes):
        """Masks (num_layers - 1, N, D * H) for the outputs of every layer but the last, in
        training with ``dropout > 0``, drawn by PyTorch's generator; else None."""
        if not (self.training and self.dropout > 0 and self.num_layers > 1):
            return None
        rows = input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]
        width = (2 if self.bidirectional else 1) * self.hidden_size
        keep = 1.0 - self.dropout
        masks = torch.empty((self.num_layers - 1, rows, width), dtype=input.dtype)
        if keep == 0:
            return masks.zero_()
        return masks.bernoulli_(keep).div_(keep)


def _check_batch_sizes(batch_sizes, rows):
    """A ``PackedSequence``'s ``batch_sizes`` checked before a kernel trusts it: a 1-D
    integer CPU tensor, positive, non-increasing, summing to the data's rows."""
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        raise RuntimeError(
            f"batch_sizes must be a 1-D int64 CPU tensor, got {batch_sizes.dtype} {tuple(batch_sizes.shape)}"
        )
    if batch_sizes.numel() == 0 or int(batch_sizes.min()) <= 0:
        raise RuntimeError("batch_sizes must hold positive batch sizes")
    if batch_sizes.numel() > 1 and bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise RuntimeError("batch_sizes must be non-increasing (a PackedSequence's)")
    if int(batch_sizes.sum()) != rows:
        raise RuntimeError(
            f"batch_sizes sum to {int(batch_sizes.sum())}, but the packed data has {rows} rows"
        )
