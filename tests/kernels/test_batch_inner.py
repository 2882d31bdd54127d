"""im2col with the batch innermost (``kernels/batch_inner.py``) against independent oracles.

* ``im2col``: the columns of ``kernels.reference.im2col`` (strided window views), permuted by
  ``column_order``, which is itself checked by hand on a small batch;
* ``col2im``: ``reference.col2im`` of the same columns put back in the reference order;
* ``conv`` / ``conv_backward``: float64 ``W2 @ reference.im2col(x)`` with the bias and ReLU,
  ``dW = dz2 @ cols.T``, ``dx = reference.col2im(W2.T @ dz2)``, the bias gradient a plain
  sum, and torch autograd in one case;
over strides 1-3, dilation 1-2, symmetric and asymmetric pads, rectangular kernels, batches
of 1, a ragged last block and several chunks, both dtypes, both compiled versions of each
Numba core; kept columns reused and spent; the NaN rules; the error messages.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn import backend, kernels
from minicnn.kernels import batch_inner, blas, cpu, reference
from tests.helpers import require_torch
from tests.kernels.conv_oracles import assert_matches, conv_data, im2col_conv, im2col_grads


@pytest.fixture(params=["serial", "parallel", "by block, 1 lane", "by block, 3 lanes"])
def core_version(request, monkeypatch):
    """Each way ``conv`` and ``conv_backward`` can run: the whole-batch path with the serial or
    the parallel compiled version of the Numba cores (picked by size), or block by block on
    one lane or three (more lanes than the machine may have threads: lanes are prange
    iterations; fewer blocks than lanes take the whole-batch path)."""
    by_block = request.param.startswith("by block")
    if by_block and blas.gemm_function(np.float32) is None:
        pytest.skip("NumPy's BLAS is not one kernels.blas can call from a kernel: the whole-batch path runs")
    monkeypatch.setattr(batch_inner, "BY_BLOCK", by_block)
    monkeypatch.setattr(batch_inner, "get_num_threads", lambda: 3 if "3" in request.param else 1)
    monkeypatch.setattr(cpu, "PARALLEL_MIN_BYTES", 0 if request.param == "parallel" else 2**62)
    return request.param


@pytest.fixture
def whole_batch(monkeypatch):
    """The whole-batch path (the one that keeps its columns for backward)."""
    monkeypatch.setattr(batch_inner, "BY_BLOCK", False)


@pytest.fixture(params=[16, 3], ids=["blocks16", "blocks3"])
def batch_block(request, monkeypatch):
    """The library's block of 16 samples, and blocks of 3 so that small batches have a ragged
    last block."""
    monkeypatch.setattr(batch_inner, "BATCH_BLOCK", request.param)
    return request.param


# (x_shape (N, C_in, H, W), C_out, kernel, stride, padding (top, bottom, left, right), dilation)
CASES = [
    ((5, 6, 10, 10), 4, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1)),   # LeNet-5's conv2, scaled down
    ((4, 3, 9, 8), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((4, 3, 9, 8), 5, (3, 2), (2, 1), (0, 1, 2, 0), (1, 1)),     # asymmetric pads, rectangular
    ((3, 2, 11, 10), 4, (3, 3), (2, 3), (1, 2, 0, 1), (2, 1)),   # strides 2 and 3, dilation
    ((1, 2, 7, 7), 3, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),     # one sample
    ((17, 2, 6, 5), 3, (3, 3), (1, 2), (1, 1, 0, 2), (1, 2)),    # 17 samples: a ragged block of 1
    ((2, 1, 1, 1), 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),     # a 1x1 input: all padding but the centre
]


def _reference_conv(x, weight, bias, stride, padding, dilation, relu):
    """float64 ``act(W2 @ im2col(x) + b)`` as (N, C_out, Ho, Wo), and ``z`` before ``act``."""
    z = im2col_conv(x, weight, padding, stride, dilation) + bias.astype(np.float64)[:, None, None]
    return (np.maximum(z, 0) if relu else z), z


def _reference_grads(dz, x, weight, stride, padding, dilation):
    """``conv_oracles.im2col_grads`` with its arguments in ``batch_inner``'s order."""
    return im2col_grads(dz, x, weight, padding, stride, dilation)


def test_column_order_by_hand(monkeypatch):
    # 5 samples of 2x1 outputs in blocks of 2: block (0, 1), block (2, 3), block (4,).
    # Reference order: sample-major, n*2 + position. Blocked: position-major inside a block.
    monkeypatch.setattr(batch_inner, "BATCH_BLOCK", 2)
    assert batch_inner.column_order(5, 2, 1).tolist() == [0, 2, 1, 3, 4, 6, 5, 7, 8, 9]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("x_shape, c_out, kernel, stride, padding, dilation", CASES)
def test_columns_match_reference(core_version, batch_block, x_shape, c_out, kernel, stride, padding,
                                 dilation, dtype):
    x, _, _ = conv_data(x_shape, c_out, kernel, dtype)
    ho, wo = reference.output_hw(x_shape, kernel, stride, padding, dilation)
    order = batch_inner.column_order(x_shape[0], ho, wo)
    expected = reference.im2col(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(batch_inner.im2col(x, kernel, stride, padding, dilation), expected[:, order])
    dcols = np.random.default_rng(3).standard_normal(expected.shape).astype(dtype)
    assert_matches(batch_inner.col2im(dcols[:, order], x_shape, kernel, stride, padding, dilation),
                    reference.col2im(dcols.astype(np.float64), x_shape, kernel, stride, padding, dilation), dtype)


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("x_shape, c_out, kernel, stride, padding, dilation", CASES)
def test_conv_and_gradients_match_reference(core_version, batch_block, x_shape, c_out, kernel, stride,
                                            padding, dilation, dtype, relu):
    x, weight, bias = conv_data(x_shape, c_out, kernel, dtype)
    expected, z = _reference_conv(x, weight, bias, stride, padding, dilation, relu)
    y, kept = batch_inner.conv(x, weight, stride, padding, dilation, bias, relu, keep_cols=True)
    assert_matches(y, expected, dtype)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    dx, dweight, dbias = _reference_grads(dy * (z > 0) if relu else dy, x, weight, stride, padding, dilation)
    for cols in (kept, None):  # forward's columns, then recomputed
        got = batch_inner.conv_backward(dy, x, weight, stride, padding, dilation, y if relu else None, cols)
        for actual, wanted in zip(got, (dx, dweight, dbias)):
            assert_matches(actual, wanted, dtype)


def test_chunks_of_blocks_match_the_oracle(monkeypatch, whole_batch):
    """A workspace too small for the whole batch: chunks of whole blocks, and still the
    reference's numbers."""
    x, weight, bias = conv_data((37, 3, 6, 5), 4, (3, 3), np.float64)
    args = ((1, 1), (1, 1, 0, 2), (1, 1))
    whole, z = _reference_conv(x, weight, bias, *args, relu=True)
    dy = np.random.default_rng(2).standard_normal(whole.shape)
    grads = _reference_grads(dy * (z > 0), x, weight, *args)
    _, kept = batch_inner.conv(x, weight, *args, bias, True, keep_cols=True)
    assert kept is not None  # one chunk by default
    monkeypatch.setattr(batch_inner, "BATCH_BLOCK", 4)
    monkeypatch.setattr(batch_inner, "BLOCK_BYTES", 27 * 30 * 8 * 8)  # two blocks of 4 samples per chunk
    calls = []
    original = batch_inner._columns
    monkeypatch.setattr(batch_inner, "_columns", lambda *a: calls.append(a[4]) or original(*a))
    chunked, kept = batch_inner.conv(x, weight, *args, bias, True, keep_cols=True)
    assert kept is None and calls == [(s, min(s + 8, 37)) for s in range(0, 37, 8)]
    assert_matches(chunked, whole, np.float64)
    for a, b in zip(batch_inner.conv_backward(dy, x, weight, *args, chunked, None), grads):
        assert_matches(a, b, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_by_block_runs_and_splits_the_batch(monkeypatch, dtype):
    """37 samples in blocks of 16 (16, 16, 5) over two lanes (1 + 2 blocks): the block-by-block
    kernels really run, and the per-lane weight and bias sums add up to the oracle's."""
    if blas.gemm_function(dtype) is None:
        pytest.skip("NumPy's BLAS is not one kernels.blas can call from a kernel")
    monkeypatch.setattr(batch_inner, "get_num_threads", lambda: 2)
    calls = []
    for name in ("_conv_by_block", "_conv_backward_by_block"):
        kernel = getattr(batch_inner, name)
        monkeypatch.setattr(batch_inner, name, lambda *args, _k=kernel, _n=name: calls.append(_n) or _k(*args))
    x, weight, bias = conv_data((37, 3, 9, 7), 4, (3, 3), dtype)
    padding = (1, 0, 2, 1)
    y, kept = batch_inner.conv(x, weight, (1, 1), padding, (1, 1), bias, relu=True, keep_cols=True)
    assert kept is None  # backward recomputes each block's columns
    assert_matches(y, np.maximum(im2col_conv(x, weight, padding) + bias[:, None, None], 0), dtype)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx, dweight, dbias = batch_inner.conv_backward(dy, x, weight, (1, 1), padding, (1, 1), relu_output=y)
    expected = im2col_grads(dy * (y > 0), x, weight, padding)
    for actual, wanted in zip((dx, dweight, dbias), expected):
        assert_matches(actual, wanted, dtype)
    assert calls == ["_conv_by_block", "_conv_backward_by_block"]


def test_when_by_block_applies(monkeypatch):
    monkeypatch.setattr(batch_inner, "get_num_threads", lambda: 2)
    available = blas.gemm_function(np.float32) is not None
    assert batch_inner._lanes(128, 150, 100, np.float32) == (2 if available else 0)  # LeNet-5's conv2: 8 blocks
    assert batch_inner._lanes(16, 150, 100, np.float32) == 0        # one block, two threads
    assert batch_inner._lanes(128, 1152, 1024, np.float32) == 0     # 75 MB of columns a block
    monkeypatch.setattr(batch_inner, "BY_BLOCK", False)
    assert batch_inner._lanes(128, 150, 100, np.float32) == 0


def test_kept_columns_are_reused_and_spent(whole_batch):
    x, weight, bias = conv_data((6, 2, 7, 7), 3, (3, 3), np.float32)
    args = ((1, 1), (1, 1, 1, 1), (1, 1))
    _, first = batch_inner.conv(x, weight, *args, bias, keep_cols=True)
    y, second = batch_inner.conv(x * 2, weight, *args, bias, keep_cols=True, reuse=first)
    assert second[0] is first[0]  # the old columns' memory, written over
    np.testing.assert_array_equal(second[0], batch_inner.im2col(x * 2, (3, 3), *args))
    dy = np.ones_like(y)
    batch_inner.conv_backward(dy, x * 2, weight, *args, cols=second)
    assert not np.array_equal(second[0], batch_inner.im2col(x * 2, (3, 3), *args))  # spent: dcols now
    _, third = batch_inner.conv(x, weight, *args, bias, keep_cols=True, reuse=[np.empty((1, 1), np.float32)])
    assert third[0].shape == second[0].shape  # a misfit is not reused


def test_input_gradient_can_be_skipped():
    x, weight, bias = conv_data((4, 2, 6, 6), 3, (3, 3), np.float64)
    y, kept = batch_inner.conv(x, weight, (1, 1), (0, 0, 0, 0), (1, 1), bias, keep_cols=True)
    dx, dweight, dbias = batch_inner.conv_backward(np.ones_like(y), x, weight, (1, 1), (0, 0, 0, 0), (1, 1),
                                                   cols=kept, input_grad=False)
    assert dx is None
    _, expected_dweight, expected_dbias = _reference_grads(np.ones_like(y), x, weight, (1, 1), (0, 0, 0, 0), (1, 1))
    assert_matches(dweight, expected_dweight, np.float64)
    assert_matches(dbias, expected_dbias, np.float64)


def test_against_torch_autograd():
    torch = require_torch()
    x, weight, bias = conv_data((19, 3, 8, 7), 5, (3, 3), np.float64)
    stride, dilation = (2, 1), (1, 2)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, weight, bias))
    ty = torch.relu(torch.nn.functional.conv2d(tx, tw, tb, stride, (1, 2), dilation))
    dy = np.random.default_rng(4).standard_normal(tuple(ty.shape))
    ty.backward(torch.from_numpy(dy))
    y, kept = batch_inner.conv(x, weight, stride, (1, 1, 2, 2), dilation, bias, relu=True, keep_cols=True)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    grads = batch_inner.conv_backward(dy, x, weight, stride, (1, 1, 2, 2), dilation, y, kept)
    for actual, wanted in zip(grads, (tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(actual, wanted.numpy(), rtol=1e-10, atol=1e-12)


def test_nan_rules_follow_the_gemm_path():
    """A NaN output passes no gradient (ReLU's mask is ``y > 0``); NaN and Inf in ``dy``
    reach exactly the weights and pixels the GEMM path sends them to."""
    x, weight, bias = conv_data((5, 2, 5, 5), 3, (3, 3), np.float64)
    args = ((1, 1), (1, 1, 1, 1), (1, 1))
    y, _ = batch_inner.conv(x, weight, *args, bias, relu=True)
    y[1, 2, 3, 4] = np.nan
    dy = np.ones_like(y)
    _, _, dbias = batch_inner.conv_backward(dy, x, weight, *args, relu_output=y)
    assert np.isfinite(dbias).all()
    dy[2, 1, 0, 0] = np.inf
    with np.errstate(invalid="ignore"):  # Inf * 0 (padding) in both GEMMs: the NaN is the point
        dx, dweight, dbias = batch_inner.conv_backward(dy, x, weight, *args)
        expected = _reference_grads(dy, x, weight, *args)
    for actual, wanted in zip((dx, dweight, dbias), expected):
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(wanted))
        np.testing.assert_array_equal(np.isinf(actual), np.isinf(wanted))


def test_errors_name_the_function_and_the_shapes():
    x, weight, _ = conv_data((2, 3, 5, 5), 4, (3, 3), np.float32)
    with pytest.raises(ValueError, match=r"batch_inner\.conv expected a \(C_out, 3, kh, kw\) weight"):
        batch_inner.conv(x, weight[:, :2], (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"batch_inner\.conv expected an output of at least 1x1, got 0x0"):
        batch_inner.conv(x[:, :, :2, :2], weight, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"padding \(top, bottom, left, right\) >= 0"):
        batch_inner.conv(x, weight, (1, 1), (0, -1, 0, 0))
    with pytest.raises(TypeError, match=r"batch_inner\.conv expected NumPy arrays, got list"):
        batch_inner.conv(x.tolist(), weight, (1, 1), (0, 0, 0, 0))
    y, _ = batch_inner.conv(x, weight, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"batch_inner\.conv_backward expected dy of shape \(2, 4, 3, 3\)"
                                         r".*got \(2, 4, 3, 2\)"):
        batch_inner.conv_backward(y[..., :2], x, weight, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"batch_inner\.col2im expected cols of shape \(27, 18\)"):
        batch_inner.col2im(np.zeros((27, 17), np.float32), x.shape, (3, 3), (1, 1), (0, 0, 0, 0))


def test_batch_inner_pays_by_batch_width_and_workspace(monkeypatch):
    weight = (4, 3, 3, 3)
    args = ((1, 1), (1, 1, 1, 1))
    assert kernels.batch_inner_pays(np.zeros((4, 3, 16, 16), np.float32), weight, *args)       # 16 wide
    assert not kernels.batch_inner_pays(np.zeros((4, 3, 17, 17), np.float32), weight, *args)   # 17 wide
    assert not kernels.batch_inner_pays(np.zeros((3, 3, 8, 8), np.float32), weight, *args)     # batch 3
    assert kernels.batch_inner_pays(np.zeros((4, 3, 20, 20), np.float32), weight, (2, 2), (1, 1, 1, 1))
    monkeypatch.setattr(backend, "_workspace_bytes", 27 * 64 * 4 * 16 - 1)  # one block of 16: 27 x 64 x 4 B each
    assert not kernels.batch_inner_pays(np.zeros((16, 3, 8, 8), np.float32), weight, *args)
    assert kernels.batch_inner_pays(np.zeros((15, 3, 8, 8), np.float32), weight, *args)


def test_no_cpu_only_path_is_taken_for_gpu_arrays(monkeypatch):
    """Winograd, the direct kernels and the batch-inner columns are CPU-only: their deciders
    must say no for a CuPy array (emulated: an ndarray subclass registered as CuPy's)."""
    class FakeCupyArray(np.ndarray):
        pass

    monkeypatch.setattr(backend, "_cupy", type("FakeCupy", (), {"ndarray": FakeCupyArray}))
    cases = [(kernels.batch_inner_pays, (8, 3, 8, 8), (4, 3, 3, 3)),
             (kernels.direct_pays, (8, 1, 8, 8), (4, 1, 3, 3)),
             (kernels.winograd_pays, (64, 64, 32, 32), (64, 64, 3, 3))]
    for pays, x_shape, weight_shape in cases:
        x = np.zeros(x_shape, np.float32)
        assert pays(x, weight_shape, (1, 1), (1, 1, 1, 1)), pays.__name__  # a NumPy array: yes
        assert not pays(x.view(FakeCupyArray), weight_shape, (1, 1), (1, 1, 1, 1)), pays.__name__
