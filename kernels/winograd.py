"""Winograd F(2x2, 3x3) convolution for the CPU (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016).

The algorithm
-------------
A 3x3 cross-correlation producing a 2x2 block of outputs reads a 4x4 input tile ``d``.
Done directly that is 2*2*9 = 36 multiplications per (output channel, input channel)
pair. Winograd's minimal filtering algorithm computes the same 2x2 block as::

    Y = A^T [ (G g G^T) * (B^T d B) ] A           (* is the element-wise product)

with the 3x3 filter ``g`` and the constant matrices::

          [ 1  0 -1  0 ]         [  1    0    0  ]
    B^T = [ 0  1  1  0 ]     G = [ 1/2  1/2  1/2 ]     A^T = [ 1  1  1  0 ]
          [ 0 -1  1  0 ]         [ 1/2 -1/2  1/2 ]           [ 0  1 -1 -1 ]
          [ 0  1  0 -1 ]         [  0    0    1  ]

Only the element-wise product costs multiplications: 16 per tile instead of 36. Across
channels the product becomes a sum over input channels, so for every one of the 16
positions ``k`` of the 4x4 transformed tile it is a matrix product::

    U[k] = (G g G^T)[k]          (C_out, C_in)   once per call, from the weights
    V[k] = (B^T d B)[k]          (C_in, T)       one column per 4x4 input tile (tiles
                                                  overlap: they start every 2 pixels)
    M[k] = U[k] @ V[k]           (C_out, T)       16 GEMMs through BLAS
    y    = A^T m A               per output 2x2 tile, from the 16 values M[:, o, t]

The 16 GEMMs of ``(C_out x C_in) @ (C_in x T)`` do 16 multiply-adds per 2x2 outputs per
channel pair, against 36 for direct or im2col convolution: 2.25x fewer.

The weight gradient
-------------------
``y = A^T [(G g G^T) * V] A`` is linear in the filter ``g``; its adjoint gives the gradient
(the adjoint of ``g -> G g G^T`` is ``S -> G^T S G``, that of ``U -> A^T (U * V) A`` is
``Y -> (A Y A^T) * V``)::

    dW[o, c] = G^T [ sum_t (A dz_t A^T)[o] * V_t[c] ] G

with ``dz_t`` the 2x2 block of the output gradient at tile ``t`` (zero where a partial tile
was cropped). For each of the 16 positions ``k`` the sum over tiles is one GEMM whose inner
dimension is the number of tiles, large, so BLAS runs it near its peak:
``S[k] = Z[k] @ V[k].T``, ``(C_out, T) @ (T, C_in)``, summed over blocks of samples.

What is lost
------------
* The transforms are additions only, but they read and write every element once more:
  ``V`` and ``M`` are each 4x larger than the input and output (16 values per 2x2 tile),
  so these passes are bound by memory traffic, not arithmetic. They are Numba cores that
  keep a zero-padded copy of one (sample, channel) plane in L1 cache.
* The GEMMs are small in ``K`` (= C_in): BLAS runs them below its peak rate.
* Float32 error grows slightly: ``U`` and ``V`` mix up to 9 (resp. 16) inputs each before
  the products, so cancellation loses a few more bits than a direct dot product. For
  F(2x2, 3x3) this is still ~1e-6 relative; larger tiles (F(4x4, 3x3)) would be worse.

Memory: the batch is processed in blocks of samples whose ``V`` and ``M`` take at most
``_BLOCK_BYTES`` each (and the workspace limit); both live in ``minicnn.backend.scratch``
buffers, reused by every block and every call.
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from minicnn.backend import get_workspace_limit, scratch

from . import blas
from .cpu import _kernel, _unsigned, matmuls_side_by_side, one_blas_thread

__all__ = ["applies", "conv3x3", "conv3x3_input_grad", "conv3x3_weight_grad"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# The filter transform, in float64: U = G g G^T and the weight gradient's G^T S G are
# computed in float64 and cast to the data's dtype afterwards (a few bits more for float32).
_G = np.array([[1.0, 0.0, 0.0],
               [0.5, 0.5, 0.5],
               [0.5, -0.5, 0.5],
               [0.0, 0.0, 1.0]])
# G g G^T for every filter at once: with the 3x3 filter flattened to 9 values (3*p + q) and
# the 4x4 result to 16 (k = 4*a + b), ``(G g G^T)[a, b] = sum_{p,q} G[a, p] G[b, q] g[p, q]``
# is one (16, 9) matrix, the Kronecker product G (x) G, times the filter: so all C_out*C_in
# filters are one product ``(C_out*C_in, 9) @ (G (x) G)^T``, and the weight gradient's
# G^T S G is ``(C_out*C_in, 16) @ (G (x) G)``. (NumPy's stacked ``_G @ w @ _G.T`` did
# 2 * C_out*C_in tiny products: 10 ms on L4's 128x128 filters, and as much again for the
# gradient.) ``_rows_times`` computes them on the calling thread: as a BLAS call the
# product woke OpenBLAS's threads, which then spun on the cores the transforms needed
# (L3's forward 74 against 63 ms). It writes ``U`` in its (16, C_out, C_in) layout and the
# gradient in the weight's, with no float64 array between: on 512x512 filters 62-66 -> 17-19
# ms (filter transform) and 26-33 -> 22-27 ms (gradient) in two series, the same bits.
_GG = np.kron(_G, _G)
_GG_T = np.ascontiguousarray(_GG.T)  # contiguous rows: _rows_times's inner loop vectorises (2x)

_BLOCK_BYTES = 32 * 2**20
"""Bytes of ``V`` (and of ``M``) per block of samples; tests make it small to run many blocks.
Measured on L3/L4 (2 cores, 32 MB L3 cache; Conv2D forward + backward, 6 interleaved rounds
in one process, torch alongside): 32 MB blocks took 0.86 / 0.85 of the time 8 MB blocks took
(L3 108 against 133 ms, L4 110 against 142; torch 173 / 153 in the same rounds), 16 MB
0.93 / 0.83. The GEMMs and the transforms both got
faster per block, not only the calls between them; what the larger blocks save is not
isolated (fewer blocks: fewer points where the 16 side-by-side GEMMs wait for the slower
thread, fewer parallel launches). Keeping BLAS on one thread for the whole call instead
of per block did not help (1.07 / 1.04 of 8 MB). The price is memory: L3's ``V`` and
``M`` take 32 MB each instead of 8 (the batch is two blocks), L4's the whole batch."""

# V[k] and M[k] start _SKEW elements apart beyond their size. Without it the 16 rows a
# transform reads or writes at once lie a power of two apart (e.g. 1 MB), map to the same
# cache sets and evict each other: the input transform of a whole L3 batch took 26 ms, 5 with it.
_SKEW = 16

# The transforms spend more time per byte than the kernels ``cpu.PARALLEL_MIN_BYTES`` was
# tuned on, so threads pay off on smaller arrays: measured, the parallel version wins from
# about V = 1 MB (64 channels of one 32x32 sample: 0.12 ms against 0.18 serial).
_WORK_SCALE = 8


def applies(kernel, stride, padding, dilation) -> bool:
    """True when ``conv3x3`` computes this convolution: 3x3, stride 1, no dilation, pads 0..2.

    ``padding`` is ``(top, bottom, left, right)``.
    """
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and len(padding) == 4 and all(0 <= int(p) <= 2 for p in padding))


# ---------------------------------------------------------------- Numba cores
@njit(cache=True)
def _rows_times(a, b, out):
    """``out = a @ b`` for many rows ``a`` (F, K) and a small ``b`` (K, P), on this thread:
    each row summed in float64 and rounded once into ``out``'s dtype. ``a`` and ``out`` may be
    transposed views (the (16, F) layouts of ``U`` and ``S``), so no copy goes in or out."""
    acc = np.empty(b.shape[1])
    for i in range(a.shape[0]):
        acc[:] = 0.0
        for q in range(a.shape[1]):
            value = np.float64(a[i, q])
            for k in range(b.shape[1]):
                acc[k] += value * b[q, k]
        for k in range(b.shape[1]):
            out[i, k] = acc[k]


@njit(cache=True, inline="always")
def _bt(a0, a1, a2, a3):
    """One 4-vector times B (or B^T times a column): ``(a0-a2, a1+a2, a2-a1, a1-a3)``."""
    return a0 - a2, a1 + a2, a2 - a1, a1 - a3


@njit(cache=True, inline="always")
def _store4(vf, dst, stride_k, k, values):
    """Write 4 transformed values to ``V[k .. k+3]`` at column ``dst``."""
    vf[_unsigned(k * stride_k + dst)] = values[0]
    vf[_unsigned((k + 1) * stride_k + dst)] = values[1]
    vf[_unsigned((k + 2) * stride_k + dst)] = values[2]
    vf[_unsigned((k + 3) * stride_k + dst)] = values[3]


@njit(cache=True, inline="always")
def _at(a0, a1, a2, a3):
    """One 4-vector times A: ``(a0+a1+a2, a1-a2-a3)``."""
    return a0 + a1 + a2, a1 - a2 - a3


@_kernel()
def _input_transform(x, v, first, cols, pt, pl, tiles_h, tiles_w):
    """``v[k, c*cols + t] = (B^T d B)[k]`` for every 4x4 tile ``d`` of samples ``first, first+1, ...``."""
    _, c, h, w = x.shape
    count = cols // (tiles_h * tiles_w)
    xf, vf = x.reshape(-1), v.reshape(-1)
    stride_k, hp, wp = v.shape[1], 2 * tiles_h + 2, 2 * tiles_w + 2
    # One (sample, channel) plane per iteration: it writes its own tiles of its own row of
    # every V[k], so writes are disjoint.
    for plane in prange(count * c):
        b, ch = plane // c, plane % c
        # The plane, zero-padded to whole tiles (hp >= pt + h, wp >= pl + w), in a scratch
        # small enough for L1: the tile loop below then needs no bounds tests.
        padded = np.zeros(hp * wp, dtype=x.dtype)
        src = ((first + b) * c + ch) * h * w
        for i in range(h):
            for j in range(w):
                padded[_unsigned((i + pt) * wp + pl + j)] = xf[_unsigned(src + i * w + j)]
        base = ch * cols + b * tiles_h * tiles_w
        for th in range(tiles_h):
            for tw in range(tiles_w):
                p = 2 * th * wp + 2 * tw
                dst = base + th * tiles_w + tw
                # B^T d: combine the 4 rows of the tile, one column j at a time...
                c00, c10, c20, c30 = _bt(padded[_unsigned(p)], padded[_unsigned(p + wp)],
                                         padded[_unsigned(p + 2 * wp)], padded[_unsigned(p + 3 * wp)])
                c01, c11, c21, c31 = _bt(padded[_unsigned(p + 1)], padded[_unsigned(p + 1 + wp)],
                                         padded[_unsigned(p + 1 + 2 * wp)], padded[_unsigned(p + 1 + 3 * wp)])
                c02, c12, c22, c32 = _bt(padded[_unsigned(p + 2)], padded[_unsigned(p + 2 + wp)],
                                         padded[_unsigned(p + 2 + 2 * wp)], padded[_unsigned(p + 2 + 3 * wp)])
                c03, c13, c23, c33 = _bt(padded[_unsigned(p + 3)], padded[_unsigned(p + 3 + wp)],
                                         padded[_unsigned(p + 3 + 2 * wp)], padded[_unsigned(p + 3 + 3 * wp)])
                # ... then (B^T d) B combines the 4 columns of each row i; k = 4*i + j.
                _store4(vf, dst, stride_k, 0, _bt(c00, c01, c02, c03))
                _store4(vf, dst, stride_k, 4, _bt(c10, c11, c12, c13))
                _store4(vf, dst, stride_k, 8, _bt(c20, c21, c22, c23))
                _store4(vf, dst, stride_k, 12, _bt(c30, c31, c32, c33))


@_kernel()
def _output_transform(m, bias, y, first, cols, tiles_h, tiles_w, relu):
    """``y[first + b, o] = act(A^T m A + bias[o])`` cropped to ``(Ho, Wo)``, from ``m[k, o*cols + t]``."""
    _, c_out, ho, wo = y.shape
    count = cols // (tiles_h * tiles_w)
    mf, yf = m.reshape(-1), y.reshape(-1)
    stride_k, wt = m.shape[1], 2 * tiles_w
    for plane in prange(count * c_out):  # one (sample, channel) plane of y each: disjoint writes
        b, o = plane // c_out, plane % c_out
        # Whole 2x2 tiles go to a scratch plane first; the copy into y crops an odd last
        # row/column and applies bias and ReLU in one pass.
        tiles = np.empty(2 * tiles_h * wt, dtype=y.dtype)
        base = o * cols + b * tiles_h * tiles_w
        for th in range(tiles_h):
            for tw in range(tiles_w):
                src = base + th * tiles_w + tw
                # A^T m: combine the 4 rows of the 4x4 tile m (k = 4*row + column), per column...
                r00, r10 = _at(mf[_unsigned(src)], mf[_unsigned(4 * stride_k + src)],
                               mf[_unsigned(8 * stride_k + src)], mf[_unsigned(12 * stride_k + src)])
                r01, r11 = _at(mf[_unsigned(stride_k + src)], mf[_unsigned(5 * stride_k + src)],
                               mf[_unsigned(9 * stride_k + src)], mf[_unsigned(13 * stride_k + src)])
                r02, r12 = _at(mf[_unsigned(2 * stride_k + src)], mf[_unsigned(6 * stride_k + src)],
                               mf[_unsigned(10 * stride_k + src)], mf[_unsigned(14 * stride_k + src)])
                r03, r13 = _at(mf[_unsigned(3 * stride_k + src)], mf[_unsigned(7 * stride_k + src)],
                               mf[_unsigned(11 * stride_k + src)], mf[_unsigned(15 * stride_k + src)])
                # ... then (A^T m) A combines the 4 columns of each of the 2 rows.
                dst = 2 * th * wt + 2 * tw
                tiles[_unsigned(dst)], tiles[_unsigned(dst + 1)] = _at(r00, r01, r02, r03)
                tiles[_unsigned(dst + wt)], tiles[_unsigned(dst + wt + 1)] = _at(r10, r11, r12, r13)
        beta = bias[o]
        out = ((first + b) * c_out + o) * ho * wo
        for i in range(ho):
            if relu:
                for j in range(wo):
                    val = tiles[_unsigned(i * wt + j)] + beta
                    yf[_unsigned(out + i * wo + j)] = 0 if val <= 0 else val  # NaN stays NaN, as torch
            else:
                for j in range(wo):
                    yf[_unsigned(out + i * wo + j)] = tiles[_unsigned(i * wt + j)] + beta


@njit(cache=True, inline="always")
def _a(a0, a1):
    """A times a 2-vector: ``(a0, a0+a1, a0-a1, -a1)``."""
    return a0, a0 + a1, a0 - a1, -a1


@_kernel()
def _gradient_transform(dz, z, first, cols, tiles_h, tiles_w):
    """``z[k, o*cols + t] = (A dz_t A^T)[k]`` for every 2x2 block ``dz_t`` of samples ``first, ...``.

    Blocks that stick out of an odd ``(Ho, Wo)`` read zeros there: those outputs were cropped.
    """
    _, c_out, ho, wo = dz.shape
    count = cols // (tiles_h * tiles_w)
    df, zf = dz.reshape(-1), z.reshape(-1)
    stride_k, wt = z.shape[1], 2 * tiles_w
    for plane in prange(count * c_out):  # one (sample, channel) plane: its own columns of z
        b, o = plane // c_out, plane % c_out
        # The plane, zero-extended to whole 2x2 blocks, in an L1-sized scratch: the block loop
        # below then needs no bounds tests (as the input transform's padded copy).
        padded = np.zeros(2 * tiles_h * wt, dtype=dz.dtype)
        src = ((first + b) * c_out + o) * ho * wo
        for i in range(ho):
            for j in range(wo):
                padded[_unsigned(i * wt + j)] = df[_unsigned(src + i * wo + j)]
        base = o * cols + b * tiles_h * tiles_w
        for th in range(tiles_h):
            for tw in range(tiles_w):
                p = 2 * th * wt + 2 * tw
                d00, d01 = padded[_unsigned(p)], padded[_unsigned(p + 1)]
                d10, d11 = padded[_unsigned(p + wt)], padded[_unsigned(p + wt + 1)]
                dst = base + th * tiles_w + tw
                # A dz: each column (2 values) becomes 4; then (A dz) A^T does the same to rows.
                r0, r1, r2, r3 = _a(d00, d10)
                q0, q1, q2, q3 = _a(d01, d11)
                _store4(zf, dst, stride_k, 0, _a(r0, q0))
                _store4(zf, dst, stride_k, 4, _a(r1, q1))
                _store4(zf, dst, stride_k, 8, _a(r2, q2))
                _store4(zf, dst, stride_k, 12, _a(r3, q3))


# ---------------------------------------------------------------- sample by sample, in cache
# The blocked path above writes a whole block's V (up to _BLOCK_BYTES, 32 MB), reads it back
# in 16 GEMMs that write as large an M, and reads that back: on a 2-core VM with ~10-15 GB/s
# of memory bandwidth those passes and GEMMs wait on memory (L3's 16 GEMMs of (64, 64) @
# (64, 8192) ran at ~100 GFLOP/s from cold operands, against 150 with the same operands hot).
# Below, each thread (a "lane") takes its own samples, one at a time: the input transform of
# one sample into the lane's own V (1 MB on L3), the 16 GEMMs into its own M, the output
# transform, all while V and M are still in cache. The GEMMs are NumPy's own BLAS, called
# from the kernel (``kernels/blas.py``) on one BLAS thread each.
_input_transform_1 = _input_transform.serial        # the serial cores, as names Numba can call
_output_transform_1 = _output_transform.serial
_gradient_transform_1 = _gradient_transform.serial


@njit(cache=True, parallel=True)
def _conv_by_sample(gemm_fn, x, u, bias, y, v, m, pt, pl, tiles_h, tiles_w, relu):
    """``conv3x3``'s forward: lane ``l`` of ``v.shape[0]`` does samples ``l*N//lanes ..
    (l+1)*N//lanes - 1`` in its own ``v[l]`` (16, C_in*T + skew) and ``m[l]`` (16, C_out*T + skew)."""
    n, c_in = x.shape[0], x.shape[1]
    c_out, lanes, tiles = u.shape[1], v.shape[0], tiles_h * tiles_w
    for lane in prange(lanes):
        for sample in range(lane * n // lanes, (lane + 1) * n // lanes):
            _input_transform_1(x, v[lane], sample, tiles, pt, pl, tiles_h, tiles_w)
            for k in range(16):  # M[k] (C_out, T) = U[k] (C_out, C_in) @ V[k] (C_in, T)
                blas.gemm(gemm_fn, False, c_out, tiles, c_in, u[k], c_in, v[lane, k], tiles, 0.0,
                          m[lane, k], tiles)
            _output_transform_1(m[lane], bias, y, sample, tiles, tiles_h, tiles_w, relu)


@njit(cache=True, parallel=True)
def _weight_grad_by_sample(gemm_fn, dz, x, s, v, z, pt, pl, tiles_h, tiles_w):
    """``conv3x3_weight_grad``'s sums: lane ``l`` adds its samples' ``Z[k] @ V[k].T`` into
    ``s[l]`` (16, C_out, C_in), written over (not added to) by its first sample."""
    n, c_in = x.shape[0], x.shape[1]
    c_out, lanes, tiles = dz.shape[1], v.shape[0], tiles_h * tiles_w
    for lane in prange(lanes):
        first = lane * n // lanes
        for sample in range(first, (lane + 1) * n // lanes):
            _input_transform_1(x, v[lane], sample, tiles, pt, pl, tiles_h, tiles_w)
            _gradient_transform_1(dz, z[lane], sample, tiles, tiles_h, tiles_w)
            beta = 0.0 if sample == first else 1.0
            for k in range(16):  # S[k] (C_out, C_in) += Z[k] (C_out, T) @ V[k].T (T, C_in)
                blas.gemm(gemm_fn, True, c_out, c_in, tiles, z[lane, k], tiles, v[lane, k], tiles, beta,
                          s[lane, k], c_in)


BY_SAMPLE = True
"""Run sample by sample when ``_lanes`` allows; tests switch it off to check the blocked path."""

BY_SAMPLE_MAX_BYTES = 8 * 2**20
"""At most this many bytes of ``V`` and ``M`` (or ``Z``) per sample for the sample-by-sample path:
beyond that a sample's transforms leave the cache anyway (L3's are 2 MB)."""


def _lanes(n: int, c_in: int, c_out: int, tiles: int, dtype) -> int:
    """How many threads run sample by sample (one sample's buffers each), or 0 for the blocked
    path: when NumPy's BLAS cannot be called from a kernel (``blas.gemm_function``), a
    sample's ``V`` and ``M`` exceed ``BY_SAMPLE_MAX_BYTES``, or there are fewer samples than
    threads (a batch of one is faster split by channel planes, as the blocked path does)."""
    lanes = get_num_threads()
    per_sample = 16 * (c_in + c_out) * tiles * np.dtype(dtype).itemsize
    if not BY_SAMPLE or n < lanes or per_sample > BY_SAMPLE_MAX_BYTES or blas.gemm_function(dtype) is None:
        return 0
    return lanes


def _lane_buffers(slot: str, lanes: int, channels: int, tiles: int, dtype):
    """A (lanes, 16, channels*tiles + _SKEW) scratch array: each lane's V, M or Z."""
    return scratch(slot, (lanes, 16, channels * tiles + _SKEW), dtype)


# ---------------------------------------------------------------- argument checks
def _check_array(a, what: str, owner: str, dtype=None):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{owner} expected {what} as a NumPy array, got {type(a).__name__}")
    if a.ndim != 4:
        raise ValueError(f"{owner} expected {what} with 4 dimensions, got shape {a.shape}")
    if dtype is None and a.dtype not in _FLOATS:
        raise TypeError(f"{owner} expected {what} as float32 or float64, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def _check_padding(padding, owner: str):
    try:
        pads = tuple(int(p) for p in padding)
    except TypeError:
        raise TypeError(f"{owner} expected padding as 4 ints (top, bottom, left, right), got {padding!r}") from None
    if len(pads) != 4 or not all(0 <= p <= 2 for p in pads):
        raise ValueError(f"{owner} expected padding as 4 ints (top, bottom, left, right) "
                         f"each in 0..2, got {padding!r}")
    return pads


def _check_weight(weight, c_in, dtype, owner: str, what: str = "x"):
    """``weight`` as a contiguous (C_out, C_in, 3, 3) array; ``c_in=None`` skips the channel check."""
    if not isinstance(weight, np.ndarray):
        raise TypeError(f"{owner} expected weight as a NumPy array, got {type(weight).__name__}")
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"{owner} expected a (C_out, C_in, 3, 3) weight, got shape {weight.shape}")
    if c_in is not None and weight.shape[1] != c_in:
        raise ValueError(f"{owner} expected weight with {c_in} input channels to match {what}, "
                         f"got weight shape {weight.shape}")
    return np.ascontiguousarray(weight, dtype=dtype)


# ---------------------------------------------------------------- public functions
def _filter_transform(weight):
    """``U[k] = (G g G^T)[k]`` for every filter: ``(16, C_out, C_in)``, k = 4*row + column."""
    c_out, c_in = weight.shape[:2]
    u = np.empty((16, c_out, c_in), dtype=weight.dtype)
    _rows_times(weight.reshape(c_out * c_in, 9), _GG_T, u.reshape(16, c_out * c_in).T)
    return u


def _tiled_blocks(n: int, c_in: int, c_out: int, tiles: int, dtype):
    """``(part, cols, v, m)`` for each block of samples: ``cols`` tiles, and views ``V``
    (16, C_in*cols) and ``M`` (16, C_out*cols) (k-slices ``_SKEW`` apart) into one pair of
    buffers for all blocks, in minicnn's reusable scratch memory: fresh pages fault, and
    that costs more than the transforms themselves."""
    blocks = _sample_blocks(n, 16 * max(c_in, c_out) * tiles * np.dtype(dtype).itemsize)
    width = (blocks[0].stop - blocks[0].start) * tiles
    v_buf = scratch("winograd.v", (16 * (c_in * width + _SKEW),), dtype)
    m_buf = scratch("winograd.m", (16 * (c_out * width + _SKEW),), dtype)
    for part in blocks:  # the last block may be narrower and uses a prefix
        cols = (part.stop - part.start) * tiles
        yield (part, cols, v_buf[:16 * (c_in * cols + _SKEW)].reshape(16, -1),
               m_buf[:16 * (c_out * cols + _SKEW)].reshape(16, -1))


def _sample_blocks(n: int, bytes_per_sample: int) -> list[slice]:
    """Slices of the batch whose ``V`` and ``M`` take at most the block size each (>= 1 sample)."""
    step = max(1, min(_BLOCK_BYTES, get_workspace_limit()) // max(1, bytes_per_sample))
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def conv3x3(x, weight, padding, bias=None, relu=False):
    """3x3, stride-1 cross-correlation of zero-padded ``x`` by Winograd F(2x2, 3x3).

    ``x`` (N, C_in, H, W) and ``weight`` (C_out, C_in, 3, 3) give ``y`` (N, C_out, Ho, Wo),
    ``Ho = H + top + bottom - 2``, ``Wo = W + left + right - 2``, ``padding`` being
    ``(top, bottom, left, right)`` with each pad in 0..2::

        y[n, o, i, j] = act(bias[o] + sum_{c,p,q} weight[o, c, p, q] * x_pad[n, c, i + p, j + q])

    ``act`` is ReLU (``0 if v <= 0 else v``) when ``relu`` is set, else the identity; ``bias``
    (C_out,) may be ``None``. The result equals ``weight.reshape(C_out, -1) @ im2col(x)`` up
    to rounding. An odd ``Ho`` or ``Wo`` makes the last tile row/column partial: its input
    tile reads zeros past the padding and its surplus outputs are cropped.
    """
    owner = "winograd.conv3x3"
    x = _check_array(x, "x (N, C_in, H, W)", owner)
    weight = _check_weight(weight, x.shape[1], x.dtype, owner)
    pt, pb, pl, pr = _check_padding(padding, owner)
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    ho, wo = h + pt + pb - 2, w + pl + pr - 2
    if ho < 1 or wo < 1:
        raise ValueError(f"{owner} expected an output of at least 1x1, got {ho}x{wo} "
                         f"(input shape {x.shape}, padding {padding!r})")
    if bias is None:
        bias = np.zeros(c_out, dtype=x.dtype)
    bias = np.ascontiguousarray(bias, dtype=x.dtype)
    if bias.shape != (c_out,):
        raise ValueError(f"{owner} expected bias of shape {(c_out,)}, got {bias.shape}")

    u = _filter_transform(weight)
    tiles_h, tiles_w = (ho + 1) // 2, (wo + 1) // 2
    y = np.empty((n, c_out, ho, wo), dtype=x.dtype)
    lanes = _lanes(n, c_in, c_out, tiles_h * tiles_w, x.dtype)
    if lanes:
        v = _lane_buffers("winograd.v", lanes, c_in, tiles_h * tiles_w, x.dtype)
        m = _lane_buffers("winograd.m", lanes, c_out, tiles_h * tiles_w, x.dtype)
        with one_blas_thread():
            _conv_by_sample(blas.gemm_function(x.dtype), x, u, bias, y, v, m, pt, pl, tiles_h, tiles_w, bool(relu))
        return y
    for part, cols, v, m in _tiled_blocks(n, c_in, c_out, tiles_h * tiles_w, x.dtype):
        _input_transform(_WORK_SCALE * v.nbytes, x, v, part.start, cols, pt, pl, tiles_h, tiles_w)
        # 16 independent GEMMs, side by side on the threads (``cpu.matmuls_side_by_side``)
        matmuls_side_by_side(16, lambda k: np.matmul(u[k], v[k, :c_in * cols].reshape(c_in, cols),
                                                     out=m[k, :c_out * cols].reshape(c_out, cols)),
                             2.0 * c_out * c_in * cols)
        _output_transform(_WORK_SCALE * m.nbytes, m, bias, y, part.start, cols, tiles_h, tiles_w, bool(relu))
    return y


def conv3x3_input_grad(dz, weight, x_shape, padding):
    """``dx`` of ``conv3x3`` (without bias and ReLU) from ``dz = dL/dz`` (N, C_out, Ho, Wo).

    From ``z[o, i, j] = sum_{c,p,q} W[o, c, p, q] x_pad[c, i + p, j + q]`` each padded
    input pixel collects every output that read it::

        dx_pad[c, a, b] = sum_{o,p,q} W[o, c, p, q] dz[o, a - p, b - q]
                        = sum_{o,p,q} W[o, c, 2 - p, 2 - q] dz_pad2[o, a + p, b + q]

    (substituting ``p -> 2 - p``, with ``dz_pad2`` zero-padded by 2 on every side): a
    correlation of ``dz`` with the filter flipped in both spatial axes and its channel axes
    swapped. ``dx`` is ``dx_pad`` without its padding, i.e. only ``2 - top`` rows of the
    2 pads are needed above (``2 - bottom`` below, likewise for columns), so::

        dx = conv3x3(dz, weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3),
                     (2 - top, 2 - bottom, 2 - left, 2 - right))
    """
    owner = "winograd.conv3x3_input_grad"
    dz = _check_array(dz, "dz (N, C_out, Ho, Wo)", owner)
    weight = _check_weight(weight, None, dz.dtype, owner)
    pt, pb, pl, pr = _check_padding(padding, owner)
    x_shape = tuple(int(s) for s in x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"{owner} expected x_shape (N, C_in, H, W), got {x_shape}")
    n, c_in, h, w = x_shape
    expected = (n, weight.shape[0], h + pt + pb - 2, w + pl + pr - 2)
    if c_in != weight.shape[1] or dz.shape != expected:
        raise ValueError(f"{owner} expected dz of shape {expected} for x_shape {x_shape}, weight "
                         f"shape {weight.shape} and padding {padding!r}, got {dz.shape}")
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    dx = conv3x3(dz, flipped, (2 - pt, 2 - pb, 2 - pl, 2 - pr))
    if dx.shape != x_shape:  # cannot happen after the check above; kept as the stated contract
        raise ValueError(f"{owner} produced dx of shape {dx.shape}, expected x_shape {x_shape}")
    return dx


def conv3x3_weight_grad(dz, x, padding):
    """``dW`` (C_out, C_in, 3, 3) of ``conv3x3`` from ``dz = dL/dz`` (N, C_out, Ho, Wo) and ``x``.

    ``dW[o, c, p, q] = sum_{n,i,j} dz[n, o, i, j] * x_pad[n, c, i + p, j + q]``, computed as
    ``G^T [sum over tiles of (A dz_t A^T) * (B^T d_t B)] G`` (module docstring): per block of
    samples, the input transform of ``conv3x3``, the transform of ``dz``'s 2x2 blocks, and 16
    GEMMs over the tiles; the sums of all blocks meet in a (16, C_out, C_in) accumulator.
    """
    owner = "winograd.conv3x3_weight_grad"
    dz = _check_array(dz, "dz (N, C_out, Ho, Wo)", owner)
    x = _check_array(x, "x (N, C_in, H, W)", owner, dtype=dz.dtype)
    pt, pb, pl, pr = _check_padding(padding, owner)
    n, c_in, h, w = x.shape
    c_out = dz.shape[1]
    expected = (n, c_out, h + pt + pb - 2, w + pl + pr - 2)
    if dz.shape != expected:
        raise ValueError(f"{owner} expected dz of shape {expected} for x of shape {x.shape} and "
                         f"padding {padding!r}, got {dz.shape}")
    ho, wo = expected[2:]
    tiles_h, tiles_w = (ho + 1) // 2, (wo + 1) // 2
    lanes = _lanes(n, c_in, c_out, tiles_h * tiles_w, x.dtype)
    if lanes:
        v = _lane_buffers("winograd.v", lanes, c_in, tiles_h * tiles_w, x.dtype)
        z = _lane_buffers("winograd.m", lanes, c_out, tiles_h * tiles_w, x.dtype)
        sums = np.empty((lanes, 16, c_out, c_in), dtype=x.dtype)
        with one_blas_thread():
            _weight_grad_by_sample(blas.gemm_function(x.dtype), dz, x, sums, v, z, pt, pl, tiles_h, tiles_w)
        s = sums[0]
        for lane in range(1, lanes):  # in lane order: the same sum every call
            s += sums[lane]
    else:
        s = np.zeros((16, c_out, c_in), dtype=x.dtype)
        for part, cols, v, z in _tiled_blocks(n, c_in, c_out, tiles_h * tiles_w, x.dtype):
            _input_transform(_WORK_SCALE * v.nbytes, x, v, part.start, cols, pt, pl, tiles_h, tiles_w)
            _gradient_transform(_WORK_SCALE * z.nbytes, dz, z, part.start, cols, tiles_h, tiles_w)
            def product(k):
                s[k] += z[k, :c_out * cols].reshape(c_out, cols) @ v[k, :c_in * cols].reshape(c_in, cols).T
            matmuls_side_by_side(16, product, 2.0 * c_out * c_in * cols)
    dw = np.empty((c_out, c_in, 3, 3), dtype=x.dtype)
    _rows_times(s.reshape(16, c_out * c_in).T, _GG, dw.reshape(c_out * c_in, 9))  # G^T S G, per filter
    return dw

