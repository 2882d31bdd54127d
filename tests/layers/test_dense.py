"""Dense against finite differences, torch's nn.Linear (+ activation) and hand computations."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn.gradcheck import check_layer
from minicnn.layers import Dense
from tests.helpers import DTYPES, assert_close, check_torch_parity, require_torch

# (in_features, out_features, activation, bias)
CASES = [
    (7, 5, None, True),
    (7, 5, None, False),
    (12, 4, "relu", True),
    (6, 3, "leaky_relu", True),
    (5, 4, "elu", True),
    (8, 6, "sigmoid", True),
    (8, 6, "tanh", False),
    (9, 10, "softmax", True),
    (1, 1, None, True),
]
IDS = [f"{i}to{o}-{a}-{'bias' if b else 'nobias'}" for i, o, a, b in CASES]


def _torch_dense(in_features, out_features, activation, bias):
    """``nn.Linear`` followed by the activation, with the state-dict keys of ``Linear`` alone."""
    torch = require_torch()
    activations = {None: torch.nn.Identity(), "relu": torch.nn.ReLU(), "leaky_relu": torch.nn.LeakyReLU(0.01),
                   "elu": torch.nn.ELU(1.0), "sigmoid": torch.nn.Sigmoid(), "tanh": torch.nn.Tanh(),
                   "softmax": torch.nn.Softmax(dim=1)}

    class LinearThenActivation(torch.nn.Linear):
        def forward(self, x):
            return self.act(super().forward(x))

    module = LinearThenActivation(in_features, out_features, bias=bias)
    module.act = activations[activation]  # parameter-free, so the keys stay 'weight', 'bias'
    return module


def _nonzero_bias(layer, seed=1):
    # Biases start at zero; make them non-zero so a forgotten "+ b" cannot pass.
    if "bias" in layer.params:
        layer.params["bias"][...] = np.random.default_rng(seed).standard_normal(layer.params["bias"].shape)


@pytest.mark.parametrize("in_features, out_features, activation, bias", CASES, ids=IDS)
def test_gradcheck(in_features, out_features, activation, bias):
    minicnn.seed(0)
    layer = Dense(out_features, activation=activation, bias=bias, in_features=in_features)
    _nonzero_bias(layer)
    report = check_layer(layer, (4, in_features), max_checks=60)
    assert report.ok, report
    assert set(report.max_rel_error) == {"input", "weight"} | ({"bias"} if bias else set())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_features, out_features, activation, bias", CASES, ids=IDS)
def test_matches_torch_linear(in_features, out_features, activation, bias, dtype):
    minicnn.seed(1)
    layer = Dense(out_features, activation=activation, bias=bias)   # built lazily from x
    x = np.random.default_rng(2).standard_normal((6, in_features))
    layer.build((in_features,))
    _nonzero_bias(layer)
    y, _ = check_torch_parity(layer, _torch_dense(in_features, out_features, activation, bias), x, dtype)
    assert y.dtype == dtype and y.shape == (6, out_features)


def test_params_follow_torch_names_and_shapes():
    layer = Dense(10, in_features=784)
    assert layer.built, "in_features given: params exist before the first call"
    assert {k: v.shape for k, v in layer.params.items()} == {"weight": (10, 784), "bias": (10,)}
    assert {k: v.shape for k, v in layer.grads.items()} == {"weight": (10, 784), "bias": (10,)}
    assert layer.params["weight"].dtype == np.float32
    assert "bias" not in Dense(3, bias=False, in_features=4).params
    lazy = Dense(3)
    assert not lazy.built and lazy.params == {}
    lazy.forward(np.ones((2, 5), dtype=np.float32))
    assert lazy.params["weight"].shape == (3, 5) and lazy.in_features == 5
    assert lazy.output_shape((5,)) == (3,) and lazy.parameters_count() == 18


def test_backward_overwrites_grads_by_hand_and_skips_input_grad_when_asked():
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    layer = Dense(2, in_features=3, dtype=np.float64)
    W = layer.params["weight"]
    np.testing.assert_allclose(layer.forward(x), x @ W.T)
    for _ in range(2):  # a second backward must overwrite, not accumulate
        dx = layer.backward(dy)
        np.testing.assert_allclose(layer.grads["weight"], dy.T @ x)
        np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=0))
        np.testing.assert_allclose(dx, dy @ W)
    layer.skip_input_grad = True
    layer.forward(2 * x)
    assert layer.backward(dy) is None
    np.testing.assert_allclose(layer.grads["weight"], dy.T @ (2 * x))   # grads still filled


def test_initialisation_scale():
    """He-normal std sqrt(2/fan_in) for the ReLU family, Glorot-uniform limit otherwise; zero bias."""
    minicnn.seed(0)
    relu = Dense(300, activation="relu", in_features=400).params
    assert abs(relu["weight"].std() / np.sqrt(2 / 400) - 1) < 0.03
    assert abs(relu["weight"].mean()) < 0.02 * np.sqrt(2 / 400)   # ~7 standard errors
    np.testing.assert_array_equal(relu["bias"], 0)
    tanh = Dense(300, activation="tanh", in_features=400).params["weight"]
    limit = np.sqrt(6 / (400 + 300))
    assert np.abs(tanh).max() <= limit and np.abs(tanh).max() > 0.99 * limit
    assert abs(tanh.std() / (limit / np.sqrt(3)) - 1) < 0.03


def test_seed_makes_weights_reproducible():
    minicnn.seed(7)
    first = Dense(4, in_features=3).params["weight"].copy()
    minicnn.seed(7)
    np.testing.assert_array_equal(Dense(4, in_features=3).params["weight"], first)


def test_dtype_and_astype():
    layer = Dense(3, in_features=2, dtype=np.float64, activation="relu")
    assert layer.params["weight"].dtype == np.float64
    assert layer.forward(np.ones((1, 2), dtype=np.float32)).dtype == np.float64
    layer.astype(np.float32)
    assert layer.activation.dtype == np.float32
    assert layer.forward(np.ones((1, 2))).dtype == np.float32
    assert layer.backward(np.ones((1, 3), dtype=np.float32)).dtype == np.float32


def test_softmax_activation_rows_sum_to_one():
    y = Dense(5, activation="softmax", in_features=4).forward(np.random.default_rng(0).standard_normal((3, 4)))
    assert_close(y.sum(axis=1), np.ones(3), np.float32)


# ---------------------------------------------------------------- bad input
def test_wrong_feature_count_names_expected_and_received():
    with pytest.raises(ValueError, match=r"^Dense expected 128 input features, got 64 \(input shape \(32, 64\)\)$"):
        Dense(10, in_features=128).forward(np.zeros((32, 64), dtype=np.float32))
    lazy = Dense(10)
    lazy.forward(np.zeros((2, 128), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Dense expected 128 input features, got 64"):
        lazy.forward(np.zeros((2, 64), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Dense expected 128 input features, got 64"):
        Dense(10, in_features=128).build((64,))
    with pytest.raises(ValueError, match=r"Dense expected 128 input features, got 64"):
        Dense(10, in_features=128).output_shape((64,))


def test_image_input_says_to_add_flatten():
    with pytest.raises(ValueError, match=r"Dense expected a 2-D input \(N, features\), got shape "
                                         r"\(8, 1, 28, 28\); add Flatten\(\)"):
        Dense(10).forward(np.zeros((8, 1, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match=r"add Flatten\(\)"):
        Dense(10).build((1, 28, 28))
    with pytest.raises(ValueError, match=r"Dense expected a 2-D input"):
        Dense(10).forward(np.zeros(8, dtype=np.float32))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(out_features=0), ValueError, r"Dense expected out_features >= 1, got 0"),
    (dict(out_features=-3), ValueError, r"Dense expected out_features >= 1, got -3"),
    (dict(out_features=2.5), TypeError, r"Dense expected out_features as an int"),
    (dict(out_features=True), TypeError, r"Dense expected out_features as an int"),
    (dict(out_features=4, in_features=0), ValueError, r"Dense expected in_features >= 1, got 0"),
    (dict(out_features=4, activation="swish"), ValueError, r"Dense got unknown activation 'swish'"),
    (dict(out_features=4, bias="yes"), TypeError, r"Dense expected bias to be True or False"),
    (dict(out_features=4, dtype=np.int32), TypeError, r"expected a floating dtype"),
])
def test_bad_constructor_arguments_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        Dense(**kwargs)
