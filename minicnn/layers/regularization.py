"""Activity regularisation: a penalty on a layer's *outputs* rather than its weights.

Placed after a code layer it pushes activations towards zero — with ``l1`` it
makes them sparse, which is what turns an autoencoder into a sparse autoencoder.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..backend import get_array_module
from .base import Layer

__all__ = ["ActivityRegularization"]


class ActivityRegularization(Layer):
    """Identity in the forward pass that adds ``l1·|x|`` and ``l2·x²`` penalties to the loss.

    In training, for a batch of ``N`` samples, the layer records::

        penalty = (l1 * sum(|x|) + l2 * sum(x^2)) / N

    and ``regularization_loss()`` returns it (``model.regularization_loss()``
    sums it over layers). The division by the batch size follows Keras: the
    data loss is a mean over the batch, so the penalty is too, and its weight
    does not change with the batch size. Evaluation records no penalty
    (``regularization_loss()`` is 0.0 after an evaluation forward or before
    any forward).

    Backward: the total loss is ``L = data_loss(y) + penalty(x)`` with ``y = x``, so

        dx = dy + (l1 * sign(x) + 2 * l2 * x) / N

    (the subgradient of ``|x|`` at 0 is taken as 0, as ``torch.sign`` does).

    Parameters
    ----------
    l1, l2 : float >= 0
        Weights of the L1 and squared-L2 penalties.
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.l1 = _non_negative(l1, "l1", self.name)
        self.l2 = _non_negative(l2, "l2", self.name)
        self._penalty = 0.0  # not a _cache_* attribute: moving devices must not erase it

    def forward(self, x, training=False):
        x = self._prepare(x)
        active = training and (self.l1 > 0.0 or self.l2 > 0.0)
        self._cache_x = x if active else None
        self._penalty = 0.0
        if active:
            xp = get_array_module(x)
            self._penalty = float(self.l1 * xp.abs(x).sum() + self.l2 * (x * x).sum()) / x.shape[0]
        return x

    def backward(self, dy):
        x = self._cache_x
        if x is None:
            return dy
        xp = get_array_module(x)
        return dy + (self.l1 * xp.sign(x) + (2.0 * self.l2) * x) / x.shape[0]

    def regularization_loss(self) -> float:
        """The penalty of the last training forward (0.0 before one, or after an evaluation forward)."""
        return self._penalty


def _non_negative(value, what: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner} expected {what} as a real number, got {value!r}")
    if not 0.0 <= float(value) < np.inf:
        raise ValueError(f"{owner} expected a finite {what} >= 0, got {value}")
    return float(value)
