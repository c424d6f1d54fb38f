"""Problems of the benchmark sizes: what the demo, ``bench``, asv and the tests run.

One place for the random parameters, inputs and labels that the measurements and the tests
build, so that a test and a benchmark of the same name run the same problem; and the
mapping of fastrnn's parameters onto PyTorch's modules, which both compare against.
"""

import numpy as np

from . import api

# (name, n_x, n_a, n_y, m, T), the sizes of the issue tracker and the asv suite.
BENCH_SIZES = (
    ("tiny", 8, 16, 8, 1, 100),
    ("small", 32, 64, 32, 16, 100),
    ("char-rnn", 65, 128, 65, 32, 64),
    ("char-rnn-256", 65, 128, 65, 256, 64),  # char-rnn with a batch of 256: room for threads
    ("large", 256, 512, 256, 64, 50),
)
DEMO_SIZES = BENCH_SIZES[:3]  # what ``python -m fastrnn`` (demo) runs: tiny, small, char-rnn

#: The PyTorch door's cases (``python -m fastrnn bench --torch``, ``fastrnn.torch.bench``):
#: name: ((n_x, n_a, n_y, m, T), num_layers, bidirectional, kind), kind in {"step",
#: "packed", "inference"}; packed lengths are uniform in 1..T.
TORCH_CASES = {
    "tiny": ((8, 16, 8, 1, 100), 1, False, "step"),
    "small": ((32, 64, 32, 16, 100), 1, False, "step"),
    "char-rnn": ((65, 128, 65, 32, 64), 1, False, "step"),
    "char-rnn packed": ((65, 128, 65, 32, 64), 1, False, "packed"),
    "char-rnn 2-layer bi": ((65, 128, 65, 32, 64), 2, True, "step"),
    "large": ((256, 512, 256, 64, 50), 1, False, "step"),
    "char-rnn inference": ((65, 128, 65, 32, 64), 1, False, "inference"),
}


def make_problem(n_x, n_a, n_y, m, T, *, dtype=np.float64, seed=0):
    """Random parameters, inputs and labels of one size (what the demo and bench run).

    Returns
    -------
    x : ndarray, shape (n_x, m, T)
    a0 : ndarray, shape (n_a, m)
    y : ndarray of int64, shape (m, T)
    params : dict
    """
    rng = np.random.default_rng(seed)
    params = api.init_params(n_x, n_a, n_y, seed=rng, dtype=dtype)
    x = rng.standard_normal((n_x, m, T)).astype(dtype)
    a0 = (0.1 * rng.standard_normal((n_a, m))).astype(dtype)
    y = rng.integers(0, n_y, size=(m, T))
    return x, a0, y, params


def max_relative_difference(a, b):
    """``max|a - b| / max|b|``: the difference relative to the reference's scale (the
    measure the contract's tolerances are stated in, docs/contract.rst), computed in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a - b))) / (scale if scale > 0 else 1.0)


def torch_modules(params, nonlinearity="tanh"):
    """``torch.nn.RNN`` and ``torch.nn.Linear`` holding fastrnn's ``params``, in the params'
    dtype, mapped by name (``weight_ih_l1_reverse = W_ax_l1_reverse``, ``weight_hh = W_aa``,
    ``bias_ih = b_a``, ``bias_hh = 0``; layers and directions read from the keys).  Needs
    torch."""
    import torch

    from .params import layer_key
    from .validation import check_params

    dims = check_params(params)[1]
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dims.dtype]
    D = dims.directions
    rnn = torch.nn.RNN(
        dims.n_x, dims.n_a, num_layers=dims.num_layers, nonlinearity=nonlinearity, bidirectional=D == 2
    ).to(dtype)
    linear = torch.nn.Linear(D * dims.n_a, dims.n_y).to(dtype)
    with torch.no_grad():
        for layer in range(dims.num_layers):
            for reverse in (False, True)[:D]:
                theirs = f"_l{layer}" + ("_reverse" if reverse else "")
                getattr(rnn, "weight_ih" + theirs).copy_(
                    torch.from_numpy(params[layer_key("W_ax", layer, reverse)])
                )
                getattr(rnn, "weight_hh" + theirs).copy_(
                    torch.from_numpy(params[layer_key("W_aa", layer, reverse)])
                )
                getattr(rnn, "bias_ih" + theirs).copy_(
                    torch.from_numpy(params[layer_key("b_a", layer, reverse)][:, 0])
                )
                getattr(rnn, "bias_hh" + theirs).zero_()
        linear.weight.copy_(torch.from_numpy(params["W_ya"]))
        linear.bias.copy_(torch.from_numpy(params["b_y"][:, 0]))
    return rnn, linear


#: The size of the network rows: char-rnn's (n_x, n_a, n_y, m, T).
NETWORK_SIZE = ("char-rnn", 65, 128, 65, 32, 64)


def network_problem(kind, n_x, n_a, n_y, m, T, *, dtype=np.float64, seed=0):
    """``make_problem``'s batch for a network row: ``(x, y, params, lengths)``.

    ``kind`` is "1 layer", "2 layers", "bidirectional" or "variable length" (one layer,
    lengths drawn uniformly from 1..T with ``seed``; padding holds NaN, never read)."""
    x, _, y, _ = make_problem(n_x, n_a, n_y, m, T, dtype=dtype, seed=seed)
    layers, bidirectional = {"2 layers": (2, False), "bidirectional": (1, True)}.get(kind, (1, False))
    params = api.init_params(
        n_x, n_a, n_y, num_layers=layers, bidirectional=bidirectional, seed=seed, dtype=dtype
    )
    lengths = None
    if kind == "variable length":
        lengths = np.random.default_rng(seed).integers(1, T + 1, size=m)
        x = x.copy()
        x[:, np.arange(T)[None, :] >= lengths[:, None]] = np.nan
    return x, y, params, lengths
