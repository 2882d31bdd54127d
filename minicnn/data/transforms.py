"""Data augmentation: random transforms applied to a batch on the fly.

Each transform takes a batch ``(N, C, H, W)`` (or one sample ``(C, H, W)``) and
returns a new array of the same dtype; the input is never modified. Every sample
gets its own random draw, from :func:`minicnn.rng.get_rng`, so ``minicnn.seed(n)``
makes augmentation reproducible. Geometric transforms fill uncovered pixels with 0
and never leave the input's value range; :class:`RandomNoise` clips to ``clip``.

    augment = Compose([RandomShift(2), RandomRotation(10), RandomNoise(0.05)])
    loader = DataLoader(x, y, batch_size=64, augment=augment)

Transforms run on the CPU with NumPy (and SciPy for rotation); the training loop
moves each finished batch to the GPU.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..backend import to_numpy
from ..rng import get_rng

__all__ = ["Transform", "Compose", "RandomFlip", "RandomShift", "RandomCrop", "RandomRotation",
           "RandomNoise", "Normalize"]


def _check_number(value, what: str, owner: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner} expected {what} as a number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner} expected {what} >= {minimum}, got {value}")
    return float(value)


def _gather_windows(padded, top, left, height: int, width: int):
    """``out[n] = padded[n, :, top[n]:top[n]+height, left[n]:left[n]+width]`` in one gather."""
    n, c = padded.shape[:2]
    rows = top[:, None] + np.arange(height)           # (N, height)
    cols = left[:, None] + np.arange(width)           # (N, width)
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class Transform:
    """Base class: ``transform(x)`` validates the layout and calls ``apply(batch, rng)``."""

    def apply(self, x, rng):
        raise NotImplementedError

    def __call__(self, x):
        x = to_numpy(x)
        if x.ndim == 3:
            return self(x[None])[0]
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expected a batch (N, C, H, W) or a sample "
                             f"(C, H, W), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{type(self).__name__} expected floating-point images (scale uint8 "
                            f"to [0, 1] first), got dtype {x.dtype}")
        return self.apply(x, get_rng())

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` one after another."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose expected callables, got {t!r}")

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class RandomFlip(Transform):
    """Mirror each sample left-right (``horizontal``) and/or top-bottom (``vertical``) with probability ``p``.

    Horizontal flips suit photos (CIFAR); not digits, where a mirrored 2 is no longer a 2.
    """

    def __init__(self, horizontal: bool = True, vertical: bool = False, p: float = 0.5):
        self.horizontal, self.vertical = bool(horizontal), bool(vertical)
        self.p = _check_number(p, "p", "RandomFlip")
        if self.p > 1:
            raise ValueError(f"RandomFlip expected p in [0, 1], got {p}")

    def apply(self, x, rng):
        out = x.copy()
        for enabled, axis in ((self.horizontal, 3), (self.vertical, 2)):
            if enabled:
                chosen = rng.random(len(x)) < self.p
                out[chosen] = np.flip(out[chosen], axis=axis)
        return out


class RandomCrop(Transform):
    """Zero-pad by ``padding`` on every side, then cut a random ``size`` window from each sample.

    ``RandomCrop(32, padding=4)`` is the standard CIFAR augmentation. ``size`` is an
    int or ``(height, width)``; the output is ``(N, C, height, width)``.
    """

    def __init__(self, size, padding: int = 0):
        pair = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if len(pair) != 2 or not all(isinstance(s, numbers.Integral) for s in pair):
            raise TypeError(f"RandomCrop expected size as an int or a pair of ints, got {size!r}")
        if min(pair) < 1:
            raise ValueError(f"RandomCrop expected size >= 1, got {size!r}")
        if not isinstance(padding, numbers.Integral) or padding < 0:
            raise ValueError(f"RandomCrop expected padding as an int >= 0, got {padding!r}")
        self.size, self.padding = (int(pair[0]), int(pair[1])), int(padding)

    def apply(self, x, rng):
        pad = self.padding
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        height, width = self.size
        if height > padded.shape[2] or width > padded.shape[3]:
            raise ValueError(f"RandomCrop size {self.size} is larger than the padded input "
                             f"{padded.shape[2:]} (input shape {x.shape}, padding {pad})")
        top = rng.integers(0, padded.shape[2] - height + 1, size=len(x))
        left = rng.integers(0, padded.shape[3] - width + 1, size=len(x))
        return _gather_windows(padded, top, left, height, width)


class RandomShift(Transform):
    """Translate each sample by whole pixels, ``dy, dx`` uniform in ``[-max_shift, max_shift]``.

    Same size out; pixels shifted in from outside are 0. It is a :class:`RandomCrop`
    of the input's own size with ``padding=max_shift``.
    """

    def __init__(self, max_shift: int):
        if isinstance(max_shift, bool) or not isinstance(max_shift, numbers.Integral) or max_shift < 0:
            raise ValueError(f"RandomShift expected max_shift as an int >= 0, got {max_shift!r}")
        self.max_shift = int(max_shift)

    def apply(self, x, rng):
        return RandomCrop(x.shape[2:], padding=self.max_shift).apply(x, rng)


class RandomRotation(Transform):
    """Rotate each sample about its centre by an angle uniform in ``[-degrees, degrees]``.

    ``degrees`` may also be a range ``(low, high)``. Positive angles turn the image
    counter-clockwise as displayed (row 0 at the top), as torchvision. Bilinear
    interpolation (``scipy.ndimage.rotate``, order 1) mixes neighbouring pixels
    with non-negative weights summing to 1, so values stay within the input's range
    (corners rotated in from outside are 0).
    """

    def __init__(self, degrees):
        if isinstance(degrees, (tuple, list)):
            if len(degrees) != 2:
                raise ValueError(f"RandomRotation expected degrees as a number or (low, high), got {degrees!r}")
            low, high = (_check_number(d, "degrees", "RandomRotation", minimum=-360) for d in degrees)
            if low > high:
                raise ValueError(f"RandomRotation expected low <= high, got {degrees!r}")
        else:
            high = _check_number(degrees, "degrees", "RandomRotation")
            low = -high
        self.degrees = (low, high)

    def apply(self, x, rng):
        from scipy.ndimage import rotate  # SciPy comes with scikit-learn, a dependency

        angles = rng.uniform(*self.degrees, size=len(x))
        out = np.empty_like(x)
        for i, angle in enumerate(angles):
            # In the (row, column) plane SciPy turns positive angles counter-clockwise on screen
            # (a 90-degree turn equals np.rot90; the tests check it).
            out[i] = rotate(x[i], angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
        return out


class RandomNoise(Transform):
    """Add Gaussian noise ``N(0, stddev^2)`` to every value, then clip to ``clip`` (``None``: no clip)."""

    def __init__(self, stddev: float, clip=(0.0, 1.0)):
        self.stddev = _check_number(stddev, "stddev", "RandomNoise")
        if clip is not None and (len(clip) != 2 or clip[0] > clip[1]):
            raise ValueError(f"RandomNoise expected clip as (low, high) or None, got {clip!r}")
        self.clip = clip

    def apply(self, x, rng):
        out = x + rng.normal(0.0, self.stddev, size=x.shape).astype(x.dtype)
        return np.clip(out, *self.clip) if self.clip is not None else out


class Normalize(Transform):
    """``(x - mean[c]) / std[c]`` per channel; ``mean`` and ``std`` are numbers or one per channel.

    Deterministic, so it can follow the random transforms in a :class:`Compose`
    (MNIST's usual statistics are ``mean=0.1307, std=0.3081``).
    """

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1:
            raise ValueError(f"Normalize expected mean and std as numbers or 1-D sequences, got {mean!r}, {std!r}")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize expected std > 0, got {std!r}")

    def apply(self, x, rng):
        channels = x.shape[1]
        for what, values in (("means", self.mean), ("stds", self.std)):
            if values.size not in (1, channels):
                raise ValueError(f"Normalize has {values.size} channel {what} but the input has "
                                 f"{channels} channels (input shape {x.shape})")
        mean = self.mean.reshape(-1, 1, 1).astype(x.dtype)
        std = self.std.reshape(-1, 1, 1).astype(x.dtype)
        return (x - mean) / std
