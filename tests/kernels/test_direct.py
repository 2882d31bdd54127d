"""Direct stride-1 convolution (``kernels/direct.py``) against independent oracles.

* Forward: the float64 im2col + GEMM of ``kernels.reference`` (strided window views, a
  different algorithm), over kernel widths 5 and 3 (spelled out in the cores) and 1, 2, 4, 7
  (the tap-by-tap loop), square and rectangular kernels, symmetric and asymmetric pads
  0..k-1, N = 1, several channels in and out, with and without bias and ReLU, both dtypes.
* Input gradient: ``reference.col2im(W2.T @ dz2)``; weight gradient ``dz2 @ im2col(x).T``;
  bias gradient the plain sum; through a ReLU: the mask ``[y > 0]`` applied first.
* All of it against torch's ``conv2d`` and autograd in one case; both compiled versions of
  each Numba core (serial and parallel); the error messages.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.kernels import cpu, direct, reference
from tests.helpers import require_torch
from tests.kernels.conv_oracles import assert_matches, conv_data, im2col_conv, im2col_grads


@pytest.fixture(params=["serial", "parallel"])
def core_version(request, monkeypatch):
    """Force the serial or the parallel compiled version of the Numba cores (picked by size)."""
    monkeypatch.setattr(cpu, "PARALLEL_MIN_BYTES", 0 if request.param == "parallel" else 2**62)
    return request.param


# (x_shape (N, C_in, H, W), C_out, kernel (kh, kw), padding (top, bottom, left, right))
CASES = [
    ((3, 1, 12, 10), 6, (5, 5), (2, 2, 2, 2)),   # LeNet-5's conv1, scaled down
    ((2, 2, 7, 9), 3, (5, 5), (0, 0, 0, 0)),
    ((2, 3, 6, 5), 4, (3, 3), (1, 1, 1, 1)),
    ((1, 1, 5, 8), 2, (3, 3), (0, 2, 2, 1)),
    ((2, 2, 6, 6), 3, (3, 5), (2, 0, 4, 1)),     # rectangular: 5 taps per row, 3 rows
    ((2, 1, 9, 7), 2, (7, 7), (3, 3, 6, 0)),     # 7 taps: the tap-by-tap loop
    ((1, 2, 6, 7), 3, (4, 2), (1, 2, 0, 1)),     # even widths
    ((2, 3, 4, 4), 2, (1, 1), (0, 0, 0, 0)),
    ((1, 1, 1, 1), 1, (3, 3), (2, 2, 2, 2)),     # a 1x1 input: everything is padding but the centre
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("x_shape, c_out, kernel, padding", CASES)
def test_forward_matches_im2col(core_version, x_shape, c_out, kernel, padding, dtype):
    x, weight, bias = conv_data(x_shape, c_out, kernel, dtype)
    z = im2col_conv(x, weight, padding)
    assert_matches(direct.conv(x, weight, padding), z, dtype)
    assert_matches(direct.conv(x, weight, padding, bias=bias), z + bias.astype(np.float64)[:, None, None], dtype)
    y = direct.conv(x, weight, padding, bias=bias, relu=True)
    assert_matches(y, np.maximum(z + bias.astype(np.float64)[:, None, None], 0), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("x_shape, c_out, kernel, padding", CASES)
def test_gradients_match_im2col(core_version, x_shape, c_out, kernel, padding, dtype):
    x, weight, bias = conv_data(x_shape, c_out, kernel, dtype, seed=1)
    ho, wo = reference.output_hw(x_shape, kernel, (1, 1), padding)
    dy = np.random.default_rng(2).standard_normal((x_shape[0], c_out, ho, wo)).astype(dtype)
    dx, dweight, dbias = direct.conv_backward(dy, x, weight, padding)
    for actual, expected in zip((dx, dweight, dbias), im2col_grads(dy, x, weight, padding)):
        assert_matches(actual, expected, dtype)
    # Through a ReLU: the gradient of z = conv + b is dy where y > 0, 0 elsewhere.
    y = direct.conv(x, weight, padding, bias=bias, relu=True)
    assert (y == 0).any() and (y > 0).any()
    dx, dweight, dbias = direct.conv_backward(dy, x, weight, padding, relu_output=y)
    for actual, expected in zip((dx, dweight, dbias), im2col_grads(dy * (y > 0), x, weight, padding)):
        assert_matches(actual, expected, dtype)
    none, dweight_only, _ = direct.conv_backward(dy, x, weight, padding, relu_output=y, input_grad=False)
    assert none is None
    np.testing.assert_array_equal(dweight_only, dweight)


def test_a_hand_computed_case():
    """An all-ones 3x3 filter sums each window: on a 4x4 ramp padded by 1, the top-left
    output sees 0+1+4+5 = 10 and the centre ones 9 times the centre pixel."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = direct.conv(x, np.ones((1, 1, 3, 3)), (1, 1, 1, 1))
    assert y[0, 0, 0, 0] == 10.0 and y[0, 0, 1, 1] == 45.0 and y[0, 0, 3, 3] == 10 + 11 + 14 + 15


def test_against_torch_autograd():
    torch = require_torch()
    x, weight, bias = conv_data((3, 2, 9, 8), 4, (5, 5), np.float64, seed=3)
    padding = (2, 1, 0, 3)  # torch pads (left, right, top, bottom) through F.pad
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tw = torch.from_numpy(weight.copy()).requires_grad_(True)
    tb = torch.from_numpy(bias.copy()).requires_grad_(True)
    ty = torch.relu(torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (0, 3, 2, 1)), tw, tb))
    y = direct.conv(x, weight, padding, bias=bias, relu=True)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    dx, dweight, dbias = direct.conv_backward(dy, x, weight, padding, relu_output=y)
    for actual, expected in ((dx, tx.grad), (dweight, tw.grad), (dbias, tb.grad)):
        np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-10, atol=1e-12)


def test_nan_output_passes_no_gradient():
    """minicnn's ReLU everywhere: where the output is NaN, ``NaN > 0`` is false and nothing
    flows back (torch's ``threshold_backward`` lets it through: it zeroes only ``x <= 0``)."""
    x, weight, _ = conv_data((1, 1, 4, 4), 1, (3, 3), np.float64, seed=5)
    y = np.abs(direct.conv(x, weight, (1, 1, 1, 1))) + 1
    y[0, 0, 1, 2] = np.nan
    dy = np.ones_like(y)
    _, _, dbias = direct.conv_backward(dy, x, weight, (1, 1, 1, 1), relu_output=y)
    assert dbias[0] == 15.0


def test_an_infinite_gradient_gives_the_exact_infinities():
    """An Inf in ``dy``'s first element: the taps that multiply it by a padding zero are NaN,
    the others +-Inf, as in the im2col GEMM (sums that started from an Inf-derived "zero"
    would be NaN everywhere), and the other channel does not notice."""
    x, weight, _ = conv_data((2, 1, 6, 6), 2, (5, 5), np.float32, seed=6)
    dy = np.random.default_rng(7).standard_normal((2, 2, 6, 6)).astype(np.float32)
    dy[0, 0, 0, 0] = np.inf
    _, dweight, dbias = direct.conv_backward(dy, x, weight, (2, 2, 2, 2), input_grad=False)
    with np.errstate(invalid="ignore"):  # Inf * 0 in the reference GEMM: the NaN is the point
        _, expected, _ = im2col_grads(dy, x, weight, (2, 2, 2, 2))
    assert np.isnan(expected[0]).any() and np.isinf(expected[0]).any() and np.isfinite(expected[1]).all()
    assert dbias[0] == np.inf
    assert_matches(dweight, expected.astype(np.float32), np.float32)  # NaN and Inf where expected


def test_applies():
    assert direct.applies((5, 5), (1, 1), (2, 2, 2, 2), (1, 1))
    assert direct.applies((3, 1), (1, 1), (2, 0, 0, 0), (1, 1))
    assert not direct.applies((5, 5), (2, 2), (2, 2, 2, 2), (1, 1))   # stride
    assert not direct.applies((3, 3), (1, 1), (1, 1, 1, 1), (2, 2))   # dilation
    assert not direct.applies((3, 3), (1, 1), (3, 1, 1, 1), (1, 1))   # pad > k - 1


def test_errors_name_the_function_and_the_shapes():
    x, weight, _ = conv_data((2, 3, 6, 6), 4, (3, 3), np.float32)
    with pytest.raises(ValueError, match=r"direct.conv expected a \(C_out, 3, kh, kw\) weight, got shape \(4, 2, 3, 3\)"):
        direct.conv(x, weight[:, :2], (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"direct.conv expected a float32/float64 array of 4 dimensions, got float32 \(3, 6, 6\)"):
        direct.conv(x[0], weight, (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"direct.conv expected padding .* each in 0..k-1 for a 3x3 kernel, got \(3, 1, 1, 1\)"):
        direct.conv(x, weight, (3, 1, 1, 1))
    with pytest.raises(ValueError, match=r"direct.conv expected an output of at least 1x1, got 0x0"):
        direct.conv(x[:, :, :2, :2], weight, (0, 0, 0, 0))
    with pytest.raises(TypeError, match=r"direct.conv expected NumPy arrays, got list and ndarray"):
        direct.conv(x.tolist(), weight, (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"direct.conv_backward expected dy of shape \(2, 4, 6, 6\) .* got \(2, 4, 5, 5\)"):
        direct.conv_backward(np.zeros((2, 4, 5, 5), np.float32), x, weight, (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"direct.conv_backward expected relu_output of shape \(2, 4, 6, 6\) .* got \(4, 6, 6\)"):
        direct.conv_backward(np.zeros((2, 4, 6, 6), np.float32), x, weight, (1, 1, 1, 1),
                             relu_output=np.zeros((4, 6, 6), np.float32))
