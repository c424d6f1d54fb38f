"""asv benchmarks of ``fastrnn.distributed`` on a ``LocalCluster`` of two worker processes
of one thread each (docs/guide.md, "Every machine").

Each benchmark starts its cluster in ``setup`` and stops it in ``teardown``; the kernels are
compiled (or loaded from the cache) and the data loaded on the workers before anything is
timed.  The ``track_`` benchmarks report ratios measured side by side in one process, which
are steadier than two times on a shared machine.
"""

import logging

import numpy as np

from .common import DTYPES, require

#: ``fastrnn.bench.DISTRIBUTED_SIZES``: (name, n_x, n_a, n_y, m, T, inputs).
SIZES = {
    "char-rnn": ("char-rnn", 65, 128, 65, 32, 64, "one-hot"),
    "large-512": ("large-512", 256, 512, 256, 512, 50, "dense"),
}


def _bench():
    """``fastrnn.bench``'s Dask measurements and shard loader (the loader must be importable
    on the workers, so it lives in the package): a skip on a commit without them or
    without Dask."""
    try:
        import distributed  # noqa: F401

        from fastrnn import bench
    except ImportError as error:
        raise NotImplementedError(f"cannot run: {error}") from None
    require(hasattr(bench, "measure_data_parallel"), "this commit has no fastrnn.distributed measurements")
    return bench


def _start_cluster():
    from distributed import Client, LocalCluster

    # CRITICAL, not ERROR: a worker's heartbeat still in flight when teardown closes the
    # scheduler is logged as an ERROR with a traceback (a shutdown race on a busy machine;
    # the results are unaffected), which CI's scan of the asv log would count as a failure.
    # An error in the work itself reaches the client as an exception and fails the benchmark.
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
    )
    return cluster, Client(cluster)


class DataParallelStep:
    """A synchronous ``DataParallel`` step: the whole batch in two shards, one per worker."""

    params = (list(SIZES), DTYPES)
    param_names = ["size", "dtype"]
    timeout = 900

    def setup(self, size, dtype):
        import functools

        from fastrnn import RNN
        from fastrnn.distributed import DataParallel
        from fastrnn.optim import SGD

        bench = self.bench = _bench()
        self.cluster, self.client = _start_cluster()
        _, n_x, n_a, n_y, m, T, inputs = SIZES[size]
        loader = functools.partial(
            bench.shard_loader, n_shards=2, n_x=n_x, n_y=n_y, m=m, T=T, inputs=inputs, dtype=dtype
        )
        self.trainer = DataParallel(
            self.client, RNN(n_x, n_a, n_y, dtype=dtype, seed=0), SGD(lr=1e-4), timeout=600
        )
        self.trainer.set_data(loader, 2)
        self.trainer.step()  # warm: kernels and data on the workers

    def teardown(self, size, dtype):
        self.client.close()
        self.cluster.close()

    def time_step(self, size, dtype):
        self.trainer.step()

    def track_overhead_ms(self, size, dtype):
        """Milliseconds of a step beyond its slowest shard's compute (median of 5)."""
        overheads = []
        for _ in range(5):
            self.trainer.step()
            overheads.append(self.trainer.last_step["overhead_seconds"])
        return 1e3 * float(np.median(overheads))

    track_overhead_ms.unit = "ms"

    def track_speedup_over_one_process(self, size, dtype):
        """One process with ``workers=1`` over the two-worker step, both measured here."""
        result = self.bench.measure_data_parallel(self.client, SIZES[size], dtype, steps=3)
        return result["one_process"] / result["dask"]

    track_speedup_over_one_process.unit = "times"


class Score:
    """``fastrnn.distributed.score`` of char-rnn sequences (``fastrnn.bench.SCORE_SEQUENCES``
    in chunks of ``SCORE_CHUNK``)."""

    params = DTYPES
    param_names = ["dtype"]
    timeout = 900

    def setup(self, dtype):
        self.bench = _bench()
        self.cluster, self.client = _start_cluster()

    def teardown(self, dtype):
        self.client.close()
        self.cluster.close()

    def track_speedup_over_one_process(self, dtype):
        """``loss_onehot(workers=1)`` in one process over ``score`` on two workers."""
        result = self.bench.measure_scoring(self.client, dtype, repeat=3)
        return result["one_process"] / result["dask"]

    track_speedup_over_one_process.unit = "times"
