"""JIT policy for every Numba kernel of fastrnn, in one place.

All kernels are compiled with the same options:

- ``cache=True``: a new process loads machine code from ``__pycache__`` instead of
  compiling again (first-call time matters to users; see docs/performance.md).
- ``nogil=True``: kernels release the GIL, so calls from several threads run in parallel
  (each call allocates its own arrays; kernels share no state).
- ``error_model="numpy"``: float division by zero gives inf/nan instead of raising.  With
  Numba's default ("python") every division carries a zero check and a branch, which stops
  LLVM from vectorising the fused tanh/softmax loops (about 9x slower float32 tanh).
- ``fastmath=FASTMATH``: only ``contract`` (LLVM may fuse a multiply and an add into one
  FMA) and ``nsz`` (the sign of zero may be ignored).  ``nnan``/``ninf`` are left out so
  that NaN and inf behave as in NumPy; ``reassoc`` is left out because it lets LLVM undo
  the exact range reduction ``(x - n*LN2_HI) - n*LN2_LO`` in ``numba_kernels.exp_nonpositive``
  (an error of 27 ulp instead of 1).

Nothing else in the package passes options to ``numba.njit`` directly.
"""

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

FASTMATH = frozenset({"contract", "nsz"})

_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))


def kernel(function):
    """Compile ``function`` as a fastrnn kernel (lazily, once per dtype and layout)."""
    return numba.njit(**_OPTIONS)(function)


def inline_kernel(function):
    """Compile a small helper that is inlined into the kernels that call it.

    For what runs inside a time loop, where a call would cost more than the work (a tiny
    product per step).  Each inlined copy is compiled again, so helpers called once or
    twice per kernel are plain ``kernel`` functions instead: cold compilation is part of a
    user's first call.
    """
    return numba.njit(inline="always", **_OPTIONS)(function)


def bits_as_float(bits):
    """Reinterpret the bits of an int64 as a float64 (int32 as float32).

    Used to build ``2**n`` from its exponent bits in the vectorised ``exp``.  In compiled
    code (the overload below) LLVM turns it into a register move, so loops that use it
    still vectorise; this plain-Python version lets the kernels' maths run, and be
    covered by tests, under ``NUMBA_DISABLE_JIT=1``.
    """
    return np.asarray(bits).view(np.float64 if np.asarray(bits).dtype == np.int64 else np.float32)[()]


@intrinsic
def _bitcast(typingctx, bits):
    if bits == types.int64:
        result = types.float64
    elif bits == types.int32:
        result = types.float32
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(result))

    return result(bits), codegen


@overload(bits_as_float, inline="always")
def _overload_bits_as_float(bits):
    if bits in (types.int64, types.int32):
        return lambda bits: _bitcast(bits)
    return None
