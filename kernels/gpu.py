"""CUDA kernels through CuPy, same signatures and results as ``reference.py``.

The CUDA source lives in ``cuda_kernels.cu`` beside this file; it is compiled
once per dtype (float32, float64) with ``cupy.RawModule`` and memoised, so no
call ever recompiles. GEMMs are not here: the layers call ``xp.matmul``, which
CuPy hands to cuBLAS.

Every function allocates its output with CuPy and launches one kernel (two for
the depthwise backward); batch norm is the exception, written with CuPy's own
reductions and element-wise operations, each already one GPU kernel. Arrays
never leave the GPU. ``_launch`` is the only place that talks to CUDA: tests
swap it for a C++ build of the same source running on the CPU, to check the
index arithmetic on machines without a GPU.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from minicnn import backend

from .reference import _into, check_out, output_hw

# Batch norm on the GPU is the reference's maths itself, run on CuPy arrays (it uses array
# methods only): its reductions are bandwidth-bound and CuPy's kernels are already fast there.
from .reference import batchnorm_backward, batchnorm_forward  # noqa: E402,F401
from .reference import matmul, matmul_each, matmul_nt, sum_matmul_nt  # noqa: E402,F401  (cuBLAS through CuPy)

__all__ = [
    "im2col", "col2im", "maxpool_forward", "maxpool_backward",
    "avgpool_forward", "avgpool_backward", "depthwise_forward", "depthwise_backward",
    "batchnorm_forward", "batchnorm_backward", "conv_epilogue", "conv_epilogue_backward", "matmul", "matmul_nt",
    "matmul_each", "sum_matmul_nt", "SOURCE_PATH",
]

SOURCE_PATH = Path(__file__).with_name("cuda_kernels.cu")
_THREADS = 256
_MAX_BLOCKS = 65535 * 32   # grid-stride loops cover any remainder
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def _xp():
    """CuPy itself (the module), asked of the backend so CuPy is imported in one place."""
    return backend.require_cupy()


@functools.lru_cache(maxsize=None)
def _module(dtype: np.dtype):
    if dtype not in _CTYPES:
        raise TypeError(f"minicnn GPU kernels support float32 and float64, got {dtype}")
    cupy = backend.require_cupy()
    return cupy.RawModule(code=SOURCE_PATH.read_text(), options=(f"-DMINICNN_REAL={_CTYPES[dtype]}",))


def _launch(name: str, total: int, dtype, *args) -> None:
    """Run kernel ``name`` with one thread per element of ``total`` (grid-stride)."""
    kernel = _module(np.dtype(dtype)).get_function(name)
    blocks = max(1, min((total + _THREADS - 1) // _THREADS, _MAX_BLOCKS))
    kernel((blocks,), (_THREADS,), tuple(np.int32(a) if isinstance(a, (int, np.integer)) else a
                                         for a in args))


def _contiguous(x):
    return _xp().ascontiguousarray(x)


def im2col(x, kernel, stride, padding, dilation, out=None):
    x = _contiguous(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (pt, _, pl, _), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = output_hw(x.shape, kernel, stride, padding, dilation)
    shape = (c * kh * kw, n * ho * wo)
    check_out(out, shape, x.dtype, "im2col")
    cols = _xp().empty(shape, dtype=x.dtype) if out is None else out
    _launch("im2col", cols.size, x.dtype, x, cols, n, c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
    return cols


def col2im(cols, x_shape, kernel, stride, padding, dilation):
    cols = _contiguous(cols)
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (pt, _, pl, _), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = output_hw(x_shape, kernel, stride, padding, dilation)
    x = _xp().empty(tuple(x_shape), dtype=cols.dtype)
    _launch("col2im", x.size, cols.dtype, cols, x, n, c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
    return x


def maxpool_forward(x, kernel, stride, padding):
    x = _contiguous(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (pt, _, pl, _) = kernel, stride, padding
    ho, wo = output_hw(x.shape, kernel, stride, padding)
    y = _xp().empty((n, c, ho, wo), dtype=x.dtype)
    argmax = _xp().empty((n, c, ho, wo), dtype=np.int64)
    _launch("maxpool_forward", y.size, x.dtype, x, y, argmax, n, c, h, w, kh, kw, sh, sw, pt, pl, ho, wo)
    return y, argmax


def maxpool_backward(dy, argmax, x_shape):
    dy, argmax = _contiguous(dy), _contiguous(argmax)
    n, c, h, w = x_shape
    dx = _xp().zeros(tuple(x_shape), dtype=dy.dtype)
    _launch("maxpool_backward", dy.size, dy.dtype, dy, argmax, dx, n, c, h, w, dy.shape[2], dy.shape[3])
    return dx


def avgpool_forward(x, kernel, stride, padding):
    x = _contiguous(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (pt, _, pl, _) = kernel, stride, padding
    ho, wo = output_hw(x.shape, kernel, stride, padding)
    y = _xp().empty((n, c, ho, wo), dtype=x.dtype)
    _launch("avgpool_forward", y.size, x.dtype, x, y, n, c, h, w, kh, kw, sh, sw, pt, pl, ho, wo)
    return y


def avgpool_backward(dy, x_shape, kernel, stride, padding):
    dy = _contiguous(dy)
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (pt, _, pl, _) = kernel, stride, padding
    dx = _xp().empty(tuple(x_shape), dtype=dy.dtype)
    _launch("avgpool_backward", dx.size, dy.dtype, dy, dx, n, c, h, w, kh, kw, sh, sw, pt, pl,
            dy.shape[2], dy.shape[3])
    return dx


def depthwise_forward(x, weight, stride, padding, dilation, bias=None):
    x, weight = _contiguous(x), _contiguous(weight)
    n, c, h, w = x.shape
    m, (kh, kw) = weight.shape[0] // c, weight.shape[2:]
    (sh, sw), (pt, _, pl, _), (dh, dw) = stride, padding, dilation
    ho, wo = output_hw(x.shape, (kh, kw), stride, padding, dilation)
    y = _xp().empty((n, c * m, ho, wo), dtype=x.dtype)
    _launch("depthwise_forward", y.size, x.dtype, x, weight, y, n, c, h, w, m, kh, kw,
            sh, sw, pt, pl, dh, dw, ho, wo)
    if bias is not None:
        y += bias[:, None, None]
    return y


def depthwise_backward(dy, x, weight, stride, padding, dilation):
    dy, x, weight = _contiguous(dy), _contiguous(x), _contiguous(weight)
    n, c, h, w = x.shape
    m, (kh, kw) = weight.shape[0] // c, weight.shape[2:]
    (sh, sw), (pt, _, pl, _), (dh, dw) = stride, padding, dilation
    ho, wo = dy.shape[2:]
    geometry = (n, c, h, w, m, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
    dx = _xp().empty(x.shape, dtype=dy.dtype)
    _launch("depthwise_backward_input", dx.size, dy.dtype, dy, weight, dx, *geometry)
    partial = _xp().empty((n,) + tuple(weight.shape), dtype=dy.dtype)
    _launch("depthwise_backward_weight", partial.size, dy.dtype, dy, x, partial, *geometry)
    return dx, partial.sum(axis=0), dy.sum(axis=(0, 2, 3))


# The conv epilogue and its adjoint are CuPy array code: a transpose, a broadcast add and a
# maximum are each one bandwidth-bound kernel, which is all they are on the GPU too.
def conv_epilogue(z2, bias, out_shape, relu):
    n, c, ho, wo = out_shape
    y = _contiguous(z2.reshape(c, n, ho, wo).transpose(1, 0, 2, 3))
    if bias is not None:
        y += bias[:, None, None]
    if relu:
        _xp().maximum(y, 0, out=y)
    return y


def conv_epilogue_backward(dy, relu_output=None, out=None, gemm_layout=True):
    dz = dy if relu_output is None else dy * (relu_output > 0)
    dz2 = _contiguous(dz.transpose(1, 0, 2, 3)).reshape(dy.shape[1], -1) if gemm_layout else _contiguous(dz)
    return _into(out, dz2), dz.sum(axis=(0, 2, 3))


# ReLU: one elementwise CuPy kernel each way (bandwidth-bound, as on the CPU).
def relu_forward(x):
    return _xp().maximum(x, 0)


def relu_backward(dy, relu_output):
    xp = _xp()
    return xp.where(relu_output > 0, dy, xp.zeros((), dtype=xp.result_type(dy, relu_output)))
