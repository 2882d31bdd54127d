"""minicnn's hot loops, one dispatch function per kernel.

Each function here looks at its array argument and hands the work to
``cpu`` (Numba, for NumPy arrays) or ``gpu`` (CUDA through CuPy, for CuPy
arrays). ``reference`` holds plain-NumPy versions with the same signatures:
the teaching version, and the oracle the fast ones are tested against.
Shapes and argument conventions are documented in ``reference.py``.
"""
from __future__ import annotations

import math

from minicnn.backend import get_workspace_limit, is_cupy_array

from . import batch_inner, cpu, direct, reference, winograd

__all__ = [
    "im2col", "col2im",
    "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward",
    "depthwise_forward", "depthwise_backward", "batchnorm_forward", "batchnorm_backward",
    "conv_epilogue", "conv_epilogue_backward", "relu_forward", "relu_backward",
    "matmul_nt", "matmul_each", "sum_matmul_nt",
    "winograd_pays", "direct_pays", "batch_inner_pays", "output_hw",
    "reference", "cpu", "winograd", "direct", "batch_inner",
]

output_hw = reference.output_hw


def _impl(x):
    if is_cupy_array(x):
        from . import gpu  # compiled lazily: importing minicnn never needs CUDA
        return gpu
    return cpu


def im2col(x, kernel, stride, padding, dilation=(1, 1), out=None):
    return _impl(x).im2col(x, kernel, stride, padding, dilation, out)


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


def depthwise_forward(x, weight, stride, padding, dilation=(1, 1), bias=None):
    return _impl(x).depthwise_forward(x, weight, stride, padding, dilation, bias)


def depthwise_backward(dy, x, weight, stride, padding, dilation=(1, 1)):
    return _impl(dy).depthwise_backward(dy, x, weight, stride, padding, dilation)


def batchnorm_forward(x, weight, bias, eps):
    return _impl(x).batchnorm_forward(x, weight, bias, eps)


def batchnorm_backward(dy, x, mean, weight, inv_std):
    return _impl(dy).batchnorm_backward(dy, x, mean, weight, inv_std)


def conv_epilogue(z2, bias, out_shape, relu):
    return _impl(z2).conv_epilogue(z2, bias, out_shape, relu)


def conv_epilogue_backward(dy, relu_output=None, out=None, gemm_layout=True):
    return _impl(dy).conv_epilogue_backward(dy, relu_output, out, gemm_layout)


def relu_forward(x):
    return _impl(x).relu_forward(x)


def relu_backward(dy, relu_output):
    return _impl(dy).relu_backward(dy, relu_output)


def matmul(a, b, out=None):
    return _impl(a).matmul(a, b, out)


def matmul_nt(a, b):
    return _impl(a).matmul_nt(a, b)


def matmul_each(a, b, out):
    return _impl(b).matmul_each(a, b, out)


def sum_matmul_nt(a, b):
    return _impl(a).sum_matmul_nt(a, b)


# Winograd F(2x2, 3x3) (``winograd.py``, called as ``kernels.winograd.conv3x3`` etc.): CPU only,
# NumPy arrays only; on the GPU cuBLAS GEMMs on im2col columns are fast enough that the layer
# keeps that path. ``winograd_pays`` is the one place that decides.
WINOGRAD_MIN_CHANNELS = 16
"""Below this many input or output channels the 16 GEMMs are too thin to beat im2col."""
WINOGRAD_MIN_WORK = 2**27
"""... and below this ``N * H * W * C_in * C_out`` the blocks are too small. Measured, forward +
backward with ReLU (2 cores): L3 and L4 (2^28) 22-45 % faster than im2col. Below it the
answer depends on the plane (eighth session, Winograd's time / im2col's, per round): at 2^25
(VGG-mini's layers at batch 32) 0.81-0.86 for a 32x32 output of 32 channels, 0.91 for 16x16
of 64, 1.85 for 8x8 of 128; at 2^24 1.11 (32x32) and 1.48-1.50 (16x16, 8x8). A rule "from
2^25 for outputs of 16 and up" left the VGG-mini step (batch 32) where it was (0.95-1.10 of
its time, noise), so it was not adopted (docs/benchmarks.md)."""
WINOGRAD_MIN_OUTPUT = 8
"""... and the output at least this high and wide: on small planes the transforms' per-plane
work outweighs the saved multiplications, however large the batch. Measured (layer forward +
backward, 8 interleaved rounds, 2 cores; Winograd's time / the im2col path's, per round):
8x8 outputs, 128 channels, batch 256 / 128: 0.77 / 0.84; 8x8, 64 channels, batch 512: 0.76;
12x12, 128 channels, batch 128: 0.70; 4x4, 256 channels, batch 256: 1.00. (The sixth session
had measured 8x8 and 12x12 slower, 1.06-1.25, and set 16; since then the filter transforms
got 10-30x cheaper and the blocks 4x larger.)"""


def winograd_pays(x, weight_shape, stride, padding, dilation=(1, 1)) -> bool:
    """Should a convolution of ``x`` by a ``weight_shape`` filter run through Winograd?

    Yes for NumPy input, 3x3 kernels at stride 1 without dilation, pads 0..2, at least
    ``WINOGRAD_MIN_CHANNELS`` input and output channels, ``WINOGRAD_MIN_WORK``, and an
    output of at least ``WINOGRAD_MIN_OUTPUT`` x ``WINOGRAD_MIN_OUTPUT``.
    """
    c_out, c_in = weight_shape[:2]
    work = x.shape[0] * x.shape[2] * x.shape[3] * c_in * c_out
    if is_cupy_array(x) or min(c_in, c_out) < WINOGRAD_MIN_CHANNELS or work < WINOGRAD_MIN_WORK:
        return False
    if not winograd.applies(weight_shape[2:], stride, padding, dilation):
        return False
    return min(output_hw(x.shape, weight_shape[2:], stride, padding, dilation)) >= WINOGRAD_MIN_OUTPUT



# Direct convolution (``direct.py``, called as ``kernels.direct.conv`` etc.): CPU only, for
# stride-1 layers whose filters see few inputs, where im2col's columns (kh*kw times the input)
# and 6-row GEMMs cost more than the arithmetic. ``direct_pays`` is the one place that decides.
DIRECT_MAX_TAPS = 25
"""At most this many taps per filter (``C_in * kh * kw``): LeNet-5's conv1 (1 x 5 x 5, step
10-20 % faster). VGG-mini's first layer (3 x 3 x 3 = 27) measured the same either way, LeNet-5's
conv2 (150) slower (docs/benchmarks.md)."""


def direct_pays(x, weight_shape, stride, padding, dilation=(1, 1)) -> bool:
    """Should a convolution of ``x`` by a ``weight_shape`` filter run through ``direct.conv``?

    Yes for NumPy input at stride 1 without dilation, pads at most ``k - 1``, and filters of
    at most ``DIRECT_MAX_TAPS`` taps.
    """
    _, c_in, kh, kw = weight_shape
    return (not is_cupy_array(x) and c_in * kh * kw <= DIRECT_MAX_TAPS
            and direct.applies((kh, kw), stride, padding, dilation))


# im2col with the batch innermost (``batch_inner.py``, called as ``kernels.batch_inner.conv``
# etc.): CPU only. Its columns make every im2col copy and col2im sum ``Wo*16`` values long
# instead of ``Wo``, at the price of transposing the input, the output and both gradients
# (16 samples at a time). ``batch_inner_pays`` decides for the convolutions that take neither
# Winograd nor the direct path.
BATCH_INNER_MAX_WIDTH = 16
"""Up to this output width. Wider rows are long enough already: a 32x32 output of 32 channels
from 3 (batch 32) took 5.1 ms forward + backward this way against 4.1 ms through im2col."""
BATCH_INNER_MIN_BATCH = 4
"""From this batch size on: with fewer samples the rows are hardly longer and the transposes
cost as much as they save (0.56 against 0.55 ms at batch 1, 16x16 from 32 to 64 channels)."""


def batch_inner_pays(x, weight_shape, stride, padding, dilation=(1, 1)) -> bool:
    """Should a CPU convolution of ``x`` through im2col order its columns batch-innermost?

    Yes for NumPy input of at least ``BATCH_INNER_MIN_BATCH`` samples whose output is at most
    ``BATCH_INNER_MAX_WIDTH`` wide (measured: docs/benchmarks.md), as long as the columns of
    one block of samples fit in the workspace limit (the sample-major path can go down to
    one sample per chunk).
    """
    ho, wo = output_hw(x.shape, weight_shape[2:], stride, padding, dilation)
    block_bytes = math.prod(weight_shape[1:]) * ho * wo * x.itemsize * min(x.shape[0], batch_inner.BATCH_BLOCK)
    return (not is_cupy_array(x) and x.shape[0] >= BATCH_INNER_MIN_BATCH and wo <= BATCH_INNER_MAX_WIDTH
            and block_bytes <= get_workspace_limit())
