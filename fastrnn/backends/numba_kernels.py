"""Numba kernels: the time loops, the fused softmax/loss, and the elementwise maths they use.

Each kernel computes a step of the NumPy reference (``numpy_backend.py``); ``numba_backend.py``
allocates every array and calls these kernels, which only fill what they are given (no
allocation inside a time loop, no Python objects).  All arrays are C-contiguous in the
time-major layout described in ``numpy_backend``.  A kernel keeps its reference step's name
where it has the same contract; where it takes other arguments or returns nothing, the
name says how: ``_into`` (fills arrays it is given), ``_in_place`` (transforms an array
it is given), ``_with_bias`` (adds a bias the reference adds elsewhere).

==========================================  ==================================================
kernel                                      reference step(s) it computes
==========================================  ==================================================
``input_projection_into``                   ``input_projection`` (dense), into ``h[1:]``
``input_lookup_into``                       ``input_projection`` (one-hot), into ``h[1:]``
``hidden_forward_in_place``                 ``hidden_forward``, over the projection in ``h[1:]``
``labelled_states``                         ``labelled_states``
``output_logits_without_bias``              ``output_logits`` less ``b_y``
``softmax_with_bias``                       ``b_y`` of ``output_logits``, then ``softmax``
``softmax_cross_entropy_with_bias``         ``b_y`` of ``output_logits``, ``softmax_cross_entropy``,
                                            and ``db_y`` of ``output_backward``, in one pass
``output_backward_into``                    ``output_backward`` less ``db_y``
``hidden_backward_in_place``                ``hidden_backward``, turning ``da`` into ``dz``
``input_backward_into``                     ``input_backward`` (dense)
``input_lookup_backward_into``              ``input_backward`` (one-hot: ``dW_ax`` only)
``forward_kernel``                          ``forward``, plus a finiteness scan
``backward_kernel``                         ``backward`` (after the caller copies ``da``), plus a scan
``cell_forward_kernel``                     ``cell_forward``: its inputs copied and checked, then one
                                            step in the seed's layout (``copy_if_finite``)
``loss_and_grads_kernel`` (and ``_onehot``)  ``loss_and_grads``, plus a finiteness scan
``sequence_cross_entropy_with_bias``        ``b_y`` of ``output_logits``, then
                                            ``sequence_cross_entropy``
``sequence_losses_kernel`` (and ``_onehot``)  ``sequence_losses``, plus a finiteness scan
``checked_step_inputs_into`` (and           a training step's inputs from the seed's own
``checked_onehot_step_inputs_into``)        arrays: shapes, finiteness and ranges checked
                                            (``network_refusal``), then copied time-major
``sgd_update``, ``adagrad_update``, ...     the optimizer updates, same names and arguments
``packing_into``                            ``fastrnn.packing.make_packing`` (a counting sort)
``pack_rows_into``, ``unpack_rows_into``    ``pack_rows``, ``unpack_rows``
``direction_forward_in_place``              ``direction_forward``, over the projection in ``h``
``direction_backward_in_place``             ``direction_backward`` less ``dW_aa``
``previous_states_into``                    ``previous_states``
``packed_loss_and_grads_kernel`` (and       ``packed_loss_and_grads`` of one layer in one
``_onehot``)                                direction, plus a finiteness scan
``matmul_into``, ``matmul_transposed_into``  the products of the other networks' layers
``network_step_into``                       ``network_step``
``stream_step_index_kernel`` (and           ``stream_step``, the input checks first
``_dense_kernel``)
``draw_symbol``                             ``draw_symbol`` (``_rank_into``: ``ranked``)
``generate_kernel``                         ``generate``
==========================================  ==================================================

Memory that serves twice (the one place this is written down):

- ``h[1:]`` holds the input projection until the recurrence turns it into the states.
- ``logits`` is turned into ``dL/dlogits`` in place by the loss.
- ``dz_buffer`` (``numba_backend.dz_buffer_size``) holds the forward pass's scratch (the
  weights' C-contiguous transposes and ``rec``, ``forward_scratch``) and then ``dz``,
  which the backward pass writes only after the forward pass's last read of its scratch.
- ``da0`` is the scratch of the recurrent products BLAS computes in
  ``hidden_backward_in_place`` before it receives dL/da0.
- ``dx`` may be ``xs`` itself, when ``xs`` is a copy the caller made for the call
  (``xs_is_scratch``): ``input_backward_into`` writes ``dx`` after its last read of ``xs``.

Sections: 1. ``exp`` and ``tanh`` that vectorise; 2. small matrix products; 3. the steps
of a training step (table above); 4. the entry points ``numba_backend`` calls; 5. the
optimizer updates; 6. networks of several layers, two directions or variable lengths,
over packed rows; 7. one step at a time: streaming and generation.

Cache note: Numba keys a kernel's on-disk cache on the file that defines it, not on the
files it calls.  That is why the helpers live in this file: editing them invalidates the
cache of every kernel that inlines them.  After editing ``_jit.py``, delete
``fastrnn/backends/__pycache__``.
"""

import math

import numpy as np
from numba import types
from numba.extending import overload

from ._jit import FASTMATH, bits_as_float, inline_kernel, kernel

_OVERLOAD_OPTIONS = dict(
    inline="always",
    jit_options=dict(error_model="numpy", fastmath=set(FASTMATH)),
)

# =======================================================================================
# 1. exp and tanh that vectorise.
#
# Why not np.tanh / math.exp: PyPI's llvmlite has no SVML, so Numba calls libm one element
# at a time, an order of magnitude slower than NumPy's own SIMD loops.  The functions below
# are plain arithmetic that LLVM vectorises, as fast as NumPy's loops (docs/performance.md, "Measurements
# behind the code").  Accuracy against NumPy, tested in tests/test_numba_kernels.py: tanh
# within 2 ulp (float64) and 6 ulp (float32), exp within 1 and 2 ulp.  Each function is
# plain Python, which runs as such under NUMBA_DISABLE_JIT=1, with compiled implementations
# chosen by argument type through numba.extending.overload.
# =======================================================================================

# exp(x) for x <= 0: x = n*ln2 + r with |r| <= ln2/2, exp(x) = exp(r) * 2**n.  The caller
# guarantees x <= 0 (softmax after subtracting the row maximum, tanh with -2|x|), so the
# result is in [0, 1] and never overflows.  ln2 is split in a short high part (so that
# n * LN2_HI is exact) and a correction (Cephes).  2**n is built from exponent bits, in two
# halves so that subnormal results (n < -1022) come out right.

_LOG2E = 1.4426950408889634
_F64_LN2_HI = 6.93145751953125e-1
_F64_LN2_LO = 1.42860682030941723212e-6
_F64_EXP_MIN = -745.2  # exp(x) rounds to 0 below this
# Taylor coefficients 1/k!, k = 13..0: error below 5e-18 on |r| <= ln2/2.
_F64_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(13, -1, -1))

_F32_LOG2E = np.float32(_LOG2E)
_F32_LN2_HI = np.float32(0.693359375)
_F32_LN2_LO = np.float32(-2.12194440e-4)
_F32_EXP_MIN = np.float32(-104.0)
_F32_HALF = np.float32(0.5)
_F32_EXP_TAYLOR = tuple(np.float32(1.0 / math.factorial(k)) for k in range(7, -1, -1))


def exp_nonpositive(x):
    """``exp(x)`` for ``x <= 0``.  Kernels get the compiled overload below; called from
    Python (as under ``NUMBA_DISABLE_JIT=1``) it runs the same arithmetic."""
    return _exp_nonpositive_f32(x) if isinstance(x, np.float32) else _exp_nonpositive_f64(x)


def _exp_nonpositive_f64(x):
    x = max(x, _F64_EXP_MIN)
    n = np.floor(x * _LOG2E + 0.5)
    r = (x - n * _F64_LN2_HI) - n * _F64_LN2_LO
    p = _F64_EXP_TAYLOR[0]
    for c in _F64_EXP_TAYLOR[1:]:
        p = p * r + c
    n_int = np.int64(n)
    n_half = n_int >> 1
    scale_1 = bits_as_float((n_half + 1023) << 52)
    scale_2 = bits_as_float((n_int - n_half + 1023) << 52)
    return p * scale_1 * scale_2


def _exp_nonpositive_f32(x):
    x = max(x, _F32_EXP_MIN)
    n = np.floor(x * _F32_LOG2E + _F32_HALF)
    r = (x - n * _F32_LN2_HI) - n * _F32_LN2_LO
    p = _F32_EXP_TAYLOR[0]
    for c in _F32_EXP_TAYLOR[1:]:
        p = p * r + c
    n_int = np.int32(n)
    n_half = np.int32(n_int >> 1)
    # Numba widens int32 arithmetic to int64: cast back so that the bits are a float32's.
    scale_1 = bits_as_float(np.int32((n_half + 127) << 23))
    scale_2 = bits_as_float(np.int32((n_int - n_half + 127) << 23))
    return p * scale_1 * scale_2


@overload(exp_nonpositive, **_OVERLOAD_OPTIONS)
def _overload_exp_nonpositive(x):
    if x == types.float64:
        return _exp_nonpositive_f64
    if x == types.float32:
        return _exp_nonpositive_f32
    return None


# tanh.  float64 (Cephes): a rational approximation for |x| < 0.625, where 1 - exp(-2|x|)
# would cancel; (1 - e) / (1 + e) with e = exp(-2|x|) elsewhere.  Both are computed and one
# is selected, so that the loop stays branch-free and vectorises.  float32 (Eigen, as used
# by TensorFlow): a [13/6] rational approximation on x clamped to +-7.905, and exactly +-1
# from |x| = 9.0109, where float32 tanh rounds to +-1.

_F64_TANH_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_F64_TANH_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)

_F32_TANH_CLAMP = np.float32(7.90531110763549805)
_F32_TANH_TINY = np.float32(0.0004)  # below this tanh(x) == x in float32
_F32_TANH_SATURATED = np.float32(9.010914)  # from here tanh(x) rounds to +-1 in float32
_F32_ONE = np.float32(1.0)
_F32_TANH_ALPHA = tuple(  # numerator, odd powers x**13 .. x**1
    np.float32(c)
    for c in (
        -2.76076847742355e-16,
        2.00018790482477e-13,
        -8.60467152213735e-11,
        5.12229709037114e-08,
        1.48572235717979e-05,
        6.37261928875436e-04,
        4.89352455891786e-03,
    )
)
_F32_TANH_BETA = tuple(  # denominator, even powers x**6 .. x**0
    np.float32(c)
    for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)
)


def fast_tanh(x):
    """``tanh(x)``.  Kernels get the compiled overload below; called from Python (as under
    ``NUMBA_DISABLE_JIT=1``) it runs the same arithmetic."""
    return _tanh_f32(x) if isinstance(x, np.float32) else _tanh_f64(x)


def _tanh_f64(x):
    abs_x = abs(x)
    z = x * x
    p0, p1, p2 = _F64_TANH_P
    q0, q1, q2 = _F64_TANH_Q
    near_zero = x + x * z * (((p0 * z + p1) * z + p2) / (((z + q0) * z + q1) * z + q2))
    e = exp_nonpositive(-2.0 * abs_x)
    far = (1.0 - e) / (1.0 + e)
    far = far if x >= 0.0 else -far
    return near_zero if abs_x < 0.625 else far


def _tanh_f32(x):
    clamped = min(max(x, -_F32_TANH_CLAMP), _F32_TANH_CLAMP)
    x2 = clamped * clamped
    p = _F32_TANH_ALPHA[0]
    for c in _F32_TANH_ALPHA[1:]:
        p = p * x2 + c
    q = _F32_TANH_BETA[0]
    for c in _F32_TANH_BETA[1:]:
        q = q * x2 + c
    ratio = clamped * p / q
    abs_x = abs(x)
    if abs_x < _F32_TANH_TINY:
        return x
    # Past its clamp the rational stays at 0.99999976 (4 ulp below 1); from |x| = 9.0109
    # float32 tanh is exactly +-1, which saturated units must give (1 - a**2 = 0).
    saturated = _F32_ONE if x > 0 else -_F32_ONE
    return saturated if abs_x >= _F32_TANH_SATURATED else ratio


@overload(fast_tanh, **_OVERLOAD_OPTIONS)
def _overload_fast_tanh(x):
    if x == types.float64:
        return _tanh_f64
    if x == types.float32:
        return _tanh_f32
    return None


# =======================================================================================
# 2. Small matrix products.  The recurrent product h[t] @ W_aa.T is tiny at small sizes
# (16 x 16 for one sequence): there a BLAS call costs more than the arithmetic, so plain
# loops do it; above, BLAS wins (docs/performance.md, "Measurements behind the code").
# =======================================================================================

# r * k * n at or below which loops beat a BLAS call, for one row (a matrix-vector product,
# where BLAS's gemm is least efficient) and for several rows, up to SMALL_MATMUL_ROWS rows
# (the loops read all of b once per row; with narrow rows they do not even vectorise),
# times the item size for several rows: a vector of the loops holds twice the float32
# multiply-adds, BLAS's cost per call is the same, so float32 loops pay for twice as much
# work (2048 multiply-adds, float64 1024).  Crossovers measured inside a compiled loop
# (docs/performance.md, "Measurements behind the code").
SMALL_MATVEC_FLOPS = 8192
SMALL_MATMUL_BYTES = 8192
SMALL_MATMUL_ROWS = 8


@inline_kernel
def uses_blas(r, k, n, itemsize):
    """Whether a product (r, k) @ (k, n) of ``itemsize``-byte floats goes to BLAS
    (``_add_blas_product``) rather than loops (``_add_matmul_loops``): above
    ``SMALL_MATVEC_FLOPS`` multiply-adds for one row (a matrix-vector product, where BLAS's
    gemm is least efficient), above ``SMALL_MATMUL_BYTES`` multiply-adds times the item
    size or ``SMALL_MATMUL_ROWS`` rows for several.  One rule for the dense time loops, the
    cell and the packed recurrences, whose steps run fewer rows as sequences end: they
    choose at each step.

    The dense time loops decide it once, before the loop: with the choice inside it, every
    step's views of the state arrays were reference-counted (an atomic increment and
    decrement, with every vector register spilled and reloaded around the calls), about
    50 ns a step, half of a step at n_a = 16 (docs/performance.md, "Where a call's time
    goes").  The packed ones pass no views (``add_blas_rows_into``).
    """
    if r == 1:
        return k * n > SMALL_MATVEC_FLOPS
    return r > SMALL_MATMUL_ROWS or r * k * n * itemsize > SMALL_MATMUL_BYTES


@inline_kernel
def _add_blas_product(a, b, out, scratch):
    """``out += a @ b`` for a (r, k), b (k, n), out and scratch (r, n), C-contiguous rows,
    with BLAS writing ``a @ b`` into ``scratch``, then added."""
    np.dot(a, b, scratch)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] += scratch[i, j]


@inline_kernel
def _add_matmul_loops(a, b, out):
    """``out += a @ b`` in loops (a (r, k), b (k, n), out (r, n)): ``_add_matmul_rows_loops``
    over all the rows."""
    _add_matmul_rows_loops(a, 0, b, out, 0, a.shape[0])


@inline_kernel
def _add_matmul_rows_loops(a, a_row, b, out, out_row, r):
    """``out[out_row : out_row + r] += a[a_row : a_row + r] @ b`` in loops: they add the
    product straight into ``out`` (no scratch to zero, no pass to add it), four rows of
    ``b`` per pass over a row of ``out``: one load and store of ``out`` per four
    multiply-adds instead of per one, which nearly halves a (1 x 16) @ (16 x 16) product.
    The inner loops run along rows of ``b`` and ``out`` and vectorise.  They index the
    arrays rather than make views of their rows (``add_blas_rows_into`` says why)."""
    k = a.shape[1]
    n = b.shape[1]
    k_blocked = k - k % 4
    for i in range(r):
        a_i = a_row + i
        out_i = out_row + i
        for kk in range(0, k_blocked, 4):
            a0, a1, a2, a3 = a[a_i, kk], a[a_i, kk + 1], a[a_i, kk + 2], a[a_i, kk + 3]
            for j in range(n):
                out[out_i, j] += (a0 * b[kk, j] + a1 * b[kk + 1, j]) + (a2 * b[kk + 2, j] + a3 * b[kk + 3, j])
        for kk in range(k_blocked, k):
            a_ik = a[a_i, kk]
            for j in range(n):
                out[out_i, j] += a_ik * b[kk, j]


# =======================================================================================
# 3. The training step, one function per step of numpy_backend, same names.  Every BLAS
# call, the big products outside the loops included, goes through Numba's np.dot, that is
# SciPy's BLAS: NumPy ships a second OpenBLAS with its own thread pool, and alternating
# between the two pools slows a large training step down several times.
# =======================================================================================


@kernel  # called by the packed recurrences for a step's rare second product (see there)
def add_matmul_rows_into(a, a_row, b, out, out_row, n, scratch):
    """``out[out_row : out_row + n] += a[a_row : a_row + n] @ b``, by loops or BLAS as
    ``uses_blas`` chooses, the dense time loops' rule (``scratch``: n rows at least): the
    packed recurrences, whose steps run fewer rows as sequences end, choose at each step.

    The time loops write this choice out where they make a step's product: inlined as a
    function, its array arguments were reference-counted around the BLAS call (10.4
    against 6.5 us for 100 steps at n_a = 16)."""
    if uses_blas(n, b.shape[0], b.shape[1], b.itemsize):
        add_blas_rows_into(a, a_row, b, out, out_row, n, scratch)
    else:
        _add_matmul_rows_loops(a, a_row, b, out, out_row, n)


@kernel  # a call, out of the packed time loops: with BLAS in them, their views were reference-counted
def add_blas_rows_into(a, a_row, b, out, out_row, n, scratch):
    """``add_matmul_rows_into`` by BLAS.

    The time loops give whole arrays and row numbers, never views: a view made at each
    step and passed to a call is reference-counted (an atomic increment and decrement,
    every vector register spilled around them).  When the packed recurrences called the
    loops-or-BLAS choice on views, that cost about 110 ns a step, more than a step's work
    at n_a = 16 (``uses_blas`` tells the same story for the dense loops)."""
    _add_blas_product(a[a_row : a_row + n], b, out[out_row : out_row + n], scratch[:n])


@inline_kernel
def rows(a):
    """View a C-contiguous (T, m, n) block as its (T * m, n) matrix of rows."""
    return a.reshape((a.shape[0] * a.shape[1], a.shape[2]))


_TRANSPOSE_TILE = 16


@kernel  # called once per array, not per time step: compiled once, not inlined (_jit.py)
def transpose_into(a, out):
    """``out[:] = a.T``.  The kernels keep C-contiguous transposes of the weights they
    multiply from the right: OpenBLAS is slower on a transposed right operand at small sizes
    (twice as slow on small products).

    Tile by tile, so that the strided side stays in cache (five times faster than row by
    row on 512 x 512).  Full tiles run loops of the constant ``_TRANSPOSE_TILE``, which
    LLVM unrolls: 2.4 times faster than tiles cut at the edges with ``min`` (15 to 6 us
    at 128 x 128 float32); the rows and columns left over run after them."""
    r, c = a.shape
    r_full = r - r % _TRANSPOSE_TILE
    c_full = c - c % _TRANSPOSE_TILE
    for i0 in range(0, r_full, _TRANSPOSE_TILE):
        for j0 in range(0, c_full, _TRANSPOSE_TILE):
            for j in range(_TRANSPOSE_TILE):
                for i in range(_TRANSPOSE_TILE):
                    out[j0 + j, i0 + i] = a[i0 + i, j0 + j]
    for i in range(r_full):  # the columns left over, of the full rows
        for j in range(c_full, c):
            out[j, i] = a[i, j]
    for i in range(r_full, r):  # the rows left over
        for j in range(c):
            out[j, i] = a[i, j]


@kernel  # called once per array, not per time step: compiled once, not inlined (_jit.py)
def all_finite(a):
    """Whether every entry of the C-contiguous ``a`` is finite: an and-reduction of
    comparisons (false for inf and NaN), which vectorises."""
    flat = a.reshape(a.size)
    inf = flat.dtype.type(np.inf)
    finite = True
    for k in range(flat.size):
        finite &= abs(flat[k]) < inf
    return finite


@inline_kernel
def input_projection_into(xs, W_ax_T, h):
    """``h[1:] = xs @ W_ax.T``: the input projection of all steps, one product, written
    where ``hidden_forward`` turns it into hidden states in place."""
    np.dot(rows(xs), W_ax_T, rows(h[1:]))


@inline_kernel
def input_lookup_into(x_index, W_ax_T, h):
    """``h[t+1, i] = W_ax[:, x_index[t, i]]``: the projection of one-hot inputs, a lookup.

    ``x_index`` is checked by the caller to lie in ``[0, n_x)``: kernels do not check bounds.
    """
    T, m = x_index.shape
    n_a = W_ax_T.shape[1]
    for t in range(T):
        for i in range(m):
            column = W_ax_T[x_index[t, i]]
            a_t = h[t + 1, i]
            for j in range(n_a):
                a_t[j] = column[j]


#: The kernels' ``relu`` argument for each nonlinearity.  None is a type of its own in Numba, so
#: a kernel called with None (tanh) and one called with True (relu) are two compilations, and
#: Numba prunes ``if relu is None`` in each: a kernel holds, compiles and runs only its own
#: path (a run-time flag compiled both: the first call took 6.2 s cold instead of 3.9 s, and a
#: branch inside the time loop cost up to 5%).
NONLINEARITY = {"tanh": None, "relu": True}


@kernel  # called once per operation; compiled once per nonlinearity and shared by the entry points
def hidden_forward_in_place(W_aa_T, b_a, h, rec, relu):
    """The recurrence (``numpy_backend.hidden_forward``): ``h[1:]`` holds the input
    projection on entry and the hidden states a<1..T> on exit.  ``relu``: None for tanh,
    True for ``max(z, 0)`` (``numpy_backend.activation``; see ``NONLINEARITY`` above).

    Parameters
    ----------
    W_aa_T : ndarray, shape (n_a, n_a)
        ``W_aa.T``, contiguous, so that the small-size loops walk rows.
    b_a : ndarray, shape (n_a,)
    h : ndarray, shape (T + 1, m, n_a)
        ``h[0]`` holds a0.
    rec : ndarray, shape (m, n_a)
        Workspace for the recurrent term ``h[t-1] @ W_aa.T`` where BLAS computes it.
    """
    # The only sequential part: W_aa a<t-1> needs the previous step.  The product's kind is
    # chosen once, outside the loop (uses_blas says why).
    if uses_blas(h.shape[1], W_aa_T.shape[0], W_aa_T.shape[1], h.itemsize):
        for t in range(1, h.shape[0]):
            _add_blas_product(h[t - 1], W_aa_T, h[t], rec)
            activation_with_bias_at(h, t, b_a, relu)
    else:
        for t in range(1, h.shape[0]):
            _add_matmul_loops(h[t - 1], W_aa_T, h[t])
            activation_with_bias_at(h, t, b_a, relu)


@kernel  # called from both loops above: compiled once (inlining tanh twice into one
# function trips Numba's IR checks), and given h and t rather than a view of h[t] (a
# new view per step is reference-counted, uses_blas says what that costs)
def activation_with_bias_at(h, t, b_a, relu):
    """``h[t] = f(h[t] + b_a)``, ``f`` tanh (``relu`` None) or ``max(z, 0)`` (True)."""
    _activation_with_bias_in_place(h[t], b_a, relu)


@inline_kernel
def _activation_with_bias_in_place(a_t, b_a, relu):
    """``a_t = f(a_t + b_a)`` for rows ``a_t`` (m, n_a), as ``activation_with_bias_at``."""
    if relu is None:  # pruned at compile time (NONLINEARITY)
        _tanh_with_bias_in_place(a_t, b_a)
    else:
        _relu_with_bias_in_place(a_t, b_a)


@inline_kernel
def _tanh_with_bias_in_place(a_t, b_a):
    """``a_t = tanh(a_t + b_a)``: one step's activation (``numpy_backend.activation``)."""
    m, n_a = a_t.shape
    for i in range(m):
        for j in range(n_a):
            a_t[i, j] = fast_tanh(a_t[i, j] + b_a[j])


@inline_kernel
def _relu_with_bias_in_place(a_t, b_a):
    """``a_t = max(a_t + b_a, 0)``."""
    m, n_a = a_t.shape
    for i in range(m):
        for j in range(n_a):
            z = a_t[i, j] + b_a[j]
            a_t[i, j] = max(z, z - z)  # max(z, 0) in z's own dtype (z is finite)


@inline_kernel
def labelled_states(h, labels):
    """``numpy_backend.labelled_states``: ``h``, or ``h[-2:]`` for one label per sequence."""
    return h[h.shape[0] - 1 - labels.shape[0] :]


@inline_kernel
def output_logits_without_bias(h, W_ya_T, logits):
    """``logits = h[1:] @ W_ya.T`` for all steps, one product.  The bias ``b_y`` is added by
    the softmax functions, in the pass that finds each row's maximum."""
    np.dot(rows(h[1:]), W_ya_T, rows(logits))


# The softmax of many rows runs in blocks of rows, three passes over each block: add the
# bias and subtract each row's maximum, exp over the block's entries as one flat loop, then
# each row's sum.  The flat exp vectorises whatever the rows' length: rows of 8 classes
# alone run the loop's scalar remainder (float32: 4.0 ns an entry, against 0.44 over a
# long run; docs/performance.md).  A block of at most this many entries (8 KB in float32)
# stays in the L1 cache between its passes.
SOFTMAX_BLOCK_ENTRIES = 2048


@inline_kernel
def _shift_row_by_max_with_bias(z, b_y):
    """``z[:] = z + b_y - max(z + b_y)`` in place; returns that maximum."""
    n_y = z.shape[0]
    for j in range(n_y):
        z[j] += b_y[j]
    z_max = z[0]
    for j in range(1, n_y):
        z_max = max(z_max, z[j])
    for j in range(n_y):
        z[j] -= z_max
    return z_max


@inline_kernel
def _exp_nonpositive_in_place(entries):
    """``entries[:] = exp(entries)`` for a flat array of entries <= 0."""
    for i in range(entries.shape[0]):
        entries[i] = exp_nonpositive(entries[i])


@inline_kernel
def _normalise_row(z):
    """``z[:] = z / sum(z)`` in place; returns the sum."""
    sum_e = z[0]
    for j in range(1, z.shape[0]):
        sum_e += z[j]
    for j in range(z.shape[0]):
        z[j] /= sum_e
    return sum_e


@inline_kernel
def _softmax_row(z, b_y):
    """``z[:] = softmax_with_bias(z + b_y)`` in place; returns (max of z + b_y, sum of its exp).
    The three passes of a block of rows (``softmax_with_bias``), for one row."""
    z_max = _shift_row_by_max_with_bias(z, b_y)
    _exp_nonpositive_in_place(z)
    return z_max, _normalise_row(z)


@inline_kernel
def _softmax_block_rows(n_rows, n_y):
    """How many rows of ``n_y`` classes make a block (``SOFTMAX_BLOCK_ENTRIES``)."""
    return max(1, min(n_rows, SOFTMAX_BLOCK_ENTRIES // n_y))


@inline_kernel
def softmax_with_bias(logits, b_y):
    """``logits[t, i] = softmax_with_bias(logits[t, i] + b_y)`` over the classes, in place:
    ``_softmax_row`` on each row, its passes over blocks of rows."""
    logit_rows = rows(logits)
    n_rows, n_y = logit_rows.shape
    entries = logit_rows.reshape(n_rows * n_y)
    block = _softmax_block_rows(n_rows, n_y)
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        for r in range(start, stop):
            _shift_row_by_max_with_bias(logit_rows[r], b_y)
        _exp_nonpositive_in_place(entries[start * n_y : stop * n_y])
        for r in range(start, stop):
            _normalise_row(logit_rows[r])


# Taken as a log before it passes this, so that a product times one more sum (at most n_y)
# stays far below float64's 1.8e308.
_PRODUCT_OF_SUMS_LIMIT = 1e150


@inline_kernel
def softmax_cross_entropy_with_bias(logits, b_y, labels, db_y, batch_size):
    """Loss and ``dL/dlogits`` (``numpy_backend.softmax_cross_entropy``), in place.

    Parameters
    ----------
    logits : ndarray, shape (T, m, n_y)
        ``h[1:] @ W_ya.T`` without the bias; on exit ``dL/dlogits``,
        ``(softmax - onehot(labels)) / m``.
    b_y : ndarray, shape (n_y,)
    labels : ndarray of intp, shape (L, m), the rows of ``logits`` (L = T, or 1: ``labelled_states``)
        Checked by the caller to lie in ``[0, n_y)``: kernels do not check bounds.
    db_y : ndarray, shape (n_y,)
        Filled with ``dL/db_y``, the column sums of ``dL/dlogits``, in the same pass.
    batch_size : int
        The ``m`` of ``1/m``: ``logits.shape[1]``, or the whole batch's size for a shard.

    Returns
    -------
    float
        ``(1/m) sum (logsumexp(z) - z[label])`` over all rows, accumulated in float64.
        ``logsumexp(z) = max(z) + log(sum_e)``; the logs of the rows' ``sum_e`` (each in
        [1, n_y]) are summed as the log of their product, one libm ``log`` per few hundred
        rows instead of one per row.
    """
    m = batch_size
    inv_m = logits.dtype.type(1.0 / m)
    logit_rows = rows(logits)
    n_rows, n_y = logit_rows.shape
    entries = logit_rows.reshape(n_rows * n_y)
    label_rows = labels.reshape(labels.size)
    db_y[:] = 0
    loss = 0.0
    product_of_sums = 1.0
    block = _softmax_block_rows(n_rows, n_y)
    for start in range(0, n_rows, block):  # _softmax_row's passes over blocks of rows
        stop = min(start + block, n_rows)
        for r in range(start, stop):
            z = logit_rows[r]
            label = label_rows[r]
            label_logit = np.float64(z[label] + b_y[label])
            loss += np.float64(_shift_row_by_max_with_bias(z, b_y)) - label_logit
        _exp_nonpositive_in_place(entries[start * n_y : stop * n_y])
        for r in range(start, stop):
            z = logit_rows[r]
            product_of_sums *= np.float64(_normalise_row(z))
            if product_of_sums > _PRODUCT_OF_SUMS_LIMIT:
                loss += math.log(product_of_sums)
                product_of_sums = 1.0
            z[label_rows[r]] -= 1
            for j in range(n_y):
                z[j] *= inv_m
                db_y[j] += z[j]
    return (loss + math.log(product_of_sums)) / m


@inline_kernel
def sequence_cross_entropy_with_bias(logits, b_y, labels, losses):
    """``losses[i] = numpy_backend.sequence_cross_entropy(logits + b_y, labels)[i]``.

    ``logits`` (L, m, n_y), the labelled steps, is left holding the softmax (``_softmax_row``); ``losses`` (m,)
    is float64, and each row's ``logsumexp(z) - z[label]`` is added in float64.
    """
    T, m = labels.shape
    losses[:] = 0.0
    for t in range(T):
        for i in range(m):
            z = logits[t, i]
            label = labels[t, i]
            label_logit = np.float64(z[label] + b_y[label])
            z_max, sum_e = _softmax_row(z, b_y)
            losses[i] += np.float64(z_max) + math.log(np.float64(sum_e)) - label_logit


@inline_kernel
def output_backward_into(dlogits, h, W_ya, dW_ya, da):
    """``dW_ya = dlogits.T @ h[1:]`` and ``da = dlogits @ W_ya``, one product each
    (``numpy_backend.output_backward``; ``db_y`` came from ``softmax_cross_entropy``)."""
    np.dot(rows(dlogits).T, rows(h[1:]), dW_ya)
    np.dot(rows(dlogits), W_ya, rows(da))


@kernel  # as hidden_forward_in_place
def hidden_backward_in_place(dz, h, W_aa, da0, dW_aa, db_a, relu):
    """Backpropagation through time (``numpy_backend.hidden_backward``), in place; ``relu``
    as in ``hidden_forward_in_place`` (``numpy_backend.activation_derivative``).

    The reference's ``da_next = dz[t] @ W_aa`` (dL/da<t-1> through a<t>) is added straight
    into ``dz[t-1]``, which holds the outside ``da[t-1]`` until its own step: the same
    sum, one array fewer in the sequential loop.

    Parameters
    ----------
    dz : ndarray, shape (T, m, n_a)
        On entry ``da``, dL/da<t> from outside the recurrence; on exit dL/dz<t>, z<t>
        the argument of tanh at step t.
    h : ndarray, shape (T + 1, m, n_a)
        Hidden states from the forward pass; ``1 - h**2`` is tanh's derivative.
    W_aa : ndarray, shape (n_a, n_a)
    da0 : ndarray, shape (m, n_a)
        Filled with dL/da0 (and the scratch of the products BLAS computes before that).
    dW_aa : ndarray, shape (n_a, n_a)
        Filled with the gradient.
    db_a : ndarray, shape (n_a,)
        Filled with ``dL/db_a``, summed in the same pass as ``dz``.
    """
    db_a[:] = 0
    # Steps T-1 .. 1 pass dL/dz<t> on to dz[t-1]; step 0 to da0, below.  The product's kind
    # is chosen once, outside the loop (uses_blas says why).
    if uses_blas(dz.shape[1], W_aa.shape[0], W_aa.shape[1], dz.itemsize):
        for t in range(dz.shape[0] - 1, 0, -1):
            _activation_gradient_in_place(dz[t], h[t + 1], db_a, relu)
            _add_blas_product(dz[t], W_aa, dz[t - 1], da0)
    else:
        for t in range(dz.shape[0] - 1, 0, -1):
            _activation_gradient_in_place(dz[t], h[t + 1], db_a, relu)
            _add_matmul_loops(dz[t], W_aa, dz[t - 1])
    _activation_gradient_in_place(dz[0], h[1], db_a, relu)
    np.dot(dz[0], W_aa, da0)
    np.dot(rows(dz).T, rows(h[:-1]), dW_aa)


@inline_kernel
def _activation_gradient_in_place(dz_t, a_t, db_a, relu):
    """``dz_t = g * f'`` and ``db_a += dz_t`` (``relu`` as in ``activation_with_bias_at``)."""
    if relu is None:  # pruned at compile time (NONLINEARITY)
        _tanh_gradient_in_place(dz_t, a_t, db_a)
    else:
        _relu_gradient_in_place(dz_t, a_t, db_a)


@inline_kernel
def _tanh_gradient_in_place(dz_t, a_t, db_a):
    """``dz_t = g * (1 - a_t**2)`` for ``g = dz_t`` (da<t> + da_next), and ``db_a += dz_t``
    summed over the batch, in one pass (``numpy_backend.activation_derivative``)."""
    m, n_a = dz_t.shape
    for i in range(m):
        for j in range(n_a):
            g = dz_t[i, j]
            # g * (1 - a**2), written without a literal 1 so float32 stays float32
            dz_t[i, j] = g - g * (a_t[i, j] * a_t[i, j])
            db_a[j] += dz_t[i, j]


@inline_kernel
def _relu_gradient_in_place(dz_t, a_t, db_a):
    """``dz_t = g * (a_t > 0)``, and ``db_a += dz_t``."""
    m, n_a = dz_t.shape
    for i in range(m):
        for j in range(n_a):
            g = dz_t[i, j]
            dz_t[i, j] = g if a_t[i, j] > 0 else g - g  # g * (a > 0), in g's own dtype
            db_a[j] += dz_t[i, j]


@inline_kernel
def input_backward_into(dz, xs, W_ax, dx, dW_ax):
    """``dW_ax = dz.T @ xs`` and ``dx = dz @ W_ax``, one product each
    (``numpy_backend.input_backward``).  ``dx`` may be ``xs`` itself (a copy the caller
    owns): it is written last, after the only read of ``xs``."""
    np.dot(rows(dz).T, rows(xs), dW_ax)
    np.dot(rows(dz), W_ax, rows(dx))


@inline_kernel
def input_lookup_backward_into(dz, x_index, dW_ax_T, dW_ax):
    """``dW_ax`` for one-hot inputs: each row of ``dz`` added to the column its input
    selected (``numpy_backend.input_backward``), accumulated in the rows of ``dW_ax_T``
    (contiguous) and then transposed into ``dW_ax``."""
    T, m = x_index.shape
    n_a = dW_ax_T.shape[1]
    dW_ax_T[:] = 0
    for t in range(T):
        for i in range(m):
            row = dW_ax_T[x_index[t, i]]
            dz_ti = dz[t, i]
            for j in range(n_a):
                row[j] += dz_ti[j]
    transpose_into(dW_ax_T, dW_ax)


# =======================================================================================
# 4. Entry points called from numba_backend: each runs a whole public operation inside
# compiled code, over arrays the caller allocated.
# =======================================================================================


# The parameters and gradients come in the seed's shapes (biases (n, 1)).  Which arrays
# serve twice: the module's docstring.


@inline_kernel
def vector(b):
    """A (n, 1) bias (or its gradient) as a 1-D view."""
    return b.reshape(b.size)


@inline_kernel
def forward_scratch(buffer, W_ax, W_aa, W_ya, m):
    """``W_ax_T`` (n_x, n_a), ``W_aa_T`` (n_a, n_a), ``W_ya_T`` (n_a, n_y), filled with the
    weights' transposes, and ``rec`` (m, n_a), as consecutive views of the flat ``buffer``
    (``numba_backend.forward_scratch_size`` entries at least)."""
    n_a, n_x = W_ax.shape
    n_y = W_ya.shape[0]
    end_ax = n_x * n_a
    end_aa = end_ax + n_a * n_a
    end_ya = end_aa + n_a * n_y
    W_ax_T = buffer[:end_ax].reshape((n_x, n_a))
    W_aa_T = buffer[end_ax:end_aa].reshape((n_a, n_a))
    W_ya_T = buffer[end_aa:end_ya].reshape((n_a, n_y))
    rec = buffer[end_ya : end_ya + m * n_a].reshape((m, n_a))
    transpose_into(W_ax, W_ax_T)
    transpose_into(W_aa, W_aa_T)
    transpose_into(W_ya, W_ya_T)
    return W_ax_T, W_aa_T, W_ya_T, rec


@kernel
def forward_kernel(xs, W_ax, W_aa, b_a, W_ya, b_y, scratch, h, y_hat, relu):
    """Hidden states into ``h[1:]`` (``h[0] = a0`` on entry), softmax outputs into ``y_hat``.
    Returns whether both are finite.  ``relu``: ``NONLINEARITY[nonlinearity]``."""
    W_ax_T, W_aa_T, W_ya_T, rec = forward_scratch(scratch, W_ax, W_aa, W_ya, xs.shape[1])
    input_projection_into(xs, W_ax_T, h)
    hidden_forward_in_place(W_aa_T, vector(b_a), h, rec, relu)
    output_logits_without_bias(h, W_ya_T, y_hat)
    softmax_with_bias(y_hat, vector(b_y))
    return all_finite(h) and all_finite(y_hat)


@kernel
def backward_kernel(dz, xs, h, W_ax, W_aa, da0, dx, dW_ax, dW_aa, db_a, relu):
    """BPTT for an outside ``da`` (copied into ``dz`` by the caller).  Returns whether every
    gradient is finite."""
    hidden_backward_in_place(dz, h, W_aa, da0, dW_aa, vector(db_a), relu)
    input_backward_into(dz, xs, W_ax, dx, dW_ax)
    return all_finite(da0) and all_finite(dx) and all_finite(dW_ax) and all_finite(dW_aa) and all_finite(db_a)


@kernel  # called once per input array of a cell: compiled once per dtype, not inlined
def copy_if_finite(source, target):
    """``target[:] = source`` (C-contiguous, the same size), in the pass that checks the
    entries: returns whether all are finite (``all_finite``'s test)."""
    flat = source.reshape(source.size)
    flat_target = target.reshape(target.size)
    inf = flat.dtype.type(np.inf)
    finite = True
    for k in range(flat.size):
        value = flat[k]
        flat_target[k] = value
        finite &= abs(value) < inf
    return finite


@kernel
def cell_forward_kernel(inputs, copies, scratch, a_t, y_hat, relu):
    """``numpy_backend.cell_forward``: one time step in the seed's layout, its inputs copied
    and checked first.

    A cell runs each product once, so it multiplies by the weights as they are (``W @ x``,
    rows along the weights' rows) instead of transposing them as the time loops do.  BLAS
    then sums some products in another order than ``forward_kernel`` with T = 1: the two
    agree to rounding (last bits), not bitwise.

    Parameters
    ----------
    inputs : tuple of 7 ndarray
        ``W_ax``, ``W_aa``, ``b_a``, ``W_ya``, ``b_y``, ``x_t`` (n_x, m), ``a_prev`` (n_a, m),
        all 2-D and C-contiguous.
    copies : tuple of 7 ndarray
        Arrays of the inputs' shapes that receive copies of them (the cell cache's own).
    scratch : ndarray, flat, ``(n_a + n_y) * m`` entries at least
        The recurrent product ``W_aa @ a_prev`` (n_a, m), and the logits as rows (m, n_y),
        where the time loops' ``softmax_with_bias`` turns them into ``y_hat.T``.
    a_t : ndarray, shape (n_a, m)
    y_hat : ndarray, shape (n_y, m)

    Returns
    -------
    bad : int
        -1, or the index in ``inputs`` of the first array with an entry that is not finite:
        then nothing is computed (every input is scanned before any product reads it).
    finite : bool
        Whether ``a_t`` and ``y_hat`` are finite.
    """
    for index in range(len(inputs)):
        if not copy_if_finite(inputs[index], copies[index]):
            return index, False
    W_ax, W_aa, b_a, W_ya, b_y, x_t, a_prev = inputs
    n_a, m = a_t.shape
    n_y = y_hat.shape[0]
    rec = scratch[: n_a * m].reshape((n_a, m))
    logit_rows = scratch[n_a * m : (n_a + n_y) * m].reshape((1, m, n_y))
    np.dot(W_ax, x_t, a_t)
    # The recurrent product in loops below the time loops' crossover (uses_blas), where a
    # BLAS call costs more than the arithmetic.
    if uses_blas(m, n_a, n_a, a_t.itemsize):
        np.dot(W_aa, a_prev, rec)
    else:
        _zero(rec)
        _add_matmul_loops(a_prev.T, W_aa.T, rec.T)  # the time loops' product, on transposed views
    for j in range(n_a):  # f(W_ax x + W_aa a_prev + b_a), fused
        a_j = a_t[j]
        rec_j = rec[j]
        b_j = b_a[j, 0]
        if relu is None:  # pruned at compile time (NONLINEARITY)
            for i in range(m):
                a_j[i] = fast_tanh(a_j[i] + rec_j[i] + b_j)
        else:
            for i in range(m):
                v = a_j[i] + rec_j[i] + b_j
                a_j[i] = max(v, v - v)
    np.dot(a_t.T, W_ya.T, logit_rows[0])  # (m, n_y) rows: the softmax of the time loops
    softmax_with_bias(logit_rows, vector(b_y))
    transpose_into(logit_rows[0], y_hat)
    return -1, all_finite(a_t) and all_finite(y_hat)


@inline_kernel
def _after_the_input_layer(
    labels, batch_size, W_aa, b_a, W_ya, b_y, W_aa_T, W_ya_T, rec,
    h, logits, dz_buffer, da0, dW_aa, db_a, dW_ya, db_y, relu,
):  # fmt: skip
    """What a training step does between the input layer's forward and backward (which
    differ for dense and one-hot inputs): the recurrence, the output layer, the loss and
    BPTT.  ``h[1:]`` holds the input projection on entry.

    Returns
    -------
    loss : float
    dz : ndarray, shape (T, m, n_a)
        dL/dz, a view of ``dz_buffer`` (whose start held the forward scratch).
    """
    hidden_forward_in_place(W_aa_T, vector(b_a), h, rec, relu)
    top = labelled_states(h, labels)
    output_logits_without_bias(top, W_ya_T, logits)
    loss = softmax_cross_entropy_with_bias(logits, vector(b_y), labels, vector(db_y), batch_size)
    T, m, n_a = h[1:].shape
    dz = dz_buffer[: T * m * n_a].reshape((T, m, n_a))  # the forward scratch is dead from here
    unread = T - labels.shape[0]  # steps whose state no label reads (one label per sequence)
    dz[:unread] = 0
    output_backward_into(logits, top, W_ya, dW_ya, dz[unread:])
    hidden_backward_in_place(dz, h, W_aa, da0, dW_aa, vector(db_a), relu)
    return loss, dz


@inline_kernel
def _results_finite(loss, da0, dW_ax, dW_aa, db_a, dW_ya, db_y):
    """Whether the loss and these gradients are all finite (the caller adds ``dx``)."""
    return (
        math.isfinite(loss) and all_finite(da0) and all_finite(dW_ax) and all_finite(dW_aa)
        and all_finite(db_a) and all_finite(dW_ya) and all_finite(db_y)
    )  # fmt: skip


@kernel
def loss_and_grads_kernel(
    xs, labels, batch_size, W_ax, W_aa, b_a, W_ya, b_y,
    h, logits, dz_buffer, da0, dx, dW_ax, dW_aa, db_a, dW_ya, db_y, relu,
):  # fmt: skip
    """One training step on dense inputs: forward, loss and every gradient.

    ``batch_size`` is the ``m`` the loss is averaged over (``softmax_cross_entropy``).
    ``h[0]`` holds a0 on entry; every array after ``b_y`` is a workspace or an output,
    overwritten.  ``logits`` ends as ``dL/dlogits``; ``dz_buffer`` is flat (see
    ``numba_backend.dz_buffer_size``): the forward scratch, then ``dL/dz``.

    Returns
    -------
    loss : float
    finite : bool
        Whether the loss and every gradient are finite: a scan here costs a fraction of the
        NumPy calls the caller would need (finite inputs can still overflow in float32).
    """
    W_ax_T, W_aa_T, W_ya_T, rec = forward_scratch(dz_buffer, W_ax, W_aa, W_ya, xs.shape[1])
    input_projection_into(xs, W_ax_T, h)
    loss, dz = _after_the_input_layer(
        labels, batch_size, W_aa, b_a, W_ya, b_y, W_aa_T, W_ya_T, rec,
        h, logits, dz_buffer, da0, dW_aa, db_a, dW_ya, db_y, relu,
    )  # fmt: skip
    input_backward_into(dz, xs, W_ax, dx, dW_ax)
    finite = _results_finite(loss, da0, dW_ax, dW_aa, db_a, dW_ya, db_y) and all_finite(dx)
    return loss, finite


@kernel
def loss_and_grads_onehot_kernel(
    x_index, labels, batch_size, W_ax, W_aa, b_a, W_ya, b_y,
    h, logits, dz_buffer, da0, dW_ax_T, dW_ax, dW_aa, db_a, dW_ya, db_y, relu,
):  # fmt: skip
    """``loss_and_grads_kernel`` for one-hot inputs given by their indices (T, m): the
    projection is a lookup of ``W_ax``'s columns and ``dW_ax`` a scatter-add; no dx."""
    W_ax_T, W_aa_T, W_ya_T, rec = forward_scratch(dz_buffer, W_ax, W_aa, W_ya, x_index.shape[1])
    input_lookup_into(x_index, W_ax_T, h)
    loss, dz = _after_the_input_layer(
        labels, batch_size, W_aa, b_a, W_ya, b_y, W_aa_T, W_ya_T, rec,
        h, logits, dz_buffer, da0, dW_aa, db_a, dW_ya, db_y, relu,
    )  # fmt: skip
    input_lookup_backward_into(dz, x_index, dW_ax_T, dW_ax)
    return loss, _results_finite(loss, da0, dW_ax, dW_aa, db_a, dW_ya, db_y)


@inline_kernel
def _sequence_losses_after_the_input_layer(labels, b_a, b_y, W_aa_T, W_ya_T, rec, h, logits, losses, relu):
    """The recurrence, the output layer and each sequence's loss (``h[1:]`` holds the input
    projection on entry).  Returns whether every loss is finite."""
    hidden_forward_in_place(W_aa_T, vector(b_a), h, rec, relu)
    output_logits_without_bias(labelled_states(h, labels), W_ya_T, logits)
    sequence_cross_entropy_with_bias(logits, vector(b_y), labels, losses)
    return all_finite(losses)


@kernel
def sequence_losses_kernel(xs, labels, W_ax, W_aa, b_a, W_ya, b_y, scratch, h, logits, losses, relu):
    """``numpy_backend.sequence_losses`` on dense inputs: each sequence's loss into
    ``losses`` (m,), no gradient.  ``h[0]`` holds a0 on entry.  Returns whether every loss
    is finite."""
    W_ax_T, W_aa_T, W_ya_T, rec = forward_scratch(scratch, W_ax, W_aa, W_ya, xs.shape[1])
    input_projection_into(xs, W_ax_T, h)
    return _sequence_losses_after_the_input_layer(
        labels, b_a, b_y, W_aa_T, W_ya_T, rec, h, logits, losses, relu
    )


@kernel
def sequence_losses_onehot_kernel(
    x_index, labels, W_ax, W_aa, b_a, W_ya, b_y, scratch, h, logits, losses, relu
):
    """``sequence_losses_kernel`` for one-hot inputs given by their indices (T, m)."""
    W_ax_T, W_aa_T, W_ya_T, rec = forward_scratch(scratch, W_ax, W_aa, W_ya, x_index.shape[1])
    input_lookup_into(x_index, W_ax_T, h)
    return _sequence_losses_after_the_input_layer(
        labels, b_a, b_y, W_aa_T, W_ya_T, rec, h, logits, losses, relu
    )


# -- the lean lane (``fastrnn.engine.lean``): a step or a loss on the caller's own arrays --
# A small call spends more time in the Python checks and copies around its kernel than in
# the kernel itself.  These kernels take the seed's arrays as the caller gave them and do
# that work in compiled code, first: the checks, then the time-major copies.

#: What a ``checked_`` kernel did: ran, or refused before it read through anything it
#: had not checked.  A refused call takes the full path, whose checks say what is wrong
#: (``engine.lean``).
RAN, REFUSED_SHAPES, REFUSED_NOT_FINITE, REFUSED_OUT_OF_RANGE = 0, 1, 2, 3


@kernel  # called once per call: compiled once, not inlined (_jit.py)
def all_below(index, n):
    """Whether every entry of the C-contiguous integer ``index`` lies in ``[0, n)``."""
    flat = index.reshape(index.size)
    inside = True
    for k in range(flat.size):
        inside &= (flat[k] >= 0) & (flat[k] < n)
    return inside


@kernel
def network_refusal(a0, y, n_x, m, T, W_ax, W_aa, b_a, W_ya, b_y):
    """Why a training step of the seed's network may not run on inputs of sizes ``n_x``,
    ``m``, ``T`` (a ``REFUSED_*``), or ``RAN``: every size at least 1, the shapes of the
    parameters, ``a0`` (n_a, m) and ``y`` (m, T) agree, the parameters and ``a0`` are
    finite, the labels lie in ``[0, n_y)``.  Shapes are compared before any entry is
    read; each scan reads its array by the array's own size."""
    n_a = W_aa.shape[0]
    n_y = W_ya.shape[0]
    if min(n_x, m, T, n_a, n_y) < 1:
        return REFUSED_SHAPES
    if (
        W_ax.shape != (n_a, n_x) or W_aa.shape != (n_a, n_a) or b_a.shape != (n_a, 1)
        or W_ya.shape != (n_y, n_a) or b_y.shape != (n_y, 1) or a0.shape != (n_a, m) or y.shape != (m, T)
    ):  # fmt: skip
        return REFUSED_SHAPES
    if not (
        all_finite(W_ax) and all_finite(W_aa) and all_finite(b_a) and all_finite(W_ya) and all_finite(b_y)
        and all_finite(a0)
    ):  # fmt: skip
        return REFUSED_NOT_FINITE
    return RAN if all_below(y, n_y) else REFUSED_OUT_OF_RANGE


@kernel
def checked_step_inputs_into(x, a0, y, W_ax, W_aa, b_a, W_ya, b_y, xs, h, labels):
    """A dense training step's inputs, from the seed's own arrays, checked first
    (``network_refusal``, and ``x`` finite), then copied time-major: ``xs[t, i] = x[:, i,
    t]``, ``h[0] = a0.T``, ``labels[t, i] = y[i, t]``, what ``loss_and_grads_kernel`` and
    ``sequence_losses_kernel`` take.

    ``x`` (n_x, m, T), ``a0`` (n_a, m), ``y`` (m, T) intp and the parameters, C-contiguous;
    ``xs``, ``h`` and ``labels`` sized by the caller from ``x``'s and the weights' shapes
    (``numba_backend.checked_loss_and_grads``).  Returns ``RAN``, or a ``REFUSED_*``: then
    nothing was written, and only the checks read the arrays.

    The step itself is not called from here: a kernel that calls ``loss_and_grads_kernel``
    compiles all of it again inside itself (the first call in a fresh process took 9.8 s
    instead of 7.0 s, float32), for the 1 to 2 us a call from Python costs.
    """
    n_x, m, T = x.shape
    status = network_refusal(a0, y, n_x, m, T, W_ax, W_aa, b_a, W_ya, b_y)
    if status == RAN and not all_finite(x):
        status = REFUSED_NOT_FINITE
    if status != RAN:
        return status
    transpose_into(y, labels)
    transpose_into(a0, h[0])
    for t in range(T):
        for i in range(m):
            for k in range(n_x):
                xs[t, i, k] = x[k, i, t]
    return RAN


@kernel
def checked_onehot_step_inputs_into(x_index, a0, y, W_ax, W_aa, b_a, W_ya, b_y, index, h, labels):
    """``checked_step_inputs_into`` for one-hot inputs: ``x_index`` (m, T) intp, checked to
    lie in ``[0, n_x)``, copied time-major into ``index`` (T, m), what the ``_onehot``
    kernels take."""
    m, T = x_index.shape
    n_x = W_ax.shape[1]
    status = network_refusal(a0, y, n_x, m, T, W_ax, W_aa, b_a, W_ya, b_y)
    if status == RAN and not all_below(x_index, n_x):
        status = REFUSED_OUT_OF_RANGE
    if status != RAN:
        return status
    transpose_into(y, labels)
    transpose_into(a0, h[0])
    transpose_into(x_index, index)
    return RAN


# =======================================================================================
# 5. Optimizer updates (numpy_backend's sgd_update, adagrad_update, adam_update and the
# clipping helpers), over flat C-contiguous views of one parameter and its state.  Scalars
# arrive in the parameter's dtype, so float32 stays float32.  With ``commit`` false a
# kernel computes the new values without writing them and returns whether all are finite;
# with ``commit`` true it writes them (fastrnn.optim checks every parameter first).
# =======================================================================================


@kernel
def sgd_update(param, grad, velocity, lr, momentum, commit):
    finite = True
    for k in range(param.size):
        new_velocity = momentum * velocity[k] + grad[k]
        new_param = param[k] - lr * new_velocity
        if commit:
            velocity[k] = new_velocity
            param[k] = new_param
        else:
            finite &= math.isfinite(new_param) and math.isfinite(new_velocity)
    return finite


@kernel
def adagrad_update(param, grad, sum_sq, lr, eps, commit):
    finite = True
    for k in range(param.size):
        new_sum_sq = sum_sq[k] + grad[k] * grad[k]
        new_param = param[k] - lr * grad[k] / np.sqrt(new_sum_sq + eps)
        if commit:
            sum_sq[k] = new_sum_sq
            param[k] = new_param
        else:
            finite &= math.isfinite(new_param) and math.isfinite(new_sum_sq)
    return finite


@kernel
def adam_update(param, grad, m, v, lr, beta1, beta2, eps, correction1, correction2, commit):
    one = param.dtype.type(1)
    finite = True
    for k in range(param.size):
        g = grad[k]
        new_m = beta1 * m[k] + (one - beta1) * g
        new_v = beta2 * v[k] + (one - beta2) * g * g
        new_param = param[k] - lr * (new_m / correction1) / (np.sqrt(new_v / correction2) + eps)
        if commit:
            m[k] = new_m
            v[k] = new_v
            param[k] = new_param
        else:
            finite &= math.isfinite(new_param) and math.isfinite(new_m) and math.isfinite(new_v)
    return finite


@kernel
def clip_by_value(grad, limit):
    for k in range(grad.size):
        grad[k] = min(max(grad[k], -limit), limit)


@kernel
def max_abs(grad):
    largest = 0.0
    for k in range(grad.size):
        largest = max(largest, abs(np.float64(grad[k])))
    return largest


@kernel
def sum_of_squares(grad, inv_scale):
    total = 0.0
    for k in range(grad.size):
        g = np.float64(grad[k]) * inv_scale
        total += g * g
    return total


@kernel
def scale(grad, factor):
    for k in range(grad.size):
        grad[k] *= factor


# =======================================================================================
# 6. Networks of several layers, two directions or variable lengths, over packed rows
# (``fastrnn.packing``; the NumPy reference's functions of the same names, in
# numpy_backend's last section).  ``numba_backend`` runs the layers and directions in
# Python, a few calls each; these kernels run what loops over steps or rows.
# =======================================================================================


@inline_kernel
def _copy_rows(source, source_row, target, target_row, n):
    """``target[target_row : target_row + n] = source[source_row : source_row + n]``, row by
    row (each inner loop vectorises)."""
    for i in range(n):
        from_row = source[source_row + i]
        to_row = target[target_row + i]
        for j in range(from_row.size):
            to_row[j] = from_row[j]


@inline_kernel
def _zero(a):
    """``a[...] = 0`` for a C-contiguous ``a``, as a loop: slice assignments are what took
    the longest to compile in these kernels (Numba lowers them through broadcasting)."""
    flat = a.reshape(a.size)
    zero = flat.dtype.type(0)
    for k in range(flat.size):
        flat[k] = zero


@kernel
def packing_into(lengths, order, sorted_lengths, batch_sizes, offsets, last_rows, steps, sequences):
    """``fastrnn.packing.make_packing`` of ``lengths`` (m,), into arrays of its sizes
    (``batch_sizes`` (T_run,) for T_run the longest length, ``offsets`` (T_run + 1,),
    ``steps`` and ``sequences`` (N,), the others (m,)).  A counting sort: stable, longest
    first, in O(m + T_run)."""
    m, T_run = lengths.size, batch_sizes.size
    # batch_sizes[t]: the sequences longer than t (first, of length exactly t + 1)
    _zero(batch_sizes)
    for i in range(m):
        batch_sizes[lengths[i] - 1] += 1
    longer = 0
    for t in range(T_run - 1, -1, -1):
        longer += batch_sizes[t]
        batch_sizes[t] = longer
    # A sequence of length L goes after the longer ones, in the caller's order: offsets[L]
    # serves as the next free place for length L until the offsets are computed.
    for L in range(1, T_run + 1):
        offsets[L] = batch_sizes[L] if L < T_run else 0
    for i in range(m):
        L = lengths[i]
        order[offsets[L]] = i
        sorted_lengths[offsets[L]] = L
        offsets[L] += 1
    offsets[0] = 0
    for t in range(T_run):
        offsets[t + 1] = offsets[t] + batch_sizes[t]
    for j in range(m):
        last_rows[j] = offsets[sorted_lengths[j] - 1] + j
    for t in range(T_run):
        for j in range(batch_sizes[t]):
            steps[offsets[t] + j] = t
            sequences[offsets[t] + j] = order[j]


@kernel
def pack_rows_into(x, sequences, steps, out):
    """``out[r, k] = x[k, sequences[r], steps[r]]``: the packed rows (N, n_x) of dense
    inputs ``x`` (n_x, m, T) (``numpy_backend.pack_rows``).  Feature by feature, so that
    the reads stay within one (m, T) plane of ``x``."""
    n_x, T = x.shape[0], x.shape[2]
    planes = x.reshape((n_x, x.shape[1] * T))
    for k in range(n_x):
        plane = planes[k]
        for r in range(sequences.size):
            out[r, k] = plane[sequences[r] * T + steps[r]]


@kernel
def unpack_rows_into(packed, sequences, steps, out):
    """``out[steps[r], sequences[r]] = packed[r]``: packed rows (N, n) back into the
    time-major (T, m, n) ``out`` (``numpy_backend.unpack_rows``)."""
    for r in range(sequences.size):
        row = packed[r]
        target = out[steps[r], sequences[r]]
        for k in range(row.size):
            target[k] = row[k]


@kernel
def matmul_into(a, b, out):
    """``out = a @ b`` through SciPy's BLAS (section 3 says why not NumPy's)."""
    np.dot(a, b, out)


@kernel
def matmul_transposed_into(a, b, out):
    """``out = a.T @ b``: a weight gradient, one product over all packed rows."""
    np.dot(a.T, b, out)


@kernel
def packed_lookup_into(index, W_ax_T, out):
    """``out[r] = W_ax[:, index[r]]``: the projection of one-hot inputs (N,), a lookup.
    ``index`` is checked by the caller to lie in ``[0, n_x)``."""
    for r in range(index.size):
        _copy_rows(W_ax_T, index[r], out, r, 1)


@kernel
def packed_lookup_backward_into(dz, index, dW_ax_T, dW_ax):
    """``dW_ax`` for one-hot inputs: each row of ``dz`` (N, n_a) added to the column its
    input selected, accumulated in ``dW_ax_T`` and transposed into ``dW_ax``."""
    _zero(dW_ax_T)
    n_a = dz.shape[1]
    for r in range(index.size):
        row = dW_ax_T[index[r]]
        dz_r = dz[r]
        for j in range(n_a):
            row[j] += dz_r[j]
    transpose_into(dW_ax_T, dW_ax)


@kernel
def direction_forward_in_place(W_aa_T, b_a, a0, h, batch_sizes, offsets, reverse, rec, relu):
    """``numpy_backend.direction_forward``: ``h`` (N, n_a) holds the input projection on
    entry and the states on exit; ``rec`` (m, n_a) is the recurrent products' scratch.

    Each step's rows are a prefix of the batch, and so are the rows it reads (a block of
    the step before, or after in ``reverse``, and ``a0`` for the sequences that start
    there): the products shrink with the running sequences, on contiguous blocks.
    """
    n_steps = batch_sizes.size
    n_a = W_aa_T.shape[0]
    for s in range(n_steps):
        t = n_steps - 1 - s if reverse else s
        n = batch_sizes[t]
        start = offsets[t]
        n_running, running_row = rows_read(batch_sizes, offsets, t, reverse)
        # Each step reads the states of the step before (after, in reverse) for the
        # sequences running there, else a0: whole arrays and row numbers, no views
        # (add_blas_rows_into says why).  One product a step (inlined once); a second
        # only in reverse, at a step where some sequences start (their last step).
        from_states = n_running > 0
        previous = h if from_states else a0
        row = running_row if from_states else n_running  # (n_running = 0: a literal 0 would type apart)
        count = n_running if from_states else n
        if uses_blas(count, n_a, n_a, h.itemsize):  # add_matmul_rows_into's choice, written out (it says why)
            add_blas_rows_into(previous, row, W_aa_T, h, start, count, rec)
        else:
            _add_matmul_rows_loops(previous, row, W_aa_T, h, start, count)
        if 0 < n_running < n:
            add_matmul_rows_into(a0, n_running, W_aa_T, h, start + n_running, n - n_running, rec)
        _activation_with_bias_in_place(h[start : start + n], b_a, relu)


@inline_kernel
def rows_read(batch_sizes, offsets, t, reverse):
    """How many of step t's rows read the states of a step (the one before, after in
    ``reverse``), and where that step's rows start; the others read ``a0``."""
    neighbour = t + 1 if reverse else t - 1
    if neighbour < 0 or neighbour >= batch_sizes.size:
        return 0, 0
    return min(batch_sizes[neighbour], batch_sizes[t]), offsets[neighbour]


@kernel
def direction_backward_in_place(dz, h, a0, W_aa, batch_sizes, offsets, reverse, da0, db_a, rec, relu):
    """``numpy_backend.direction_backward`` less ``dW_aa`` (``previous_states_into``):
    ``dz`` (N, n_a) holds dL/dH from outside on entry and dL/dz on exit; what a step's
    recurrence sends back is added into the rows it read (``da0`` for ``a0``), as
    ``hidden_backward_in_place`` does.  ``rec`` (m, n_a) is scratch."""
    n_steps = batch_sizes.size
    n_a = W_aa.shape[0]
    _zero(da0)
    _zero(db_a)
    for s in range(n_steps):
        t = s if reverse else n_steps - 1 - s  # the forward pass's order, reversed
        n = batch_sizes[t]
        start = offsets[t]
        _activation_gradient_in_place(dz[start : start + n], h[start : start + n], db_a, relu)
        n_running, running_row = rows_read(batch_sizes, offsets, t, reverse)
        # back to the rows step t read, as direction_forward_in_place
        from_states = n_running > 0
        target = dz if from_states else da0
        row = running_row if from_states else n_running
        count = n_running if from_states else n
        if uses_blas(count, n_a, n_a, dz.itemsize):  # as direction_forward_in_place
            add_blas_rows_into(dz, start, W_aa, target, row, count, rec)
        else:
            _add_matmul_rows_loops(dz, start, W_aa, target, row, count)
        if 0 < n_running < n:
            add_matmul_rows_into(dz, start + n_running, W_aa, da0, n_running, n - n_running, rec)


@kernel  # called once per time step, from numba_backend's step-by-step direction functions
def activation_rows_in_place(h, start, n, b_a, relu):
    """``h[start : start + n] = f(h[start : start + n] + b_a)``: one step's activation, as
    ``direction_forward_in_place`` runs it after the step's product (where a door's own
    products make that product: ``numba_backend.direction_forward``)."""
    _activation_with_bias_in_place(h[start : start + n], b_a, relu)


@kernel  # as activation_rows_in_place
def activation_gradient_rows_in_place(dz, h, start, n, db_a, relu):
    """One step of ``direction_backward_in_place`` before its product: ``dz[start : start
    + n]``, dL/dH on entry, becomes dL/dz, added into ``db_a``."""
    _activation_gradient_in_place(dz[start : start + n], h[start : start + n], db_a, relu)


@kernel
def previous_states_into(h, a0, batch_sizes, offsets, reverse, prev):
    """``numpy_backend.previous_states``: the states each step read, row for row with
    ``h`` (N, n_a), into ``prev``, which may be ``h`` itself when its states are no longer
    needed (a training step's): the blocks are then moved in an order that reads each
    block before it is overwritten (from the last step for the forward direction, from
    the first for the reverse one), and a block never overlaps the one it moves to."""
    n_steps = batch_sizes.size
    for s in range(n_steps):
        t = s if reverse else n_steps - 1 - s
        n = batch_sizes[t]
        start = offsets[t]
        if not reverse:
            if t == 0:
                _copy_rows(a0, 0, prev, start, n)
            else:
                _copy_rows(h, offsets[t - 1], prev, start, n)
        else:
            n_next = batch_sizes[t + 1] if t + 1 < n_steps else 0
            _copy_rows(h, offsets[t + 1], prev, start, n_next)
            _copy_rows(a0, n_next, prev, start + n_next, n - n_next)


@kernel
def softmax_rows_with_bias(logits, b_y):
    """``softmax_with_bias`` over the rows of ``logits`` (R, n_y), in place; returns whether
    every output is finite."""
    R, n_y = logits.shape
    softmax_with_bias(logits.reshape((1, R, n_y)), b_y)
    return all_finite(logits)


@kernel
def cross_entropy_rows_with_bias(logits, b_y, labels, db_y, batch_size):
    """``softmax_cross_entropy_with_bias`` over the rows of ``logits`` (R, n_y) with
    ``labels`` (R,): the loss, ``logits`` turned into dL/dlogits and ``db_y`` filled."""
    R, n_y = logits.shape
    return softmax_cross_entropy_with_bias(
        logits.reshape((1, R, n_y)), b_y, labels.reshape((1, R)), db_y, batch_size
    )


@kernel
def sequence_cross_entropy_rows_with_bias(logits, b_y, labels, batch_sizes, offsets, losses):
    """Each sorted sequence's loss (m,) float64 from packed ``logits`` (N, n_y) and
    ``labels`` (N,): row ``offsets[t] + j`` belongs to sequence j (the NumPy reference's
    ``bincount``); or, for one label per sequence, ``logits`` (m, n_y) with
    ``batch_sizes`` of one step of m.  Returns whether every loss is finite."""
    _zero(losses)
    for t in range(batch_sizes.size):
        for j in range(batch_sizes[t]):
            z = logits[offsets[t] + j]
            label = labels[offsets[t] + j]
            label_logit = np.float64(z[label] + b_y[label])
            z_max, sum_e = _softmax_row(z, b_y)
            losses[j] += np.float64(z_max) + math.log(np.float64(sum_e)) - label_logit
    return all_finite(losses)


@inline_kernel
def _packed_after_the_input_layer(
    labels, one_per_sequence, last_rows, batch_size, a0, W_aa, b_a, W_ya, b_y, W_aa_T, W_ya_T,
    batch_sizes, offsets, rec, h, final, top, logits, dz, da0, dW_aa, db_a, dW_ya, db_y, relu,
):  # fmt: skip
    """``_after_the_input_layer`` over packed rows, for one layer in one direction
    (``numpy_backend.packed_loss_and_grads``): the recurrence, the output layer (every
    row, or each sequence's last row into ``top`` (m, n_a) for ``one_per_sequence``), the
    loss, and the backward pass into ``dz`` (N, n_a), ``da0``, ``dW_aa``, ``db_a``,
    ``dW_ya``, ``db_y``; ``final`` (m, n_a) gets each sequence's last state.  ``h`` holds
    the input projection on entry and, as it is not needed after, the previous states
    (``previous_states_into``) on exit."""
    direction_forward_in_place(W_aa_T, b_a, a0, h, batch_sizes, offsets, False, rec, relu)
    for i in range(last_rows.size):
        _copy_rows(h, last_rows[i], final, i, 1)
    read = top if one_per_sequence else h  # what the output layer reads
    if one_per_sequence:
        _copy_rows(final, 0, top, 0, last_rows.size)
    np.dot(read, W_ya_T, logits)
    R, n_y = logits.shape
    loss = softmax_cross_entropy_with_bias(
        logits.reshape((1, R, n_y)), b_y, labels.reshape((1, R)), db_y, batch_size
    )
    np.dot(logits.T, read, dW_ya)
    if one_per_sequence:  # dL/dH is 0 but at each sequence's last row
        np.dot(logits, W_ya, top)
        _zero(dz)
        for i in range(last_rows.size):
            _copy_rows(top, i, dz, last_rows[i], 1)
    else:
        np.dot(logits, W_ya, dz)
    direction_backward_in_place(dz, h, a0, W_aa, batch_sizes, offsets, False, da0, db_a, rec, relu)
    previous_states_into(h, a0, batch_sizes, offsets, False, h)
    np.dot(dz.T, h, dW_aa)
    return loss


@inline_kernel
def packed_scratch(buffer, W_ax, W_aa, W_ya, m):
    """``forward_scratch`` (the weights' transposes and ``rec``), then ``top`` (m, n_a), as
    views of the flat ``buffer`` (``numba_backend.forward_scratch_size`` + m * n_a)."""
    W_ax_T, W_aa_T, W_ya_T, rec = forward_scratch(buffer, W_ax, W_aa, W_ya, m)
    n_a = W_aa.shape[0]
    end = buffer.size
    top = buffer[end - m * n_a :].reshape((m, n_a))
    return W_ax_T, W_aa_T, W_ya_T, rec, top


@kernel
def packed_loss_and_grads_kernel(
    xs, labels, one_per_sequence, last_rows, batch_size, W_ax, W_aa, b_a, W_ya, b_y, a0,
    batch_sizes, offsets, scratch, h, final, logits, dz, da0, dx, dW_ax, dW_aa, db_a, dW_ya, db_y, relu,
):  # fmt: skip
    """A training step of one layer in one direction over packed rows ``xs`` (N, n_x), in one
    call (no Python between its steps, and no GIL: shards run it in parallel).  Every
    array from ``scratch`` (``packed_scratch``) on is a workspace or an output; ``dx`` may
    be ``xs`` itself, written after its last read.  Returns the loss and whether it and
    every gradient are finite."""
    W_ax_T, W_aa_T, W_ya_T, rec, top = packed_scratch(scratch, W_ax, W_aa, W_ya, last_rows.size)
    np.dot(xs, W_ax_T, h)  # the input projection of every row
    loss = _packed_after_the_input_layer(
        labels, one_per_sequence, last_rows, batch_size, a0, W_aa, vector(b_a), W_ya, vector(b_y), W_aa_T, W_ya_T,
        batch_sizes, offsets, rec, h, final, top, logits, dz, da0, dW_aa, vector(db_a), dW_ya, vector(db_y), relu,
    )  # fmt: skip
    np.dot(dz.T, xs, dW_ax)
    np.dot(dz, W_ax, dx)
    return loss, _results_finite(loss, da0, dW_ax, dW_aa, db_a, dW_ya, db_y) and all_finite(dx)


@kernel
def packed_loss_and_grads_onehot_kernel(
    index, labels, one_per_sequence, last_rows, batch_size, W_ax, W_aa, b_a, W_ya, b_y, a0,
    batch_sizes, offsets, scratch, h, final, logits, dz, da0, dW_ax_T, dW_ax, dW_aa, db_a, dW_ya, db_y, relu,
):  # fmt: skip
    """``packed_loss_and_grads_kernel`` for one-hot inputs given by their indices (N,)."""
    W_ax_T, W_aa_T, W_ya_T, rec, top = packed_scratch(scratch, W_ax, W_aa, W_ya, last_rows.size)
    packed_lookup_into(index, W_ax_T, h)
    loss = _packed_after_the_input_layer(
        labels, one_per_sequence, last_rows, batch_size, a0, W_aa, vector(b_a), W_ya, vector(b_y), W_aa_T, W_ya_T,
        batch_sizes, offsets, rec, h, final, top, logits, dz, da0, dW_aa, vector(db_a), dW_ya, vector(db_y), relu,
    )  # fmt: skip
    packed_lookup_backward_into(dz, index, dW_ax_T, dW_ax)
    return loss, _results_finite(loss, da0, dW_ax, dW_aa, db_a, dW_ya, db_y)


# =======================================================================================
# 7. One step at a time: streaming and generation (``fastrnn.generation``; the NumPy
# reference's functions of the same names, in numpy_backend's last section).  A trained
# network steps a few rows many times, so each call does all of a step (every layer's
# cell, the output layer, the draw) and generation all of its steps, without coming back
# to Python.  The weights come as ``layers.StepWeights``: transposed and stacked by layer,
# prepared once.
# =======================================================================================


@kernel  # every product of the step kernels: compiled once per dtype, not inlined at each
def step_product_into(a, b, out):
    """``out = a @ b`` (a (r, k), b (k, n), out (r, n)): loops at the sizes where they beat
    a BLAS call (``uses_blas``), BLAS above."""
    if uses_blas(a.shape[0], a.shape[1], b.shape[1], a.itemsize):
        np.dot(a, b, out)
    else:
        _zero(out)
        _add_matmul_loops(a, b, out)


@inline_kernel
def _activation_into(z, rec, b_a, out, relu):
    """``out = f(z + rec + b_a)`` row by row: the cell's nonlinearity (``numpy_backend.activation``)
    of its input projection, recurrent product and bias, in one pass."""
    m, n_a = z.shape
    for i in range(m):
        z_i = z[i]
        rec_i = rec[i]
        out_i = out[i]
        if relu is None:  # pruned at compile time (NONLINEARITY)
            for j in range(n_a):
                out_i[j] = fast_tanh(z_i[j] + rec_i[j] + b_a[j])
        else:
            for j in range(n_a):
                v = z_i[j] + rec_i[j] + b_a[j]
                out_i[j] = max(v, v - v)


@kernel  # shared by the three entry points below: compiled once, not inlined into each
def network_step_into(z, previous, states, W_ax_T_upper, W_aa_T, b_a, rec, relu):
    """``numpy_backend.network_step``: ``z`` (m, n_a) holds layer 0's input projection on
    entry; ``states`` (L, m, n_a) gets every layer's new state from ``previous``, which may
    be ``states`` itself (each layer reads its own old state before writing it).  ``rec``
    (m, n_a) receives each layer's recurrent product."""
    for layer in range(states.shape[0]):
        if layer > 0:
            step_product_into(states[layer - 1], W_ax_T_upper[layer - 1], z)
        step_product_into(previous[layer], W_aa_T[layer], rec)
        _activation_into(z, rec, b_a[layer], states[layer], relu)


@inline_kernel
def _step_lookup_into(index, W_ax_T, z):
    """``z[i] = W_ax[:, index[i]]``: layer 0's projection of one-hot inputs (indices checked
    by the caller)."""
    for i in range(index.size):
        _copy_rows(W_ax_T, index[i], z, i, 1)


@kernel
def stream_step_index_kernel(
    index, previous, states, W_ax_T, W_ax_T_upper, W_aa_T, b_a, W_ya_T, b_y, z, rec, out, probabilities, relu
):  # fmt: skip
    """``numpy_backend.stream_step`` for symbol indices (m,) intp: every index is checked
    to lie in ``[0, n_x)`` before any is read through.  Returns ``(bad, finite)``: the
    position of the first bad index (-1: none; then nothing was computed), and whether
    every new state and output is finite."""
    n_x = W_ax_T.shape[0]
    for i in range(index.size):
        if index[i] < 0 or index[i] >= n_x:
            return i, False
    _step_lookup_into(index, W_ax_T, z)
    return -1, _stream_after_the_input_layer(
        previous, states, W_ax_T_upper, W_aa_T, b_a, W_ya_T, b_y, z, rec, out, probabilities, relu
    )


@kernel
def stream_step_dense_kernel(
    x, previous, states, W_ax_T, W_ax_T_upper, W_aa_T, b_a, W_ya_T, b_y, z, rec, out, probabilities, relu
):  # fmt: skip
    """``numpy_backend.stream_step`` for dense input ``x`` (n_x, m), C-contiguous, checked
    to be finite before anything is computed.  Returns ``(bad, finite)`` as the index
    kernel does, ``bad`` the flat position of the first non-finite entry of ``x``."""
    flat = x.reshape(x.size)
    inf = flat.dtype.type(np.inf)
    for k in range(flat.size):
        if not abs(flat[k]) < inf:
            return k, False
    n_x, m = x.shape
    _zero(z)
    for k in range(n_x):  # z = x.T @ W_ax_T, along rows of W_ax_T (x is a few columns)
        x_k = x[k]
        W_k = W_ax_T[k]
        for i in range(m):
            x_ki = x_k[i]
            z_i = z[i]
            for j in range(z_i.size):
                z_i[j] += x_ki * W_k[j]
    return -1, _stream_after_the_input_layer(
        previous, states, W_ax_T_upper, W_aa_T, b_a, W_ya_T, b_y, z, rec, out, probabilities, relu
    )


@kernel  # shared by both stream kernels: compiled once
def _stream_after_the_input_layer(
    previous, states, W_ax_T_upper, W_aa_T, b_a, W_ya_T, b_y, z, rec, out, probabilities, relu
):
    """The layers' cells and the output layer: ``out`` (m, n_y) gets the logits, or the
    softmax outputs with ``probabilities``.  Returns whether states and outputs are finite."""
    network_step_into(z, previous, states, W_ax_T_upper, W_aa_T, b_a, rec, relu)
    step_product_into(states[states.shape[0] - 1], W_ya_T, out)
    for i in range(out.shape[0]):
        out_i = out[i]
        if probabilities:
            _softmax_row(out_i, b_y)
        else:
            for j in range(out_i.size):
                out_i[j] += b_y[j]
    return all_finite(out) and all_finite(states)


@inline_kernel
def _ranked_before(weights, i, j):
    """Whether symbol ``i`` ranks before ``j``: likelier, or as likely and of a lower index
    (a total order: every sort of it gives the same ranking)."""
    return weights[i] > weights[j] or (weights[i] == weights[j] and i < j)


@kernel  # called from two loops of _rank_into: compiled once, not inlined twice
def _sift_down(order, root, size, weights):
    """Restore the heap property of ``order[:size]`` below ``root`` (the highest-ranked
    symbol at the root)."""
    while True:
        child = 2 * root + 1
        if child >= size:
            return
        if child + 1 < size and _ranked_before(weights, order[child + 1], order[child]):
            child += 1
        if not _ranked_before(weights, order[child], order[root]):
            return
        order[root], order[child] = order[child], order[root]
        root = child


@inline_kernel
def _rank_into(weights, limit, order):
    """The ``limit`` highest-ranked symbols, best first, into ``order[:limit]``
    (``numpy_backend.ranked``): a heap of all symbols, popped ``limit`` times, so that a
    small ``top_k`` costs O(n_y + k log n_y) and needs no allocation."""
    n = weights.size
    for k in range(n):
        order[k] = k
    for root in range(n // 2 - 1, -1, -1):
        _sift_down(order, root, n, weights)
    for popped in range(limit):  # the best goes to the end of the heap's shrinking range
        size = n - popped
        order[0], order[size - 1] = order[size - 1], order[0]
        _sift_down(order, np.intp(0), size - 1, weights)  # np.intp: a literal 0 would compile it again
    for k in range(n // 2):  # the popped ones sit at the end, best last: reverse them to the front
        order[k], order[n - 1 - k] = order[n - 1 - k], order[k]


@kernel  # called once per stream and step: compiled once, not inlined into the time loop
def draw_symbol(logits, b_y, temperature, top_k, top_p, u, weights, order):
    """``numpy_backend.draw_symbol``: a symbol drawn from ``softmax((logits + b_y) /
    temperature)`` (``logits`` (n_y,)), filtered to the ``top_k`` likeliest and then to the
    smallest prefix of those whose mass reaches ``top_p`` of theirs, by walking the kept
    symbols' cumulative weights to ``u`` (in [0, 1)) times their total.  The weights are
    float64 in both dtypes; ``weights`` (n_y,) and ``order`` (n_y,) are scratch.  Always
    returns a symbol in ``[0, n_y)``, whatever the numbers."""
    n = logits.size
    v_max = -np.inf
    for j in range(n):
        v = np.float64(logits[j] + b_y[j])
        weights[j] = v
        v_max = max(v_max, v)
    for j in range(n):
        weights[j] = exp_nonpositive((weights[j] - v_max) / temperature)
    limit = min(top_k, n)
    if limit == n and top_p >= 1.0:  # no filter: walk the symbols in index order
        for k in range(n):
            order[k] = k
        keep = n
    else:
        _rank_into(weights, limit, order)
        keep = limit
        if top_p < 1.0:
            mass = 0.0
            for k in range(limit):
                mass += weights[order[k]]
            threshold = top_p * mass
            total = 0.0
            for k in range(limit):
                total += weights[order[k]]
                if total >= threshold:
                    keep = k + 1
                    break
    total = 0.0
    for k in range(keep):
        total += weights[order[k]]
    target = u * total
    chosen = order[0]
    total = 0.0
    for k in range(keep):
        symbol = order[k]
        total += weights[symbol]
        if weights[symbol] > 0.0:
            chosen = symbol  # the last possible one, should rounding leave target unreached
        if total > target:
            return symbol
    return chosen


@kernel
def generate_kernel(
    feed, running, states, W_ax_T, W_ax_T_upper, W_aa_T, b_a, W_ya_T, b_y, uniforms, temperature, top_k,
    top_p, stop, z, rec, logits, weights, order, symbols, lengths, relu,
):  # fmt: skip
    """``numpy_backend.generate``: ``uniforms.shape[0]`` steps of ``m`` streams in one
    call.  Each step feeds every stream's symbol (``feed`` (m,), checked by the caller),
    steps every layer (``states`` (L, m, n_a), in place) and the output layer, and draws
    each running stream's next symbol (``draw_symbol`` with ``uniforms[t, i]``) into
    ``symbols[i, lengths[i]]``; a stream stops after drawing ``stop`` (-1: none), and the
    call ends when none runs.  Returns whether every output was finite."""
    m = feed.size
    top = states.shape[0] - 1
    finite = True
    for i in range(m):
        lengths[i] = 0
    for t in range(uniforms.shape[0]):
        any_running = False
        for i in range(m):
            any_running |= running[i]
        if not any_running:
            break
        _step_lookup_into(feed, W_ax_T, z)
        network_step_into(z, states, states, W_ax_T_upper, W_aa_T, b_a, rec, relu)
        step_product_into(states[top], W_ya_T, logits)
        finite &= all_finite(logits)
        for i in range(m):
            if running[i]:
                symbol = draw_symbol(
                    logits[i], b_y, temperature, top_k, top_p, uniforms[t, i], weights, order
                )
                symbols[i, lengths[i]] = symbol
                lengths[i] += 1
                feed[i] = symbol
                running[i] = symbol != stop
    return finite
