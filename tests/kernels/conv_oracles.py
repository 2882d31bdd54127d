"""Float64 im2col + GEMM oracles for the convolution kernels' tests (``test_direct``,
``test_batch_inner``): ``kernels.reference``'s strided-window im2col and col2im with NumPy
GEMMs, an algorithm independent of the kernels under test."""
from __future__ import annotations

import numpy as np

from minicnn.kernels import reference

UNIT = (1, 1)


def conv_data(x_shape, c_out, kernel, dtype, seed=0):
    """``(x, weight, bias)`` of standard-normal values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal((c_out, x_shape[1], *kernel)).astype(dtype)
    return x, weight, rng.standard_normal(c_out).astype(dtype)


def im2col_conv(x, weight, padding, stride=UNIT, dilation=UNIT):
    """float64 ``W2 @ im2col(x)`` as (N, C_out, Ho, Wo), no bias."""
    x, weight = x.astype(np.float64), weight.astype(np.float64)
    kernel = weight.shape[2:]
    ho, wo = reference.output_hw(x.shape, kernel, stride, padding, dilation)
    y = weight.reshape(weight.shape[0], -1) @ reference.im2col(x, kernel, stride, padding, dilation)
    return y.reshape(weight.shape[0], x.shape[0], ho, wo).transpose(1, 0, 2, 3)


def im2col_grads(dz, x, weight, padding, stride=UNIT, dilation=UNIT):
    """float64 ``(dx, dW, db)``: ``col2im(W2.T @ dz2)``, ``dz2 @ im2col(x).T``, ``sum(dz)``."""
    kernel, c_out = weight.shape[2:], weight.shape[0]
    dz2 = dz.astype(np.float64).transpose(1, 0, 2, 3).reshape(c_out, -1)
    cols = reference.im2col(x.astype(np.float64), kernel, stride, padding, dilation)
    dx = reference.col2im(weight.astype(np.float64).reshape(c_out, -1).T @ dz2, x.shape, kernel, stride,
                          padding, dilation)
    return dx, (dz2 @ cols.T).reshape(weight.shape), dz2.sum(axis=1)


def assert_matches(actual, expected, dtype):
    """float64 to 1e-10 relative; float32 to 1e-4 plus an atol scaled by the result's size."""
    assert actual.dtype == dtype and actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    tol = dict(rtol=1e-10, atol=1e-12 * scale) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(actual, expected, **tol)
