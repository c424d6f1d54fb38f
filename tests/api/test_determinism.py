"""Bitwise determinism across processes (docs/contract.rst): the same call, shape, dtype and
``workers`` give the same bits in every process, on both backends, dense and packed."""

import helpers

_SCRIPT = """
import hashlib
import numpy as np
import fastrnn
from fastrnn.problems import make_problem

digest = hashlib.sha256()
def add(*arrays):
    for array in arrays:
        digest.update(np.ascontiguousarray(np.asarray(array)).tobytes())

for backend in ("numpy", "numba"):
    for dtype in (np.float64, np.float32):
        for shape, seed, workers in (((16, 64, 16, 8, 40), 120, None), ((16, 32, 16, 9, 20), 306, 3)):
            x, a0, y, params = make_problem(*shape, dtype=dtype, seed=seed)
            loss, grads = fastrnn.loss_and_grads(x, a0, y, params, backend=backend, workers=workers)
            add(np.float64(loss), *(grads[key] for key in sorted(grads)))
        network = fastrnn.init_params(16, 32, 16, num_layers=2, bidirectional=True, seed=307, dtype=dtype)
        lengths = np.random.default_rng(308).integers(1, 21, size=9)
        loss, grads = fastrnn.loss_and_grads(x, None, y, network, backend=backend, workers=2, lengths=lengths)
        add(np.float64(loss), *(grads[key] for key in sorted(grads)))
print(digest.hexdigest())
"""


def test_results_are_bitwise_identical_across_processes():
    digests = {helpers.digest_in_fresh_process(_SCRIPT) for _ in range(2)}
    assert len(digests) == 1 and len(digests.pop()) == 64
