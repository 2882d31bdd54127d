"""The Numba kernels (``kernels/cpu.py``) against the NumPy reference.

``kernels.reference`` is the oracle: a different algorithm (strided window
views, ``np.add.at``, ``einsum``) with the same contract. Every fast kernel must
return the same numbers over a sweep of geometries: odd sizes, N=1, C=1,
kernels 1-5 (square or not), strides 1-3, asymmetric paddings, dilations 1-3,
in float32 and float64, through both compiled versions of each core (serial and
parallel). Max-pool indices must be identical, ties included.
A few hand-computed cases pin down the conventions independently of both.
The batch-norm kernels, fast and reference alike, are checked against the
formulas in float64 NumPy and against torch's autograd, and against each other.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn import threads
from minicnn.kernels import cpu, reference
from tests.helpers import require_torch


@pytest.fixture(autouse=True, params=["serial", "parallel"])
def core_version(request, monkeypatch):
    """Every test runs twice: each Numba core exists in a serial and a parallel compiled version
    (``cpu._Kernel``), picked by size; these tests' arrays are small, so force each in turn."""
    monkeypatch.setattr(cpu, "PARALLEL_MIN_BYTES", 0 if request.param == "parallel" else 2**62)
    return request.param

TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}

# (x_shape, kernel, stride, padding (top, bottom, left, right), dilation)
CASES = [
    ((1, 1, 5, 5), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((2, 3, 7, 9), (3, 2), (2, 1), (1, 0, 2, 1), (2, 1)),
    ((1, 2, 6, 6), (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    ((3, 1, 11, 8), (2, 4), (3, 2), (0, 1, 3, 0), (1, 2)),
    ((2, 4, 9, 10), (3, 3), (1, 3), (1, 2, 0, 1), (3, 1)),
    ((1, 3, 13, 7), (4, 1), (2, 3), (3, 0, 0, 0), (1, 3)),
    ((4, 2, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    ((2, 5, 5, 12), (1, 5), (1, 2), (0, 0, 2, 2), (2, 2)),
]


def _random_cases(count, seed=1):
    """Extra geometries drawn at random (fixed seed), keeping every output at least 1x1."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        k, s, d = rng.integers(1, 6, 2), rng.integers(1, 4, 2), rng.integers(1, 4, 2)
        pads = tuple(int(p) for p in rng.integers(0, 3, 4))
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 5)),
                 int(rng.integers(3, 14)), int(rng.integers(3, 14)))
        geometry = (tuple(map(int, k)), tuple(map(int, s)), pads, tuple(map(int, d)))
        if min(reference.output_hw(shape, *geometry)) >= 1:
            cases.append((shape,) + geometry)
    return cases


GEOMETRIES = CASES + _random_cases(8)
# Pooling follows torch's rule, padding <= kernel / 2, so no window is padding only.
POOL_GEOMETRIES = [c for c in GEOMETRIES
                   if max(c[3][:2]) <= c[1][0] // 2 and max(c[3][2:]) <= c[1][1] // 2]
POOL_GEOMETRIES += [
    ((2, 3, 9, 8), (3, 3), (2, 1), (1, 0, 1, 1), (1, 1)),
    ((1, 2, 7, 10), (2, 3), (1, 3), (1, 0, 0, 1), (1, 1)),
    ((3, 1, 12, 11), (5, 4), (3, 2), (2, 1, 2, 0), (1, 1)),
    ((2, 3, 9, 7), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),  # the 2x2 fast path, odd sizes
]
PARAMS = [pytest.param(case, dtype, id=f"{case[0]}-k{case[1]}-s{case[2]}-p{case[3]}-d{case[4]}-"
                                        f"{dtype.__name__}")
          for case in GEOMETRIES for dtype in (np.float32, np.float64)]
POOL_PARAMS = [pytest.param(case, dtype, id=f"{case[0]}-k{case[1]}-s{case[2]}-p{case[3]}-{dtype.__name__}")
               for case in POOL_GEOMETRIES for dtype in (np.float32, np.float64)]


def _close(actual, expected, dtype):
    assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype}, expected {np.dtype(dtype)}"
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


def _distinct(shape, rng, dtype):
    """Values with no ties (a permutation of a spaced grid), so argmax is unambiguous."""
    return (rng.permutation(np.prod(shape)).reshape(shape) * 0.01 - 1.0).astype(dtype)


@pytest.mark.parametrize("case,dtype", PARAMS)
def test_im2col_col2im_match_reference(case, dtype):
    shape, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    cols = cpu.im2col(x, kernel, stride, padding, dilation)
    _close(cols, reference.im2col(x, kernel, stride, padding, dilation), dtype)
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    _close(cpu.col2im(dcols, shape, kernel, stride, padding, dilation),
           reference.col2im(dcols, shape, kernel, stride, padding, dilation), dtype)


@pytest.mark.parametrize("case,dtype", PARAMS)
def test_depthwise_matches_reference(case, dtype):
    shape, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(1)
    multiplier = 1 + shape[2] % 2  # exercises depth multipliers 1 and 2
    x = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal((shape[1] * multiplier, 1) + kernel).astype(dtype)
    bias = rng.standard_normal(weight.shape[0]).astype(dtype)
    y = cpu.depthwise_forward(x, weight, stride, padding, dilation)
    _close(y, reference.depthwise_forward(x, weight, stride, padding, dilation), dtype)
    _close(cpu.depthwise_forward(x, weight, stride, padding, dilation, bias=bias),
           reference.depthwise_forward(x, weight, stride, padding, dilation, bias=bias), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dweight, dbias = cpu.depthwise_backward(dy, x, weight, stride, padding, dilation)
    ref_dx, ref_dweight, ref_dbias = reference.depthwise_backward(dy, x, weight, stride, padding, dilation)
    _close(dx, ref_dx, dtype)
    _close(dweight, ref_dweight, dtype)
    _close(dbias, ref_dbias, dtype)


@pytest.mark.parametrize("case,dtype", POOL_PARAMS)
def test_pooling_matches_reference(case, dtype):
    shape, kernel, stride, padding, _ = case
    rng = np.random.default_rng(2)
    x = _distinct(shape, rng, dtype)
    y, argmax = cpu.maxpool_forward(x, kernel, stride, padding)
    ref_y, ref_argmax = reference.maxpool_forward(x, kernel, stride, padding)
    _close(y, ref_y, dtype)
    assert argmax.dtype == np.int64
    np.testing.assert_array_equal(argmax, ref_argmax)
    dy = rng.standard_normal(y.shape).astype(dtype)
    _close(cpu.maxpool_backward(dy, argmax, shape),
           reference.maxpool_backward(dy, ref_argmax, shape), dtype)

    _close(cpu.avgpool_forward(x, kernel, stride, padding),
           reference.avgpool_forward(x, kernel, stride, padding), dtype)
    _close(cpu.avgpool_backward(dy, shape, kernel, stride, padding),
           reference.avgpool_backward(dy, shape, kernel, stride, padding), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_ties_go_to_the_first_in_row_major_order(dtype):
    # Small integers: most windows hold ties. Overlapping windows (stride 1) and padding included.
    x = np.random.default_rng(3).integers(0, 3, (2, 3, 7, 6)).astype(dtype)
    for kernel, stride, padding in [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 2), (1, 1), (1, 1, 1, 0))]:
        y, argmax = cpu.maxpool_forward(x, kernel, stride, padding)
        ref_y, ref_argmax = reference.maxpool_forward(x, kernel, stride, padding)
        np.testing.assert_array_equal(y, ref_y)
        np.testing.assert_array_equal(argmax, ref_argmax)
    # By hand: a constant 2x2 window's winner is its top-left pixel.
    _, argmax = cpu.maxpool_forward(np.ones((1, 1, 4, 4), dtype), (2, 2), (2, 2), (0, 0, 0, 0))
    np.testing.assert_array_equal(argmax[0, 0], [[0, 2], [8, 10]])


def test_maxpool_padded_cells_never_win():
    # All inputs negative: a padded zero would win if padding were counted.
    x = -np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    y, argmax = cpu.maxpool_forward(x, (2, 2), (2, 2), (1, 0, 1, 0))
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])
    np.testing.assert_array_equal(argmax[0, 0], [[0, 1], [3, 4]])


def test_im2col_by_hand():
    # 1x1x3x3 image 0..8, 2x2 kernel, stride 1, no padding: 4 patches as columns.
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    cols = cpu.im2col(x, (2, 2), (1, 1), (0, 0, 0, 0))
    np.testing.assert_array_equal(cols, [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]])
    # col2im of all-ones counts how many windows cover each pixel.
    counts = cpu.col2im(np.ones_like(cols), x.shape, (2, 2), (1, 1), (0, 0, 0, 0))
    np.testing.assert_array_equal(counts[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


def test_avgpool_counts_padding_as_zeros_by_hand():
    x = np.ones((1, 1, 2, 2), dtype=np.float32)
    y = cpu.avgpool_forward(x, (2, 2), (2, 2), (1, 1, 1, 1))
    np.testing.assert_array_equal(y[0, 0], np.full((2, 2), 0.25, np.float32))


def test_results_do_not_depend_on_the_thread_count():
    # Each prange iteration owns its output slice: 1 and 2 threads must agree bit for bit.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 9, 9))
    weight = rng.standard_normal((8, 1, 3, 3))
    geometry = ((3, 3), (2, 1), (1, 1, 0, 2), (1, 2))
    before = threads.get_num_threads()

    def run_all():
        cols = cpu.im2col(x, *geometry)
        y = cpu.depthwise_forward(x, weight, *geometry[1:])
        return [cols, cpu.col2im(cols, x.shape, *geometry), y,
                *cpu.depthwise_backward(y, x, weight, *geometry[1:]),
                cpu.avgpool_backward(x, (3, 4, 18, 9), (2, 1), (2, 1), (0, 0, 0, 0))]
    try:
        threads.set_num_threads(1)
        single = run_all()
        threads.set_num_threads(2)
        multi = run_all()
    finally:
        threads.set_num_threads(before)
    for a, b in zip(single, multi):
        np.testing.assert_array_equal(a, b)


def test_set_num_threads_rejects_bad_values():
    for bad in (0, -2, 1.5, "2"):
        with pytest.raises(ValueError, match="set_num_threads expected a positive integer"):
            threads.set_num_threads(bad)


def test_bad_arguments_raise_clear_errors():
    x = np.zeros((1, 2, 5, 5), np.float32)
    with pytest.raises(TypeError, match="float32 or float64, got int64"):
        cpu.im2col(np.zeros((1, 1, 4, 4), np.int64), (2, 2), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="4 dimensions, got shape"):
        cpu.maxpool_forward(np.zeros((5, 5), np.float32), (2, 2), (2, 2), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="col2im expected cols of shape"):
        cpu.col2im(np.zeros((3, 4), np.float32), x.shape, (2, 2), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="depthwise_forward expected weight"):
        cpu.depthwise_forward(x, np.zeros((3, 1, 3, 3), np.float32), (1, 1), (0, 0, 0, 0))


BATCHNORM_SHAPES = [(4, 3, 5, 7), (9, 2), (1, 5, 3, 3), (16, 7, 1, 1)]


@pytest.mark.parametrize("impl", [cpu, reference], ids=["cpu", "reference"])
@pytest.mark.parametrize("shape", BATCHNORM_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_kernels_match_the_formula(impl, shape, dtype):
    # Against the textbook formulas, written out in float64 NumPy with np.var.
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    weight, bias = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    axes = (0,) + tuple(range(2, len(shape)))
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=axes), x64.var(axis=axes)
    x_hat = (x64 - mean.reshape(per_channel)) / np.sqrt(var.reshape(per_channel) + 1e-5)
    y, got_mean, got_var, inv_std = impl.batchnorm_forward(x, weight, bias, 1e-5)
    _close(y, (weight.reshape(per_channel) * x_hat + bias.reshape(per_channel)).astype(dtype), dtype)
    _close(got_mean, mean.astype(dtype), dtype)
    _close(got_var, var.astype(dtype), dtype)
    _close(inv_std, (1 / np.sqrt(var + 1e-5)).astype(dtype), dtype)

    # Backward against torch's autograd (float64), an independent derivation.
    torch = require_torch()
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dweight, dbias = impl.batchnorm_backward(dy, x, got_mean, weight, inv_std)
    tx, tw, tb = (torch.from_numpy(a.astype(np.float64)).requires_grad_(True) for a in (x, weight, bias))
    torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=1e-5).backward(
        torch.from_numpy(dy.astype(np.float64)))
    _close(dx, tx.grad.numpy().astype(dtype), dtype)
    _close(dweight, tw.grad.numpy().astype(dtype), dtype)
    _close(dbias, tb.grad.numpy().astype(dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_statistics_survive_a_large_offset_and_an_outlier(dtype):
    # One pass over memory merges per-plane statistics (Chan et al.); a naive E[x^2] - E[x]^2
    # would lose every digit of the variance here (offset 1e4, spread 1, one value at 1e4 + 300).
    rng = np.random.default_rng(8)
    x = (1e4 + rng.standard_normal((6, 2, 5, 4))).astype(dtype)
    x[0, 0, 0, 0] += 300
    _, mean, var, _ = cpu.batchnorm_forward(x, np.ones(2, dtype), np.zeros(2, dtype), 1e-5)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2, 3)), rtol=1e-5 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("shape", BATCHNORM_SHAPES + [(3, 4, 6, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_kernels_match_reference(shape, dtype):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(shape) * 2 - 3).astype(dtype)
    weight, bias = rng.standard_normal((2, shape[1])).astype(dtype)
    fast = cpu.batchnorm_forward(x, weight, bias, 1e-3)
    slow = reference.batchnorm_forward(x, weight, bias, 1e-3)
    for got, expected in zip(fast, slow):
        _close(got, expected, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    for got, expected in zip(cpu.batchnorm_backward(dy, x, fast[1], weight, fast[3]),
                             reference.batchnorm_backward(dy, x, slow[1], weight, slow[3])):
        _close(got, expected, dtype)


# ---------------------------------------------------------------- convolution epilogue
EPILOGUE_SHAPES = [(1, 1, 1, 1), (2, 3, 4, 5), (3, 6, 7, 7), (4, 16, 5, 3)]


def _epilogue_by_hand(z2, bias, out_shape, relu):
    """``act(z + b)`` element by element, from the layout's definition (column ``n*Ho*Wo + i*Wo + j``)."""
    n, c, ho, wo = out_shape
    y = np.empty(out_shape, dtype=np.float64)
    for b, ch, i, j in np.ndindex(*out_shape):
        v = float(z2[ch, b * ho * wo + i * wo + j]) + (0.0 if bias is None else float(bias[ch]))
        y[b, ch, i, j] = max(v, 0.0) if relu else v
    return y


@pytest.mark.parametrize("shape", EPILOGUE_SHAPES)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_epilogue_matches_reference_and_hand(shape, relu, with_bias, dtype):
    rng = np.random.default_rng(7)
    n, c, ho, wo = shape
    z2 = rng.standard_normal((c, n * ho * wo)).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype) if with_bias else None
    y = cpu.conv_epilogue(z2, bias, shape, relu)
    assert y.shape == shape and y.dtype == dtype and y.flags.c_contiguous
    _close(y, reference.conv_epilogue(z2, bias, shape, relu), dtype)
    _close(y, _epilogue_by_hand(z2, bias, shape, relu).astype(dtype), dtype)

    # Backward: dz = dy * [y > 0] (or dy) in GEMM layout, db = per-channel sum, by hand.
    dy = rng.standard_normal(shape).astype(dtype)
    relu_output = y if relu else None
    dz2, dbias = cpu.conv_epilogue_backward(dy, relu_output)
    dz = dy * (y > 0) if relu else dy
    by_hand = np.empty((c, n * ho * wo), dtype=dtype)
    for b, ch, i, j in np.ndindex(*shape):
        by_hand[ch, b * ho * wo + i * wo + j] = dz[b, ch, i, j]
    np.testing.assert_array_equal(dz2, by_hand)
    _close(dbias, dz.astype(np.float64).sum(axis=(0, 2, 3)).astype(dtype), dtype)
    ref_dz2, ref_dbias = reference.conv_epilogue_backward(dy, relu_output)
    np.testing.assert_array_equal(dz2, ref_dz2)
    _close(dbias, ref_dbias, dtype)
    # The same in dy's own layout (what Winograd reads), by hand and against the reference.
    dz_nchw, dbias_nchw = cpu.conv_epilogue_backward(dy, relu_output, gemm_layout=False)
    assert dz_nchw.shape == shape and dz_nchw.flags.c_contiguous
    np.testing.assert_array_equal(dz_nchw, dz)
    _close(dbias_nchw, dbias, dtype)  # summed by a loop of its own when nothing is written
    np.testing.assert_array_equal(reference.conv_epilogue_backward(dy, relu_output, gemm_layout=False)[0], dz)
    # Without a mask there is nothing to write: dz is dy itself, unless an ``out`` asks for a copy.
    assert np.shares_memory(dz_nchw, dy) is (not relu)
    out = np.full(shape, np.nan, dtype=dtype)
    dz_out, dbias_out = cpu.conv_epilogue_backward(dy, relu_output, out=out, gemm_layout=False)
    assert dz_out is out
    np.testing.assert_array_equal(out, dz)
    _close(dbias_out, dbias, dtype)


def test_conv_epilogue_relu_edge_values():
    """ReLU keeps NaN (as torch), zeroes -inf and 0, and its mask passes gradient only where y > 0."""
    z2 = np.array([[np.nan, -np.inf, 0.0, 2.0, -1.0, np.inf]], dtype=np.float32)
    y = cpu.conv_epilogue(z2, None, (1, 1, 2, 3), True)
    np.testing.assert_array_equal(y.reshape(-1), [np.nan, 0, 0, 2, 0, np.inf])
    dz2, dbias = cpu.conv_epilogue_backward(np.ones((1, 1, 2, 3), np.float32), y)
    np.testing.assert_array_equal(dz2, [[0, 0, 0, 1, 0, 1]])
    assert dbias.tolist() == [2.0]


def test_conv_epilogue_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="conv_epilogue expected z2 of shape"):
        cpu.conv_epilogue(np.zeros((3, 10), np.float32), None, (2, 3, 2, 2), True)
    with pytest.raises(ValueError, match="expected relu_output of shape"):
        cpu.conv_epilogue_backward(np.zeros((2, 3, 2, 2), np.float32), np.zeros((2, 3, 2, 1), np.float32))


@pytest.mark.parametrize("rows", range(1, 10))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_nt_equals_the_float64_product(rows, dtype):
    """``matmul_nt(a, b) == a @ b.T``; float32 with 5-7 rows goes through an 8-row buffer
    (a BLAS slow path), which must not change a value or leak into a later call; with fewer
    rows than ``b`` (7) the product is computed as ``(b @ a.T).T`` and comes back C-ordered."""
    rng = np.random.default_rng(rows)
    a_full = rng.standard_normal((rows, 2 * 301)).astype(dtype)
    a, b = a_full[:, ::2], rng.standard_normal((7, 301)).astype(dtype)  # a: strided columns
    expected = a.astype(np.float64) @ b.astype(np.float64).T
    for impl in (cpu, reference):
        result = impl.matmul_nt(a, b)
        assert result.shape == (rows, 7) and result.dtype == dtype and result.flags.c_contiguous
        _close(result, expected, dtype)
    first = cpu.matmul_nt(a, b)
    cpu.matmul_nt(np.full((6, 301), np.nan, dtype), b)  # reuses the buffer with other data
    np.testing.assert_array_equal(first, cpu.matmul_nt(a, b))
    assert np.isfinite(first).all()


@pytest.mark.parametrize("shape", [(1,), (7, 5), (2, 3, 4, 5), (4, 8, 33, 31)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_reference(core_version, shape, dtype):
    """``relu_forward`` and ``relu_backward`` against NumPy's ``maximum`` and ``where``, with
    exact zeros in ``x`` (the subgradient at 0 is 0), both compiled versions."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::7] = 0
    dy = rng.standard_normal(shape).astype(dtype)
    y = cpu.relu_forward(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, reference.relu_forward(x))
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0))  # by hand
    dx = cpu.relu_backward(dy, y)
    np.testing.assert_array_equal(dx, reference.relu_backward(dy, y))
    np.testing.assert_array_equal(dx, dy * (x > 0))


def test_relu_edge_values_as_torch():
    """NaN stays NaN, -inf and 0 give 0, +inf stays; an Inf or NaN in ``dy`` where the output
    is 0 does not leak through (a select, as torch's threshold_backward). One difference, as
    minicnn's fused conv ReLUs: a NaN output passes no gradient (torch's passes it)."""
    torch = require_torch()
    x = np.array([np.nan, -np.inf, 0.0, 2.0, -1.0, np.inf, -3.0, 1.5], dtype=np.float32)
    dy = np.array([1.0, np.inf, np.nan, 1.0, -np.inf, 2.0, 1.0, np.nan], dtype=np.float32)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = torch.relu(tx)
    ty.backward(torch.from_numpy(dy))
    y = cpu.relu_forward(x)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    expected = tx.grad.numpy().copy()
    assert expected[0] == 1.0  # torch: the NaN input's gradient flows
    expected[0] = 0.0
    np.testing.assert_array_equal(cpu.relu_backward(dy, y), expected)
    np.testing.assert_array_equal(reference.relu_backward(dy, y), expected)


def test_relu_rejects_bad_operands():
    with pytest.raises(TypeError, match=r"expected x as float32 or float64, got int64"):
        cpu.relu_forward(np.arange(4))
    with pytest.raises(ValueError, match=r"relu_backward expected dy of the output's shape \(2, 3\), got \(3, 2\)"):
        cpu.relu_backward(np.zeros((3, 2), np.float32), np.zeros((2, 3), np.float32))


# Stride-1 depthwise geometries for the padded-width grid cores: pads 0..k-1, asymmetric,
# rectangular and even kernels, depth multipliers 1 and 2, more planes than one chunk.
GRID_CASES = [
    ((2, 3, 7, 9), (3, 3), (1, 1, 1, 1), 1),
    ((3, 7, 6, 5), (5, 3), (2, 0, 1, 2), 2),    # 21 planes: two chunks of _GRID_PLANES
    ((2, 3, 8, 8), (2, 4), (1, 0, 3, 1), 2),
    ((1, 2, 5, 6), (3, 3), (0, 0, 0, 0), 1),
    ((1, 1, 1, 1), (3, 3), (2, 2, 2, 2), 1),    # everything is padding but the centre
    ((2, 2, 4, 7), (1, 1), (0, 0, 0, 0), 2),
]


@pytest.mark.parametrize("grid", [True, False], ids=["grid", "general"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, padding, multiplier", GRID_CASES)
def test_depthwise_stride_one_both_cores_match_reference(monkeypatch, grid, shape, kernel, padding, multiplier,
                                                          dtype):
    monkeypatch.setattr(cpu, "DEPTHWISE_GRID", grid)
    assert cpu.grid_applies(kernel, (1, 1), padding, (1, 1))
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal((shape[1] * multiplier, 1) + kernel).astype(dtype)
    bias = rng.standard_normal(weight.shape[0]).astype(dtype)
    y = cpu.depthwise_forward(x, weight, (1, 1), padding, bias=bias)
    _close(y, reference.depthwise_forward(x, weight, (1, 1), padding, (1, 1), bias=bias), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    for actual, expected in zip(cpu.depthwise_backward(dy, x, weight, (1, 1), padding),
                                reference.depthwise_backward(dy, x, weight, (1, 1), padding, (1, 1))):
        _close(actual, expected, dtype)


@pytest.mark.parametrize("grid", [True, False], ids=["grid", "general"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding, multiplier", [
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1, 1, 1), 1),     # odd sizes: the last stride-1 row unused
    ((3, 7, 6, 5), (5, 3), (2, 1), (2, 0, 1, 2), 2),
    ((2, 3, 8, 8), (2, 4), (1, 2), (1, 0, 3, 1), 2),
    ((2, 2, 9, 9), (3, 3), (2, 2), (0, 0, 0, 0), 1),
])
def test_depthwise_stride_two_both_ways_match_reference(monkeypatch, grid, shape, kernel, stride, padding,
                                                          multiplier, dtype):
    """Stride 2 on the grid: every second stride-1 output, and the stride-1 gradients of a
    ``dy`` spread out with zeros; against the reference and the general cores."""
    monkeypatch.setattr(cpu, "DEPTHWISE_GRID", grid)
    assert cpu._strided_on_grid(kernel, stride, padding, (1, 1))
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal((shape[1] * multiplier, 1) + kernel).astype(dtype)
    bias = rng.standard_normal(weight.shape[0]).astype(dtype)
    y = cpu.depthwise_forward(x, weight, stride, padding, bias=bias)
    _close(y, reference.depthwise_forward(x, weight, stride, padding, (1, 1), bias=bias), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    for actual, expected in zip(cpu.depthwise_backward(dy, x, weight, stride, padding),
                                reference.depthwise_backward(dy, x, weight, stride, padding, (1, 1))):
        _close(actual, expected, dtype)


def test_depthwise_grid_applies_to_stride_one_only():
    """The same rule as ``direct.applies`` (which calls it)."""
    assert cpu.grid_applies((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    assert not cpu.grid_applies((3, 3), (2, 2), (1, 1, 1, 1), (1, 1))   # stride
    assert not cpu.grid_applies((3, 3), (1, 1), (1, 1, 1, 1), (2, 1))   # dilation
    assert not cpu.grid_applies((3, 3), (1, 1), (3, 1, 1, 1), (1, 1))   # a pad beyond k - 1
    assert cpu._strided_on_grid((3, 3), (2, 1), (1, 1, 1, 1), (1, 1))   # stride 2: spread over stride 1
    assert not cpu._strided_on_grid((3, 3), (3, 3), (1, 1, 1, 1), (1, 1))
