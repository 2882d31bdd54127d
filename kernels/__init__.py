"""minicnn's hot loops, one dispatch function per kernel.

Each function here looks at its array argument and hands the work to
``cpu`` (Numba, for NumPy arrays) or ``gpu`` (CUDA through CuPy, for CuPy
arrays). ``reference`` holds plain-NumPy versions with the same signatures:
the teaching version, and the oracle the fast ones are tested against.
Shapes and argument conventions are documented in ``reference.py``.
"""
from __future__ import annotations

from minicnn.backend import is_cupy_array

from . import cpu, reference

__all__ = [
    "im2col", "col2im",
    "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward",
    "depthwise_forward", "depthwise_backward", "batchnorm_forward", "batchnorm_backward",
    "conv_epilogue", "conv_epilogue_backward", "output_hw", "reference", "cpu",
]

output_hw = reference.output_hw


def _impl(x):
    if is_cupy_array(x):
        from . import gpu  # compiled lazily: importing minicnn never needs CUDA
        return gpu
    return cpu


def im2col(x, kernel, stride, padding, dilation=(1, 1)):
    return _impl(x).im2col(x, kernel, stride, padding, dilation)


def col2im(cols, x_shape, kernel, stride, padding, dilation=(1, 1)):
    return _impl(cols).col2im(cols, x_shape, kernel, stride, padding, dilation)


def maxpool_forward(x, kernel, stride, padding):
    return _impl(x).maxpool_forward(x, kernel, stride, padding)


def maxpool_backward(dy, argmax, x_shape):
    return _impl(dy).maxpool_backward(dy, argmax, x_shape)


def avgpool_forward(x, kernel, stride, padding):
    return _impl(x).avgpool_forward(x, kernel, stride, padding)


def avgpool_backward(dy, x_shape, kernel, stride, padding):
    return _impl(dy).avgpool_backward(dy, x_shape, kernel, stride, padding)


def depthwise_forward(x, weight, stride, padding, dilation=(1, 1)):
    return _impl(x).depthwise_forward(x, weight, stride, padding, dilation)


def depthwise_backward(dy, x, weight, stride, padding, dilation=(1, 1)):
    return _impl(dy).depthwise_backward(dy, x, weight, stride, padding, dilation)


def batchnorm_forward(x, weight, bias, eps):
    return _impl(x).batchnorm_forward(x, weight, bias, eps)


def batchnorm_backward(dy, x, mean, weight, inv_std):
    return _impl(dy).batchnorm_backward(dy, x, mean, weight, inv_std)


def conv_epilogue(z2, bias, out_shape, relu):
    return _impl(z2).conv_epilogue(z2, bias, out_shape, relu)


def conv_epilogue_backward(dy, relu_output=None):
    return _impl(dy).conv_epilogue_backward(dy, relu_output)
