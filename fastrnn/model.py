"""``fastrnn.RNN``: parameters, settings and a carried hidden state in one object."""

import json
import zipfile

import numpy as np

from . import api, backends, optim
from .validation import PARAM_NAMES, check_params

CHECKPOINT_FORMAT = "fastrnn.RNN/1"


class CheckpointError(ValueError):
    """A file that is not a readable fastrnn checkpoint, or one that does not fit."""


class RNN:
    """A vanilla (tanh) RNN with a softmax output layer.

    Parameters
    ----------
    n_x, n_a, n_y : int
        Input, hidden and output sizes.
    dtype : float32 or float64
    backend : {"numba", "numpy"} or None
        Used by every computation of this model (None: automatic, see ``loss_and_grads``).
    seed : int or None
        For ``init_params``.

    Attributes
    ----------
    params : dict of ndarray
        The five parameters, updated in place by ``train_step``.
    state : ndarray of shape (n_a, m) or None
        The hidden state carried from one chunk of a stream to the next (truncated BPTT).
    vocab : str or None
        For character models: the characters, in index order.
    settings : dict
        Free-form settings saved with the model (JSON-serialisable).
    """

    def __init__(self, n_x, n_a, n_y, *, dtype=np.float64, backend=None, seed=None):
        backends.resolve(backend)  # fail early on an unknown backend
        self.params = api.init_params(n_x, n_a, n_y, seed=seed, dtype=dtype)
        self.backend = backend
        self.state = None
        self.vocab = None
        self.settings = {}

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

    def reset_state(self):
        """Forget the carried hidden state (the next chunk starts from zeros)."""
        self.state = None

    def _initial_state(self, a0, m, carry_state):
        if a0 is not None:
            return a0
        if carry_state and self.state is not None and self.state.shape == (self.n_a, m):
            return self.state
        return np.zeros((self.n_a, m), dtype=self.dtype)

    def forward(self, x, a0=None, *, workers=None):
        """Hidden states (n_a, m, T) and softmax outputs (n_y, m, T) for dense ``x`` (n_x, m, T).

        ``workers``: threads, as in ``fastrnn.loss_and_grads``.
        """
        x = np.asarray(x)
        m = x.shape[1] if x.ndim == 3 else 1  # a wrong rank is reported by rnn_forward
        a0 = self._initial_state(a0, m, False)
        a, y_hat, _ = api.rnn_forward(x, a0, self.params, backend=self.backend, workers=workers)
        return a, y_hat

    def loss_and_grads(self, inputs, y, *, a0=None, carry_state=False, workspace=None, workers=None):
        """Loss and gradients for one chunk.

        Parameters
        ----------
        inputs : array_like
            Dense ``x`` (n_x, m, T), or integer indices (m, T) of one-hot inputs.
        y : array_like of int, shape (m, T)
        a0 : array_like of shape (n_a, m), optional
            Initial state; by default the carried state (with ``carry_state``) or zeros.
        carry_state : bool
            Start from the carried state and keep the last state for the next chunk.
        workspace : Workspace, optional
        workers : int or None
            Threads, as in ``fastrnn.loss_and_grads`` (None: fastrnn chooses).

        Returns
        -------
        loss, grads
            As ``fastrnn.loss_and_grads`` / ``loss_and_grads_onehot``.
        """
        inputs = np.asarray(inputs)
        one_hot = inputs.ndim == 2 and inputs.dtype.kind in "iu"
        m = inputs.shape[0] if one_hot else (inputs.shape[1] if inputs.ndim == 3 else 1)
        function = api.loss_and_grads_onehot if one_hot else api.loss_and_grads
        loss, grads, a_last = function(
            inputs, self._initial_state(a0, m, carry_state), y, self.params,
            backend=self.backend, workspace=workspace, return_state=True, workers=workers,
        )  # fmt: skip
        if carry_state:
            self.state = np.array(a_last)  # a copy: a workspace reuses a_last's memory
        return loss, grads

    def train_step(
        self, inputs, y, optimizer, *, clip_norm=None, clip_value=None, carry_state=True, workspace=None, workers=None
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
        carry_state : bool
            Truncated BPTT: start from the state the previous step left and keep the new one.
        workspace, workers
            As in ``loss_and_grads``.

        Returns
        -------
        loss : float
            The chunk's loss (summed over time, averaged over the batch), before the update.
        """
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"optimizer must be a fastrnn.optim.Optimizer, got {type(optimizer).__name__}")
        loss, grads = self.loss_and_grads(inputs, y, carry_state=carry_state, workspace=workspace, workers=workers)
        if clip_norm is not None:
            optim.clip_by_global_norm(grads, clip_norm, backend=self.backend)
        if clip_value is not None:
            optim.clip_by_value(grads, clip_value, backend=self.backend)
        optimizer.step(self.params, grads)
        return float(loss)

    # -- checkpoints ---------------------------------------------------------------------

    def save(self, path):
        """Write parameters, vocabulary and settings to a ``.npz`` file (no pickles)."""
        np.savez(
            path,
            format=np.array(CHECKPOINT_FORMAT),
            vocab=np.array(list(self.vocab) if self.vocab is not None else [], dtype=str),
            has_vocab=np.array(self.vocab is not None),
            settings=np.array(json.dumps(self.settings)),
            backend=np.array(self.backend or ""),
            **self.params,
        )

    @classmethod
    def load(cls, path, *, backend=None):
        """Read a checkpoint written by ``save``, checking everything it reads.

        Raises
        ------
        CheckpointError (a ValueError)
            The file is missing, not an ``.npz``, from another format, or inconsistent.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                contents = {key: data[key] for key in data.files}
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such checkpoint file") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError):
            raise CheckpointError(f"{path}: not a fastrnn checkpoint (not a readable .npz file)") from None
        if not isinstance(contents, dict) or str(contents.get("format", "")) != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a fastrnn checkpoint (expected format {CHECKPOINT_FORMAT!r})")
        missing = [key for key in (*PARAM_NAMES, "vocab", "has_vocab", "settings") if key not in contents]
        if missing:
            raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}")
        try:
            params, dims = check_params({name: contents[name] for name in PARAM_NAMES})
            settings = json.loads(str(contents["settings"]))
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: bad checkpoint contents: {error}") from None
        vocab = "".join(str(c) for c in contents["vocab"]) if bool(contents["has_vocab"]) else None
        if vocab is not None and not (len(vocab) == len(set(vocab)) == dims.n_x == dims.n_y):
            raise CheckpointError(f"{path}: vocabulary of {len(vocab)} characters does not fit n_x = {dims.n_x}, n_y = {dims.n_y}")
        if not isinstance(settings, dict):
            raise CheckpointError(f"{path}: settings must be a JSON object")
        model = cls.__new__(cls)
        model.params = {name: params[name].copy() for name in PARAM_NAMES}
        model.backend = backend
        backends.resolve(backend)
        model.state = None
        model.vocab = vocab
        model.settings = settings
        return model
