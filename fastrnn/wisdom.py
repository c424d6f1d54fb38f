"""Plans measured on this machine and kept between processes, as FFTW keeps its wisdom.

``parallel.plan`` chooses a call's shards and threads from crossovers measured on one
machine; another machine may want another plan for the same call.  ``fastrnn.tune``
(``python -m fastrnn tune``) times the candidate plans of a call here and records the
fastest in this module's file.  From then on every call that leaves ``workers`` out and has
the same key runs the recorded plan, in this process and in every later one: a plan is
still a pure function of the machine, the call, its sizes and dtype, and of the file.  A
process reads the file once, at its first call that asks (``lookup``), so its plans do not
change under it while another process tunes.

The key of a plan: backend, dtype, call (``"loss_and_grads"``, ``"rnn_forward"``, which its
``rnn_backward`` shares, or ``"loss"``), path (``"dense"`` or ``"packed"``), the sizes
``parallel.plan`` takes (m, T, n_x, n_a, n_y), and the cores and thread budget of the
process.  Entries belong to one machine, named by its processor and its BLAS library
(``machine``): a file shared by several machines (a home directory on a cluster) keeps
each one's plans apart, and a new BLAS starts from the built-in crossovers again.

The file is ``FASTRNN_WISDOM`` (a path; ``off`` for none), else
``$XDG_CACHE_HOME/fastrnn/wisdom.json`` (``~/.cache/...``).  JSON::

    {"format": 1, "machines": {MACHINE: {"plans": {KEY: {"plan": [shards, threads, blas_threads],
                                                         "seconds": {PLAN: median, ...}}}}}}

A file that cannot be read or parsed is a warning and no wisdom, never a failed call; an
entry that is not a plan its key's call can run is ignored.  This module stores plans as
plain tuples, which ``parallel`` makes into its ``Plan`` (it imports this module, not the
other way round).
"""

import contextlib
import functools
import json
import os
import platform
import tempfile
import threading
import warnings

import numpy as np

#: The environment variable naming the wisdom file (``off``: no wisdom).
WISDOM_VARIABLE = "FASTRNN_WISDOM"
FORMAT = 1
#: The calls a plan is kept for; each public sequence function plans as one of them.
CALLS = ("loss_and_grads", "rnn_forward", "loss")
PLANNED_AS = {
    "loss_and_grads": "loss_and_grads",
    "loss_and_grads_onehot": "loss_and_grads",
    "rnn_forward": "rnn_forward",
    "rnn_backward": "rnn_forward",  # a backward pass runs on its forward pass's plan
    "loss": "loss",
    "loss_onehot": "loss",
}

_lock = threading.RLock()
_plans = None  # key text -> (shards, threads, blas_threads); None until first read
_listeners = []  # called after the plans change (parallel forgets its cached plans)


def path():
    """The wisdom file's path, or None when ``FASTRNN_WISDOM=off``."""
    value = os.environ.get(WISDOM_VARIABLE, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return os.path.abspath(os.path.expanduser(value))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastrnn", "wisdom.json")


@functools.lru_cache(maxsize=1)
def machine():
    """This machine's name in the file: its processor and the BLAS libraries of NumPy and
    SciPy (the kernels call SciPy's), e.g. ``'x86_64 Intel(R) Xeon(R) ...; openblas 0.3.27
    SkylakeX, ...'``.  Other BLAS libraries a process may have loaded (PyTorch's MKL, say)
    are left out, so that every process on the machine gives the same name."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    blas = f"numpy {np.__version__}"
    with contextlib.suppress(Exception):  # no SciPy (the NumPy backend alone), no threadpoolctl
        import scipy.linalg.cython_blas  # noqa: F401  (the kernels' BLAS, loaded before looking)
        from threadpoolctl import threadpool_info

        found = sorted(
            {f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')}"
             for lib in threadpool_info()
             if lib.get("user_api") == "blas" and any(name in lib.get("filepath", "") for name in ("numpy", "scipy"))}
        )  # fmt: skip
        blas = ", ".join(found) or blas
    return f"{platform.machine()} {cpu}; {blas}"


def key_text(backend, dtype, call, path_, m, T, n_x, n_a, n_y, cores, budget):
    """The key of a plan, as the file writes it, e.g.
    ``'numba float32 loss_and_grads dense m=32 T=64 n_x=65 n_a=128 n_y=65 cores=2 budget=2'``."""
    return (
        f"{backend} {dtype} {call} {path_} m={m} T={T} n_x={n_x} n_a={n_a} n_y={n_y} "
        f"cores={cores} budget={budget}"
    )


def lookup(key):
    """The recorded plan ``(shards, threads, blas_threads)`` of ``key`` (``key_text``), or
    None.  The first lookup of a process reads the file."""
    plans = _plans if _plans is not None else _load()
    return plans.get(key)


def entries():
    """This machine's recorded plans: ``{key: (shards, threads, blas_threads)}`` (a copy)."""
    plans = _plans if _plans is not None else _load()
    return dict(plans)


def reload():
    """Forget what this process read; the next lookup reads the file (``FASTRNN_WISDOM``
    as set then).  For tests and tools; calls never need it."""
    global _plans
    with _lock:
        _plans = None
    _changed()


def on_change(listener):
    """Call ``listener()`` whenever this process's plans change (``record``, ``forget``,
    ``reload``, ``trying``)."""
    _listeners.append(listener)


def _changed():
    for listener in _listeners:
        listener()


def _load():
    global _plans
    with _lock:
        if _plans is None:
            recorded = _read_machine(_read_file(path())).get("plans", {})
            checked = ((key, _as_plan(key, value)) for key, value in recorded.items())
            _plans = {key: plan for key, plan in checked if plan is not None}
        return _plans


def _read_file(file):
    """The file's JSON object, or an empty one (no file, or a warning for one that cannot be
    read or is not wisdom)."""
    if file is None or not os.path.exists(file):
        return {}
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or not isinstance(data.get("machines"), dict)
        ):
            raise ValueError(f"not a fastrnn wisdom file of format {FORMAT}")
        return data
    except (OSError, ValueError) as error:
        warnings.warn(
            f"fastrnn: ignoring the wisdom file {file} ({error}); plans use the built-in crossovers. "
            f"Run `python -m fastrnn tune --forget` or delete it.",
            RuntimeWarning,
            stacklevel=4,
        )
        return {}


def _read_machine(data):
    entry = data.get("machines", {}).get(machine()) if data else None
    return entry if isinstance(entry, dict) and isinstance(entry.get("plans"), dict) else {}


def _as_plan(key, value):
    """``(shards, threads, blas_threads)`` if ``value`` holds a plan the call of ``key`` can
    run (shards at most m, threads at most shards and cores), else None."""
    try:
        shards, threads, blas = value["plan"]
        sizes = dict(part.split("=") for part in key.split() if "=" in part)
        m, cores = int(sizes["m"]), int(sizes["cores"])
    except (KeyError, TypeError, ValueError):
        return None
    ints = all(isinstance(n, int) and not isinstance(n, bool) for n in (shards, threads))
    if not ints or not (1 <= shards <= m and 1 <= threads <= min(shards, cores)):
        return None
    if blas is not None and not (type(blas) is int and 1 <= blas and threads * blas <= cores):
        return None
    return (shards, threads, blas)


def record(plans):
    """Record ``{key: (plan, seconds)}`` (``seconds``: ``{plan text: median}``, what the
    choice was made from) for this machine, in this process and in the file (rewritten
    whole, atomically, over what it holds now).  Returns the file's path.  An ``OSError``
    when the file cannot be written."""
    file = path()
    if file is None:
        raise OSError(f"{WISDOM_VARIABLE}=off: no wisdom file to record plans in")
    with _lock:
        data = _read_file(file) or {"format": FORMAT, "machines": {}}
        mine = data["machines"].setdefault(machine(), {"plans": {}})
        mine.setdefault("plans", {})
        for key, (plan, seconds) in plans.items():
            mine["plans"][key] = {"plan": list(plan), "seconds": seconds}
        _write(file, data)
        _load()
        _plans.update({key: tuple(plan) for key, (plan, _) in plans.items()})
    _changed()
    return file


def forget():
    """Remove this machine's plans from the file (other machines' stay) and from this
    process; a damaged file is removed.  Returns how many plans were removed."""
    file = path()
    removed = 0
    with _lock:
        if file is not None and os.path.exists(file):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                data = _read_file(file)
            if data:
                removed = len(data["machines"].pop(machine(), {}).get("plans", {}))
                _write(file, data)
            else:  # damaged: nothing in it can be used
                os.remove(file)
        global _plans
        _plans = {}
    _changed()
    return removed


def _write(file, data):
    os.makedirs(os.path.dirname(file), exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(file), prefix=".wisdom-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(temporary, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def trying(key, plan):
    """Run the block with ``plan`` recorded for ``key`` in this process only (what
    ``fastrnn.tune`` times each candidate with), then restore what was there."""
    _load()
    with _lock:
        before = _plans.get(key)
        _plans[key] = tuple(plan)
    _changed()
    try:
        yield
    finally:
        with _lock:
            if before is None:
                _plans.pop(key, None)
            else:
                _plans[key] = before
        _changed()
