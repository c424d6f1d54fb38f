"""What the asv suites share: the sizes, the problems, timing helpers, and feature checks.

``asv run A..B`` measures old commits with today's suite, so the suite leans on fastrnn's
public API only (``init_params``, ``loss_and_grads``, ``RNN``, ...), never on helpers
inside the package that may move; what a commit lacks makes a benchmark skip
(``NotImplementedError`` in ``setup``, ``require``), not fail.  The problems are built here
the way ``python -m fastrnn bench`` builds them (``fastrnn.problems``), so that both report
the same sizes.
"""

import os
import subprocess
import sys
import time

import numpy as np

import fastrnn

#: (name, n_x, n_a, n_y, m, T): the sizes of ``python -m fastrnn bench``.
BENCH_SIZES = (
    ("tiny", 8, 16, 8, 1, 100),
    ("small", 32, 64, 32, 16, 100),
    ("char-rnn", 65, 128, 65, 32, 64),
    ("char-rnn-256", 65, 128, 65, 256, 64),
    ("large", 256, 512, 256, 64, 50),
)
SIZES = {name: shape for name, *shape in BENCH_SIZES}
#: The networks' size (``bench_networks``): char-rnn.
NETWORK_SHAPE = SIZES["char-rnn"]
DTYPES = ["float64", "float32"]
BACKENDS = ["numba", "numpy"]


def require(condition, what):
    """Skip the benchmark (asv reports it as skipped) unless ``condition``: ``what`` says
    what is missing, e.g. on an older commit or without an optional dependency."""
    if not condition:
        raise NotImplementedError(what)


def require_backend(backend):
    require(backend in fastrnn.available_backends(), f"backend {backend} is not available here")


def median_seconds(function, *, repeat=7, min_seconds=0.05):
    """Median wall time of ``function()``; each sample loops until ``min_seconds``."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            function()
        if time.perf_counter() - start >= min_seconds or loops >= 1 << 20:
            break
        loops *= 2
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            function()
        samples.append((time.perf_counter() - start) / loops)
    return float(np.median(samples))


def median_ratio(function, baseline, *, rounds=5, repeat=3):
    """``function``'s time over ``baseline``'s: the median over ``rounds`` rounds that each
    time one, then the other, so that both see the same machine state (the gated ratios,
    docs/benchmarks.md)."""
    ratios = [
        median_seconds(function, repeat=repeat) / median_seconds(baseline, repeat=repeat)
        for _ in range(rounds)
    ]
    return float(np.median(ratios))


def numbers_from_fresh_process(code, cache_dir):
    """The numbers on the last line ``code`` prints, run in a new interpreter whose Numba
    cache is ``cache_dir`` (the Numba backend chosen): what the compile-time benchmarks
    measure, cold (an empty cache) or warm (one an earlier process filled)."""
    environment = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, FASTRNN_BACKEND="numba")
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True, timeout=600
    )
    return tuple(float(number) for number in result.stdout.strip().splitlines()[-1].split())


def make_problem(n_x, n_a, n_y, m, T, *, dtype=np.float64, seed=0):
    """Random ``(x, a0, y, params)`` of one size, as ``python -m fastrnn bench`` draws them."""
    rng = np.random.default_rng(seed)
    params = fastrnn.init_params(n_x, n_a, n_y, seed=rng, dtype=dtype)
    x = rng.standard_normal((n_x, m, T)).astype(dtype)
    a0 = (0.1 * rng.standard_normal((n_a, m))).astype(dtype)
    y = rng.integers(0, n_y, size=(m, T))
    return x, a0, y, params


def network_problem(kind, n_x, n_a, n_y, m, T, *, dtype=np.float64, seed=0):
    """``(x, y, params, lengths)`` of a network kind: "1 layer", "2 layers", "bidirectional"
    or "variable length" (one layer, lengths uniform in 1..T; padding holds NaN, never read)."""
    x, _, y, _ = make_problem(n_x, n_a, n_y, m, T, dtype=dtype, seed=seed)
    layers, bidirectional = {"2 layers": (2, False), "bidirectional": (1, True)}.get(kind, (1, False))
    params = fastrnn.init_params(
        n_x, n_a, n_y, num_layers=layers, bidirectional=bidirectional, seed=seed, dtype=dtype
    )
    lengths = None
    if kind == "variable length":
        lengths = np.random.default_rng(seed).integers(1, T + 1, size=m)
        x = x.copy()
        x[:, np.arange(T)[None, :] >= lengths[:, None]] = np.nan
    return x, y, params, lengths


def network_flops(kind, n_x, n_a, n_y, m, T):
    """Floating-point operations of a network kind's matrix products over a full batch."""
    layers, directions = {"2 layers": (2, 1), "bidirectional": (1, 2)}.get(kind, (1, 1))
    per_row = 0
    for layer in range(layers):
        n_in = n_x if layer == 0 else directions * n_a
        per_row += directions * 3 * n_a * (n_in + n_a)
    return 2 * m * T * (per_row + 3 * directions * n_a * n_y)


def char_model(dtype, backend=None, n_symbols=65, n_a=128):
    """A character model (65 symbols, hidden 128) with random weights and a vocabulary: the
    speed of generation and streams does not depend on training."""
    model = fastrnn.RNN(n_symbols, n_a, n_symbols, dtype=dtype, backend=backend, seed=0)
    model.vocab = "".join(chr(ord("!") + k) for k in range(n_symbols))
    return model
