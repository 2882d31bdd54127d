"""Element-wise activations and softmax.

Each activation caches the one array its derivative needs — the input for ReLU,
LeakyReLU and ELU, the *output* for sigmoid, tanh and softmax, whose derivatives
are cheapest written in terms of the output:

    sigmoid' = y (1 - y)        tanh' = 1 - y^2        ELU'(x<0) = y + alpha

Layers that take ``activation=`` hold one of these as ``self.activation``
(``Identity`` for ``None``) and call it after their linear part.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_array_module
from .base import Layer

__all__ = ["Identity", "ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh", "Softmax",
           "get_activation", "ACTIVATIONS"]


class Identity(Layer):
    """``y = x``; the activation of a layer built with ``activation=None``."""

    def forward(self, x, training=False):
        return self._prepare(x)

    def backward(self, dy):
        return dy


class ReLU(Layer):
    """``y = max(x, 0)``; ``dx = dy`` where ``x > 0``, else 0 (the subgradient at 0 is taken
    as 0, as torch). Backward needs only the output: ``y > 0`` exactly where ``x > 0``."""

    def forward(self, x, training=False):
        self._cache_y = kernels.relu_forward(self._prepare(x))
        return self._cache_y

    def backward(self, dy):
        y = getattr(self, "_cache_y", None)
        self._check_dy(dy, None if y is None else y.shape)
        return kernels.relu_backward(dy, y)


class LeakyReLU(Layer):
    """``y = x`` for ``x > 0``, ``alpha * x`` otherwise; ``dx = dy * (1 or alpha)``."""

    def __init__(self, alpha: float = 0.01, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        if alpha < 0:
            raise ValueError(f"LeakyReLU expected alpha >= 0, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x, training=False):
        x = self._prepare(x)
        xp = get_array_module(x)
        self._cache_mask = x > 0
        return xp.where(self._cache_mask, x, self.alpha * x)

    def backward(self, dy):
        xp = get_array_module(dy)
        return xp.where(self._cache_mask, dy, self.alpha * dy)


class ELU(Layer):
    """``y = x`` for ``x > 0``, ``alpha (e^x - 1)`` otherwise.

    For ``x <= 0``: ``dy/dx = alpha e^x = y + alpha``, so only the output is needed.
    """

    def __init__(self, alpha: float = 1.0, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        if alpha <= 0:
            raise ValueError(f"ELU expected alpha > 0, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x, training=False):
        x = self._prepare(x)
        xp = get_array_module(x)
        self._cache_mask = x > 0
        # expm1 on min(x, 0) avoids overflow warnings from large positive x.
        y = xp.where(self._cache_mask, x, self.alpha * xp.expm1(xp.minimum(x, 0)))
        self._cache_y = y
        return y

    def backward(self, dy):
        xp = get_array_module(dy)
        return xp.where(self._cache_mask, dy, dy * (self._cache_y + self.alpha))


class Sigmoid(Layer):
    """``y = 1 / (1 + e^-x)``; ``dx = dy * y (1 - y)``.

    Evaluated as ``e^x / (1 + e^x)`` for negative ``x`` so ``e^-x`` never overflows.
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        self._cache_y = sigmoid(x)
        return self._cache_y

    def backward(self, dy):
        y = self._cache_y
        return dy * y * (1 - y)


class Tanh(Layer):
    """``y = tanh(x)``; ``dx = dy * (1 - y^2)``."""

    def forward(self, x, training=False):
        x = self._prepare(x)
        self._cache_y = get_array_module(x).tanh(x)
        return self._cache_y

    def backward(self, dy):
        return dy * (1 - self._cache_y ** 2)


class Softmax(Layer):
    """``y_i = e^{x_i} / sum_j e^{x_j}`` along ``axis``.

    Backward (Jacobian-vector product): ``dx_i = y_i (dy_i - sum_j dy_j y_j)``.
    The max is subtracted before exponentiating, which changes nothing
    mathematically and keeps ``e^x`` finite.

    For classification train on logits with ``CrossEntropy``, which fuses
    log-softmax and is more accurate than ``Softmax`` followed by a log.
    """

    def __init__(self, axis: int = 1, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.axis = int(axis)

    def forward(self, x, training=False):
        x = self._prepare(x)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{self.name} axis {self.axis} is out of range for input shape {tuple(x.shape)}")
        self._cache_y = softmax(x, self.axis)
        return self._cache_y

    def backward(self, dy):
        y = self._cache_y
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))


def sigmoid(x):
    """Numerically stable logistic function."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softmax(x, axis: int = 1):
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


ACTIVATIONS = {
    None: Identity,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "elu": ELU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "softmax": Softmax,
}


def get_activation(name, owner: str, dtype=np.float32) -> Layer:
    """The activation layer for ``name`` (``None`` gives ``Identity``)."""
    if name not in ACTIVATIONS:
        known = ", ".join(repr(k) for k in ACTIVATIONS)
        raise ValueError(f"{owner} got unknown activation {name!r}; expected one of {known}")
    return ACTIVATIONS[name](dtype=dtype, name=f"{owner}.activation")
