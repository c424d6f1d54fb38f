"""Character-level language models: corpus, vocabulary, batches, training and sampling."""

import ast
import codecs
import importlib.util
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import optim
from .api import _cell_step
from .model import RNN
from .parallel import check_workers
from .validation import check_int, check_real
from .workspace import Workspace


class TextError(ValueError):
    """A text that cannot be trained on: missing, empty, binary, a single character."""


def builtin_corpus():
    """The Zen of Python, from the standard library's ``this`` module (read, not imported:
    importing ``this`` prints it).  Ships with Python, so training needs no download."""
    source = Path(importlib.util.find_spec("this").origin).read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "s":
            return codecs.decode(ast.literal_eval(node.value), "rot13")
    raise RuntimeError("the standard library's `this` module has no Zen text")  # pragma: no cover


def read_text(path):
    """Read a UTF-8 text file to train on, refusing what cannot be trained on.

    Raises
    ------
    TextError
        Missing or unreadable file, empty file, binary content (NUL bytes or invalid
        UTF-8), or fewer than two distinct characters.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise TextError(f"{path}: no such file") from None
    except OSError as error:
        raise TextError(f"{path}: cannot read it ({error.strerror or error})") from None
    if not raw:
        raise TextError(f"{path}: the file is empty")
    if b"\0" in raw:
        raise TextError(f"{path}: looks like a binary file (it contains NUL bytes); give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TextError(f"{path}: not UTF-8 text (byte {error.start}); give a UTF-8 text file") from None
    check_trainable(text, path)
    return text


def check_trainable(text, where="text"):
    if len(set(text)) < 2:
        raise TextError(
            f"{where}: a text with {len(set(text))} distinct character(s) has nothing to learn; give at least two"
        )
    if len(text) < 3:
        raise TextError(f"{where}: {len(text)} characters are too few to train on")


class CharVocab:
    """The characters of a text, in sorted order; index ``i`` is ``chars[i]``."""

    def __init__(self, chars):
        self.chars = "".join(chars)
        if len(set(self.chars)) != len(self.chars) or not self.chars:
            raise ValueError("a vocabulary needs distinct characters, at least one")
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        """Indices (intp) of the characters of ``text``; an unknown character is a ValueError."""
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {''.join(unknown)!r}")
        return np.fromiter((self.index[c] for c in text), dtype=np.intp, count=len(text))

    def decode(self, indices):
        return "".join(self.chars[i] for i in indices)


def stream_batches(data, batch, seq_length):
    """Chunks of ``batch`` parallel streams for truncated BPTT, forever.

    The index stream is cut into ``batch`` contiguous streams; chunk ``c`` of a pass holds
    steps ``offset + c*T .. offset + c*T + T - 1`` of every stream, with targets shifted by
    one.  The hidden state is carried from chunk to chunk and reset at the start of each
    pass.  When the chunks do not fill a stream exactly, ``offset`` moves by one character
    each pass, so that over passes every character is trained on.

    Yields
    ------
    x_index : ndarray of intp, shape (batch, seq_length)
    y : ndarray of intp, shape (batch, seq_length)
    starts_pass : bool
        True on the first chunk of each pass: reset the carried state.
    """
    per_stream = (len(data) - 1) // batch
    chunks = per_stream // seq_length
    if chunks < 1:
        raise ValueError(f"{len(data)} characters cannot fill {batch} streams of {seq_length + 1}")
    slack = per_stream - chunks * seq_length
    inputs = data[: batch * per_stream].reshape(batch, per_stream)
    targets = data[1 : batch * per_stream + 1].reshape(batch, per_stream)
    for pass_number in itertools.count():
        offset = pass_number % (slack + 1)
        for c in range(chunks):
            window = slice(offset + c * seq_length, offset + (c + 1) * seq_length)
            yield inputs[:, window], targets[:, window], c == 0


MIN_CHUNKS_PER_STREAM = 4


def fit_batch_shape(n_chars, batch, seq_length):
    """The (batch, seq_length) to train a text of ``n_chars`` characters with: the asked
    ones, reduced so that each stream holds at least ``MIN_CHUNKS_PER_STREAM`` chunks where
    the text allows it (a short text in many short streams would only repeat their starts),
    and at least one chunk always."""
    seq_length = max(1, min(seq_length, n_chars - 1))
    streams_that_fill = (n_chars - 1) // (MIN_CHUNKS_PER_STREAM * seq_length)
    batch = max(1, min(batch, streams_that_fill or (n_chars - 1) // seq_length))
    return batch, seq_length


@dataclass
class TrainingRun:
    """What ``train_char_rnn`` returns."""

    model: RNN
    optimizer: optim.Optimizer = None
    losses: list = field(default_factory=list)  # per-character loss of every step of this run
    seconds: float = 0.0
    characters: int = 0  # characters processed (steps * batch * seq_length)
    first_step: int = 1  # the step this run started at (after those of a resumed checkpoint)
    first_step_seconds: float = 0.0  # its time, compilation included (set by the command line)
    stopped_early: bool = False  # the callback asked to stop before ``steps``

    @property
    def steps_done(self):
        """Steps trained in all, those of a resumed checkpoint included."""
        return self.first_step - 1 + len(self.losses)


def train_char_rnn(
    text, *, hidden=128, seq_length=32, batch=16, steps=1000, lr=0.002, optimizer="adam",
    clip_norm=5.0, dtype=np.float32, backend=None, seed=0, callback=None, workers=None, resume=None,
):  # fmt: skip
    """Train a character-level RNN on ``text`` with truncated BPTT.

    Parameters
    ----------
    text : str
    hidden, seq_length, batch, steps : int
        ``batch`` and ``seq_length`` shrink to what the text fills (``fit_batch_shape``).
        ``steps`` counts from the start of training, a resumed run's earlier steps included.
    lr : float
    optimizer : {"adagrad", "adam", "sgd"}
    clip_norm : float or None
        Clip gradients by global norm.
    dtype, backend, seed
        For the model (``seed`` also fixes the initial parameters).
    callback : callable, optional
        ``callback(step, loss_per_char, run)`` after every step; a true return value stops
        training after that step (``run.stopped_early``).
    workers : int or None
        Threads per step, as in ``fastrnn.loss_and_grads`` (None: fastrnn chooses).
    resume : RNN, optional
        A model loaded from a checkpoint of a run on the same text (``RNN.load``; saved with
        its optimizer).  Training continues where it stopped: its parameters, carried state,
        optimizer state and step count, and its settings (which replace ``hidden``,
        ``seq_length``, ``batch``, ``lr``, ``optimizer``, ``clip_norm``, ``dtype`` and
        ``seed``), so that the losses continue those of an uninterrupted run.

    Returns
    -------
    TrainingRun
    """
    for name, value in (("hidden", hidden), ("seq_length", seq_length), ("batch", batch), ("steps", steps)):
        check_int(value, name, minimum=1)
    check_workers(workers)
    check_trainable(text)
    vocab = CharVocab.from_text(text)
    data = vocab.encode(text)
    if resume is not None:
        model, opt, start = _resumed(resume, vocab, backend)
        if start >= steps:
            raise ValueError(
                f"resume: the checkpoint has trained {start} steps already; ask for more than {steps}"
            )
        seq_length, batch, clip_norm = (model.settings[key] for key in ("seq_length", "batch", "clip_norm"))
    else:
        batch, seq_length = fit_batch_shape(len(data), batch, seq_length)
        if optimizer not in optim.OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(optim.OPTIMIZERS)}, got {optimizer!r}")
        model = RNN(len(vocab), hidden, len(vocab), dtype=dtype, backend=backend, seed=seed)
        model.vocab = vocab.chars
        model.settings = dict(hidden=hidden, seq_length=seq_length, batch=batch, steps=steps, lr=lr,
                              optimizer=optimizer, clip_norm=clip_norm, dtype=np.dtype(dtype).name, seed=seed)  # fmt: skip
        opt, start = optim.OPTIMIZERS[optimizer](lr=lr, backend=backend), 0
    model.settings["steps"] = steps
    run = TrainingRun(model, opt, first_step=start + 1)
    chunks = stream_batches(data, batch, seq_length)
    for _ in range(start):  # the chunks a resumed run has trained on already
        next(chunks)
    workspace = Workspace()
    begin = time.perf_counter()
    for step in range(start + 1, steps + 1):
        x_index, y, wraps = next(chunks)
        if wraps:
            model.reset_state()
        loss = model.train_step(x_index, y, opt, clip_norm=clip_norm, workspace=workspace, workers=workers)
        model.settings["steps_done"] = step
        run.losses.append(loss / seq_length)
        run.characters += batch * seq_length
        run.seconds = time.perf_counter() - begin
        if callback is not None and callback(step, run.losses[-1], run) and step < steps:
            run.stopped_early = True
            break
    return run


def _resumed(model, vocab, backend):
    """The model, optimizer and step count to resume a training run from."""
    if not isinstance(model, RNN):
        raise TypeError(f"resume must be an RNN loaded from a checkpoint, got {type(model).__name__}")
    if model.vocab != vocab.chars:
        raise ValueError("resume: the checkpoint was trained on a text with other characters than this one")
    if model.optimizer_state is None:
        raise ValueError(
            "resume: the checkpoint holds no optimizer state (save it with RNN.save(path, optimizer=...))"
        )
    settings = model.settings
    needed = ("seq_length", "batch", "clip_norm", "steps_done")
    if any(key not in settings for key in needed):
        raise ValueError(
            f"resume: the checkpoint's settings lack {', '.join(k for k in needed if k not in settings)}"
        )
    model.backend = backend
    return model, optim.from_state_dict(model.optimizer_state, backend=backend), int(settings["steps_done"])


def sample(model, n_chars, *, prime="", temperature=1.0, seed=None):
    """Generate ``n_chars`` characters from a character model, after ``prime``.

    Parameters
    ----------
    model : RNN
        With a ``vocab``.
    prime : str
        Text to condition on (every character must be in the vocabulary).  Empty: the first
        character is drawn at random from the vocabulary.
    temperature : float
        > 0; below 1 sharpens the distribution, above 1 flattens it.
    seed : int or None
        The same seed, model and arguments give the same text.

    Returns
    -------
    str
        ``prime`` followed by the generated characters.
    """
    if model.vocab is None:
        raise ValueError("this model has no vocabulary: it was not trained on text")
    temperature = check_real(temperature, "temperature", above=0)
    n_chars = check_int(n_chars, "n_chars", minimum=0)
    vocab = CharVocab(model.vocab)
    rng = np.random.default_rng(seed)
    if prime:
        context, generated = list(vocab.encode(prime)), []
    elif n_chars == 0:
        return ""
    else:
        first = int(rng.integers(len(vocab)))
        context, generated = [first], [first]
    a = np.zeros((model.n_a, 1), dtype=model.dtype)
    x = np.zeros((model.n_x, 1), dtype=model.dtype)

    def advance(index):
        x[:] = 0
        x[index] = 1
        *_, h, y_hat = _cell_step(x, a, model.params, model.backend)  # no cache: nothing goes back
        return h[1].T, y_hat[0].T

    for index in context:  # run the prime (or the first character) through the network
        a, y_hat = advance(index)
    while len(generated) < n_chars:
        # softmax(logits / temperature) from the probabilities: p ** (1 / temperature).
        # Shifted first, so that every value is <= 0 and a tiny temperature only makes the
        # others -inf (greedy sampling), never inf - inf.
        log_p = np.log(np.maximum(y_hat[:, 0].astype(np.float64), 1e-300))
        with np.errstate(over="ignore"):
            p = np.exp((log_p - log_p.max()) / temperature)
        index = int(rng.choice(len(vocab), p=p / p.sum()))
        generated.append(index)
        a, y_hat = advance(index)
    return prime + vocab.decode(generated)
