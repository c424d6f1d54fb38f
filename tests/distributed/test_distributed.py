"""``fastrnn.distributed`` on real Dask clusters: a ``LocalCluster`` of worker processes, and a
``dask scheduler`` with two ``dask worker`` processes started here on 127.0.0.1.

Every test is bounded in time (pytest-timeout, and a timeout on every wait of fastrnn's and
Dask's), and every process started here is stopped by its fixture.
"""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from distributed import Client, LocalCluster

import fastrnn
from fastrnn import optim, parallel
from fastrnn.cli import main
from fastrnn.distributed import DataParallel, ShardError, StepTimeoutError, score, threads_per_task
from fastrnn.text import TextError, TextShards, builtin_corpus, text_digest, train_char_rnn
from helpers import assert_agree

pytestmark = pytest.mark.timeout(240)

N_X, N_A, N_Y, T = 6, 8, 5, 7
SIZES = (3, 5, 1)  # uneven shards


def _local_cluster(n_workers=2):
    return LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
        silence_logs=logging.ERROR,
    )  # fmt: skip


@pytest.fixture(scope="module")
def client():
    with _local_cluster() as cluster, Client(cluster, timeout=60) as client:
        yield client


@pytest.fixture
def fresh_client():
    """A cluster of its own, for a test that kills a worker or leaves one busy."""
    with _local_cluster() as cluster, Client(cluster, timeout=60) as client:
        yield client


# -- loaders (run on the workers) -----------------------------------------------------------


def array_loader(k, dense=False, dtype="float64", sizes=SIZES, seed=0):
    """Shard ``k``: ``sizes[k]`` random sequences, dense x or one-hot indices, and labels."""
    rng = np.random.default_rng([seed, k])
    m = sizes[k]
    inputs = rng.standard_normal((N_X, m, T)).astype(dtype) if dense else rng.integers(0, N_X, (m, T))
    return inputs, rng.integers(0, N_Y, (m, T))


def concatenated(loader, n_shards):
    """The whole batch the shards make, as one array (what one process trains on)."""
    parts = [loader(k) for k in range(n_shards)]
    axis = 1 if parts[0][0].ndim == 3 else 0
    return np.concatenate([p[0] for p in parts], axis=axis), np.concatenate([p[1] for p in parts])


class SlowShard:
    """A fixed batch as a stream that carries its state; at step ``slow_step`` it writes its
    worker's pid into ``signal_dir`` and sleeps, so that a test can act during the step."""

    def __init__(self, inputs, y, signal_dir, slow_step, seconds):
        self.inputs, self.y, self.rows = inputs, y, y.shape[0]
        self.signal_dir, self.slow_step, self.seconds = signal_dir, slow_step, seconds

    def batch(self, step):
        if step == self.slow_step:
            with open(os.path.join(self.signal_dir, f"{os.getpid()}.pid"), "w"):
                pass
            time.sleep(self.seconds)
        return self.inputs, self.y, step == 0


def slow_loader(k, signal_dir=None, slow_step=-1, seconds=0.0):
    """``array_loader``'s shards as ``SlowShard``s; shard 1 is slow at ``slow_step``."""
    inputs, y = array_loader(k)
    return SlowShard(inputs, y, signal_dir, slow_step if k == 1 else -1, seconds)


def failing_loader(k):
    if k == 1:
        raise OSError("shard 1's file is missing")
    return array_loader(k)


# -- one process, for comparison -------------------------------------------------------------


def one_process_run(loader, n_shards, steps, dtype=np.float64, clip_norm=0.05, lr=0.01):
    """``steps`` steps of ``train_step`` on the whole batch, in this process."""
    model = fastrnn.RNN(N_X, N_A, N_Y, dtype=dtype, seed=7)
    optimizer = optim.Adam(lr=lr)
    inputs, y = concatenated(loader, n_shards)
    losses = [
        model.train_step(inputs, y, optimizer, clip_norm=clip_norm, carry_state=False, workers=1)
        for _ in range(steps)
    ]
    return model, losses


def distributed_run(client, loader, n_shards, steps, dtype=np.float64, clip_norm=0.05, lr=0.01, **options):
    model = fastrnn.RNN(N_X, N_A, N_Y, dtype=dtype, seed=7)
    trainer = DataParallel(client, model, optim.Adam(lr=lr), clip_norm=clip_norm, timeout=120, **options)
    trainer.set_data(loader, n_shards)
    return model, trainer.fit(steps), trainer


def assert_same_bits(model, other):
    for name in model.params:
        np.testing.assert_array_equal(model.params[name], other.params[name], err_msg=name)


# -- training ------------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [False, True], ids=["one-hot", "dense"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_steps_equal_one_process_training_on_the_whole_batch(client, dense, dtype):
    def loader(k):
        return array_loader(k, dense=dense, dtype=np.dtype(dtype).name)

    expected_model, expected_losses = one_process_run(loader, len(SIZES), 3, dtype)
    model, losses, trainer = distributed_run(client, loader, len(SIZES), 3, dtype)
    assert trainer.n_shards == 3 and trainer.steps_done == 3
    assert all(loss.dtype == np.dtype(dtype) for loss in losses)
    assert_agree(np.array(losses), np.array(expected_losses), dtype, "losses")
    for name in model.params:
        assert_agree(model.params[name], expected_model.params[name], dtype, name)


def test_a_relu_model_trains_and_scores_as_in_one_process(client):
    import dask.array as da

    model = fastrnn.RNN(N_X, N_A, N_Y, seed=7, nonlinearity="relu")
    trainer = DataParallel(client, model, optim.Adam(lr=0.01), timeout=120)
    trainer.set_data(array_loader, len(SIZES))
    losses = trainer.fit(2)
    expected = fastrnn.RNN(N_X, N_A, N_Y, seed=7, nonlinearity="relu")
    expected_optimizer = optim.Adam(lr=0.01)
    inputs, y = concatenated(array_loader, len(SIZES))
    expected_losses = [
        expected.train_step(inputs, y, expected_optimizer, carry_state=False) for _ in range(2)
    ]
    assert_agree(np.array(losses), np.array(expected_losses), np.float64, "losses")
    for name in model.params:
        assert_agree(model.params[name], expected.params[name], np.float64, name)
    scores = score(client, model, da.from_array(inputs, chunks=(3, T)), y).compute()
    assert_agree(scores, model.evaluate(inputs, y, per_sequence=True), np.float64, "scores")


def sequence_label_loader(k):
    """``array_loader``'s inputs with one class per sequence."""
    inputs, y = array_loader(k)
    return inputs, y[:, 0]


def test_sequence_labels_train_as_in_one_process(client):
    expected, expected_losses = one_process_run(sequence_label_loader, len(SIZES), 3)
    model, losses, _ = distributed_run(client, sequence_label_loader, len(SIZES), 3)
    assert_agree(np.array(losses), np.array(expected_losses), np.float64, "losses")
    for name in model.params:
        assert_agree(model.params[name], expected.params[name], np.float64, name)


def test_sequence_labels_score_as_in_one_process(client):
    import dask.array as da

    model = fastrnn.RNN(N_X, N_A, N_Y, seed=4)
    inputs, y = sequence_label_loader(1)
    scores = score(client, model, da.from_array(inputs, chunks=(2, T)), y).compute()
    assert scores.shape == (SIZES[1],)
    assert_agree(scores, model.evaluate(inputs, y, per_sequence=True), np.float64, "scores")


def variable_length_loader(k):
    """``array_loader``'s shards with lengths in [1, T], and -1 (never read) at padding."""
    inputs, y = array_loader(k)
    lengths = np.random.default_rng([9, k]).integers(1, T + 1, inputs.shape[0])
    padding = np.arange(T)[None, :] >= lengths[:, None]
    inputs[padding], y[padding] = -1, -1
    return inputs, y, lengths


def test_stacked_bidirectional_variable_length_training_and_scoring_equal_one_process(client):
    import dask.array as da

    def model():
        return fastrnn.RNN(N_X, N_A, N_Y, num_layers=2, bidirectional=True, seed=7)

    distributed = model()
    trainer = DataParallel(client, distributed, optim.Adam(lr=0.01), clip_norm=0.05, timeout=120)
    trainer.set_data(variable_length_loader, len(SIZES))
    losses = trainer.fit(2)
    expected, expected_optimizer = model(), optim.Adam(lr=0.01)
    parts = [variable_length_loader(k) for k in range(len(SIZES))]
    inputs, y, lengths = (np.concatenate([part[i] for part in parts]) for i in range(3))
    expected_losses = [
        expected.train_step(inputs, y, expected_optimizer, clip_norm=0.05, lengths=lengths) for _ in range(2)
    ]
    assert_agree(np.array(losses), np.array(expected_losses), np.float64, "losses")
    for name in expected.params:
        assert_agree(distributed.params[name], expected.params[name], np.float64, name)
    assert distributed.state is None  # a bidirectional network carries no state
    scores = score(client, distributed, da.from_array(inputs, chunks=(3, T)), y, lengths=lengths).compute()
    assert_agree(
        scores, distributed.evaluate(inputs, y, per_sequence=True, lengths=lengths), np.float64, "scores"
    )


def test_clipping_is_applied_once_to_the_whole_batch(client):
    # The whole batch's gradient is longer than clip_norm, so clipping acts at every step;
    # per-shard clipping (or none) would not give the one-process parameters.
    model = fastrnn.RNN(N_X, N_A, N_Y, seed=7)
    _, grads = model.loss_and_grads(*concatenated(array_loader, len(SIZES)))
    norm = optim.clip_by_global_norm(grads, 1e300)
    assert norm > 0.05 * 10
    expected, _ = one_process_run(array_loader, len(SIZES), 2, clip_norm=0.05)
    unclipped, _ = one_process_run(array_loader, len(SIZES), 2, clip_norm=None, lr=0.5)
    model, _, _ = distributed_run(client, array_loader, len(SIZES), 2, clip_norm=0.05)
    for name in model.params:
        assert_agree(model.params[name], expected.params[name], np.float64, name)
    assert not np.allclose(model.params["W_aa"], unclipped.params["W_aa"])


def test_two_runs_are_bitwise_the_same(client):
    first, first_losses, _ = distributed_run(client, array_loader, len(SIZES), 3)
    second, second_losses, _ = distributed_run(client, array_loader, len(SIZES), 3)
    assert first_losses == second_losses
    assert_same_bits(first, second)


def test_threads_inside_each_task_agree_with_one(client):
    sizes = (9, 4)

    def loader(k):
        return array_loader(k, sizes=sizes)

    one, _, _ = distributed_run(client, loader, 2, 2, workers=1)
    three, _, trainer = distributed_run(client, loader, 2, 2, workers=3)
    assert trainer.workers == 3
    for name in one.params:
        assert_agree(three.params[name], one.params[name], np.float64, name)


def test_a_cluster_request_that_does_not_answer_is_bounded():
    from fastrnn.distributed import _within

    begin = time.monotonic()
    with pytest.raises(
        StepTimeoutError, match="stuck request: the cluster did not answer within timeout=0.2 s"
    ):
        _within(0.2, "stuck request", time.sleep, 5)
    assert time.monotonic() - begin < 4  # the wait ended at its timeout, not with the call
    assert _within(5, "quick request", sum, [1, 2]) == 3
    with pytest.raises(ZeroDivisionError):
        _within(5, "failing request", divmod, 1, 0)


def test_threads_per_task_share_each_hosts_cores(client):
    # Two worker processes of one task thread each, on this one host.
    assert threads_per_task(client) == max(1, parallel.available_cores() // 2)
    model = fastrnn.RNN(N_X, N_A, N_Y)
    assert DataParallel(client, model, optim.SGD()).workers == threads_per_task(client)


def test_char_rnn_training_equals_the_run_in_one_process(client, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(builtin_corpus() * 2, encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    settings = dict(hidden=16, seq_length=12, batch=5, steps=25, dtype=np.float64, seed=3)
    here = train_char_rnn(text, **settings)
    there = train_char_rnn(text, client=client, text_path=str(path), shards=3, timeout=120, **settings)
    assert there.trainer.n_shards == 3
    np.testing.assert_allclose(there.losses, here.losses, rtol=1e-10)
    for name in here.model.params:
        assert_agree(there.model.params[name], here.model.params[name], np.float64, name)
    assert_agree(there.model.state, here.model.state, np.float64, "carried state")


def test_a_resumed_distributed_run_continues_the_uninterrupted_one(client, tmp_path):
    text = builtin_corpus()
    settings = dict(hidden=16, seq_length=12, batch=4, dtype=np.float64, seed=5)
    uninterrupted = train_char_rnn(text, steps=30, **settings)
    first = train_char_rnn(text, steps=12, client=client, **settings)
    first.model.save(tmp_path / "run.npz", optimizer=first.optimizer)
    resumed = train_char_rnn(text, steps=30, client=client, resume=fastrnn.RNN.load(tmp_path / "run.npz"))
    assert resumed.first_step == 13
    np.testing.assert_allclose(first.losses + resumed.losses, uninterrupted.losses, rtol=1e-10)
    for name in uninterrupted.model.params:
        assert_agree(resumed.model.params[name], uninterrupted.model.params[name], np.float64, name)


def test_workers_check_the_text_they_read():
    loader = TextShards(None, "".join(sorted(set(builtin_corpus()))), 4, 8, 2, text_digest("another text"))
    with pytest.raises(TextError, match="another text than the driver"):
        loader(0)
    loader = TextShards(None, loader.chars, 4, 8, 2, text_digest(builtin_corpus()))
    shards = [loader(k) for k in range(2)]
    assert [shard.rows for shard in shards] == [2, 2]


# -- faults --------------------------------------------------------------------------------


def _kill_first_reporting_worker(signal_dir, killed, deadline):
    """Wait (until ``deadline``) for a worker to report, by a pid file, that it is inside the
    slow step, then kill it."""
    while time.monotonic() < deadline:
        reports = [name for name in os.listdir(signal_dir) if name.endswith(".pid")]
        if reports:
            pid = int(reports[0].removesuffix(".pid"))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


def test_a_worker_killed_during_a_step_costs_time_not_correctness(fresh_client, tmp_path):
    steps = 4
    unfaulted, unfaulted_losses, _ = distributed_run(fresh_client, slow_loader, len(SIZES), steps)

    def loader(k):
        return slow_loader(k, signal_dir=str(tmp_path), slow_step=2, seconds=2.0)

    killed = []
    killer = threading.Thread(
        target=_kill_first_reporting_worker, args=(str(tmp_path), killed, time.monotonic() + 120), daemon=True
    )
    killer.start()
    faulted, faulted_losses, _ = distributed_run(fresh_client, loader, len(SIZES), steps)
    killer.join(timeout=10)
    assert len(killed) == 1, "no worker reported the slow step"
    assert killed[0] not in fresh_client.run(os.getpid).values()  # it died during step 3, and was replaced
    assert faulted_losses == unfaulted_losses
    assert_same_bits(faulted, unfaulted)


def test_a_step_that_misses_its_timeout_raises_and_changes_nothing(fresh_client, tmp_path):
    model = fastrnn.RNN(N_X, N_A, N_Y, seed=7)
    before = {name: value.copy() for name, value in model.params.items()}
    trainer = DataParallel(fresh_client, model, optim.Adam(), timeout=60)

    def loader(k):
        return slow_loader(k, signal_dir=str(tmp_path), slow_step=0, seconds=20.0)

    trainer.set_data(loader, len(SIZES))
    trainer.timeout = 1.0
    begin = time.monotonic()
    with pytest.raises(StepTimeoutError, match=r"step 1: shard 1 of 3 not done within timeout=1 s"):
        trainer.step()
    assert time.monotonic() - begin < 15  # the wait ended at the timeout, not with the task
    assert trainer.steps_done == 0 and trainer.optimizer.steps == 0
    assert_same_bits(model, fastrnn.RNN.from_params(before))


def test_new_data_replaces_the_old(client):
    model = fastrnn.RNN(N_X, N_A, N_Y, seed=7)
    trainer = DataParallel(client, model, optim.SGD(lr=1e-300), timeout=60)  # a step changes nothing
    assert trainer.set_data(array_loader, 3) == list(SIZES)
    first = trainer.step()

    def other(k):
        return array_loader(k, sizes=(2, 2), seed=1)

    assert trainer.set_data(other, 2) == [2, 2]
    second = trainer.step()
    x_index, y = concatenated(other, 2)
    assert second != first
    assert abs(second - model.evaluate(x_index, y)) <= 1e-12 * second


def test_a_step_can_be_run_again_after_a_timeout(fresh_client, tmp_path):
    model = fastrnn.RNN(N_X, N_A, N_Y, seed=7)
    trainer = DataParallel(fresh_client, model, optim.Adam(lr=0.01), timeout=60)

    def loader(k):
        return slow_loader(k, signal_dir=str(tmp_path), slow_step=0, seconds=2.0)

    trainer.set_data(loader, len(SIZES))
    trainer.timeout = 0.5
    with pytest.raises(StepTimeoutError):
        trainer.step()
    trainer.timeout = 60
    losses = [trainer.step() for _ in range(2)]  # the same step 1, then step 2
    expected = fastrnn.RNN(N_X, N_A, N_Y, seed=7)  # SlowShard streams: the state is carried
    expected_optimizer = optim.Adam(lr=0.01)
    inputs, y = concatenated(array_loader, len(SIZES))
    expected_losses = [expected.train_step(inputs, y, expected_optimizer, carry_state=True) for _ in range(2)]
    assert_agree(np.array(losses), np.array(expected_losses), np.float64, "losses")
    for name in model.params:
        assert_agree(model.params[name], expected.params[name], np.float64, name)


def test_a_failing_loader_names_its_shard(client):
    trainer = DataParallel(client, fastrnn.RNN(N_X, N_A, N_Y), optim.SGD(), timeout=60)
    with pytest.raises(ShardError, match="set_data, shard 1: OSError: shard 1's file is missing"):
        trainer.set_data(failing_loader, 3)


@pytest.mark.parametrize(
    "loader, error, match",
    [
        (lambda k: np.zeros((2, 3)), "TypeError", "must return"),
        (
            lambda k: (np.zeros((2, 3), dtype=int), np.zeros((2, 4), dtype=int)),
            "ValueError",
            r"loader\(0\)'s y",
        ),
        (lambda k: (np.full((2, 3), N_X), np.zeros((2, 3), dtype=int)), "ValueError", "x_index"),
        (lambda k: (np.zeros((N_X + 1, 2, 3)), np.zeros((2, 3), dtype=int)), "ValueError", "dense x"),
        (
            lambda k: (np.zeros((2, 3), dtype=int),) * 2 + (np.ones(2),),
            "TypeError",
            "lengths must hold integers",
        ),
        (
            lambda k: (np.zeros((2, 3), dtype=int),) * 2 + (np.array([1, 4]),),
            "ValueError",
            r"lengths must lie in \[1, T\]",
        ),
    ],
)
def test_bad_shards_are_named(client, loader, error, match):
    trainer = DataParallel(client, fastrnn.RNN(N_X, N_A, N_Y), optim.SGD(), timeout=60)
    with pytest.raises(ShardError, match=f"shard 0: {error}: .*{match}"):
        trainer.set_data(loader, 1)


def test_bad_arguments(client):
    model = fastrnn.RNN(N_X, N_A, N_Y)
    with pytest.raises(TypeError, match="client"):
        DataParallel("tcp://127.0.0.1:8786", model, optim.SGD())
    with pytest.raises(TypeError, match="model"):
        DataParallel(client, model.params, optim.SGD())
    with pytest.raises(TypeError, match="optimizer"):
        DataParallel(client, model, "adam")
    with pytest.raises(ValueError, match="timeout"):
        DataParallel(client, model, optim.SGD(), timeout=0)
    with pytest.raises(ValueError, match="clip_norm"):
        DataParallel(client, model, optim.SGD(), clip_norm=-1)
    with pytest.raises(ValueError, match="workers"):
        DataParallel(client, model, optim.SGD(), workers=0)
    trainer = DataParallel(client, model, optim.SGD())
    with pytest.raises(ValueError, match="timeout"):
        trainer.timeout = -1
    with pytest.raises(TypeError, match="clip_norm"):
        trainer.clip_norm = "5"
    with pytest.raises(RuntimeError, match="set_data"):
        trainer.step()
    with pytest.raises(ValueError, match="n_shards"):
        trainer.set_data(array_loader, 0)
    with pytest.raises(TypeError, match="loader"):
        trainer.set_data("data.npz", 2)


# -- scoring -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_language_model_scores_equal_one_process(client, dtype):
    import dask.array as da

    model = fastrnn.RNN(N_X, N_A, N_X, dtype=dtype, seed=2)
    sequences = np.random.default_rng(1).integers(0, N_X, (11, 9))
    losses = score(client, model, da.from_array(sequences, chunks=(4, 9)))
    assert losses.shape == (11,) and losses.dtype == np.dtype(dtype)
    expected = fastrnn.loss_onehot(
        sequences[:, :-1], np.zeros((N_A, 11)), sequences[:, 1:], model.params, per_sequence=True
    )
    assert_agree(losses.compute(), expected, dtype, "per-sequence losses")


def test_dense_scores_with_labels_equal_one_process(client):
    import dask.array as da

    model = fastrnn.RNN(N_X, N_A, N_Y, seed=4)
    x, y = array_loader(0, dense=True, sizes=(10,))
    losses = score(client, model, da.from_array(x, chunks=(N_X, 3, T)), y).compute()
    expected = fastrnn.loss(x, np.zeros((N_A, 10)), y, model.params, per_sequence=True)
    assert_agree(losses, expected, np.float64, "per-sequence losses")
    assert abs(losses.mean() - fastrnn.loss(x, np.zeros((N_A, 10)), y, model.params)) < 1e-12


def test_bad_score_arguments(client):
    import dask.array as da

    model = fastrnn.RNN(N_X, N_A, N_Y)
    sequences = da.zeros((4, 5), dtype=int, chunks=2)
    with pytest.raises(TypeError, match="lengths must hold integers"):
        score(client, model, sequences, np.zeros((4, 5), dtype=int), lengths=np.ones(4))
    with pytest.raises(ValueError, match="lengths must be at least 2 with y=None"):
        score(client, fastrnn.RNN(N_X, N_A, N_X), sequences, lengths=np.array([5, 1, 2, 3]))
    with pytest.raises(ValueError, match="n_x"):
        score(client, model, da.zeros((N_X + 1, 4, 5), chunks=2), np.zeros((4, 5), dtype=int))
    with pytest.raises(ValueError, match=r"y must have shape \(N, T\) = \(4, 5\), or \(N,\)"):
        score(client, model, sequences, np.zeros((4, 4), dtype=int))
    with pytest.raises(ValueError, match="T=1"):
        score(client, fastrnn.RNN(N_X, N_A, N_X), da.zeros((4, 1), dtype=int, chunks=2))
    with pytest.raises(ValueError, match=r"class labels in \[0, 5\)"):
        score(client, model, sequences, np.full((4, 5), N_Y)).compute()


# -- a scheduler and two workers, as on several machines ---------------------------------------


def _stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture
def scheduler_and_two_workers(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, and a client."""
    scheduler_file = tmp_path / "scheduler.json"
    command = [sys.executable, "-m", "dask"]
    # The loaders are this file's functions: the scheduler and the workers import it, as a
    # real cluster imports the user's code (LocalCluster's processes inherit sys.path).
    environment = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__)), *sys.path]
        ),
    )
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    processes = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [_stop(process) for process in reversed(processes)])
        processes.append(subprocess.Popen(
            [*command, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(scheduler_file), "--idle-timeout", "600"], **quiet,
        ))  # fmt: skip
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scheduler_file.exists(), "the scheduler did not start within 60 s"
        for _ in range(2):
            processes.append(subprocess.Popen(
                [*command, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60"], **quiet,
            ))  # fmt: skip
        client = stack.enter_context(Client(scheduler_file=str(scheduler_file), timeout=60))
        client.wait_for_workers(2, timeout=120)
        yield client


def test_a_scheduler_and_two_worker_processes(scheduler_and_two_workers):
    client = scheduler_and_two_workers
    assert len(client.scheduler_info()["workers"]) == 2
    expected, expected_losses = one_process_run(array_loader, len(SIZES), 3)
    model, losses, _ = distributed_run(client, array_loader, len(SIZES), 3)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-10)
    for name in model.params:
        assert_agree(model.params[name], expected.params[name], np.float64, name)
    sequences = np.random.default_rng(3).integers(0, N_X, (6, 5))
    import dask.array as da

    lm = fastrnn.RNN(N_X, N_A, N_X, seed=1)
    losses = score(client, lm, da.from_array(sequences, chunks=(2, 5))).compute()
    expected = fastrnn.loss_onehot(
        sequences[:, :-1], np.zeros((N_A, 6)), sequences[:, 1:], lm.params, per_sequence=True
    )
    assert_agree(losses, expected, np.float64, "scores")


# -- the command line ----------------------------------------------------------------------


def test_train_dask_local_equals_train_in_one_process(tmp_path, capsys):
    path = tmp_path / "corpus.txt"
    path.write_text(builtin_corpus(), encoding="utf-8")
    common = ["train", str(path), "--steps", "20", "--hidden", "16", "--batch", "4", "--dtype", "float64",
              "--plot", "none", "--sample-every", "0", "--json"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "here.npz")]) == 0
    assert main([*common, "--out", str(tmp_path / "there.npz"), "--dask", "local:2", "--shards", "3"]) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]
    assert '"dask": "local:2"' in summary and '"shards": 3' in summary
    here, there = (fastrnn.RNN.load(tmp_path / name) for name in ("here.npz", "there.npz"))
    for name in here.params:
        assert_agree(there.params[name], here.params[name], np.float64, name)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--dask", "local:0"], "local:N needs a number of workers N >= 1"),
        (["--shards", "2"], "--shards is for --dask runs"),
        (["--dask", "tcp://127.0.0.1:1", "--dask-timeout", "2"], "no Dask scheduler answered"),
    ],
)
def test_train_dask_errors_are_one_line(tmp_path, capsys, arguments, message):
    argv = ["train", "--steps", "2", "--out", str(tmp_path / "m.npz"), "--plot", "none", *arguments]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    err = capsys.readouterr().err
    assert status in (1, 2) and message in err and "Traceback" not in err


def test_fastrnn_works_without_dask():
    code = """
import sys

class NoDask:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dask", "distributed"):
            raise ImportError(f"No module named {name!r}")

sys.meta_path.insert(0, NoDask())
import numpy as np
import fastrnn
from fastrnn.problems import make_problem
from fastrnn.cli import main

x, a0, y, params = make_problem(3, 4, 2, 2, 3)
loss, _ = fastrnn.loss_and_grads(x, a0, y, params)
assert np.isfinite(loss)
try:
    import fastrnn.distributed
except ImportError as error:
    assert "pip install 'fastrnn[distributed]'" in str(error), error
else:
    raise AssertionError("fastrnn.distributed imported without Dask")
assert main(["train", "--dask", "local:2", "--steps", "2", "--plot", "none"]) == 1
print("fine without Dask")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fine without Dask" in result.stdout
    assert "--dask needs Dask: pip install 'fastrnn[distributed]'" in result.stderr
