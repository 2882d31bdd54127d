"""Weight initialisation, drawn from minicnn's seeded generator.

* He / Kaiming normal, ``std = sqrt(2 / fan_in)``, for ReLU-family layers: keeps
  the variance of activations constant through a ReLU (He et al., 2015).
* Glorot / Xavier uniform, ``limit = sqrt(6 / (fan_in + fan_out))``, otherwise:
  balances forward and backward variance for tanh/sigmoid/linear units.

Biases start at zero. For a conv weight ``(C_out, C_in, kh, kw)``:
``fan_in = C_in*kh*kw`` and ``fan_out = C_out*kh*kw``.
"""
from __future__ import annotations

import numpy as np

from .rng import get_rng

__all__ = ["he_normal", "glorot_uniform", "init_weight", "fans"]

_RELU_FAMILY = {"relu", "leaky_relu", "elu"}


def fans(shape) -> tuple[int, int]:
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def he_normal(shape, fan_in: int, dtype=np.float32) -> np.ndarray:
    return (get_rng().standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def glorot_uniform(shape, fan_in: int, fan_out: int, dtype=np.float32) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return get_rng().uniform(-limit, limit, size=shape).astype(dtype)


def init_weight(shape, activation, dtype=np.float32, fan_in=None, fan_out=None) -> np.ndarray:
    """He for the ReLU family, Glorot otherwise; fans default to ``fans(shape)``."""
    default_in, default_out = fans(shape)
    fan_in, fan_out = fan_in or default_in, fan_out or default_out
    if activation in _RELU_FAMILY:
        return he_normal(shape, fan_in, dtype)
    return glorot_uniform(shape, fan_in, fan_out, dtype)
