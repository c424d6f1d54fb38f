"""The Numba kernels' building blocks against NumPy: vectorised exp and tanh, small products."""

import numba
import numpy as np
import pytest

from fastrnn import packing
from fastrnn.backends import numba_kernels as kernels
from fastrnn.backends._jit import kernel


@kernel
def _apply_tanh(x, out):
    for i in range(x.size):
        out[i] = kernels.fast_tanh(x[i])


@kernel
def _apply_exp(x, out):
    for i in range(x.size):
        out[i] = kernels.exp_nonpositive(x[i])


@kernel
def _add_matmul(a, b, out, scratch):
    """``out += a @ b`` as the time loops run it: BLAS or loops by ``uses_blas``."""
    if kernels.uses_blas(a.shape[0], a.shape[1], b.shape[1], a.itemsize):
        kernels._add_blas_product(a, b, out, scratch)
    else:
        kernels._add_matmul_loops(a, b, out)


def ulps(actual, expected, dtype):
    """|actual - expected| in units of the last place of ``expected`` (rounded to dtype)."""
    expected_rounded = expected.astype(dtype)
    spacing = np.spacing(np.maximum(np.abs(expected_rounded), np.finfo(dtype).tiny)).astype(np.float64)
    return np.abs(actual.astype(np.float64) - expected) / spacing


def special_and_random(dtype, scale):
    rng = np.random.default_rng(60)
    special = [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        3e-4,
        4e-4,
        0.6249,
        0.625,
        0.6251,
        1.0,
        7.9,
        8.0,
        9.010913,
        9.010914,
        19.0,
        19.07,
        20.0,
        50.0,
        710.0,
    ]
    values = np.concatenate(
        [special, np.negative(special), rng.standard_normal(100_000) * scale, rng.uniform(-1, 1, 10_000)]
    )
    return values.astype(dtype)


@pytest.mark.parametrize(
    "dtype, bound", [(np.float64, 2), (np.float32, 6)]
)  # float32: 4.1 ulp compiled (FMA), 5.5 as plain Python
def test_tanh_within_a_few_ulp(dtype, bound):
    x = special_and_random(dtype, scale=4)
    out = np.empty_like(x)
    _apply_tanh(x, out)
    expected = np.tanh(x.astype(np.float64))
    assert ulps(out, expected, dtype).max() <= bound
    assert (np.abs(out) <= 1).all()
    np.testing.assert_array_equal(np.sign(out), np.sign(x))
    # Saturation is exact: where tanh rounds to +-1 in this dtype, so does fast_tanh.
    saturated = np.abs(expected.astype(dtype)) == 1
    assert saturated.any()
    np.testing.assert_array_equal(out[saturated], np.sign(x[saturated]))


@pytest.mark.parametrize(
    "dtype, bound", [(np.float64, 1), (np.float32, 2)]
)  # float32: 0.9 ulp compiled, 1.1 as plain Python
def test_exp_of_nonpositive_within_one_ulp(dtype, bound):
    x = -np.abs(special_and_random(dtype, scale=30))
    out = np.empty_like(x)
    _apply_exp(x, out)
    expected = np.exp(x.astype(np.float64))
    normal = expected >= np.finfo(dtype).tiny
    assert ulps(out[normal], expected[normal], dtype).max() <= bound
    # Subnormal and underflowing results: right to the absolute precision of the dtype.
    smallest_subnormal = np.finfo(dtype).smallest_subnormal
    assert np.abs(out[~normal] - expected[~normal]).max() <= smallest_subnormal * 2
    assert (out >= 0).all() and (out <= 1).all()


@pytest.mark.parametrize(
    "shape",
    [
        (1, 16, 16),
        (2, 3, 5),
        (3, 6, 7),
        (1, 15, 15),
        (1, 64, 64),
        (1, 91, 91),
        (4, 16, 16),
        (9, 4, 4),
        (8, 16, 16),
        (7, 64, 48),
    ],
    ids=str,
)
def test_small_products_both_paths(shape, dtype):
    # Loops at or below SMALL_MATVEC_FLOPS (one row), or SMALL_MATMUL_BYTES (multiply-adds
    # times the item size) and SMALL_MATMUL_ROWS, else BLAS.  k % 4 != 0 runs the loops'
    # remainder; (1, 91, 91), (9, 4, 4) (rows) and (7, 64, 48) (multiply-adds) run BLAS,
    # (8, 16, 16) loops in float32 and BLAS in float64.
    r, k, n = shape
    rng = np.random.default_rng(61)
    a, b, c = (rng.standard_normal(s).astype(dtype) for s in ((r, k), (k, n), (r, n)))
    out = c.copy()
    _add_matmul(a, b, out, np.full((r, n), np.nan, dtype=dtype))  # scratch: overwritten before use
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, c + a @ b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("m, n_a", [(1, 16), (2, 16), (3, 5), (8, 8), (8, 16), (12, 8), (3, 40)], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("relu", [None, True], ids=["tanh", "relu"])
def test_packed_direction_kernels_sum_as_the_dense_loops(m, n_a, reverse, relu, dtype):
    # Full-length rows: the packed direction kernels choose loops or BLAS by the dense time
    # loops' rule (uses_blas; (12, 8) and (3, 40) run BLAS, (8, 16) in float64), so bitwise
    # the same states, dz and db_a (the packed loops index whole arrays by row number, the
    # dense ones their views).  A reverse direction is the forward one over reversed time.
    T = 7
    rng = np.random.default_rng(62)
    W_aa = (rng.standard_normal((n_a, n_a)) / np.sqrt(n_a)).astype(dtype)
    W_aa_T = np.ascontiguousarray(W_aa.T)
    b_a = rng.standard_normal(n_a).astype(dtype)
    a0 = rng.standard_normal((m, n_a)).astype(dtype)
    projection, da = (rng.standard_normal((T, m, n_a)).astype(dtype) for _ in range(2))
    rows = packing.full_rows(T, m)
    order = slice(None, None, -1) if reverse else slice(None)

    H = projection.reshape(T * m, n_a).copy()
    kernels.direction_forward_in_place(
        W_aa_T, b_a, a0, H, rows.batch_sizes, rows.offsets, reverse, np.empty((m, n_a), dtype), relu
    )
    h = np.empty((T + 1, m, n_a), dtype)
    h[0], h[1:] = a0, projection[order]
    kernels.hidden_forward_in_place(W_aa_T, b_a, h, np.empty((m, n_a), dtype), relu)
    assert np.array_equal(H.reshape(T, m, n_a), h[1:][order])

    dz, da0, db_a = da.reshape(T * m, n_a).copy(), np.empty((m, n_a), dtype), np.empty(n_a, dtype)
    kernels.direction_backward_in_place(
        dz, H, a0, W_aa, rows.batch_sizes, rows.offsets, reverse, da0, db_a, np.empty((m, n_a), dtype), relu
    )
    dense_dz, dense_da0, dense_db_a = da[order].copy(), np.empty((m, n_a), dtype), np.empty(n_a, dtype)
    kernels.hidden_backward_in_place(
        dense_dz, h, W_aa, dense_da0, np.empty((n_a, n_a), dtype), dense_db_a, relu
    )
    assert np.array_equal(dz.reshape(T, m, n_a), dense_dz[order])
    assert np.array_equal(db_a, dense_db_a)
    # the dense loops' last product (into da0) is always BLAS's: equal to rounding
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(da0, dense_da0, rtol=tolerance, atol=tolerance)


def _variable_length_direction(dtype, seed):
    """One direction over 12 sequences of lengths 1..9: steps of more than
    SMALL_MATMUL_ROWS rows (BLAS) and of fewer (loops, uses_blas), and in reverse, steps
    where some sequences start from a0.  ``(rows, W_aa, b_a (n_a,), a0, projection, dH)``."""
    n_a, lengths = 6, np.array([9, 9, 8, 7, 7, 5, 4, 4, 3, 2, 1, 1])
    m = lengths.size
    batch_sizes = np.array([np.count_nonzero(lengths > t) for t in range(lengths.max())], dtype=np.intp)
    rng = np.random.default_rng(seed)
    W_aa = (rng.standard_normal((n_a, n_a)) / np.sqrt(n_a)).astype(dtype)
    b_a = rng.standard_normal(n_a).astype(dtype)
    a0 = rng.standard_normal((m, n_a)).astype(dtype)
    projection, dH = (rng.standard_normal((lengths.sum(), n_a)).astype(dtype) for _ in range(2))
    return packing.rows_of_batch_sizes(batch_sizes, m), W_aa, b_a, a0, projection, dH


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_packed_direction_kernels_over_variable_lengths(reverse, dtype):
    # Every row offset of add_matmul_rows_into's calls (_variable_length_direction),
    # against the NumPy reference.
    from fastrnn.backends import numpy_backend

    rows, W_aa, b_a, a0, projection, dH = _variable_length_direction(dtype, 63)
    m, n_a = a0.shape
    arguments = (rows.batch_sizes, rows.offsets, reverse)

    H = projection.copy()
    kernels.direction_forward_in_place(
        np.ascontiguousarray(W_aa.T), b_a, a0, H, *arguments, np.empty((m, n_a), dtype), None
    )
    expected_H = numpy_backend.direction_forward(projection, a0, W_aa, b_a.reshape(-1, 1), *arguments, "tanh")
    dz, da0, db_a = dH.copy(), np.empty((m, n_a), dtype), np.empty(n_a, dtype)
    kernels.direction_backward_in_place(
        dz, H, a0, W_aa, *arguments, da0, db_a, np.empty((m, n_a), dtype), None
    )
    expected_dz, expected_da0, _, expected_db_a = numpy_backend.direction_backward(
        dH, expected_H, a0, W_aa, *arguments, "tanh"
    )
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    for actual, expected in ((H, expected_H), (dz, expected_dz), (da0, expected_da0), (db_a, expected_db_a)):
        np.testing.assert_allclose(actual, np.reshape(expected, actual.shape), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_direction_functions_by_steps_equal_the_kernels(reverse, relu, dtype, monkeypatch):
    # A door's add_matmul_into (here NumPy's) makes the recurrent products step by step
    # (numba_backend.STEP_PRODUCT_MULTIPLY_ADDS, forced): the same states and gradients as
    # the kernels', over variable lengths (steps where sequences start from a0 included).
    from fastrnn.backends import numba_backend

    def add_matmul_into(a, b, out):
        out += a @ b

    by_steps = numba_backend.Products(kernels.matmul_into, kernels.matmul_transposed_into, add_matmul_into)
    rows, W_aa, b_a, a0, projection, dH = _variable_length_direction(dtype, 64)
    b_a = b_a.reshape(-1, 1)
    nonlinearity = "relu" if relu else "tanh"
    arguments = (rows.batch_sizes, rows.offsets, reverse, nonlinearity)
    calls = []
    real_activation = kernels.activation_rows_in_place
    monkeypatch.setattr(
        kernels, "activation_rows_in_place", lambda *a: calls.append(1) or real_activation(*a)
    )

    results = []
    for products, threshold in ((numba_backend.KERNEL_PRODUCTS, None), (by_steps, 0)):
        if threshold is not None:
            monkeypatch.setattr(numba_backend, "STEP_PRODUCT_MULTIPLY_ADDS", {4: threshold, 8: threshold})
        H = numba_backend.direction_forward(projection.copy(), a0, W_aa, b_a, *arguments, products=products)
        grads = numba_backend.direction_backward(dH, H, a0, W_aa, *arguments, products=products)
        results.append([H, *grads])
    assert len(calls) == rows.batch_sizes.size  # one activation call per step, by steps only
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    for by_kernel, stepped in zip(*results):
        np.testing.assert_allclose(stepped, by_kernel, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_algorithms_as_plain_python(dtype):
    # The compiled kernels inline these functions; called from Python they run the same
    # arithmetic without compilation (what NUMBA_DISABLE_JIT runs, and what coverage sees).
    tanh = {np.float64: kernels._tanh_f64, np.float32: kernels._tanh_f32}[dtype]
    exp = {np.float64: kernels._exp_nonpositive_f64, np.float32: kernels._exp_nonpositive_f32}[dtype]
    values = special_and_random(dtype, scale=4)[::97]
    out = np.array([tanh(v) for v in values], dtype=dtype)
    assert ulps(out, np.tanh(values.astype(np.float64)), dtype).max() <= 6
    negative = -np.abs(values) * 10
    out = np.array([exp(v) for v in negative], dtype=dtype)
    expected = np.exp(negative.astype(np.float64))
    normal = expected >= np.finfo(dtype).tiny
    assert ulps(out[normal], expected[normal], dtype).max() <= 2


@pytest.mark.skipif(
    not numba.config.BOUNDSCHECK,
    reason="checks the NUMBA_BOUNDSCHECK=1 run of .ci/run; without it an out-of-range index is not caught by design",
)
def test_bounds_checking_is_live_in_the_boundscheck_run():
    # Bypass validation on purpose: a label equal to n_y reaches the kernel.
    logits = np.zeros((1, 1, 3))
    with pytest.raises(IndexError):
        _softmax_cross_entropy(logits, np.zeros(3), np.full((1, 1), 3, dtype=np.intp), np.zeros(3))


@kernel
def _softmax_cross_entropy(logits, b_y, labels, db_y):
    return kernels.softmax_cross_entropy_with_bias(logits, b_y, labels, db_y, logits.shape[1])


@kernel
def _softmax_blocks(logits, b_y):
    kernels.softmax_with_bias(logits, b_y)


@kernel
def _softmax_rows_one_by_one(logits, b_y):
    for r in range(logits.shape[0]):
        kernels._softmax_row(logits[r], b_y)


# Rows x classes around SOFTMAX_BLOCK_ENTRIES (2048): one block, several with a ragged
# last one, a block per row (n_y > 2048), and one row.
_SOFTMAX_SHAPES = [(100, 8), (700, 8), (31, 65), (97, 65), (3, 2500), (1, 3)]


@pytest.mark.parametrize("shape", _SOFTMAX_SHAPES, ids=str)
def test_softmax_blocks_equal_the_row_by_row_softmax(shape, dtype):
    # The blocked passes (the bias and maximum, one flat exp per block, the sums) compute
    # each row exactly as _softmax_row does on its own: bitwise the same.
    rng = np.random.default_rng(71)
    logits = (rng.standard_normal((1, *shape)) * 5).astype(dtype)
    b_y = rng.standard_normal(shape[1]).astype(dtype)
    blocked, one_by_one = logits.copy(), logits[0].copy()
    _softmax_blocks(blocked, b_y)
    _softmax_rows_one_by_one(one_by_one, b_y)
    np.testing.assert_array_equal(blocked[0], one_by_one)
    np.testing.assert_allclose(blocked[0].sum(axis=1), 1, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("shape", _SOFTMAX_SHAPES, ids=str)
def test_blocked_cross_entropy_against_numpy(shape, dtype):
    rng = np.random.default_rng(72)
    rows, n_y = shape
    logits = (rng.standard_normal((1, rows, n_y)) * 5).astype(dtype)
    b_y = rng.standard_normal(n_y).astype(dtype)
    labels = rng.integers(0, n_y, (1, rows))
    db_y = np.full(n_y, np.nan, dtype)
    z = logits[0].astype(np.float64) + b_y
    softmax = np.exp(z - z.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
    expected_loss = (log_sum - z[np.arange(rows), labels[0]]).sum() / rows
    expected_dlogits = softmax.copy()
    expected_dlogits[np.arange(rows), labels[0]] -= 1
    expected_dlogits /= rows

    loss = _softmax_cross_entropy(logits, b_y, labels, db_y)

    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, expected_loss, rtol=tolerance)
    np.testing.assert_allclose(logits[0], expected_dlogits, rtol=tolerance, atol=tolerance / rows)
    np.testing.assert_allclose(db_y, expected_dlogits.sum(axis=0), rtol=tolerance, atol=tolerance)


@kernel
def _transpose(a, out):
    kernels.transpose_into(a, out)


@pytest.mark.parametrize(
    "shape", [(1, 1), (16, 8), (5, 40), (37, 20), (20, 37), (32, 48)], ids=str
)  # tiles of 16, ragged edges
def test_transpose_into(shape, dtype):
    a = np.random.default_rng(62).standard_normal(shape).astype(dtype)
    out = np.full(shape[::-1], np.nan, dtype=dtype)
    _transpose(a, out)
    np.testing.assert_array_equal(out, a.T)
