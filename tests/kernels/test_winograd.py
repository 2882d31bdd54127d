"""Winograd F(2x2, 3x3) convolution (``kernels/winograd.py``) against independent oracles.

* Forward: the float64 im2col + GEMM of ``kernels.reference`` (strided window views, a
  different algorithm), over N = 1, C_in = 1, C_out = 1, odd and even H/W, symmetric and
  asymmetric pads 0..2, with and without bias and ReLU, float32 and float64.
* Input gradient: ``reference.col2im(W2.T @ dz2)``, the adjoint of that GEMM.
* Weight gradient: ``dz2 @ reference.im2col(x).T``.
* All three against torch's ``conv2d`` and its autograd in one case.
* Both paths: the blocked one (several blocks of samples, the last one narrower; both
  compiled versions of each Numba core, serial and parallel) and sample by sample on one or
  more lanes, calling NumPy's BLAS from the kernel; and the error messages.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.kernels import cpu, reference, winograd
from tests.helpers import require_torch


@pytest.fixture(params=["serial", "parallel"])
def core_version(request, monkeypatch):
    """Force the blocked path, with the serial or the parallel compiled version of the Numba
    cores (picked by size)."""
    monkeypatch.setattr(winograd, "BY_SAMPLE", False)
    monkeypatch.setattr(cpu, "PARALLEL_MIN_BYTES", 0 if request.param == "parallel" else 2**62)
    return request.param


def _by_sample_available():
    if winograd.blas.gemm_function(np.float32) is None:
        pytest.skip("NumPy's BLAS is not one kernels.blas can call from a kernel: the blocked path runs")


@pytest.fixture(params=["blocked serial", "blocked parallel", "by sample, 1 lane", "by sample, 3 lanes"])
def path(request, monkeypatch):
    """Each way ``conv3x3`` and its gradients can run: the blocked path with either compiled
    version of its cores, or sample by sample on one lane or on three (more lanes than the
    machine may have threads: the lanes are prange iterations; a batch smaller than the lane
    count takes the blocked path)."""
    by_sample = request.param.startswith("by sample")
    if by_sample:
        _by_sample_available()
        monkeypatch.setattr(winograd, "get_num_threads", lambda: 3 if "3" in request.param else 1)
    monkeypatch.setattr(winograd, "BY_SAMPLE", by_sample)
    monkeypatch.setattr(cpu, "PARALLEL_MIN_BYTES", 0 if "parallel" in request.param else 2**62)
    return request.param


# (x_shape (N, C_in, H, W), C_out, padding (top, bottom, left, right))
CASES = [
    ((2, 3, 5, 7), 4, (1, 1, 1, 1)),
    ((1, 1, 8, 8), 1, (0, 0, 0, 0)),
    ((3, 2, 9, 6), 5, (2, 2, 2, 2)),
    ((1, 4, 3, 3), 2, (0, 1, 1, 0)),
    ((2, 1, 6, 9), 3, (2, 0, 1, 2)),
    ((1, 5, 3, 3), 1, (0, 0, 0, 0)),   # a 1x1 output: one partial tile
    ((2, 6, 7, 4), 3, (1, 1, 0, 2)),
]


def _reference_conv(x, weight, padding, bias=None, relu=False):
    """float64 ``W2 @ im2col(x)`` reshaped to (N, C_out, Ho, Wo), plus bias, then ReLU."""
    x, weight = x.astype(np.float64), weight.astype(np.float64)
    n, c_out = x.shape[0], weight.shape[0]
    ho, wo = reference.output_hw(x.shape, (3, 3), (1, 1), padding)
    cols = reference.im2col(x, (3, 3), (1, 1), padding, (1, 1))
    y = (weight.reshape(c_out, -1) @ cols).reshape(c_out, n, ho, wo).transpose(1, 0, 2, 3)
    if bias is not None:
        y = y + bias.astype(np.float64)[:, None, None]
    return np.maximum(y, 0) if relu else y


def _reference_input_grad(dz, weight, x_shape, padding):
    """float64 ``col2im(W2.T @ dz2)``: the adjoint of the im2col GEMM."""
    dz2 = dz.astype(np.float64).transpose(1, 0, 2, 3).reshape(dz.shape[1], -1)
    dcols = weight.astype(np.float64).reshape(weight.shape[0], -1).T @ dz2
    return reference.col2im(dcols, x_shape, (3, 3), (1, 1), padding, (1, 1))


def _assert_matches(actual, expected, dtype):
    """float64 to 1e-10 relative; float32 to 1e-4 plus an atol scaled by the output's size."""
    assert actual.dtype == dtype
    scale = max(1.0, float(np.abs(expected).max()))
    tol = dict(rtol=1e-10, atol=1e-12 * scale) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(actual, expected, **tol)


def _data(x_shape, c_out, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal((c_out, x_shape[1], 3, 3)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    return x, weight, bias


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("x_shape, c_out, padding", CASES)
def test_forward_matches_im2col(path, x_shape, c_out, padding, dtype):
    x, weight, bias = _data(x_shape, c_out, dtype)
    y = winograd.conv3x3(x, weight, padding)
    expected = _reference_conv(x, weight, padding)
    assert y.shape == expected.shape
    _assert_matches(y, expected, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("x_shape, c_out, padding", CASES[::2])
def test_forward_bias_relu(x_shape, c_out, padding, relu, dtype):
    x, weight, bias = _data(x_shape, c_out, dtype, seed=1)
    y = winograd.conv3x3(x, weight, padding, bias=bias, relu=relu)
    expected = _reference_conv(x, weight, padding, bias, relu)
    _assert_matches(y, expected, dtype)
    if relu:
        assert (y >= 0).all() and (y == 0).any()


def _reference_weight_grad(dz, x, padding):
    c_out = dz.shape[1]
    cols = reference.im2col(x.astype(np.float64), (3, 3), (1, 1), padding, (1, 1))
    dz2 = dz.astype(np.float64).transpose(1, 0, 2, 3).reshape(c_out, -1)
    return (dz2 @ cols.T).reshape(c_out, x.shape[1], 3, 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("x_shape, c_out, padding", CASES)
def test_gradients_match_im2col(path, x_shape, c_out, padding, dtype):
    """dx against ``col2im(W2.T @ dz2)``, dW against ``dz2 @ im2col(x).T`` (float64 references)."""
    x, weight, _ = _data(x_shape, c_out, dtype, seed=2)
    ho, wo = reference.output_hw(x_shape, (3, 3), (1, 1), padding)
    dz = np.random.default_rng(3).standard_normal((x_shape[0], c_out, ho, wo)).astype(dtype)
    dx = winograd.conv3x3_input_grad(dz, weight, x_shape, padding)
    assert dx.shape == x_shape
    _assert_matches(dx, _reference_input_grad(dz, weight, x_shape, padding), dtype)
    dweight = winograd.conv3x3_weight_grad(dz, x, padding)
    assert dweight.shape == (c_out, x_shape[1], 3, 3) and dweight.dtype == dtype
    _assert_matches(dweight, _reference_weight_grad(dz, x, padding), dtype)


def test_a_hand_computed_case():
    """An all-ones 3x3 filter sums each 3x3 window: on a 4x4 ramp with no padding the four
    outputs are 9 times the window centres 5, 6, 9, 10."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = winograd.conv3x3(x, np.ones((1, 1, 3, 3)), (0, 0, 0, 0))
    np.testing.assert_allclose(y[0, 0], [[45.0, 54.0], [81.0, 90.0]], rtol=1e-14)


def test_filter_transform_is_g_g_gt_per_filter():
    """``U[4a + b, o, c] = (G g G^T)[a, b]`` for each filter ``g = weight[o, c]``, with G written
    out as in Lavin & Gray; the float32 result is the float64 product rounded once."""
    g_matrix = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    weight = np.random.default_rng(7).standard_normal((3, 2, 3, 3)).astype(np.float32)
    u = winograd._filter_transform(weight)
    assert u.shape == (16, 3, 2) and u.dtype == np.float32
    for o in range(3):
        for c in range(2):
            expected = g_matrix @ weight[o, c].astype(np.float64) @ g_matrix.T
            np.testing.assert_array_equal(u[:, o, c], expected.reshape(16).astype(np.float32))


def test_against_torch_autograd():
    torch = require_torch()
    x, weight, bias = _data((2, 3, 7, 6), 4, np.float64, seed=4)
    padding = (2, 1, 0, 2)  # torch pads (left, right, top, bottom) through F.pad
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tz = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (0, 2, 2, 1)), torch.from_numpy(weight))
    z = winograd.conv3x3(x, weight, padding)
    np.testing.assert_allclose(z, tz.detach().numpy(), rtol=1e-10, atol=1e-12)
    dz = np.random.default_rng(5).standard_normal(z.shape)
    tw = torch.from_numpy(weight.copy()).requires_grad_(True)
    tz = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (0, 2, 2, 1)), tw)
    tz.backward(torch.from_numpy(dz))
    np.testing.assert_allclose(winograd.conv3x3_input_grad(dz, weight, x.shape, padding), tx.grad.numpy(),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(winograd.conv3x3_weight_grad(dz, x, padding), tw.grad.numpy(),
                               rtol=1e-10, atol=1e-12)
    y = winograd.conv3x3(x, weight, padding, bias=bias, relu=True)
    ty = torch.relu(tz + torch.from_numpy(bias)[:, None, None])
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_several_blocks(core_version, monkeypatch, dtype):
    """Blocks of 2 samples over a batch of 5: three blocks, the last one narrower, sharing buffers."""
    x_shape, c_out, padding = (5, 3, 9, 7), 4, (1, 0, 2, 1)
    tiles = ((9 + 1 - 2 + 1) // 2) * ((7 + 3 - 2 + 1) // 2)
    monkeypatch.setattr(winograd, "_BLOCK_BYTES", 2 * 16 * c_out * tiles * np.dtype(dtype).itemsize)
    assert len(winograd._sample_blocks(5, 16 * c_out * tiles * np.dtype(dtype).itemsize)) == 3
    x, weight, bias = _data(x_shape, c_out, dtype, seed=6)
    y = winograd.conv3x3(x, weight, padding, bias=bias, relu=True)
    _assert_matches(y, _reference_conv(x, weight, padding, bias, relu=True), dtype)
    dz = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    dx = winograd.conv3x3_input_grad(dz, weight, x_shape, padding)
    _assert_matches(dx, _reference_input_grad(dz, weight, x_shape, padding), dtype)
    _assert_matches(winograd.conv3x3_weight_grad(dz, x, padding), _reference_weight_grad(dz, x, padding), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_by_sample_runs_and_splits_the_batch(monkeypatch, dtype):
    """Five samples over two lanes (2 + 3): the sample-by-sample kernels really run, and the
    weight gradient's per-lane sums add up to the reference."""
    _by_sample_available()
    monkeypatch.setattr(winograd, "get_num_threads", lambda: 2)
    calls = []
    for name in ("_conv_by_sample", "_weight_grad_by_sample"):
        kernel = getattr(winograd, name)
        monkeypatch.setattr(winograd, name, lambda *args, _k=kernel, _n=name: calls.append(_n) or _k(*args))
    x_shape, c_out, padding = (5, 3, 9, 7), 4, (1, 0, 2, 1)
    x, weight, bias = _data(x_shape, c_out, dtype, seed=8)
    y = winograd.conv3x3(x, weight, padding, bias=bias, relu=True)
    _assert_matches(y, _reference_conv(x, weight, padding, bias, relu=True), dtype)
    dz = np.random.default_rng(9).standard_normal(y.shape).astype(dtype)
    _assert_matches(winograd.conv3x3_input_grad(dz, weight, x_shape, padding),
                    _reference_input_grad(dz, weight, x_shape, padding), dtype)
    _assert_matches(winograd.conv3x3_weight_grad(dz, x, padding), _reference_weight_grad(dz, x, padding), dtype)
    assert calls == ["_conv_by_sample", "_conv_by_sample", "_weight_grad_by_sample"]


def test_when_by_sample_applies(monkeypatch):
    monkeypatch.setattr(winograd, "get_num_threads", lambda: 2)
    available = winograd.blas.gemm_function(np.float32) is not None
    assert winograd._lanes(64, 64, 64, 256, np.float32) == (2 if available else 0)   # L3: 2 MB a sample
    assert winograd._lanes(1, 64, 64, 256, np.float32) == 0      # fewer samples than threads
    assert winograd._lanes(64, 64, 64, 256 * 64, np.float32) == 0  # 128 MB a sample: no cache to keep it in
    monkeypatch.setattr(winograd, "BY_SAMPLE", False)
    assert winograd._lanes(64, 64, 64, 256, np.float32) == 0


def test_applies():
    assert winograd.applies((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    assert winograd.applies((3, 3), (1, 1), (0, 2, 1, 0), (1, 1))
    assert not winograd.applies((3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    assert not winograd.applies((5, 5), (1, 1), (1, 1, 1, 1), (1, 1))
    assert not winograd.applies((3, 3), (1, 1), (1, 1, 1, 1), (2, 2))
    assert not winograd.applies((3, 3), (1, 1), (3, 1, 1, 1), (1, 1))


@pytest.mark.parametrize("x_shape, c_out, padding, pays", [
    ((64, 64, 32, 32), 64, (1, 1, 1, 1), True),       # L3
    ((64, 128, 16, 16), 128, (1, 1, 1, 1), True),     # L4
    ((256, 128, 8, 8), 128, (1, 1, 1, 1), True),      # an 8x8 output, the smallest that pays
    ((256, 64, 16, 16), 64, (0, 0, 0, 0), True),      # 14x14 without padding
    ((512, 128, 8, 8), 128, (0, 0, 0, 0), False),     # work enough, but a 6x6 output
    ((32, 32, 32, 32), 32, (1, 1, 1, 1), False),      # VGG-mini's: too little work
    ((64, 8, 32, 32), 64, (1, 1, 1, 1), False),       # too few input channels
], ids=["L3", "L4", "8x8", "14x14", "6x6", "small-work", "8-channels"])
def test_winograd_pays_for_large_layers_with_large_outputs(x_shape, c_out, padding, pays):
    from minicnn import kernels

    x = np.empty(x_shape, np.float32)
    assert kernels.winograd_pays(x, (c_out, x_shape[1], 3, 3), (1, 1), padding) is pays


def test_bad_inputs():
    x, weight, _ = _data((2, 3, 6, 6), 4, np.float32)
    with pytest.raises(ValueError, match=r"winograd.conv3x3 expected x .* 4 dimensions, got shape \(3, 6, 6\)"):
        winograd.conv3x3(x[0], weight, (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"winograd.conv3x3 expected a \(C_out, C_in, 3, 3\) weight, got shape \(4, 3, 5, 5\)"):
        winograd.conv3x3(x, np.zeros((4, 3, 5, 5), np.float32), (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"winograd.conv3x3 expected weight with 3 input channels .* \(4, 2, 3, 3\)"):
        winograd.conv3x3(x, weight[:, :2], (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"winograd.conv3x3 expected padding .* each in 0..2, got \(3, 1, 1, 1\)"):
        winograd.conv3x3(x, weight, (3, 1, 1, 1))
    with pytest.raises(ValueError, match=r"winograd.conv3x3 expected padding .* got \(1, 1\)"):
        winograd.conv3x3(x, weight, (1, 1))
    with pytest.raises(ValueError, match=r"winograd.conv3x3 expected bias of shape \(4,\), got \(3,\)"):
        winograd.conv3x3(x, weight, (1, 1, 1, 1), bias=np.zeros(3))
    with pytest.raises(ValueError, match=r"winograd.conv3x3 expected an output of at least 1x1, got 0x0"):
        winograd.conv3x3(x[:, :, :2, :2], weight, (0, 0, 0, 0))
    with pytest.raises(TypeError, match=r"winograd.conv3x3 expected x .* float32 or float64, got int64"):
        winograd.conv3x3(x.astype(np.int64), weight, (1, 1, 1, 1))
    with pytest.raises(TypeError, match=r"winograd.conv3x3 expected x .* NumPy array, got list"):
        winograd.conv3x3(x.tolist(), weight, (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"winograd.conv3x3_weight_grad expected dz of shape \(2, 4, 6, 6\) .* got \(2, 4, 5, 6\)"):
        winograd.conv3x3_weight_grad(np.zeros((2, 4, 5, 6), np.float32), x, (1, 1, 1, 1))
    dz = np.zeros((2, 4, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"winograd.conv3x3_input_grad expected dz of shape \(2, 4, 6, 6\) .* got \(2, 4, 5, 6\)"):
        winograd.conv3x3_input_grad(dz[:, :, :5], weight, x.shape, (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"winograd.conv3x3_input_grad expected dz of shape \(2, 4, 6, 6\) for x_shape \(2, 5, 6, 6\)"):
        winograd.conv3x3_input_grad(dz, weight, (2, 5, 6, 6), (1, 1, 1, 1))
