"""The PyTorch door (``fastrnn.torch.RNN``) against ``torch.nn.RNN``: a full PyTorch training
step, the ratio of the two, and what a user waits for on first use.

Every benchmark here needs PyTorch (``pip install 'fastrnn[torch]'``); without it, setup
raises ``NotImplementedError`` and asv skips them.  The step is
``fastrnn.torch.bench.make_step``'s, the one ``python -m fastrnn bench --torch`` times.
"""

import os
import tempfile

from .common import median_ratio, numbers_from_fresh_process

CASES = ["tiny", "char-rnn", "char-rnn packed", "char-rnn 2-layer bi", "large"]
DTYPES = ["float32", "float64"]


def _torch():
    try:
        import torch
    except ImportError:
        raise NotImplementedError(
            "PyTorch is not installed (pip install 'fastrnn[torch]'; in an asv environment, docs/benchmarks.md)"
        ) from None
    return torch


def _make_step(rnn, case, dtype):
    """``fastrnn.torch.bench.make_step``: the step ``python -m fastrnn bench --torch`` times
    (one definition of the step for both); a skip on a commit without the PyTorch door."""
    try:
        from fastrnn.torch.bench import make_step
    except ImportError:
        raise NotImplementedError("this commit has no fastrnn.torch") from None
    return make_step(rnn, case, dtype)


class TorchStep:
    """One training step: the RNN, an ``nn.Linear``, cross-entropy, backward."""

    params = (CASES, DTYPES, ["fastrnn", "nn"])
    param_names = ["case", "dtype", "rnn"]
    timeout = 300

    def setup(self, case, dtype, rnn):
        torch = _torch()
        torch.set_num_threads(os.cpu_count() or 1)
        self.step = _make_step(rnn, case, dtype)
        self.step()  # compile or load the kernels

    def time_training_step(self, case, dtype, rnn):
        self.step()


class TorchSpeedup:
    """``fastrnn.torch.RNN``'s step time over ``nn.RNN``'s, timed in turn in one process
    (7 rounds, the median of the rounds' ratios): below 1 is faster.  A time over a time,
    so that larger is worse, as asv reads every ``track_``."""

    params = (["tiny", "char-rnn", "char-rnn packed", "large"], ["float32"])
    param_names = ["case", "dtype"]
    unit = "fastrnn time / nn.RNN time"
    timeout = 600

    def setup(self, case, dtype):
        torch = _torch()
        torch.set_num_threads(os.cpu_count() or 1)
        self.steps = {rnn: _make_step(rnn, case, dtype) for rnn in ("fastrnn", "nn")}
        for step in self.steps.values():
            step()

    def track_time_over_nn_rnn(self, case, dtype):
        return median_ratio(self.steps["fastrnn"], self.steps["nn"], rounds=7)


_FIRST_USE = """
import time
start = time.perf_counter()
import fastrnn.torch
imported = time.perf_counter()
import torch
rnn = fastrnn.torch.RNN(8, 16, dtype=torch.{dtype})
output, _ = rnn(torch.randn(10, 2, 8, dtype=torch.{dtype}))
output.sum().backward()
print(imported - start, time.perf_counter() - imported)
"""


def _first_use(dtype, cache_dir):
    """``(import seconds, first forward + backward seconds)`` in a new interpreter whose
    Numba cache is ``cache_dir``."""
    return numbers_from_fresh_process(_FIRST_USE.format(dtype=dtype), cache_dir)


class TorchCompileTime:
    """First use in a fresh process: ``import fastrnn.torch`` (PyTorch's import included),
    and the first forward and backward pass, cold (empty Numba cache: its kernels compile)
    and warm (kernels loaded from the cache an earlier process filled)."""

    params = ["float32"]
    param_names = ["dtype"]
    unit = "seconds"
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, dtype):
        _torch()
        _make_step("fastrnn", "tiny", dtype)  # a skip without fastrnn.torch

    def track_import(self, dtype):
        with tempfile.TemporaryDirectory() as cache_dir:
            _first_use(dtype, cache_dir)
            return _first_use(dtype, cache_dir)[0]

    def track_first_step_cold(self, dtype):
        with tempfile.TemporaryDirectory() as cache_dir:
            return _first_use(dtype, cache_dir)[1]

    def track_first_step_warm(self, dtype):
        with tempfile.TemporaryDirectory() as cache_dir:
            _first_use(dtype, cache_dir)
            return _first_use(dtype, cache_dir)[1]
