"""Stochastic regularisers, active in training only: dropout, spatial dropout, Gaussian noise.

All randomness is drawn with NumPy from :func:`minicnn.rng.get_rng` and then
moved to the input's device, so ``minicnn.seed(n)`` gives the same masks on the
CPU and the GPU. Each layer caches what it drew, so ``backward`` applies the very
mask the forward pass used. In evaluation (``training=False``) every layer here
is the identity.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..backend import backend_name, to_device
from ..rng import get_rng
from .base import Layer

__all__ = ["Dropout", "SpatialDropout2D", "GaussianNoise"]


class Dropout(Layer):
    """Inverted dropout: zero each unit with probability ``rate``, scale the rest.

    Forward, training (``m_i ~ Bernoulli(1 - rate)`` drawn afresh each call)::

        y_i = m_i * x_i / (1 - rate)

    The ``1 / (1 - rate)`` keeps ``E[y_i] = x_i``, so evaluation needs no
    rescaling and is the identity (unlike the original paper, which scaled the
    weights at test time). Any input shape; the mask has the input's shape.

    Backward: ``y`` is linear in ``x`` for a fixed mask, so
    ``dx_i = m_i * dy_i / (1 - rate)`` with the cached mask.

    Parameters
    ----------
    rate : float in [0, 1)
        Probability of dropping a unit.
    """

    def __init__(self, rate: float, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.rate = _probability(rate, self.name)

    def forward(self, x, training=False):
        x = self._prepare(x)
        if not training or self.rate == 0.0:
            self._cache_mask = None
            return x
        self._cache_mask = self._draw_mask(x)
        # x * mask is exactly x or 0, so kept units come out exactly x / (1 - rate).
        return x * self._cache_mask / (1.0 - self.rate)

    def backward(self, dy):
        if self._cache_mask is None:
            return dy
        return dy * self._cache_mask / (1.0 - self.rate)

    def _mask_shape(self, x_shape) -> tuple:
        return tuple(x_shape)

    def _draw_mask(self, x):
        """A boolean keep-mask (``True`` = kept) on the input's device."""
        # float32 uniforms halve the memory of float64 ones; P(u >= rate) = 1 - rate to ~1e-7.
        keep = get_rng().random(self._mask_shape(x.shape), dtype=np.float32) >= self.rate
        return to_device(keep, backend_name(x))


class SpatialDropout2D(Dropout):
    """Dropout of whole feature maps: each channel of each sample is kept or zeroed as a unit.

    For ``(N, C, H, W)`` inputs the mask has shape ``(N, C, 1, 1)`` and
    broadcasts over ``H, W``::

        y[n, c] = m[n, c] * x[n, c] / (1 - rate),   dx[n, c] = m[n, c] * dy[n, c] / (1 - rate)

    Neighbouring pixels of a feature map are strongly correlated, so dropping
    single pixels barely regularises a conv layer; dropping the whole map does
    (Tompson et al., 2015; Keras's ``SpatialDropout2D``, torch's ``Dropout2d``).
    """

    input_rank = 3

    def _mask_shape(self, x_shape) -> tuple:
        return tuple(x_shape[:2]) + (1, 1)


class GaussianNoise(Layer):
    """Additive zero-mean Gaussian noise in training: ``y = x + e``, ``e ~ N(0, stddev^2)``.

    The noise does not depend on ``x``, so ``dx = dy``. Identity in evaluation.
    Used to corrupt the input of a denoising autoencoder; any input shape.

    Parameters
    ----------
    stddev : float >= 0
        Standard deviation of the noise.
    """

    def __init__(self, stddev: float, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.stddev = _real(stddev, "stddev", self.name)
        if not 0.0 <= self.stddev < np.inf:
            raise ValueError(f"{self.name} expected a finite stddev >= 0, got {stddev}")

    def forward(self, x, training=False):
        x = self._prepare(x)
        if not training or self.stddev == 0.0:
            return x
        draw_dtype = np.float64 if self.dtype == np.float64 else np.float32
        noise = get_rng().standard_normal(x.shape, dtype=draw_dtype) * self.stddev
        return x + to_device(noise.astype(self.dtype, copy=False), backend_name(x))

    def backward(self, dy):
        return dy


def _probability(rate, owner: str) -> float:
    rate = _real(rate, "rate", owner)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{owner} expected rate in [0, 1), got {rate}")
    return rate


def _real(value, what: str, owner: str) -> float:
    """``value`` as a float, or a TypeError naming the layer for non-numbers (and bools)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner} expected {what} as a real number, got {value!r}")
    return float(value)
