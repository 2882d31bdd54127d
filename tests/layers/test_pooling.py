"""Pooling and upsampling layers against finite differences, PyTorch and hand computations."""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.gradcheck import check_layer, kink_free_input
from minicnn.layers import AvgPool2D, GlobalAvgPool2D, GlobalMaxPool2D, MaxPool2D, UpSampling2D
from tests.helpers import DTYPES, check_torch_parity, require_torch

# (pool_size, stride, padding, input shape): a sample of pool 2-3, stride None/1-3,
# padding 0-1, odd and even sizes, non-square windows, and leftover rows that are dropped.
WINDOW_CASES = [
    (2, None, 0, (2, 3, 8, 8)),
    (2, 1, 0, (2, 2, 5, 7)),
    (3, 2, 1, (2, 3, 7, 9)),
    (3, 3, 1, (1, 2, 9, 8)),
    (3, 1, 1, (2, 2, 5, 5)),
    (3, None, 0, (2, 1, 7, 7)),
    (2, 3, 1, (2, 2, 7, 6)),
    ((2, 3), (1, 2), (1, 0), (2, 2, 6, 7)),
]
CASE_IDS = [f"k{k}-s{s}-p{p}-{'x'.join(map(str, shape))}" for k, s, p, shape in WINDOW_CASES]


def _torch_pool(kind, pool, stride, padding):
    torch = require_torch()
    module = torch.nn.MaxPool2d if kind is MaxPool2D else torch.nn.AvgPool2d
    return module(pool, stride=stride, padding=padding)  # torch: stride=None also means pool size


def _input(shape, seed=0):
    # Distinct, well-separated values: no max-pool ties, so the argmax is unambiguous.
    return kink_free_input(shape, np.random.default_rng(seed))


@pytest.mark.parametrize("kind", [MaxPool2D, AvgPool2D])
@pytest.mark.parametrize("pool, stride, padding, shape", WINDOW_CASES, ids=CASE_IDS)
def test_window_pool_gradcheck(kind, pool, stride, padding, shape):
    report = check_layer(kind(pool, stride=stride, padding=padding), shape, max_checks=60)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [MaxPool2D, AvgPool2D])
@pytest.mark.parametrize("pool, stride, padding, shape", WINDOW_CASES, ids=CASE_IDS)
def test_window_pool_matches_torch(kind, pool, stride, padding, shape, dtype):
    layer = kind(pool, stride=stride, padding=padding)
    y, _ = check_torch_parity(layer, _torch_pool(kind, pool, stride, padding), _input(shape), dtype)
    assert y.dtype == dtype
    assert layer.output_shape(shape[1:]) == y.shape[1:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool, stride, shape", [(2, 2, (2, 2, 7, 7)), (3, 2, (1, 2, 8, 5)), (3, 1, (2, 1, 6, 6))])
def test_maxpool_same_padding_matches_torch_with_minus_inf_padding(pool, stride, shape, dtype):
    torch = require_torch()
    layer = MaxPool2D(pool, stride=stride, padding="same")
    h, w = shape[2:]
    pads = []
    for size in (w, h):  # TensorFlow's rule, written out independently: extra cell at the end
        total = max((-(-size // stride) - 1) * stride + pool - size, 0)
        pads += [total // 2, total - total // 2]
    module = torch.nn.Sequential(torch.nn.ConstantPad2d(tuple(pads), float("-inf")),
                                 torch.nn.MaxPool2d(pool, stride))
    y, _ = check_torch_parity(layer, module, _input(shape), dtype)
    assert y.shape[2:] == (-(-h // stride), -(-w // stride))


def test_maxpool_routes_ties_to_the_first_pixel_of_the_window():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 2:, 2:] = 5.0                        # a tie of four in the bottom-right window too
    layer = MaxPool2D(2).astype(np.float64)
    layer.forward(x)
    dx = layer.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 2] = 1.0, 2.0, 3.0, 4.0
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_overlapping_maxpool_sums_gradients_of_windows_sharing_a_winner():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 9.0                          # the centre wins all four 2x2 windows
    layer = MaxPool2D(2, stride=1).astype(np.float64)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 9.0))
    dx = layer.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert dx[0, 0, 1, 1] == 10.0 and dx.sum() == 10.0


def test_avgpool_counts_padding_as_zeros():
    x = np.ones((1, 1, 2, 2))
    y = AvgPool2D(2, stride=2, padding=1).astype(np.float64).forward(x)
    np.testing.assert_allclose(y, np.full((1, 1, 2, 2), 0.25))   # each window: one real 1, three pads


# ---------------------------------------------------------------- global pools and upsampling
GLOBAL_SHAPES = [(2, 3, 5, 4), (3, 1, 1, 7), (1, 4, 3, 3)]


@pytest.mark.parametrize("kind", [GlobalAvgPool2D, GlobalMaxPool2D])
@pytest.mark.parametrize("shape", GLOBAL_SHAPES)
def test_global_pool_gradcheck(kind, shape):
    report = check_layer(kind(), shape, max_checks=60)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [GlobalAvgPool2D, GlobalMaxPool2D])
@pytest.mark.parametrize("shape", GLOBAL_SHAPES)
def test_global_pool_matches_torch_adaptive_pool(kind, shape, dtype):
    torch = require_torch()
    pool = torch.nn.AdaptiveAvgPool2d(1) if kind is GlobalAvgPool2D else torch.nn.AdaptiveMaxPool2d(1)
    layer = kind()
    y, _ = check_torch_parity(layer, torch.nn.Sequential(pool, torch.nn.Flatten()), _input(shape), dtype)
    assert y.shape == shape[:2] and layer.output_shape(shape[1:]) == (shape[1],)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_max_pool_matches_torch_amax(dtype):
    torch = require_torch()

    class Amax(torch.nn.Module):
        def forward(self, x):
            return torch.amax(x, dim=(2, 3))

    check_torch_parity(GlobalMaxPool2D(), Amax(), _input((3, 2, 4, 5), seed=3), dtype)


def test_global_max_pool_routes_ties_to_the_first_pixel():
    x = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
    layer = GlobalMaxPool2D().astype(np.float64)
    assert layer.forward(x)[0, 0] == 3.0
    np.testing.assert_array_equal(layer.backward(np.array([[2.0]]))[0, 0], [[0.0, 2.0], [0.0, 0.0]])


UPSAMPLING_CASES = [(2, (2, 3, 4, 4)), (3, (1, 2, 3, 5)), ((2, 3), (2, 1, 3, 2)), ((1, 2), (2, 2, 2, 3))]


@pytest.mark.parametrize("size, shape", UPSAMPLING_CASES)
def test_upsampling_gradcheck(size, shape):
    report = check_layer(UpSampling2D(size), shape, max_checks=60)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size, shape", UPSAMPLING_CASES)
def test_upsampling_matches_torch_nearest(size, shape, dtype):
    torch = require_torch()
    factor = tuple(float(s) for s in size) if isinstance(size, tuple) else float(size)
    layer = UpSampling2D(size)
    y, _ = check_torch_parity(layer, torch.nn.Upsample(scale_factor=factor, mode="nearest"),
                              _input(shape), dtype)
    assert layer.output_shape(shape[1:]) == y.shape[1:]


def test_upsampling_by_hand():
    x = np.array([[[[1.0, 2.0]]]])
    layer = UpSampling2D((2, 2)).astype(np.float64)
    np.testing.assert_array_equal(layer.forward(x)[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2]])
    dy = np.arange(8.0).reshape(1, 1, 2, 4)
    np.testing.assert_array_equal(layer.backward(dy)[0, 0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7]])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, shape, message", [
    (lambda: MaxPool2D(2), (2, 8, 8), r"MaxPool2D expected a 4-D input \(N, C, H, W\), got shape \(2, 8, 8\)"),
    (lambda: AvgPool2D(2), (2, 1, 3, 8, 8), r"AvgPool2D expected a 4-D input"),
    (lambda: GlobalAvgPool2D(), (4, 10), r"GlobalAvgPool2D expected a 4-D input"),
    (lambda: GlobalMaxPool2D(), (4, 10), r"GlobalMaxPool2D expected a 4-D input"),
    (lambda: UpSampling2D(2), (4, 10), r"UpSampling2D expected a 4-D input"),
    (lambda: MaxPool2D(5), (1, 1, 4, 6), r"MaxPool2D pool 5x5 is larger than the padded input 4x6"),
    (lambda: AvgPool2D((2, 4), padding=1), (1, 1, 4, 1), r"AvgPool2D pool 2x4 is larger than the padded input 6x3"),
])
def test_bad_input_shapes_raise(make, shape, message):
    with pytest.raises(ValueError, match=message):
        make().forward(np.zeros(shape, dtype=np.float32))


def test_pool_larger_than_input_fails_at_build_and_in_output_shape():
    with pytest.raises(ValueError, match="larger than the padded input"):
        MaxPool2D(3).build((2, 2, 2))
    with pytest.raises(ValueError, match="larger than the padded input"):
        AvgPool2D(4).output_shape((1, 3, 8))


@pytest.mark.parametrize("make, error, message", [
    (lambda: MaxPool2D(0), ValueError, r"MaxPool2D expected pool_size >= 1, got 0"),
    (lambda: AvgPool2D((2, -1)), ValueError, r"AvgPool2D expected pool_size >= 1"),
    (lambda: MaxPool2D(2, stride=0), ValueError, r"MaxPool2D expected stride >= 1"),
    (lambda: MaxPool2D(2, padding=-1), ValueError, r"MaxPool2D expected padding >= 0"),
    (lambda: MaxPool2D(3, padding=2), ValueError, r"at most half the pool size"),
    (lambda: AvgPool2D(2, padding=(1, 2)), ValueError, r"at most half the pool size"),
    (lambda: AvgPool2D(2, padding="same"), ValueError, r"AvgPool2D expected padding 'valid'"),
    (lambda: MaxPool2D(2, padding="full"), ValueError, r"MaxPool2D expected padding 'valid' or 'same'"),
    (lambda: MaxPool2D(2.5), TypeError, r"MaxPool2D expected pool_size as an int or a pair"),
    (lambda: UpSampling2D(0), ValueError, r"UpSampling2D expected size >= 1"),
    (lambda: UpSampling2D((2, 2, 2)), TypeError, r"UpSampling2D expected size as an int or a pair"),
])
def test_bad_constructor_arguments_raise(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("layer", [MaxPool2D(2), AvgPool2D(2), UpSampling2D(2)])
def test_backward_rejects_a_gradient_of_the_wrong_shape(layer):
    layer.forward(np.ones((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"2D\.backward expected dy of shape \(2, 3, \d+, \d+\) "
                                         r"\(the output of the last forward\), got \(2, 3, 3, 3\)"):
        layer.backward(np.ones((2, 3, 3, 3), dtype=np.float32))


@pytest.mark.parametrize("make", [lambda: MaxPool2D(2), lambda: AvgPool2D(2), lambda: UpSampling2D(2)])
def test_backward_before_forward_says_so(make):
    layer = make()
    with pytest.raises(RuntimeError, match=r"2D\.backward called before forward"):
        layer.backward(np.ones((2, 3, 2, 2), dtype=np.float32))
