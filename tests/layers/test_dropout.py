"""Dropout, SpatialDropout2D and GaussianNoise: gradients, statistics, exact values, errors.

Random layers cannot be compared with torch number for number (the generators
differ), so the oracles are finite differences with a fixed mask (``check_layer``
reseeds before every forward), the binomial / normal statistics a correct layer
must show over large tensors, and exact element-wise identities
(kept units are ``x / (1 - rate)``, dropped ones are 0).
"""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn.gradcheck import check_layer
from minicnn.layers import Dropout, GaussianNoise, SpatialDropout2D
from tests.helpers import DTYPES

DTYPE_IDS = ["float64", "float32"]


@pytest.mark.parametrize("make, shape", [
    (lambda: Dropout(0.2), (4, 6)),
    (lambda: Dropout(0.5), (2, 3, 4, 4)),
    (lambda: Dropout(0.9), (5, 8)),
    (lambda: SpatialDropout2D(0.5), (3, 4, 3, 3)),
    (lambda: GaussianNoise(0.7), (4, 6)),
    (lambda: GaussianNoise(0.3), (2, 2, 3, 3)),
], ids=["dropout0.2", "dropout0.5-4d", "dropout0.9", "spatial0.5", "noise0.7", "noise0.3-4d"])
def test_gradcheck_with_fixed_mask(make, shape):
    layer = make()
    report = check_layer(layer, shape, training=True, max_checks=60)
    assert report.ok, str(report)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_keeps_the_right_fraction(rate):
    minicnn.seed(1)
    n = 200 * 500
    y = Dropout(rate).forward(np.ones((200, 500), np.float32), training=True)
    kept = np.count_nonzero(y) / n
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept - (1 - rate)) < 3 * sigma, f"kept fraction {kept:.4f}, expected {1 - rate} ± {3 * sigma:.4f}"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rate", [0.25, 0.5, 0.7])
def test_dropout_kept_units_scaled_exactly_and_backward_reuses_mask(rate, dtype):
    minicnn.seed(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 5, 5)).astype(dtype)  # no exact zeros, so y != 0 marks kept units
    layer = Dropout(rate, dtype=dtype)
    y = layer.forward(x, training=True)
    assert y.dtype == dtype
    kept = y != 0
    assert 0 < kept.sum() < x.size
    scale = np.asarray(1 - rate, dtype)
    np.testing.assert_array_equal(y[kept], x[kept] / scale)
    dy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(layer.backward(dy), np.where(kept, dy / scale, 0))


@pytest.mark.parametrize("layer", [Dropout(0.5), SpatialDropout2D(0.5), GaussianNoise(1.0), Dropout(0.0)],
                         ids=["dropout", "spatial", "noise", "dropout-rate0-training"])
def test_identity_in_evaluation(layer):
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    training = isinstance(layer, Dropout) and layer.rate == 0.0  # rate 0 is the identity even in training
    np.testing.assert_array_equal(layer.forward(x, training=training), x)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dy), dy)


def test_evaluation_after_training_forgets_the_mask():
    layer = Dropout(0.5)
    x = np.ones((8, 8), np.float32)
    layer.forward(x, training=True)
    layer.forward(x, training=False)
    np.testing.assert_array_equal(layer.backward(x), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rate", [0.3, 0.6])
def test_spatial_dropout_drops_whole_channels(rate, dtype):
    minicnn.seed(3)
    rng = np.random.default_rng(0)
    n, c = 64, 32
    x = rng.standard_normal((n, c, 5, 4)).astype(dtype)
    layer = SpatialDropout2D(rate, dtype=dtype)
    y = layer.forward(x, training=True)
    dropped = (y == 0).all(axis=(2, 3))
    kept = ~dropped
    # Every map is either all zeros or all of x / (1 - rate): nothing in between.
    scale = np.asarray(1 - rate, dtype)
    np.testing.assert_array_equal(y[kept], x[kept] / scale)
    sigma = np.sqrt(rate * (1 - rate) / (n * c))
    assert abs(kept.mean() - (1 - rate)) < 3 * sigma
    dy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(layer.backward(dy), np.where(kept[:, :, None, None], dy / scale, 0))


def test_masks_reproducible_with_seed_and_fresh_each_call():
    x = np.ones((10, 20), np.float32)
    layer = Dropout(0.5)
    minicnn.seed(7)
    first, second = layer.forward(x, training=True), layer.forward(x, training=True)
    minicnn.seed(7)
    np.testing.assert_array_equal(layer.forward(x, training=True), first)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("stddev", [0.1, 2.0])
def test_gaussian_noise_statistics(stddev, dtype):
    minicnn.seed(4)
    n = 400 * 500
    x = np.full((400, 500), 3.0, dtype)
    y = GaussianNoise(stddev, dtype=dtype).forward(x, training=True)
    assert y.dtype == dtype
    noise = y.astype(np.float64) - 3.0
    # Sample mean has std stddev/sqrt(n); sample std has relative std ~1/sqrt(2n).
    assert abs(noise.mean()) < 3 * stddev / np.sqrt(n)
    assert abs(noise.std() / stddev - 1) < 3 / np.sqrt(2 * n) + 1e-4  # + float32 rounding of x + e
    # Independent draws: neighbouring entries are uncorrelated.
    assert abs(np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]) < 3 / np.sqrt(n)


def test_gaussian_noise_zero_stddev_and_backward():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(GaussianNoise(0.0).forward(x, training=True), x)
    layer = GaussianNoise(0.5)
    y = layer.forward(x, training=True)
    assert not np.array_equal(y, x)
    np.testing.assert_array_equal(layer.backward(2 * x), 2 * x)  # noise does not depend on x


@pytest.mark.parametrize("make, error, match", [
    (lambda: Dropout(-0.1), ValueError, r"Dropout expected rate in \[0, 1\), got -0.1"),
    (lambda: Dropout(1.0), ValueError, r"Dropout expected rate in \[0, 1\), got 1.0"),
    (lambda: Dropout(1.5), ValueError, r"Dropout expected rate in \[0, 1\)"),
    (lambda: SpatialDropout2D(1.0), ValueError, r"SpatialDropout2D expected rate in \[0, 1\)"),
    (lambda: SpatialDropout2D(-0.5), ValueError, r"SpatialDropout2D expected rate in \[0, 1\)"),
    (lambda: Dropout("0.5"), TypeError, r"Dropout expected rate as a real number, got '0.5'"),
    (lambda: Dropout(True), TypeError, r"Dropout expected rate as a real number"),
    (lambda: GaussianNoise(-0.1), ValueError, r"GaussianNoise expected a finite stddev >= 0, got -0.1"),
    (lambda: GaussianNoise(float("inf")), ValueError, r"GaussianNoise expected a finite stddev >= 0"),
    (lambda: GaussianNoise(None), TypeError, r"GaussianNoise expected stddev as a real number"),
])
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_spatial_dropout_needs_images():
    with pytest.raises(ValueError, match=r"SpatialDropout2D expected a 4-D input \(N, C, H, W\), got shape \(8, 10\)"):
        SpatialDropout2D(0.5).forward(np.ones((8, 10), np.float32), training=True)
