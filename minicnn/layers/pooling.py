"""Pooling and upsampling: windowed max and mean, their global forms, nearest upsampling.

None of these layers has parameters; each one's backward only routes the
upstream gradient back onto the input grid:

* max   — the whole gradient of a window goes to the pixel that won it
          (the argmax cached by forward); pixels that won several overlapping
          windows receive the sum;
* mean  — each window's gradient is spread evenly, ``dy / (kh*kw)``, over it;
* nearest upsampling — every output pixel is a copy of one input pixel, so
          each input pixel receives the sum of the gradients of its copies.

The windowed loops live in ``minicnn.kernels`` (Numba on the CPU, CUDA on the
GPU); the global pools and upsampling are plain array reductions and reshapes.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_array_module
from .base import Layer
from .shapes import as_pair, conv_output_size, same_padding

__all__ = ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "UpSampling2D"]


class _Pool2D(Layer):
    """Window geometry shared by ``MaxPool2D`` and ``AvgPool2D``.

    ``pool_size`` and ``stride`` are an int or a pair ``(along H, along W)``;
    ``stride=None`` means ``stride = pool_size`` (non-overlapping windows).
    ``padding`` is an int or a pair. As in torch, each side's padding may be at
    most half the window (a wider pad would create windows of padding only).
    """

    input_rank = 3
    _string_paddings: tuple = ("valid",)

    def __init__(self, pool_size=2, stride=None, padding=0, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.pool_size = as_pair(pool_size, "pool_size", self.name)
        self.stride = self.pool_size if stride is None else as_pair(stride, "stride", self.name)
        if isinstance(padding, str):
            if padding not in self._string_paddings:
                allowed = " or ".join(repr(p) for p in self._string_paddings)
                raise ValueError(f"{self.name} expected padding {allowed}, an int or a pair, got {padding!r}")
            self.padding = padding
        else:
            self.padding = as_pair(padding, "padding", self.name, minimum=0)
            for pad, size in zip(self.padding, self.pool_size):
                if 2 * pad > size:  # torch's rule: "pad should be at most half of kernel size"
                    raise ValueError(f"{self.name} expected padding at most half the pool size "
                                     f"{self.pool_size}, got padding {self.padding}")

    def _pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` for an input of ``height x width``, checking the pool fits."""
        (kh, kw), (sh, sw) = self.pool_size, self.stride
        if self.padding == "valid":
            pads = (0, 0, 0, 0)
        elif self.padding == "same":
            pads = same_padding(height, kh, sh) + same_padding(width, kw, sw)
        else:
            (ph, pw) = self.padding
            pads = (ph, ph, pw, pw)
        top, bottom, left, right = pads
        if height + top + bottom < kh or width + left + right < kw:
            raise ValueError(
                f"{self.name} pool {kh}x{kw} is larger than the padded input "
                f"{height + top + bottom}x{width + left + right} (input {height}x{width}, padding {pads})"
            )
        return pads

    def build(self, input_shape) -> None:
        super().build(input_shape)
        self._pads(*self.input_shape[1:])  # fail at build time, not on the first batch

    def output_shape(self, input_shape) -> tuple:
        c, h, w = input_shape
        top, bottom, left, right = self._pads(h, w)
        return (c, conv_output_size(h, self.pool_size[0], self.stride[0], top + bottom),
                conv_output_size(w, self.pool_size[1], self.stride[1], left + right))


class MaxPool2D(_Pool2D):
    """Max pooling, ``y[n, c, i, j] = max_{p, q} x_pad[n, c, i*sh + p, j*sw + q]``.

    Shapes: ``(N, C, H, W) -> (N, C, Ho, Wo)`` with
    ``Ho = floor((H + pad_top + pad_bottom - kh) / sh) + 1`` (likewise ``Wo``).
    Padded cells are ``-inf``: they never win, as in torch's ``MaxPool2d``.
    ``padding='same'`` (Keras) pads to ``ceil(H / sh)`` outputs.

    Backward: ``y`` is a selection, ``y[n,c,i,j] = x[n,c,a(i,j)]`` with ``a`` the
    winning pixel (ties go to the first in row-major order, as torch), so
    ``dx[n,c,a] = sum over windows won by a of dy[n,c,i,j]``; 0 elsewhere.
    """

    _string_paddings = ("valid", "same")

    def forward(self, x, training=False):
        x = self._prepare(x)
        pads = self._pads(*x.shape[2:])
        y, argmax = kernels.maxpool_forward(x, self.pool_size, self.stride, pads)
        self._cache_argmax, self._cache_x_shape, self._cache_y_shape = argmax, x.shape, y.shape
        return y

    def backward(self, dy):
        self._check_dy(dy, getattr(self, "_cache_y_shape", None))
        return kernels.maxpool_backward(dy, self._cache_argmax, self._cache_x_shape)


class AvgPool2D(_Pool2D):
    """Average pooling, ``y[n, c, i, j] = (1 / (kh*kw)) sum_{p, q} x_pad[n, c, i*sh + p, j*sw + q]``.

    Shapes as ``MaxPool2D``. Padded cells count as zeros and the divisor is
    always ``kh*kw`` (torch's default ``count_include_pad=True``). For that
    reason ``padding='same'`` is refused: Keras averages over the real cells
    only, and silently dividing by a different count would be a wrong answer.

    Backward: ``y`` is linear in ``x`` with coefficient ``1 / (kh*kw)`` for every
    pixel of the window, so ``dx[n,c,h,w] = sum over windows containing (h, w)
    of dy[n,c,i,j] / (kh*kw)``.
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        pads = self._pads(*x.shape[2:])
        y = kernels.avgpool_forward(x, self.pool_size, self.stride, pads)
        self._cache_x_shape, self._cache_pads, self._cache_y_shape = x.shape, pads, y.shape
        return y

    def backward(self, dy):
        self._check_dy(dy, getattr(self, "_cache_y_shape", None))
        return kernels.avgpool_backward(dy, self._cache_x_shape, self.pool_size, self.stride,
                                        self._cache_pads)


class GlobalAvgPool2D(Layer):
    """Mean over each feature map, ``y[n, c] = (1 / (H*W)) sum_{h, w} x[n, c, h, w]``.

    Shapes: ``(N, C, H, W) -> (N, C)``, so a ``Dense`` can follow directly.
    Backward: every pixel carries weight ``1 / (H*W)``, so
    ``dx[n, c, h, w] = dy[n, c] / (H*W)``.
    """

    input_rank = 3

    def output_shape(self, input_shape) -> tuple:
        return (input_shape[0],)

    def forward(self, x, training=False):
        x = self._prepare(x)
        self._cache_x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        xp = get_array_module(dy)
        n, c, h, w = self._cache_x_shape
        dx = xp.empty(self._cache_x_shape, dtype=dy.dtype)
        dx[...] = (dy / (h * w))[:, :, None, None]
        return dx


class GlobalMaxPool2D(Layer):
    """Max over each feature map, ``y[n, c] = max_{h, w} x[n, c, h, w]``.

    Shapes: ``(N, C, H, W) -> (N, C)``.
    Backward: the whole ``dy[n, c]`` goes to the winning pixel of map ``(n, c)``
    (ties to the first in row-major order, like ``MaxPool2D``); 0 elsewhere.
    """

    input_rank = 3

    def output_shape(self, input_shape) -> tuple:
        return (input_shape[0],)

    def forward(self, x, training=False):
        x = self._prepare(x)
        n, c, h, w = x.shape
        planes = x.reshape(n * c, h * w)
        self._cache_argmax = planes.argmax(axis=1)
        self._cache_x_shape = x.shape
        return planes.max(axis=1).reshape(n, c)

    def backward(self, dy):
        xp = get_array_module(dy)
        n, c, h, w = self._cache_x_shape
        dx = xp.zeros((n * c, h * w), dtype=dy.dtype)
        # Fancy-index assignment rather than put_along_axis: the same line runs on NumPy and CuPy.
        dx[xp.arange(n * c), self._cache_argmax] = dy.reshape(-1)
        return dx.reshape(self._cache_x_shape)


class UpSampling2D(Layer):
    """Nearest-neighbour upsampling by integer factors ``size = (sh, sw)``.

    ``y[n, c, i, j] = x[n, c, i // sh, j // sw]``; shapes ``(N, C, H, W) -> (N, C, H*sh, W*sw)``
    (torch ``nn.Upsample(scale_factor=size, mode='nearest')``, Keras ``UpSampling2D``).

    Viewing ``y`` as ``(N, C, H, sh, W, sw)``, every ``(p, q)`` slot of block
    ``(h, w)`` is a copy of ``x[n, c, h, w]``; backward therefore sums each block:
    ``dx[n, c, h, w] = sum_{p, q} dy[n, c, h*sh + p, w*sw + q]``.
    """

    input_rank = 3

    def __init__(self, size=2, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.size = as_pair(size, "size", self.name)

    def output_shape(self, input_shape) -> tuple:
        c, h, w = input_shape
        return (c, h * self.size[0], w * self.size[1])

    def forward(self, x, training=False):
        x = self._prepare(x)
        xp = get_array_module(x)
        n, c, h, w = x.shape
        (sh, sw) = self.size
        self._cache_x_shape = x.shape
        blocks = xp.broadcast_to(x[:, :, :, None, :, None], (n, c, h, sh, w, sw))
        return blocks.reshape(n, c, h * sh, w * sw)  # reshape of a broadcast copies: y owns its data

    def backward(self, dy):
        x_shape = getattr(self, "_cache_x_shape", None)
        (sh, sw) = self.size
        self._check_dy(dy, None if x_shape is None else (*x_shape[:2], x_shape[2] * sh, x_shape[3] * sw))
        n, c, h, w = x_shape
        return dy.reshape(n, c, h, sh, w, sw).sum(axis=(3, 5))
