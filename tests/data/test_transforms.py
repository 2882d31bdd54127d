"""Augmentation transforms (minicnn.data.transforms), checked against NumPy's own flips, rot90 and shifts."""
import numpy as np
import pytest

import minicnn
from minicnn.data import (Compose, Normalize, RandomCrop, RandomFlip, RandomNoise, RandomRotation,
                          RandomShift)


def _images(n=6, c=2, h=7, w=9, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(dtype)


def _shifted(img, dy, dx):
    """``img`` (C, H, W) moved down dy and right dx, zeros shifted in: out[y, x] = img[y - dy, x - dx]."""
    out = np.zeros_like(img)
    h, w = img.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flip_with_p_one_and_zero(dtype):
    x = _images(dtype=dtype)
    np.testing.assert_array_equal(RandomFlip(p=1.0)(x), x[:, :, :, ::-1])
    np.testing.assert_array_equal(RandomFlip(horizontal=False, vertical=True, p=1.0)(x), x[:, :, ::-1, :])
    np.testing.assert_array_equal(RandomFlip(vertical=True, p=1.0)(x), x[:, :, ::-1, ::-1])
    np.testing.assert_array_equal(RandomFlip(p=0.0)(x), x)
    assert RandomFlip(p=1.0)(x).dtype == dtype


def test_flip_half_of_the_samples():
    minicnn.seed(0)
    x = _images(n=200)
    out = RandomFlip(p=0.5)(x)
    flipped = np.array([np.array_equal(o, s[:, :, ::-1]) for o, s in zip(out, x)])
    kept = np.array([np.array_equal(o, s) for o, s in zip(out, x)])
    assert np.all(flipped ^ kept)                  # each sample is exactly one of the two
    assert 70 < flipped.sum() < 130                # ~Binomial(200, 0.5)


@pytest.mark.parametrize("max_shift", [0, 1, 3])
def test_shift_is_a_zero_filled_translation(max_shift):
    minicnn.seed(max_shift)
    x = _images(n=12, dtype=np.float64)
    out = RandomShift(max_shift)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts = set()
    for o, s in zip(out, x):
        matches = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)
                   if np.array_equal(o, _shifted(s, dy, dx))]
        assert matches, "output is not a shifted copy of its input"
        shifts.add(matches[0])
    if max_shift:
        assert len(shifts) > 1


def test_crop_with_padding_finds_each_window():
    minicnn.seed(1)
    x = _images(n=10, c=3, h=8, w=8)
    out = RandomCrop(6, padding=2)(x)
    assert out.shape == (10, 3, 6, 6) and out.dtype == np.float32
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for o, p in zip(out, padded):
        assert any(np.array_equal(o, p[:, t:t + 6, l:l + 6]) for t in range(7) for l in range(7))
    rect = RandomCrop((3, 5))(x)
    assert rect.shape == (10, 3, 3, 5)


@pytest.mark.parametrize("angle,k", [(90, 1), (-90, -1), (180, 2)])
def test_rotation_by_right_angles_matches_rot90(angle, k):
    x = _images(h=9, w=9, dtype=np.float64)
    out = RandomRotation((angle, angle))(x)
    np.testing.assert_allclose(out, np.rot90(x, k=k, axes=(2, 3)), atol=1e-12)


def test_small_rotation_changes_images_within_range():
    minicnn.seed(2)
    x = _images(n=8, h=12, w=12)
    out = RandomRotation(15)(x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= x.max() + 1e-6
    assert all(not np.allclose(o, s) for o, s in zip(out, x))
    np.testing.assert_allclose(RandomRotation(0)(x), x, atol=1e-6)


def test_noise_statistics_and_clipping():
    minicnn.seed(3)
    x = np.full((50, 1, 20, 20), 0.5, np.float32)
    noise = RandomNoise(0.1, clip=None)(x) - x
    assert abs(noise.mean()) < 0.005 and abs(noise.std() - 0.1) < 0.005
    clipped = RandomNoise(1.0)(x)
    assert clipped.min() == 0.0 and clipped.max() == 1.0 and clipped.dtype == np.float32
    np.testing.assert_array_equal(RandomNoise(0.0)(x), x)


def test_normalize_per_channel_by_hand():
    x = np.array([[[[0.0, 1.0]], [[0.5, 0.25]]]], np.float32)  # (1, 2, 1, 2)
    out = Normalize(mean=(0.5, 0.25), std=(0.5, 0.25))(x)
    np.testing.assert_allclose(out, [[[[-1.0, 1.0]], [[1.0, 0.0]]]])
    np.testing.assert_allclose(Normalize(0.5, 2.0)(x), (x - 0.5) / 2.0)


def test_compose_applies_in_order():
    x = _images()
    out = Compose([Normalize(0.5, 0.5), Normalize(1.0, 2.0)])(x)
    np.testing.assert_allclose(out, ((x - 0.5) / 0.5 - 1.0) / 2.0, rtol=1e-6)


def test_augmentation_keeps_shape_dtype_range_and_input():
    x = _images(n=16, c=1, h=28, w=28)
    original = x.copy()
    augment = Compose([RandomShift(2), RandomRotation(10), RandomFlip(p=0.5), RandomNoise(0.05)])
    minicnn.seed(4)
    out = augment(x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not np.allclose(out, x)
    np.testing.assert_array_equal(x, original)
    minicnn.seed(4)
    np.testing.assert_array_equal(augment(x), out)  # reproducible under minicnn.seed


def test_single_sample_is_accepted():
    x = _images()[0]
    np.testing.assert_array_equal(RandomFlip(p=1.0)(x), x[:, :, ::-1])


def test_bad_inputs_and_arguments():
    with pytest.raises(ValueError, match=r"RandomFlip expected a batch \(N, C, H, W\) or a sample \(C, H, W\), got shape \(4, 4\)"):
        RandomFlip()(np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match=r"RandomNoise expected floating-point images .* got dtype uint8"):
        RandomNoise(0.1)(np.zeros((1, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"Normalize has 3 channel means but the input has 1 channels"):
        Normalize((0.1, 0.2, 0.3), 1.0)(np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"Normalize expected std > 0"):
        Normalize(0.0, 0.0)
    with pytest.raises(ValueError, match=r"RandomCrop size \(9, 9\) is larger than the padded input \(8, 8\)"):
        RandomCrop(9, padding=1)(np.zeros((1, 1, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"RandomCrop expected size >= 1"):
        RandomCrop(0)
    with pytest.raises(ValueError, match=r"RandomShift expected max_shift as an int >= 0, got -1"):
        RandomShift(-1)
    with pytest.raises(ValueError, match=r"RandomFlip expected p in \[0, 1\], got 1.5"):
        RandomFlip(p=1.5)
    with pytest.raises(ValueError, match=r"RandomNoise expected stddev >= 0.0, got -0.1"):
        RandomNoise(-0.1)
    with pytest.raises(TypeError, match=r"RandomRotation expected degrees as a number"):
        RandomRotation("10")
    with pytest.raises(ValueError, match=r"RandomRotation expected low <= high"):
        RandomRotation((10, -10))
    with pytest.raises(TypeError, match=r"Compose expected callables"):
        Compose([1])
