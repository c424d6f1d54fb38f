"""Character-level language models: corpus, vocabulary, batches, training and sampling."""

import ast
import codecs
import hashlib
import importlib.util
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import optim
from .generation import generate_symbols
from .model import RNN
from .parallel import check_workers, split_batch
from .validation import check_int
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
        return "".join(map(self.chars.__getitem__, np.asarray(indices, dtype=np.intp).tolist()))


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
    streams = TextShard(*_streams(data, batch, seq_length), seq_length)
    for step in itertools.count():
        yield streams.batch(step)


def _streams(data, batch, seq_length):
    """The ``batch`` streams of inputs and targets (batch, per_stream) that ``stream_batches``
    cuts ``data`` into."""
    per_stream = (len(data) - 1) // batch
    if per_stream // seq_length < 1:
        raise ValueError(f"{len(data)} characters cannot fill {batch} streams of {seq_length + 1}")
    inputs = data[: batch * per_stream].reshape(batch, per_stream)
    targets = data[1 : batch * per_stream + 1].reshape(batch, per_stream)
    return inputs, targets


class TextShard:
    """Streams of a text as batches by step number: ``batch(step)`` is the ``step``-th
    (from 0) item of ``stream_batches`` for these streams.

    Rows of the streams make a shard of a distributed run (``fastrnn.distributed``): the
    shards' batches of a step, stacked, are the whole run's batch of that step.

    Parameters
    ----------
    inputs, targets : ndarray of intp, shape (rows, per_stream)
    seq_length : int
    """

    def __init__(self, inputs, targets, seq_length):
        self.inputs, self.targets, self.seq_length = inputs, targets, seq_length
        self.rows, per_stream = inputs.shape
        self.chunks = per_stream // seq_length
        self.slack = per_stream - self.chunks * seq_length

    def batch(self, step):
        """``(x_index, y, starts_pass)`` of step ``step`` (see ``stream_batches``)."""
        pass_number, c = divmod(step, self.chunks)
        offset = pass_number % (self.slack + 1)
        window = slice(offset + c * self.seq_length, offset + (c + 1) * self.seq_length)
        return self.inputs[:, window], self.targets[:, window], c == 0


class TextShards:
    """A ``DataParallel`` loader that cuts a text file into shards of streams, on the workers.

    ``TextShards(...)(k)`` reads the file, checks that it is the text the driver read (its
    SHA-256), encodes it with the driver's vocabulary and keeps rows ``split_batch(batch,
    n_shards)[k]`` of the streams: a ``TextShard``.  So the text travels to no worker: each
    reads it where it runs (the same path on every machine: a shared or copied file).

    Parameters
    ----------
    path : str or None
        The text file; None: the built-in corpus.
    chars : str
        The vocabulary (``CharVocab.chars``).
    batch, seq_length, n_shards : int
    sha256 : str
        The hex digest of the text's UTF-8 bytes, as the driver read it.
    """

    def __init__(self, path, chars, batch, seq_length, n_shards, sha256):
        self.path, self.chars, self.sha256 = path, chars, sha256
        self.batch, self.seq_length, self.n_shards = batch, seq_length, n_shards

    def __call__(self, k):
        text = read_text(self.path) if self.path is not None else builtin_corpus()
        if text_digest(text) != self.sha256:
            raise TextError(
                f"{self.path or 'the built-in corpus'}: this worker read another text than the driver did "
                "(give every machine the same file at the same path)"
            )
        inputs, targets = _streams(CharVocab(self.chars).encode(text), self.batch, self.seq_length)
        rows = split_batch(self.batch, self.n_shards)[k]
        return TextShard(inputs[rows].copy(), targets[rows].copy(), self.seq_length)


def text_digest(text):
    """The SHA-256 hex digest of ``text``'s UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    trainer: object = None  # with ``client``: the fastrnn.distributed.DataParallel that trained

    @property
    def steps_done(self):
        """Steps trained in all, those of a resumed checkpoint included."""
        return self.first_step - 1 + len(self.losses)


def train_char_rnn(
    text, *, hidden=128, seq_length=32, batch=16, steps=1000, lr=0.002, optimizer="adam",
    clip_norm=5.0, dtype=np.float32, backend=None, seed=0, callback=None, workers=None, resume=None,
    client=None, text_path=None, shards=None, timeout=None, nonlinearity="tanh", num_layers=1,
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
    dtype, backend, seed, nonlinearity, num_layers
        For the model (``seed`` also fixes the initial parameters; ``nonlinearity``: "tanh"
        or "relu"; ``num_layers``: stacked layers, whose states all carry over).
    callback : callable, optional
        ``callback(step, loss_per_char, run)`` after every step; a true return value stops
        training after that step (``run.stopped_early``).
    workers : int or None
        Threads per step, as in ``fastrnn.loss_and_grads`` (None: fastrnn chooses).
    resume : fastrnn.RNN, optional
        A model loaded from a checkpoint of a run on the same text (``RNN.load``; saved with
        its optimizer).  Training continues where it stopped: its parameters, carried state,
        optimizer state and step count, and its settings (which replace ``hidden``,
        ``seq_length``, ``batch``, ``lr``, ``optimizer``, ``clip_norm``, ``dtype``,
        ``seed``, ``nonlinearity`` and ``num_layers``), so that the losses continue those of an
        uninterrupted run.
    client : dask.distributed.Client, optional
        Train on this Dask cluster (``fastrnn.distributed.DataParallel``): the streams are
        cut into ``shards`` shards of rows, which the workers read from ``text_path``
        themselves.  The steps are those of the run without ``client`` (the same batches,
        states and updates), to rounding.  ``workers`` is then each task's threads.
    text_path : str, optional
        With ``client``: the file ``text`` was read from, at the same path on every worker;
        None: ``text`` is the built-in corpus.
    shards : int, optional
        With ``client``: shards of the batch (default: the cluster's task threads, at most
        ``batch``).
    timeout : float, optional
        With ``client``: ``DataParallel``'s timeout (default: its own).

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
        model = RNN(
            len(vocab), hidden, len(vocab), num_layers=num_layers, dtype=dtype, backend=backend, seed=seed,
            nonlinearity=nonlinearity,
        )  # fmt: skip
        model.vocab = vocab.chars
        model.settings = dict(hidden=hidden, seq_length=seq_length, batch=batch, steps=steps, lr=lr,
                              optimizer=optimizer, clip_norm=clip_norm, dtype=np.dtype(dtype).name, seed=seed)  # fmt: skip
        opt, start = optim.OPTIMIZERS[optimizer](lr=lr, backend=backend), 0
    model.settings["steps"] = steps
    run = TrainingRun(model, opt, first_step=start + 1)
    if client is None:
        train_one_step = _in_process(model, opt, data, batch, seq_length, start, clip_norm, workers)
    else:
        run.trainer = _on_dask(client, model, opt, text, text_path, batch, seq_length, start,
                               dict(clip_norm=clip_norm, workers=workers, shards=shards, timeout=timeout))  # fmt: skip
        train_one_step = run.trainer.step
    begin = time.perf_counter()
    for step in range(start + 1, steps + 1):
        loss = float(train_one_step())
        model.settings["steps_done"] = step
        run.losses.append(loss / seq_length)
        run.characters += batch * seq_length
        run.seconds = time.perf_counter() - begin
        if callback is not None and callback(step, run.losses[-1], run) and step < steps:
            run.stopped_early = True
            break
    return run


def _in_process(model, opt, data, batch, seq_length, start, clip_norm, workers):
    """The training step of ``train_char_rnn`` in this process: the next chunk of the streams."""
    chunks = stream_batches(data, batch, seq_length)
    for _ in range(start):  # the chunks a resumed run has trained on already
        next(chunks)
    workspace = Workspace()

    def train_one_step():
        x_index, y, wraps = next(chunks)
        if wraps:
            model.reset_state()
        return model.train_step(x_index, y, opt, clip_norm=clip_norm, workspace=workspace, workers=workers)

    return train_one_step


def _on_dask(client, model, opt, text, text_path, batch, seq_length, start, options):
    """The ``DataParallel`` that trains ``train_char_rnn``'s steps on a Dask cluster: shards
    of the streams, loaded by the workers from ``text_path``, the state carried by the driver."""
    from .distributed import DEFAULT_TIMEOUT, DataParallel

    shards = options["shards"]
    shards = default_shards(client, batch) if shards is None else check_int(shards, "shards", minimum=1)
    if shards > batch:
        raise ValueError(f"shards must be at most batch ({batch}), got {shards}")
    timeout = DEFAULT_TIMEOUT if options["timeout"] is None else options["timeout"]
    trainer = DataParallel(
        client, model, opt, clip_norm=options["clip_norm"], timeout=timeout, workers=options["workers"]
    )
    loader = TextShards(text_path, model.vocab, batch, seq_length, shards, text_digest(text))
    trainer.set_data(loader, shards)
    trainer.steps_done = start
    if model.state is not None:  # a resumed run's carried state
        trainer.carry_state_from(model.state)
    return trainer


def default_shards(client, batch):
    """Shards of a batch of ``batch`` streams on ``client``'s cluster: one per task thread,
    at most ``batch``."""
    return max(1, min(batch, sum(client.nthreads().values())))


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


def sample(model, n_chars, *, prime="", temperature=1.0, seed=None, top_k=None, top_p=None, stop=None,
           n_samples=1):  # fmt: skip
    """Generate ``n_chars`` characters from a character model, after ``prime``, in one
    compiled call (``RNN.generate``).

    Parameters
    ----------
    model : fastrnn.RNN
        With a ``vocab``, in one direction.
    n_chars : int
        Characters to generate (fewer where a sample reaches ``stop``).
    prime : str
        Text to condition on (every character must be in the vocabulary), run through the
        model in one forward pass.  Empty: each sample's first character is drawn
        uniformly from the vocabulary.
    temperature : float
        > 0; below 1 sharpens the distribution, above 1 flattens it.
    seed : int, numpy.random.Generator or None
        The same seed, model and arguments give the same text.
    top_k : int or None
        Draw from the ``top_k`` likeliest characters only (1: greedy).
    top_p : float or None
        In (0, 1]: draw from the smallest set of likeliest characters whose probability
        reaches ``top_p`` (nucleus sampling).
    stop : str or None
        One character of the vocabulary that ends a sample (it is kept at its end).
    n_samples : int
        Samples generated together.

    Returns
    -------
    str, or a list of ``n_samples`` str when ``n_samples > 1``
        ``prime`` followed by the generated characters.
    """
    if model.vocab is None:
        raise ValueError("this model has no vocabulary: it was not trained on text")
    if model.bidirectional:
        raise ValueError(
            "a bidirectional model reads each sequence from its end too: it cannot generate text"
        )
    n_chars = check_int(n_chars, "n_chars", minimum=0)
    if not isinstance(prime, str):
        raise TypeError(f"prime must be a str, got {type(prime).__name__}")
    vocab = CharVocab(model.vocab)
    if stop is not None:
        if not isinstance(stop, str) or len(stop) != 1:
            raise ValueError(f"stop must be one character of the vocabulary, got {stop!r}")
        stop = int(vocab.encode(stop)[0])  # a character not in the vocabulary: its ValueError
    streams = generate_symbols(
        model.params, n_chars, prime=vocab.encode(prime), temperature=temperature, seed=seed, top_k=top_k,
        top_p=top_p, stop=stop, n_samples=n_samples, backend=model.backend, nonlinearity=model.nonlinearity,
    )  # fmt: skip
    texts = [vocab.decode(symbols) for symbols in streams]
    return texts[0] if n_samples == 1 else texts
