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

from .. import kernels
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

    one fused expression that needs only ``x_hat`` and ``1 / s``. Forward keeps ``x``, ``mu``
    and ``1 / s`` and backward recomputes ``x_hat`` from them (as torch does): cheaper than
    writing and keeping an input-sized ``x_hat``.
    In evaluation ``mu`` and ``s`` are constants, so ``dx = gamma / s * dy``.

    Training runs ``kernels.batchnorm_forward`` / ``batchnorm_backward`` (these
    formulas; on the CPU fused into two passes over memory per channel, float64 sums);
    ``kernels.reference`` has them in plain NumPy. In evaluation the affine map is
    folded into ``y = x * scale + shift`` with ``scale = gamma / s`` and
    ``shift = beta - mu * scale``.
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
        gamma, beta = self.params["weight"], self.params["bias"]
        per_channel = (1, -1) + (1,) * (x.ndim - 2)  # broadcasts a (C,) vector against x
        self._cache_training = training
        if training:
            count = x.size // x.shape[1]
            if count < 2:
                raise ValueError(f"{self.name} expected more than 1 value per channel when training, "
                                 f"got input shape {tuple(x.shape)}")
            # mean, biased var and y = gamma * (x - mean) * inv_std + beta, fused on the CPU into
            # one read of x for the statistics and one for y (kernels.batchnorm_forward).
            y, mean, var, inv_std = kernels.batchnorm_forward(x, gamma, beta, self.eps)
            self._update_running(mean, var * (count / (count - 1)))
            self._cache_x, self._cache_mean, self._cache_inv_std = x, mean, inv_std
            return y
        # Evaluation: a fixed affine map, folded into one multiply-add, y = x * scale + shift.
        inv_std = 1.0 / xp.sqrt(self.buffers["running_var"] + self.eps)
        scale = gamma * inv_std
        shift = beta - self.buffers["running_mean"] * scale
        self._cache_x, self._cache_mean, self._cache_inv_std = x, self.buffers["running_mean"].copy(), inv_std
        y = x * scale.reshape(per_channel)
        y += shift.reshape(per_channel)
        return y

    def backward(self, dy):
        dy = dy.astype(self.dtype, copy=False)
        gamma, inv_std = self.params["weight"], self._cache_inv_std
        if self._cache_training:
            dx, dgamma, dbeta = kernels.batchnorm_backward(dy, self._cache_x, self._cache_mean, gamma, inv_std)
        else:  # mu and s are constants: dx = gamma / s * dy
            per_channel = (1, -1) + (1,) * (dy.ndim - 2)
            x_hat = (self._cache_x - self._cache_mean.reshape(per_channel)) * inv_std.reshape(per_channel)
            dgamma, dbeta = (dy * x_hat).sum(axis=self.reduce_axes), dy.sum(axis=self.reduce_axes)
            dx = (gamma * inv_std).reshape(per_channel) * dy
        self.grads["weight"][...] = dgamma
        self.grads["bias"][...] = dbeta
        return dx

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
