"""Numba CPU kernels, same signatures and results as ``reference.py``.

Each public function is a thin wrapper: it checks and converts its arguments
(contiguous float32/float64 arrays, plain int geometry), allocates the output
and calls one ``@njit(cache=True)`` core. The cores are compiled once per dtype
on first use and cached on disk, so later processes start fast.

How the work is split across threads
------------------------------------
Small calls run on the calling thread: each core exists in a parallel and a
serial version, picked per call by the bytes it touches (``PARALLEL_MIN_BYTES``,
see ``_Kernel``). In the parallel version every core uses ``prange`` over an axis whose iterations write to
*disjoint* parts of the output, so no two threads ever write the same element
and no atomics or locks are needed:

* ``im2col``: over rows of ``cols`` (one ``(c, i, j)`` triple each);
* everything else: over ``(n, c)`` image planes. A backward pass that scatters
  (``col2im``, pooling and depthwise backward) accumulates into its own plane
  of ``dx`` only, which stays in L1/L2 cache while it is summed into.

Inner loops run along output columns (``ow``) so reads and writes are
unit-stride when ``stride == 1`` and LLVM can vectorise them. Padding is
handled by clipping each loop's range (``_valid_range``) rather than testing
every element, so the hot loops carry no branches.

GEMMs are not here: the convolution layers call ``x @ y``, which NumPy hands to
OpenBLAS (see ``minicnn.threads`` for why the two thread pools must not fight);
``matmul_nt`` only reshapes one case OpenBLAS runs slowly, and ``matmuls_side_by_side``
(with ``matmul_each`` and ``sum_matmul_nt`` on top) only decides which thread calls
BLAS for each of many independent products.
"""
from __future__ import annotations

import types
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

import numpy as np
from numba import get_num_threads, njit, prange

from minicnn.backend import scratch

from . import blas
from .reference import check_out, output_hw

__all__ = [
    "im2col", "col2im", "maxpool_forward", "maxpool_backward",
    "avgpool_forward", "avgpool_backward", "depthwise_forward", "depthwise_backward",
    "batchnorm_forward", "batchnorm_backward", "conv_epilogue", "conv_epilogue_backward", "matmul_nt",
    "matmul_each", "sum_matmul_nt", "matmuls_side_by_side", "one_blas_thread",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------- argument handling
def _as_float_array(a, what: str, rank: int | None = 4):
    """``a`` contiguous, checked to be float32/float64 with ``rank`` dimensions (any with None)."""
    a = np.ascontiguousarray(a)
    if a.dtype not in _FLOATS:
        raise TypeError(f"minicnn CPU kernels expected {what} as float32 or float64, got {a.dtype}")
    if rank is not None and a.ndim != rank:
        raise ValueError(f"minicnn CPU kernels expected {what} with {rank} dimensions, got shape {a.shape}")
    return a


def _geometry(kernel, stride, padding, dilation=(1, 1)):
    """Plain ints ``kh, kw, sh, sw, pt, pl, dh, dw`` (bottom/right pads only set the output size)."""
    (kh, kw), (sh, sw), (pt, _, pl, _), (dh, dw) = kernel, stride, padding, dilation
    return int(kh), int(kw), int(sh), int(sw), int(pt), int(pl), int(dh), int(dw)


# ---------------------------------------------------------------- serial or parallel
# Waking a thread pool is not free: a Numba parallel launch costs 80-110 us on the benchmark
# machine (its idle workers sleep, see minicnn.threads), more than a whole max-pool of
# LeNet-5's second layer takes on one core (18 us). So every core is compiled twice, once with
# ``prange`` spread over threads and once with ``prange`` run as a plain ``range``, and each
# call picks by the bytes it touches. On LeNet-5 (batch 128) every kernel is below the line
# and the training step got 7-25 % faster; the 64x64x32x32 layers stay parallel.
PARALLEL_MIN_BYTES = 8 * 2**20
"""Kernels touching fewer bytes than this run on the calling thread; tests set it to 0 or a
huge value to check both compiled versions."""


class _Kernel:
    """A Numba core compiled parallel and serial; ``kernel(work_bytes, *args)`` runs one."""

    def __init__(self, fn, options):
        self.parallel = njit(cache=True, parallel=True, **options)(fn)
        # A twin with its own name: Numba's on-disk cache is keyed by the function's name,
        # not by its compile options, so the serial version must not share the parallel's.
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                  fn.__defaults__, fn.__closure__)
        twin.__qualname__ = fn.__qualname__ + "_serial"
        self.serial = njit(cache=True, **options)(twin)

    def __call__(self, work_bytes, *args):
        core = self.parallel if work_bytes >= PARALLEL_MIN_BYTES else self.serial
        return core(*args)


def _kernel(**options):
    """``@_kernel(fastmath=...)``: decorate a ``prange`` core as a ``_Kernel``."""
    return lambda fn: _Kernel(fn, options)


@njit(cache=True, inline="always")
def _valid_range(offset, stride, size, out):
    """Outputs ``o`` in ``[lo, hi)`` whose input index ``o*stride + offset`` lies in ``[0, size)``."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = out
    last = size - 1 - offset  # o*stride <= last
    if last < 0:
        hi = 0
    elif last // stride + 1 < out:
        hi = last // stride + 1
    if hi < lo:
        hi = lo
    return lo, hi


# Flat indices are cast to unsigned before use: Numba then skips the check for
# negative (wrap-around) indices, which otherwise keeps LLVM from vectorising the
# inner loops. Measured on the depthwise forward: 65 ms -> 12 ms.
_unsigned = np.uintp


# ---------------------------------------------------------------- im2col / col2im
@_kernel()
def _im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    n, c, h, w = x.shape
    xf, cf = x.reshape(-1), cols.reshape(-1)
    # One (c, i, j) row of cols per iteration: rows are disjoint and each is one
    # long sequential write stream of N*Ho*Wo values.
    for row in prange(c * kh * kw):
        ch, i, j = row // (kh * kw), (row // kw) % kh, row % kw
        iw0 = j * dw - pl
        ow_lo, ow_hi = _valid_range(iw0, sw, w, wo)
        oh_lo, oh_hi = _valid_range(i * dh - pt, sh, h, ho)
        for b in range(n):
            base = row * n * ho * wo + b * ho * wo
            # Padding is written as zeros with plain loops: slice assignments here
            # (mostly empty ones) cost more than the copy itself (L3: 22 ms -> 9.5 ms).
            for oh in range(ho):
                dst = base + oh * wo
                if oh < oh_lo or oh >= oh_hi:                  # a row in the top/bottom padding
                    for ow in range(wo):
                        cf[_unsigned(dst + ow)] = 0
                    continue
                src = ((b * c + ch) * h + oh * sh + i * dh - pt) * w + iw0
                for ow in range(ow_lo):                        # left padding
                    cf[_unsigned(dst + ow)] = 0
                for ow in range(ow_hi, wo):                    # right padding
                    cf[_unsigned(dst + ow)] = 0
                if sw == 1:  # unit stride spelled out for LLVM (L2's im2col: 0.64 -> 0.61 ms)
                    for ow in range(ow_lo, ow_hi):
                        cf[_unsigned(dst + ow)] = xf[_unsigned(src + ow)]
                else:
                    for ow in range(ow_lo, ow_hi):
                        cf[_unsigned(dst + ow)] = xf[_unsigned(src + ow * sw)]


@_kernel()
def _col2im(cols, dx, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    n, c, h, w = dx.shape
    cf, df = cols.reshape(-1), dx.reshape(-1)
    # One (n, c) plane of dx per iteration: a thread sums the kh*kw column rows
    # of its channel into its own plane, so there are no write races.
    for plane in prange(n * c):
        b, ch = plane // c, plane % c
        for i in range(kh):
            oh_lo, oh_hi = _valid_range(i * dh - pt, sh, h, ho)
            for j in range(kw):
                iw0 = j * dw - pl
                ow_lo, ow_hi = _valid_range(iw0, sw, w, wo)
                row = (ch * kh + i) * kw + j
                for oh in range(oh_lo, oh_hi):
                    dst = (plane * h + oh * sh + i * dh - pt) * w + iw0
                    src = row * n * ho * wo + (b * ho + oh) * wo
                    if sw == 1:  # unit stride spelled out, as in _im2col
                        for ow in range(ow_lo, ow_hi):
                            df[_unsigned(dst + ow)] += cf[_unsigned(src + ow)]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            df[_unsigned(dst + ow * sw)] += cf[_unsigned(src + ow)]


def im2col(x, kernel, stride, padding, dilation=(1, 1), out=None):
    """Unfold every receptive field of ``x`` into a column: ``(C*kh*kw, N*Ho*Wo)``, into ``out`` if given."""
    x = _as_float_array(x, "x")
    n, c = x.shape[:2]
    kh, kw, sh, sw, pt, pl, dh, dw = _geometry(kernel, stride, padding, dilation)
    ho, wo = output_hw(x.shape, kernel, stride, padding, dilation)
    shape = (c * kh * kw, n * ho * wo)
    check_out(out, shape, x.dtype, "im2col")
    cols = np.empty(shape, dtype=x.dtype) if out is None else out
    _im2col(cols.nbytes, x, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
    return cols


def col2im(cols, x_shape, kernel, stride, padding, dilation=(1, 1)):
    """Adjoint of ``im2col``: sum every column entry back onto the pixel it came from."""
    cols = _as_float_array(cols, "cols", rank=2)
    x_shape = tuple(int(s) for s in x_shape)
    kh, kw, sh, sw, pt, pl, dh, dw = _geometry(kernel, stride, padding, dilation)
    ho, wo = output_hw(x_shape, kernel, stride, padding, dilation)
    expected = (x_shape[1] * kh * kw, x_shape[0] * ho * wo)
    if cols.shape != expected:
        raise ValueError(f"col2im expected cols of shape {expected} for x_shape {x_shape}, got {cols.shape}")
    dx = np.zeros(x_shape, dtype=cols.dtype)
    _col2im(cols.nbytes, cols, dx, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo)
    return dx


# ---------------------------------------------------------------- max pooling
@_kernel()
def _maxpool_forward(x, y, argmax, kh, kw, sh, sw, pt, pl):
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    xf, yf, af = x.reshape(-1), y.reshape(-1), argmax.reshape(-1)
    for plane in prange(n * c):  # planes are independent
        plane_start = plane * h * w
        for oh in range(ho):
            ih0 = oh * sh - pt
            i_lo, i_hi = max(0, -ih0), min(kh, h - ih0)
            for ow in range(wo):
                iw0 = ow * sw - pl
                j_lo, j_hi = max(0, -iw0), min(kw, w - iw0)
                # Padded cells are skipped, so they never win; a strict '>' keeps
                # the first maximum in row-major window order (the reference's tie rule).
                # The update is two selects, not an `if`: on real data the comparison is
                # unpredictable and a branch mispredicts (LeNet's pool: 1.47 -> 0.75 ms).
                best_at = (ih0 + i_lo) * w + iw0 + j_lo
                best = xf[_unsigned(plane_start + best_at)]
                for i in range(i_lo, i_hi):
                    row_start = (ih0 + i) * w + iw0
                    for j in range(j_lo, j_hi):
                        v = xf[_unsigned(plane_start + row_start + j)]
                        greater = v > best
                        best = v if greater else best
                        best_at = (row_start + j) if greater else best_at
                out = (plane * ho + oh) * wo + ow
                yf[_unsigned(out)] = best
                af[_unsigned(out)] = best_at


@_kernel()
def _maxpool_forward_2x2(x, y, argmax):
    """``_maxpool_forward`` for the common case, 2x2 windows at stride 2 without padding.

    Every window lies inside the image, so there is nothing to clip and the four
    candidates are named outright: 4-5x faster than the general loop (LeNet's first
    pool: 1.08 -> 0.25 ms; 64x64x32x32: 5.4 -> 1.0 ms).
    """
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    xf, yf, af = x.reshape(-1), y.reshape(-1), argmax.reshape(-1)
    for plane in prange(n * c):
        plane_start = plane * h * w
        for oh in range(ho):
            out = (plane * ho + oh) * wo
            for ow in range(wo):
                at = 2 * oh * w + 2 * ow  # top-left; then top-right, bottom-left, bottom-right
                best, best_at = xf[_unsigned(plane_start + at)], at
                for k in (at + 1, at + w, at + w + 1):  # strict '>': the first maximum wins
                    v = xf[_unsigned(plane_start + k)]
                    greater = v > best
                    best = v if greater else best
                    best_at = k if greater else best_at
                yf[_unsigned(out + ow)] = best
                af[_unsigned(out + ow)] = best_at


@_kernel()
def _maxpool_backward(dy, argmax, dx):
    n, c, h, w = dx.shape
    per_plane = dy.shape[2] * dy.shape[3]
    dyf, af, dxf = dy.reshape(-1), argmax.reshape(-1), dx.reshape(-1)
    for plane in prange(n * c):  # a window's winner is always in its own plane
        for k in range(plane * per_plane, (plane + 1) * per_plane):
            dxf[_unsigned(plane * h * w + af[_unsigned(k)])] += dyf[_unsigned(k)]


def maxpool_forward(x, kernel, stride, padding):
    """Max over each window; returns ``(y, argmax)`` with ``argmax`` the flat ``h*W + w`` index."""
    x = _as_float_array(x, "x")
    n, c = x.shape[:2]
    kh, kw, sh, sw, pt, pl, _, _ = _geometry(kernel, stride, padding)
    ho, wo = output_hw(x.shape, kernel, stride, padding)
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = np.empty((n, c, ho, wo), dtype=np.int64)
    if (kh, kw, sh, sw) == (2, 2, 2, 2) and not any(padding):
        _maxpool_forward_2x2(x.nbytes, x, y, argmax)
    else:
        _maxpool_forward(x.nbytes, x, y, argmax, kh, kw, sh, sw, pt, pl)
    return y, argmax


def maxpool_backward(dy, argmax, x_shape):
    """Route each output gradient to the input pixel that won its window (summing repeats)."""
    dy = _as_float_array(dy, "dy")
    argmax = np.ascontiguousarray(argmax, dtype=np.int64)
    if argmax.shape != dy.shape:
        raise ValueError(f"maxpool_backward expected argmax of shape {dy.shape}, got {argmax.shape}")
    dx = np.zeros(tuple(int(s) for s in x_shape), dtype=dy.dtype)
    _maxpool_backward(dx.nbytes, dy, argmax, dx)
    return dx


# ---------------------------------------------------------------- average pooling
@_kernel()
def _avgpool_forward(x, y, kh, kw, sh, sw, pt, pl):
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    xf, yf = x.reshape(-1), y.reshape(-1)
    scale = 1.0 / (kh * kw)  # count_include_pad: padded cells add zero but count
    for plane in prange(n * c):
        for oh in range(ho):
            ih0 = oh * sh - pt
            i_lo, i_hi = max(0, -ih0), min(kh, h - ih0)
            for ow in range(wo):
                iw0 = ow * sw - pl
                j_lo, j_hi = max(0, -iw0), min(kw, w - iw0)
                total = xf[0] * 0  # zero of x's dtype: float32 sums stay float32
                for i in range(i_lo, i_hi):
                    for j in range(j_lo, j_hi):
                        total += xf[_unsigned((plane * h + ih0 + i) * w + iw0 + j)]
                yf[_unsigned((plane * ho + oh) * wo + ow)] = total * scale


@_kernel()
def _avgpool_backward(dy, dx, kh, kw, sh, sw, pt, pl):
    n, c, h, w = dx.shape
    ho, wo = dy.shape[2], dy.shape[3]
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    scale = 1.0 / (kh * kw)
    for plane in prange(n * c):  # each thread spreads into its own plane
        for oh in range(ho):
            ih0 = oh * sh - pt
            i_lo, i_hi = max(0, -ih0), min(kh, h - ih0)
            for ow in range(wo):
                iw0 = ow * sw - pl
                j_lo, j_hi = max(0, -iw0), min(kw, w - iw0)
                share = dyf[_unsigned((plane * ho + oh) * wo + ow)] * scale
                for i in range(i_lo, i_hi):
                    for j in range(j_lo, j_hi):
                        dxf[_unsigned((plane * h + ih0 + i) * w + iw0 + j)] += share


def avgpool_forward(x, kernel, stride, padding):
    """Mean over each window; padded cells count as zeros (divisor ``kh*kw``)."""
    x = _as_float_array(x, "x")
    n, c = x.shape[:2]
    kh, kw, sh, sw, pt, pl, _, _ = _geometry(kernel, stride, padding)
    ho, wo = output_hw(x.shape, kernel, stride, padding)
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    _avgpool_forward(x.nbytes, x, y, kh, kw, sh, sw, pt, pl)
    return y


def avgpool_backward(dy, x_shape, kernel, stride, padding):
    """Spread each output gradient evenly, ``dy / (kh*kw)``, over its window."""
    dy = _as_float_array(dy, "dy")
    kh, kw, sh, sw, pt, pl, _, _ = _geometry(kernel, stride, padding)
    dx = np.zeros(tuple(int(s) for s in x_shape), dtype=dy.dtype)
    _avgpool_backward(dx.nbytes, dy, dx, kh, kw, sh, sw, pt, pl)
    return dx


# ---------------------------------------------------------------- rows of filter taps
# Shared by the direct convolutions (``direct.py``) and the stride-1 depthwise cores below:
# on a zero-padded plane laid out in rows of the padded width ``Wp``, output position
# ``i*Wp + j`` reads input position ``(i + p)*Wp + j + q`` for tap ``(p, q)``, so a filter row
# is one unit-stride loop over the whole plane (``direct.py``'s docstring draws it).
@njit(cache=True, inline="always")
def _add_row(acc, xf, start, length, wrow, first, beta):
    """``acc[j] (+)= sum_q wrow[q] * xf[start + j + q]`` for ``j < length``; ``first`` sets
    ``acc = beta + ...`` instead. Rows of 5 and 3 taps are spelled out: one load and store
    of ``acc`` per row (the loop LLVM vectorises); other widths go tap by tap."""
    kw = wrow.shape[0]
    if kw == 5:
        w0, w1, w2, w3, w4 = wrow[0], wrow[1], wrow[2], wrow[3], wrow[4]
        for j in range(length):
            s = start + j
            v = (w0 * xf[_unsigned(s)] + w1 * xf[_unsigned(s + 1)] + w2 * xf[_unsigned(s + 2)]
                 + w3 * xf[_unsigned(s + 3)] + w4 * xf[_unsigned(s + 4)])
            acc[j] = beta + v if first else acc[j] + v
    elif kw == 3:
        w0, w1, w2 = wrow[0], wrow[1], wrow[2]
        for j in range(length):
            s = start + j
            v = w0 * xf[_unsigned(s)] + w1 * xf[_unsigned(s + 1)] + w2 * xf[_unsigned(s + 2)]
            acc[j] = beta + v if first else acc[j] + v
    else:
        if first:
            for j in range(length):
                acc[j] = beta
        for q in range(kw):
            wq = wrow[q]
            for j in range(length):
                acc[j] += wq * xf[_unsigned(start + q + j)]


@njit(cache=True, inline="always")
def _row_dots(grid, xf, start, length, out, zero):
    """``out[q] = sum_j grid[j] * xf[start + j + q]`` for each tap ``q`` of a filter row;
    ``zero`` is 0 in the data's dtype (float32 sums stay float32, and vectorise)."""
    kw = out.shape[0]
    if kw == 5:
        s0, s1, s2, s3, s4 = zero, zero, zero, zero, zero
        for j in range(length):
            gj, s = grid[j], start + j
            s0 += gj * xf[_unsigned(s)]
            s1 += gj * xf[_unsigned(s + 1)]
            s2 += gj * xf[_unsigned(s + 2)]
            s3 += gj * xf[_unsigned(s + 3)]
            s4 += gj * xf[_unsigned(s + 4)]
        out[0], out[1], out[2], out[3], out[4] = s0, s1, s2, s3, s4
    elif kw == 3:
        s0, s1, s2 = zero, zero, zero
        for j in range(length):
            gj, s = grid[j], start + j
            s0 += gj * xf[_unsigned(s)]
            s1 += gj * xf[_unsigned(s + 1)]
            s2 += gj * xf[_unsigned(s + 2)]
        out[0], out[1], out[2] = s0, s1, s2
    else:
        for q in range(kw):
            total = zero
            for j in range(length):
                total += grid[j] * xf[_unsigned(start + q + j)]
            out[q] = total


# ---------------------------------------------------------------- depthwise convolution
# Direct loops, no im2col: a depthwise conv does only kh*kw multiply-adds per
# output, so it is memory-bound and unfolding would multiply the traffic by kh*kw.
@_kernel()
def _depthwise_forward(x, weight, bias, y, m, kh, kw, sh, sw, pt, pl, dh, dw):
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    xf, yf = x.reshape(-1), y.reshape(-1)
    for plane in prange(n * c):  # one input plane feeds its m output planes
        b, ch = plane // c, plane % c
        for f in range(ch * m, ch * m + m):
            out = (b * c * m + f) * ho * wo
            yf[out:out + ho * wo] = bias[f]  # the bias first: no pass of its own
            # Tap by tap: each pass adds w[i, j] * (shifted input rows) to the
            # output plane, a unit-stride loop over ow that LLVM vectorises.
            for i in range(kh):
                oh_lo, oh_hi = _valid_range(i * dh - pt, sh, h, ho)
                for j in range(kw):
                    iw0 = j * dw - pl
                    ow_lo, ow_hi = _valid_range(iw0, sw, w, wo)
                    wij = weight[f, 0, i, j]
                    for oh in range(oh_lo, oh_hi):
                        src = (plane * h + oh * sh + i * dh - pt) * w + iw0
                        dst = out + oh * wo
                        if sw == 1:  # unit stride spelled out for LLVM (L5 forward: 8.1 -> 6.8 ms serial)
                            for ow in range(ow_lo, ow_hi):
                                yf[_unsigned(dst + ow)] += wij * xf[_unsigned(src + ow)]
                        else:
                            for ow in range(ow_lo, ow_hi):
                                yf[_unsigned(dst + ow)] += wij * xf[_unsigned(src + ow * sw)]


@_kernel(fastmath={"reassoc", "contract"})
def _depthwise_backward(dy, x, weight, dx, dweight_partial, dbias_partial, m, kh, kw, sh, sw, pt, pl, dh, dw):
    n, c, h, w = x.shape
    ho, wo = dy.shape[2], dy.shape[3]
    dyf, xf, dxf = dy.reshape(-1), x.reshape(-1), dx.reshape(-1)
    # Per (n, c) plane: dx[n, c] and dweight_partial[n, c*m:(c+1)*m] belong to
    # this iteration alone; the caller sums the partial weight grads over n.
    for plane in prange(n * c):
        b, ch = plane // c, plane % c
        # The weight gradient's products are summed elementwise along a row (a vector FMA,
        # no horizontal sum per row) and the row of sums is added up once per tap.
        row_sums = np.empty(wo, dtype=dy.dtype)
        for f in range(ch * m, ch * m + m):
            grad = (b * c * m + f) * ho * wo
            total = dyf[0] * 0  # the bias gradient's share of this plane, while it is in cache
            for k in range(ho * wo):
                total += dyf[_unsigned(grad + k)]
            dbias_partial[b, f] = total
            for i in range(kh):
                oh_lo, oh_hi = _valid_range(i * dh - pt, sh, h, ho)
                for j in range(kw):
                    iw0 = j * dw - pl
                    ow_lo, ow_hi = _valid_range(iw0, sw, w, wo)
                    wij = weight[f, 0, i, j]
                    row_sums[:] = 0
                    for oh in range(oh_lo, oh_hi):
                        pix = (plane * h + oh * sh + i * dh - pt) * w + iw0
                        src = grad + oh * wo
                        # Two loops, not one: each alone vectorises. Unit stride spelled out
                        # as in the forward; with the row sums, L5 backward 20.8 -> 15.6 ms serial.
                        if sw == 1:
                            for ow in range(ow_lo, ow_hi):
                                dxf[_unsigned(pix + ow)] += wij * dyf[_unsigned(src + ow)]
                            for ow in range(ow_lo, ow_hi):
                                row_sums[_unsigned(ow)] += dyf[_unsigned(src + ow)] * xf[_unsigned(pix + ow)]
                        else:
                            for ow in range(ow_lo, ow_hi):
                                dxf[_unsigned(pix + ow * sw)] += wij * dyf[_unsigned(src + ow)]
                            for ow in range(ow_lo, ow_hi):
                                row_sums[_unsigned(ow)] += dyf[_unsigned(src + ow)] * xf[_unsigned(pix + ow * sw)]
                    dweight_partial[b, f, i, j] = row_sums.sum()


# Stride 1, no dilation, pads <= k - 1 (MobileNet's 3x3 layers, L5): the tap-by-tap loops above
# run one output row at a time, ``Wo`` values a loop, which on a 16x16 plane is all overhead.
# These cores copy each plane, zero-padded, into rows of the padded width (as ``direct.py``)
# so that a filter row is one loop over the whole plane (``_add_row``, ``_row_dots``); the
# input gradient is the forward sum over ``dy`` padded by ``k - 1 - pad`` with the filter
# flipped. Planes go in chunks of ``_GRID_PLANES`` per task: the scratch grids are allocated,
# and their padding zeroed, once per chunk (only the interiors are rewritten per plane).
# Measured (forward + backward, 3x3 pad 1, 2 cores, 3 interleaved rounds): 32x128x16x16 8.3 ->
# 2.6 ms, 32x32x32x32 5.9 -> 2.5, 32x128x8x8 3.8 -> 1.3, L5's 64x64x32x32 20.2 -> 9.8 (in the
# benchmark L5 7.7-9.7 ms against torch's 47-55 in the same runs, ninth session). As on
# ``direct.py``'s grid, the weight gradient also multiplies ``dy``'s zero garbage columns by
# input pixels: an Inf or NaN in ``x`` turns more taps NaN than an exact sum would.
_GRID_PLANES = 16


@njit(cache=True, inline="always")
def _into_grid(src, start, h, w, grid, offset, wp):
    """Copy the ``h x w`` plane at ``src[start:]`` into ``grid``, row ``i`` at ``offset + i*wp``."""
    for i in range(h):
        for j in range(w):
            grid[_unsigned(offset + i * wp + j)] = src[_unsigned(start + i * w + j)]


@_kernel(fastmath={"contract"})
def _depthwise_forward_grid(x, weight, bias, y, pt, pl):
    n, c, h, w = x.shape
    m, kh, kw = weight.shape[0] // c, weight.shape[2], weight.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    hp, wp = ho + kh - 1, wo + kw - 1
    xf, yf = x.reshape(-1), y.reshape(-1)
    planes = n * c
    for chunk in prange((planes + _GRID_PLANES - 1) // _GRID_PLANES):  # disjoint planes of y
        padded = np.zeros(hp * wp + kw, dtype=x.dtype)  # + kw: the last row's garbage columns read past it
        acc = np.empty(ho * wp, dtype=y.dtype)
        for plane in range(chunk * _GRID_PLANES, min(planes, (chunk + 1) * _GRID_PLANES)):
            b, ch = plane // c, plane % c
            _into_grid(xf, plane * h * w, h, w, padded, pt * wp + pl, wp)
            for f in range(ch * m, ch * m + m):
                for p in range(kh):
                    _add_row(acc, padded, p * wp, ho * wp, weight[f, 0, p], p == 0, bias[f])
                dst = (b * c * m + f) * ho * wo
                for i in range(ho):  # the valid columns of the grid
                    for j in range(wo):
                        yf[_unsigned(dst + i * wo + j)] = acc[_unsigned(i * wp + j)]


@_kernel(fastmath={"reassoc", "contract"})  # reassoc: vectorised dot products
def _depthwise_backward_grid(dy, x, flipped, dx, dweight_partial, dbias_partial, pt, pl):
    n, c, h, w = x.shape
    m, kh, kw = flipped.shape[0] // c, flipped.shape[2], flipped.shape[3]
    ho, wo = dy.shape[2], dy.shape[3]
    hp, wp = ho + kh - 1, wo + kw - 1  # x's padded grid
    hz, wz = h + kh - 1, w + kw - 1    # dy's, padded by k - 1 - pad, for the input gradient
    gt, gl = kh - 1 - pt, kw - 1 - pl
    dyf, xf, dxf = dy.reshape(-1), x.reshape(-1), dx.reshape(-1)
    planes = n * c
    for chunk in prange((planes + _GRID_PLANES - 1) // _GRID_PLANES):
        padded = np.zeros(hp * wp + kw, dtype=x.dtype)
        grid = np.zeros(ho * wp, dtype=dy.dtype)      # dy on x's grid: garbage columns stay 0
        dz_pad = np.zeros(hz * wz + kw, dtype=dy.dtype)
        acc = np.empty(h * wz, dtype=dy.dtype)
        dots = np.zeros(kw, dtype=dy.dtype)
        zero = dots[0]  # float32 sums stay float32, and vectorise
        for plane in range(chunk * _GRID_PLANES, min(planes, (chunk + 1) * _GRID_PLANES)):
            b, ch = plane // c, plane % c
            _into_grid(xf, plane * h * w, h, w, padded, pt * wp + pl, wp)
            for f in range(ch * m, ch * m + m):
                src, total = (b * c * m + f) * ho * wo, 0.0
                for i in range(ho):
                    for j in range(wo):
                        v = dyf[_unsigned(src + i * wo + j)]
                        grid[_unsigned(i * wp + j)] = v
                        dz_pad[_unsigned((i + gt) * wz + gl + j)] = v
                        total += v
                dbias_partial[b, f] = total
                for p in range(kh):
                    _row_dots(grid, padded, p * wp, ho * wp, dweight_partial[b, f, p], zero)
                for p in range(kh):  # this plane's dx collects all m of its filters
                    _add_row(acc, dz_pad, p * wz, h * wz, flipped[f, 0, p], p == 0 and f == ch * m, zero)
            for i in range(h):
                for j in range(w):
                    dxf[_unsigned(plane * h * w + i * w + j)] = acc[_unsigned(i * wz + j)]


def grid_applies(kernel, stride, padding, dilation) -> bool:
    """Can a convolution run on the padded-width grid (these cores, ``direct.py``)? Stride 1,
    no dilation, each pad at most ``k - 1`` (the input gradient pads ``dy`` by ``k - 1 - pad``);
    ``padding`` is ``(top, bottom, left, right)``."""
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1) or len(padding) != 4:
        return False
    kh, kw = (int(k) for k in kernel)
    pt, pb, pl, pr = (int(p) for p in padding)
    return 0 <= pt < kh and 0 <= pb < kh and 0 <= pl < kw and 0 <= pr < kw


DEPTHWISE_GRID = True
"""Run stride-1 depthwise convolutions on the padded-width grid (tests switch it off to
check the general cores on the same shapes)."""


def _strided_on_grid(kernel, stride, padding, dilation) -> bool:
    """Stride 2 (either axis), no dilation, pads <= k - 1: the output is every second one of
    the stride-1 output, and the gradients are the stride-1 ones for a ``dy`` spread out with
    zeros between. The grid cores then do up to 4x the work, and still beat the general
    cores' strided loops: forward + backward, 3x3 pad 1, 32x64x32x32 7.6 -> 6.3 ms,
    32x128x16x16 5.9 -> 3.7 (MobileNet-mini's two stride-2 layers; 3 interleaved rounds)."""
    return tuple(stride) != (1, 1) and max(stride) <= 2 and grid_applies(kernel, (1, 1), padding, dilation)


def depthwise_forward(x, weight, stride, padding, dilation=(1, 1), bias=None):
    """Each input channel convolved with its own ``m`` filters (torch ``groups=C``), plus ``bias``."""
    x = _as_float_array(x, "x")
    weight = np.ascontiguousarray(weight, dtype=x.dtype)
    n, c = x.shape[:2]
    if weight.ndim != 4 or weight.shape[1] != 1 or weight.shape[0] % c:
        raise ValueError(f"depthwise_forward expected weight (C*m, 1, kh, kw) with C={c}, got {weight.shape}")
    m, kernel = weight.shape[0] // c, weight.shape[2:]
    kh, kw, sh, sw, pt, pl, dh, dw = _geometry(kernel, stride, padding, dilation)
    ho, wo = output_hw(x.shape, kernel, stride, padding, dilation)
    bias = np.zeros(c * m, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    if bias.shape != (c * m,):
        raise ValueError(f"depthwise_forward expected bias of shape {(c * m,)}, got {bias.shape}")
    if DEPTHWISE_GRID and grid_applies(kernel, stride, padding, dilation):
        y = np.empty((n, c * m, ho, wo), dtype=x.dtype)
        _depthwise_forward_grid(y.nbytes * kh * kw, x, weight, bias, y, pt, pl)
        return y
    if DEPTHWISE_GRID and _strided_on_grid(kernel, stride, padding, dilation):  # every (sh, sw)-th output of stride 1
        full = depthwise_forward(x, weight, (1, 1), padding, (1, 1), bias)
        return np.ascontiguousarray(full[:, :, ::sh, ::sw][:, :, :ho, :wo])
    y = np.empty((n, c * m, ho, wo), dtype=x.dtype)
    _depthwise_forward(y.nbytes * kh * kw, x, weight, bias, y, m, kh, kw, sh, sw, pt, pl, dh, dw)
    return y


def depthwise_backward(dy, x, weight, stride, padding, dilation=(1, 1)):
    """Returns ``(dx, dweight, dbias)`` for ``depthwise_forward``."""
    dy = _as_float_array(dy, "dy")
    x = np.ascontiguousarray(x, dtype=dy.dtype)
    weight = np.ascontiguousarray(weight, dtype=dy.dtype)
    n, c = x.shape[:2]
    m, kernel = weight.shape[0] // c, weight.shape[2:]
    kh, kw, sh, sw, pt, pl, dh, dw = _geometry(kernel, stride, padding, dilation)
    if dy.shape != (n, c * m) + output_hw(x.shape, kernel, stride, padding, dilation):
        raise ValueError(f"depthwise_backward got dy of shape {dy.shape} "
                         f"for x {x.shape}, weight {weight.shape}")
    if DEPTHWISE_GRID and _strided_on_grid(kernel, stride, padding, dilation):  # dy spread over the stride-1 output
        full_hw = output_hw(x.shape, kernel, (1, 1), padding, (1, 1))
        dy_full = np.zeros((n, c * m) + full_hw, dtype=dy.dtype)
        dy_full[:, :, ::sh, ::sw][:, :, :dy.shape[2], :dy.shape[3]] = dy
        return depthwise_backward(dy_full, x, weight, (1, 1), padding, (1, 1))
    partial, bias_partial = np.empty((n, c * m, kh, kw), dtype=dy.dtype), np.empty((n, c * m), dtype=dy.dtype)
    if DEPTHWISE_GRID and grid_applies(kernel, stride, padding, dilation):
        dx = np.empty(x.shape, dtype=dy.dtype)
        flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1])
        _depthwise_backward_grid(dy.nbytes * kh * kw, dy, x, flipped, dx, partial, bias_partial, pt, pl)
    else:
        dx = np.zeros(x.shape, dtype=dy.dtype)
        _depthwise_backward(dy.nbytes * kh * kw, dy, x, weight, dx, partial, bias_partial,
                            m, kh, kw, sh, sw, pt, pl, dh, dw)
    return dx, partial.sum(axis=0).reshape(weight.shape), bias_partial.sum(axis=0)


# ---------------------------------------------------------------- batch normalisation (training)
# Fused versions of reference.batchnorm_forward/backward. NumPy's per-channel reductions over axes
# (0, 2, 3) of an NCHW array stride across memory and make several temporaries; here each
# channel is one prange iteration. Batch norm is memory-bound, so what counts is how often
# the big arrays are streamed: forward reads x twice and writes y once (no x_hat: backward
# recomputes it), backward reads dy and x twice and writes dx once. (With x_hat stored, as
# before: 10 passes of 16 MB instead of 8 on the benchmark's 64x64x32x32 input.)
# The per-element arithmetic runs in the data's dtype (float32 vectors: 8 lanes, not 4), the
# per-plane sums are merged in float64, and the per-channel coefficients are float64 rounded
# once. A plane's float32 sum only gives a first centre; its mean and squared deviations come
# from the deviations' own sums, small numbers (a 1e4 offset keeps var to 1e-5 relative).
# Measured against float64 throughout (2 cores, 2 alternating runs): 64x64x32x32 forward
# 2.2-2.5 -> 2.0-2.1 ms, backward 2.9-3.0 -> 2.5-2.6; MobileNet-mini's 32x128x16x16
# backward 1.4 -> 0.6. The benchmark's 64x64x32x32 case: 5.3-7.8 ms against torch's 11.4-17.2
# in the same runs (docs/benchmarks.md, ninth session).
@_kernel(fastmath={"reassoc", "contract"})  # reassoc: vectorised sums
def _batchnorm_forward(x, weight, bias, eps, y, mean, var, inv_std):
    n, c, hw = x.shape
    for ch in prange(c):  # channels are independent
        # Mean and variance in one pass over memory: each (sample, channel) plane is small
        # enough to stay in cache, so it is read twice there (its mean, then its squared
        # deviations), and the planes are merged with Chan et al.'s pairwise update in
        # float64 (float32 sums of 10^5 values drift). Within a plane the sums run in the
        # data's dtype: float32 vectors hold twice the lanes, and a plane is short.
        local = np.zeros(3, dtype=x.dtype)  # float32 scalars for float32 data: local[0] is 0
        mu, m2 = 0.0, 0.0
        for b in range(n):
            plane_sum = local[0]
            for k in range(hw):
                plane_sum += x[b, ch, k]
            local[1] = np.float64(plane_sum) / hw  # a first mean, rounded to the dtype
            centre, sum_d, sum_d2 = local[1], local[0], local[0]
            for k in range(hw):  # deviations from it are small: their float32 sums stay exact-ish
                d = x[b, ch, k] - centre
                sum_d += d
                sum_d2 += d * d
            # The plane's exact mean and sum of squared deviations from the two small sums.
            plane_mean = np.float64(centre) + np.float64(sum_d) / hw
            plane_m2 = np.float64(sum_d2) - np.float64(sum_d) * np.float64(sum_d) / hw
            seen = b * hw  # values merged so far
            delta = plane_mean - mu
            mu += delta * hw / (seen + hw)
            m2 += plane_m2 + delta * delta * seen * hw / (seen + hw)
        sigma2 = m2 / (n * hw)  # biased variance normalises, as torch
        scale = 1.0 / np.sqrt(sigma2 + eps)
        # y = weight * (x - mu) * scale + bias, folded into one multiply-add per value in the
        # data's dtype.
        local[1] = weight[ch] * scale
        local[2] = bias[ch] - mu * (weight[ch] * scale)
        gain, shift = local[1], local[2]
        for b in range(n):
            for k in range(hw):
                y[b, ch, k] = x[b, ch, k] * gain + shift
        mean[ch], var[ch], inv_std[ch] = mu, sigma2, scale


@_kernel(fastmath={"reassoc", "contract"})
def _batchnorm_backward(dy, x, mean, weight, inv_std, dx, dweight, dbias):
    n, c, hw = dy.shape
    count = n * hw
    for ch in prange(c):
        local = np.zeros(4, dtype=dy.dtype)  # the data's dtype, as in the forward
        local[1] = mean[ch]
        mu_d = local[1]
        s = np.float64(inv_std[ch])
        sum_dy, sum_dy_xc = 0.0, 0.0  # per-plane sums in the dtype, merged in float64
        for b in range(n):
            plane_dy, plane_dy_xc = local[0], local[0]
            for k in range(hw):
                g = dy[b, ch, k]
                plane_dy += g
                plane_dy_xc += g * (x[b, ch, k] - mu_d)
            sum_dy += plane_dy
            sum_dy_xc += plane_dy_xc
        sum_dy_xh = sum_dy_xc * s  # sum(dy * x_hat), x_hat = (x - mu) * inv_std
        dweight[ch], dbias[ch] = sum_dy_xh, sum_dy
        # dx = (gamma s / M) (M dy - sum(dy) - x_hat sum(dy x_hat)): affine in dy and (x - mu),
        # its three coefficients computed in float64, then one pass in the data's dtype.
        scale = np.float64(weight[ch]) * s / count
        local[1] = weight[ch] * s
        local[2] = -scale * sum_dy
        local[3] = -scale * s * sum_dy_xh
        a, beta, gamma = local[1], local[2], local[3]
        for b in range(n):
            for k in range(hw):
                dx[b, ch, k] = a * dy[b, ch, k] + beta + gamma * (x[b, ch, k] - mu_d)


def _per_channel_vectors(dtype, *vectors):
    return (np.ascontiguousarray(v, dtype=dtype).reshape(-1) for v in vectors)


def batchnorm_forward(x, weight, bias, eps):
    """Training-mode batch norm of ``(N, C)`` or ``(N, C, H, W)`` ``x`` over all axes but C.

    Returns ``(y, mean, var, inv_std)``: ``var`` is the biased batch variance,
    ``inv_std = 1 / sqrt(var + eps)`` and ``y = weight * (x - mean) * inv_std + bias``;
    the vectors have shape ``(C,)``.
    """
    x = np.ascontiguousarray(x)
    if x.dtype not in _FLOATS or x.ndim not in (2, 4):
        raise ValueError(f"batchnorm_forward expected a float32/float64 (N, C) or (N, C, H, W) array, "
                         f"got {x.dtype} {x.shape}")
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    weight, bias = _per_channel_vectors(x.dtype, weight, bias)
    y = np.empty_like(x3)
    mean, var, inv_std = (np.empty(x.shape[1], dtype=x.dtype) for _ in range(3))
    _batchnorm_forward(x.nbytes, x3, weight, bias, float(eps), y, mean, var, inv_std)
    return y.reshape(x.shape), mean, var, inv_std


def batchnorm_backward(dy, x, mean, weight, inv_std):
    """Training-mode gradients ``(dx, dweight, dbias)`` for ``batchnorm_forward``."""
    dy = np.ascontiguousarray(dy)
    x = np.ascontiguousarray(x, dtype=dy.dtype)
    if dy.dtype not in _FLOATS or dy.ndim not in (2, 4) or x.shape != dy.shape:
        raise ValueError(f"batchnorm_backward expected float dy and x of one (N, C[, H, W]) shape, "
                         f"got {dy.dtype} {dy.shape} and {x.shape}")
    dy3, x3 = dy.reshape(dy.shape[0], dy.shape[1], -1), x.reshape(dy.shape[0], dy.shape[1], -1)
    mean, weight, inv_std = _per_channel_vectors(dy.dtype, mean, weight, inv_std)
    dx = np.empty_like(dy3)
    dweight, dbias = np.empty(dy.shape[1], dtype=dy.dtype), np.empty(dy.shape[1], dtype=dy.dtype)
    _batchnorm_backward(dy.nbytes, dy3, x3, mean, weight, inv_std, dx, dweight, dbias)
    return dx.reshape(dy.shape), dweight, dbias


# ---------------------------------------------------------------- convolution epilogue
# The GEMM leaves a convolution's output as (C, N*Ho*Wo); the layer wants act(z + b) as
# (N, C, Ho, Wo). NumPy needs a pass per step (transpose copy, bias add, ReLU mask, maximum);
# these cores do the lot in one pass, and backward's mask, transpose and bias sum in another.
@_kernel()
def _conv_epilogue(z2, bias, y, relu):
    n, c, hw = y.shape
    zf, yf = z2.reshape(-1), y.reshape(-1)
    for plane in prange(n * c):  # one (n, c) output plane each: disjoint writes
        b, ch = plane // c, plane % c
        beta = bias[ch]
        src, dst = ch * n * hw + b * hw, plane * hw
        if relu:
            for k in range(hw):
                v = zf[_unsigned(src + k)] + beta
                yf[_unsigned(dst + k)] = 0 if v <= 0 else v  # NaN stays NaN, as torch's ReLU
        else:
            for k in range(hw):
                yf[_unsigned(dst + k)] = zf[_unsigned(src + k)] + beta


@_kernel(fastmath={"reassoc"})  # reassoc: a vectorised bias sum
def _conv_epilogue_backward(dy, relu_output, dz2, dbias, relu, gemm_layout, write):
    n, c, hw = dy.shape
    dyf, mf, dzf = dy.reshape(-1), relu_output.reshape(-1), dz2.reshape(-1)
    for ch in prange(c):  # one channel each: its row (or planes) of dz2 and its bias gradient
        total = 0.0  # float64 accumulator
        for b in range(n):
            src = (b * c + ch) * hw
            dst = ch * n * hw + b * hw if gemm_layout else src
            if relu:
                for k in range(hw):
                    g = dyf[_unsigned(src + k)] if mf[_unsigned(src + k)] > 0 else 0
                    dzf[_unsigned(dst + k)] = g
                    total += g
            elif write:
                for k in range(hw):
                    g = dyf[_unsigned(src + k)]
                    dzf[_unsigned(dst + k)] = g
                    total += g
            else:  # dz2 is dy itself: only the sum
                for k in range(hw):
                    total += dyf[_unsigned(src + k)]
        dbias[ch] = total


def conv_epilogue(z2, bias, out_shape, relu):
    """``y = act(z + bias)`` as ``(N, C, Ho, Wo)`` from the GEMM output ``z2`` (C, N*Ho*Wo)."""
    z2 = _as_float_array(z2, "z2", rank=2)
    n, c, ho, wo = (int(s) for s in out_shape)
    if z2.shape != (c, n * ho * wo):
        raise ValueError(f"conv_epilogue expected z2 of shape {(c, n * ho * wo)} for output {out_shape}, "
                         f"got {z2.shape}")
    bias = np.zeros(c, z2.dtype) if bias is None else np.ascontiguousarray(bias, dtype=z2.dtype)
    y = np.empty((n, c, ho, wo), dtype=z2.dtype)
    _conv_epilogue(y.nbytes, z2, bias, y.reshape(n, c, ho * wo), bool(relu))
    return y


def conv_epilogue_backward(dy, relu_output=None, out=None, gemm_layout=True):
    """``(dz2, dbias)``: ``dy * [y > 0]`` (or ``dy``) in GEMM layout, or in ``dy``'s own
    (N, C, Ho, Wo) with ``gemm_layout=False`` (into ``out`` if given), and its per-channel sum.
    With neither a mask nor a transpose to apply and no ``out``, ``dz2`` is ``dy`` itself
    (as in ``reference``): the kernel only sums."""
    dy = _as_float_array(dy, "dy")
    relu = relu_output is not None
    mask = np.ascontiguousarray(relu_output, dtype=dy.dtype) if relu else dy
    if mask.shape != dy.shape:
        raise ValueError(f"conv_epilogue_backward expected relu_output of shape {dy.shape}, got {mask.shape}")
    n, c = dy.shape[:2]
    shape = (c, dy.size // c) if gemm_layout else dy.shape
    check_out(out, shape, dy.dtype, "conv_epilogue_backward")
    write = relu or gemm_layout or out is not None
    dz2 = out if out is not None else np.empty(shape, dtype=dy.dtype) if write else dy
    dbias = np.empty(c, dtype=dy.dtype)
    _conv_epilogue_backward(dy.nbytes, dy.reshape(n, c, -1), mask.reshape(n, c, -1), dz2, dbias, relu,
                            bool(gemm_layout), write)
    return dz2, dbias


# ---------------------------------------------------------------- ReLU
# NumPy's ReLU is two passes and a boolean array (``x > 0``, then ``maximum``) forward and a
# boolean-to-float product backward, all on one thread: on a 32x64x32x32 float32 input 1.6 and
# 1.1 ms against 0.46 and 0.71 here (torch: 0.31 and 0.59). Backward reads ``y``, not a mask:
# ``y > 0`` exactly where ``x > 0`` (NaN: neither).
@_kernel()
def _relu_forward(x, y):
    xf, yf = x.reshape(-1), y.reshape(-1)
    for i in prange(xf.shape[0]):  # one element each: disjoint writes
        v = xf[i]
        yf[i] = 0 if v <= 0 else v  # NaN stays NaN, as torch


@_kernel()
def _relu_backward(dy, y, dx):
    df, yf, xf = dy.reshape(-1), y.reshape(-1), dx.reshape(-1)
    for i in prange(df.shape[0]):
        xf[i] = df[i] if yf[i] > 0 else 0  # a select, not dy * mask: an Inf in dy stays out too


def relu_forward(x):
    """``y = max(x, 0)`` elementwise (NaN stays NaN); any shape."""
    x = _as_float_array(x, "x", rank=None)
    y = np.empty_like(x)
    _relu_forward(2 * x.nbytes, x, y)
    return y


def relu_backward(dy, relu_output):
    """``dx = dy`` where ``relu_output > 0``, else 0: the gradient through ``relu_forward``,
    from its output ``y``."""
    y = _as_float_array(relu_output, "relu_output", rank=None)
    dy = _as_float_array(dy, "dy", rank=None)
    dy = dy.astype(np.result_type(dy, y), copy=False)  # float64 dy into a float32 layer: float64, as NumPy
    if dy.shape != y.shape:
        raise ValueError(f"relu_backward expected dy of the output's shape {y.shape}, got {dy.shape}")
    dx = np.empty_like(dy)
    _relu_backward(3 * dy.nbytes, dy, y, dx)
    return dx


# ---------------------------------------------------------------- weight-gradient GEMM
# OpenBLAS 0.3.31's sgemm (Haswell kernels) runs a product whose left operand has 5-7 rows
# through a slow edge path: (6, 100352) @ (100352, 25), LeNet-5's conv1 weight gradient, takes
# 1.4-1.9 ms, the same product with 8 rows 0.9 ms (5-7 rows: 1.2-1.4 ms; float64 shows no such
# gap). So those rows are copied into an 8-row buffer first (copy included: 1.58 -> 1.11 ms).
# Otherwise the operand with more rows goes first: ``(b @ a.T).T`` when N > M. For a long K
# OpenBLAS does better with the larger side as the product's rows: LeNet-5's conv2 gradient,
# (16, 12800) x (150, 12800), 0.75 ms against 1.08; VGG-mini's (64, 8192) x (576, 8192) 4.2
# against 4.6; (32, 32768) x (27, 32768) the other way round 1.51 against 1.15.
_SGEMM_PAD_ROWS = range(5, 8)


def matmul_nt(a, b):
    """``a @ b.T`` for ``a`` (M, K) and ``b`` (N, K): a convolution's weight gradient ``dY2 @ cols.T``."""
    m = a.shape[0]
    if _on_lanes(a, b, b.shape[0]):
        return matmul(a, b.T)
    if a.dtype != np.float32 or b.dtype != np.float32 or m not in _SGEMM_PAD_ROWS:
        return np.ascontiguousarray((b @ a.T).T) if b.shape[0] > m else a @ b.T
    padded = scratch("matmul_nt", (8, a.shape[1]), np.float32)
    padded[:m] = a
    padded[m:] = 0  # rows of their own in the product: only keep garbage (denormals, NaN) out
    return (padded @ b.T)[:m]


# ---------------------------------------------------------------- one GEMM on minicnn's threads
# A GEMM that OpenBLAS splits over its own threads needs a core that Numba's workers may still
# hold: when they share torch's OpenMP runtime (torch imported first) they spin ~8 ms after each
# kernel, and the GEMM's second thread gets half a core. So the large GEMMs of the im2col paths
# run on Numba's threads instead: each thread ("lane") multiplies its own share of C's
# columns (or rows, for a tall C) with NumPy's BLAS on one thread (``kernels/blas.py``).
MATMUL_ON_LANES = True
"""Tests switch this off to compare; ``False`` leaves every product to ``numpy.matmul``."""
MATMUL_ON_LANES_MIN_FLOP = 8e6
"""Products smaller than this stay in ``numpy.matmul`` (OpenBLAS runs those on one thread anyway)."""


@njit(cache=True, parallel=True)
def _matmul_by_lanes(fn, lanes, transpose_b, by_rows, m, n, k, a, lda, b, ldb, c, ldc):
    """``c = a @ op(b)``, lane ``l`` computing rows (``by_rows``) or columns ``l/lanes ..
    (l+1)/lanes`` of ``c`` (boundaries at multiples of 16). Operands as ``blas.gemm``'s, flat."""
    size = m if by_rows else n
    for lane in prange(lanes):
        start = (lane * size // lanes) // 16 * 16
        stop = size if lane == lanes - 1 else ((lane + 1) * size // lanes) // 16 * 16
        if stop <= start:
            continue
        if by_rows:
            blas.gemm(fn, transpose_b, stop - start, n, k, a[start * lda:], lda, b, ldb, 0.0, c[start * ldc:], ldc)
        else:
            b_at = b[start * ldb:] if transpose_b else b[start:]
            blas.gemm(fn, transpose_b, m, stop - start, k, a, lda, b_at, ldb, 0.0, c[start:], ldc)


def _leading(a) -> int:
    """Row stride in elements of a 2-D array whose rows are contiguous, else 0."""
    if a.ndim != 2 or (a.shape[1] > 1 and a.strides[1] != a.itemsize) or a.strides[0] % a.itemsize:
        return 0
    return a.strides[0] // a.itemsize


def _on_lanes(a, b, n) -> bool:
    """Is ``a @ b`` (``n`` columns) big enough for ``_matmul_by_lanes``, and can it run?"""
    return (MATMUL_ON_LANES and get_num_threads() > 1 and a.dtype == b.dtype and 2.0 * a.shape[0] * a.shape[1] * n >= MATMUL_ON_LANES_MIN_FLOP
            and blas.gemm_function(a.dtype) is not None)


def matmul(a, b, out=None):
    """``a @ b`` for 2-D float arrays, into ``out`` if given: big products on minicnn's threads
    (``_matmul_by_lanes``), others through ``numpy.matmul``. ``b`` may be a transposed view."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    if not _on_lanes(a, b, n) or out.dtype != a.dtype or b.shape[0] != k or out.shape != (m, n):
        return np.matmul(a, b, out=out)  # small, or NumPy's own error for operands that do not fit
    lda = _leading(a)
    if lda == 0:
        a, lda = np.ascontiguousarray(a), k
    transpose_b = _leading(b) == 0 and _leading(b.T) != 0   # b = (n, k) rows, seen transposed
    ldb = _leading(b.T) if transpose_b else _leading(b)
    ldc = _leading(out)
    if ldb == 0 or ldc == 0 or np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return np.matmul(a, b, out=out)
    lanes = get_num_threads()
    flat = lambda arr, ld, rows: np.lib.stride_tricks.as_strided(arr, ((rows - 1) * ld + arr.shape[1],), (arr.itemsize,))
    with one_blas_thread():
        _matmul_by_lanes(blas.gemm_function(a.dtype), lanes, transpose_b, m > n, m, n, k, flat(a, lda, m), lda,
                         flat(b.T if transpose_b else b, ldb, n if transpose_b else k), ldb,
                         flat(out, ldc, m), ldc)
    return out


# ---------------------------------------------------------------- independent GEMMs, side by side
# Winograd runs 16 GEMMs per block of samples (``(64, 64) @ (64, 2048)`` on L3 with the 8 MB
# blocks of the sixth session: ~0.2 ms each; 8192 columns since the blocks are 32 MB). Each
# one split over OpenBLAS's threads ends in a barrier, so the slower core sets the pace 16
# times per block; on the shared 2-core benchmark host the 16 GEMMs of one 8 MB block took a
# median 3.2-3.9 ms that way and 2.9-3.7 ms with each GEMM on one thread and the threads
# taking GEMMs from a common list (4.7 against 6.8 ms while another process was busy). With
# 32 MB blocks, OpenBLAS's two threads per GEMM took 1.25 / 1.09 of the side-by-side time
# on L3 / L4 (layer forward + backward, 6 rounds). ``matmuls_side_by_side`` runs independent
# products that way.
GEMMS_SIDE_BY_SIDE = True
"""Tests switch this off to compare; ``False`` runs the products one after another."""
_blas_libraries = None   # threadpoolctl's controllers of the loaded BLAS libraries
_gemm_pool = None        # worker threads beside the calling one


def _side_by_side_pool(workers: int):
    global _gemm_pool
    if _gemm_pool is None or _gemm_pool._max_workers < workers:
        if _gemm_pool is not None:  # minicnn.set_num_threads raised the thread count
            _gemm_pool.shutdown(wait=False)
        _gemm_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minicnn-gemm")
    return _gemm_pool


SIDE_BY_SIDE_MIN_FLOP = 12e6
"""Products smaller than this do not go side by side on Python threads: ``matmul_each`` and
``sum_matmul_nt`` run them on Numba's threads (``_products``) where they can, else one after
another (until the twelfth session, always one after another). Measured in MobileNet-mini's step (batch
32, pointwise products of 4-8 MFLOP): side by side each 1x1 layer alone ran 20-35 % faster,
but in the model the step ran 125 against 109 ms; the layers around them slowed down too
(OpenBLAS wakes its workers when its thread count goes back up, and they spin a while).
Winograd's L3/L4 products (17-34 MFLOP with 8 MB blocks, 67-134 with 32 MB) and L6's (17)
win in place."""


def matmuls_side_by_side(count: int, product, flop_each: float = float("inf")) -> None:
    """Call ``product(k)`` for ``k`` in ``range(count)``: independent BLAS products, each
    writing its own output, at once on minicnn's threads with one BLAS thread each (if each
    does at least ``SIDE_BY_SIDE_MIN_FLOP``, ``flop_each``).

    The threads take the next ``k`` from a shared iterator (``next`` on it is atomic under
    the GIL, which NumPy releases inside the GEMM), so a thread slowed by the machine simply
    does fewer. Which thread runs a product does not change its result (each runs on one
    BLAS thread), so results do not depend on the scheduling. BLAS's thread count is
    restored afterwards. With one thread, or ``GEMMS_SIDE_BY_SIDE`` off, the products run
    one after another as usual. (BLAS's thread count is process-wide: another Python thread
    calling BLAS meanwhile would run on one thread too; minicnn's kernels are not meant for
    two threads at once anyway, see ``minicnn.threads``.)
    """
    workers = min(get_num_threads(), count) if GEMMS_SIDE_BY_SIDE and flop_each >= SIDE_BY_SIDE_MIN_FLOP else 1
    if workers <= 1:
        for k in range(count):
            product(k)
        return
    pool = _side_by_side_pool(workers - 1)
    todo = iter(range(count))

    def work():
        for k in todo:
            product(k)

    with one_blas_thread():
        helpers = [pool.submit(work) for _ in range(workers - 1)]
        try:
            work()
        finally:  # even if a product here failed: nothing may still run when we return
            wait(helpers)
        for helper in helpers:
            helper.result()  # raises what a product on that thread raised


@contextmanager
def one_blas_thread():
    """BLAS on one thread inside the ``with`` block (for products that minicnn's own threads
    run side by side), its thread count restored afterwards, even after an error."""
    global _blas_libraries
    if _blas_libraries is None:
        import threadpoolctl
        _blas_libraries = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
                           if lib.user_api == "blas"]
    saved = [lib.get_num_threads() for lib in _blas_libraries]
    for lib in _blas_libraries:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, threads in zip(_blas_libraries, saved):
            lib.set_num_threads(threads)


@njit(cache=True, parallel=True)
def _products_by_lanes(fn, lanes, transpose_b, a, b, out):
    """``out[i] = a[i] @ op(b[i])`` (``op`` a transpose with ``transpose_b``), lane ``l`` doing
    ``i`` in ``l*n//lanes .. (l+1)*n//lanes - 1``; C-contiguous stacks, ``a`` may have one item
    for all."""
    n, m, p = out.shape
    k = a.shape[2]
    for lane in prange(lanes):
        for i in range(lane * n // lanes, (lane + 1) * n // lanes):
            a_i = a[i if a.shape[0] > 1 else 0]
            blas.gemm(fn, transpose_b, m, p, k, a_i, k, b[i], k if transpose_b else p, 0.0, out[i], p)


def _products(a, b, out, transpose_b) -> bool:
    """``out[i] = a[i] @ op(b[i])`` on minicnn's threads (``_products_by_lanes``), for products
    too small to go side by side on Python threads (``SIDE_BY_SIDE_MIN_FLOP``) but together big
    enough (``MATMUL_ON_LANES_MIN_FLOP``), with operands that fit; returns whether it ran.

    MobileNet-mini's 1x1 layers (4-8 MFLOP a product): its step 64-73 ms against 105-109 with
    each product on OpenBLAS's two threads. L6's 17 MFLOP products stay side by side: split
    statically over the lanes they ran 0.41-0.48x torch against 0.35-0.36 (a thread the
    machine slows down cannot hand work over)."""
    n, m, p = out.shape
    k = a.shape[-1]
    if a.shape not in ((1, m, k), (n, m, k)) or b.shape != ((n, p, k) if transpose_b else (n, k, p)):
        return False  # the caller's path raises NumPy's error
    total = 2.0 * out.size * k
    if not (MATMUL_ON_LANES and get_num_threads() > 1 and total >= MATMUL_ON_LANES_MIN_FLOP
            and total / out.shape[0] < SIDE_BY_SIDE_MIN_FLOP
            and a.dtype == b.dtype == out.dtype and blas.gemm_function(a.dtype) is not None
            and out.flags.c_contiguous and not np.may_share_memory(out, b)):
        return False
    with one_blas_thread():
        _products_by_lanes(blas.gemm_function(a.dtype), get_num_threads(), transpose_b,
                           np.ascontiguousarray(a), np.ascontiguousarray(b), out)
    return True


def matmul_each(a, b, out):
    """``out[i] = a @ b[i]`` for every sample (``reference.matmul_each``): on minicnn's threads,
    or side by side on Python threads where ``_products`` does not apply."""
    if _products(a[None], b, out, False):
        return out
    matmuls_side_by_side(b.shape[0], lambda i: np.matmul(a, b[i], out=out[i]), 2.0 * a.shape[0] * a.shape[1] * b.shape[2])
    return out


_SUM_GROUP_BYTES = 8 * 2**20
"""Products of at most this many bytes in flight in ``sum_matmul_nt``."""


def sum_matmul_nt(a, b):
    """``sum_i a[i] @ b[i].T`` (``reference.sum_matmul_nt``): the products of a group of
    samples side by side into a scratch buffer, then added in sample order, as the
    reference adds them, so the sum is the same from run to run (``minicnn.seed``
    promises bit-identical training)."""
    n, m, p = a.shape[0], a.shape[1], b.shape[1]
    dtype = np.result_type(a, b)
    group = max(1, min(n, _SUM_GROUP_BYTES // (m * p * dtype.itemsize)))
    products = scratch("sum_matmul_nt", (group, m, p), dtype)
    total = np.zeros((m, p), dtype=dtype)
    for start in range(0, n, group):
        count = min(group, n - start)
        if not _products(a[start:start + count], b[start:start + count], products[:count], True):
            matmuls_side_by_side(count, lambda j: np.matmul(a[start + j], b[start + j].T, out=products[j]),
                                 2.0 * m * p * a.shape[2])
        for j in range(count):
            total += products[j]
    return total
