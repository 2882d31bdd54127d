"""Activation layers against finite differences, PyTorch, and their behaviour at extremes."""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.gradcheck import check_layer
from minicnn.layers import ELU, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh, get_activation
from tests.helpers import DTYPES, assert_close, check_torch_parity, require_torch


def _torch_twin(name, arg):
    torch = require_torch()
    return {
        "relu": lambda: torch.nn.ReLU(),
        "leaky_relu": lambda: torch.nn.LeakyReLU(arg),
        "elu": lambda: torch.nn.ELU(arg),
        "sigmoid": lambda: torch.nn.Sigmoid(),
        "tanh": lambda: torch.nn.Tanh(),
        "softmax": lambda: torch.nn.Softmax(dim=arg),
    }[name]()


# (name, minicnn constructor, constructor argument (alpha or axis), input shape)
CASES = [
    ("relu", lambda a: ReLU(), None, (4, 10)),
    ("relu", lambda a: ReLU(), None, (2, 3, 4, 5)),
    ("leaky_relu", lambda a: LeakyReLU(a), 0.01, (4, 10)),
    ("leaky_relu", lambda a: LeakyReLU(a), 0.3, (2, 3, 4, 5)),
    ("elu", lambda a: ELU(a), 1.0, (4, 10)),
    ("elu", lambda a: ELU(a), 0.5, (2, 3, 4, 5)),
    ("sigmoid", lambda a: Sigmoid(), None, (4, 10)),
    ("sigmoid", lambda a: Sigmoid(), None, (2, 3, 4, 5)),
    ("tanh", lambda a: Tanh(), None, (4, 10)),
    ("tanh", lambda a: Tanh(), None, (2, 3, 4, 5)),
    ("softmax", lambda a: Softmax(a), 1, (4, 10)),
    ("softmax", lambda a: Softmax(a), -1, (4, 10)),
    ("softmax", lambda a: Softmax(a), 1, (2, 3, 4, 5)),   # over channels of a feature map
    ("softmax", lambda a: Softmax(a), -1, (2, 3, 4, 5)),
    ("softmax", lambda a: Softmax(a), 2, (2, 3, 4, 5)),
]
IDS = [f"{name}-{arg}-{'x'.join(map(str, shape))}" for name, _, arg, shape in CASES]


@pytest.mark.parametrize("name, make, arg, shape", CASES, ids=IDS)
def test_gradcheck(name, make, arg, shape):
    # The default input keeps every value >= 0.05 from 0, away from the ReLU-family kinks.
    report = check_layer(make(arg), shape, max_checks=60)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, make, arg, shape", CASES, ids=IDS)
def test_matches_torch(name, make, arg, shape, dtype):
    x = 3 * np.random.default_rng(0).standard_normal(shape)
    y, _ = check_torch_parity(make(arg), _torch_twin(name, arg), x, dtype)
    assert y.dtype == dtype and y.shape == shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, make, arg", [("relu", lambda a: ReLU(), None),
                                             ("leaky_relu", lambda a: LeakyReLU(a), 0.2),
                                             ("elu", lambda a: ELU(a), 0.7)])
def test_subgradient_at_zero_matches_torch(name, make, arg, dtype):
    x = np.array([[0.0, -0.0, 1.0, -1.0, 0.0]])
    check_torch_parity(make(arg), _torch_twin(name, arg), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_stays_finite_at_plus_minus_1000(dtype):
    x = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]], dtype=dtype)
    layer = Sigmoid(dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # not even a warning
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(y))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert_close(y, [[0.0, np.exp(-50.0), 0.5, 1.0, 1.0]], dtype)
    assert_close(dx, [[0.0, np.exp(-50.0), 0.25, 0.0, 0.0]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_stays_finite_at_plus_minus_1000(dtype):
    x = np.array([[1000.0, -1000.0, 0.0], [1000.0, 1000.0, -1000.0], [-1000.0, -1000.0, -1000.0]], dtype=dtype)
    layer = Softmax(dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = layer.forward(x)
        dx = layer.backward(np.array([[1.0, 2.0, 3.0]] * 3, dtype=dtype))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert_close(y, [[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]], dtype)
    # dx_i = y_i (dy_i - sum_j y_j dy_j), by hand for each row
    assert_close(dx, [[0, 0, 0], [-0.25, 0.25, 0], [-1 / 3, 0, 1 / 3]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_and_elu_saturate_finitely(dtype):
    x = np.array([[-1000.0, 1000.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):
        assert_close(Tanh(dtype=dtype).forward(x), [[-1.0, 1.0]], dtype)
        assert_close(ELU(0.5, dtype=dtype).forward(x), [[-0.5, 1000.0]], dtype)


def test_softmax_rows_sum_to_one_along_the_chosen_axis():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    for axis in (0, 1, 2, -1):
        y = Softmax(axis, dtype=np.float64).forward(x)
        np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-12)


def test_get_activation_builds_the_named_layer():
    expected = {None: Identity, "relu": ReLU, "leaky_relu": LeakyReLU, "elu": ELU,
                "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax}
    for name, cls in expected.items():
        layer = get_activation(name, "Conv2D", np.float64)
        assert type(layer) is cls and layer.dtype == np.float64 and layer.name == "Conv2D.activation"
    identity = get_activation(None, "Dense")
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(identity.backward(identity.forward(x)), x)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, message", [
    (lambda: LeakyReLU(-0.1), r"LeakyReLU expected alpha >= 0, got -0.1"),
    (lambda: ELU(0.0), r"ELU expected alpha > 0, got 0.0"),
    (lambda: ELU(-1.0), r"ELU expected alpha > 0"),
    (lambda: get_activation("swish", "Conv2D"), r"Conv2D got unknown activation 'swish'; expected one of"),
])
def test_bad_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_softmax_axis_out_of_range_raises():
    with pytest.raises(ValueError, match=r"Softmax axis 3 is out of range for input shape \(4, 10\)"):
        Softmax(axis=3).forward(np.zeros((4, 10), dtype=np.float32))


@pytest.mark.parametrize("layer", [ReLU(), Sigmoid(), Softmax()])
def test_empty_batch_and_non_array_raise(layer):
    with pytest.raises(ValueError, match=r"received an empty batch"):
        layer.forward(np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=r"expected a numpy or cupy array, got list"):
        layer.forward([[1.0, 2.0]])


def test_relu_backward_checks_its_state_and_dy():
    layer = ReLU()
    with pytest.raises(RuntimeError, match=r"ReLU\w*\.backward called before forward"):
        layer.backward(np.ones((2, 3), np.float32))
    layer.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"ReLU\w*\.backward expected dy of shape \(2, 3\) \(the output of the last forward\), got \(3, 2\)"):
        layer.backward(np.ones((3, 2), np.float32))
