"""Batch normalisation (Ioffe & Szegedy, 2015) with PyTorch's semantics.

Each channel ``c`` is normalised over the ``M`` values it takes in a batch —
the batch axis for ``(N, C)`` inputs, the batch and both spatial axes for
``(N, C, H, W)`` inputs (so ``M = N`` or ``M = N·H·W``) — then scaled and shifted:

    mu    = sum(x) / M                      sigma^2 = sum((x - mu)^2) / M   (biased)
    x_hat = (x - mu) / sqrt(sigma^2 + eps)  y       = gamma * x_hat + beta

In training the batch statistics are used and the running statistics follow
them, ``running = (1 - momentum) * running + momentum * batch``, where the
running variance takes the *unbiased* batch variance ``sigma^2 * M / (M - 1)``
(both are PyTorch's conventions). In evaluation the running statistics stand
in for ``mu`` and ``sigma^2``, and the layer is a fixed per-channel affine map.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..backend import get_array_module
from .base import Layer

__all__ = ["BatchNorm1D", "BatchNorm2D"]


class _BatchNorm(Layer):
    """The maths shared by ``BatchNorm1D`` and ``BatchNorm2D``.

    Subclasses only say which axes hold the ``M`` values of one channel
    (``reduce_axes``) and the rank of one sample (``input_rank``).

    Parameters
    ----------
    momentum : float in [0, 1]
        Weight of the current batch in the running statistics (PyTorch's
        convention; Keras's ``momentum`` is ``1 -`` this).
    eps : float > 0
        Added to the variance before the square root.

    Params ``weight`` (gamma, ones) and ``bias`` (beta, zeros), buffers
    ``running_mean`` (zeros) and ``running_var`` (ones), all of shape ``(C,)``.

    Backward
    --------
    Write ``s = sqrt(sigma^2 + eps)`` and sum over the ``M`` values of a channel.
    The parameter gradients are direct: ``d_gamma = sum(dy * x_hat)``,
    ``d_beta = sum(dy)``. For the input, ``mu`` and ``s`` depend on every ``x_i``:

        d mu / d x_i      = 1 / M
        d s / d x_i       = (x_i - mu) / (M s) = x_hat_i / M
        d x_hat_j / d x_i = (delta_ij - 1/M) / s - x_hat_j x_hat_i / (M s)

    so with ``d x_hat = gamma * dy``,

        dx_i = sum_j d x_hat_j * d x_hat_j / d x_i
             = (gamma / s) / M * (M dy_i - sum(dy) - x_hat_i * sum(dy * x_hat)),

    one fused expression that needs only the cached ``x_hat`` and ``1 / s``.
    In evaluation ``mu`` and ``s`` are constants, so ``dx = gamma / s * dy``.
    """

    reduce_axes: tuple = ()

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.momentum = _real(momentum, "momentum", self.name)
        self.eps = _real(eps, "eps", self.name)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"{self.name} expected momentum in [0, 1], got {momentum}")
        if not self.eps > 0.0:
            raise ValueError(f"{self.name} expected eps > 0, got {eps}")

    def build(self, input_shape) -> None:
        super().build(input_shape)
        channels = self.input_shape[0]
        self.add_param("weight", np.ones(channels))
        self.add_param("bias", np.zeros(channels))
        self.add_buffer("running_mean", np.zeros(channels))
        self.add_buffer("running_var", np.ones(channels))

    def forward(self, x, training=False):
        x = self._prepare(x)
        self._expect_input(x, "input channels", 1, self.input_shape[0])
        xp = get_array_module(x)
        per_channel = (1, -1) + (1,) * (x.ndim - 2)  # broadcasts a (C,) vector against x
        if training:
            count = x.size // x.shape[1]
            if count < 2:
                raise ValueError(f"{self.name} expected more than 1 value per channel when training, "
                                 f"got input shape {tuple(x.shape)}")
            mean = x.mean(axis=self.reduce_axes)
            centered = x - mean.reshape(per_channel)
            var = (centered * centered).mean(axis=self.reduce_axes)  # biased: divides by M
            self._update_running(mean, var * (count / (count - 1)))
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            centered = x - mean.reshape(per_channel)
        inv_std = (1.0 / xp.sqrt(var + self.eps)).reshape(per_channel)
        x_hat = centered * inv_std
        self._cache_x_hat, self._cache_inv_std, self._cache_training = x_hat, inv_std, training
        return self.params["weight"].reshape(per_channel) * x_hat + self.params["bias"].reshape(per_channel)

    def backward(self, dy):
        x_hat, inv_std = self._cache_x_hat, self._cache_inv_std
        dy = dy.astype(self.dtype, copy=False)
        sum_dy = dy.sum(axis=self.reduce_axes, keepdims=True)
        sum_dy_x_hat = (dy * x_hat).sum(axis=self.reduce_axes, keepdims=True)
        self.grads["weight"][...] = sum_dy_x_hat.reshape(-1)
        self.grads["bias"][...] = sum_dy.reshape(-1)
        scale = self.params["weight"].reshape(inv_std.shape) * inv_std  # gamma / s
        if not self._cache_training:
            return scale * dy
        count = dy.size // dy.shape[1]
        return (scale / count) * (count * dy - sum_dy - x_hat * sum_dy_x_hat)

    def _update_running(self, mean, unbiased_var) -> None:
        # In place, so the arrays in state_dict()/named_buffers() stay the live ones.
        for key, batch_value in (("running_mean", mean), ("running_var", unbiased_var)):
            running = self.buffers[key]
            running[...] = (1 - self.momentum) * running + self.momentum * batch_value


class BatchNorm1D(_BatchNorm):
    """Batch norm for ``(N, C)`` inputs: statistics over the batch axis (``M = N``).

    Matches ``torch.nn.BatchNorm1d(C)``; see ``_BatchNorm`` for the maths.
    """

    input_rank = 1
    reduce_axes = (0,)


class BatchNorm2D(_BatchNorm):
    """Batch norm for ``(N, C, H, W)`` inputs: statistics per channel over
    batch, height and width (``M = N·H·W``), as ``torch.nn.BatchNorm2d(C)``.

    See ``_BatchNorm`` for the maths.
    """

    input_rank = 3
    reduce_axes = (0, 2, 3)


def _real(value, what: str, owner: str) -> float:
    """``value`` as a float, or a TypeError naming the layer for non-numbers (and bools)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner} expected {what} as a real number, got {value!r}")
    return float(value)
