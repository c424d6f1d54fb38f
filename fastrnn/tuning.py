"""``fastrnn.tune``: measure a call's candidate plans on this machine and keep the fastest.

The built-in crossovers of ``parallel.plan`` were measured on one machine; this module
measures on the machine it runs on, once, for the calls a user cares about, and records
the result in the wisdom file (``fastrnn.wisdom``), which every later call and process
reads.  Each candidate (``parallel.candidate_plans``) is timed through the public function
itself, with the candidate put in place of the recorded plan (``wisdom.trying``): what is
timed is exactly what a call with ``workers=None`` will run.

Candidates take turns, round after round (a shared machine's noise spreads over all of
them); each turn runs untimed first (``SETTLE_SECONDS``: the threads of the plan before it
must be idle) and then times a sample long enough to time (``MIN_SAMPLE_SECONDS``).  The fastest median
wins, except that a plan using more threads must beat one using fewer by ``MARGIN``: a
tie goes to the plan that leaves cores free.
"""

import math
import time
from typing import NamedTuple

import numpy as np

from . import api, parallel, wisdom
from .validation import check_int

#: A plan with more threads is chosen only if it is this much faster than one with fewer.
MARGIN = 0.03
#: Each timed sample repeats the call until it lasts at least this long.
MIN_SAMPLE_SECONDS = 0.02
#: Before its sample, a candidate runs untimed for this long: a plan's threads must not be
#: timed against the threads of the plan before it.  OpenBLAS's threads keep spinning for
#: up to ~0.1 s after a product (its THREAD_TIMEOUT), so a plan timed straight after one
#: with two BLAS threads ran 1.8x slower than in a process of its own (2 shards at the
#: char-rnn size, float32: 5.1 against 2.8 ms).
SETTLE_SECONDS = 0.2


class Tuned(NamedTuple):
    """What ``tune`` measured for one call.

    Attributes
    ----------
    key : str
        The wisdom key (``wisdom.key_text``).
    plan : parallel.Plan
        The plan chosen: what calls with ``workers=None`` run from now on.
    built_in : parallel.Plan
        What the built-in crossovers chose (what ran before).
    seconds : dict
        ``{Plan: median seconds of one call}`` for every candidate.
    recorded : str or None
        The wisdom file the plan was written to; None when not saved.
    """

    key: str
    plan: parallel.Plan
    built_in: parallel.Plan
    seconds: dict
    recorded: str | None

    def speedup(self):
        """The built-in plan's median over the chosen plan's."""
        return self.seconds[self.built_in] / self.seconds[self.plan]


def tune(inputs, params, *, call="loss_and_grads", lengths=None, backend=None, nonlinearity="tanh",
         repeat=5, save=True):  # fmt: skip
    """Time every candidate plan of a call on this machine, and record the fastest.

    From then on, every call of ``call`` with ``workers=None`` (its default) and the same
    sizes, dtype, backend and path runs the chosen plan, in this process and every later one
    on this machine (``fastrnn.wisdom``): plans stay deterministic, and change only when
    ``tune`` runs again.  Run it on a quiet machine, with no other thread of this process
    making calls meanwhile (they would run the candidate being timed); it takes ``repeat``
    rounds of every candidate (a few seconds at the large sizes).

    Parameters
    ----------
    inputs : ndarray
        Dense ``x`` (n_x, m, T), or one-hot indices ``x_index`` (m, T): the batch to time
        (its values are used as they are; labels are drawn at random).
    params : dict
        As from ``init_params``.
    call : str
        ``"loss_and_grads"`` (a training step, and its one-hot twin), ``"rnn_forward"``
        (timed with its ``rnn_backward``, which runs on the same plan), or ``"loss"``.
    lengths, backend, nonlinearity
        As in ``loss_and_grads``.
    repeat : int
        Rounds of samples; each candidate's median is over this many.
    save : bool
        Record the chosen plan in the wisdom file (else only report it).

    Returns
    -------
    Tuned
    """
    repeat = check_int(repeat, "repeat", minimum=1)
    impl, dims, planned_as, (path, *sizes) = api.planning_key(inputs, params, lengths, backend, call)
    if parallel.default_workers() is not None:
        raise ValueError(
            f"{parallel.WORKERS_VARIABLE}={parallel.default_workers()} fixes every plan in this process: "
            "unset it to tune"
        )
    run = _runner(impl.NAME, planned_as, inputs, params, lengths, nonlinearity, dims)
    cores, budget = parallel.available_cores(), parallel.default_budget()
    key = wisdom.key_text(impl.NAME, dims.dtype.name, planned_as, path, *sizes, cores, budget)
    built_in = parallel.plan(None, *sizes, impl.NAME)  # no dtype or call: the crossovers alone
    candidates = parallel.candidate_plans(*sizes, cores, budget)
    if built_in not in candidates:
        candidates.append(built_in)
    seconds = _median_seconds(run, key, candidates, repeat)
    plan = _choose(seconds)
    result = Tuned(key, plan, built_in, seconds, None)
    if save:
        result = result._replace(recorded=wisdom.record({key: as_record(result)}))
    return result


def as_record(result):
    """``(plan, {plan text: median seconds})``: a ``Tuned`` as ``wisdom.record`` takes it."""
    return result.plan, {parallel.describe(plan): round(s, 9) for plan, s in result.seconds.items()}


def _runner(backend, planned_as, inputs, params, lengths, nonlinearity, dims):
    """A function of no arguments that makes the timed call once (with ``workers=None``);
    ``inputs`` were checked by ``api.planning_key``."""
    inputs = np.asarray(inputs)
    onehot = inputs.ndim == 2
    m, T = inputs.shape[-2:]
    y = np.random.default_rng(0).integers(0, dims.n_y, size=(m, T))
    options = dict(lengths=lengths, backend=backend, nonlinearity=nonlinearity)
    if planned_as == "loss_and_grads":
        step = api.loss_and_grads_onehot if onehot else api.loss_and_grads
        return lambda: step(inputs, None, y, params, **options)
    if planned_as == "loss":
        score = api.loss_onehot if onehot else api.loss
        return lambda: score(inputs, None, y, params, **options)
    if onehot:
        raise ValueError("call='rnn_forward' takes dense inputs x (n_x, m, T), not one-hot indices")
    da = np.ones((dims.directions * dims.n_a, m, T), dtype=dims.dtype)

    def forward_and_backward():
        return api.rnn_backward(da, api.rnn_forward(inputs, None, params, **options)[2])

    return forward_and_backward


def _median_seconds(run, key, candidates, repeat):
    """``{plan: median seconds of one call}``: ``repeat`` rounds in which each candidate
    takes a turn, in a rotating order.  A turn first runs the call for ``SETTLE_SECONDS``
    untimed (the first turn also compiles and starts threads), then times one sample of
    calls lasting at least ``MIN_SAMPLE_SECONDS``."""
    samples = {plan: [] for plan in candidates}
    for round_ in range(repeat):
        turn = candidates[round_ % len(candidates) :] + candidates[: round_ % len(candidates)]
        for plan in turn:
            with wisdom.trying(key, plan):
                once = _settle(run)
                number = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(once, 1e-9)))
                start = time.perf_counter()
                for _ in range(number):
                    run()
                samples[plan].append((time.perf_counter() - start) / number)
    return {plan: float(np.median(times)) for plan, times in samples.items()}


def _settle(run):
    """Run the call, untimed, for at least ``SETTLE_SECONDS`` (and twice); return the last
    call's time."""
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < SETTLE_SECONDS:
        begin = time.perf_counter()
        run()
        once = time.perf_counter() - begin
        calls += 1
    return once


def threads_used(plan):
    """Cores a plan keeps busy: shards at once times each one's BLAS threads."""
    return plan.threads * (plan.blas_threads or 1)


def _choose(seconds):
    """The fastest plan, unless one using fewer threads is within ``MARGIN`` of it."""
    best = min(seconds.values())
    within = [plan for plan, s in seconds.items() if s <= best * (1 + MARGIN)]
    return min(within, key=lambda plan: (threads_used(plan), seconds[plan]))
