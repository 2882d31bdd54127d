"""ActivityRegularization: the penalty and its gradient, against finite differences and torch.

``check_layer`` only sees ``sum(g * y)``, which would miss the penalty, so the
finite-difference check here differentiates the whole objective
``L(x) = sum(g * y(x)) + penalty(x)`` by central differences. PyTorch autograd
of ``(l1 * |x|.sum() + l2 * (x**2).sum()) / N`` is the second, independent oracle.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.gradcheck import kink_free_input, relative_error
from minicnn.layers import ActivityRegularization
from tests.helpers import DTYPES, assert_close, require_torch

# (l1, l2, input shape): L1 only, L2 only, both, neither; vectors and images.
CASES = [
    (0.01, 0.0, (4, 6)),
    (0.0, 0.05, (3, 10)),
    (0.1, 0.3, (2, 3, 4, 4)),
    (0.5, 0.0, (5, 2, 3, 3)),
    (0.0, 0.0, (4, 5)),
]
IDS = [f"l1={l1}-l2={l2}-{'x'.join(map(str, s))}" for l1, l2, s in CASES]


def _objective(layer, x, g) -> float:
    return float(np.sum(layer.forward(x, training=True) * g)) + layer.regularization_loss()


@pytest.mark.parametrize("l1, l2, shape", CASES, ids=IDS)
def test_gradient_of_loss_plus_penalty_matches_finite_differences(l1, l2, shape):
    rng = np.random.default_rng(0)
    layer = ActivityRegularization(l1=l1, l2=l2, dtype=np.float64)
    x = kink_free_input(shape, rng)  # |x| >= 0.05: no entry sits on the kink of |x|
    g = rng.standard_normal(shape)
    _objective(layer, x, g)
    analytic = layer.backward(g)

    step = 1e-6
    flat = x.reshape(-1)
    numeric = np.empty(x.size)
    for i in range(x.size):
        original = flat[i]
        flat[i] = original + step
        plus = _objective(layer, x, g)
        flat[i] = original - step
        minus = _objective(layer, x, g)
        flat[i] = original
        numeric[i] = (plus - minus) / (2 * step)
    assert relative_error(analytic.reshape(-1), numeric) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("l1, l2, shape", CASES, ids=IDS)
def test_penalty_and_gradient_match_torch(l1, l2, shape, dtype):
    torch = require_torch()
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    layer = ActivityRegularization(l1=l1, l2=l2, dtype=dtype)
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, x)
    dx = layer.backward(g)

    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    penalty = (l1 * tx.abs().sum() + l2 * (tx ** 2).sum()) / shape[0]
    ((tx * torch.from_numpy(g)).sum() + penalty).backward()
    assert_close(layer.regularization_loss(), penalty.item(), dtype, "penalty")
    assert_close(dx, tx.grad.numpy(), dtype, "input grad")


def test_penalty_divides_by_batch_size():
    # Hand computation: x = [[1, -2], [3, 0]], N = 2 -> (0.5 * 6 + 0.25 * 14) / 2 = 3.25.
    layer = ActivityRegularization(l1=0.5, l2=0.25, dtype=np.float64)
    layer.forward(np.array([[1.0, -2.0], [3.0, 0.0]]), training=True)
    assert layer.regularization_loss() == pytest.approx(3.25, rel=1e-12)
    # dx = dy + (0.5 * sign(x) + 2 * 0.25 * x) / 2, with sign(0) = 0.
    dx = layer.backward(np.zeros((2, 2)))
    np.testing.assert_allclose(dx, [[0.5, -0.75], [1.0, 0.0]], rtol=1e-12)


def test_no_penalty_before_training_or_in_evaluation():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    layer = ActivityRegularization(l1=0.1, l2=0.1)
    assert layer.regularization_loss() == 0.0
    layer.forward(x, training=True)
    assert layer.regularization_loss() > 0.0
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    assert layer.regularization_loss() == 0.0
    np.testing.assert_array_equal(layer.backward(dy), dy)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(l1=-0.1), ValueError, r"ActivityRegularization expected a finite l1 >= 0, got -0.1"),
    (dict(l2=-1.0), ValueError, r"ActivityRegularization expected a finite l2 >= 0, got -1.0"),
    (dict(l1=float("nan")), ValueError, r"finite l1 >= 0"),
    (dict(l1="0.1"), TypeError, r"ActivityRegularization expected l1 as a real number, got '0.1'"),
    (dict(l2=None), TypeError, r"ActivityRegularization expected l2 as a real number"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ActivityRegularization(**kwargs)
