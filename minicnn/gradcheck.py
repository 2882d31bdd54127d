"""Gradient checking: analytic backward passes against central finite differences.

For a layer ``y = f(x; θ)`` we pick a random upstream gradient ``g`` (a random
``g`` exercises every output; ``g = 1`` would hide errors that cancel in a sum)
and check the scalar ``L = sum(g * f(x; θ))``::

    numeric  dL/dv_i ≈ (L(v + h e_i) - L(v - h e_i)) / (2h)       (error O(h^2))
    analytic dL/dx = layer.backward(g),  dL/dθ = layer.grads

per tensor, with the relative error of CS231n::

    rel_i = |a_i - n_i| / max(|a_i| + |n_i|, tiny)

``tiny`` is ``1e-4`` of the tensor's largest numeric gradient (at least 1e-10),
so entries that are zero up to rounding (``~1e-10``) are not judged on their
relative noise. A central difference cannot resolve anything finer than the rounding
of the objective ``f`` itself, about ``eps * |f| / step``; entries whose analytic and
numeric values differ by less than ``100 * eps * max(1, |f|) / step`` (2e-8 for
``|f| <= 1``) count as equal. That matters for gradients that are exactly zero, such as
a convolution's bias in front of a batch norm (which removes any per-channel shift):
there the numeric gradient is pure rounding noise, ``~1e-10``, and its relative error
against an analytic ``1e-17`` would read 1.0. Everything runs in float64, where a correct backward gives
``rel ~ 1e-8`` or better and a wrong one gives ``rel ~ 1``.

Inputs are drawn away from kinks: distinct values at least ``2/size`` apart
(so no max-pool ties flip under ``±h``) and at least 0.05 from zero (so no ReLU
input sits on its kink). Random layers (dropout, noise) are re-seeded before
every forward, so each evaluation sees the same mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import backend
from .rng import seed as reseed

__all__ = ["GradReport", "check_layer", "check_loss", "check_model", "kink_free_input", "relative_error"]

STEP = 1e-6
TOLERANCE = 1e-5


@dataclass
class GradReport:
    """Result of a gradient check: ``max_rel_error[name]`` per tensor and ``ok`` overall."""

    max_rel_error: dict = field(default_factory=dict)
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return all(err <= self.tolerance for err in self.max_rel_error.values())

    def __str__(self) -> str:
        rows = [f"  {name:<28} {err:.2e} {'ok' if err <= self.tolerance else 'FAIL'}"
                for name, err in self.max_rel_error.items()]
        return f"GradReport(ok={self.ok}, tolerance={self.tolerance:g})\n" + "\n".join(rows)

    __repr__ = __str__


def relative_error(analytic, numeric, noise: float = 0.0) -> float:
    """Largest ``|a - n| / max(|a| + |n|, tiny)`` over the checked entries.

    Entries with ``|a - n| <= noise`` (the finite differences' resolution) count as 0.
    """
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    tiny = max(1e-10, 1e-4 * float(np.abs(numeric).max(initial=0.0)))
    diff = np.abs(analytic - numeric)
    rel = np.where(diff <= noise, 0.0, diff / np.maximum(np.abs(analytic) + np.abs(numeric), tiny))
    return float(rel.max(initial=0.0))


def _resolution(value: float, step: float) -> float:
    """What central differences of step ``step`` can resolve of an objective near ``value``."""
    return 100 * np.finfo(np.float64).eps * max(1.0, abs(value)) / step


def kink_free_input(shape, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Distinct values in ``±[0.05, 2]·scale`` spaced by ``>= ~2/size``, in random order."""
    size = int(np.prod(shape))
    magnitudes = np.linspace(0.05, 2.0, size)
    signs = np.where(np.arange(size) % 2 == 0, 1.0, -1.0)
    values = rng.permutation(magnitudes * signs)
    return (values * scale).reshape(shape)


def _numeric_grad(evaluate, array, indices, step):
    """Central differences of ``evaluate()`` w.r.t. ``array.flat[i]`` for ``i`` in ``indices``."""
    flat = array.reshape(-1)  # a view: writing to it perturbs the array the layer sees
    grads = np.empty(len(indices))
    for k, i in enumerate(indices):
        original = flat[i].item()
        flat[i] = original + step
        plus = evaluate()
        flat[i] = original - step
        minus = evaluate()
        flat[i] = original
        grads[k] = (plus - minus) / (2 * step)
    return grads


def _sample(size: int, limit: int | None, rng) -> np.ndarray:
    if limit is None or size <= limit:
        return np.arange(size)
    return np.sort(rng.choice(size, size=limit, replace=False))


def _compare(targets, analytic, objective, step, tolerance, max_checks, rng) -> GradReport:
    """Finite differences of ``objective`` for a sample of each target, against ``analytic``."""
    report = GradReport(tolerance=tolerance)
    noise = _resolution(objective(), step)
    for name, array in targets:
        idx = _sample(array.size, max_checks, rng)
        numeric = _numeric_grad(objective, array, idx, step)
        report.max_rel_error[name] = relative_error(analytic[name].reshape(-1)[idx], numeric, noise)
    return report


def check_layer(layer, input_shape, seed: int = 0, training: bool = True,
                step: float = STEP, tolerance: float = TOLERANCE,
                max_checks: int | None = 150, x=None) -> GradReport:
    """Check ``layer.backward`` for the input and every parameter, in float64.

    ``input_shape`` includes the batch axis. ``max_checks`` caps how many entries
    of each tensor are perturbed (a random sample); ``None`` checks all. The
    layer is converted to float64 in place. Pass ``x`` to use a specific input.
    """
    rng = np.random.default_rng(seed)
    xp = backend.get_array_module()
    layer.astype(np.float64)
    x = kink_free_input(input_shape, rng) if x is None else np.array(x, dtype=np.float64)
    x = backend.to_device(x)
    if not layer.built:
        layer.build(tuple(input_shape[1:]))

    def forward():
        reseed(seed)  # same dropout mask / noise on every evaluation
        return layer.forward(x, training=training)

    y = forward()
    g = backend.to_device(rng.standard_normal(y.shape))

    def loss() -> float:
        return float(xp.sum(forward() * g))

    forward()
    dx = backend.to_numpy(layer.backward(g))
    analytic = {"input": dx}
    analytic.update({name: backend.to_numpy(grad).copy() for name, _, grad in layer.named_parameters()})

    targets = [("input", x)] + [(name, param) for name, param, _ in layer.named_parameters()]
    return _compare(targets, analytic, loss, step, tolerance, max_checks, rng)


def check_loss(loss, pred_shape, target, seed: int = 0, step: float = STEP,
               tolerance: float = TOLERANCE, pred=None) -> GradReport:
    """Check ``loss.backward()`` against finite differences of ``loss.forward(pred, target)``.

    ``pred`` defaults to standard-normal logits of ``pred_shape``; pass it to check
    losses whose input has a restricted range (probabilities for BCE).
    """
    rng = np.random.default_rng(seed)
    pred = rng.standard_normal(pred_shape) if pred is None else np.array(pred, dtype=np.float64)
    pred = backend.to_device(pred)
    target = backend.to_device(np.asarray(target))
    loss.forward(pred, target)
    analytic = backend.to_numpy(loss.backward())
    numeric = _numeric_grad(lambda: loss.forward(pred, target), pred, np.arange(pred.size), step)
    report = GradReport(tolerance=tolerance)
    noise = _resolution(float(loss.forward(pred, target)), step)
    report.max_rel_error["pred"] = relative_error(analytic.reshape(-1), numeric, noise)
    return report


def check_model(model, x, y, loss, seed: int = 0, step: float = STEP,
                tolerance: float = TOLERANCE, max_checks: int | None = 40) -> GradReport:
    """Check a whole model: ``loss(model(x), y) + model.regularization_loss()``.

    Checks the input gradient and a sample of every parameter's gradient.
    ``loss`` is a loss object or one of the names in ``minicnn.losses``.
    """
    from .losses import get_loss

    loss = get_loss(loss)
    rng = np.random.default_rng(seed)
    model.astype(np.float64)
    x = backend.to_device(np.array(x, dtype=np.float64))
    y = backend.to_device(np.asarray(y))
    if not model.built:
        # Build before the first reseed: building draws weights from the shared generator,
        # which would otherwise shift every later dropout mask.
        model.build(tuple(x.shape[1:]))

    def objective() -> float:
        reseed(seed)
        value = loss.forward(model.forward(x, training=True), y)
        return float(value) + model.regularization_loss()

    objective()
    dx = backend.to_numpy(model.backward(loss.backward()))
    analytic = {"input": dx}
    analytic.update({name: backend.to_numpy(grad).copy() for name, _, grad in model.named_parameters()})

    targets = [("input", x)] + [(name, param) for name, param, _ in model.named_parameters()]
    return _compare(targets, analytic, objective, step, tolerance, max_checks, rng)
