"""asv benchmarks of ``fastrnn.distributed`` on a ``LocalCluster`` of two worker processes
of one thread each (docs/guide.md, "Every machine").

Each benchmark starts its cluster in ``setup`` and stops it in ``teardown``; the kernels are
compiled (or loaded from the cache) and the data loaded on the workers before anything is
timed.  The ``track_`` benchmarks report ratios measured side by side in one process, which
are steadier than two times on a shared machine.
"""

import logging

import numpy as np

from fastrnn import bench

DTYPES = ["float64", "float32"]
SIZES = {size[0]: size for size in bench.DISTRIBUTED_SIZES}


def _start_cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
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
        result = bench.measure_data_parallel(self.client, SIZES[size], dtype, steps=3)
        return result["one_process"] / result["dask"]

    track_speedup_over_one_process.unit = "times"


class Score:
    """``fastrnn.distributed.score`` of char-rnn sequences (``bench.SCORE_SEQUENCES`` in
    chunks of ``bench.SCORE_CHUNK``)."""

    params = DTYPES
    param_names = ["dtype"]
    timeout = 900

    def setup(self, dtype):
        self.cluster, self.client = _start_cluster()

    def teardown(self, dtype):
        self.client.close()
        self.cluster.close()

    def track_speedup_over_one_process(self, dtype):
        """``loss_onehot(workers=1)`` in one process over ``score`` on two workers."""
        result = bench.measure_scoring(self.client, dtype, repeat=3)
        return result["one_process"] / result["dask"]

    track_speedup_over_one_process.unit = "times"
