"""The CUDA kernels, checked on machines without a GPU.

Two independent checks of ``kernels/cuda_kernels.cu``:

* ``nvcc`` compiles it for a Hopper GPU (sm_90) in float32 and float64, so a
  syntax or type error shows up in CI, not first on the GPU machine.
* The same source is compiled as plain C++ with a tiny shim (one "thread" that
  walks the whole grid-stride loop, ``atomicAdd`` as ``+=``) and loaded with
  ctypes. ``kernels.gpu``'s wrappers then run on NumPy arrays with that build in
  place of CUDA, and must match ``kernels.reference``: this checks every index
  computation and every argument the wrappers pass, all but the CUDA runtime.

The real-GPU tests live in ``tests/gpu`` (marked ``gpu``).
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from minicnn.kernels import gpu, reference

SHIM = r"""
struct minicnn_dim { unsigned x; };
static const minicnn_dim blockIdx = {0}, blockDim = {1}, threadIdx = {0}, gridDim = {1};
#define __global__
template <class U> static U atomicAdd(U* address, U value) { U old = *address; *address += value; return old; }
"""


def _compile_cpu_build(tmp_dir, ctype):
    shim = tmp_dir / "shim.h"
    shim.write_text(SHIM)
    lib = tmp_dir / f"kernels_{ctype}.so"
    subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-x", "c++", f"-DMINICNN_REAL={ctype}",
                    "-include", str(shim), str(gpu.SOURCE_PATH), "-o", str(lib)],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def emulated_gpu(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: cannot build the CUDA source for the CPU")
    tmp_dir = tmp_path_factory.mktemp("cuda_emulation")
    libs = {np.dtype(np.float32): _compile_cpu_build(tmp_dir, "float"),
            np.dtype(np.float64): _compile_cpu_build(tmp_dir, "double")}

    def launch(name, total, dtype, *args):
        converted = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                assert arg.flags.c_contiguous, f"{name}: non-contiguous argument"
                converted.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                converted.append(ctypes.c_int(int(arg)))
        getattr(libs[np.dtype(dtype)], name)(*converted)

    patch = pytest.MonkeyPatch()
    patch.setattr(gpu, "_xp", lambda: np)
    patch.setattr(gpu, "_launch", launch)
    yield gpu
    patch.undo()


GEOMETRIES = [
    # (N, C, H, W), kernel, stride, padding (top, bottom, left, right), dilation
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 2, 9, 8), (3, 2), (2, 3), (0, 1, 2, 0), (1, 1)),
    ((2, 1, 10, 9), (3, 3), (2, 2), (2, 2, 1, 2), (2, 3)),
    ((3, 4, 5, 5), (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    ((1, 3, 6, 7), (1, 1), (1, 2), (0, 0, 0, 0), (1, 1)),
]


def _close(actual, expected, dtype):
    """Same numbers up to summation order: float32 to 1e-5, float64 to 1e-12."""
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


def _tie_free(shape, dtype, seed=0):
    return np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", GEOMETRIES)
def test_im2col_col2im_match_reference(emulated_gpu, shape, kernel, stride, padding, dilation, dtype):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    cols = emulated_gpu.im2col(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(cols, reference.im2col(x, kernel, stride, padding, dilation))
    dcols = np.random.default_rng(2).standard_normal(cols.shape).astype(dtype)
    _close(emulated_gpu.col2im(dcols, shape, kernel, stride, padding, dilation),
           reference.col2im(dcols, shape, kernel, stride, padding, dilation), dtype)


POOLS = [((2, 3, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0)),
         ((1, 2, 7, 9), (3, 3), (2, 2), (1, 1, 1, 1)),
         ((2, 1, 6, 5), (3, 2), (1, 1), (1, 1, 0, 1)),
         ((1, 2, 9, 9), (3, 3), (3, 2), (0, 0, 1, 1))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding", POOLS)
def test_pooling_matches_reference(emulated_gpu, shape, kernel, stride, padding, dtype):
    x = -1 - _tie_free(shape, dtype)  # all negative: a padded zero must never win the max
    y, argmax = emulated_gpu.maxpool_forward(x, kernel, stride, padding)
    y_ref, argmax_ref = reference.maxpool_forward(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    _close(emulated_gpu.maxpool_backward(dy, argmax, shape),
           reference.maxpool_backward(dy, argmax_ref, shape), dtype)
    _close(emulated_gpu.avgpool_forward(x, kernel, stride, padding),
           reference.avgpool_forward(x, kernel, stride, padding), dtype)
    _close(emulated_gpu.avgpool_backward(dy, shape, kernel, stride, padding),
           reference.avgpool_backward(dy, shape, kernel, stride, padding), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", GEOMETRIES)
def test_depthwise_matches_reference(emulated_gpu, shape, kernel, stride, padding, dilation,
                                     multiplier, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal((shape[1] * multiplier, 1) + kernel).astype(dtype)
    bias = rng.standard_normal(weight.shape[0]).astype(dtype)
    y = emulated_gpu.depthwise_forward(x, weight, stride, padding, dilation)
    _close(y, reference.depthwise_forward(x, weight, stride, padding, dilation), dtype)
    _close(emulated_gpu.depthwise_forward(x, weight, stride, padding, dilation, bias=bias),
           reference.depthwise_forward(x, weight, stride, padding, dilation, bias=bias), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dweight, dbias = emulated_gpu.depthwise_backward(dy, x, weight, stride, padding, dilation)
    dx_ref, dweight_ref, dbias_ref = reference.depthwise_backward(dy, x, weight, stride, padding, dilation)
    _close(dx, dx_ref, dtype)
    _close(dweight, dweight_ref, dtype)
    _close(dbias, dbias_ref, dtype)


@pytest.mark.parametrize("gemm_layout", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_conv_epilogue_backward_matches_reference(emulated_gpu, relu, gemm_layout):
    rng = np.random.default_rng(5)
    dy = rng.standard_normal((2, 3, 4, 5))
    y = np.maximum(rng.standard_normal(dy.shape), 0) if relu else None
    dz, dbias = emulated_gpu.conv_epilogue_backward(dy, y, gemm_layout=gemm_layout)
    dz_ref, dbias_ref = reference.conv_epilogue_backward(dy, y, gemm_layout=gemm_layout)
    assert dz.shape == ((3, 40) if gemm_layout else dy.shape)
    np.testing.assert_array_equal(dz, dz_ref)
    np.testing.assert_allclose(dbias, dbias_ref, rtol=1e-12)


@pytest.mark.parametrize("ctype", ["float", "double"])
def test_cuda_source_compiles_with_nvcc(tmp_path, ctype):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    result = subprocess.run(["nvcc", "-arch=sm_90", f"-DMINICNN_REAL={ctype}", "-c",
                             str(gpu.SOURCE_PATH), "-o", str(tmp_path / "kernels.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
