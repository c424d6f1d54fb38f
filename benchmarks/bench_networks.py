"""asv benchmarks of the networks beyond the seed's: 2 stacked layers, a bidirectional
layer, and a variable-length batch (lengths uniform in 1..T), at the char-rnn size, as
``python -m fastrnn bench`` prints them (``common.network_problem``).

``track_*`` report ratios measured side by side in one process, steadier than two times on
a shared machine: a variable-length batch against the same batch at full length, and an
extra layer against the products it adds.
"""

import functools

import numpy as np

import fastrnn

from .common import (
    BACKENDS,
    DTYPES,
    NETWORK_SHAPE,
    median_ratio,
    network_flops,
    network_problem,
    require,
    require_backend,
)

KINDS = ["1 layer", "2 layers", "bidirectional", "variable length"]
SHAPE = NETWORK_SHAPE


def _step(kind, dtype, backend, **options):
    """A ``loss_and_grads`` closure for a network row, compiled (run once) before it is returned."""
    require_backend(backend)
    require(
        kind == "1 layer" or hasattr(fastrnn, "PackedCache"), "networks beyond one layer came with fastrnn 2"
    )
    x, y, params, lengths = network_problem(kind, *SHAPE, dtype=np.dtype(dtype).type)
    step = functools.partial(
        fastrnn.loss_and_grads, x, None, y, params, backend=backend, lengths=lengths, **options
    )
    step()
    return step


class NetworkStep:
    """A training step (forward, loss, BPTT) of each network kind, dtype and backend."""

    params = (KINDS, DTYPES, BACKENDS)
    param_names = ["network", "dtype", "backend"]
    timeout = 300

    def setup(self, network, dtype, backend):
        self.step = _step(network, dtype, backend)
        x, y, params, lengths = network_problem(network, *SHAPE, dtype=np.dtype(dtype).type)
        self.forward = functools.partial(
            fastrnn.rnn_forward, x, None, params, backend=backend, lengths=lengths
        )
        self.loss = functools.partial(fastrnn.loss, x, None, y, params, backend=backend, lengths=lengths)
        self.forward()
        self.loss()

    def time_loss_and_grads(self, network, dtype, backend):
        self.step()

    def time_rnn_forward(self, network, dtype, backend):
        self.forward()

    def time_loss(self, network, dtype, backend):
        self.loss()

    def peakmem_loss_and_grads(self, network, dtype, backend):
        self.step()


class VariableLengthCost:
    """The variable-length batch's step over the same batch at full length (Numba, default
    ``workers``): the fraction of its cost that the padding would have been.  Its real
    steps are ``track_real_steps`` of the full batch's."""

    params = DTYPES
    param_names = ["dtype"]
    unit = "ratio"
    timeout = 300

    def setup(self, dtype):
        self.variable = _step("variable length", dtype, "numba")
        self.full = _step("1 layer", dtype, "numba")

    def track_variable_over_full_length(self, dtype):
        return median_ratio(self.variable, self.full)

    def track_real_steps(self, dtype):
        lengths = network_problem("variable length", *SHAPE)[3]
        return float(np.sum(lengths) / (SHAPE[3] * SHAPE[4]))


class ExtraLayerCost:
    """A 2-layer step's time over the 1-layer step's, divided by its products' ratio
    (``common.network_flops``): 1 when the extra layer costs its products and
    nothing more (Numba, default ``workers``)."""

    params = DTYPES
    param_names = ["dtype"]
    unit = "ratio"
    timeout = 300

    def setup(self, dtype):
        self.one = _step("1 layer", dtype, "numba")
        self.two = _step("2 layers", dtype, "numba")

    def track_time_over_products(self, dtype):
        products = network_flops("2 layers", *SHAPE) / network_flops("1 layer", *SHAPE)
        return median_ratio(self.two, self.one) / products
