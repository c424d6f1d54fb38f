"""Measurements: ``python -m fastrnn`` (``demo``) and ``python -m fastrnn bench``.

``demo`` runs one training step's maths (``loss_and_grads``) on every available backend
for a few sizes and prints the loss, the largest relative difference between the backends
and the median time of each.

``bench`` compares fastrnn against NumPy, PyTorch CPU and the BLAS peak, side by side.

For each size and dtype it times one training step (forward, cross-entropy, backward:
``loss_and_grads``) on the Numba backend with the default ``workers`` and with
``workers=1``, on the NumPy backend and, when torch is installed, ``torch.nn.RNN`` +
``nn.Linear`` + ``cross_entropy`` + ``backward`` with the same dtype and as many threads as
this process has cores; and it measures the matrix-multiply peak of the BLAS the Numba
kernels call (SciPy's, through Numba's ``np.dot``) on a (3200 x 512) @ (512 x 512)
product.  Times are medians; each backend is timed in its own block, because two BLAS
thread pools (NumPy's and SciPy's) spinning in turn slow each other down.
"""

import functools
import os
import time

import numpy as np

from . import api, parallel
from .problems import (  # noqa: F401  (re-exported: the measurements' problems)
    BENCH_SIZES,
    DEMO_SIZES,
    NETWORK_SIZE,
    TORCH_CASES,
    make_problem,
    max_relative_difference,
    network_problem,
    torch_modules,
)


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
            seconds = median_seconds(functools.partial(api.loss_and_grads, x, a0, y, params, backend=backend))
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
            print(
                f"{'':<9} largest relative difference between backends (loss and all gradients): {worst:.1e}"
            )
    return 0


def training_step_flops(n_x, n_a, n_y, m, T):
    """Floating-point operations of the matrix products in one ``loss_and_grads``: two per
    multiply-add of ``parallel.step_multiply_adds``.  Elementwise work is left out."""
    return 2 * parallel.step_multiply_adds(m, T, n_x, n_a, n_y)


def blas_peak_flops(dtype, *, rows=3200, inner=512, cols=512):
    """Peak of Numba's np.dot (SciPy's BLAS) on one large product, flop/s."""
    from numba import njit

    @njit
    def product(a, b, out):
        np.dot(a, b, out)

    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, inner)).astype(dtype)
    b = rng.standard_normal((inner, cols)).astype(dtype)
    out = np.empty((rows, cols), dtype=dtype)
    seconds = median_seconds(lambda: product(a, b, out), repeat=9, min_seconds=0.1)
    return 2 * rows * inner * cols / seconds


def torch_step(x, a0, y, params, lengths=None):
    """A closure running one PyTorch training step on the same problem, or None without torch.

    ``a0`` is (n_a, m) or (num_layers * D, n_a, m); with ``lengths`` the inputs and targets
    are packed (``pack_padded_sequence``, ``enforce_sorted=False``) inside the step, as a
    training loop over variable-length batches does.
    """
    try:
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence
    except ImportError:
        return None
    n_x, m, T = x.shape
    n_y = params["W_ya"].shape[0]
    rnn, linear = torch_modules(params)
    inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 1, 0))).requires_grad_(True)  # (T, m, n_x)
    states = a0 if a0.ndim == 3 else a0[None]
    h0 = torch.from_numpy(np.ascontiguousarray(states.transpose(0, 2, 1))).requires_grad_(
        True
    )  # (L * D, m, n_a)
    targets = torch.from_numpy(np.ascontiguousarray(y.T))  # (T, m)
    sizes = None if lengths is None else torch.from_numpy(np.asarray(lengths, dtype=np.int64))

    def step():
        for parameter in (*rnn.parameters(), *linear.parameters(), inputs, h0):
            parameter.grad = None
        if sizes is None:
            hidden, _ = rnn(inputs, h0)
            logits, labels = linear(hidden).reshape(T * m, n_y), targets.reshape(-1)
        else:
            hidden, _ = rnn(pack_padded_sequence(inputs, sizes, enforce_sorted=False), h0)
            logits = linear(hidden.data)  # the packed steps only
            labels = pack_padded_sequence(targets, sizes, enforce_sorted=False).data
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / m
        loss.backward()
        return loss

    return step


def blas_description():
    """Which BLAS libraries are loaded, with their kernels and threads (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl cannot be imported: the BLAS kernel is unknown"
    return "; ".join(
        f"{info.get('internal_api')} {info.get('version')} {info.get('architecture')} x{info.get('num_threads')}"
        f" ({os.path.basename(info.get('filepath', ''))})"
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    )


def run(sizes=BENCH_SIZES, dtypes=(np.float64, np.float32), repeat=7):
    """Measure and print the table; returns the rows as dicts (for tests and scripts)."""
    import numba  # noqa: F401  (the Numba backend must be there to be benchmarked)

    try:
        import torch

        torch.set_num_threads(parallel.available_cores())
        torch_version = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_version = "torch not installed: pip install torch==2.13.0 (a CPU build) to compare"
    print(f"fastrnn bench: one training step (loss_and_grads), medians of {repeat}")
    print(f"PyTorch: {torch_version}")
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if name in os.environ:
            print(f"warning: {name}={os.environ[name]} is set and slows OpenBLAS; unset it for this command")
    peaks = {np.dtype(d): blas_peak_flops(d) for d in dtypes}
    print(f"BLAS: {blas_description()}")  # after the peak, so that SciPy's BLAS is loaded
    print("BLAS matmul peak: " + ", ".join(f"{d.name} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()))
    header = (
        f"{'size':<12} {'dtype':<7} {'numba ms':>9} {'1 worker':>9} {'numpy ms':>9} {'torch ms':>9}"
        f" {'vs 1 wkr':>8} {'vs numpy':>8} {'vs torch':>8} {'GFLOP/s':>8} {'of peak':>7}  threads"
    )
    print(header)
    print("-" * len(header))
    results = []
    for dtype in dtypes:
        for name, *shape in sizes:
            x, a0, y, params = make_problem(*shape, dtype=dtype)
            times = {}
            for label, backend, workers in (
                ("numba", "numba", None),
                ("numba-1", "numba", 1),
                ("numpy", "numpy", None),
            ):
                step = functools.partial(
                    api.loss_and_grads, x, a0, y, params, backend=backend, workers=workers
                )
                step()  # compile / warm up
                times[label] = median_seconds(step, repeat=repeat)
            step = torch_step(x, a0, y, params)
            if step is not None:
                step()
                times["torch"] = median_seconds(step, repeat=repeat)
            flops = training_step_flops(*shape)
            threads = parallel.describe(
                parallel.plan(None, *shape[3:], *shape[:3], dtype=dtype, call="loss_and_grads")
            )
            row = dict(size=name, shape=tuple(shape), dtype=np.dtype(dtype).name, seconds=times, threads=threads,
                       gflops=flops / times["numba"] / 1e9, peak_fraction=flops / times["numba"] / peaks[np.dtype(dtype)])  # fmt: skip
            results.append(row)
            torch_ms = f"{times['torch'] * 1e3:>9.3f}" if "torch" in times else f"{'-':>9}"
            vs_torch = f"{times['torch'] / times['numba']:>7.2f}x" if "torch" in times else f"{'-':>8}"
            print(
                f"{name:<12} {row['dtype']:<7} {times['numba'] * 1e3:>9.3f} {times['numba-1'] * 1e3:>9.3f}"
                f" {times['numpy'] * 1e3:>9.3f} {torch_ms} {times['numba-1'] / times['numba']:>7.2f}x"
                f" {times['numpy'] / times['numba']:>7.1f}x {vs_torch} {row['gflops']:>8.1f} {row['peak_fraction']:>7.0%}"
                f"  {threads}"
            )
    print(
        "numba ms: the Numba backend with the default workers (threads: what it chose); 1 worker: with workers=1;\n"
        "vs 1 wkr, vs numpy, vs torch: how many times faster the default is; of peak: its GFLOP/s over the BLAS peak"
    )
    if any(size[0] == NETWORK_SIZE[0] for size in sizes):
        results += run_networks(dtypes, repeat)
    return results


# -- networks: stacked layers, both directions, variable lengths ---------------------------


def network_flops(kind, n_x, n_a, n_y, m, T, lengths=None):
    """Floating-point operations of a network row's matrix products (``training_step_flops``
    per layer and direction, over the real steps)."""
    rows = m * T if lengths is None else int(np.sum(lengths))
    layers, directions = {"2 layers": (2, 1), "bidirectional": (1, 2)}.get(kind, (1, 1))
    per_row = 0
    for layer in range(layers):
        n_in = n_x if layer == 0 else directions * n_a
        per_row += directions * 3 * n_a * (n_in + n_a)
    return 2 * rows * (per_row + 3 * directions * n_a * n_y)


def run_networks(dtypes=(np.float64, np.float32), repeat=7, size=NETWORK_SIZE):
    """The network rows: fastrnn (default ``workers``) against PyTorch on 2 layers, both
    directions and a variable-length batch; returns them as dicts.

    Every step is timed in each of ``repeat`` rounds, one after the other, so that the
    ratios (each round's, then their median) compare runs on the same machine state:
    ``relative cost`` is a row's time over the 1-layer row's against its products' over
    the 1-layer row's (an extra layer should cost its products, no more), and for the
    variable-length batch its time over the same batch at full length (the 1-layer row)
    against the fraction of its steps that are real.
    """
    name, *shape = size
    n_x, n_a, n_y, m, T = shape
    kinds = ("1 layer", "2 layers", "bidirectional", "variable length")
    print(f"\nnetworks at {name} size {tuple(shape)}: one training step, medians of {repeat} rounds")
    header = f"{'network':<16} {'dtype':<7} {'fastrnn ms':>10} {'torch ms':>9} {'vs torch':>8} {'GFLOP/s':>8}  relative cost"
    print(header)
    print("-" * len(header))
    results = []
    for dtype in dtypes:
        steps, flops, lengths_of = {}, {}, {}
        for kind in kinds:
            x, y, params, lengths = network_problem(kind, *shape, dtype=dtype)
            steps[kind] = functools.partial(api.loss_and_grads, x, None, y, params, lengths=lengths)
            layers = 2 if kind == "2 layers" else 1
            states = np.zeros((layers * (2 if kind == "bidirectional" else 1), n_a, m), dtype=dtype)
            torch_run = torch_step(np.nan_to_num(x), states, y, params, lengths)
            if torch_run is not None:
                steps["torch " + kind] = torch_run
            flops[kind], lengths_of[kind] = network_flops(kind, *shape, lengths=lengths), lengths
        for step in steps.values():
            step()  # compile, warm up
        rounds = {key: [] for key in steps}
        for _ in range(repeat):
            for key, step in steps.items():
                rounds[key].append(median_seconds(step, repeat=3, min_seconds=0.02))
        seconds = {key: float(np.median(times)) for key, times in rounds.items()}

        def ratio(kind, baseline="1 layer", rounds=rounds):
            return float(np.median(np.array(rounds[kind]) / np.array(rounds[baseline])))

        for kind in kinds:
            if kind == "1 layer":
                note = ""
            elif kind == "variable length":
                real = np.sum(lengths_of[kind]) / (m * T)
                note = f"{ratio(kind):.2f}x the same batch at full length; {real:.2f} of its steps are real"
            else:
                note = f"{ratio(kind):.2f}x the 1-layer step for {flops[kind] / flops['1 layer']:.2f}x its products"
            torch_seconds = seconds.get("torch " + kind)
            vs_torch = ratio("torch " + kind, kind) if torch_seconds else None
            row = dict(network=kind, dtype=np.dtype(dtype).name, seconds=seconds[kind], torch_seconds=torch_seconds,
                       vs_torch=vs_torch, relative_cost=None if kind == "1 layer" else ratio(kind),
                       gflops=flops[kind] / seconds[kind] / 1e9, note=note)  # fmt: skip
            results.append(row)
            torch_ms = f"{torch_seconds * 1e3:>9.3f}" if torch_seconds else f"{'-':>9}"
            torch_ratio = f"{vs_torch:>7.2f}x" if vs_torch else f"{'-':>8}"
            print(
                f"{kind:<16} {row['dtype']:<7} {seconds[kind] * 1e3:>10.3f} {torch_ms} {torch_ratio} {row['gflops']:>8.1f}  {note}"
            )
    print(
        "torch: nn.RNN(num_layers=2), nn.RNN(bidirectional=True), and pack_padded_sequence(enforce_sorted=False) of\n"
        "inputs and targets for the variable-length batch (lengths uniform in 1..T), + nn.Linear + cross_entropy;\n"
        "vs torch and relative cost: medians of the per-round ratios"
    )
    return results


# -- every machine: fastrnn.distributed on a Dask cluster ---------------------------------

#: (name, n_x, n_a, n_y, m, T, inputs): the whole batch of a ``DataParallel`` step.
DISTRIBUTED_SIZES = (
    ("char-rnn", 65, 128, 65, 32, 64, "one-hot"),
    ("large-512", 256, 512, 256, 512, 50, "dense"),
)
#: Sequences and chunk size of the scoring rows (char-rnn sizes, language-model scoring): a
#: scoring job of 2 million characters, large enough that Dask's fixed cost per call (about
#: 50 to 90 ms on 2 cores) is a small part of it.
SCORE_SEQUENCES, SCORE_CHUNK = 32768, 2048


def shard_loader(k, n_shards, n_x, n_y, m, T, inputs, dtype):
    """A ``DataParallel`` loader of random data: shard ``k`` of a batch of ``m`` sequences
    (module-level, so that Dask workers import it rather than receive it)."""
    rows = parallel.split_batch(m, n_shards)[k]
    rng = np.random.default_rng([17, k])
    size = rows.stop - rows.start
    y = rng.integers(0, n_y, size=(size, T))
    if inputs == "one-hot":
        return rng.integers(0, n_x, size=(size, T)), y
    return rng.standard_normal((n_x, size, T)).astype(dtype), y


def measure_data_parallel(client, size, dtype, *, steps=10):
    """A ``DataParallel`` step on ``client`` against one process with ``workers=1``.

    Returns
    -------
    dict
        Medians over ``steps`` steps, in seconds: ``dask`` (a whole step),
        ``slowest_shard`` (the longest shard's compute on its worker), ``overhead`` (the
        difference), and ``one_process`` (``RNN.train_step`` on the whole batch).
    """
    from .distributed import DataParallel
    from .model import RNN
    from .optim import SGD

    name, n_x, n_a, n_y, m, T, inputs = size
    n_shards = max(1, min(m, sum(client.nthreads().values())))
    loader = functools.partial(shard_loader, n_shards=n_shards, n_x=n_x, n_y=n_y, m=m, T=T, inputs=inputs,
                               dtype=np.dtype(dtype).name)  # fmt: skip
    model = RNN(n_x, n_a, n_y, dtype=dtype, seed=0)
    trainer = DataParallel(client, model, SGD(lr=1e-4), timeout=600)
    trainer.set_data(loader, n_shards)
    trainer.step()  # warm up
    timings = []
    for _ in range(steps):
        trainer.step()
        timings.append(trainer.last_step)
    parts = [loader(k) for k in range(n_shards)]
    batch = np.concatenate([p[0] for p in parts], axis=0 if inputs == "one-hot" else 1)
    labels = np.concatenate([p[1] for p in parts])
    here, optimizer = RNN(n_x, n_a, n_y, dtype=dtype, seed=0), SGD(lr=1e-4)
    one_process = functools.partial(here.train_step, batch, labels, optimizer, carry_state=False, workers=1)
    one_process()
    return dict(
        one_process_threads=parallel.describe(
            parallel.plan(1, m, T, 0 if inputs == "one-hot" else n_x, n_a, n_y)
        ),
        dask=float(np.median([t["seconds"] for t in timings])),
        slowest_shard=float(np.median([t["slowest_shard_seconds"] for t in timings])),
        overhead=float(np.median([t["overhead_seconds"] for t in timings])),
        one_process=median_seconds(one_process, repeat=steps, min_seconds=0),
        shards=n_shards,
    )


def measure_scoring(client, dtype, *, repeat=5, sequences=SCORE_SEQUENCES, chunk=SCORE_CHUNK):
    """``fastrnn.distributed.score`` of ``sequences`` char-rnn sequences (65 classes, 128
    hidden units, 64 steps scored) in chunks of ``chunk``, against ``loss_onehot`` with
    ``workers=1`` in one process.  Returns the medians in seconds (``dask``, ``one_process``)."""
    import dask.array

    from .distributed import score
    from .model import RNN

    model = RNN(65, 128, 65, dtype=dtype, seed=0)
    # Made on the workers, where scoring data lives; this process gets a copy for its run.
    chunks = dask.array.random.default_rng(0).integers(0, 65, size=(sequences, 65), chunks=(chunk, 65))
    chunks = client.persist(chunks)
    indices = chunks.compute()
    a0 = np.zeros((128, sequences), dtype=dtype)
    score(client, model, chunks).compute()  # warm up

    def on_dask():
        return score(client, model, chunks).compute()

    def here():
        return api.loss_onehot(
            indices[:, :-1], a0, indices[:, 1:], model.params, per_sequence=True, workers=1
        )

    here()
    return dict(
        one_process_threads=parallel.describe(parallel.plan(1, sequences, 64, 0, 128, 65)),
        dask=median_seconds(on_dask, repeat=repeat, min_seconds=0),
        one_process=median_seconds(here, repeat=repeat, min_seconds=0),
    )


def run_distributed(client, dtypes=(np.float64, np.float32), repeat=7):
    """Measure and print the ``DataParallel`` and ``score`` rows on ``client``'s cluster."""
    task_threads = client.nthreads()
    print(
        f"fastrnn bench --dask: {len(task_threads)} workers, {sum(task_threads.values())} task threads; "
        f"this process: {parallel.available_cores()} cores; medians of {repeat}"
    )
    header = (
        f"{'row':<22} {'dtype':<7} {'dask ms':>9} {'slowest':>9} {'overhead':>9} {'1 process':>10} {'speed-up':>8}"
        "  1 process ran"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for dtype in dtypes:
        dtype_name = np.dtype(dtype).name
        for size in DISTRIBUTED_SIZES:
            r = measure_data_parallel(client, size, dtype, steps=repeat)
            rows.append(dict(row=f"step {size[0]}", dtype=dtype_name, **r))
            print(
                f"{'step ' + size[0]:<22} {dtype_name:<7} {r['dask'] * 1e3:>9.1f} {r['slowest_shard'] * 1e3:>9.1f}"
                f" {r['overhead'] * 1e3:>9.1f} {r['one_process'] * 1e3:>10.1f} {r['one_process'] / r['dask']:>7.2f}x"
                f"  {r['one_process_threads']}"
            )
        r = measure_scoring(client, dtype, repeat=repeat)
        rows.append(dict(row="score char-rnn", dtype=dtype_name, **r))
        label = f"score {SCORE_SEQUENCES}/{SCORE_CHUNK}"
        print(
            f"{label:<22} {dtype_name:<7} {r['dask'] * 1e3:>9.1f} {'':>9} {'':>9} {r['one_process'] * 1e3:>10.1f}"
            f" {r['one_process'] / r['dask']:>7.2f}x  {r['one_process_threads']}"
        )
    print(
        "step: one DataParallel step (m sequences in one shard per task thread); slowest: the longest shard's\n"
        "compute on its worker; overhead: the rest (Dask's messages, parameters out, gradients back);\n"
        "1 process: the same step with workers=1 here; score: sequences/chunk, fastrnn.distributed.score\n"
        "against loss_onehot(per_sequence=True, workers=1) here.  A LocalCluster started in this process\n"
        "sets OMP/OPENBLAS/MKL_NUM_THREADS=1 here too (Dask does), which caps the threads of workers=1"
    )
    return rows


# -- the PyTorch door against torch.nn.RNN --------------------------------------------------


def _torch_side(impl, case, dtype, threads):
    """One side's median step time (ms), timed in a fresh process (``fastrnn.torch.bench``)."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "fastrnn.torch.bench", impl, case, dtype, str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["ms"]


def run_torch(cases=tuple(TORCH_CASES), dtypes=("float32",), rounds=3, threads=None):
    """``fastrnn.torch.RNN`` against ``torch.nn.RNN``: a full training step (RNN,
    ``nn.Linear``, cross-entropy, backward) of each case (``problems.TORCH_CASES``),
    each side in ``rounds`` fresh processes, alternating; the medians and their ratio,
    and the range of the rounds' own ratios (a round: one process of each side, one after
    the other), which shows how far a single pair of processes can be trusted."""
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: pip install 'fastrnn[torch]' (torch==2.13.0 is a CPU build)")
        return 1
    threads = threads or parallel.available_cores()
    print(f"fastrnn.torch.RNN vs torch.nn.RNN: torch {torch.__version__}, torch.set_num_threads({threads}),")
    processes = f"{rounds} fresh process{'es' if rounds != 1 else ''}"
    print(f"each side in {processes}, alternating; medians of the per-process medians (ms),")
    print("and the lowest and highest speed-up of a round (one process of each side)")
    print(f"{'case':<22} {'dtype':<8} {'nn.RNN':>9} {'fastrnn':>9} {'speed-up':>8} {'rounds':>13}")
    rows = []
    for case in cases:
        for dtype in dtypes:
            times = {"nn": [], "fastrnn": []}
            for _ in range(rounds):
                for impl in times:
                    times[impl].append(_torch_side(impl, case, dtype, threads))
            nn_ms, fast_ms = (float(np.median(times[impl])) for impl in ("nn", "fastrnn"))
            round_ratios = [nn / fast for nn, fast in zip(times["nn"], times["fastrnn"])]
            rows.append({"case": case, "dtype": dtype, "nn_ms": nn_ms, "fastrnn_ms": fast_ms,
                         "round_ratios": round_ratios})  # fmt: skip
            spread = f"{min(round_ratios):.2f}-{max(round_ratios):.2f}x"
            print(
                f"{case:<22} {dtype:<8} {nn_ms:>9.3f} {fast_ms:>9.3f} {nn_ms / fast_ms:>7.2f}x {spread:>13}"
            )
    return rows


# -- one step at a time: generation and streams --------------------------------------------

#: A character model's sizes: 65 symbols (Shakespeare's), hidden 128.
GENERATION_SIZE = (65, 128)


def char_model(dtype, backend=None, num_layers=1, size=GENERATION_SIZE):
    """A character model with random weights (``seed=0``) and a vocabulary, to time
    generation and streams with (their speed does not depend on training)."""
    from .model import RNN

    n_symbols, n_a = size
    model = RNN(n_symbols, n_a, n_symbols, num_layers=num_layers, dtype=dtype, backend=backend, seed=0)
    model.vocab = "".join(chr(ord("!") + k) for k in range(n_symbols))
    return model


def torch_one_step(n_x, n_a, n_y, dtype):
    """A PyTorch model's one-step call under ``no_grad``: ``nn.RNN``, ``nn.Linear`` and a
    softmax on one sequence, the hidden state carried; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch_dtype = getattr(torch, np.dtype(dtype).name)
    rnn, linear = torch.nn.RNN(n_x, n_a, dtype=torch_dtype), torch.nn.Linear(n_a, n_y, dtype=torch_dtype)
    x = torch.zeros(1, 1, n_x, dtype=torch_dtype)
    x[0, 0, 3] = 1
    state = [torch.zeros(1, 1, n_a, dtype=torch_dtype)]

    def step():
        with torch.no_grad():
            out, state[0] = rnn(x, state[0])
            return torch.softmax(linear(out[0]), dim=-1)

    return step


def _generation_times(dtype, repeat, chars):
    """``run_generation``'s measurements of one dtype, in seconds."""
    from .api import rnn_cell_forward
    from .text import sample

    n_symbols, n_a = GENERATION_SIZE
    model, reference = char_model(dtype), char_model(dtype, backend="numpy")
    sample(model, 10, seed=0, n_samples=64)  # compile or load, untimed
    stream = model.stream()
    index, x, a = np.array([3]), np.eye(n_symbols, 1, -3, dtype=dtype), np.zeros((n_a, 1), dtype)
    stream.step(index)
    torch_step = torch_one_step(n_symbols, n_a, n_symbols, dtype)
    return {
        "sample": median_seconds(lambda: sample(model, chars, seed=0), repeat=repeat) / chars,
        "sample_numpy": median_seconds(lambda: sample(reference, 100, seed=0), repeat=3) / 100,
        "sample_64": median_seconds(lambda: sample(model, 500, seed=0, n_samples=64), repeat=repeat)
        / (64 * 500),
        "step": median_seconds(lambda: stream.step(index), repeat=repeat),
        "cell": median_seconds(lambda: rnn_cell_forward(x, a, model.params), repeat=repeat),
        "torch": median_seconds(torch_step, repeat=repeat) if torch_step else float("nan"),
    }


def run_generation(dtypes=(np.float32, np.float64), repeat=7, chars=2000):
    """Generation and streams of a character model (``GENERATION_SIZE``): ``text.sample``
    per character (one stream, compiled and reference) and in characters per second (64
    streams), and ``Stream.step`` for one sequence against ``rnn_cell_forward`` and, with
    torch installed, PyTorch's ``nn.RNN`` + ``nn.Linear`` + softmax one-step call."""
    n_symbols, n_a = GENERATION_SIZE
    print(f"one step at a time: a character model of {n_symbols} symbols, hidden {n_a}; medians of {repeat}")
    rows = []
    for dtype in dtypes:
        name = np.dtype(dtype).name
        t = _generation_times(dtype, repeat, chars)
        rows.append({"dtype": name} | {key: seconds * 1e6 for key, seconds in t.items()})
        print(f"{name}: text.sample, 1 stream   numba {t['sample'] * 1e6:8.2f} us/char   "
              f"numpy {t['sample_numpy'] * 1e6:8.1f} us/char ({t['sample_numpy'] / t['sample']:.0f}x)")  # fmt: skip
        print(f"{name}: text.sample, 64 streams numba {1 / t['sample_64']:,.0f} chars/s")
        print(f"{name}: Stream.step, 1 sequence {t['step'] * 1e6:8.2f} us   rnn_cell_forward {t['cell'] * 1e6:8.1f} us "
              f"({t['cell'] / t['step']:.1f}x)   torch nn.RNN+Linear+softmax {t['torch'] * 1e6:8.1f} us "
              f"({t['torch'] / t['step']:.1f}x)")  # fmt: skip
    return rows
