"""Every machine: data-parallel training and batch scoring on a Dask cluster.

This module needs the ``[distributed]`` extra (Dask); the rest of fastrnn does not import
it.  Scale-out runs on Dask's scheduler and workers: fastrnn adds what a training step
needs on top of them, and nothing that Dask already does (placing tasks, moving data,
recomputing what a dead worker held).

Training (``DataParallel``) is synchronous data parallelism:

1. ``set_data(loader, n_shards)`` runs ``loader(k)`` for every shard *on a worker*, and the
   shard stays there: only parameters go out and gradients come back, step after step.
   A shard that a dead worker held is loaded again elsewhere, from the same ``loader``.
2. Each ``step()`` submits one task per shard with the current parameters as arguments
   (not as data on a worker, which a dead worker would take with it).  A task computes
   the loss and gradients of its shard, averaged over its own ``m_k`` sequences, with the
   ``workers`` machinery of ``fastrnn.parallel`` inside (a worker process may run several
   shard threads).
3. The driver adds the shards' results in shard order, weighted by ``m_k / m``
   (``parallel.sum_in_order``): the gradient of the whole batch's loss, bitwise the same
   whichever worker finished first.  Clipping and the optimizer step run once, there.

A task's result depends only on its arguments, so a task recomputed after a worker died
returns the same bits, and the run ends with the parameters of a run without the fault.
Every wait has a timeout that ends in ``StepTimeoutError``, naming the step and the shards.

Scoring (``score``) maps a forward-only loss (``fastrnn.loss``) over the chunks of a dask
array of sequences.
"""

import itertools
import threading
import time
import uuid

import numpy as np

try:
    import dask
    import dask.array as dask_array
    import distributed
    from distributed import WorkerPlugin
except ImportError as error:  # pragma: no cover  (the [distributed] extra is not installed)
    raise ImportError(
        "fastrnn.distributed needs Dask: pip install 'fastrnn[distributed]' "
        f"(or dask[distributed]); {type(error).__name__}: {error}"
    ) from error

from . import api, backends, optim, parallel
from .model import RNN, batch_inputs
from .params import architecture, gradient_names, is_single_layer
from .validation import check_int, check_labels, check_lengths, check_real, check_targets

__all__ = ["DataParallel", "score", "StepTimeoutError", "ShardError", "WarmKernels", "threads_per_task"]


DEFAULT_TIMEOUT = 600.0  # seconds: a cold worker compiles its kernels (10-30 s) on its first step


class StepTimeoutError(TimeoutError):
    """A step or a load whose shards were not all computed within the timeout; the model and
    the optimizer are unchanged, and the step can be run again."""


class ShardError(RuntimeError):
    """A shard's task raised (its loader, bad data, a worker that died too often); the
    original exception is the ``__cause__``."""


# -- what runs on the workers ------------------------------------------------------------


class _ArrayShard:
    """A shard that is the same batch at every step: ``inputs`` (dense x in Fortran order, so
    that its time-major view needs no copy, or one-hot indices), ``y`` and ``lengths``."""

    def __init__(self, inputs, y, lengths=None):
        self.inputs, self.y, self.lengths = inputs, y, lengths
        self.rows = y.shape[0]

    def batch(self, step):
        return self.inputs, self.y, True, self.lengths


def _load_shard(loader, k, n_x, n_y, dtype):
    """``loader(k)`` as a shard: checked against the model's sizes, here, once."""
    data = loader(k)
    if hasattr(data, "batch") and hasattr(data, "rows"):
        return data  # a stream of batches (e.g. fastrnn.text.TextShard), checked at each step by the API
    if not isinstance(data, tuple) or len(data) not in (2, 3):
        raise TypeError(
            f"loader({k}) must return (x or x_index, y[, lengths]), or an object with .batch(step) "
            f"and .rows; got {type(data).__name__}"
        )
    inputs, y = (np.asarray(value) for value in data[:2])
    one_hot = inputs.ndim == 2 and inputs.dtype.kind in "iu"
    if not (one_hot or (inputs.ndim == 3 and inputs.shape[0] == n_x)):
        raise ValueError(
            f"loader({k})'s inputs must be dense x (n_x={n_x}, m, T) or integer x_index (m, T); "
            f"got shape {inputs.shape} and dtype {inputs.dtype}"
        )
    m, T = inputs.shape[-2:]
    lengths = check_lengths(data[2], m, T).copy() if len(data) == 3 else None  # the shard's own
    if one_hot:
        inputs = check_labels(
            inputs, f"loader({k})'s x_index", (None, None), n_x, what="one-hot indices", lengths=lengths
        )
    else:
        inputs = np.asfortranarray(inputs, dtype=dtype)
    y = check_targets(y, f"loader({k})'s y", m, T, n_y, lengths)  # a class per step, or per sequence
    return _ArrayShard(inputs, y, lengths)


def _shard_rows(data):
    return int(data.rows)


def _shard_step(data, params, step, a0, backend, workers, nonlinearity):
    """One shard's training step, on a worker.

    Returns
    -------
    loss : float
        The shard's loss, averaged over its own ``m_k`` sequences.
    grads : dict
        The weight gradients, averaged the same way.
    rows : int
        ``m_k``.
    a_last : ndarray (n_a, m_k)
        Its last state, for a shard that carries it to the next step (else None).
    seconds : float
        The time this took here (``DataParallel.last_step``).
    """
    begin = time.perf_counter()
    batch = data.batch(step)  # (inputs, y, reset_state[, lengths])
    inputs, y, reset_state = batch[:3]
    lengths = batch[3] if len(batch) > 3 else None
    inputs, one_hot, _ = batch_inputs(inputs)
    n_a, rows = params["W_aa"].shape[0], int(data.rows)
    num_layers, directions, _ = architecture(params.keys())
    # A bidirectional network carries no state (its reverse direction starts at the end).
    carries = not isinstance(data, _ArrayShard) and directions == 1
    if reset_state or a0 is None or not carries:
        layers = num_layers * directions
        shape = (n_a, rows) if is_single_layer(num_layers, directions) else (layers, n_a, rows)
        a0 = np.zeros(shape, dtype=params["W_aa"].dtype)
    function = api.loss_and_grads_onehot if one_hot else api.loss_and_grads
    loss, grads, a_last = function(
        inputs, a0, y, params, backend=backend, return_state=True, workers=workers, nonlinearity=nonlinearity,
        lengths=lengths,
    )  # fmt: skip
    return (
        float(loss),
        {name: np.ascontiguousarray(grads[name]) for name in gradient_names(num_layers, directions)},
        rows,
        np.array(a_last) if carries else None,
        time.perf_counter() - begin,
    )


def _warm_kernels(backend, dtypes):
    """Compile (or load from Numba's cache) the kernels a training step and a score run, on
    a problem of two sequences of two steps, in each dtype."""
    for dtype in dtypes:
        x, a0, y, params = _tiny_problem(dtype)
        api.loss_and_grads(x, a0, y, params, backend=backend, workers=1)
        api.loss_and_grads_onehot(y, a0, y, params, backend=backend, workers=1)
        api.loss_onehot(y, a0, y, params, backend=backend, workers=1)
        api.loss(x, a0, y, params, backend=backend, workers=1)


def _tiny_problem(dtype):
    params = api.init_params(2, 2, 2, seed=0, dtype=dtype)
    return (
        np.ones((2, 2, 2), dtype=dtype),
        np.zeros((2, 2), dtype=dtype),
        np.zeros((2, 2), dtype=np.intp),
        params,
    )


class WarmKernels(WorkerPlugin):
    """A Dask worker plugin that compiles fastrnn's kernels when a worker starts (or joins,
    or restarts), in a background thread, so that the first step does not wait for every
    worker to compile at once.  A worker that shares the driver's installation loads the
    driver's compiled kernels from Numba's on-disk cache instead (``DataParallel`` warms
    the driver first)."""

    idempotent = True  # registered once per name: one per backend and set of dtypes

    def __init__(self, backend="numba", dtypes=("float64", "float32")):
        self.backend = backend
        self.dtypes = tuple(dtypes)
        self.name = f"fastrnn-warm-kernels-{backend}-{'-'.join(self.dtypes)}"

    def setup(self, worker):
        threading.Thread(
            target=_warm_kernels, args=(self.backend, self.dtypes), name="fastrnn-warm-kernels", daemon=True
        ).start()


def _worker_cores(dask_worker):
    """(host, cores this worker process may use, its task threads)."""
    return dask_worker.address.rsplit(":", 1)[0], parallel.available_cores(), dask_worker.state.nthreads


def _within(timeout, what, call, *args):
    """``call(*args)`` (a blocking request to the cluster, which Dask does not bound), waited
    for at most ``timeout`` seconds: beyond it, ``StepTimeoutError`` naming ``what``."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call(*args)
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"fastrnn {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StepTimeoutError(f"{what}: the cluster did not answer within timeout={timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def threads_per_task(client, timeout=DEFAULT_TIMEOUT):
    """Threads each fastrnn task should use on ``client``'s cluster: on every host, its cores
    shared among the task threads of all its workers (at least 1), and the least of these
    over the hosts, so that every task splits its shard the same way wherever it runs.

    Dask's own default is one task thread per core, which gives 1.  With one worker of one
    task thread per machine (``dask worker ADDRESS --nworkers 1 --nthreads 1``), each task
    uses every core of its machine as shard threads (``fastrnn.parallel``).  The workers'
    answer is waited for at most ``timeout`` seconds (``StepTimeoutError``).
    """
    hosts = {}
    for host, cores, nthreads in _within(timeout, "threads_per_task", client.run, _worker_cores).values():
        previous_cores, previous_threads = hosts.get(host, (cores, 0))
        hosts[host] = (min(previous_cores, cores), previous_threads + nthreads)
    if not hosts:
        raise ValueError("the Dask cluster has no workers")
    return min(max(1, cores // nthreads) for cores, nthreads in hosts.values())


# -- the driver --------------------------------------------------------------------------


def _check_client(client):
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")


def _wait_for(futures, timeout, what):
    """Wait for every future, at most ``timeout`` seconds in all; a failed one raises
    ``ShardError`` and a late one ``StepTimeoutError``, naming ``what`` and the shards
    (whose futures are then cancelled)."""
    shard_of = {future.key: k for k, future in enumerate(futures)}
    try:
        for future in distributed.as_completed(futures, timeout=timeout):
            if future.status == "error":
                k = shard_of[future.key]
                cause = future.exception(timeout=timeout)
                raise ShardError(f"{what}, shard {k}: {type(cause).__name__}: {cause}") from cause
    except distributed.TimeoutError:
        late = [k for k, future in enumerate(futures) if not future.done()]
        futures[0].client.cancel(futures)
        raise StepTimeoutError(
            f"{what}: shard{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} of {len(futures)} "
            f"not done within timeout={timeout:g} s; nothing was changed (a stuck or overloaded "
            "worker? look at the Dask dashboard, or raise timeout)"
        ) from None
    except ShardError:
        futures[0].client.cancel(futures)
        raise


class DataParallel:
    """Synchronous data-parallel training of an ``RNN`` on a Dask cluster.

    Parameters
    ----------
    client : dask.distributed.Client
    model : fastrnn.RNN
        Trained in place, on the driver (this process).
    optimizer : fastrnn.optim.Optimizer
        Steps once per step, on the driver, with the whole batch's gradient.
    clip_norm : float, optional
        Clip the whole batch's gradient by global norm before the optimizer step (after the
        sum over the shards, not per shard).
    timeout : float
        Seconds any one wait may take (loading the shards, a step); beyond it,
        ``StepTimeoutError``.
    workers : int or None
        Threads per shard task on the workers, as ``workers=`` of ``fastrnn.loss_and_grads``;
        None: ``threads_per_task(client)``, fixed at construction so that a recomputed task
        splits its shard as the first try did.

    Notes
    -----
    A step equals ``model.loss_and_grads`` on the concatenation of the shards (zero initial
    states), then clipping and the optimizer step.  Per step, the parameters go to each
    shard's task as an argument, and each returns its loss, its weight gradients and (for a
    shard that carries state) its last state: ``n_shards * (params + grads)`` bytes, and
    Dask's fixed cost per task (docs/guide.md, "Every machine").
    """

    def __init__(self, client, model, optimizer, *, clip_norm=None, timeout=DEFAULT_TIMEOUT, workers=None):
        _check_client(client)
        if not isinstance(model, RNN):
            raise TypeError(f"model must be a fastrnn.RNN, got {type(model).__name__}")
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"optimizer must be a fastrnn.optim.Optimizer, got {type(optimizer).__name__}")
        self.client, self.model, self.optimizer = client, model, optimizer
        self.clip_norm, self.timeout = clip_norm, timeout
        workers = parallel.check_workers(workers)
        self.workers = threads_per_task(client, self.timeout) if workers is None else workers
        self.backend = backends.resolve(model.backend).NAME
        self.steps_done = 0  # steps taken; a shard that streams batches gets this index at the next step
        #: Timing of the last step, in seconds: from submitting the tasks to having every
        #: result (``seconds``), the longest a shard's task computed on its worker
        #: (``slowest_shard_seconds``), and the difference (``overhead_seconds``: Dask's
        #: messages, moving parameters and gradients, queueing).
        self.last_step = None
        # Task keys: this trainer's, and a new one for every load and step submitted, so that
        # no key meets a cancelled or released task of an earlier try.
        self._keys = (f"fastrnn-{uuid.uuid4().hex[:8]}-{n}" for n in itertools.count())
        self._shards = None
        # Compile here first (a worker on this machine then loads the kernels from the cache),
        # then on every worker, in the background, as it starts.
        _warm_kernels(self.backend, (model.dtype.name,))
        _within(
            self.timeout,
            "registering WarmKernels",
            client.register_plugin,
            WarmKernels(self.backend, (model.dtype.name,)),
        )

    def set_data(self, loader, n_shards):
        """Load the shards on the workers: ``loader(k)`` for ``k`` in ``range(n_shards)``.

        Parameters
        ----------
        loader : callable
            ``loader(k)`` runs on a worker and returns shard ``k``: ``(x, y)`` with dense
            ``x`` (n_x, m_k, T), or ``(x_index, y)`` with one-hot indices (m_k, T), and ``y``
            (m_k, T), or (m_k,) for one class per sequence; every step trains on all of
            them.  Or an object with ``rows`` (m_k) and ``batch(step) -> (inputs, y,
            reset_state)``: a stream of batches whose last hidden state is carried to the
            next step (truncated BPTT) unless ``reset_state`` (``fastrnn.text.TextShards``).  It must be picklable (Dask's
            cloudpickle: a module-level function or a ``functools.partial`` of one), and
            return the same shard whenever it is called with the same ``k``: a shard
            lost with a worker is loaded again.
        n_shards : int
            At least 1.  More shards than worker threads balance uneven workers.

        Returns
        -------
        list of int
            Each shard's number of sequences ``m_k``.
        """
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {type(loader).__name__}")
        n_shards = check_int(n_shards, "n_shards", minimum=1)
        dims = (self.model.n_x, self.model.n_y, self.model.dtype)
        prefix = next(self._keys)
        shards = [
            self.client.submit(_load_shard, loader, k, *dims, key=f"{prefix}-shard-{k}")
            for k in range(n_shards)
        ]
        rows = [
            self.client.submit(_shard_rows, shard, key=f"{prefix}-rows-{k}") for k, shard in enumerate(shards)
        ]
        _wait_for(rows, self.timeout, "set_data")
        self._shards, self._rows = (
            shards,
            _within(self.timeout, "set_data: gathering", self.client.gather, rows),
        )
        self._states = [None] * n_shards
        return list(self._rows)

    def step(self):
        """One synchronous step over all shards.

        Returns
        -------
        loss : numpy.float32 or numpy.float64
            The whole batch's loss (before the update), as ``model.loss_and_grads``.

        Raises
        ------
        StepTimeoutError
            A shard was not computed within ``timeout``; nothing was changed.
        ShardError
            A shard's task failed; nothing was changed.
        """
        if self._shards is None:
            raise RuntimeError("call set_data(loader, n_shards) before step()")
        params = dict(self.model.params)
        index, prefix = self.steps_done, next(self._keys)
        futures = [
            self.client.submit(
                _shard_step,
                shard,
                params,
                index,
                self._states[k],
                self.backend,
                self.workers,
                self.model.nonlinearity,
                key=f"{prefix}-step-{index + 1}-shard-{k}",
            )  # fmt: skip
            for k, shard in enumerate(self._shards)
        ]
        begin = time.perf_counter()
        _wait_for(futures, self.timeout, f"step {index + 1}")
        parts = _within(self.timeout, f"step {index + 1}: gathering the results", self.client.gather, futures)
        seconds = time.perf_counter() - begin
        m = sum(part[2] for part in parts)
        weights = [part[2] / m for part in parts]
        grads = parallel.sum_in_order(
            [part[1] for part in parts], gradient_names(*architecture(params.keys())[:2]), weights
        )
        loss = self.model.dtype.type(sum(weight * part[0] for weight, part in zip(weights, parts)))
        if self.clip_norm is not None:
            optim.clip_by_global_norm(grads, self.clip_norm, backend=self.backend)
        self.optimizer.step(self.model.params, grads)
        self._states = [part[3] for part in parts]
        if all(state is not None for state in self._states):
            self.model.state = np.concatenate(self._states, axis=-1)  # along the sequences
        self.steps_done += 1
        slowest = max(part[4] for part in parts)
        self.last_step = dict(
            seconds=seconds, slowest_shard_seconds=slowest, overhead_seconds=seconds - slowest
        )
        return loss

    @property
    def timeout(self):
        """Seconds any one wait may take (checked when set: a positive number)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value):
        self._timeout = check_real(value, "timeout", above=0)

    @property
    def clip_norm(self):
        """The global norm the whole batch's gradient is clipped to, or None (checked when set)."""
        return self._clip_norm

    @clip_norm.setter
    def clip_norm(self, value):
        self._clip_norm = None if value is None else check_real(value, "clip_norm", above=0)

    @property
    def n_shards(self):
        """Shards of the data (0 before ``set_data``)."""
        return 0 if self._shards is None else len(self._shards)

    def carry_state_from(self, state):
        """Start the shards that carry state from ``state`` (n_a, m), or (num_layers, n_a, m)
        for several layers: the rows of each shard, in shard order (a resumed run's
        ``model.state``)."""
        if self._shards is None:
            raise RuntimeError("call set_data(loader, n_shards) before carry_state_from()")
        state = np.asarray(state, dtype=self.model.dtype)
        bounds = np.cumsum([0, *self._rows])
        expected = self.model._state_shape(int(bounds[-1]))
        if state.shape != expected:
            raise ValueError(f"state must have shape {expected}, got {state.shape}")
        self._states = [np.array(state[..., bounds[k] : bounds[k + 1]]) for k in range(len(self._rows))]

    def fit(self, steps, callback=None):
        """``steps`` steps; ``callback(step, loss, self)`` after each, where a true return
        value stops.  Returns the list of losses."""
        steps = check_int(steps, "steps", minimum=1)
        losses = []
        for _ in range(steps):
            losses.append(self.step())
            if callback is not None and callback(self.steps_done, losses[-1], self):
                break
        return losses


# -- scoring -----------------------------------------------------------------------------


def _score_block(inputs, y, lengths, params, backend, workers, nonlinearity):
    """Each sequence's loss in one block of sequences, on a worker (``a0`` zeros)."""
    inputs = np.asarray(inputs)
    function = api.loss_onehot if inputs.ndim == 2 else api.loss
    return function(
        inputs, None, y, params, backend=backend, per_sequence=True, workers=workers, nonlinearity=nonlinearity,
        lengths=lengths,
    )  # fmt: skip


def _checked_lengths(lengths, N, T):
    """``lengths`` of ``score`` as a NumPy array (N,) in [1, T] (a dask array is computed:
    N integers)."""
    if isinstance(lengths, dask_array.Array):
        lengths = lengths.compute()
    return check_lengths(lengths, N, T)


def score(client, model, inputs, y=None, *, lengths=None, workers=None):
    """Each sequence's loss over a dask array of sequences, forward only, on ``client``.

    Parameters
    ----------
    client : dask.distributed.Client
    model : fastrnn.RNN
    inputs : dask.array.Array
        One-hot indices (N, T) or dense ``x`` (n_x, N, T), chunked along the sequences
        (chunks along other axes are merged).  A NumPy array is taken as one chunk.
    y : dask.array.Array or array_like of int, shape (N, T) or (N,), optional
        Each step's label, or each sequence's (``fastrnn.loss_and_grads``); rechunked like
        ``inputs``.  None: ``inputs`` are indices and each
        step's label is the next index, so each sequence is scored over its first ``T - 1``
        steps (a language model's score).
    lengths : dask.array.Array or array_like of int, shape (N,), optional
        Each sequence's length (``fastrnn.loss``; padding is never read); rechunked like
        ``inputs``.  With ``y=None`` a sequence of length L is scored over its first
        ``L - 1`` steps, so every length must be at least 2.
    workers : int or None
        Threads per block task (``DataParallel``'s ``workers``).

    Returns
    -------
    dask.array.Array, shape (N,)
        Each sequence's loss, summed over its steps, in the model's dtype (their mean is the
        batch loss).  Already computing on the cluster (``client.persist``); ``.compute()``
        gathers it.
    """
    _check_client(client)
    if not isinstance(model, RNN):
        raise TypeError(f"model must be a fastrnn.RNN, got {type(model).__name__}")
    workers = parallel.check_workers(workers)
    workers = threads_per_task(client) if workers is None else workers  # bounded by DEFAULT_TIMEOUT
    if not isinstance(inputs, dask_array.Array):
        inputs = dask_array.from_array(np.asarray(inputs), chunks=-1)
    one_hot = inputs.ndim == 2
    if not (one_hot and inputs.dtype.kind in "iu") and not (
        inputs.ndim == 3 and inputs.shape[0] == model.n_x
    ):
        raise ValueError(
            f"inputs must be integer indices (N, T) or dense x (n_x={model.n_x}, N, T), "
            f"got shape {inputs.shape} and dtype {inputs.dtype}"
        )
    if y is None:
        if not one_hot:
            raise ValueError(
                "y=None scores next-index predictions, which needs integer indices (N, T) as inputs"
            )
        if inputs.shape[1] < 2:
            raise ValueError(f"y=None needs sequences of at least 2 indices, got T={inputs.shape[1]}")
        inputs, y = inputs[:, :-1], inputs[:, 1:]
        if lengths is not None:
            lengths = _checked_lengths(lengths, inputs.shape[0], inputs.shape[1] + 1) - 1
            if lengths.min() < 1:
                raise ValueError("lengths must be at least 2 with y=None (each step predicts the next index)")
    sequence_axis = 0 if one_hot else 1
    N, T = inputs.shape[sequence_axis], inputs.shape[-1]
    inputs = inputs.rechunk(
        {axis: (inputs.chunks[sequence_axis] if axis == sequence_axis else -1) for axis in range(inputs.ndim)}
    )
    chunks = inputs.chunks[sequence_axis]
    if not isinstance(y, dask_array.Array):
        y = dask_array.from_array(np.asarray(y), chunks=-1)
    if y.shape not in ((N, T), (N,)):
        raise ValueError(
            f"y must have shape (N, T) = {(N, T)}, or (N,) for one class per sequence; got {y.shape}"
        )
    y = y.rechunk((chunks, -1)[: y.ndim])
    if lengths is not None:
        lengths = dask_array.from_array(_checked_lengths(lengths, N, T), chunks=(chunks,))
        length_blocks = lengths.to_delayed().ravel()
    else:
        length_blocks = [None] * len(chunks)
    params = dask.delayed({name: np.array(value) for name, value in model.params.items()}, pure=True)
    input_blocks = inputs.to_delayed().ravel()
    label_blocks = y.to_delayed().ravel()
    backend = backends.resolve(model.backend).NAME
    blocks = [
        dask_array.from_delayed(
            # pure=False: computed at every call (no result of an earlier call is reused)
            dask.delayed(_score_block, pure=False)(
                block, labels, block_lengths, params, backend, workers, model.nonlinearity
            ),
            shape=(rows,),
            dtype=model.dtype,
        )
        for block, labels, block_lengths, rows in zip(input_blocks, label_blocks, length_blocks, chunks)
    ]
    return client.persist(dask_array.concatenate(blocks))
