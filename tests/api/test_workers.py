"""``workers=``: a batch cut into shards run in threads gives the one-thread results.

Agreement with ``workers=1`` within the contract's tolerances (both backends, both dtypes, dense and
one-hot, uneven shards, more workers than sequences, m = 1, T = 1), bitwise determinism
for a fixed ``workers`` (in one process, across processes, under concurrent callers), one
workspace for any ``workers`` with no allocation in steady state, clear errors for bad
values, and the pieces of ``fastrnn.parallel`` on their own.
"""

import concurrent.futures
import os
import subprocess
import sys
import threading
import tracemalloc

import numba
import numpy as np
import pytest

import fastrnn
from fastrnn import optim, parallel, text
from helpers import (
    assert_agree,
    assert_identical,
    check,
    copy_results,
    digest_in_fresh_process,
    make_problem,
    numeric_gradient,
)

WORKERS = [1, 2, 3, 4, 5, -1]
# (n_x, n_a, n_y, m, T): m divisible or not by the workers, fewer sequences than workers,
# one sequence, one step.
SHAPES = [(4, 6, 5, 7, 9), (3, 5, 4, 12, 6), (4, 6, 5, 3, 4), (4, 6, 5, 1, 5), (4, 6, 5, 6, 1)]


def _assert_results_agree(result, expected, dtype, what):
    assert_agree(result[0], expected[0], dtype, f"{what}: loss")
    assert result[1].keys() == expected[1].keys(), what
    for key in expected[1]:
        assert result[1][key].shape == expected[1][key].shape, (what, key)
        assert result[1][key].dtype == np.dtype(dtype), (what, key)
        assert_agree(result[1][key], expected[1][key], dtype, f"{what}: {key}")
    for got, want in zip(result[2:], expected[2:]):
        assert_agree(got, want, dtype, f"{what}: state")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("workers", WORKERS)
def test_dense_steps_agree_with_one_worker(backend, dtype, shape, workers):
    x, a0, y, params = make_problem(*shape, dtype=dtype, seed=300)
    params["b_a"] += dtype(0.1)  # non-zero biases: every gradient is a real check
    expected = copy_results(
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=1, return_state=True)
    )
    result = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=workers, return_state=True)
    _assert_results_agree(result, expected, dtype, f"workers={workers}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("workers", WORKERS)
def test_one_hot_steps_agree_with_one_worker(backend, dtype, shape, workers):
    _, a0, y, params = make_problem(*shape, dtype=dtype, seed=301)
    x_index = np.random.default_rng(301).integers(0, shape[0], size=y.shape)
    expected = copy_results(
        fastrnn.loss_and_grads_onehot(x_index, a0, y, params, backend=backend, workers=1, return_state=True)
    )
    result = fastrnn.loss_and_grads_onehot(
        x_index, a0, y, params, backend=backend, workers=workers, return_state=True
    )
    _assert_results_agree(result, expected, dtype, f"workers={workers}")


@pytest.mark.parametrize("workers", [2, 3, -1])
def test_forward_agrees_and_its_cache_backpropagates(backend, dtype, workers):
    x, a0, _, params = make_problem(4, 6, 5, 7, 9, dtype=dtype, seed=302)
    a1, y_hat1, cache1 = fastrnn.rnn_forward(x, a0, params, backend=backend, workers=1)
    a, y_hat, cache = fastrnn.rnn_forward(x, a0, params, backend=backend, workers=workers)
    assert_agree(a, a1, dtype, "a")
    assert_agree(y_hat, y_hat1, dtype, "y_hat")
    da = np.random.default_rng(302).standard_normal(a.shape).astype(dtype)
    expected = fastrnn.rnn_backward(da, cache1)
    for key, value in fastrnn.rnn_backward(da, cache).items():
        assert_agree(value, expected[key], dtype, key)


def test_sharded_gradients_match_finite_differences(backend):
    x, a0, y, params = make_problem(3, 4, 3, 5, 4, seed=303)
    params["b_y"] -= 0.2

    def loss():
        return float(fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=3)[0])

    _, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=3)
    for name in params:
        check(numeric_gradient(loss, params[name]), grads["d" + name], "d" + name)
    check(numeric_gradient(loss, x), grads["dx"], "dx")
    check(numeric_gradient(loss, a0), grads["da0"], "da0")


def test_inputs_are_never_written(backend):
    """dx may overwrite a shard's time-major copy of x, never the caller's x: with T = 1 a
    shard of a Fortran-ordered x is itself contiguous, and must still not be written."""
    x, a0, y, params = make_problem(4, 6, 5, 6, 1, seed=304)
    for layout in (np.ascontiguousarray, np.asfortranarray):
        x_in, a0_in, y_in = layout(x), layout(a0), layout(y)
        saved = [x_in.copy(), a0_in.copy(), y_in.copy()]
        fastrnn.loss_and_grads(x_in, a0_in, y_in, params, backend=backend, workers=3)
        for array, before in zip((x_in, a0_in, y_in), saved):
            np.testing.assert_array_equal(array, before)


def test_float32_overflow_is_reported_for_any_workers(backend):
    """Finite inputs whose loss or summed gradients exceed float32's range raise
    NonFiniteResultError, never return inf: the loss, accumulated in float64, is checked
    in the dtype it is returned in, and the shards' sums are checked after summing."""
    x, a0, y, params = make_problem(4, 6, 3, 6, 50, dtype=np.float32, seed=305)
    params["b_y"][:] = np.float32([[3e37], [-3e37], [0.0]])
    wrong = np.ones_like(y)  # every label the class at -3e37: 6e37 per step, 3e39 per sequence
    for workers in (1, 3):
        with pytest.raises(fastrnn.NonFiniteResultError, match="the loss is not finite"):
            fastrnn.loss_and_grads(x, a0, wrong, params, backend=backend, workers=workers)
    # The same problem in float64 is finite and large.
    loss, _ = fastrnn.loss_and_grads(
        x.astype(np.float64), a0, wrong, {k: v.astype(np.float64) for k, v in params.items()}, backend=backend
    )
    assert 1e39 < loss < 1e40


# -- determinism and concurrency -------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 3])
def test_repeated_calls_are_bitwise_identical(backend, dtype, workers):
    x, a0, y, params = make_problem(6, 16, 5, 11, 13, dtype=dtype, seed=305)
    first = copy_results(
        fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=workers, return_state=True)
    )
    for _ in range(5):
        again = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=workers, return_state=True)
        assert_identical(again, first, f"workers={workers}")


def test_many_threads_calling_with_two_workers_at_once(backend):
    """Eight Python threads, each calling with workers=2 on its own problems while the
    others do: no deadlock, no mixed results (bitwise the sequential ones)."""
    problems = [
        make_problem(8, 24, 8, 6, 20, dtype=dtype, seed=310 + k)
        for k, dtype in enumerate([np.float64, np.float32] * 4)
    ]
    sequential = [copy_results(fastrnn.loss_and_grads(*p, backend=backend, workers=2)) for p in problems]
    start = threading.Barrier(len(problems))

    def work(k):
        start.wait(timeout=60)
        workspace = fastrnn.Workspace()
        return [
            copy_results(
                fastrnn.loss_and_grads(*problems[k], backend=backend, workers=2, workspace=workspace)
            )
            for _ in range(6)
        ]

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(problems)) as pool:
        futures = [pool.submit(work, k) for k in range(len(problems))]
        outcomes = [future.result(timeout=300) for future in futures]
    for k, results in enumerate(outcomes):
        for result in results:
            assert_identical(result, sequential[k], f"problem {k}")


def test_one_workspace_serves_any_workers(backend, dtype):
    x, a0, y, params = make_problem(5, 8, 4, 9, 7, dtype=dtype, seed=320)
    workspace = fastrnn.Workspace()
    for workers in (1, 3, 2, 1, 3, -1, 5):
        expected = copy_results(
            fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=workers, return_state=True)
        )
        result = fastrnn.loss_and_grads(
            x, a0, y, params, backend=backend, workers=workers, workspace=workspace, return_state=True
        )
        assert_identical(result, expected, f"workers={workers}")
    assert "shards" in repr(workspace)


@pytest.mark.skipif(
    numba.config.DISABLE_JIT,
    reason="NUMBA_DISABLE_JIT=1 runs the kernels as plain Python, which makes NumPy temporaries; the promise is about compiled kernels",
)
@pytest.mark.parametrize("one_hot", [False, True], ids=["dense", "one-hot"])
def test_sharded_steps_with_a_workspace_allocate_nothing(one_hot):
    """A sharded step's Python objects (futures, closures, views: a few kB) are the same
    for any size, while any array a step allocated would grow with it: so the peak must
    not grow when the batch and the sequences get 8 times longer and the layers twice as
    wide (every array of the step at least 4 times larger)."""

    def peak_bytes(n_x, n_a, n_y, m, T):
        x, a0, y, params = make_problem(n_x, n_a, n_y, m, T, seed=321)
        x_index = np.random.default_rng(321).integers(0, n_x, size=y.shape)
        workspace = fastrnn.Workspace()

        def step():
            kwargs = dict(backend="numba", workspace=workspace, workers=2, return_state=True)
            if one_hot:
                return fastrnn.loss_and_grads_onehot(x_index, a0, y, params, **kwargs)
            return fastrnn.loss_and_grads(x, a0, y, params, **kwargs)

        step()
        step()
        tracemalloc.start()
        try:
            step()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_bytes(8, 16, 8, 8, 20), peak_bytes(16, 32, 16, 64, 160)
    assert small < 32 * 1024, small
    assert large < small + 2048, (small, large)


# -- the model and the command line ------------------------------------------------------


def test_model_methods_take_workers(backend):
    model = fastrnn.RNN(5, 8, 5, backend=backend, seed=330)
    x_index = np.random.default_rng(330).integers(0, 5, size=(6, 7))
    y = np.roll(x_index, -1, axis=1)
    expected = copy_results(model.loss_and_grads(x_index, y, workers=1))
    _assert_results_agree(
        model.loss_and_grads(x_index, y, workers=3), expected, np.float64, "RNN.loss_and_grads"
    )
    x = np.random.default_rng(331).standard_normal((5, 6, 7))
    a1, y_hat1 = model.forward(x, workers=1)
    a2, y_hat2 = model.forward(x, workers=2)
    assert_agree(a2, a1, np.float64, "a")
    optimizer = optim.SGD(lr=0.1, backend=backend)
    assert np.isfinite(model.train_step(x_index, y, optimizer, workers=2))


# -- bad values ---------------------------------------------------------------------------

BAD_WORKERS = [
    (0, ValueError),
    (-2, ValueError),
    (1.5, TypeError),
    ("4", TypeError),
    (True, TypeError),
    (2.0, TypeError),
]


@pytest.mark.parametrize("workers, error", BAD_WORKERS, ids=repr)
def test_bad_workers_are_named(workers, error):
    x, a0, y, params = make_problem(3, 4, 3, 2, 3, seed=340)
    x_index = np.zeros(y.shape, dtype=int)
    calls = [
        lambda: fastrnn.loss_and_grads(x, a0, y, params, workers=workers),
        lambda: fastrnn.loss_and_grads_onehot(x_index, a0, y, params, workers=workers),
        lambda: fastrnn.rnn_forward(x, a0, params, workers=workers),
        lambda: text.train_char_rnn("abcabcabc", steps=1, workers=workers),
    ]
    for call in calls:
        with pytest.raises(error, match=r"\bworkers\b"):
            call()


def test_numpy_integers_are_accepted():
    assert parallel.check_workers(np.int64(3)) == 3 and parallel.check_workers(-1) == -1
    assert parallel.check_workers(None) is None


# -- fastrnn.parallel on its own --------------------------------------------------------


@pytest.mark.parametrize("m, shards", [(1, 1), (7, 2), (7, 7), (10, 3), (100, 16)])
def test_split_batch_covers_the_batch_in_balanced_ranges(m, shards):
    ranges = parallel.split_batch(m, shards)
    assert len(ranges) == shards
    assert [i for r in ranges for i in range(m)[r]] == list(range(m))
    sizes = [r.stop - r.start for r in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_split_batch_balances_weights():
    lengths = np.array([10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # one long sequence, then short ones
    ranges = parallel.split_batch(len(lengths), 2, weights=lengths)
    assert [i for r in ranges for i in range(len(lengths))[r]] == list(range(len(lengths)))
    assert ranges[0] == slice(0, 1)  # the long one alone balances the rest
    many = parallel.split_batch(5, 5, weights=[100, 1, 1, 1, 1])
    assert all(r.stop - r.start == 1 for r in many)


def test_split_batch_refuses_empty_shards():
    with pytest.raises(ValueError, match="non-empty"):
        parallel.split_batch(3, 4)


@pytest.mark.parametrize("cores", [1, 2, 3, 16])
@pytest.mark.parametrize("workers", [None, 1, 2, 5, -1])
@pytest.mark.parametrize(
    "shape", [(8, 16, 8, 1, 100), (65, 128, 65, 256, 64), (256, 512, 256, 64, 50), (0, 128, 45, 6, 32)]
)
def test_plans_never_use_more_threads_than_cores(cores, workers, shape):
    n_x, n_a, n_y, m, T = shape
    for backend in ("numba", "numpy"):
        for budget in range(1, cores + 1):
            run = parallel._plan(workers, m, T, n_x, n_a, n_y, backend, cores, budget)
            assert 1 <= run.shards <= m
            assert 1 <= run.threads <= min(run.shards, cores)
            assert run.threads * (run.blas_threads or 1) <= cores
            if workers is None or run.shards == 1:
                assert run.threads * (run.blas_threads or 1) <= budget
            elif workers != -1:
                assert run.shards == min(workers, m)  # the split depends on workers alone


def test_default_plans():
    # Tiny: one shard, BLAS settings untouched (its products are too small for threads).
    assert parallel._plan(None, 1, 100, 8, 16, 8, "numba", 2, 2) == parallel.Plan(1, 1, None)
    # char-rnn with 256 sequences: one shard per core, one BLAS thread each.
    assert parallel._plan(None, 256, 64, 65, 128, 65, "numba", 16, 16) == parallel.Plan(16, 16, 1)
    # A budget of 1 (e.g. OMP_NUM_THREADS=1 in a Dask worker): one thread in all.
    assert parallel._plan(None, 256, 64, 65, 128, 65, "numba", 16, 1) == parallel.Plan(1, 1, 1)
    # One-sequence shards do not run in parallel: two sequences stay one shard.
    assert parallel._plan(None, 2, 1000, 65, 128, 65, "numba", 2, 2).shards == 1
    # The NumPy backend's loop holds the GIL: small per-step work stays one shard.
    assert parallel._plan(None, 32, 64, 65, 128, 65, "numpy", 2, 2).shards == 1
    assert parallel._plan(None, 256, 64, 65, 128, 65, "numpy", 2, 2).shards == 2


def test_thread_variables_cap_the_default_budget():
    assert parallel.budget_from({}, 16) == 16
    assert parallel.budget_from({"OMP_NUM_THREADS": "1"}, 16) == 1
    assert parallel.budget_from({"OPENBLAS_NUM_THREADS": "4", "MKL_NUM_THREADS": "8"}, 16) == 4
    assert parallel.budget_from({"OMP_NUM_THREADS": "32"}, 16) == 16
    assert parallel.budget_from({"OMP_NUM_THREADS": "not a number", "MKL_NUM_THREADS": "0"}, 16) == 16
    assert 1 <= parallel.default_budget() <= parallel.available_cores()


def test_a_process_with_omp_num_threads_1_runs_on_one_thread():
    code = (
        "from fastrnn import parallel; "
        "print(parallel.default_budget(), parallel.plan(None, 256, 64, 65, 128, 65), parallel.plan(1, 256, 64, 65, 128, 65))"
    )
    env = {k: v for k, v in os.environ.items() if k not in parallel.THREAD_LIMIT_VARIABLES}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True, timeout=120).stdout  # fmt: skip
    assert out.split()[0] == "1"
    assert out.count("Plan(shards=1, threads=1, blas_threads=1)") == 2, out


def test_sum_in_order_adds_weighted_parts_in_a_fixed_order():
    rng = np.random.default_rng(350)
    arrays = [rng.standard_normal(1000) * 10.0**k for k in range(4)]  # magnitudes make order visible
    parts = [{"g": a.copy()} for a in arrays]
    total = parallel.sum_in_order(parts, ["g"])["g"]
    np.testing.assert_array_equal(total, ((arrays[0] + arrays[1]) + arrays[2]) + arrays[3])
    weights = [0.5, 0.25, 0.125, 0.125]
    parts = [{"g": a.copy()} for a in arrays]
    weighted = parallel.sum_in_order(parts, ["g"], weights)["g"]
    expected = ((0.5 * arrays[0] + 0.25 * arrays[1]) + 0.125 * arrays[2]) + 0.125 * arrays[3]
    np.testing.assert_array_equal(weighted, expected)
    with pytest.raises(ValueError, match="2 weights for 4 parts"):
        parallel.sum_in_order(parts, ["g"], [0.5, 0.5])


def test_shards_normalised_by_their_own_size_and_weighted_give_the_batch_gradient(backend):
    """What a process that sees only its shard computes (the public loss_and_grads on the
    shard, normalised by its own size), weighted by m_k / m and summed in order, is the
    whole batch's gradient: the reduction a multi-process run uses."""
    x, a0, y, params = make_problem(4, 6, 5, 9, 5, seed=351)
    loss, expected = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=1)
    expected = {key: value.copy() for key, value in expected.items()}
    shards = parallel.split_batch(9, 3)
    parts = [
        fastrnn.loss_and_grads(x[:, rows], a0[:, rows], y[rows], params, backend=backend, workers=1)
        for rows in shards
    ]
    weights = [(rows.stop - rows.start) / 9 for rows in shards]
    grads = parallel.sum_in_order(
        [dict(g) for _, g in parts], [k for k in expected if k not in ("dx", "da0")], weights
    )
    assert_agree(sum(w * l for w, (l, _) in zip(weights, parts)), loss, np.float64, "loss")
    for key in ("dW_ax", "dW_aa", "db_a", "dW_ya", "db_y"):
        assert_agree(grads[key], expected[key], np.float64, key)


def test_run_shards_returns_results_in_shard_order():
    assert parallel.run_shards(lambda k: k * k, 7, 3) == [k * k for k in range(7)]
    assert parallel.run_shards(lambda k: k, 1, 4) == [0]


def test_run_shards_raises_the_first_failure_after_every_shard_finished():
    finished = []

    def task(k):
        if k in (1, 3):
            raise RuntimeError(f"shard {k}")
        finished.append(k)
        return k

    with pytest.raises(RuntimeError, match="shard 1"):
        parallel.run_shards(task, 6, 3)
    assert sorted(finished) == [0, 2, 4, 5]


def test_run_shards_nested_and_concurrent_calls_finish():
    """Shards that themselves run shards, from many threads at once: every call takes shards
    on its own thread too, so none waits for a pool thread that others keep busy."""

    def inner(k):
        return sum(parallel.run_shards(lambda j: j + k, 4, 4))

    def outer(_):
        return parallel.run_shards(inner, 4, 4)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(outer, i) for i in range(16)]]
    assert all(r == [6 + 4 * k for k in range(4)] for r in results)


def test_blas_threads_are_restored():
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl reads BLAS thread counts")
    libraries = parallel._blas_libraries()
    if not libraries:
        pytest.skip("threadpoolctl sees no BLAS library in this process")
    before = [lib.num_threads for lib in libraries]
    with parallel.blas_threads(1):
        assert all(lib.num_threads == 1 for lib in libraries)
    assert [lib.num_threads for lib in libraries] == before
    with parallel.blas_threads(None):  # touches nothing
        assert [lib.num_threads for lib in libraries] == before
    assert threadpoolctl.threadpool_info()  # the libraries are still there and readable


# -- fixing the plan, and seeing it ---------------------------------------------------------


def test_fastrnn_workers_fixes_the_default_plan():
    assert parallel.workers_from({}) is None
    assert parallel.workers_from({"FASTRNN_WORKERS": " "}) is None
    assert parallel.workers_from({"FASTRNN_WORKERS": "3"}) == 3
    assert parallel.workers_from({"FASTRNN_WORKERS": "-1"}) == -1
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ValueError, match="FASTRNN_WORKERS"):
            parallel.workers_from({"FASTRNN_WORKERS": bad})


def test_fastrnn_workers_gives_the_results_of_that_many_workers():
    script = (
        "import hashlib, numpy as np, fastrnn\n"
        "from fastrnn.problems import make_problem\n"
        "x, a0, y, p = make_problem(6, 16, 5, 12, 9, seed=3)\n"
        "loss, grads = fastrnn.loss_and_grads(x, a0, y, p, workers=WORKERS)\n"
        "print(fastrnn.parallel.describe(fastrnn.plan_of(x, p, workers=WORKERS)),"
        " hashlib.sha256(b''.join(np.ascontiguousarray(grads[k]).tobytes() for k in sorted(grads))).hexdigest())\n"
    )
    fixed = digest_in_fresh_process(script.replace("WORKERS", "None"), env={"FASTRNN_WORKERS": "3"})
    explicit = digest_in_fresh_process(script.replace("WORKERS", "3"))
    assert fixed == explicit and fixed.startswith("3 shards")


def test_plan_of_is_the_plan_a_call_runs():
    x, a0, y, params = make_problem(65, 128, 65, 32, 64, dtype=np.float32, seed=1)
    x_index = np.zeros((32, 64), dtype=int)
    one = fastrnn.plan_of(x, params, workers=1)
    assert (one.shards, one.threads) == (1, 1)
    three = fastrnn.plan_of(x_index, params, workers=3)
    assert (three.shards, three.blas_threads) == (3, 1)
    assert fastrnn.plan_of(x, params, lengths=np.full(32, 64)) == fastrnn.plan_of(x, params)
    assert fastrnn.plan_of(x, params) == parallel.plan(None, 32, 64, 65, 128, 65)
    with pytest.raises(ValueError, match="inputs"):
        fastrnn.plan_of(np.zeros(4), params)
    with pytest.raises(ValueError, match="workers"):
        fastrnn.plan_of(x, params, workers=0)


@pytest.mark.parametrize("lengths", [None, "ragged"])
def test_rnn_backward_runs_on_its_forward_pass_plan(backend, dtype, lengths):
    x, a0, _, params = make_problem(4, 6, 5, 7, 9, dtype=dtype, seed=320)
    if lengths is not None:
        lengths = np.random.default_rng(321).integers(1, 10, size=7)
    da = np.random.default_rng(322).standard_normal((6, 7, 9)).astype(dtype)
    results = {}
    for workers in (1, 3):
        a, _, cache = fastrnn.rnn_forward(x, a0, params, backend=backend, workers=workers, lengths=lengths)
        assert cache.workers == workers
        results[workers] = fastrnn.rnn_backward(da, cache)
        again = fastrnn.rnn_backward(da, cache)
        for key in results[workers]:  # bitwise the same from run to run on one plan
            np.testing.assert_array_equal(again[key], results[workers][key], err_msg=key)
    for key in results[1]:
        assert_agree(results[3][key], results[1][key], dtype, key)
    with pytest.raises(ValueError, match="cache.workers"):
        fastrnn.rnn_backward(da, cache._replace(workers=0))
