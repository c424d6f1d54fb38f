"""Command line: ``python -m fastrnn [demo | bench | tune | train | sample]``.

- ``demo`` (the default): one training step's maths on both backends, a few sizes
  (``fastrnn.bench.demo``).
- ``bench``: Numba and NumPy backends against PyTorch CPU and the BLAS peak
  (``fastrnn.bench.run``); ``--generation``: generation and streams
  (``fastrnn.bench.run_generation``).
- ``tune``: measure the plans (shards, threads) of calls of some sizes on this machine and
  keep the fastest for every later call (``fastrnn.tune``, ``fastrnn.wisdom``).
- ``train [TEXT_FILE]``: train a character-level language model (the Zen of Python when no
  file is given), with a progress bar, samples, a checkpoint and a loss-curve picture; in
  this process, or on a Dask cluster (``--dask``, ``fastrnn.distributed``).
- ``sample CHECKPOINT``: generate text from a trained model.

Errors in what the user gave (a missing, empty or binary text, a bad checkpoint, a bad
setting) end with a one-line message and exit status 1, never a traceback.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading

import numpy as np

from . import __version__, api, backends, bench, engine, parallel, tuning, wisdom
from .model import RNN
from .optim import OPTIMIZERS
from .parallel import check_workers
from .text import builtin_corpus, default_shards, fit_batch_shape, read_text, sample, train_char_rnn
from .validation import NONLINEARITIES, Dims, check_int, check_real

BUILTIN_CORPUS_NAME = "the Zen of Python (the standard library's `this` module)"


class UsageError(ValueError):
    """A setting that is valid for argparse but not for training."""


def _number(kind, **bounds):
    """An argparse type: ``kind(text)`` checked by ``validation.check_int`` or ``check_real``
    with ``bounds`` (the same checks as the API's), an argparse error naming the flag."""
    check = check_int if kind is int else check_real

    def parse(text):
        try:
            return check(kind(text), "value", **bounds)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(f"{str(error).removeprefix('value ')}") from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _workers(text):
    try:
        return check_workers(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, or -1 for every core, got {text}") from None


def _dask_address(text):
    """``--dask``: ``local:N`` (N >= 1) or a scheduler's address."""
    if text.startswith("local:"):
        try:
            check_int(int(text.removeprefix("local:")), "N", minimum=1)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"local:N needs a number of workers N >= 1, got {text}"
            ) from None
    elif not text.strip():
        raise argparse.ArgumentTypeError("give a scheduler address (tcp://HOST:8786) or local:N")
    return text


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fastrnn", description="fastrnn: a fast CPU vanilla RNN.")
    parser.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="run loss_and_grads on both backends for a few sizes (default)")
    demo.add_argument("--dtype", choices=("float64", "float32"), default="float64")

    bench_parser = sub.add_parser(
        "bench", help="time a training step: Numba, NumPy, PyTorch CPU and the BLAS peak"
    )
    sizes = ",".join(size[0] for size in bench.BENCH_SIZES)
    bench_parser.add_argument("--sizes", default=sizes, help="comma-separated, from: %(default)s")
    bench_parser.add_argument(
        "--dtypes", default="float64,float32", help="comma-separated (default: %(default)s)"
    )
    bench_parser.add_argument(
        "--repeat", type=_number(int, minimum=1), default=7, help="samples per median (default: %(default)s)"
    )
    bench_parser.add_argument("--dask", metavar="ADDRESS", type=_dask_address, default=None,
                              help="instead: time fastrnn.distributed (DataParallel steps, score) on a Dask cluster, "
                                   "a scheduler's address or local:N, against one process")  # fmt: skip
    bench_parser.add_argument("--torch", action="store_true",
                              help="instead: a PyTorch training step with fastrnn.torch.RNN against torch.nn.RNN, "
                                   "each side in fresh processes (needs fastrnn[torch]); --sizes then names "
                                   "cases of fastrnn.bench.TORCH_CASES, or 'all'")  # fmt: skip
    bench_parser.add_argument("--rounds", type=_number(int, minimum=1), default=3,
                              help="with --torch: fresh processes per side and case (default: %(default)s)")  # fmt: skip
    bench_parser.add_argument("--generation", action="store_true",
                              help="instead: text.sample per character and with 64 streams, and Stream.step against "
                                   "rnn_cell_forward and PyTorch's one-step call, on a character model")  # fmt: skip

    tune = sub.add_parser("tune", help="measure the plans (shards, threads) of some sizes on this machine and keep "
                                       "the fastest for every later call")  # fmt: skip
    tune.add_argument("--sizes", default=sizes, help="comma-separated, from: %(default)s; or 'none'")
    tune.add_argument("--shape", action="append", default=[], metavar="N_X,N_A,N_Y,M,T",
                      help="also tune this size (repeatable); with --onehot, N_X is the vocabulary")  # fmt: skip
    tune.add_argument("--dtypes", default="float64,float32", help="comma-separated (default: %(default)s)")
    tune.add_argument("--calls", default=",".join(wisdom.CALLS), help="comma-separated, from: %(default)s")
    tune.add_argument("--onehot", action="store_true",
                      help="one-hot inputs (what `train` runs), not dense ones; rnn_forward is then skipped")  # fmt: skip
    tune.add_argument("--layers", type=_number(int, minimum=1), default=1)
    tune.add_argument("--bidirectional", action="store_true")
    tune.add_argument("--backend", choices=("numba", "numpy"), default=None)
    tune.add_argument("--repeat", type=_number(int, minimum=1), default=5,
                      help="rounds of samples per median (default: %(default)s)")  # fmt: skip
    tune.add_argument("--dry-run", action="store_true", help="measure and print, record nothing")
    tune.add_argument("--show", action="store_true", help="instead: print this machine's recorded plans")
    tune.add_argument("--forget", action="store_true", help="instead: remove this machine's recorded plans")

    train = sub.add_parser("train", help="train a character-level language model on a text file")
    train.add_argument("text_file", nargs="?", help="UTF-8 text to learn (default: the Zen of Python)")
    train.add_argument(
        "--hidden", type=_number(int, minimum=1), default=128, help="hidden units (default: %(default)s)"
    )
    train.add_argument(
        "--seq-length",
        type=_number(int, minimum=1),
        default=32,
        help="characters per BPTT chunk (default: %(default)s)",
    )
    train.add_argument(
        "--batch", type=_number(int, minimum=1), default=16, help="parallel streams (default: %(default)s)"
    )
    train.add_argument(
        "--steps", type=_number(int, minimum=1), default=5000, help="training steps (default: %(default)s)"
    )
    train.add_argument(
        "--lr", type=_number(float, above=0), default=0.002, help="learning rate (default: %(default)s)"
    )
    train.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="adam",
        help="(default: %(default)s; the defaults were chosen from runs on four texts, docs/training-defaults.md)",
    )
    train.add_argument(
        "--clip",
        type=_number(float, minimum=0),
        default=5.0,
        help="clip gradients by global norm; 0: off (default: %(default)s)",
    )
    train.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="(default: %(default)s)"
    )
    train.add_argument("--nonlinearity", choices=NONLINEARITIES, default="tanh",
                       help="the hidden layer's activation (default: %(default)s)")  # fmt: skip
    train.add_argument("--layers", type=_number(int, minimum=1), default=1,
                       help="stacked hidden layers, each of --hidden units (default: %(default)s)")  # fmt: skip
    train.add_argument("--backend", choices=("numba", "numpy"), default=None, help="(default: automatic)")
    train.add_argument("--workers", type=_workers, default=None,
                       help="threads per step: N >= 1, or -1 for every core (default: fastrnn chooses from the sizes and cores)")  # fmt: skip
    train.add_argument("--dask", metavar="ADDRESS", type=_dask_address, default=None,
                       help="train on a Dask cluster: a scheduler's address (tcp://HOST:8786), or local:N for N worker "
                            "processes on this machine; the workers read TEXT_FILE at the same path (docs/guide.md, 'Every machine')")  # fmt: skip
    train.add_argument("--dask-timeout", metavar="SECONDS", type=_number(float, above=0), default=600.0,
                       help="with --dask: the longest any wait may take, connecting (at most 30 s) or a step (default: %(default)s)")  # fmt: skip
    train.add_argument("--shards", type=_number(int, minimum=1), default=None,
                       help="with --dask: shards of the batch (default: the cluster's task threads, at most --batch)")  # fmt: skip
    train.add_argument(
        "--seed",
        type=_number(int, minimum=0),
        default=0,
        help="initial parameters and samples (default: %(default)s)",
    )
    train.add_argument("--out", default="fastrnn-model.npz", help="checkpoint path (default: %(default)s)")
    train.add_argument(
        "--plot", default="fastrnn-loss.png", help="loss-curve PNG; 'none': no picture (default: %(default)s)"
    )
    train.add_argument(
        "--sample-every",
        type=int,
        default=1000,
        help="print a sample every N steps; 0: never (default: %(default)s)",
    )
    train.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    train.add_argument("--save-every", type=_number(int, minimum=0), default=1000,
                       help="also write the checkpoint every N steps; 0: only at the end (default: %(default)s)")  # fmt: skip
    train.add_argument("--resume", metavar="CHECKPOINT", default=None,
                       help="continue the run that wrote CHECKPOINT (its settings, optimizer state and step count) up to --steps")  # fmt: skip

    sample_parser = sub.add_parser("sample", help="generate text from a checkpoint")
    sample_parser.add_argument("checkpoint")
    sample_parser.add_argument(
        "--chars",
        type=_number(int, minimum=0),
        default=300,
        help="characters to generate (default: %(default)s)",
    )
    sample_parser.add_argument("--temperature", type=_number(float, above=0), default=1.0,
                               help="below 1 sharpens, above 1 flattens; tiny values pick the likeliest character (default: %(default)s)")  # fmt: skip
    sample_parser.add_argument("--seed", type=_number(int, minimum=0), default=None)
    sample_parser.add_argument(
        "--prime", default="", help="text to start from (its characters must be in the model's vocabulary)"
    )
    sample_parser.add_argument("--top-k", type=_number(int, minimum=1), default=None,
                               help="draw from the K likeliest characters only (1: greedy)")  # fmt: skip
    sample_parser.add_argument("--top-p", type=_number(float, above=0), default=None,
                               help="in (0, 1]: draw from the smallest set of likeliest characters whose probability reaches P")  # fmt: skip
    sample_parser.add_argument("--stop", default=None,
                               help="a character that ends a sample (kept at its end), e.g. a full stop")  # fmt: skip
    sample_parser.add_argument("--num-samples", type=_number(int, minimum=1), default=1,
                               help="samples generated together, each printed after a header line (default: %(default)s)")  # fmt: skip
    sample_parser.add_argument("--backend", choices=("numba", "numpy"), default=None)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "demo"
    try:
        if command == "demo":
            return bench.demo(dtype=getattr(args, "dtype", "float64"))
        if command == "bench":
            return run_bench(args)
        if command == "tune":
            return run_tune(args)
        if command == "train":
            return run_train(args)
        return run_sample(args)
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one elsewhere
        print(f"fastrnn {command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as error:
        detail = f" ({error})" if str(error) else ""
        print(f"fastrnn {command}: error: not enough memory for these settings{detail}", file=sys.stderr)
        return 1
    except (ValueError, ImportError, OSError) as error:
        # User errors (TextError, CheckpointError, UsageError, a bad setting, a training run
        # that overflows its dtype: all ValueErrors), a backend that cannot be imported, a
        # file that cannot be read or written: one line, never a traceback.
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"fastrnn {command}: error: {message}", file=sys.stderr)
        return 1


def run_bench(args):
    if args.torch:
        return _run_torch_bench(args)
    if args.generation:
        bench.run_generation([np.dtype(d).type for d in _bench_dtypes(args)], repeat=args.repeat)
        return 0
    known = {size[0]: size for size in bench.BENCH_SIZES}
    names = [name.strip() for name in args.sizes.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise UsageError(
            f"--sizes: unknown size(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}"
        )
    dtypes = _bench_dtypes(args)
    if args.dask is not None:
        with _dask_client(args.dask, 600.0) as client:
            bench.run_distributed(client, [np.dtype(d).type for d in dtypes], repeat=args.repeat)
        return 0
    bench.run([known[name] for name in names], [np.dtype(d).type for d in dtypes], repeat=args.repeat)
    return 0


def _bench_dtypes(args):
    """``bench --dtypes``, checked: the dtype names."""
    dtypes = [name.strip() for name in args.dtypes.split(",") if name.strip()]
    if not dtypes or any(d not in ("float64", "float32") for d in dtypes):
        raise UsageError(f"--dtypes: expected float64 and/or float32, got {args.dtypes!r}")
    return dtypes


def _run_torch_bench(args):
    default_sizes = ",".join(size[0] for size in bench.BENCH_SIZES)
    names = list(bench.TORCH_CASES) if args.sizes in (default_sizes, "all") else [
        name.strip() for name in args.sizes.split(",") if name.strip()
    ]  # fmt: skip
    unknown = [name for name in names if name not in bench.TORCH_CASES]
    if not names or unknown:
        raise UsageError(f"--sizes: unknown case(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(bench.TORCH_CASES)}")  # fmt: skip
    dtypes = _bench_dtypes(args)
    result = bench.run_torch(names, dtypes, rounds=args.rounds)
    return result if isinstance(result, int) else 0


def run_tune(args):
    """``tune``: time the candidate plans of each size, dtype and call; print them, the
    plan chosen and the built-in one; record the chosen plans (unless ``--dry-run``)."""
    file = wisdom.path()
    if args.show or args.forget:
        if args.forget:
            print(f"fastrnn tune: removed {wisdom.forget()} plans of this machine from {file}")
            return 0
        plans = wisdom.entries()
        print(f"fastrnn tune: {len(plans)} plans recorded for this machine ({wisdom.machine()}) in {file}")
        for key, plan in sorted(plans.items()):
            print(f"  {key}: {parallel.describe(parallel.Plan(*plan))}")
        return 0
    shapes = _tune_shapes(args)
    dtypes = _bench_dtypes(args)
    calls = [name.strip() for name in args.calls.split(",") if name.strip()]
    if not calls or any(call not in wisdom.CALLS for call in calls):
        raise UsageError(f"--calls: expected some of {', '.join(wisdom.CALLS)}, got {args.calls!r}")
    if args.onehot:
        calls = [call for call in calls if call != "rnn_forward"]  # rnn_forward takes dense inputs
    if file is None and not args.dry_run:
        raise UsageError(
            f"{wisdom.WISDOM_VARIABLE}=off: nothing to record in (use --dry-run to only measure)"
        )
    print(f"fastrnn tune: {wisdom.machine()}; {parallel.available_cores()} cores, budget "
          f"{parallel.default_budget()} threads; medians of {args.repeat} round{'s' if args.repeat != 1 else ''}")  # fmt: skip
    chosen = {}
    for name, shape in shapes:
        for dtype in dtypes:
            x, params = _tune_problem(shape, dtype, args)
            for call in calls:
                result = tuning.tune(
                    x, params, call=call, backend=args.backend, repeat=args.repeat, save=False
                )
                chosen[result.key] = result
                times = ", ".join(
                    f"{parallel.describe(p)} {s * 1e3:.3f} ms" for p, s in result.seconds.items()
                )
                verdict = "same" if result.plan == result.built_in else (
                    f"{parallel.describe(result.built_in)}; {result.speedup():.2f}x"
                )  # fmt: skip
                print(f"  {name} {dtype} {call}: {times} -> {parallel.describe(result.plan)} (built-in: {verdict})",
                      flush=True)  # fmt: skip
    if not args.dry_run:
        file = wisdom.record({key: tuning.as_record(result) for key, result in chosen.items()})
        print(f"fastrnn tune: recorded {len(chosen)} plans in {file}")
    return 0


def _tune_shapes(args):
    """``[(name, (n_x, n_a, n_y, m, T))]`` of ``tune --sizes`` and ``--shape``."""
    known = {size[0]: size[1:] for size in bench.BENCH_SIZES}
    names = [] if args.sizes.strip() == "none" else [n.strip() for n in args.sizes.split(",") if n.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"--sizes: unknown size(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    shapes = [(name, known[name]) for name in names]
    for text in args.shape:
        try:
            shape = tuple(check_int(int(n), "size", minimum=1) for n in text.split(","))
        except (TypeError, ValueError):
            shape = ()
        if len(shape) != 5:
            raise UsageError(f"--shape: expected five ints >= 1, N_X,N_A,N_Y,M,T, got {text!r}")
        shapes.append((text, shape))
    if not shapes:
        raise UsageError("nothing to tune: give --sizes or --shape")
    return shapes


def _tune_problem(shape, dtype, args):
    """Inputs (dense, or one-hot with ``--onehot``) and params of one size for ``tune``."""
    n_x, n_a, n_y, m, T = shape
    rng = np.random.default_rng(0)
    params = api.init_params(n_x, n_a, n_y, num_layers=args.layers, bidirectional=args.bidirectional,
                             seed=0, dtype=dtype)  # fmt: skip
    if args.onehot:
        return rng.integers(0, n_x, size=(m, T)), params
    return rng.standard_normal((n_x, m, T)).astype(dtype), params


def run_train(args):
    """``train``: check where results go, train (resuming if asked), save, summarise.

    Ctrl-C stops at the end of the current step: the checkpoint (with the optimizer's state,
    for ``--resume``) and the plot are written, one line says so, and the exit status is 130.
    A checkpoint is also written every ``--save-every`` steps.
    """
    if args.sample_every < 0:
        raise UsageError(f"--sample-every must be >= 0, got {args.sample_every}")
    # Where the results go is checked before the first step, not found wrong after the last.
    check_output_path(args.out, "--out")
    if args.plot.lower() != "none":
        check_output_path(args.plot, "--plot")
        if not args.plot.lower().endswith(".png"):
            raise UsageError(f"--plot must name a .png file (or be 'none'), got {args.plot}")
    text = read_text(args.text_file) if args.text_file else builtin_corpus()
    corpus = args.text_file or BUILTIN_CORPUS_NAME
    resume = RNN.load(args.resume, backend=args.backend) if args.resume else None
    messages = sys.stderr if args.json else sys.stdout  # keep stdout pure JSON with --json
    vocab_size = len(set(text))
    # What runs: the flags, or a resumed run's own settings.
    hidden, optimizer, lr, dtype, nonlinearity, layers = (
        (
            resume.n_a,
            resume.settings.get("optimizer"),
            resume.settings.get("lr"),
            resume.dtype.name,
            resume.nonlinearity,
            resume.num_layers,
        )
        if resume
        else (args.hidden, args.optimizer, args.lr, args.dtype, args.nonlinearity, args.layers)
    )
    if args.shards is not None and args.dask is None:
        raise UsageError("--shards is for --dask runs")
    with _dask_client(args.dask, args.dask_timeout) as client:
        threads = describe_threads(args, resume, len(text), vocab_size, client)
        print(
            f"fastrnn train: {corpus}: {len(text)} characters, {vocab_size} distinct; "
            f"hidden {hidden}{f' x {layers} layers' if layers > 1 else ''} ({nonlinearity}), {optimizer} lr {lr}, {dtype}, backend {args.backend or 'automatic'}; {threads}"
            + (f"; resuming {args.resume} at step {resume.settings.get('steps_done')}" if resume else ""),
            file=messages,
        )
        with _stop_on_ctrl_c() as interrupted:
            run = _train_with_progress(args, text, resume, interrupted, messages, client)
    model = run.model
    model.settings["corpus"] = corpus
    _save(model, run.optimizer, args.out)
    plot = (
        None
        if args.plot.lower() == "none"
        else write_loss_plot(run.losses, math.log(vocab_size), args.plot, messages)
    )
    if run.stopped_early:
        print(f"fastrnn train: interrupted after step {run.steps_done}; checkpoint written to {args.out} "
              f"(continue with --resume {args.out})", file=sys.stderr)  # fmt: skip
        return 130
    summary = _summary(args, run, corpus, text, vocab_size, threads, plot)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"sample (temperature 0.8):\n{sample(model, 200, temperature=0.8, seed=args.seed)}\n")
    print(
        f"final loss {summary['final_loss']:.3f} nats per character (mean of the last {summary['mean_of_last']} steps), "
        f"uniform baseline ln({vocab_size}) = {summary['uniform_loss']:.3f}\n"
        f"{summary['steps']} steps of {summary['batch']} x {summary['seq_length']} characters in {run.seconds:.1f} s "
        f"(first step {summary['first_step_seconds']:.2f} s, compilation included); "
        f"{summary['chars_per_second']:,.0f} characters per second after it\n"
        f"checkpoint: {args.out}\n"
        f"loss curve: {plot or 'not written'}"
    )
    return 0


@contextlib.contextmanager
def _dask_client(address, timeout):
    """A Dask client for ``--dask`` (None without it): ``local:N`` starts a ``LocalCluster``
    of N worker processes of one thread each, closed on the way out; anything else is a
    running scheduler's address."""
    if address is None:
        yield None
        return
    try:
        import logging

        from distributed import Client, LocalCluster

        from . import distributed as fastrnn_distributed
    except ImportError as error:
        raise UsageError(f"--dask needs Dask: pip install 'fastrnn[distributed]' ({error})") from None
    with contextlib.ExitStack() as stack:
        if address.startswith("local:"):
            cluster = stack.enter_context(
                LocalCluster(n_workers=int(address.removeprefix("local:")), threads_per_worker=1, processes=True,
                             dashboard_address=None, silence_logs=logging.ERROR)
            )  # fmt: skip
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(address, timeout=min(timeout, 30)))
            except (OSError, ValueError) as error:
                raise UsageError(f"--dask {address}: no Dask scheduler answered there ({error})") from None
        try:
            yield client
        except fastrnn_distributed.ShardError as error:  # one line, as any other error of the run
            raise UsageError(str(error)) from None


@contextlib.contextmanager
def _stop_on_ctrl_c():
    """While training: the first Ctrl-C sets the event yielded (training stops after the
    current step); a second one interrupts at once, as Ctrl-C usually does."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield interrupted
        return

    def first_ctrl_c(signum, frame):
        interrupted.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first_ctrl_c)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _train_with_progress(args, text, resume, interrupted, messages, client=None):
    """``train_char_rnn`` with a progress bar, samples, periodic checkpoints and Ctrl-C."""
    from tqdm import tqdm

    total = args.steps
    done = int(resume.settings.get("steps_done", 0)) if resume else 0
    bar = tqdm(
        total=total,
        initial=min(done, total),
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.25,
    )
    first_step = {}

    def on_step(step, loss, run):
        if step == run.first_step:
            first_step["seconds"] = run.seconds  # includes compiling the kernels
        if step % 20 == 0 or step == total:
            bar.set_postfix(
                loss=f"{loss:.3f}",
                chars_per_s=f"{run.characters / max(run.seconds, 1e-9):,.0f}",
                refresh=False,
            )
        bar.update(1)
        if args.sample_every and step % args.sample_every == 0 and step < total:
            text_sample = sample(run.model, 160, temperature=0.8, seed=args.seed)
            bar.write(
                f"--- step {step}, loss {loss:.3f} per character ---\n{text_sample}\n---", file=messages
            )
        if args.save_every and step % args.save_every == 0 and step < total:
            _save(run.model, run.optimizer, args.out)
        return interrupted.is_set()

    try:
        run = train_char_rnn(
            text, hidden=args.hidden, seq_length=args.seq_length, batch=args.batch, steps=total, lr=args.lr,
            optimizer=args.optimizer, clip_norm=args.clip or None, dtype=np.dtype(args.dtype).type,
            backend=args.backend, seed=args.seed, callback=on_step, workers=args.workers, resume=resume,
            client=client, text_path=os.path.abspath(args.text_file) if args.text_file else None,
            shards=args.shards, timeout=args.dask_timeout, nonlinearity=args.nonlinearity, num_layers=args.layers,
        )  # fmt: skip
    finally:
        bar.close()
    run.first_step_seconds = first_step.get("seconds", 0.0)
    return run


def _save(model, optimizer, path):
    try:
        model.save(path, optimizer=optimizer)
    except OSError as error:
        raise UsageError(f"cannot write the checkpoint {path}: {error.strerror or error}") from None


def _summary(args, run, corpus, text, vocab_size, threads, plot):
    """The run's figures, as ``--json`` prints them."""
    tail = run.losses[-min(50, len(run.losses)) :]
    steady_seconds = run.seconds - run.first_step_seconds
    steady_chars = run.characters * (len(run.losses) - 1) / len(run.losses)
    return {
        "final_loss": float(np.mean(tail)),
        "mean_of_last": len(tail),
        "uniform_loss": math.log(vocab_size),
        "first_loss": run.losses[0],
        "steps": run.steps_done,
        "seconds": run.seconds,
        "first_step_seconds": run.first_step_seconds,
        "chars_per_second": steady_chars / steady_seconds if steady_seconds > 0 else None,
        "checkpoint": args.out,
        "loss_plot": plot,
        "corpus": corpus,
        "corpus_chars": len(text),
        "vocab_size": vocab_size,
        "batch": run.model.settings["batch"],
        "seq_length": run.model.settings["seq_length"],
        "dtype": run.model.dtype.name,
        "nonlinearity": run.model.nonlinearity,
        "layers": run.model.num_layers,
        "backend": args.backend or "automatic",
        "workers": "automatic" if args.workers is None else args.workers,
        "threads": threads,
        "dask": args.dask,
        "shards": run.trainer.n_shards if run.trainer is not None else None,
    }


def check_output_path(path, flag):
    """A UsageError unless a file can be written at ``path``: its folder exists and is
    writable, and ``path`` is not a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: the folder {folder} is not writable")


def describe_threads(args, resume, n_chars, vocab_size, client=None):
    """How each training step will run, e.g. ``'2 shards x 1 BLAS thread (2 cores)'``."""
    if resume:
        batch, seq_length, hidden = resume.settings["batch"], resume.settings["seq_length"], resume.n_a
    else:
        batch, seq_length = fit_batch_shape(n_chars, args.batch, args.seq_length)
        hidden = args.hidden
    if client is not None:
        task_threads = client.nthreads()
        return (
            f"Dask {args.dask}: {len(task_threads)} workers, {sum(task_threads.values())} task threads, "
            f"{args.shards or default_shards(client, batch)} shards of the batch"
        )
    backend = backends.resolve(args.backend).NAME
    # n_x = 0: training reads one-hot inputs, whose input layer is a lookup.
    dims = Dims(vocab_size, hidden, vocab_size, resume.dtype if resume else np.dtype(args.dtype),
                resume.num_layers if resume else args.layers)  # fmt: skip
    run = engine.plan_sizes(args.workers, seq_length, batch, 0, dims, None, backend, "loss_and_grads")
    return f"{parallel.describe(run)} ({parallel.available_cores()} cores)"


def write_loss_plot(losses, uniform, path, messages):
    """A PNG of the per-character loss per step; None (and a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "loss curve not written: matplotlib is not installed (pip install 'fastrnn[plot]')", file=messages
        )
        return None
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.plot(np.arange(1, len(losses) + 1), losses, linewidth=0.8, label="training loss")
    axes.axhline(
        uniform, color="grey", linestyle="--", linewidth=1, label=f"uniform baseline ln(V) = {uniform:.2f}"
    )
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per character)")
    axes.set_title("fastrnn train")
    axes.set_ylim(bottom=0)
    axes.legend()
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as error:
        raise UsageError(f"cannot write the loss curve {path}: {error.strerror or error}") from None
    finally:
        plt.close(figure)
    return path


def run_sample(args):
    if args.chars < 0:
        raise UsageError(f"--chars must be >= 0, got {args.chars}")
    model = RNN.load(args.checkpoint, backend=args.backend)
    if model.vocab is None:
        raise UsageError(f"{args.checkpoint}: this model has no vocabulary (it was not trained on text)")
    unknown = sorted(set(args.prime) - set(model.vocab))
    if unknown:
        raise UsageError(f"--prime has characters the model never saw: {''.join(unknown)!r}")
    if args.top_p is not None and args.top_p > 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.stop is not None and (len(args.stop) != 1 or args.stop not in model.vocab):
        raise UsageError(f"--stop must be one character of the model's vocabulary, got {args.stop!r}")
    texts = sample(
        model, args.chars, prime=args.prime, temperature=args.temperature, seed=args.seed, top_k=args.top_k,
        top_p=args.top_p, stop=args.stop, n_samples=args.num_samples,
    )  # fmt: skip
    if args.num_samples == 1:
        print(texts)
        return 0
    for number, text in enumerate(texts, 1):
        print(f"--- sample {number} of {args.num_samples} ---\n{text}")
    return 0
