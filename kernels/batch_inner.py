"""im2col with the batch innermost, in blocks of 16 samples, for the CPU.

Why another column order
------------------------
``im2col`` orders its columns ``(n, i, j)``: sample, output row, output column. For one
filter tap and one sample, an output row's columns copy ``Wo`` consecutive input pixels, so
LeNet-5's second layer (10x10 outputs, 150 taps, batch 128) is 192,000 copies of 10 floats,
and ``col2im`` as many additions of 10. Loops that short are all overhead: 0.75 ms for
im2col and 0.85-1.5 ms for col2im on the benchmark machine, for 7.7 MB of columns that a
plain copy moves in 0.3 ms.

Put the sample last instead. Split the batch into blocks of ``B = 16`` samples (the last
block may be shorter), hold each channel of the input as ``(blocks, H, W, B)`` and order
the columns ``(block, i, j, b)``::

    cols[(c, p, q), (block, i, j, b)] = x_pad[block*B + b, c, i*sh + p*dh, j*sw + q*dw]

Then a tap's values for one output row of a block are ``Wo*B`` consecutive floats of the
input (at stride 1): one copy of 160 floats for LeNet-5's conv2 instead of sixteen of 10.
Why blocks and not the whole batch innermost: the transposes at both ends (below) then read
and write a few streams at a time, which the hardware prefetcher follows; a whole batch of
32 samples innermost made them jump 128 KB between samples, and in a 32x3x32x32 -> 32 layer
the transposes into the layout took 3.3 ms a call in place against 0.9 with blocks of 16.

The GEMMs do not mind: ``Y2 = W2 @ cols`` is the same product with its columns in another
order, and so are ``dW2 = dY2 @ cols.T`` and ``dcols = W2.T @ dY2``. Only the ends change:
the input is transposed into the blocked layout once (the size of the input, small next to
the columns), the epilogue that adds the bias and applies ReLU writes ``(N, C, Ho, Wo)``
from the blocked ``Y2``, backward's first pass (ReLU's mask, the bias sum) writes ``dY2``
blocked, and ``dx`` is gathered blocked and transposed back.

Memory: the columns of whole blocks of samples are contiguous, so large batches run in
chunks of blocks (``BLOCK_BYTES`` of columns, never above the workspace limit).
``col2im`` is a gather: each input row of ``dx`` adds up the column entries that came from
it, so threads never write the same pixel.

``conv`` and ``conv_backward`` are the whole layer (forward with bias and ReLU, both
gradients), run block by block on each thread where NumPy's BLAS can be called from a
kernel (``_conv_by_block``, below), else for the whole batch at once. ``im2col`` and ``col2im`` are their column kernels on (N, C, H, W) arrays, and
``column_order`` says which column of ``kernels.im2col`` each blocked column is.
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from minicnn.backend import get_workspace_limit, scratch

from . import blas
from .cpu import _geometry, _kernel, _unsigned, _valid_range, matmul, matmul_nt, one_blas_thread
from .reference import check_conv_operands, output_hw

__all__ = ["conv", "conv_backward", "im2col", "col2im", "column_order", "BATCH_BLOCK", "BLOCK_BYTES"]

BATCH_BLOCK = 16
"""Samples per block, innermost in the layout (the last block of a batch may be shorter)."""

BLOCK_BYTES = 16 * 2**20
"""Bytes of columns per chunk of sample blocks (as ``minicnn.layers.conv``'s ``_BLOCK_BYTES``):
on the whole-batch path, LeNet-5's conv2 at batch 128 and most of VGG-mini's layers at batch
32 are one chunk, so forward keeps their columns for backward. (The block-by-block path,
taken where ``_lanes`` allows, keeps none: backward recomputes each block's columns in cache.)"""


# ---------------------------------------------------------------- Numba cores
# The blocked layout of an (N, C, P) array: channel c, then block after block of ``nb``
# samples (``width`` in the last), each block ``P`` positions of ``width`` samples:
#     blocked[c*N*P + b0*P + q*width + k] = a[b0 + k, c, q]      (b0 the block's first sample)
@_kernel(fastmath={"reassoc"})  # reassoc: the bias sum vectorises
def _to_blocked(src, mask, relu, nb, out, sums):
    """``out`` = ``src`` (N, C, P) in the blocked layout, times ``[mask > 0]`` when ``relu``;
    ``sums[c]`` = the sum of channel ``c`` in float64 (none when ``sums`` is empty)."""
    n, c, p = src.shape
    sf, mf = src.reshape(-1), mask.reshape(-1)
    for ch in prange(c):  # one channel each: its own slice of out and its own sum
        total = 0.0
        for b0 in range(0, n, nb):
            width = min(nb, n - b0)
            base = ch * n * p + b0 * p
            for k in range(width):  # one sample's plane: a sequential read, writes into a small block
                s = ((b0 + k) * c + ch) * p
                if relu:  # NaN in the mask passes no gradient, as in the GEMM path
                    for q in range(p):
                        out[_unsigned(base + q * width + k)] = sf[_unsigned(s + q)] if mf[_unsigned(s + q)] > 0 else 0
                else:
                    for q in range(p):
                        out[_unsigned(base + q * width + k)] = sf[_unsigned(s + q)]
            if sums.shape[0]:  # the block while it is in cache
                for t in range(base, base + p * width):
                    total += out[_unsigned(t)]
        if sums.shape[0]:
            sums[ch] = total


@_kernel()
def _from_blocked(z, bias, relu, nb, out):
    """``out[n, c, q] = act(z[...] + bias[c])`` from ``z`` in the blocked layout of ``out``'s
    shape (N, C, P); ``act`` is ReLU when ``relu`` (NaN stays NaN)."""
    n, c, p = out.shape
    of = out.reshape(-1)
    for ch in prange(c):
        beta = bias[ch]
        for b0 in range(0, n, nb):
            width = min(nb, n - b0)
            base = ch * n * p + b0 * p
            for k in range(width):  # one sample's plane: a sequential write
                d = ((b0 + k) * c + ch) * p
                for q in range(p):
                    v = z[_unsigned(base + q * width + k)] + beta
                    if relu:
                        v = 0 if v <= 0 else v
                    of[_unsigned(d + q)] = v


@_kernel()
def _im2col(xb, n, c, h, w, nb, s0, s1, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """Columns of samples ``s0 <= n < s1`` (``s0`` a block start) from ``xb``, the input in the
    blocked layout, into ``cols`` (C*kh*kw, (s1 - s0)*Ho*Wo)."""
    cf = cols.reshape(-1)
    blocks = (s1 - s0 + nb - 1) // nb
    ncols = (s1 - s0) * ho * wo
    for task in prange(c * kh * kw * blocks):  # one (tap, block): rows of Wo*width consecutive values
        tap, b0 = task // blocks, s0 + (task % blocks) * nb
        width = min(nb, s1 - b0)
        ch, i, j = tap // (kh * kw), (tap // kw) % kh, tap % kw
        span = wo * width
        x0 = ch * n * h * w + b0 * h * w  # the block's plane of channel ch: (H, W, width)
        iw0 = j * dw - pl
        lo, hi = _valid_range(iw0, sw, w, wo)
        for oh in range(ho):
            dst = tap * ncols + (b0 - s0) * ho * wo + oh * span
            ih = oh * sh + i * dh - pt
            if ih < 0 or ih >= h:  # the whole row reads top or bottom padding
                for t in range(span):
                    cf[_unsigned(dst + t)] = 0
                continue
            for t in range(lo * width):  # left padding
                cf[_unsigned(dst + t)] = 0
            for t in range(hi * width, span):  # right padding
                cf[_unsigned(dst + t)] = 0
            src = x0 + ih * w * width
            if sw == 1:  # the output columns read consecutive pixels: one copy
                s, d = src + (lo + iw0) * width, dst + lo * width
                for t in range((hi - lo) * width):
                    cf[_unsigned(d + t)] = xb[_unsigned(s + t)]
            else:
                for ow in range(lo, hi):
                    s, d = src + (ow * sw + iw0) * width, dst + ow * width
                    for t in range(width):
                        cf[_unsigned(d + t)] = xb[_unsigned(s + t)]


@_kernel()
def _col2im(cols, n, c, h, w, nb, s0, s1, dxb, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """The adjoint of ``_im2col``: write the pixels of samples ``s0 <= n < s1`` of ``dxb``
    (blocked) as the sums of the column entries that came from them."""
    cf = cols.reshape(-1)
    blocks = (s1 - s0 + nb - 1) // nb
    ncols = (s1 - s0) * ho * wo
    for task in prange(c * blocks * h):  # one input row of one block and channel: no shared pixels
        ch, b0, ih = task // (blocks * h), s0 + (task // h) % blocks * nb, task % h
        width = min(nb, s1 - b0)
        span = wo * width
        base = ch * n * h * w + b0 * h * w + ih * w * width
        for t in range(w * width):
            dxb[_unsigned(base + t)] = 0
        for i in range(kh):
            offset = ih + pt - i * dh  # = oh * sh for the output row oh that reads ih through tap row i
            if offset < 0 or offset % sh != 0 or offset // sh >= ho:
                continue
            for j in range(kw):
                iw0 = j * dw - pl
                lo, hi = _valid_range(iw0, sw, w, wo)
                src = ((ch * kh + i) * kw + j) * ncols + (b0 - s0) * ho * wo + offset // sh * span
                if sw == 1:
                    d, s = base + (lo + iw0) * width, src + lo * width
                    for t in range((hi - lo) * width):
                        dxb[_unsigned(d + t)] += cf[_unsigned(s + t)]
                else:
                    for ow in range(lo, hi):
                        d, s = base + (ow * sw + iw0) * width, src + ow * width
                        for t in range(width):
                            dxb[_unsigned(d + t)] += cf[_unsigned(s + t)]


# ---------------------------------------------------------------- block by block, in cache
# The whole-batch path below writes all the columns (7.7 MB for LeNet-5's conv2 at batch 128),
# multiplies them in one GEMM and reads its output back: each pass waits on memory, and the
# thin GEMMs (16 rows, or an inner dimension of 16) ran at ~80 GFLOP/s from cold operands
# against ~125 hot. Below, each thread (a "lane") takes its own blocks of samples, one at a
# time: the block's columns (150 x 1600 floats, under 1 MB, for that layer) into the lane's
# own buffer, the GEMM, the epilogue (forward) or the weight gradient's product, the
# columns' gradient and col2im (backward), while the block is in cache. The GEMMs are NumPy's
# own BLAS, called from the kernel (``kernels/blas.py``) on one BLAS thread each.
_im2col_1, _col2im_1 = _im2col.serial, _col2im.serial   # the serial cores, as names Numba can call
_to_blocked_1, _from_blocked_1 = _to_blocked.serial, _from_blocked.serial


@njit(cache=True, inline="always")
def _block_views(block, nb, n, hw, cols, taps, other, rows):
    """Samples ``s0 <= n < s1`` of ``block``, its column count ``width``, and a lane's flat
    buffers as that block's ``(taps, width)`` columns and ``(rows, width)`` GEMM output or input."""
    s0 = block * nb
    s1 = min(s0 + nb, n)
    width = (s1 - s0) * hw
    return s0, s1, width, cols[:taps * width].reshape(taps, width), other[:rows * width].reshape(rows, width)


@njit(cache=True, inline="always")
def _block_columns(x, s0, s1, nb, xb, block_cols, no_sums, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """Samples ``s0 <= n < s1`` of ``x`` into a lane's ``xb`` in the blocked layout, then
    their columns into ``block_cols`` (``no_sums``: an empty float64 array)."""
    width, c, h, w = s1 - s0, x.shape[1], x.shape[2], x.shape[3]
    block_x = x[s0:s1].reshape(width, c, h * w)
    _to_blocked_1(block_x, block_x, False, nb, xb, no_sums)
    _im2col_1(xb, width, c, h, w, nb, 0, width, block_cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)


@njit(cache=True, parallel=True)
def _conv_by_block(gemm_fn, x, nb, w2, bias, relu, y, xb, cols, z, kh, kw, sh, sw, pt, pl, dh, dw):
    """``conv``'s forward: lane ``l`` of ``cols.shape[0]`` does blocks ``l*B//lanes ..
    (l+1)*B//lanes - 1`` of the B blocks of ``nb`` samples, in its own ``xb[l]`` (the block's
    input, blocked), ``cols[l]`` and ``z[l]`` (flat)."""
    n = x.shape[0]
    c_out, taps = w2.shape
    ho, wo = y.shape[2], y.shape[3]
    hw, lanes = ho * wo, cols.shape[0]
    blocks = (n + nb - 1) // nb
    for lane in prange(lanes):
        no_sums = np.empty(0)
        for block in range(lane * blocks // lanes, (lane + 1) * blocks // lanes):
            s0, s1, width, block_cols, block_z = _block_views(block, nb, n, hw, cols[lane], taps, z[lane], c_out)
            _block_columns(x, s0, s1, nb, xb[lane], block_cols, no_sums, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
            blas.gemm(gemm_fn, False, c_out, width, taps, w2, taps, block_cols, width, 0.0, block_z, width)
            _from_blocked_1(block_z.reshape(-1), bias, relu, nb, y[s0:s1].reshape(s1 - s0, c_out, hw))


@njit(cache=True, parallel=True)
def _conv_backward_by_block(gemm_fn, dy, mask, relu, x, nb, w2, w2t, input_grad, dx, dweight, dbias,
                            xb, cols, dz, kh, kw, sh, sw, pt, pl, dh, dw):
    """``conv_backward``'s sums and, with ``input_grad``, ``dx``, block by block as
    ``_conv_by_block``: lane ``l`` writes ``dweight[l]`` and ``dbias[l]`` over with its first
    block's and adds its other blocks'; ``dx``'s blocks are disjoint. ``xb[l]`` holds the
    block's input, then its ``dx``, blocked."""
    n, c, h, w = x.shape
    c_out, taps = w2.shape
    ho, wo = dy.shape[2], dy.shape[3]
    hw, lanes = ho * wo, cols.shape[0]
    blocks = (n + nb - 1) // nb
    for lane in prange(lanes):
        first = lane * blocks // lanes
        sums = np.empty(c_out)
        no_bias = np.zeros(c, x.dtype)
        for block in range(first, (lane + 1) * blocks // lanes):
            s0, s1, width, block_cols, block_dz = _block_views(block, nb, n, hw, cols[lane], taps, dz[lane], c_out)
            # dz = dy (times ReLU's mask), blocked; the bias gradient's sums on the way
            _to_blocked_1(dy[s0:s1].reshape(s1 - s0, c_out, hw), mask[s0:s1].reshape(s1 - s0, c_out, hw), relu,
                          nb, block_dz.reshape(-1), sums)
            for o in range(c_out):
                dbias[lane, o] = sums[o] if block == first else dbias[lane, o] + sums[o]
            _block_columns(x, s0, s1, nb, xb[lane], block_cols, sums[:0], kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
            # dW += dz @ cols.T, then the columns' gradient W.T @ dz over the columns
            blas.gemm(gemm_fn, True, c_out, taps, width, block_dz, width, block_cols, width,
                      0.0 if block == first else 1.0, dweight[lane], taps)
            if input_grad:
                blas.gemm(gemm_fn, False, taps, width, c_out, w2t, c_out, block_dz, width, 0.0, block_cols, width)
                _col2im_1(block_cols, s1 - s0, c, h, w, nb, 0, s1 - s0, xb[lane], kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
                _from_blocked_1(xb[lane], no_bias, False, nb, dx[s0:s1].reshape(s1 - s0, c, h * w))


BY_BLOCK = True
"""Run block by block when ``_lanes`` allows; tests switch it off to check the whole-batch path."""

BY_BLOCK_MAX_BYTES = 4 * 2**20
"""At most this many bytes of columns per block for the block-by-block path (LeNet-5's conv2:
0.94 MB): beyond that a block's columns leave the cache before the GEMM reads them."""


def _lanes(n: int, taps: int, hw: int, dtype) -> int:
    """How many threads run block by block (one block's buffers each), or 0 for the
    whole-batch path: when NumPy's BLAS cannot be called from a kernel (``blas.gemm_function``),
    a block's columns exceed ``BY_BLOCK_MAX_BYTES``, or there are fewer blocks than threads."""
    lanes = get_num_threads()
    blocks = -(-n // BATCH_BLOCK)
    block_bytes = taps * BATCH_BLOCK * hw * np.dtype(dtype).itemsize
    if not BY_BLOCK or blocks < lanes or block_bytes > BY_BLOCK_MAX_BYTES or blas.gemm_function(dtype) is None:
        return 0
    return lanes


# ---------------------------------------------------------------- helpers
def _chunks(n: int, bytes_per_sample: int) -> list[tuple[int, int]]:
    """Sample ranges ``(start, stop)`` of whole blocks whose columns take about ``BLOCK_BYTES``,
    never more than the workspace limit, and at least one block each."""
    budget = min(BLOCK_BYTES, get_workspace_limit())
    step = max(1, budget // max(1, bytes_per_sample * BATCH_BLOCK)) * BATCH_BLOCK
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _reusable(kept, shape, dtype):
    """The array in the one-item list ``kept`` if it has ``shape`` and ``dtype``, else None."""
    old = kept[0] if kept else None
    fits = isinstance(old, np.ndarray) and old.shape == tuple(shape) and old.dtype == dtype
    return old if fits else None


def _lane_buffers(lanes, sample_size, taps_hw, c_out_hw, dtype):
    """Each lane's flat buffers for one block: its input (blocked), columns and GEMM output."""
    return tuple(scratch(slot, (lanes, size * BATCH_BLOCK), dtype) for slot, size in
                 (("batch_inner.x", sample_size), ("cols", taps_hw), ("gemm", c_out_hw)))


def _blocked(x, slot):
    """``x`` (N, C, H, W) in the blocked layout (flat), in the scratch buffer ``slot``."""
    n, c = x.shape[:2]
    xb = scratch(slot, (x.size,), x.dtype)
    x3 = x.reshape(n, c, -1)
    _to_blocked(x.nbytes, x3, x3, False, BATCH_BLOCK, xb, np.empty(0))
    return xb


def _columns(xb, x_shape, geometry, out_hw, chunk, out):
    """``_im2col`` of the samples in ``chunk`` into ``out``."""
    n, c, h, w = x_shape
    _im2col(out.nbytes, xb, n, c, h, w, BATCH_BLOCK, *chunk, out, *geometry, *out_hw)
    return out


def _check(x, weight, stride, padding, dilation, owner):
    check_conv_operands(x, weight, owner)
    if len(padding) != 4 or min(padding) < 0 or min(*stride, *dilation) < 1:
        raise ValueError(f"{owner} expected padding (top, bottom, left, right) >= 0 and stride, dilation >= 1, "
                         f"got padding {padding!r}, stride {stride!r}, dilation {dilation!r}")
    ho, wo = output_hw(x.shape, weight.shape[2:], stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"{owner} expected an output of at least 1x1, got {ho}x{wo} (input shape {x.shape}, "
                         f"kernel {weight.shape[2:]}, stride {stride!r}, padding {padding!r}, dilation {dilation!r})")
    return np.ascontiguousarray(x), np.ascontiguousarray(weight, dtype=x.dtype), (ho, wo)


# ---------------------------------------------------------------- public functions
def column_order(n: int, ho: int, wo: int) -> np.ndarray:
    """For each column of the blocked order, the column of ``kernels.im2col`` (order
    ``(n, i, j)``) holding the same receptive field: ``im2col(x)[:, column_order(...)]``
    is this module's ``im2col(x)``."""
    order = []
    for b0 in range(0, n, BATCH_BLOCK):
        samples = np.arange(b0, min(b0 + BATCH_BLOCK, n))
        order.append((samples[None, :] * ho * wo + np.arange(ho * wo)[:, None]).reshape(-1))
    return np.concatenate(order)


def im2col(x, kernel, stride, padding, dilation=(1, 1)):
    """The columns ``(C*kh*kw, N*Ho*Wo)`` of ``x`` (N, C, H, W) in the blocked order."""
    x = np.ascontiguousarray(x)
    geometry = _geometry(kernel, stride, padding, dilation)
    ho, wo = output_hw(x.shape, kernel, stride, padding, dilation)
    cols = np.empty((x.shape[1] * geometry[0] * geometry[1], x.shape[0] * ho * wo), dtype=x.dtype)
    return _columns(_blocked(x, "batch_inner.x"), x.shape, geometry, (ho, wo), (0, x.shape[0]), cols)


def col2im(cols, x_shape, kernel, stride, padding, dilation=(1, 1)):
    """The adjoint of ``im2col``: ``dx`` (N, C, H, W), each pixel the sum of the column
    entries that came from it."""
    n, c, h, w = (int(s) for s in x_shape)
    geometry = _geometry(kernel, stride, padding, dilation)
    ho, wo = output_hw((n, c, h, w), kernel, stride, padding, dilation)
    if cols.shape != (c * geometry[0] * geometry[1], n * ho * wo):
        raise ValueError(f"batch_inner.col2im expected cols of shape {(c * geometry[0] * geometry[1], n * ho * wo)} "
                         f"for x_shape {tuple(x_shape)}, got {cols.shape}")
    dxb = np.empty(n * c * h * w, dtype=cols.dtype)
    _col2im(cols.nbytes, np.ascontiguousarray(cols), n, c, h, w, BATCH_BLOCK, 0, n, dxb, *geometry, ho, wo)
    dx = np.empty((n, c, h, w), dtype=cols.dtype)
    _from_blocked(dx.nbytes, dxb, np.zeros(c, cols.dtype), False, BATCH_BLOCK, dx.reshape(n, c, h * w))
    return dx


def conv(x, weight, stride, padding, dilation=(1, 1), bias=None, relu=False, keep_cols=False, reuse=None):
    """``(y, kept)``: ``y = act(conv(x, weight) + bias)`` as (N, C_out, Ho, Wo), ``act`` ReLU
    when ``relu`` is set, else the identity; ``bias`` may be ``None``. ``padding`` is
    ``(top, bottom, left, right)``.

    With ``keep_cols`` and the columns in one chunk, ``kept`` is ``[cols]`` for
    ``conv_backward`` (else ``None``); ``reuse``, such a list that nobody needs any more,
    lends them its memory when the shape fits (fresh pages cost more than the copy).
    """
    x, weight, out_hw = _check(x, weight, stride, padding, dilation, "batch_inner.conv")
    n, c_out, taps = x.shape[0], weight.shape[0], weight[0].size
    hw = out_hw[0] * out_hw[1]
    geometry = _geometry(weight.shape[2:], stride, padding, dilation)
    w2 = weight.reshape(c_out, taps)
    bias = np.zeros(c_out, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    lanes = _lanes(n, taps, hw, x.dtype)
    if lanes:  # block by block; backward recomputes each block's columns, in cache
        y = np.empty((n, c_out, *out_hw), dtype=x.dtype)
        with one_blas_thread():
            _conv_by_block(blas.gemm_function(x.dtype), x, BATCH_BLOCK, w2, bias, bool(relu), y,
                           *_lane_buffers(lanes, x[0].size, taps * hw, c_out * hw, x.dtype), *geometry)
        return y, None
    xb = _blocked(x, "batch_inner.x")
    z2 = scratch("gemm", (c_out, n * hw), x.dtype)
    chunks = _chunks(n, taps * hw * x.itemsize)
    kept = None
    for start, stop in chunks:
        shape = (taps, (stop - start) * hw)
        keep = keep_cols and len(chunks) == 1  # the columns get their own memory: kept for backward
        out = _reusable(reuse, shape, x.dtype) if keep else scratch("cols", shape, x.dtype)
        cols = _columns(xb, x.shape, geometry, out_hw, (start, stop),
                        np.empty(shape, dtype=x.dtype) if out is None else out)
        kept = [cols] if keep else None
        matmul(w2, cols, out=z2[:, start * hw:stop * hw])
    y = np.empty((n, c_out, *out_hw), dtype=x.dtype)
    _from_blocked(y.nbytes, z2.reshape(-1), bias, bool(relu), BATCH_BLOCK, y.reshape(n, c_out, hw))
    return y, kept


def conv_backward(dy, x, weight, stride, padding, dilation=(1, 1), relu_output=None, cols=None,
                  input_grad=True):
    """``(dx, dweight, dbias)`` of ``conv`` from ``dy = dL/dy`` (N, C_out, Ho, Wo); ``dx`` is
    ``None`` when ``input_grad`` is false. With ``relu_output`` (the ``y`` of ``conv(...,
    relu=True)``) the gradient goes back through the ReLU first: ``dz = dy * [y > 0]``.

    ``cols``, forward's ``kept`` list, saves recomputing the columns; they are spent
    afterwards (the columns' gradient is written over them).
    """
    x, weight, out_hw = _check(x, weight, stride, padding, dilation, "batch_inner.conv_backward")
    n, c_in, h, w = x.shape
    c_out, taps = weight.shape[0], weight[0].size
    hw = out_hw[0] * out_hw[1]
    expected = (n, c_out, *out_hw)
    for name, a in (("dy", dy), ("relu_output", dy if relu_output is None else relu_output)):
        if not isinstance(a, np.ndarray) or a.shape != expected:
            raise ValueError(f"batch_inner.conv_backward expected {name} of shape {expected} for x of shape "
                             f"{x.shape} and weight shape {weight.shape}, got {getattr(a, 'shape', type(a).__name__)}")
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    relu = relu_output is not None
    mask = np.ascontiguousarray(relu_output, dtype=x.dtype) if relu else dy
    geometry = _geometry(weight.shape[2:], stride, padding, dilation)
    lanes = _lanes(n, taps, hw, x.dtype)
    if lanes:  # block by block (``_conv_backward_by_block``); forward kept no columns
        dweight = np.empty((lanes, c_out, taps), dtype=x.dtype)
        dbias = np.empty((lanes, c_out))
        dx = np.empty(x.shape if input_grad else (0, c_in, h, w), dtype=x.dtype)
        w2 = weight.reshape(c_out, taps)
        with one_blas_thread():
            _conv_backward_by_block(blas.gemm_function(x.dtype), dy, mask, relu, x, BATCH_BLOCK, w2,
                                    np.ascontiguousarray(w2.T), input_grad, dx, dweight, dbias,
                                    *_lane_buffers(lanes, x[0].size, taps * hw, c_out * hw, x.dtype), *geometry)
        for lane in range(1, lanes):  # in lane order: the same sums every call
            dweight[0] += dweight[lane]
            dbias[0] += dbias[lane]
        return dx if input_grad else None, dweight[0].reshape(weight.shape), dbias[0].astype(x.dtype)
    dz2 = scratch("gemm", (c_out, n * hw), x.dtype)
    dbias = np.empty(c_out)
    _to_blocked(dy.nbytes, dy.reshape(n, c_out, hw), mask.reshape(n, c_out, hw), relu, BATCH_BLOCK,
                dz2.reshape(-1), dbias)
    chunks = _chunks(n, taps * hw * x.itemsize)
    kept = _reusable(cols, (taps, n * hw), x.dtype) if len(chunks) == 1 else None
    xb = None if kept is not None else _blocked(x, "batch_inner.x")
    dweight = np.zeros((c_out, taps), dtype=x.dtype)
    for start, stop in chunks:
        block = kept if kept is not None else _columns(xb, x.shape, geometry, out_hw, (start, stop),
                                                       scratch("cols", (taps, (stop - start) * hw), x.dtype))
        dweight += matmul_nt(dz2[:, start * hw:stop * hw], block)
    if not input_grad:
        return None, dweight.reshape(weight.shape), dbias.astype(x.dtype)
    w2t = weight.reshape(c_out, taps).T
    dxb = scratch("batch_inner.dx", (x.size,), x.dtype)
    for start, stop in chunks:
        dcols = kept if kept is not None else scratch("cols", (taps, (stop - start) * hw), x.dtype)
        matmul(w2t, dz2[:, start * hw:stop * hw], out=dcols)
        _col2im(dcols.nbytes, dcols, n, c_in, h, w, BATCH_BLOCK, start, stop, dxb, *geometry, *out_hw)
    dx = np.empty(x.shape, dtype=x.dtype)
    _from_blocked(dx.nbytes, dxb, np.zeros(c_in, x.dtype), False, BATCH_BLOCK, dx.reshape(n, c_in, h * w))
    return dx, dweight.reshape(weight.shape), dbias.astype(x.dtype)
