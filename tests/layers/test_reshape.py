"""Flatten and Reshape against finite differences, torch and hand-computed shapes."""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.gradcheck import check_layer
from minicnn.layers import Flatten, Reshape
from tests.helpers import DTYPES, check_torch_parity, require_torch

FLATTEN_SHAPES = [(2, 3, 4, 5), (3, 7), (1, 1, 1, 1), (2, 2, 3)]
# (target per-sample shape, input shape, expected output shape worked out by hand)
RESHAPE_CASES = [
    ((1, 28, 28), (2, 784), (2, 1, 28, 28)),
    ((-1, 2), (3, 3, 2, 2), (3, 6, 2)),
    ((4, -1), (2, 12), (2, 4, 3)),
    ((-1,), (2, 3, 2, 2), (2, 12)),
    (6, (2, 2, 3), (2, 6)),
    ((2, 1, 3), (4, 3, 2), (4, 2, 1, 3)),
]


@pytest.mark.parametrize("shape", FLATTEN_SHAPES)
def test_flatten_gradcheck(shape):
    report = check_layer(Flatten(), shape, max_checks=60)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", FLATTEN_SHAPES)
def test_flatten_matches_torch(shape, dtype):
    torch = require_torch()
    layer = Flatten()
    x = np.random.default_rng(0).standard_normal(shape)
    y, _ = check_torch_parity(layer, torch.nn.Flatten(), x, dtype)
    assert y.shape == (shape[0], int(np.prod(shape[1:])))
    assert layer.output_shape(shape[1:]) == y.shape[1:]


@pytest.mark.parametrize("target, shape, expected", RESHAPE_CASES)
def test_reshape_gradcheck(target, shape, expected):
    report = check_layer(Reshape(target), shape, max_checks=60)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target, shape, expected", RESHAPE_CASES)
def test_reshape_matches_torch(target, shape, expected, dtype):
    torch = require_torch()

    class TorchReshape(torch.nn.Module):
        def forward(self, x):
            return x.reshape(expected)

    layer = Reshape(target)
    y, _ = check_torch_parity(layer, TorchReshape(), np.random.default_rng(1).standard_normal(shape), dtype)
    assert y.shape == expected
    assert layer.output_shape(shape[1:]) == expected[1:]


def test_reshape_infers_minus_one_per_sample_for_any_batch():
    layer = Reshape((-1, 4))
    assert layer.output_shape((3, 4, 2)) == (6, 4)
    assert layer.forward(np.zeros((5, 24), dtype=np.float32)).shape == (5, 6, 4)
    assert layer.forward(np.zeros((1, 8), dtype=np.float32)).shape == (1, 2, 4)


def test_flatten_then_backward_restores_layout():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    layer = Flatten().astype(np.float64)
    y = layer.forward(x)
    np.testing.assert_array_equal(y[1], np.arange(12.0, 24.0))   # row-major: channel, row, column
    np.testing.assert_array_equal(layer.backward(y), x)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("target, shape, message", [
    ((5, -1), (2, 12), r"Reshape cannot reshape a sample of shape \(12,\) \(12 values\) to \(5, -1\)"),
    ((3, 3), (2, 2, 4), r"Reshape cannot reshape a sample of shape \(2, 4\) \(8 values\) to \(3, 3\)"),
    ((1, 28, 28), (4, 100), r"Reshape cannot reshape"),
])
def test_reshape_size_mismatch_raises(target, shape, message):
    with pytest.raises(ValueError, match=message):
        Reshape(target).forward(np.zeros(shape, dtype=np.float32))
    with pytest.raises(ValueError, match=message):
        Reshape(target).build(shape[1:])
    with pytest.raises(ValueError, match=message):
        Reshape(target).output_shape(shape[1:])


def test_reshape_checks_every_batch_not_only_the_first():
    layer = Reshape((2, 3))
    layer.forward(np.zeros((4, 6), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Reshape cannot reshape a sample of shape \(5,\)"):
        layer.forward(np.zeros((4, 5), dtype=np.float32))


@pytest.mark.parametrize("target, error, message", [
    ((-1, -1), ValueError, r"Reshape expected positive sizes and at most one -1 in shape, got \(-1, -1\)"),
    ((0, 3), ValueError, r"Reshape expected positive sizes"),
    ((2, -2), ValueError, r"Reshape expected positive sizes"),
    ((), TypeError, r"Reshape expected shape as a non-empty tuple of ints"),
    ((2.5, 2), TypeError, r"Reshape expected shape as a non-empty tuple of ints"),
    ("28x28", TypeError, r"Reshape expected shape as a non-empty tuple of ints"),
    ((True, 2), TypeError, r"Reshape expected shape as a non-empty tuple of ints"),
])
def test_bad_reshape_target_raises(target, error, message):
    with pytest.raises(error, match=message):
        Reshape(target)


@pytest.mark.parametrize("layer", [Flatten(), Reshape((-1,))])
def test_backward_rejects_a_gradient_of_the_wrong_size(layer):
    layer.forward(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"backward expected dy with the batch size and number of values"):
        layer.backward(np.zeros((2, 11), dtype=np.float32))


def test_empty_batch_and_non_array_raise():
    with pytest.raises(ValueError, match=r"Flatten received an empty batch"):
        Flatten().forward(np.zeros((0, 3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=r"Reshape expected a numpy or cupy array, got list"):
        Reshape((2,)).forward([[1.0, 2.0]])
