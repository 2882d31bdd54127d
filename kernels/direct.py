"""Direct convolution for stride-1 layers with few input channels, for the CPU.

Why not im2col here
-------------------
A first layer such as LeNet-5's (1 input channel, 6 filters of 5x5) makes a column matrix
of ``25 x N*H*W``: 25 times the input, written once and read twice, for GEMMs of 6 rows
that OpenBLAS runs far below its peak. The arithmetic is small (150 multiply-adds per
output pixel), so the memory traffic and the thin GEMMs are most of the layer's time.
Computed directly, each sample's input and output planes stay in L1 cache.

The padded-width grid
---------------------
Each input plane is copied once, zero-padded, into rows of width ``Wp = W + left + right``.
An output row ``i`` then reads, for filter row ``p``, the input row ``i + p`` starting at
column ``q``; laid end to end over all rows, output position ``i*Wp + j`` reads input
position ``(i + p)*Wp + j + q``: one contiguous stream per tap, for the whole plane::

    acc[i*Wp + j] += W[o, c, p, q] * x_pad[c, (i + p)*Wp + j + q]     for every i, j at once

which is a unit-stride loop of ``Ho*Wp`` iterations that LLVM vectorises. The last
``Wp - Wo`` columns of every grid row are garbage (they straddle the row end) and are never
stored. A whole filter row (``kw`` taps) goes into one statement, so each ``acc`` element is
loaded and stored once per row instead of once per tap.

The gradients
-------------
Weight gradient: the same grid read the other way round, one dot product per tap over the
sample's plane (the output gradient is laid on the grid with zeros in the garbage
columns)::

    dW[o, c, p, q] = sum_n sum_{i,j} dz[n, o, i*Wp + j] * x_pad[n, c, (i + p)*Wp + j + q]

Input gradient: a direct convolution of ``dz`` padded by ``k - 1 - pad`` with the filter
flipped in both spatial axes and its channel axes swapped (as
``winograd.conv3x3_input_grad`` derives), so the forward core computes it too.

Measured on LeNet-5's conv1 (batch 128, 2 cores; ``docs/benchmarks.md``): forward 0.7-0.8 ms
against 1.5-2.5 for im2col + GEMM + epilogue, weight gradient 0.8-1.4 ms against 1.65-2.4, the
training step 10-20 % faster. These loops reach about one vector FMA per cycle, a fifth of a
core's peak, so BLAS wins once a filter has many taps (LeNet-5's conv2, 150 taps).

One difference from im2col: the weight gradient multiplies the zeros of ``dz``'s garbage
columns by real input pixels, so an Inf or NaN in ``x`` also turns taps NaN that an exact sum
would leave finite (its forward output, and so the loss, is not finite either).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from minicnn.backend import scratch

from .cpu import _add_row, _kernel, _row_dots, _unsigned, grid_applies
from .reference import check_conv_operands

__all__ = ["applies", "conv", "conv_backward"]

# Multiply-adds count more than bytes here: a LeNet-5 conv1 call touches 3 MB (serial by the
# byte rule of cpu.PARALLEL_MIN_BYTES) but does 15 M multiply-adds, enough to pay for waking
# the second thread.
_WORK_SCALE = 16


def applies(kernel, stride, padding, dilation) -> bool:
    """True when ``conv`` computes this convolution: stride 1, no dilation, each pad <= k - 1
    (so the input gradient's padding ``k - 1 - pad`` is not negative).

    ``padding`` is ``(top, bottom, left, right)``. (The stride-1 depthwise cores in ``cpu.py``
    use the same grid and the same rule.)
    """
    return grid_applies(kernel, stride, padding, dilation)


# ---------------------------------------------------------------- Numba cores
@_kernel(fastmath={"contract"})
def _forward(xf, plane, wp, weight, bias, y, relu):
    """``y[b, o] = act(bias[o] + sum_{c,p,q} weight[o, c, p, q] * x_pad[b, c, i + p, j + q])``;
    ``x_pad[b, c]`` is the plane at ``xf[(b*C_in + c)*plane]``, rows ``wp`` wide."""
    n, c_out, ho, wo = y.shape
    c_in, kh = weight.shape[1], weight.shape[2]
    length = ho * wp
    yf = y.reshape(-1)
    for b in prange(n):  # one sample each: its own planes of y
        acc = np.empty(length, dtype=y.dtype)  # one output plane on the grid, in L1
        for o in range(c_out):
            for c in range(c_in):
                for p in range(kh):
                    _add_row(acc, xf, (b * c_in + c) * plane + p * wp, length, weight[o, c, p],
                             c == 0 and p == 0, bias[o])
            dst = (b * c_out + o) * ho * wo  # store the valid columns: act(acc)
            for i in range(ho):
                if relu:
                    for j in range(wo):
                        v = acc[_unsigned(i * wp + j)]
                        yf[_unsigned(dst + i * wo + j)] = 0 if v <= 0 else v  # NaN stays NaN
                else:
                    for j in range(wo):
                        yf[_unsigned(dst + i * wo + j)] = acc[_unsigned(i * wp + j)]


@_kernel(fastmath={"reassoc", "contract"})  # reassoc: vectorised dot products
def _weight_grad(dy, relu_output, relu, xf, plane, wp, dweight_partial, dbias_partial):
    """Per sample ``b``, with ``dz = dy * [relu_output > 0]`` if ``relu`` else ``dy``:
    ``dweight_partial[b, o, c, p, q] = sum_{i,j} dz[b, o, i, j] * x_pad[b, c, i + p, j + q]``
    and ``dbias_partial[b, o] = sum_{i,j} dz[b, o, i, j]`` (float64)."""
    n, c_out, ho, wo = dy.shape
    c_in, kh = dweight_partial.shape[2], dweight_partial.shape[3]
    length = ho * wp
    dyf, mf = dy.reshape(-1), relu_output.reshape(-1)
    for b in prange(n):  # one sample each: its own partial sums
        grid = np.zeros(length, dtype=dy.dtype)  # dz's plane on the grid; garbage columns stay 0
        zero = grid[0]
        for o in range(c_out):
            src, total = (b * c_out + o) * ho * wo, 0.0
            for i in range(ho):
                for j in range(wo):
                    k = _unsigned(src + i * wo + j)
                    v = dyf[k] if not relu or mf[k] > 0 else 0  # ReLU's mask: NaN outputs pass nothing
                    grid[_unsigned(i * wp + j)] = v
                    total += v
            dbias_partial[b, o] = total
            for c in range(c_in):
                for p in range(kh):
                    _row_dots(grid, xf, (b * c_in + c) * plane + p * wp, length, dweight_partial[b, o, c, p],
                              zero)


# ---------------------------------------------------------------- helpers
def _padded_planes(x, pads, kw, slot):
    """``(flat, plane, wp)``: ``x`` zero-padded by ``pads`` (top, bottom, left, right) as flat
    planes of ``plane`` elements with rows ``wp`` wide, plus ``kw`` zeros at the end (the
    last plane's garbage columns read up to ``kw - 1`` past it). Lives in scratch ``slot``."""
    n, c, h, w = x.shape
    pt, pb, pl, pr = pads
    hp, wp = h + pt + pb, w + pl + pr
    flat = scratch(slot, (n * c * hp * wp + kw,), x.dtype)
    flat[...] = 0
    flat[:n * c * hp * wp].reshape(n, c, hp, wp)[:, :, pt:pt + h, pl:pl + w] = x
    return flat, hp * wp, wp


def _check(x, weight, padding, owner):
    check_conv_operands(x, weight, owner)
    pads = tuple(int(p) for p in padding)
    if not applies(weight.shape[2:], (1, 1), pads, (1, 1)):
        raise ValueError(f"{owner} expected padding (top, bottom, left, right) each in 0..k-1 for a "
                         f"{weight.shape[2]}x{weight.shape[3]} kernel, got {padding!r}")
    return np.ascontiguousarray(x), np.ascontiguousarray(weight, dtype=x.dtype), pads


# ---------------------------------------------------------------- public functions
def conv(x, weight, padding, bias=None, relu=False):
    """Stride-1 cross-correlation of zero-padded ``x`` (N, C_in, H, W) by ``weight``
    (C_out, C_in, kh, kw): ``y`` (N, C_out, H + top + bottom - kh + 1, W + left + right - kw + 1)::

        y[n, o, i, j] = act(bias[o] + sum_{c,p,q} weight[o, c, p, q] * x_pad[n, c, i + p, j + q])

    ``act`` is ReLU when ``relu`` is set, else the identity; ``bias`` may be ``None``.
    ``padding`` is ``(top, bottom, left, right)``, each pad at most ``k - 1``.
    """
    x, weight, pads = _check(x, weight, padding, "direct.conv")
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = h + pads[0] + pads[1] - kh + 1, w + pads[2] + pads[3] - kw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"direct.conv expected an output of at least 1x1, got {ho}x{wo} "
                         f"(input shape {x.shape}, kernel {kh}x{kw}, padding {padding!r})")
    bias = np.zeros(c_out, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    flat, plane, wp = _padded_planes(x, pads, kw, "direct.x")
    y = np.empty((n, c_out, ho, wo), dtype=x.dtype)
    _forward(_WORK_SCALE * (flat.nbytes + y.nbytes), flat, plane, wp, weight, bias, y, bool(relu))
    return y


def conv_backward(dy, x, weight, padding, relu_output=None, input_grad=True):
    """``(dx, dweight, dbias)`` of ``conv`` from ``dy = dL/dy`` (N, C_out, Ho, Wo); ``dx`` is
    ``None`` when ``input_grad`` is false. With ``relu_output`` (the ``y`` of ``conv(...,
    relu=True)``) the gradient goes back through the ReLU first: ``dz = dy * [y > 0]``;
    without it ``dz = dy``.

    ``dweight`` and ``dbias`` sum per-sample float32 (or float64) partial sums in float64.
    ``dx`` is ``conv(dz, weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), k - 1 - padding)``:
    each padded input pixel collects the outputs that read it (``winograd.conv3x3_input_grad``
    derives it).
    """
    x, weight, pads = _check(x, weight, padding, "direct.conv_backward")
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    expected = (n, c_out, h + pads[0] + pads[1] - kh + 1, w + pads[2] + pads[3] - kw + 1)
    for name, a in (("dy", dy), ("relu_output", dy if relu_output is None else relu_output)):
        if not isinstance(a, np.ndarray) or a.shape != expected:
            raise ValueError(f"direct.conv_backward expected {name} of shape {expected} for x of shape "
                             f"{x.shape}, weight shape {weight.shape} and padding {padding!r}, got "
                             f"{getattr(a, 'shape', type(a).__name__)}")
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    relu = relu_output is not None
    mask = np.ascontiguousarray(relu_output, dtype=x.dtype) if relu else dy
    flat, plane, wp = _padded_planes(x, pads, kw, "direct.x")
    dweight_partial = np.empty((n, c_out, c_in, kh, kw), dtype=x.dtype)
    dbias_partial = np.empty((n, c_out), dtype=np.float64)
    _weight_grad(_WORK_SCALE * (flat.nbytes + dy.nbytes), dy, mask, relu, flat, plane, wp,
                 dweight_partial, dbias_partial)
    dweight = dweight_partial.sum(axis=0, dtype=np.float64).astype(x.dtype)
    dbias = dbias_partial.sum(axis=0).astype(x.dtype)
    if not input_grad:
        return None, dweight, dbias
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    grad_pads = (kh - 1 - pads[0], kh - 1 - pads[1], kw - 1 - pads[2], kw - 1 - pads[3])
    dz = np.where(mask > 0, dy, 0) if relu else dy  # the ReLU mask, as the weight-gradient core applies it
    dz_flat, dz_plane, dz_wp = _padded_planes(dz, grad_pads, kw, "direct.dz")
    dx = np.empty(x.shape, dtype=x.dtype)
    _forward(_WORK_SCALE * (dz_flat.nbytes + dx.nbytes), dz_flat, dz_plane, dz_wp, flipped,
             np.zeros(c_in, x.dtype), dx, False)
    return dx, dweight, dbias
