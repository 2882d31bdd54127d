"""Layers that change only the shape of each sample: ``Flatten`` and ``Reshape``.

A reshape moves no values, so the backward pass is the inverse reshape of the
upstream gradient: ``dx = dy.reshape(x.shape)``. Both keep the batch axis.
"""
from __future__ import annotations

import numpy as np

from .base import Layer

__all__ = ["Flatten", "Reshape"]


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)`` in row-major (C) order, as torch ``nn.Flatten``.

    Backward: ``dx = dy.reshape(N, d1, d2, ...)``.
    """

    def output_shape(self, input_shape) -> tuple:
        return (int(np.prod(input_shape, dtype=np.int64)),)

    def forward(self, x, training=False):
        x = self._prepare(x)
        self._cache_x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return _reshape_back(self, dy)


class Reshape(Layer):
    """Reshape each sample to ``shape``: ``(N, *in_shape) -> (N, *shape)``, C order.

    ``shape`` excludes the batch axis (as Keras) and may hold one ``-1``, which is
    inferred from the per-sample size, e.g. ``Reshape((1, 28, 28))`` after a
    784-unit ``Dense`` or ``Reshape((-1,))`` to flatten.

    Backward: ``dx = dy.reshape(N, *in_shape)``.
    """

    def __init__(self, shape, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else shape
        if (not isinstance(shape, (tuple, list)) or len(shape) == 0
                or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape)):
            raise TypeError(f"{self.name} expected shape as a non-empty tuple of ints "
                            f"(per sample, without the batch axis), got {shape!r}")
        if any(s <= 0 and s != -1 for s in shape) or list(shape).count(-1) > 1:
            raise ValueError(f"{self.name} expected positive sizes and at most one -1 in shape, got {tuple(shape)}")
        self.target_shape = tuple(int(s) for s in shape)

    def build(self, input_shape) -> None:
        super().build(input_shape)
        self.output_shape(self.input_shape)  # a size mismatch fails at build time

    def output_shape(self, input_shape) -> tuple:
        size = int(np.prod(input_shape, dtype=np.int64))
        known = int(np.prod([s for s in self.target_shape if s != -1], dtype=np.int64))
        if -1 in self.target_shape:
            fits = size % known == 0
            shape = tuple(size // known if s == -1 else s for s in self.target_shape)
        else:
            fits, shape = size == known, self.target_shape
        if not fits:
            raise ValueError(f"{self.name} cannot reshape a sample of shape {tuple(input_shape)} "
                             f"({size} values) to {self.target_shape}")
        return shape

    def forward(self, x, training=False):
        x = self._prepare(x)
        self._cache_x_shape = x.shape
        return x.reshape((x.shape[0],) + self.output_shape(x.shape[1:]))

    def backward(self, dy):
        return _reshape_back(self, dy)


def _reshape_back(layer, dy):
    """``dy`` reshaped to the input shape of ``layer``'s last forward, with a clear error."""
    x_shape = layer._cache_x_shape
    if dy.size != int(np.prod(x_shape)) or dy.shape[0] != x_shape[0]:
        raise ValueError(f"{layer.name}.backward expected dy with the batch size and number of values "
                         f"of its last output (input shape {tuple(x_shape)}), got {tuple(dy.shape)}")
    return dy.reshape(x_shape)
