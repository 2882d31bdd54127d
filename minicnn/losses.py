"""Loss functions: a scalar for the batch and its gradient w.r.t. the predictions.

A loss works like a layer with nothing to train:

    value = loss.forward(pred, target)   # a Python float; caches what backward needs
    dpred = loss.backward()              # dL/dpred, same shape and dtype as pred

Every loss takes the *mean* (PyTorch's ``reduction='mean'``): ``CrossEntropy``
over the batch, the others over all elements. That ``1/N`` is part of the
gradient, so a model's parameter gradients do not grow with the batch size.

The numerics follow PyTorch, which the tests use as the oracle:

* ``CrossEntropy`` takes raw logits and fuses log-softmax into the loss with the
  log-sum-exp trick, so logits of ±1000 give finite, exact values where
  ``log(softmax(x))`` would give ``log(0) = -inf``.
* ``BinaryCrossEntropy(from_logits=True)`` uses the stable form
  ``max(x, 0) - x t + log(1 + e^-|x|)``; on probabilities it clamps each log at
  -100 as ``torch.nn.BCELoss`` does, so ``p = 0`` or ``1`` stays finite.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import backend
from .backend import get_array_module
from .layers.activations import sigmoid

__all__ = ["Loss", "CrossEntropy", "BinaryCrossEntropy", "MSE", "MAE", "get_loss", "LOSSES"]


class Loss:
    """Base class: input checks, ``__call__`` and the forward-before-backward rule.

    Subclasses implement ``forward(pred, target) -> float`` (caching in
    ``self._cache_*``) and ``backward() -> dpred``.
    """

    def __init__(self):
        self.name = type(self).__name__
        self._cache_pred = None

    def forward(self, pred, target) -> float:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, pred, target) -> float:
        return self.forward(pred, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ helpers for subclasses
    def _check_pred(self, pred):
        """``pred`` must be a non-empty floating array (NumPy or CuPy)."""
        if not hasattr(pred, "shape") or not hasattr(pred, "dtype"):
            raise TypeError(f"{self.name} expected predictions as a numpy or cupy array, "
                            f"got {type(pred).__name__}")
        if pred.dtype.kind != "f":
            raise TypeError(f"{self.name} expected floating-point predictions, got dtype {pred.dtype}")
        if pred.ndim == 0 or pred.shape[0] == 0:
            raise ValueError(f"{self.name} received an empty batch (pred shape {tuple(pred.shape)})")
        return pred

    def _as_target(self, pred, target):
        """``target`` as an array on ``pred``'s device (lists and NumPy labels welcome)."""
        if not hasattr(target, "shape"):
            target = np.asarray(target)
        return backend.to_device(target, backend.backend_name(pred))

    def _same_shape(self, pred, target):
        if tuple(target.shape) != tuple(pred.shape):
            raise ValueError(f"{self.name} expected target of the same shape as pred {tuple(pred.shape)}, "
                             f"got {tuple(target.shape)}")

    def _float_target(self, pred, target):
        """An element-wise target: same shape as ``pred``, cast to its dtype."""
        target = self._as_target(pred, target)
        self._same_shape(pred, target)
        if target.dtype.kind not in "biuf":
            raise TypeError(f"{self.name} expected a numeric target, got dtype {target.dtype}")
        return target.astype(pred.dtype, copy=False)

    def _require_forward(self):
        if self._cache_pred is None:
            raise RuntimeError(f"{self.name}.backward() called before forward(pred, target)")


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits, averaged over the batch.

    With logits ``x`` of shape ``(N, C)`` and a target distribution ``q`` per row::

        log p_ic = x_ic - log sum_k e^{x_ik}                (log-softmax)
        L        = -(1/N) sum_i sum_c q_ic log p_ic

    ``target`` is either class indices ``(N,)`` in ``[0, C)`` (then ``q`` is one-hot)
    or a distribution ``(N, C)`` such as one-hot rows or soft labels. Label
    smoothing ``eps`` mixes in the uniform distribution, as ``torch.nn.CrossEntropyLoss``::

        q_smoothed = (1 - eps) q + eps / C

    The log-sum-exp subtracts the row maximum ``m_i`` first,
    ``log sum_k e^{x_ik} = m_i + log sum_k e^{x_ik - m_i}``, so no exponent is
    ever above 0 and extreme logits neither overflow nor produce ``log(0)``.

    Backward: ``d/dx_ic [-sum_k q_ik log p_ik] = p_ic sum_k q_ik - q_ic``, because
    ``d log p_ik / dx_ic = [k = c] - p_ic``. For rows of ``q`` that sum to 1
    this is the familiar ``dL/dx = (softmax(x) - q) / N``.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
            raise TypeError(f"CrossEntropy expected a number for label_smoothing, got {label_smoothing!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropy expected label_smoothing in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, pred, target) -> float:
        pred = self._check_pred(pred)
        if pred.ndim != 2:
            raise ValueError(f"CrossEntropy expected logits of shape (N, C), got shape {tuple(pred.shape)}")
        xp = get_array_module(pred)
        q = self._target_distribution(pred, target)
        shifted = pred - pred.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self._cache_pred = pred
        self._cache_probs = xp.exp(log_probs)
        self._cache_q = q
        return float(-(q * log_probs).sum() / pred.shape[0])

    def backward(self):
        self._require_forward()
        probs, q = self._cache_probs, self._cache_q
        return (probs * q.sum(axis=1, keepdims=True) - q) / probs.shape[0]

    def __repr__(self) -> str:
        return f"CrossEntropy(label_smoothing={self.label_smoothing})"

    def _target_distribution(self, pred, target):
        """The smoothed target distribution ``q`` of shape ``(N, C)`` in ``pred``'s dtype."""
        xp = get_array_module(pred)
        n, num_classes = pred.shape
        target = self._as_target(pred, target)
        if target.ndim == 1:
            labels = self._check_labels(target, n, num_classes)
            q = xp.zeros(pred.shape, dtype=pred.dtype)
            q[xp.arange(n), labels] = 1
        elif target.ndim == 2:
            self._same_shape(pred, target)
            if target.dtype.kind not in "biuf":
                raise TypeError(f"CrossEntropy expected a numeric target, got dtype {target.dtype}")
            q = target.astype(pred.dtype)
        else:
            raise ValueError(f"CrossEntropy expected class indices (N,) = ({n},) or probabilities "
                             f"(N, C) = {tuple(pred.shape)}, got target shape {tuple(target.shape)}")
        if self.label_smoothing:
            q = (1 - self.label_smoothing) * q + self.label_smoothing / num_classes
        return q

    def _check_labels(self, target, n, num_classes):
        """Class indices as int64, checked: whole numbers in ``[0, C)``, one per row."""
        if target.shape[0] != n:
            raise ValueError(f"CrossEntropy expected {n} class labels for pred shape ({n}, {num_classes}), "
                             f"got target shape {tuple(target.shape)}")
        if target.dtype.kind not in "iuf":
            raise TypeError(f"CrossEntropy expected integer class labels, got dtype {target.dtype}")
        if target.dtype.kind == "f":
            xp = get_array_module(target)
            fractional = target != xp.round(target)
            if bool(fractional.any()):
                bad = target[fractional][0].item()
                raise ValueError(f"CrossEntropy expected integer class labels, got {bad!r} "
                                 f"(pass one-hot or probability targets with shape (N, C))")
        out_of_range = (target < 0) | (target >= num_classes)
        if bool(out_of_range.any()):
            bad = target[out_of_range][0].item()
            raise ValueError(f"CrossEntropy got class label {bad!r} outside [0, {num_classes}) "
                             f"for logits with {num_classes} classes")
        return target.astype(np.int64)


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy, averaged over all elements; targets in ``[0, 1]``.

    ``from_logits=True`` (default; ``torch.nn.BCEWithLogitsLoss``), with ``x`` the logits::

        l = -t log s(x) - (1 - t) log(1 - s(x)) = max(x, 0) - x t + log(1 + e^{-|x|})
        dl/dx = s(x) - t                          with s the logistic sigmoid

    The right-hand form never exponentiates a positive number, so it is exact and
    finite for any ``x``.

    ``from_logits=False`` (``torch.nn.BCELoss``), with ``p`` probabilities in ``[0, 1]``::

        l = -(t max(log p, -100) + (1 - t) max(log(1 - p), -100))
        dl/dp = (p - t) / max(p (1 - p), 1e-12)

    The clamps are PyTorch's: they keep ``p = 0`` or ``1`` finite (a loss of at
    most 100 per element, a large but finite gradient). The mean over the ``n``
    elements divides both by ``n``.
    """

    def __init__(self, from_logits: bool = True):
        super().__init__()
        if not isinstance(from_logits, (bool, np.bool_)):
            raise TypeError(f"BinaryCrossEntropy expected from_logits to be True or False, got {from_logits!r}")
        self.from_logits = bool(from_logits)

    def forward(self, pred, target) -> float:
        pred = self._check_pred(pred)
        target = self._float_target(pred, target)
        xp = get_array_module(pred)
        if bool(((target < 0) | (target > 1)).any()):
            raise ValueError(f"BinaryCrossEntropy expected targets in [0, 1], got values in "
                             f"[{target.min().item()}, {target.max().item()}]")
        if self.from_logits:
            elementwise = xp.maximum(pred, 0) - pred * target + xp.log1p(xp.exp(-xp.abs(pred)))
        else:
            if bool(((pred < 0) | (pred > 1)).any()):
                raise ValueError(f"BinaryCrossEntropy(from_logits=False) expected probabilities in [0, 1], "
                                 f"got values in [{pred.min().item()}, {pred.max().item()}]; "
                                 f"pass logits with from_logits=True")
            with np.errstate(divide="ignore"):  # log(0) = -inf, then clamped to -100 like torch
                log_p = xp.maximum(xp.log(pred), -100)
                log_1mp = xp.maximum(xp.log1p(-pred), -100)
            elementwise = -(target * log_p + (1 - target) * log_1mp)
        self._cache_pred, self._cache_target = pred, target
        return float(elementwise.mean())

    def backward(self):
        self._require_forward()
        xp = get_array_module(self._cache_pred)
        pred, target = self._cache_pred, self._cache_target
        if self.from_logits:
            return (sigmoid(pred) - target) / pred.size
        return (pred - target) / xp.maximum(pred * (1 - pred), 1e-12) / pred.size

    def __repr__(self) -> str:
        return f"BinaryCrossEntropy(from_logits={self.from_logits})"


class MSE(Loss):
    """Mean squared error over all ``n`` elements: ``L = (1/n) sum (p - t)^2``, ``dL/dp = 2 (p - t) / n``."""

    def forward(self, pred, target) -> float:
        pred = self._check_pred(pred)
        target = self._float_target(pred, target)
        self._cache_pred = pred
        self._cache_diff = pred - target
        return float((self._cache_diff ** 2).mean())

    def backward(self):
        self._require_forward()
        return 2 * self._cache_diff / self._cache_diff.size


class MAE(Loss):
    """Mean absolute error over all ``n`` elements: ``L = (1/n) sum |p - t|``.

    ``dL/dp = sign(p - t) / n``, with ``sign(0) = 0`` at the kink, as torch's ``L1Loss``.
    """

    def forward(self, pred, target) -> float:
        pred = self._check_pred(pred)
        target = self._float_target(pred, target)
        self._cache_pred = pred
        self._cache_diff = pred - target
        return float(get_array_module(pred).abs(self._cache_diff).mean())

    def backward(self):
        self._require_forward()
        diff = self._cache_diff
        return get_array_module(diff).sign(diff) / diff.size


LOSSES = {
    "cross_entropy": CrossEntropy,
    "bce": BinaryCrossEntropy,
    "mse": MSE,
    "mae": MAE,
}

# Keras spellings, so code written for Keras reads the same here.
_ALIASES = {
    "categorical_crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "binary_crossentropy": "bce",
    "mean_squared_error": "mse",
    "mean_absolute_error": "mae",
}


def get_loss(name_or_loss) -> Loss:
    """A loss from its name (``'cross_entropy'``, ``'bce'``, ``'mse'``, ``'mae'``), or the loss given."""
    if isinstance(name_or_loss, Loss):
        return name_or_loss
    if isinstance(name_or_loss, type) and issubclass(name_or_loss, Loss):
        return name_or_loss()
    if not isinstance(name_or_loss, str):
        raise TypeError(f"get_loss expected a loss name or a Loss, got {type(name_or_loss).__name__}")
    key = name_or_loss.lower()
    key = _ALIASES.get(key, key)
    if key not in LOSSES:
        known = ", ".join(repr(k) for k in LOSSES)
        raise ValueError(f"unknown loss {name_or_loss!r}; expected one of {known} or a Loss instance")
    return LOSSES[key]()
