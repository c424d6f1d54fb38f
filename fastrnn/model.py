"""``fastrnn.RNN``: parameters, settings and a carried hidden state in one object."""

import json

import numpy as np

from . import api, backends, optim
from .checkpoints import (
    CHECKPOINT_FORMAT,
    NETWORK_CHECKPOINT_FORMAT,
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from .params import architecture, is_single_layer
from .validation import NONLINEARITIES, check_nonlinearity, check_params


def batch_inputs(inputs):
    """A batch's ``inputs`` as an array, whether they are one-hot indices (an integer array
    (m, T)) rather than dense ``x`` (n_x, m, T), and the batch size ``m`` (1 where the rank
    is wrong, which the API then reports)."""
    inputs = np.asarray(inputs)
    one_hot = inputs.ndim == 2 and inputs.dtype.kind in "iu"
    m = inputs.shape[0] if one_hot else (inputs.shape[1] if inputs.ndim == 3 else 1)
    return inputs, one_hot, m


class RNN:
    """A vanilla (Elman) RNN, tanh or ReLU, of one or more layers, in one direction or
    both, with a softmax output layer.

    Parameters
    ----------
    n_x, n_a, n_y : int
        Input, hidden and output sizes.
    num_layers : int
        Stacked layers (``fastrnn.init_params``).
    bidirectional : bool
        Every layer also runs each sequence backwards (D = 2).
    dtype : float32 or float64
    backend : {"numba", "numpy"} or None
        Used by every computation of this model (None: automatic, see ``loss_and_grads``).
    seed : int or None
        For ``init_params``.
    params : dict, optional
        Start from these parameters (copied, checked) instead of random ones: their sizes,
        layers and directions must be the ones given, and their dtype ``dtype``.
        ``RNN.from_params(params)`` reads all of these from them.
    nonlinearity : {"tanh", "relu"}
        The hidden layer's ``f`` in ``a<t> = f(W_ax x<t> + W_aa a<t-1> + b_a)``; kept in
        checkpoints (those written before it existed load as tanh).

    Attributes
    ----------
    params : dict of ndarray
        The parameters (``fastrnn.init_params``), updated in place by ``train_step``.
    optimizer_state : dict or None
        After ``load``: the optimizer state the checkpoint carried (``Optimizer.state_dict``;
        ``fastrnn.optim.from_state_dict`` makes the optimizer back), or None.
    state : ndarray of shape (n_a, m), (num_layers, n_a, m) for several layers, or None
        The hidden state carried from one chunk of a stream to the next (truncated BPTT;
        for networks in one direction only).
    vocab : str or None
        For character models: the characters, in index order.
    settings : dict
        Free-form settings saved with the model (JSON-serialisable).
    """

    def __init__(
        self, n_x, n_a, n_y, *, num_layers=1, bidirectional=False, dtype=np.float64, backend=None, seed=None,
        params=None, nonlinearity="tanh",
    ):  # fmt: skip
        backends.resolve(backend)  # fail early on an unknown backend
        self.nonlinearity = check_nonlinearity(nonlinearity)
        if params is None:
            self.params = api.init_params(
                n_x, n_a, n_y, num_layers=num_layers, bidirectional=bidirectional, seed=seed, dtype=dtype
            )
        else:
            checked, dims = check_params(params)
            wanted = (n_x, n_a, n_y, np.dtype(dtype), num_layers, 2 if bidirectional else 1)
            if (dims.n_x, dims.n_a, dims.n_y, dims.dtype, dims.num_layers, dims.directions) != wanted:
                raise ValueError(
                    f"params are of sizes (n_x, n_a, n_y) = {dims[:3]}, dtype {dims.dtype}, "
                    f"{dims.num_layers} layer(s) and {dims.directions} direction(s), not "
                    f"({n_x}, {n_a}, {n_y}), {np.dtype(dtype)}, {num_layers} and {wanted[-1]}"
                )
            self.params = {name: np.array(value, order="C") for name, value in checked.items()}
        self.backend = backend
        self.state = None
        self.vocab = None
        self.settings = {}
        self.optimizer_state = None

    @classmethod
    def from_params(cls, params, *, backend=None, nonlinearity="tanh"):
        """A model around a copy of ``params`` (as from ``fastrnn.init_params``), its sizes
        and dtype read from them."""
        _, dims = check_params(params)
        return cls(
            dims.n_x,
            dims.n_a,
            dims.n_y,
            num_layers=dims.num_layers,
            bidirectional=dims.directions == 2,
            dtype=dims.dtype,
            backend=backend,
            params=params,
            nonlinearity=nonlinearity,
        )

    @property
    def n_x(self):
        return self.params["W_ax"].shape[1]

    @property
    def n_a(self):
        return self.params["W_aa"].shape[0]

    @property
    def n_y(self):
        return self.params["W_ya"].shape[0]

    @property
    def dtype(self):
        return self.params["W_aa"].dtype

    @property
    def num_layers(self):
        return architecture(self.params.keys())[0]

    @property
    def bidirectional(self):
        return "W_aa_reverse" in self.params

    @property
    def is_single_layer(self):
        """One layer in one direction: the seed's network (``fastrnn.params``)."""
        num_layers, directions, _ = architecture(self.params.keys())
        return is_single_layer(num_layers, directions)

    def _state_shape(self, m):
        """The shape of a carried state: the seed's (n_a, m) for one layer, else per layer."""
        layers = self.num_layers
        return (self.n_a, m) if layers == 1 else (layers, self.n_a, m)

    def reset_state(self):
        """Forget the carried hidden state (the next chunk starts from zeros)."""
        self.state = None

    def _initial_state(self, a0, m, carry_state):
        if carry_state and self.bidirectional:
            raise ValueError(
                "carry_state=True is for networks in one direction: a bidirectional network's reverse "
                "direction starts at each sequence's end, so no state carries over to the next chunk; "
                "pass carry_state=False"
            )
        if a0 is not None:
            return a0
        if carry_state and self.state is not None and self.state.shape == self._state_shape(m):
            return self.state
        if not self.is_single_layer:
            return None  # zeros, per layer and direction
        return np.zeros((self.n_a, m), dtype=self.dtype)

    def forward(self, x, a0=None, *, workers=None, logits=False, lengths=None):
        """Run the model: hidden states and outputs for dense ``x`` (n_x, m, T).

        Parameters
        ----------
        x : array_like, shape (n_x, m, T)
        a0 : array_like, shape (n_a, m) or (num_layers * D, n_a, m), optional
            Zeros by default (the carried state is neither read nor changed).
        workers : int or None
            Threads, as in ``fastrnn.loss_and_grads``.
        lengths : array_like of int, shape (m,), optional
            Each sequence's length (``fastrnn.rnn_forward``); results are 0 at padding.
        logits : bool
            Return the logits ``W_ya a<t> + b_y`` instead of the softmax outputs (what
            PyTorch's ``nn.Linear`` returns, for a loss of your own).

        Returns
        -------
        a : ndarray, shape (D * n_a, m, T)
            The top layer's states (both directions', forward first).
        y_hat or logits : ndarray, shape (n_y, m, T)
        """
        x = np.asarray(x)
        m = x.shape[1] if x.ndim == 3 else 1  # a wrong rank is reported by rnn_forward
        a0 = self._initial_state(a0, m, False)
        a, y_hat, _ = api.rnn_forward(
            x, a0, self.params, backend=self.backend, workers=workers, nonlinearity=self.nonlinearity,
            lengths=lengths,
        )  # fmt: skip
        if not logits:
            return a, y_hat
        states = np.ascontiguousarray(a.transpose(2, 1, 0))  # (T, m, D * n_a): one product for all steps
        rows = states.reshape(-1, states.shape[-1]) @ self.params["W_ya"].T + self.params["b_y"].T
        out = rows.reshape(states.shape[:2] + (self.n_y,))
        if lengths is not None:  # 0 at padding, as the outputs
            out[np.arange(out.shape[0])[:, None] >= np.asarray(lengths)[None, :]] = 0
        return a, out.transpose(2, 1, 0)

    def __call__(self, x, a0=None, *, workers=None, logits=False, lengths=None):
        """``model(x)`` is ``model.forward(x)``."""
        return self.forward(x, a0, workers=workers, logits=logits, lengths=lengths)

    def loss_and_grads(
        self, inputs, y, *, a0=None, carry_state=False, workspace=None, workers=None, lengths=None
    ):
        """Loss and gradients for one chunk.

        Parameters
        ----------
        inputs : array_like
            Dense ``x`` (n_x, m, T), or integer indices (m, T) of one-hot inputs.
        y : array_like of int, shape (m, T) or (m,)
            A class per step, or one per sequence (``fastrnn.loss_and_grads``).
        a0 : array_like of shape (n_a, m) or (num_layers * D, n_a, m), optional
            Initial state; by default the carried state (with ``carry_state``) or zeros.
        carry_state : bool
            Start from the carried state and keep the last state for the next chunk
            (one direction only: a ``ValueError`` for a bidirectional model).
        workspace : Workspace, optional
        workers : int or None
            Threads, as in ``fastrnn.loss_and_grads`` (None: fastrnn chooses).
        lengths : array_like of int, shape (m,), optional
            Each sequence's length; padding is never read (``fastrnn.loss_and_grads``).

        Returns
        -------
        loss, grads
            As ``fastrnn.loss_and_grads`` / ``loss_and_grads_onehot``.
        """
        inputs, one_hot, m = batch_inputs(inputs)
        function = api.loss_and_grads_onehot if one_hot else api.loss_and_grads
        loss, grads, a_last = function(
            inputs, self._initial_state(a0, m, carry_state), y, self.params,
            backend=self.backend, workspace=workspace, return_state=True, workers=workers,
            nonlinearity=self.nonlinearity, lengths=lengths,
        )  # fmt: skip
        if carry_state:
            self.state = np.array(a_last)  # a copy: a workspace reuses a_last's memory
        return loss, grads

    def evaluate(self, inputs, y, *, a0=None, per_sequence=False, workers=None, lengths=None):
        """The loss without gradients (``fastrnn.loss`` / ``loss_onehot``): for validation.

        Parameters
        ----------
        inputs, y, a0, workers, lengths
            As in ``loss_and_grads`` (``a0`` defaults to zeros; the carried state is
            neither read nor changed).
        per_sequence : bool
            Each sequence's loss (summed over its steps), shape (m,), instead of their mean.
        """
        inputs, one_hot, m = batch_inputs(inputs)
        function = api.loss_onehot if one_hot else api.loss
        return function(
            inputs, self._initial_state(a0, m, False), y, self.params,
            backend=self.backend, per_sequence=per_sequence, workers=workers, nonlinearity=self.nonlinearity,
            lengths=lengths,
        )  # fmt: skip

    def train_step(
        self,
        inputs,
        y,
        optimizer,
        *,
        clip_norm=None,
        clip_value=None,
        carry_state=None,
        workspace=None,
        workers=None,
        lengths=None,
    ):
        """One step of training: loss and gradients, clipping, an optimizer update.

        Parameters
        ----------
        inputs, y : see ``loss_and_grads``
        optimizer : fastrnn.optim.Optimizer
        clip_norm : float, optional
            Clip the gradients by global L2 norm first.
        clip_value : float, optional
            Clip every gradient entry to ``[-clip_value, clip_value]`` first.
        carry_state : bool or None
            Truncated BPTT: start from the state the previous step left and keep the new one.
            None (the default): True for a network in one direction, False for a
            bidirectional one (which carries nothing).
        workspace, workers, lengths
            As in ``loss_and_grads``.

        Returns
        -------
        loss : float
            The chunk's loss (summed over time, averaged over the batch), before the update.
        """
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"optimizer must be a fastrnn.optim.Optimizer, got {type(optimizer).__name__}")
        if carry_state is None:
            carry_state = not self.bidirectional
        loss, grads = self.loss_and_grads(
            inputs, y, carry_state=carry_state, workspace=workspace, workers=workers, lengths=lengths
        )
        if clip_norm is not None:
            optim.clip_by_global_norm(grads, clip_norm, backend=self.backend)
        if clip_value is not None:
            optim.clip_by_value(grads, clip_value, backend=self.backend)
        optimizer.step(self.params, grads)
        return float(loss)

    # -- one step at a time ----------------------------------------------------------------

    def generate(
        self, n_steps, *, prime=(), temperature=1.0, seed=None, top_k=None, top_p=None, stop=None,
        n_samples=1,
    ):  # fmt: skip
        """Generate symbols, each drawn from the outputs and fed back as the next input, in
        one compiled call (for a model whose inputs and outputs are the same symbols,
        ``n_x == n_y``; ``fastrnn.text.sample`` does this for characters).

        Parameters
        ----------
        n_steps : int
            Symbols to generate after ``prime`` (fewer where a stream draws ``stop``).
        prime : array_like of int, shape (P,)
            Symbols to start from (one forward pass).  Empty: each stream's first symbol is
            drawn uniformly and counts among the ``n_steps``.
        temperature : float
            > 0: draw from ``softmax(logits / temperature)``; small values approach greedy.
        seed : int, numpy.random.Generator or None
            Every random number comes from ``numpy.random.default_rng(seed)``: a seed and
            ``n_samples`` give the same symbols on every run (and on both backends in
            float64; float32 rounding may part them).
        top_k : int or None
            Draw from the ``top_k`` likeliest symbols only (1: greedy; ties go to the lower
            symbol).
        top_p : float or None
            In (0, 1]: draw from the smallest set of likeliest symbols whose probability
            reaches ``top_p`` (nucleus sampling), after ``top_k``.
        stop : int or None
            A symbol that ends its stream; it is kept as the stream's last symbol.
        n_samples : int
            Streams generated together (one matrix product per step for all of them).

        Returns
        -------
        ndarray of intp, or a list of ``n_samples`` of them when ``n_samples > 1``
            ``prime`` followed by the generated symbols.
        """
        from .generation import generate_symbols

        streams = generate_symbols(
            self.params, n_steps, prime=prime, temperature=temperature, seed=seed, top_k=top_k, top_p=top_p,
            stop=stop, n_samples=n_samples, backend=self.backend, nonlinearity=self.nonlinearity,
        )  # fmt: skip
        return streams[0] if n_samples == 1 else streams

    def stream(self, batch=1):
        """A ``fastrnn.generation.Stream``: this model run one time step at a time over
        ``batch`` rows, checked once (its parameters are copied: train further, then make
        a new stream).  ``stream.step(x_t)`` returns the outputs (n_y, m) of one step;
        ``stream.reset(rows)``, ``stream.state``.  Not for a bidirectional model."""
        from .generation import Stream

        return Stream(self.params, batch, nonlinearity=self.nonlinearity, backend=self.backend)

    # -- checkpoints ---------------------------------------------------------------------

    def save(self, path, *, optimizer=None):
        """Write parameters, vocabulary, settings and the carried state to the ``.npz``
        archive ``path`` (no pickles), exactly there (no suffix is added), and atomically.
        With ``optimizer``, its state too (``state_dict``), for resuming training: ``load``
        returns it as ``optimizer_state``.

        The archive is written to a temporary file in the same folder, flushed to disk, then
        renamed over ``path``: an interrupted or failed save leaves any earlier file at
        ``path`` as it was, and no temporary file behind.

        Returns
        -------
        str
            The path written.
        """
        members = dict(
            format=np.array(CHECKPOINT_FORMAT if self.is_single_layer else NETWORK_CHECKPOINT_FORMAT),
            # Code points keep every character (a NUL in a <U1 array reads back as "");
            # "vocab" is kept for readers of the first checkpoints.
            vocab_codepoints=np.array([ord(c) for c in self.vocab or ""], dtype=np.int32),
            vocab=np.array(list(self.vocab) if self.vocab is not None else [], dtype=str),
            has_vocab=np.array(self.vocab is not None),
            settings=np.array(json.dumps(self.settings)),
            backend=np.array(self.backend or ""),
            nonlinearity=np.array(self.nonlinearity),
            **self.params,
        )
        if self.state is not None:
            members["carried_state"] = np.asarray(self.state)
        if optimizer is not None:
            state_dict = optimizer.state_dict()
            arrays = state_dict.pop("state")
            members["optimizer"] = np.array(
                json.dumps(state_dict | {"arrays": {name: sorted(slots) for name, slots in arrays.items()}})
            )
            for name, slots in arrays.items():
                for slot, value in slots.items():
                    members[f"optimizer.{name}.{slot}"] = value
        return write_checkpoint(path, members)

    @classmethod
    def load(cls, path, *, backend=None):
        """Read a checkpoint written by ``save``, checking everything it reads.

        Only the members a model needs are read, and each one's header (dtype, shape, the
        bytes it claims) is checked against the archive before its data is: a crafted file
        cannot make this read gigabytes or allocate what the header claims.  Other members
        are never read.

        Raises
        ------
        CheckpointError (a ValueError)
            The file is missing, not an ``.npz``, from another format, or inconsistent.
        """
        contents = read_checkpoint(path)
        try:
            params, dims = check_params(contents["params"])
            settings = json.loads(contents["settings"])
        except (TypeError, ValueError, RecursionError) as error:
            raise CheckpointError(f"{path}: bad checkpoint contents: {str(error)[:200]}") from None
        vocab = contents["vocab"]
        if vocab is not None and not (len(vocab) == len(set(vocab)) == dims.n_x == dims.n_y):
            raise CheckpointError(
                f"{path}: vocabulary of {len(vocab)} characters does not fit n_x = {dims.n_x}, n_y = {dims.n_y}"
            )
        if not isinstance(settings, dict):
            raise CheckpointError(f"{path}: settings must be a JSON object")
        nonlinearity = contents["nonlinearity"]
        if nonlinearity not in NONLINEARITIES:
            raise CheckpointError(
                f"{path}: nonlinearity must be one of {', '.join(NONLINEARITIES)}, got {nonlinearity[:50]!r}"
            )
        model = cls.from_params(params, backend=backend, nonlinearity=nonlinearity)
        model.state = contents["carried_state"]
        model.vocab = vocab
        model.settings = settings
        model.optimizer_state = contents["optimizer_state"]
        return model
