"""Every core: a batch cut into shards of whole sequences, run in threads on the ``nogil`` kernels.

A training step's work is independent across the sequences of a batch, except for the
weight gradients, which are sums over the sequences.  So the batch is cut into shards of
whole sequences (``split_batch``); each shard runs the ordinary single-threaded step of a
backend in its own thread (the Numba kernels release the GIL; NumPy's ufuncs and BLAS do
too); and the shards' weight gradients are added in shard order (``sum_in_order``), so that
the result does not depend on which thread finished first.

Each shard is normalised by the *whole* batch's size (the backends' ``batch_size``): its
loss and gradients are its share of the whole batch's, and the shards' results simply add
up, with no rescaling pass.  Each shard writes its rows of ``da0`` in place, and copies its
``dx`` and final states into their rows of the whole batch's arrays.

Threads.  fastrnn decides how many threads work, and never more than the cores this process
may use (``os.sched_getaffinity``): either several shards with one BLAS thread each, or one
shard with the BLAS threads its products are worth (``plan``).  The BLAS libraries' thread
counts are set for the duration of a call and restored after it (``blas_threads``).  Shards
run on one persistent pool (``run_shards``); the calling thread runs shards too, so that a
call never waits for a pool thread that another call keeps busy.

This module is the piece that ``fastrnn.api`` uses for ``workers=``; the split and the
in-order sum are also what a data-parallel run over several processes needs.
"""

import concurrent.futures
import contextlib
import functools
import numbers
import os
import threading
from typing import NamedTuple

import numpy as np

from . import wisdom

#: Environment variables that cap the threads ``workers=None`` uses, as they cap BLAS and
#: OpenMP libraries (a Dask worker, for one, sets them to 1).
THREAD_LIMIT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# Crossovers of ``plan`` for ``workers=None``, measured on the project's 2-core machine
# (docs/guide.md, "Every core").  A call with shards has a fixed cost (handing shards to threads,
# a backend call per shard), so a shard must hold enough work to pay for it:
MIN_ROWS_PER_SHARD = 2  # one-sequence shards did not run in parallel at all (OpenBLAS's M=1 path)
#: Per backend: (multiply-adds of a shard's training step, and of each of its time steps).
#: The NumPy backend's time loop holds the GIL between its NumPy calls, which threads
#: queue for, so its shards also need big per-step products.
MIN_SHARD_MULTIPLY_ADDS = {"numba": (8_000_000, 0), "numpy": (8_000_000, 4_000_000)}
# A single shard uses several BLAS threads only when its products have this many rows
# (T * m) and the weights have this many entries: below, OpenBLAS's threads cost more than
# they save, and spin against other processes.
MIN_ROWS_FOR_BLAS_THREADS = 2048
MIN_WEIGHTS_FOR_BLAS_THREADS = 128 * 128
# OpenBLAS runs a product of fewer multiply-adds than this on the calling thread, whatever
# its thread setting (interface/gemm.c: SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD).
BLAS_SINGLE_THREAD_MULTIPLY_ADDS = 65536 * 4


@functools.lru_cache(maxsize=1)
def available_cores():
    """The number of cores this process may run on (its CPU affinity), at least 1.  Read
    once per process: launchers (taskset, cgroups, a job scheduler) set it before start."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover  (macOS, Windows)
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def default_budget():
    """The threads ``workers=None`` may use: the available cores, capped by any of
    ``THREAD_LIMIT_VARIABLES`` set to a positive integer.  Read once per process, at the
    first call, as OpenBLAS and OpenMP read these variables when they load (and because
    reading the environment on every call would cost more than a tiny step's products)."""
    return budget_from(os.environ, available_cores())


#: The environment variable that fixes ``workers=None``'s plan for a whole process.
WORKERS_VARIABLE = "FASTRNN_WORKERS"


@functools.lru_cache(maxsize=1)
def default_workers():
    """What ``workers=None`` means in this process: the int that ``FASTRNN_WORKERS`` gives
    (``k >= 1`` or -1, as if every call that leaves ``workers`` out passed it: a plan fixed
    without measuring), or None (fastrnn chooses).  Read once per process, at the first
    call; a value that is not such an int is a ``ValueError`` naming the variable."""
    return workers_from(os.environ)


def workers_from(environ):
    """``default_workers`` for the environment ``environ``."""
    value = environ.get(WORKERS_VARIABLE, "").strip()
    if not value:
        return None
    try:
        workers = int(value)
    except ValueError:
        workers = 0
    if workers == -1 or workers >= 1:
        return workers
    raise ValueError(
        f"environment variable {WORKERS_VARIABLE}={value!r} must be an int >= 1, or -1 (every core); "
        "unset it to let fastrnn choose"
    )


def budget_from(environ, cores):
    """``cores`` capped by the positive integers ``environ`` sets in ``THREAD_LIMIT_VARIABLES``."""
    budget = cores
    for name in THREAD_LIMIT_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            budget = min(budget, int(value))
    return budget


def check_workers(workers, name="workers"):
    """``workers`` as None, -1 or an int >= 1; anything else is a TypeError or ValueError
    that names ``name``."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral):
        raise TypeError(f"{name} must be None, -1 or an int >= 1, got {type(workers).__name__} {workers!r}")
    workers = int(workers)
    if workers == -1 or workers >= 1:
        return workers
    raise ValueError(f"{name} must be None, -1 (every core) or an int >= 1, got {workers}")


class Plan(NamedTuple):
    """How one call runs.

    Attributes
    ----------
    shards : int
        Pieces the batch is cut into; with the same ``workers``, the same on every run.
    threads : int
        Shards run at once (the calling thread included): at most the cores.
    blas_threads : int or None
        BLAS threads of each shard; ``threads * blas_threads`` never exceeds the cores.
        None where every product is too small for BLAS to use threads anyway
        (``BLAS_SINGLE_THREAD_MULTIPLY_ADDS``): its settings are then left alone, at no cost.
    """

    shards: int
    threads: int
    blas_threads: int


def step_multiply_adds(m, T, n_x, n_a, n_y):
    """Multiply-adds of a training step's nine matrix products over ``T * m`` rows: three
    with each of ``W_ax``, ``W_aa`` and ``W_ya`` (forward, weight gradient, input gradient)."""
    return 3 * T * m * n_a * (n_x + n_a + n_y)


def plan(workers, m, T, n_x, n_a, n_y, backend="numba", *, dtype=None, call=None, path="dense"):
    """Shards, threads and BLAS threads for a call on a batch of ``m`` sequences of ``T`` steps.

    Parameters
    ----------
    workers : None, -1 or int >= 1
        Checked by ``check_workers``.  An int is the number of shards (at most ``m``), run
        by at most as many threads as there are cores; -1 is one shard per core.  None
        is ``FASTRNN_WORKERS`` where it is set (``default_workers``), else fastrnn chooses,
        within ``default_budget()`` (docs/guide.md, "Every core").  A single shard's BLAS
        threads stay within that budget too.
    m, T, n_x, n_a, n_y : int
        The problem's sizes; ``n_x = 0`` for one-hot inputs (a lookup, no products).
    backend : {"numba", "numpy"}
        Whose crossovers ``workers=None`` uses.
    dtype, call, path : numpy dtype, str, str, optional
        With ``dtype`` and ``call`` (``wisdom.CALLS``) given, ``workers=None`` runs the plan
        that ``fastrnn.tune`` measured and recorded for this call on this machine
        (``fastrnn.wisdom``), where there is one; ``path`` is ``"dense"`` or ``"packed"``
        (``engine.planning``).  Without them, the built-in crossovers alone.
    """
    if workers is None:
        workers = default_workers()
    return _plan(
        workers, m, T, n_x, n_a, n_y, backend, available_cores(), default_budget(), dtype, call, path
    )


@functools.lru_cache(maxsize=256)
def _plan(workers, m, T, n_x, n_a, n_y, backend, cores, budget, dtype=None, call=None, path="dense"):
    if workers is None and call is not None and dtype is not None:
        measured = wisdom.lookup(
            wisdom.key_text(backend, np.dtype(dtype).name, call, path, m, T, n_x, n_a, n_y, cores, budget)
        )
        if measured is not None:
            return Plan(*measured)
    if workers is None:
        min_work, min_work_per_step = MIN_SHARD_MULTIPLY_ADDS[backend]
        shards = max(1, min(budget, m // MIN_ROWS_PER_SHARD))
        while shards > 1 and (
            step_multiply_adds(m // shards, T, n_x, n_a, n_y) < min_work
            or step_multiply_adds(m // shards, 1, n_x, n_a, n_y) < min_work_per_step
        ):
            shards -= 1
        threads = shards
    else:  # asked for: that many shards, whatever the budget, on at most every core
        shards = min(cores if workers == -1 else workers, m)
        threads = min(shards, cores)
    if shards > 1:
        # Each shard's BLAS calls run in its own thread: one BLAS thread each.  (Several
        # threads calling a multi-threaded OpenBLAS at once queue for its one thread pool.)
        return Plan(shards, threads, 1)
    largest_product = T * m * n_a * max(n_x, n_a, n_y)
    if largest_product < BLAS_SINGLE_THREAD_MULTIPLY_ADDS:
        return Plan(1, 1, None)
    big = T * m >= MIN_ROWS_FOR_BLAS_THREADS and n_a * max(n_x, n_a, n_y) >= MIN_WEIGHTS_FOR_BLAS_THREADS
    return Plan(1, 1, min(budget, cores) if big else 1)


wisdom.on_change(_plan.cache_clear)  # a plan recorded or forgotten is seen by the next call


def candidate_plans(m, T, n_x, n_a, n_y, cores, budget):
    """The plans ``fastrnn.tune`` times for a call of these sizes, within the thread budget:
    one shard on one BLAS thread and on ``budget`` of them (one shard with BLAS as set where
    every product is too small for BLAS threads, ``BLAS_SINGLE_THREAD_MULTIPLY_ADDS``), and
    2, 4, 8, ... and ``budget`` shards (at most ``m``) of one BLAS thread each: the plans
    ``plan`` itself chooses from."""
    threads = min(budget, cores)
    if T * m * n_a * max(n_x, n_a, n_y) < BLAS_SINGLE_THREAD_MULTIPLY_ADDS:
        plans = [Plan(1, 1, None)]
    else:
        plans = [Plan(1, 1, 1)] + ([Plan(1, 1, threads)] if threads > 1 else [])
    shard_counts = {2**k for k in range(1, threads.bit_length()) if 2**k <= threads} | {threads}
    plans += [Plan(s, s, 1) for s in sorted(shard_counts) if 1 < s <= m]
    return plans


def split_batch(m, shards, weights=None):
    """Cut ``range(m)`` into ``shards`` contiguous, non-empty ranges of balanced weight.

    Parameters
    ----------
    m : int
        Sequences in the batch.
    shards : int
        ``1 <= shards <= m``.
    weights : array_like of shape (m,), optional
        The cost of each sequence (e.g. its length); by default all equal, and the ranges'
        sizes differ by at most one (the first ``m % shards`` ranges are one longer).

    Returns
    -------
    tuple of slice
        In order, covering ``range(m)`` exactly once.
    """
    if not 1 <= shards <= m:
        raise ValueError(f"cannot cut {m} sequences into {shards} non-empty shards")
    if weights is None:
        size, extra = divmod(m, shards)
        bounds = [k * size + min(k, extra) for k in range(shards + 1)]
    else:
        cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
        targets = cumulative[-1] * np.arange(1, shards) / shards
        bounds = [0, *(np.searchsorted(cumulative, targets, side="left") + 1).tolist(), m]
        for k in range(1, shards):  # every range non-empty, and room left for the ones after
            bounds[k] = min(max(bounds[k], bounds[k - 1] + 1), m - (shards - k))
    return tuple(slice(bounds[k], bounds[k + 1]) for k in range(shards))


def sum_in_order(parts, names, weights=None):
    """``sum_k weights[k] * parts[k][name]`` into ``parts[0][name]``, adding k = 0, 1, 2, ...
    in that order.

    A fixed order makes the sum bitwise the same on every run, whichever shard finished
    first.  Shards of one call are normalised by the whole batch's size already and need no
    weights; results normalised by their own shard's size (as a process that sees only its
    shard computes them) take ``weights[k] = m_k / m``.  Weighted parts are scaled in place.

    Parameters
    ----------
    parts : sequence of dict of ndarray
        Each shard's results; ``parts[0]`` receives the sum.
    names : iterable of str
        The keys to add (the weight gradients).
    weights : sequence of float, optional

    Returns
    -------
    dict
        ``parts[0]``.
    """
    total = parts[0]
    if weights is not None:
        if len(weights) != len(parts):
            raise ValueError(f"{len(weights)} weights for {len(parts)} parts")
        for part, weight in zip(parts, weights):
            for name in names:
                part[name] *= part[name].dtype.type(weight)
    for part in parts[1:]:
        for name in names:
            np.add(total[name], part[name], out=total[name])
    return total


# -- the threads -------------------------------------------------------------------------

_pool = None
_pool_lock = threading.Lock()


def _shard_pool():
    """The process's persistent pool of shard threads (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            size = max(1, available_cores() - 1)  # the calling thread is the other one
            _pool = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="fastrnn-shard")
        return _pool


def _forget_pool_after_fork():
    # A forked child has none of the parent's threads: it makes its own pool when needed.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def run_shards(task, shards, threads):
    """``[task(0), ..., task(shards - 1)]``, computed by up to ``threads`` threads at once.

    The calling thread takes shards too, from the same counter as the pool's threads: a call
    finishes even when every pool thread is busy with other calls, so concurrent calls
    cannot deadlock.  Pool threads that had not started when the shards ran out are
    cancelled, not waited for.  If shards raise, every started shard still finishes (none
    is left writing into the caller's arrays), then the exception of the first failing
    shard is raised.
    """
    if threads <= 1 or shards <= 1:
        return [task(k) for k in range(shards)]
    results = [None] * shards
    errors = [None] * shards
    claimed = iter(range(shards))
    claim_lock = threading.Lock()

    def take_shards():
        while True:
            with claim_lock:
                k = next(claimed, None)
            if k is None:
                return
            try:
                results[k] = task(k)
            except BaseException as error:  # noqa: BLE001  (re-raised below, in the caller)
                errors[k] = error

    pool = _shard_pool()
    helpers = [pool.submit(take_shards) for _ in range(min(threads, shards) - 1)]
    try:
        take_shards()
    finally:
        for helper in helpers:
            if not helper.cancel():
                helper.result()
    for error in errors:
        if error is not None:
            raise error
    return results


# -- BLAS threads ------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _blas_libraries():
    """threadpoolctl controllers of the BLAS libraries loaded in this process (SciPy's, which
    the Numba kernels call, and NumPy's), or () where threadpoolctl cannot see them."""
    with contextlib.suppress(ImportError):
        import scipy.linalg.cython_blas  # noqa: F401  (load the kernels' BLAS before looking)
    try:
        from threadpoolctl import ThreadpoolController

        return tuple(lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas")
    except Exception:  # noqa: BLE001  (no control over threads is a slower run, not an error)  # pragma: no cover
        return ()


_UNCHANGED = contextlib.nullcontext()


def blas_threads(n):
    """A context that runs its block with every loaded BLAS library set to ``n`` threads,
    then restores them.

    Costs about a microsecond per library; a library already at ``n`` is not touched, and
    ``n=None`` touches nothing (and costs nothing).
    """
    return _UNCHANGED if n is None else _blas_threads(n)


@contextlib.contextmanager
def _blas_threads(n):
    changed = []
    for lib in _blas_libraries():
        before = lib.num_threads
        if before != n:
            lib.set_num_threads(n)
            changed.append((lib, before))
    try:
        yield
    finally:
        for lib, before in changed:
            lib.set_num_threads(before)


def call_with_blas_threads(n, function, *args, **kwargs):
    """``function(*args, **kwargs)`` with every BLAS library set to ``n`` threads
    (``blas_threads``); called straight when ``n`` is None, so that tiny problems pay for
    no context manager."""
    if n is None:
        return function(*args, **kwargs)
    with _blas_threads(n):
        return function(*args, **kwargs)


def describe(plan_):
    """One line for messages and benchmarks, e.g. ``'2 shards x 1 BLAS thread'``."""
    s = "s" if plan_.shards != 1 else ""
    if plan_.blas_threads is None:
        return f"{plan_.shards} shard{s}, BLAS as set"
    b = "s" if plan_.blas_threads != 1 else ""
    return f"{plan_.shards} shard{s} x {plan_.blas_threads} BLAS thread{b}"


__all__ = [
    "Plan",
    "available_cores",
    "blas_threads",
    "check_workers",
    "budget_from",
    "default_budget",
    "default_workers",
    "plan",
    "run_shards",
    "split_batch",
    "sum_in_order",
]
