"""NumPy's own BLAS matrix product, callable from inside a Numba kernel.

Why
---
NumPy calls BLAS for ``a @ b``, but only from Python: a Numba kernel that wants to
transform some data, multiply it and transform the result while it is still in cache
must call BLAS itself. Numba's ``np.dot`` does, through SciPy's copy of OpenBLAS (another
build, with its own thread pool); on Winograd's ``(64, 64) @ (64, 256)`` products it ran
1.2-1.7x slower than the same product through NumPy (docs/benchmarks.md). So this module
finds the C function NumPy's ``@`` itself ends in, ``cblas_sgemm`` / ``cblas_dgemm``::

    C = alpha * op(A) @ op(B) + beta * C        (row-major; op is the identity or a transpose)

and hands it out as a ``ctypes`` function. A Numba kernel takes it as an argument (an
argument, not a global, so the kernel stays in Numba's on-disk cache: a global function
pointer would be baked into the compiled code) and calls it with array pointers
(``a.ctypes.data``); ``gemm`` below shows the call.

Where it is found
-----------------
NumPy's wheels on PyPI ship OpenBLAS with 64-bit integers and renamed symbols
(``scipy_cblas_sgemm64_`` since NumPy 2.0, ``cblas_sgemm64_`` before). Only those names are
tried, in the BLAS libraries threadpoolctl sees loaded: their integer width is certain,
and a wrong guess would not fail cleanly. Each candidate must then reproduce
``numpy.matmul`` on a small strided, transposed product. Anything else (Apple's
Accelerate, MKL, a distribution's OpenBLAS) gives ``None``, and the callers use their
plain NumPy path.

The caller keeps BLAS on one thread while its own threads call it (``cpu.one_blas_thread``):
BLAS's own workers would otherwise join each small product.
"""
from __future__ import annotations

import ctypes

import numpy as np
from numba import njit

__all__ = ["gemm_function", "gemm", "ROW_MAJOR", "NO_TRANS", "TRANS"]

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112   # the CBLAS enums

# (symbol pattern, integer type), tried in order; {t} is s or d.
_SYMBOLS = (("scipy_cblas_{t}gemm64_", ctypes.c_int64), ("cblas_{t}gemm64_", ctypes.c_int64))
_REAL = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}
_found: dict = {}


def gemm_function(dtype):
    """The ``ctypes`` ``cblas_?gemm`` of NumPy's BLAS for float32 or float64 ``dtype``, or ``None``
    where none of the known 64-bit-integer builds is loaded (or it failed the check)."""
    dtype = np.dtype(dtype)
    if dtype not in _REAL:
        return None
    if dtype not in _found:
        _found[dtype] = _find(dtype)
    return _found[dtype]


def _find(dtype):
    letter, real = _REAL[dtype]
    try:
        import threadpoolctl
        paths = [info["filepath"] for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas"]
    except Exception:  # threadpoolctl cannot inspect this platform: use the NumPy path
        return None
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, integer in _SYMBOLS:
            fn = getattr(library, pattern.format(t=letter), None)
            if fn is None:
                continue
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, real,
                           ctypes.c_void_p, integer, ctypes.c_void_p, integer, real, ctypes.c_void_p, integer]
            fn.restype = None
            if _agrees_with_numpy(fn, dtype):
                return fn
    return None


def _agrees_with_numpy(fn, dtype) -> bool:
    """Does ``fn`` compute ``c[:, :4] = 2 * a[:, :5] @ b[1:5].T + 0.5 * c[:, :4]``, leading
    dimensions wider than the matrices and B transposed, as NumPy does?"""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 7)).astype(dtype)          # (3, 5) used, leading dimension 7
    b = rng.standard_normal((6, 5)).astype(dtype)          # B^T of (5, 4) from rows 1..4
    c = rng.standard_normal((3, 6)).astype(dtype)          # (3, 4) written, leading dimension 6
    expected = c.copy()
    expected[:, :4] = 2 * (a[:, :5] @ b[1:5].T) + 0.5 * c[:, :4]
    fn(ROW_MAJOR, NO_TRANS, TRANS, 3, 4, 5, 2.0, a.ctypes.data, 7, b[1:].ctypes.data, 5, 0.5, c.ctypes.data, 6)
    return bool(np.allclose(c, expected, rtol=1e-5, atol=1e-5))


@njit(cache=True, inline="always")
def gemm(fn, transpose_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """In a Numba kernel: ``c = a @ op(b) + beta * c`` for row-major ``(m, k)`` ``a``, ``(k, n)``
    ``op(b)`` (``b`` itself is ``(n, k)`` when ``transpose_b``) and ``(m, n)`` ``c``, each given
    by an array whose first element is the matrix's and its leading dimension (row stride in
    elements). ``fn`` is ``gemm_function(dtype)``."""
    fn(ROW_MAJOR, NO_TRANS, TRANS if transpose_b else NO_TRANS, m, n, k, 1.0, a.ctypes.data, lda,
       b.ctypes.data, ldb, beta, c.ctypes.data, ldc)
