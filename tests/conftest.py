"""Shared helpers for the test suite.

Both backends are always tested: the Numba backend is a declared dependency, so a test
environment without it is a broken install and its tests fail rather than skip.
"""

import os

import numpy as np
import pytest
from hypothesis import settings

from fastrnn.bench import make_problem, max_relative_difference  # noqa: F401  (make_problem: re-exported for the tests)

# In CI (CI=true, as .ci/run is run there) the property tests draw the same examples on every
# run, so that a failure there can be reproduced; elsewhere each run explores new ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")

BACKENDS = ("numpy", "numba")
DTYPES = (np.float64, np.float32)
# docs/contract.rst: results of the two backends agree to 1e-10 relative in float64, 1e-4 in float32.
AGREEMENT = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def relative_error(actual, expected):
    """``max|actual - expected| / max|expected|``: the error relative to the array's scale.

    Elementwise relative errors are meaningless for entries that happen to be near zero
    (a gradient entry of 1e-12 in an array whose entries are of order 1); this measure is
    the one the contract's tolerances are stated in.
    """
    assert np.shape(actual) == np.shape(expected), (np.shape(actual), np.shape(expected))
    return max_relative_difference(actual, expected)


def assert_agree(actual, expected, dtype, what=""):
    tolerance = AGREEMENT[np.dtype(dtype)]
    error = relative_error(actual, expected)
    assert error <= tolerance, f"{what}: relative difference {error:.2e} > {tolerance:.0e}"


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param
