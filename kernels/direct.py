"""Direct convolution for stride-1 layers with few taps or few 5x5 filters, for the CPU.

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
core's peak, so on this grid BLAS wins once a filter has many taps (LeNet-5's conv2, 150 taps:
1.8-2.0 ms forward against 1.4-1.6): its rows are short (``Ho*Wp`` = 140) and a sixth of
them garbage.

The blocked layout
------------------
LeNet-5's conv2 (6 -> 16 channels, 5x5, 10x10 outputs) has the same problem as conv1 on the
im2col path: 7.7 MB of columns for 16-row GEMMs, and im2col, col2im and the transposes
around them run at memory speed. Put 16 samples side by side instead (the layout of
``batch_inner.py``): each channel as ``(blocks, Hp, Wp, 16)``, zero-padded, zeros past the
batch's end. Output row ``i`` of a block then reads, for tap ``(p, q)``, the ``Wo*16``
consecutive values starting at column ``q`` of input row ``i + p``::

    acc[o, j*16 + s] += W[o, c, p, q] * x_blocked[c, block, i + p, (j + q)*16 + s]

a stream of 160 values per tap (no garbage: the row holds exactly the outputs), with taps
16 values apart (``_add_row``'s ``step``). One task is one output row of one block, its
sums for every output channel (10 KB) in L1. The weight gradient is ``_row_dots`` along
the same rows, one task per output channel; the input gradient is the forward core on
``dz`` packed with ``k - 1 - pad`` columns of zeros each side (its rows' padding is
skipped, not stored), which multiplies those zero columns too (1.4x the useful work on
LeNet-5's conv2). The block width is the constant ``BATCH_BLOCK`` inside the cores: as
a run-time value the forward and the packing took twice as long.

Measured, ``python -m benchmarks --only L2`` (LeNet-5's conv2 at batch 128, no activation,
forward + backward), seven runs alternating with the batch-innermost im2col it replaces:
minicnn 3.9-7.8 ms (median 4.2) against 4.3-6.6 (4.7); ratio to torch 0.78-1.65 (median
1.03) against 1.08-1.53 (1.22). Rows of 3 taps (3x3 filters) were 1.1-2.8x slower than
that path, and so are not taken (``kernels.direct_layout``).

One difference from im2col (grid layout): the weight gradient multiplies the zeros of ``dz``'s
garbage columns by real input pixels, so an Inf or NaN in ``x`` also turns taps NaN that an exact sum
would leave finite (its forward output, and so the loss, is not finite either).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from minicnn.backend import scratch

from .batch_inner import BATCH_BLOCK, _reusable
from .cpu import _kernel, _unsigned
from .reference import check_conv_operands

__all__ = ["applies", "conv", "conv_backward", "LAYOUTS", "BATCH_BLOCK"]

LAYOUTS = ("grid", "blocked")
"""``conv``'s two layouts: a sample's zero-padded planes (``'grid'``), or blocks of
``BATCH_BLOCK`` samples side by side (``'blocked'``)."""

# Multiply-adds count more than bytes here: a LeNet-5 conv1 call touches 3 MB (serial by the
# byte rule of cpu.PARALLEL_MIN_BYTES) but does 15 M multiply-adds, enough to pay for waking
# the second thread.
_WORK_SCALE = 16


def applies(kernel, stride, padding, dilation) -> bool:
    """True when ``conv`` computes this convolution: stride 1, no dilation, each pad <= k - 1
    (so the input gradient's padding ``k - 1 - pad`` is not negative).

    ``padding`` is ``(top, bottom, left, right)``.
    """
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1) or len(padding) != 4:
        return False
    kh, kw = (int(k) for k in kernel)
    pt, pb, pl, pr = (int(p) for p in padding)
    return 0 <= pt < kh and 0 <= pb < kh and 0 <= pl < kw and 0 <= pr < kw


# ---------------------------------------------------------------- Numba cores
@njit(cache=True, inline="always")
def _add_row(acc, xf, start, length, wrow, first, beta, step):
    """``acc[j] (+)= sum_q wrow[q] * xf[start + j + q*step]`` for ``j < length``; ``first``
    sets ``acc = beta + ...`` instead. ``step`` is 1 on the grid, the block width in the
    batch-innermost layout. Rows of 5 and 3 taps are spelled out: one load and store of
    ``acc`` per row (the loop LLVM vectorises); other widths go tap by tap."""
    kw = wrow.shape[0]
    if kw == 5:
        w0, w1, w2, w3, w4 = wrow[0], wrow[1], wrow[2], wrow[3], wrow[4]
        for j in range(length):
            s = start + j
            v = (w0 * xf[_unsigned(s)] + w1 * xf[_unsigned(s + step)] + w2 * xf[_unsigned(s + 2 * step)]
                 + w3 * xf[_unsigned(s + 3 * step)] + w4 * xf[_unsigned(s + 4 * step)])
            acc[j] = beta + v if first else acc[j] + v
    elif kw == 3:
        w0, w1, w2 = wrow[0], wrow[1], wrow[2]
        for j in range(length):
            s = start + j
            v = w0 * xf[_unsigned(s)] + w1 * xf[_unsigned(s + step)] + w2 * xf[_unsigned(s + 2 * step)]
            acc[j] = beta + v if first else acc[j] + v
    else:
        if first:
            for j in range(length):
                acc[j] = beta
        for q in range(kw):
            wq = wrow[q]
            for j in range(length):
                acc[j] += wq * xf[_unsigned(start + q * step + j)]


@njit(cache=True, inline="always")
def _row_dots(grid, xf, start, length, out, zero, step):
    """``out[q] = sum_j grid[j] * xf[start + j + q*step]`` for each tap ``q`` of a filter row
    (``step`` as in ``_add_row``); ``zero`` is 0 in the data's dtype (float32 sums stay
    float32, and vectorise)."""
    kw = out.shape[0]
    if kw == 5:
        s0, s1, s2, s3, s4 = zero, zero, zero, zero, zero
        for j in range(length):
            gj, s = grid[j], start + j
            s0 += gj * xf[_unsigned(s)]
            s1 += gj * xf[_unsigned(s + step)]
            s2 += gj * xf[_unsigned(s + 2 * step)]
            s3 += gj * xf[_unsigned(s + 3 * step)]
            s4 += gj * xf[_unsigned(s + 4 * step)]
        out[0], out[1], out[2], out[3], out[4] = s0, s1, s2, s3, s4
    elif kw == 3:
        s0, s1, s2 = zero, zero, zero
        for j in range(length):
            gj, s = grid[j], start + j
            s0 += gj * xf[_unsigned(s)]
            s1 += gj * xf[_unsigned(s + step)]
            s2 += gj * xf[_unsigned(s + 2 * step)]
        out[0], out[1], out[2] = s0, s1, s2
    else:
        for q in range(kw):
            total = zero
            for j in range(length):
                total += grid[j] * xf[_unsigned(start + q * step + j)]
            out[q] = total


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
                             c == 0 and p == 0, bias[o], 1)
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
                              zero, 1)


# ---------------------------------------------------------------- the batch-innermost layout
# ``(C, blocks, Hp, Wp, B)``: channel, block of ``B`` samples, padded row, padded column, sample
# (``blocked[c, k, i, j, s] = x_pad[k*B + s, c, i, j]``, zero past the batch's end).
@_kernel(fastmath={"reassoc"})  # reassoc: the channel sums vectorise
def _pack(src, mask, relu, pads, out, sums):
    """``out`` = ``src`` (N, C, H, W) in the blocked layout, zero-padded by ``pads`` (top,
    bottom, left, right), times ``[mask > 0]`` when ``relu``; ``sums[c]`` = the sum of channel
    ``c`` in float64 (none when ``sums`` is empty)."""
    n, c, h, w = src.shape
    blocks, hp, wp, width = out.shape[1], out.shape[2], out.shape[3], BATCH_BLOCK
    pt, pl = pads[0], pads[2]
    sf, mf, of = src.reshape(-1), mask.reshape(-1), out.reshape(-1)
    for ch in prange(c):  # one channel each: its own planes of out and its own sum
        total = 0.0
        for k in range(blocks):
            base = (ch * blocks + k) * hp * wp * width
            for t in range(hp * wp * width):  # padding, and samples past the batch's end
                of[_unsigned(base + t)] = 0
            for s in range(min(width, n - k * width)):  # one sample's plane: a sequential read
                src0 = ((k * width + s) * c + ch) * h * w
                for i in range(h):
                    row = 0.0
                    dst = base + ((i + pt) * wp + pl) * width + s
                    for j in range(w):
                        v = sf[_unsigned(src0 + i * w + j)]
                        if relu:  # NaN in the mask passes no gradient, as in the GEMM path
                            v = v if mf[_unsigned(src0 + i * w + j)] > 0 else 0
                        of[_unsigned(dst + j * width)] = v
                        row += v
                    total += row
        if sums.shape[0]:
            sums[ch] = total


@_kernel(fastmath={"contract"})
def _forward_blocked(xb, pt, weight, bias, relu, y):
    """``y[n, o, i, j] = act(bias[o] + sum_{c,p,q} weight[o, c, p, q] * x[c, i + p - pt, j + q])``
    with ``x`` in the blocked layout ``xb`` (rows outside it count as zeros: ``pt`` pads
    rows that are not stored; the columns' padding is in ``xb``)."""
    n, c_out, ho, wo = y.shape
    c_in, kh = weight.shape[1], weight.shape[2]
    blocks, h, wp, width = xb.shape[1], xb.shape[2], xb.shape[3], BATCH_BLOCK  # a constant: 2x faster
    xf = xb.reshape(-1)
    span = wo * width
    for task in prange(blocks * ho):  # one output row of one block: its own pixels of y
        k, i = task // ho, task % ho
        acc = np.empty((c_out, span), dtype=y.dtype)  # that row of every output channel, in L1
        for o in range(c_out):
            acc[o] = bias[o]
        for c in range(c_in):
            for p in range(kh):
                row = i + p - pt
                if row < 0 or row >= h:
                    continue
                start = ((c * blocks + k) * h + row) * wp * width
                for o in range(c_out):  # the block's 16 samples side by side: Wo*16 values a tap
                    _add_row(acc[o], xf, start, span, weight[o, c, p], False, 0, width)
        for o in range(c_out):  # act(acc) into (N, C_out, Ho, Wo)
            for s in range(min(width, n - k * width)):
                for j in range(wo):
                    v = acc[o, j * width + s]
                    y[k * width + s, o, i, j] = (0 if v <= 0 else v) if relu else v  # NaN stays NaN


@_kernel(fastmath={"reassoc", "contract"})  # reassoc: vectorised dot products
def _weight_grad_blocked(dzb, column, xb, dweight):
    """``dweight[o, c, p, q] = sum_{n,i,j} dz[n, o, i, j] * x_pad[n, c, i + p, j + q]`` (float64)
    from ``dz`` blocked (``dzb``, its columns from ``column`` on) and ``x_pad`` blocked (``xb``)."""
    c_out, c_in, kh, kw = dweight.shape
    blocks, ho, wz, width = dzb.shape[1], dzb.shape[2], dzb.shape[3], BATCH_BLOCK
    hp, wp = xb.shape[2], xb.shape[3]
    span = (wp - kw + 1) * width
    xf, df = xb.reshape(-1), dzb.reshape(-1)
    for o in prange(c_out):  # one output channel each: its own filters
        dots = np.zeros(kw, dtype=xb.dtype)
        zero = dots[0]  # 0 in the data's dtype: float32 sums stay float32, and vectorise
        dweight[o] = 0
        for k in range(blocks):
            for i in range(ho):  # one row of dz (Wo*16 values, in L1) against every input row it met
                grid = df[_unsigned(((o * blocks + k) * ho + i) * wz * width + column * width):]
                for c in range(c_in):
                    for p in range(kh):
                        _row_dots(grid, xf, ((c * blocks + k) * hp + i + p) * wp * width, span, dots,
                                  zero, width)
                        for q in range(kw):
                            dweight[o, c, p, q] += dots[q]


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


def _blocked_shape(x_shape, pads):
    """The blocked layout's shape for an (N, C, H, W) array padded by ``pads``."""
    n, c, h, w = x_shape
    return c, -(-n // BATCH_BLOCK), h + pads[0] + pads[1], w + pads[2] + pads[3], BATCH_BLOCK


def _packed(x, pads, slot, mask=None, sums=None, kept=None):
    """``x`` (N, C, H, W) zero-padded by ``pads`` in the blocked layout, in scratch ``slot``;
    with ``mask``, times ``[mask > 0]``, and with ``sums`` (float64, (C,)) each channel's sum
    written there. With ``kept`` (a list) the result gets memory of its own instead (the
    array in ``kept`` if its shape fits) and ``kept[:]`` becomes ``[result]``."""
    shape = _blocked_shape(x.shape, pads)
    if kept is None:
        out = scratch(slot, shape, x.dtype)
    else:
        out = _reusable(kept, shape, x.dtype)
        kept[:] = [np.empty(shape, dtype=x.dtype) if out is None else out]
        out = kept[0]
    _pack(_WORK_SCALE * out.nbytes, x, x if mask is None else mask, mask is not None, np.array(pads), out,
          np.empty(0) if sums is None else sums)
    return out


def _check(x, weight, padding, owner):
    check_conv_operands(x, weight, owner)
    pads = tuple(int(p) for p in padding)
    if not applies(weight.shape[2:], (1, 1), pads, (1, 1)):
        raise ValueError(f"{owner} expected padding (top, bottom, left, right) each in 0..k-1 for a "
                         f"{weight.shape[2]}x{weight.shape[3]} kernel, got {padding!r}")
    return np.ascontiguousarray(x), np.ascontiguousarray(weight, dtype=x.dtype), pads


# ---------------------------------------------------------------- public functions
def _check_layout(layout, owner):
    if layout not in LAYOUTS:
        raise ValueError(f"{owner} expected layout 'grid' or 'blocked', got {layout!r}")


def conv(x, weight, padding, bias=None, relu=False, layout="grid", kept=None):
    """Stride-1 cross-correlation of zero-padded ``x`` (N, C_in, H, W) by ``weight``
    (C_out, C_in, kh, kw): ``y`` (N, C_out, H + top + bottom - kh + 1, W + left + right - kw + 1)::

        y[n, o, i, j] = act(bias[o] + sum_{c,p,q} weight[o, c, p, q] * x_pad[n, c, i + p, j + q])

    ``act`` is ReLU when ``relu`` is set, else the identity; ``bias`` may be ``None``.
    ``padding`` is ``(top, bottom, left, right)``, each pad at most ``k - 1``. ``layout`` is
    ``'grid'`` (a sample's planes at a time) or ``'blocked'`` (16 samples side by side); the
    result is the same up to rounding.

    ``kept``, a list, keeps the blocked layout's packed input for ``conv_backward``: it is
    set to ``[packed x]`` (an array already in it lends its memory if the shape fits: it
    must be dead by then, as the last training step's). The grid layout ignores it.
    """
    x, weight, pads = _check(x, weight, padding, "direct.conv")
    _check_layout(layout, "direct.conv")
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = h + pads[0] + pads[1] - kh + 1, w + pads[2] + pads[3] - kw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"direct.conv expected an output of at least 1x1, got {ho}x{wo} "
                         f"(input shape {x.shape}, kernel {kh}x{kw}, padding {padding!r})")
    bias = np.zeros(c_out, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    y = np.empty((n, c_out, ho, wo), dtype=x.dtype)
    if layout == "blocked":
        xb = _packed(x, pads, "direct.x", kept=kept)
        _forward_blocked(_WORK_SCALE * (xb.nbytes + y.nbytes), xb, 0, weight, bias, bool(relu), y)
        return y
    flat, plane, wp = _padded_planes(x, pads, kw, "direct.x")
    _forward(_WORK_SCALE * (flat.nbytes + y.nbytes), flat, plane, wp, weight, bias, y, bool(relu))
    return y


def conv_backward(dy, x, weight, padding, relu_output=None, input_grad=True, layout="grid", kept=None):
    """``(dx, dweight, dbias)`` of ``conv`` from ``dy = dL/dy`` (N, C_out, Ho, Wo); ``dx`` is
    ``None`` when ``input_grad`` is false. With ``relu_output`` (the ``y`` of ``conv(...,
    relu=True)``) the gradient goes back through the ReLU first: ``dz = dy * [y > 0]``;
    without it ``dz = dy``. ``layout`` as in ``conv``; ``kept``, the list ``conv`` filled
    for the same ``x``, saves packing it again.

    ``dweight`` and ``dbias`` sum float32 (or float64) partial sums in float64.
    ``dx`` is ``conv(dz, weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), k - 1 - padding)``:
    each padded input pixel collects the outputs that read it (``winograd.conv3x3_input_grad``
    derives it).
    """
    x, weight, pads = _check(x, weight, padding, "direct.conv_backward")
    _check_layout(layout, "direct.conv_backward")
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
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    grad_pads = (kh - 1 - pads[0], kh - 1 - pads[1], kw - 1 - pads[2], kw - 1 - pads[3])
    if layout == "blocked":
        return _backward_blocked(dy, mask if relu else None, x, weight.shape, flipped, pads, grad_pads, input_grad,
                                 _reusable(kept, _blocked_shape(x.shape, pads), x.dtype))
    flat, plane, wp = _padded_planes(x, pads, kw, "direct.x")
    dweight_partial = np.empty((n, c_out, c_in, kh, kw), dtype=x.dtype)
    dbias_partial = np.empty((n, c_out), dtype=np.float64)
    _weight_grad(_WORK_SCALE * (flat.nbytes + dy.nbytes), dy, mask, relu, flat, plane, wp,
                 dweight_partial, dbias_partial)
    dweight = dweight_partial.sum(axis=0, dtype=np.float64).astype(x.dtype)
    dbias = dbias_partial.sum(axis=0).astype(x.dtype)
    if not input_grad:
        return None, dweight, dbias
    dz = np.where(mask > 0, dy, 0) if relu else dy  # the ReLU mask, as the weight-gradient core applies it
    dz_flat, dz_plane, dz_wp = _padded_planes(dz, grad_pads, kw, "direct.dz")
    dx = np.empty(x.shape, dtype=x.dtype)
    _forward(_WORK_SCALE * (dz_flat.nbytes + dx.nbytes), dz_flat, dz_plane, dz_wp, flipped,
             np.zeros(c_in, x.dtype), dx, False)
    return dx, dweight, dbias


def _backward_blocked(dy, mask, x, weight_shape, flipped, pads, grad_pads, input_grad, xb):
    """``conv_backward`` in the blocked layout. ``dz`` is packed once with the input gradient's
    column padding (its rows' padding is skipped, not stored: those rows are all zeros); the
    weight gradient reads its unpadded columns."""
    c_out, c_in = weight_shape[:2]
    dbias = np.empty(c_out)
    dzb = _packed(dy, (0, 0, grad_pads[2], grad_pads[3]), "direct.dz", mask, dbias)
    if xb is None:
        xb = _packed(x, pads, "direct.x")
    dweight = np.empty(weight_shape)
    _weight_grad_blocked(_WORK_SCALE * (xb.nbytes + dzb.nbytes), dzb, grad_pads[2], xb, dweight)
    dweight, dbias = dweight.astype(x.dtype), dbias.astype(x.dtype)
    if not input_grad:
        return None, dweight, dbias
    dx = np.empty(x.shape, dtype=x.dtype)
    _forward_blocked(_WORK_SCALE * (dzb.nbytes + dx.nbytes), dzb, grad_pads[0], flipped, np.zeros(c_in, x.dtype),
                     False, dx)
    return dx, dweight, dbias
