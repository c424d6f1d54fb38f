"""Helpers of the test suite, in one module: problems, the contract's tolerances, gradient
checks against central differences, identical results, and results digested in a fresh
process.

Both backends are always tested: the Numba backend is a declared dependency, so a test
environment without it is a broken install and its tests fail rather than skip.
"""

import hashlib
import os
import subprocess
import sys

import numpy as np

import fastrnn
from fastrnn.problems import make_problem, max_relative_difference  # noqa: F401  (re-exported)

BACKENDS = ("numpy", "numba")
DTYPES = (np.float64, np.float32)
# docs/contract.rst: results of the two backends agree to 1e-10 relative in float64, 1e-4 in float32.
AGREEMENT = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


# -- agreement -----------------------------------------------------------------------------


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


# -- identical results ---------------------------------------------------------------------


def copy_results(result):
    """A training step's ``(loss, grads[, state])`` copied (a workspace's views are
    overwritten by its next use)."""
    loss, grads, *state = result
    return (loss, {key: value.copy() for key, value in grads.items()}, *[s.copy() for s in state])


def assert_identical(result, expected, what):
    """Two training steps' ``(loss, grads[, state])``, bitwise the same."""
    assert result[0] == expected[0], what
    assert result[1].keys() == expected[1].keys(), what
    for key in expected[1]:
        np.testing.assert_array_equal(result[1][key], expected[1][key], err_msg=f"{what}: {key}")
    for got, want in zip(result[2:], expected[2:]):
        np.testing.assert_array_equal(got, want, err_msg=f"{what}: state")


def digest(*arrays):
    """The SHA-256 of arrays (and scalars) in order: their dtypes, shapes and bytes."""
    sha = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(np.asarray(array))
        sha.update(f"{array.dtype}{array.shape}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def digest_in_fresh_process(script, env=None, timeout=600):
    """Run ``script`` (Python that prints one digest) in a new interpreter; its output."""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# -- central differences -------------------------------------------------------------------

# The error measure is ``||numeric - analytic|| / (||numeric|| + ||analytic||)`` (the CS231n
# relative error over the whole array, so that entries that happen to be near zero do not
# dominate); the bound: below 1e-6.  With step h = 1e-5 the truncation error is O(h**2) ~
# 1e-10 and the rounding error ~ eps * |L| / h ~ 1e-10.
STEP = 1e-5
BOUND = 1e-6


def numeric_gradient(f, array):
    """Central differences of the scalar ``f()`` with respect to every entry of ``array``,
    which ``f`` reads (perturbed in place, restored after)."""
    grad = np.empty_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + STEP
        plus = f()
        array[index] = saved - STEP
        minus = f()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * STEP)
    return grad


def check(numeric, analytic, what):
    """``analytic`` against ``numeric`` within ``BOUND``, and not zero."""
    error = np.linalg.norm(numeric - analytic) / max(
        np.linalg.norm(numeric) + np.linalg.norm(analytic), 1e-300
    )
    assert error < BOUND, f"{what}: relative error {error:.1e}"
    assert np.linalg.norm(analytic) > 0, f"{what}: a zero gradient checks nothing"


def check_hidden_layer(objective, params, grads, inputs):
    """Check dW_ax, dW_aa, db_a and the gradient of each input (``{grad key: array}``)."""
    for name in ("W_ax", "W_aa", "b_a"):
        check(numeric_gradient(objective, params[name]), grads["d" + name], "d" + name)
    for key, array in inputs.items():
        check(numeric_gradient(objective, array), grads[key], key)


# -- networks ------------------------------------------------------------------------------


def draw_lengths(kind, m, T, rng):
    """Lengths of ``kind``: None (full), ragged and unsorted, all 1, or all T (given)."""
    if kind == "full":
        return None
    if kind == "all one":
        return np.ones(m, dtype=int)
    if kind == "all T":
        return np.full(m, T)
    lengths = rng.integers(1, T + 1, size=m)
    lengths[0] = T  # the longest first once, never sorted otherwise
    return rng.permutation(lengths)


def random_network(n_x, n_a, n_y, m, T, *, num_layers, bidirectional, lengths_kind="ragged",
                   labels="step", dtype=np.float64, seed=0):  # fmt: skip
    """A network's problem: params (biases drawn too), x, x_index, a0 (num_layers * D,
    n_a, m), y (per step, or per sequence with ``labels="sequence"``) and lengths."""
    rng = np.random.default_rng(seed)
    params = fastrnn.init_params(
        n_x, n_a, n_y, num_layers=num_layers, bidirectional=bidirectional, seed=seed, dtype=dtype
    )
    for name, value in params.items():
        if name.startswith("b"):
            value[:] = rng.normal(scale=0.3, size=value.shape)
    D = 2 if bidirectional else 1
    x = rng.normal(size=(n_x, m, T)).astype(dtype)
    x_index = rng.integers(0, n_x, size=(m, T))
    a0 = rng.normal(scale=0.5, size=(num_layers * D, n_a, m)).astype(dtype)
    y = rng.integers(0, n_y, size=(m, T) if labels == "step" else m)
    return params, x, x_index, a0, y, draw_lengths(lengths_kind, m, T, rng)


def padding_of(lengths, m, T):
    """(m, T) mask of the padding steps."""
    if lengths is None:
        return np.zeros((m, T), dtype=bool)
    return np.arange(T)[None, :] >= np.asarray(lengths)[:, None]
