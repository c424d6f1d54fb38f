"""``fastrnn.RNN``: parameters, settings and a carried hidden state in one object."""

import contextlib
import json
import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

from . import api, backends, optim
from .validation import (
    HIDDEN_NAMES,
    NONLINEARITIES,
    PARAM_NAMES,
    architecture,
    check_nonlinearity,
    check_params,
    is_param_name,
    layer_key,
)

CHECKPOINT_FORMAT = "fastrnn.RNN/1"  # the seed's network: what every version reads
# Several layers or directions: a format of its own, so that a version before them says
# "not a fastrnn checkpoint (expected format ...)" instead of misreading the parameters.
NETWORK_CHECKPOINT_FORMAT = "fastrnn.RNN/2"
CHECKPOINT_FORMATS = (CHECKPOINT_FORMAT, NETWORK_CHECKPOINT_FORMAT)


def batch_inputs(inputs):
    """A batch's ``inputs`` as an array, whether they are one-hot indices (an integer array
    (m, T)) rather than dense ``x`` (n_x, m, T), and the batch size ``m`` (1 where the rank
    is wrong, which the API then reports)."""
    inputs = np.asarray(inputs)
    one_hot = inputs.ndim == 2 and inputs.dtype.kind in "iu"
    m = inputs.shape[0] if one_hot else (inputs.shape[1] if inputs.ndim == 3 else 1)
    return inputs, one_hot, m


class CheckpointError(ValueError):
    """A file that is not a readable fastrnn checkpoint, or one that does not fit."""


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
        if len(self.params) != len(PARAM_NAMES):  # more layers or directions than the seed's
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
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        members = dict(
            format=np.array(CHECKPOINT_FORMAT if len(self.params) == 5 else NETWORK_CHECKPOINT_FORMAT),
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
        descriptor, temporary = tempfile.mkstemp(
            dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
        )
        try:
            with os.fdopen(descriptor, "wb") as file:
                os.fchmod(file.fileno(), 0o666 & ~_umask())  # as a plain open() would create it
                np.savez(file, **members)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _sync_folder(folder)
        return path

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
        try:
            archive = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such checkpoint file") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            raise CheckpointError(f"{path}: not a fastrnn checkpoint (not a readable .npz file)") from None
        try:
            with archive:
                contents = _read_checkpoint(_Members(archive, path))
        except CheckpointError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError):
            raise CheckpointError(f"{path}: not a fastrnn checkpoint (not a readable .npz file)") from None
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


# -- reading checkpoints without trusting them -------------------------------------------

# np.savez stores members uncompressed; a compressed member may expand this much at most.
_MAX_EXPANSION = 64
_MAX_TEXT_CHARACTERS = 1 << 20  # settings (JSON), format and backend strings
_MAX_HEADER_BYTES = 10_000


def _umask():
    """The process's umask, read without setting it (``os.umask`` would change it for a
    moment, for every thread); 0o022 where the system does not say."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _sync_folder(folder):
    """Flush the folder's entry for a renamed file to disk (best effort: not every system can)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class _Members:
    """The ``.npy`` members of a checkpoint archive, each read only after its header checks."""

    def __init__(self, archive, path):
        self.archive, self.path = archive, path
        self.file_size = os.path.getsize(path) if isinstance(path, (str, os.PathLike)) else None
        self._layout = {}  # name -> where its data lies, once its header is checked

    def param_names(self):
        """The names of the members that are parameters (``validation.is_param_name``)."""
        return [
            name[: -len(".npy")]
            for name in self.archive.namelist()
            if name.endswith(".npy") and is_param_name(name[: -len(".npy")])
        ]

    def refuse(self, name, why):
        raise CheckpointError(f"{self.path}: member {name!r} {why}")

    def header(self, name, *, optional=False):
        """``(shape, dtype)`` of member ``name`` (None when absent and ``optional``), from
        its header alone, after checking what it claims against the archive."""
        try:
            info = self.archive.getinfo(name + ".npy")
        except KeyError:
            if optional:
                return None
            raise CheckpointError(f"{self.path}: checkpoint is missing {name}") from None
        if self.file_size is not None and info.compress_size > self.file_size:
            self.refuse(name, f"claims {info.compress_size} bytes in a file of {self.file_size}")
        if info.file_size > _MAX_EXPANSION * info.compress_size + 4096:
            self.refuse(name, f"would expand {info.compress_size} bytes to {info.file_size}; refused")
        with self.archive.open(info) as file:
            version = np.lib.format.read_magic(file)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                self.refuse(name, f"has .npy format version {version}, not 1.0 or 2.0")
            shape, fortran_order, dtype = read[version](file, max_header_size=_MAX_HEADER_BYTES)
            offset = file.tell()
        if dtype.hasobject:
            self.refuse(name, "holds Python objects; refused")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != info.file_size - offset:
            self.refuse(
                name, f"claims shape {shape} of {dtype} ({nbytes} bytes) but holds {info.file_size - offset}"
            )
        self._layout[name] = (info, shape, fortran_order, dtype, offset, nbytes)
        return shape, dtype

    def data(self, name):
        """The array of member ``name``, whose ``header`` was read and checked."""
        info, shape, fortran_order, dtype, offset, nbytes = self._layout[name]
        with self.archive.open(info) as file:
            file.read(offset)
            raw = file.read(nbytes)
        if len(raw) != nbytes:
            self.refuse(name, "is truncated")
        return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran_order else "C").copy()

    def text(self, name, *, optional=False, limit=_MAX_TEXT_CHARACTERS):
        """A 0-d string member as a str (None when absent and ``optional``)."""
        header = self.header(name, optional=optional)
        if header is None:
            return None
        shape, dtype = header
        if shape != () or dtype.kind != "U" or dtype.itemsize // 4 > limit:
            self.refuse(
                name, f"must be one string of at most {limit} characters, got shape {shape} of {dtype}"
            )
        return str(self.data(name))


def _read_checkpoint(members):
    """The checked contents of a checkpoint: params, settings (JSON text) and vocabulary."""
    if members.text("format", optional=True, limit=64) not in CHECKPOINT_FORMATS:
        raise CheckpointError(
            f"{members.path}: not a fastrnn checkpoint (expected format {' or '.join(map(repr, CHECKPOINT_FORMATS))})"
        )
    try:
        num_layers, directions, names = architecture(members.param_names())
    except ValueError as error:
        raise CheckpointError(f"{members.path}: {error}") from None
    headers = {name: members.header(name) for name in names}
    for name, (shape, dtype) in headers.items():
        if len(shape) != 2 or dtype.kind != "f":
            members.refuse(name, f"must be a 2-dimensional float array, got shape {shape} of {dtype}")
    n_a, n_x = headers["W_ax"][0]
    n_y = headers["W_ya"][0][0]
    expected = {"W_ya": (n_y, directions * n_a), "b_y": (n_y, 1)}
    for layer in range(num_layers):
        for reverse in (False, True)[:directions]:
            n_in = n_x if layer == 0 else directions * n_a
            shapes = ((n_a, n_in), (n_a, n_a), (n_a, 1))
            expected.update(
                (layer_key(name, layer, reverse), shape) for name, shape in zip(HIDDEN_NAMES, shapes)
            )
    for name, shape in expected.items():
        if headers[name][0] != shape:
            members.refuse(
                name,
                f"must have shape {shape} to fit W_ax {headers['W_ax'][0]} and W_ya {headers['W_ya'][0]}, got {headers[name][0]}",
            )
    params = {name: members.data(name) for name in names}
    has_vocab = members.header("has_vocab")
    if has_vocab != ((), np.dtype(bool)):
        members.refuse("has_vocab", f"must be one bool, got shape {has_vocab[0]} of {has_vocab[1]}")
    vocab = None
    if bool(members.data("has_vocab")):
        codepoints = members.header("vocab_codepoints", optional=True)
        if codepoints is not None:  # written since the vocabulary is kept losslessly
            if len(codepoints[0]) != 1 or codepoints[1].kind not in "iu":
                members.refuse(
                    "vocab_codepoints",
                    f"must be a 1-dimensional integer array, got shape {codepoints[0]} of {codepoints[1]}",
                )
            values = members.data("vocab_codepoints")
            if values.size and not (0 <= values.min() and values.max() <= 0x10FFFF):
                members.refuse("vocab_codepoints", "holds values that are not Unicode code points")
            vocab = "".join(map(chr, values.tolist()))
        else:  # the first checkpoints: one character per entry
            shape, dtype = members.header("vocab")
            if len(shape) != 1 or dtype.kind != "U":
                members.refuse("vocab", f"must be a 1-dimensional string array, got shape {shape} of {dtype}")
            vocab = "".join(str(c) for c in members.data("vocab"))
    carried_state = None
    header = members.header("carried_state", optional=True)
    if header is not None:
        shape, dtype = header
        expected_state = (n_a,) if num_layers == 1 else (num_layers, n_a)
        meaning = "(n_a, m)" if num_layers == 1 else "(num_layers, n_a, m)"
        if (
            shape[:-1] != expected_state or len(shape) < 2 or shape[-1] < 1
            or dtype != headers["W_aa"][1] or directions != 1
        ):  # fmt: skip
            members.refuse(
                "carried_state",
                f"must be {meaning} = {expected_state + ('m',)} of {headers['W_aa'][1]} (and the network "
                f"in one direction), got shape {shape} of {dtype}",
            )
        carried_state = members.data("carried_state")
        if not np.isfinite(carried_state).all():
            members.refuse("carried_state", "is not finite")
    return {
        "params": params,
        "settings": members.text("settings"),
        "nonlinearity": members.text("nonlinearity", optional=True) or "tanh",  # absent before relu existed
        "vocab": vocab,
        "carried_state": carried_state,
        "optimizer_state": _optimizer_state(members, members.text("optimizer", optional=True), params),
    }


def _optimizer_state(members, text, params):
    """The optimizer's ``state_dict`` (or None) from its JSON member ``text`` and its
    arrays, each checked against the parameter it belongs to before it is read
    (``Optimizer.load_state_dict`` checks the rest when training resumes)."""
    if text is None:
        return None
    try:
        saved = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{members.path}: bad optimizer state: {str(error)[:200]}") from None
    arrays = saved.pop("arrays", None) if isinstance(saved, dict) else None
    if not isinstance(arrays, dict) or not set(arrays) <= set(params):
        raise CheckpointError(f"{members.path}: bad optimizer state: no arrays by parameter name")
    state = {}
    for name, slots in arrays.items():
        if not isinstance(slots, list) or not all(
            isinstance(slot, str) and slot.isidentifier() for slot in slots
        ):
            raise CheckpointError(f"{members.path}: bad optimizer state for {name}")
        state[name] = {}
        for slot in slots:
            member = f"optimizer.{name}.{slot}"
            shape, dtype = members.header(member)
            if shape != params[name].shape or dtype != params[name].dtype:
                members.refuse(
                    member,
                    f"must have the shape and dtype of {name}, {params[name].shape} {params[name].dtype}",
                )
            state[name][slot] = members.data(member)
    return saved | {"state": state}
