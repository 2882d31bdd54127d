"""``kernels.blas``: NumPy's own ``cblas_?gemm`` called from a Numba kernel, against ``numpy.matmul``
(float64 products computed by NumPy, an independent call path)."""
from __future__ import annotations

import numpy as np
import pytest
import threadpoolctl
from numba import njit

from minicnn.kernels import blas


def _numpy_blas_is_openblas64() -> bool:
    """Does NumPy use one of the OpenBLAS builds ``kernels.blas`` knows (PyPI's wheels do)?"""
    import numpy

    for info in threadpoolctl.threadpool_info():
        if info.get("internal_api") == "openblas" and "64_" in info["filepath"]:
            if info["filepath"].startswith(str(numpy.__file__).rsplit("/", 2)[0]):
                return True
    return False


@njit(cache=True)
def _product(fn, transpose_b, a, b, beta, c):
    """``c[:m, :n] = a[:m, :k] @ op(b) + beta * c`` on the leading parts of wider arrays."""
    m, n = c.shape[0], c.shape[1] - 1      # one spare column: the leading dimension is wider
    k = a.shape[1] - 2
    blas.gemm(fn, transpose_b, m, n, k, a, a.shape[1], b, b.shape[1], beta, c, c.shape[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_matches_numpy(dtype, transpose_b, beta):
    fn = blas.gemm_function(dtype)
    if fn is None:
        pytest.skip("NumPy's BLAS is not a 64-bit-integer OpenBLAS that kernels.blas can call")
    rng = np.random.default_rng(0)
    m, n, k = 7, 5, 9
    a = rng.standard_normal((m, k + 2)).astype(dtype)
    b = rng.standard_normal((n, k + 3) if transpose_b else (k, n + 4)).astype(dtype)
    c = rng.standard_normal((m, n + 1)).astype(dtype)
    op_b = b[:, :k].T if transpose_b else b[:, :n]
    expected = c.astype(np.float64)
    expected[:, :n] = a[:, :k].astype(np.float64) @ op_b.astype(np.float64) + beta * expected[:, :n]
    _product(fn, transpose_b, a, b, beta, c)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol)
    assert c[:, n].tolist() == pytest.approx(expected[:, n].tolist(), abs=0)  # the spare column untouched


def test_found_where_numpy_ships_openblas64():
    if not _numpy_blas_is_openblas64():
        pytest.skip("NumPy here does not use PyPI's 64-bit-integer OpenBLAS")
    assert blas.gemm_function(np.float32) is not None
    assert blas.gemm_function(np.float64) is not None


def test_other_dtypes_have_none():
    assert blas.gemm_function(np.float16) is None
    assert blas.gemm_function(np.int64) is None


def test_a_function_that_disagrees_is_refused():
    """The self-check: a 'gemm' that does nothing fails it."""
    class DoesNothing:
        def __call__(self, *args):
            return None

    assert not blas._agrees_with_numpy(DoesNothing(), np.dtype(np.float32))
