"""Checkpoints: the ``.npz`` archives ``fastrnn.RNN.save`` writes and ``RNN.load`` reads.

Writing is atomic (a temporary file in the same folder, flushed, renamed over the path).
Reading trusts nothing: only the members a model needs are read, and each one's header
(dtype, shape, the bytes it claims) is checked against the archive before its data is, so
a crafted file cannot make a load read gigabytes or allocate what a header claims.
"""

import contextlib
import json
import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

from .params import HIDDEN_NAMES, architecture, is_param_name, layer_key

CHECKPOINT_FORMAT = "fastrnn.RNN/1"  # the seed's network: what every version reads
# Several layers or directions: a format of its own, so that a version before them says
# "not a fastrnn checkpoint (expected format ...)" instead of misreading the parameters.
NETWORK_CHECKPOINT_FORMAT = "fastrnn.RNN/2"
CHECKPOINT_FORMATS = (CHECKPOINT_FORMAT, NETWORK_CHECKPOINT_FORMAT)


class CheckpointError(ValueError):
    """A file that is not a readable fastrnn checkpoint, or one that does not fit."""


def write_checkpoint(path, members):
    """Write the arrays ``members`` (name -> array) to the ``.npz`` archive ``path``
    (no pickles), exactly there (no suffix is added), and atomically.

    The archive is written to a temporary file in the same folder, flushed to disk, then
    renamed over ``path``: an interrupted or failed write leaves any earlier file at
    ``path`` as it was, and no temporary file behind.  Returns the path written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
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


def read_checkpoint(path):
    """The contents of the checkpoint ``path``, every member checked before it is read
    (``_read_checkpoint``): ``params``, ``settings`` (JSON text), ``nonlinearity``,
    ``vocab``, ``carried_state`` and ``optimizer_state``.

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
    return contents


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
