"""Command line: ``python -m fastrnn [demo | bench]``.

``demo`` (the default) runs one training step's maths (``loss_and_grads``) on every
available backend for a few sizes and prints the loss, the largest relative difference
between the backends and the median time of each.  ``bench`` (``fastrnn.bench``) times
the Numba and NumPy backends against PyTorch CPU and the BLAS peak.
"""

import argparse
import time

import numpy as np

from . import api

# (name, n_x, n_a, n_y, m, T)
DEMO_SIZES = (
    ("tiny", 8, 16, 8, 1, 100),
    ("small", 32, 64, 32, 16, 100),
    ("char-rnn", 65, 128, 65, 32, 64),
)


def make_problem(n_x, n_a, n_y, m, T, *, dtype=np.float64, seed=0):
    """Random parameters, inputs and labels of one size (what the demo and bench run).

    Returns
    -------
    x : ndarray, shape (n_x, m, T)
    a0 : ndarray, shape (n_a, m)
    y : ndarray of int64, shape (m, T)
    params : dict
    """
    rng = np.random.default_rng(seed)
    params = api.init_params(n_x, n_a, n_y, seed=rng, dtype=dtype)
    x = rng.standard_normal((n_x, m, T)).astype(dtype)
    a0 = (0.1 * rng.standard_normal((n_a, m))).astype(dtype)
    y = rng.integers(0, n_y, size=(m, T))
    return x, a0, y, params


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


def max_relative_difference(a, b):
    """``max|a - b| / max|b|``: the difference relative to the reference's scale."""
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(np.asarray(a, np.float64) - b))) / (scale if scale > 0 else 1.0)


def demo(sizes=DEMO_SIZES, dtype=np.float64):
    backends = api.available_backends()
    print(f"fastrnn demo: loss_and_grads, {np.dtype(dtype).name}, backends {', '.join(backends)}")
    header = f"{'size':<9} {'(n_x, n_a, n_y, m, T)':<23} {'backend':<7} {'loss':>12} {'first call':>11} {'median':>10} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    for name, *shape in sizes:
        x, a0, y, params = make_problem(*shape, dtype=dtype)
        results = {}
        for backend in backends:
            start = time.perf_counter()
            loss, grads = api.loss_and_grads(x, a0, y, params, backend=backend)
            first = time.perf_counter() - start
            seconds = median_seconds(lambda: api.loss_and_grads(x, a0, y, params, backend=backend))
            results[backend] = (loss, grads, first, seconds)
        slowest = max(r[3] for r in results.values())
        for backend, (loss, _, first, seconds) in results.items():
            print(
                f"{name:<9} {str(tuple(shape)):<23} {backend:<7} {loss:>12.6f} {first * 1e3:>9.1f}ms"
                f" {seconds * 1e3:>8.3f}ms {slowest / seconds:>7.1f}x"
            )
        if len(results) == 2:
            (loss_a, grads_a, *_), (loss_b, grads_b, *_) = results.values()
            worst = max(max_relative_difference(grads_a[k], grads_b[k]) for k in grads_b)
            worst = max(worst, abs(float(loss_a) - float(loss_b)) / abs(float(loss_b)))
            print(f"{'':<9} largest relative difference between backends (loss and all gradients): {worst:.1e}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastrnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    demo_parser = sub.add_parser("demo", help="run loss_and_grads on both backends for a few sizes (default)")
    demo_parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    bench_parser = sub.add_parser("bench", help="time a training step: Numba, NumPy, PyTorch CPU and the BLAS peak")
    bench_parser.add_argument("--sizes", default="tiny,small,char-rnn,large", help="comma-separated, from: %(default)s")
    bench_parser.add_argument("--dtypes", default="float64,float32", help="comma-separated (default: %(default)s)")
    bench_parser.add_argument("--repeat", type=int, default=7, help="samples per median (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        return demo(dtype=getattr(args, "dtype", "float64"))
    if args.command == "bench":
        from . import bench

        known = {size[0]: size for size in bench.BENCH_SIZES}
        names = [name.strip() for name in args.sizes.split(",") if name.strip()]
        unknown = [name for name in names if name not in known]
        if unknown:
            parser.error(f"--sizes: unknown size(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        dtypes = [name.strip() for name in args.dtypes.split(",") if name.strip()]
        if not dtypes or any(d not in ("float64", "float32") for d in dtypes):
            parser.error(f"--dtypes: expected float64 and/or float32, got {args.dtypes!r}")
        bench.run([known[name] for name in names], [np.dtype(d).type for d in dtypes], repeat=args.repeat)
        return 0
    parser.error(f"unknown command {args.command}")
