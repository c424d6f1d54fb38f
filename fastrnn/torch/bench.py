"""One side of ``python -m fastrnn bench --torch``: a full PyTorch training step timed in
this process.

``python -m fastrnn.torch.bench IMPL CASE DTYPE`` times ``CASE`` (``problems.TORCH_CASES``,
kept there so that ``fastrnn.bench`` names them without importing PyTorch) with ``IMPL``
(``nn`` for ``torch.nn.RNN``, ``fastrnn`` for ``fastrnn.torch.RNN``) and prints one JSON
line.  A step is the RNN, an ``nn.Linear`` output layer, cross-entropy and the backward
pass (the optimizer step is left out, the same on both sides); ``inference`` is the RNN and
the output layer under ``torch.no_grad()`` in ``eval()`` mode.  Both sides start from the
same weights (``torch.manual_seed(0)``) and use ``torch.set_num_threads(threads)``.
``fastrnn.bench.run_torch`` runs the sides in fresh processes, alternating, and compares
their medians.
"""

import json
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..problems import TORCH_CASES


def make_step(impl, case, dtype):
    """A closure running one step of ``case`` with ``impl``."""
    (n_x, n_a, n_y, m, T), num_layers, bidirectional, kind = TORCH_CASES[case]
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    if impl == "fastrnn":
        from . import RNN
    else:
        RNN = nn.RNN
    rnn = RNN(n_x, n_a, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype)
    linear = nn.Linear(n_a * (2 if bidirectional else 1), n_y, dtype=dtype)
    x = torch.randn(T, m, n_x, dtype=dtype)
    y = torch.randint(0, n_y, (T, m))
    lengths = torch.randint(1, T + 1, (m,), generator=torch.Generator().manual_seed(1))
    packed_labels = pack_padded_sequence(y, lengths, enforce_sorted=False).data

    if kind == "inference":
        rnn.eval()

        def step():
            with torch.no_grad():
                return linear(rnn(x)[0])

        return step

    def step():
        if kind == "packed":
            output, _ = rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
            loss = nn.functional.cross_entropy(linear(output.data), packed_labels)
        else:
            output, _ = rnn(x)
            loss = nn.functional.cross_entropy(linear(output).reshape(-1, n_y), y.reshape(-1))
        rnn.zero_grad()
        linear.zero_grad()
        loss.backward()

    return step


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    impl, case, dtype, threads = args[0], args[1], args[2], int(args[3]) if len(args) > 3 else 2
    torch.set_num_threads(threads)
    step = make_step(impl, case, dtype)
    step()  # compiles (or loads) the kernels
    step()
    budget, samples = 1.0, []
    start = time.perf_counter()
    while len(samples) < 7 or (time.perf_counter() - start < budget and len(samples) < 200):
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
    print(json.dumps({"impl": impl, "case": case, "dtype": dtype, "ms": statistics.median(samples) * 1e3}))


if __name__ == "__main__":
    main()
