"""asv benchmarks of running a trained model one step at a time: generation (``text.sample``)
and streams (``Stream.step``), their compile time, and the ``sample`` command's wall time.

The model is ``common.char_model``: 65 symbols, hidden 128, random weights (speed
does not depend on training), the sizes ``python -m fastrnn bench --generation`` prints.
Compilation is paid in ``setup``, except in ``GenerationCompileTime`` and
``SampleCommand``, which measure what a user waits for in a fresh process.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

import fastrnn

from .common import (
    BACKENDS,
    char_model,
    median_ratio,
    median_seconds,
    numbers_from_fresh_process,
    require,
    require_backend,
)  # fmt: skip

DTYPES = ["float32", "float64"]
CHARS = {"numba": 2000, "numpy": 100}  # the reference is a Python loop per character


def _model(dtype, backend):
    require_backend(backend)
    require(hasattr(fastrnn.RNN, "stream"), "generation and streams came with fastrnn.generation")
    return char_model(np.dtype(dtype).type, backend=backend)


class Sample:
    """``text.sample``: 1 stream (``CHARS`` characters) or 64 streams of 500 together."""

    params = (DTYPES, ["1", "64"], BACKENDS)
    param_names = ["dtype", "streams", "backend"]
    timeout = 300

    def setup(self, dtype, streams, backend):
        if backend == "numpy" and streams == "64":
            raise NotImplementedError("the reference's 64 streams take seconds: timed at 1 stream only")
        self.model = _model(dtype, backend)
        self.chars = CHARS[backend] if streams == "1" else 500
        self.streams = int(streams)
        fastrnn.text.sample(self.model, 10, seed=0, n_samples=self.streams)  # compile or load, untimed

    def time_sample(self, dtype, streams, backend):
        fastrnn.text.sample(self.model, self.chars, seed=0, n_samples=self.streams)

    def track_microseconds_per_character(self, dtype, streams, backend):
        """Per character of all streams (lower is better, as asv reads a track)."""
        seconds = median_seconds(
            lambda: fastrnn.text.sample(self.model, self.chars, seed=0, n_samples=self.streams), repeat=5
        )
        return seconds / (self.chars * self.streams) * 1e6

    track_microseconds_per_character.unit = "us"


class StreamStep:
    """``Stream.step`` for one sequence: symbol indices or a dense input."""

    params = (DTYPES, ["indices", "dense"], BACKENDS)
    param_names = ["dtype", "input", "backend"]

    def setup(self, dtype, kind, backend):
        model = _model(dtype, backend)
        self.stream = model.stream()
        self.x_t = np.array([3]) if kind == "indices" else np.eye(model.n_x, 1, -3, dtype=dtype)
        self.stream.step(self.x_t)

    def time_step(self, dtype, kind, backend):
        self.stream.step(self.x_t)


class StreamSpeedup:
    """``Stream.step`` for one sequence on the Numba backend over the same step on the NumPy
    reference, timed in turn in one process (``common.median_ratio``): larger is worse, as
    asv reads every ``track_``; gated (``benchmarks/compare.sh``).  The reference is the
    yardstick because it changes only with the maths (``rnn_cell_forward``, the yardstick
    before, got 2.5 times faster, and moved the ratio with it)."""

    params = DTYPES
    param_names = ["dtype"]
    unit = "numba time / numpy time"

    def setup(self, dtype):
        self.streams = {backend: _model(dtype, backend).stream() for backend in ("numba", "numpy")}
        self.index = np.array([3])
        for stream in self.streams.values():
            stream.step(self.index)

    def track_numba_time_over_numpy(self, dtype):
        return median_ratio(
            lambda: self.streams["numba"].step(self.index), lambda: self.streams["numpy"].step(self.index)
        )


class CellSpeedup:
    """``rnn_cell_forward`` for one sequence at the model's size, the Numba backend over the
    NumPy reference, as ``StreamSpeedup`` (not gated: see docs/benchmarks.md)."""

    params = DTYPES
    param_names = ["dtype"]
    unit = "numba time / numpy time"

    def setup(self, dtype):
        model = _model(dtype, "numba")
        self.params = model.params
        self.x = np.eye(model.n_x, 1, -3, dtype=dtype)
        self.a = np.zeros((model.n_a, 1), dtype=dtype)
        self.cells = {
            backend: (
                lambda backend=backend: fastrnn.rnn_cell_forward(self.x, self.a, self.params, backend=backend)
            )
            for backend in ("numba", "numpy")
        }
        for cell in self.cells.values():
            cell()

    def track_numba_time_over_numpy(self, dtype):
        return median_ratio(self.cells["numba"], self.cells["numpy"])


_FIRST_GENERATION = """
import time
import numpy as np
start = time.perf_counter()
import fastrnn
model = fastrnn.RNN(65, 128, 65, dtype=np.{dtype}, seed=0)
model.vocab = "".join(chr(33 + k) for k in range(65))
loaded = time.perf_counter()
{call}
print(time.perf_counter() - loaded)
"""
_CALLS = {
    "sample": "import fastrnn.text; fastrnn.text.sample(model, 20, seed=0)",
    "stream step": "model.stream().step(np.array([3]))",
}


def _first_call_seconds(dtype, call, cache_dir):
    """Seconds of a first ``call`` in a new interpreter whose Numba cache is ``cache_dir``,
    after the model is made (imports not counted: ``CompileTime`` in bench_rnn counts them)."""
    return numbers_from_fresh_process(_FIRST_GENERATION.format(dtype=dtype, call=_CALLS[call]), cache_dir)[0]


class GenerationCompileTime:
    """The first ``text.sample`` and the first ``Stream.step`` in a fresh process: cold
    (empty Numba cache: their kernels compile) and warm (loaded from the cache).  float32,
    the dtype ``train`` gives a character model (float64 compiles as long: 4.5 against 4.4 s
    for a sample; each cold run costs CI seconds)."""

    params = (["float32"], list(_CALLS))
    param_names = ["dtype", "call"]
    unit = "seconds"
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, dtype, call):
        require_backend("numba")
        require(hasattr(fastrnn.RNN, "stream"), "generation and streams came with fastrnn.generation")

    def track_first_call_cold(self, dtype, call):
        with tempfile.TemporaryDirectory() as cache_dir:
            return _first_call_seconds(dtype, call, cache_dir)

    def track_first_call_warm(self, dtype, call):
        with tempfile.TemporaryDirectory() as cache_dir:
            _first_call_seconds(dtype, call, cache_dir)  # fills the cache
            return _first_call_seconds(dtype, call, cache_dir)


class SampleCommand:
    """``python -m fastrnn sample CHECKPOINT --chars 300``: the whole wall time of the
    command a user types, in a fresh process, with Numba's cache filled by an earlier one."""

    unit = "seconds"
    timeout = 600
    number = 1
    repeat = 3

    def setup(self):
        require_backend("numba")
        require(hasattr(fastrnn.RNN, "stream"), "compiled generation came with fastrnn.generation")
        self.folder = tempfile.TemporaryDirectory()
        self.checkpoint = os.path.join(self.folder.name, "model.npz")
        char_model(np.float32).save(self.checkpoint)
        self.environment = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(self.folder.name, "numba"))
        self._run()  # fills the cache

    def teardown(self):
        self.folder.cleanup()

    def _run(self):
        command = [
            sys.executable,
            "-m",
            "fastrnn",
            "sample",
            self.checkpoint,
            "--chars",
            "300",
            "--seed",
            "0",
        ]
        subprocess.run(command, env=self.environment, capture_output=True, check=True, timeout=600)

    def track_wall_seconds(self):
        import time

        start = time.perf_counter()
        self._run()
        return time.perf_counter() - start
