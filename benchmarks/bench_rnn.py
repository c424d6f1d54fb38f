"""asv benchmarks of fastrnn: speed, memory and compile time of a training step.

Sizes are (n_x, n_a, n_y, m, T), the ones ``python -m fastrnn bench`` prints.  Compilation
is paid in ``setup``, never timed, except in ``CompileTime``, which measures it on purpose
in fresh processes.  A combination that cannot run here (the Numba backend without Numba)
raises ``NotImplementedError`` in ``setup``, which asv reports as skipped.
"""

import functools
import tempfile
import tracemalloc

import numpy as np

import fastrnn
import fastrnn.optim

from .common import (
    BACKENDS,
    DTYPES,
    SIZES,
    make_problem,
    median_ratio,
    numbers_from_fresh_process,
    require_backend,
)


def _problem(size, dtype, backend):
    require_backend(backend)
    x, a0, y, params = make_problem(*SIZES[size], dtype=np.dtype(dtype).type)
    # Compile or load every kernel the benchmarks call, untimed.
    fastrnn.loss_and_grads(x, a0, y, params, backend=backend)
    a, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend)
    fastrnn.rnn_backward(np.ones_like(a), cache)
    fastrnn.loss(x, a0, y, params, backend=backend)
    return x, a0, y, params


class TrainingStep:
    """``loss_and_grads`` (forward, loss, BPTT) and ``rnn_forward`` per size, dtype, backend."""

    params = (list(SIZES), DTYPES, BACKENDS)
    param_names = ["size", "dtype", "backend"]
    timeout = 300

    def setup(self, size, dtype, backend):
        self.x, self.a0, self.y, self.params = _problem(size, dtype, backend)
        self.backend = backend
        self.workspace = fastrnn.Workspace()
        fastrnn.loss_and_grads(
            self.x, self.a0, self.y, self.params, backend=backend, workspace=self.workspace
        )

    def time_loss_and_grads(self, size, dtype, backend):
        fastrnn.loss_and_grads(self.x, self.a0, self.y, self.params, backend=self.backend)

    def time_loss_and_grads_workspace(self, size, dtype, backend):
        fastrnn.loss_and_grads(
            self.x, self.a0, self.y, self.params, backend=self.backend, workspace=self.workspace
        )

    def time_rnn_forward(self, size, dtype, backend):
        fastrnn.rnn_forward(self.x, self.a0, self.params, backend=self.backend)

    def time_loss(self, size, dtype, backend):
        """The loss alone (validation, scoring): a forward pass that keeps no caches."""
        fastrnn.loss(self.x, self.a0, self.y, self.params, backend=self.backend)

    def peakmem_loss_and_grads(self, size, dtype, backend):
        fastrnn.loss_and_grads(self.x, self.a0, self.y, self.params, backend=self.backend)


class Workers:
    """A training step with the default ``workers`` (fastrnn's choice of shards and BLAS
    threads), with ``workers=1``, and with one shard per core (``-1``), at the sizes where
    threads matter; and the default's speed-up over ``workers=1`` measured in one process
    (a ratio is steadier than two times on a shared machine)."""

    params = (["char-rnn", "char-rnn-256", "large"], DTYPES, ["default", "1", "-1"])
    param_names = ["size", "dtype", "workers"]
    timeout = 300

    def setup(self, size, dtype, workers):
        self.problem = _problem(size, dtype, "numba")
        self.workers = None if workers == "default" else int(workers)
        self.time_loss_and_grads(size, dtype, workers)  # start the shard threads, untimed

    def time_loss_and_grads(self, size, dtype, workers):
        fastrnn.loss_and_grads(*self.problem, backend="numba", workers=self.workers)


class WorkersSpeedup:
    """The default ``workers``' step time over ``workers=1``'s, timed in turn in one process
    (``common.median_ratio``): below 1 when the default's threads pay.  A time over
    a time, so that larger is worse, as asv reads every ``track_``; gated
    (``benchmarks/compare.sh``)."""

    params = (["char-rnn", "char-rnn-256", "large"], DTYPES)
    param_names = ["size", "dtype"]
    unit = "default time / 1-worker time"
    timeout = 600

    def setup(self, size, dtype):
        self.problem = _problem(size, dtype, "numba")
        self.steps = {
            workers: functools.partial(
                fastrnn.loss_and_grads, *self.problem, backend="numba", workers=workers
            )
            for workers in (None, 1)
        }
        self.steps[None]()  # start the shard threads, untimed

    def track_default_time_over_one_worker(self, size, dtype):
        return median_ratio(self.steps[None], self.steps[1])


class CharModel:
    """A character-level model's training step: one-hot inputs by index (``loss_and_grads_onehot``)
    and ``RNN.train_step`` with Adagrad and global-norm clipping, as ``python -m fastrnn train``
    runs it, at the char-rnn size (vocabulary 65, hidden 128, batch 32, 64 steps)."""

    params = (DTYPES, BACKENDS)
    param_names = ["dtype", "backend"]
    timeout = 300

    def setup(self, dtype, backend):
        require_backend(backend)
        rng = np.random.default_rng(0)
        self.model = fastrnn.RNN(65, 128, 65, dtype=np.dtype(dtype).type, backend=backend, seed=0)
        self.x_index = rng.integers(0, 65, size=(32, 64))
        self.y = rng.integers(0, 65, size=(32, 64))
        self.a0 = np.zeros((128, 32), dtype=dtype)
        self.optimizer = fastrnn.optim.Adagrad(lr=0.01, backend=backend)
        self.workspace = fastrnn.Workspace()
        self.time_train_step(dtype, backend)  # compile, untimed
        self.time_loss_and_grads_onehot(dtype, backend)

    def time_loss_and_grads_onehot(self, dtype, backend):
        fastrnn.loss_and_grads_onehot(self.x_index, self.a0, self.y, self.model.params, backend=backend)

    def time_train_step(self, dtype, backend):
        self.model.train_step(self.x_index, self.y, self.optimizer, clip_norm=5.0, workspace=self.workspace)


class Memory:
    """Peak memory of one ``loss_and_grads`` over the memory of the arrays it must hold:
    inputs (x, a0, y), parameters, gradients (dx, da0 and one per parameter), hidden states
    (n_a, m, T) and softmax outputs (n_y, m, T).  NumPy reports its allocations to
    ``tracemalloc``; the kernels allocate nothing.  Steadier than ``peakmem_``, which counts
    the whole process (about 170 MB of Numba and LLVM before any array)."""

    params = (list(SIZES), DTYPES, BACKENDS)
    param_names = ["size", "dtype", "backend"]
    unit = "ratio"

    def setup(self, size, dtype, backend):
        self.problem = _problem(size, dtype, backend)
        self.backend = backend

    def track_peak_over_required(self, size, dtype, backend):
        x, a0, y, params = self.problem
        n_x, n_a, n_y, m, T = SIZES[size]
        held = x.nbytes + a0.nbytes + y.nbytes + sum(p.nbytes for p in params.values())
        itemsize = x.itemsize
        required = held + itemsize * (
            n_x * m * T + n_a * m + sum(p.size for p in params.values()) + (n_a + n_y) * m * T
        )
        tracemalloc.start()
        try:
            fastrnn.loss_and_grads(x, a0, y, params, backend=self.backend)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return (held + peak) / required


class Speedup:
    """The Numba backend's ``loss_and_grads`` time over the NumPy backend's, timed in turn in
    one process (``common.median_ratio``; a ratio is steadier than two times on a
    busy machine).  A time over a time, so that larger is worse, as asv reads every
    ``track_``; gated (``benchmarks/compare.sh``).  ``python -m fastrnn bench`` prints its
    inverse, the speed-up."""

    params = (list(SIZES), DTYPES)
    param_names = ["size", "dtype"]
    unit = "numba time / numpy time"
    timeout = 600

    def setup(self, size, dtype):
        self.problem = _problem(size, dtype, "numba")
        fastrnn.loss_and_grads(*self.problem, backend="numpy")

    def track_numba_time_over_numpy(self, size, dtype):
        numba, numpy = (
            functools.partial(fastrnn.loss_and_grads, *self.problem, backend=backend) for backend in BACKENDS
        )
        return median_ratio(numba, numpy)


_FIRST_CALL = """
import time
import numpy as np
start = time.perf_counter()
import fastrnn
params = fastrnn.init_params(8, 16, 8, dtype=np.{dtype})
fastrnn.loss_and_grads(np.ones((8, 1, 10)), np.zeros((16, 1)), np.zeros((1, 10), int), params, backend="numba")
print(time.perf_counter() - start)
"""


# The first call of a variable-length step and of a 2-layer bidirectional one, after the
# seed's (whose kernels they share in part): what a user of those networks waits for.
_NETWORK_FIRST_CALLS = {
    "variable length": "fastrnn.loss_and_grads(np.ones((8, 2, 10)), None, np.zeros((2, 10), int), "
    "fastrnn.init_params(8, 16, 8, dtype=np.{dtype}), lengths=np.array([10, 4]))",
    "2 layers bidirectional": "fastrnn.loss_and_grads(np.ones((8, 2, 10)), None, np.zeros((2, 10), int), "
    "fastrnn.init_params(8, 16, 8, num_layers=2, bidirectional=True, dtype=np.{dtype}))",
}


def _first_call_seconds(dtype, cache_dir, snippet=_FIRST_CALL):
    """Seconds from ``import fastrnn`` to the end of the first Numba ``loss_and_grads``, in a
    new interpreter whose Numba cache is ``cache_dir`` (``snippet``: the code it runs)."""
    return numbers_from_fresh_process(snippet.format(dtype=dtype), cache_dir)[0]


class CompileTime:
    """First-call time in a fresh process: cold (empty Numba cache: everything compiles) and
    warm (cache filled by an earlier process: kernels load from disk)."""

    params = DTYPES
    param_names = ["dtype"]
    unit = "seconds"
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, dtype):
        if "numba" not in fastrnn.available_backends():
            raise NotImplementedError("numba is not available here")

    def track_first_call_cold(self, dtype):
        with tempfile.TemporaryDirectory() as cache_dir:
            return _first_call_seconds(dtype, cache_dir)

    def track_first_call_warm(self, dtype):
        with tempfile.TemporaryDirectory() as cache_dir:
            _first_call_seconds(dtype, cache_dir)  # fills the cache
            return _first_call_seconds(dtype, cache_dir)


class NetworkCompileTime:
    """The first call of a network beyond the seed's, in a fresh process with an empty Numba
    cache, after the seed's first call there: the compile time these networks add."""

    params = (DTYPES, list(_NETWORK_FIRST_CALLS))
    param_names = ["dtype", "network"]
    unit = "seconds"
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, dtype, network):
        if "numba" not in fastrnn.available_backends():
            raise NotImplementedError("numba is not available here")

    def track_added_first_call_cold(self, dtype, network):
        snippet = _FIRST_CALL.replace(
            "print(time.perf_counter() - start)",
            "seed = time.perf_counter()\n"
            + _NETWORK_FIRST_CALLS[network]
            + "\nprint(time.perf_counter() - seed)",
        )
        with tempfile.TemporaryDirectory() as cache_dir:
            return _first_call_seconds(dtype, cache_dir, snippet)
