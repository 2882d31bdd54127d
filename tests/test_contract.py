"""The public contract (``shared/API.md``), tested the way an outside author would.

Every name, signature, default, parameter name and shape, buffer name and
stated semantic on that page is exercised here through the public imports only
(``minicnn``, ``minicnn.layers``, ``minicnn.models``, ...). Numbers are compared
with an independent source — PyTorch, scikit-learn, finite differences or a
hand computation — never with minicnn itself. The per-module test files go
deeper; this file is the checklist that the page and the code still agree.
"""
from __future__ import annotations

import gzip
import inspect
import pickle
import struct

import numpy as np
import pytest

import minicnn
from minicnn import backend, callbacks, gradcheck, layers, losses, models, optim
from minicnn.layers import (ELU, ActivityRegularization, AvgPool2D, BatchNorm1D, BatchNorm2D,
                            Concatenate, Conv2D, Conv2DTranspose, Dense, DepthwiseConv2D, Dropout,
                            Flatten, GaussianNoise, GlobalAvgPool2D, GlobalMaxPool2D, Layer,
                            LeakyReLU, MaxPool2D, ReLU, Reshape, Residual, SeparableConv2D,
                            Sequential, Sigmoid, Softmax, SpatialDropout2D, Tanh, UpSampling2D)
from tests.helpers import assert_close, check_torch_parity, require_torch

REQUIRED = inspect.Parameter.empty
ACTIVATIONS = [None, "relu", "leaky_relu", "elu", "sigmoid", "tanh", "softmax"]


@pytest.fixture(autouse=True)
def _numpy_backend():
    backend.set_backend("numpy")
    yield
    backend.set_backend("numpy")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def signature_params(obj):
    """``[(name, default)]`` of a callable's parameters, ``self`` excluded."""
    return [(p.name, p.default) for p in inspect.signature(obj).parameters.values()
            if p.name != "self"]


def assert_signature_starts_with(obj, documented, what):
    """The documented parameters come first, in order, with the documented defaults.

    ``REQUIRED`` marks an argument documented without a default (one may be added).
    """
    actual = signature_params(obj)
    names = [name for name, _ in actual[:len(documented)]]
    assert names == [name for name, _ in documented], f"{what}: parameters {names}"
    for (name, default), (_, got) in zip(documented, actual):
        if default is not REQUIRED:
            assert got == default and type(got) is type(default), f"{what}: {name}={got!r}"
    kinds = {p.name: p.kind for p in inspect.signature(obj).parameters.values()}
    extra = [name for name, default in actual[len(documented):] if default is REQUIRED
             and kinds[name] not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    assert not extra, f"{what}: undocumented required parameters {extra}"


# ============================================================================ imports
def test_public_names_import_from_their_documented_homes():
    assert minicnn.Sequential is models.Sequential is layers.Sequential
    assert callable(minicnn.load) and callable(minicnn.seed)
    for name in ("EarlyStopping", "ModelCheckpoint", "LearningRateScheduler", "FilterRecorder"):
        assert getattr(minicnn, name) is getattr(callbacks, name)
    for name in ("set_backend", "get_array_module", "available", "BackendUnavailableError"):
        assert hasattr(backend, name), name
    from minicnn import kernels
    from minicnn.kernels import col2im, im2col, reference  # noqa: F401
    assert callable(kernels.reference.im2col) and callable(kernels.reference.col2im)
    for name in ("Loss", "CrossEntropy", "BinaryCrossEntropy", "MSE", "MAE"):
        assert hasattr(losses, name), name
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "StepLR", "CosineAnnealingLR"):
        assert hasattr(optim, name), name
    for name in ("check_layer", "check_loss", "check_model"):
        assert hasattr(gradcheck, name), name
    for module in (layers, losses, optim, models, callbacks, backend, gradcheck,
                   minicnn.data, minicnn.metrics, minicnn.viz):
        assert isinstance(module.__all__, (list, tuple)) and module.__all__, module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ lists missing {name}"


# ============================================================================ layer constructors
LAYER_SIGNATURES = {
    Conv2D: [("out_channels", REQUIRED), ("kernel_size", REQUIRED), ("stride", 1), ("padding", 0),
             ("dilation", 1), ("bias", True), ("activation", None), ("in_channels", None)],
    DepthwiseConv2D: [("kernel_size", REQUIRED), ("depth_multiplier", 1), ("stride", 1),
                      ("padding", 0), ("dilation", 1), ("bias", True), ("activation", None),
                      ("in_channels", None)],
    SeparableConv2D: [("out_channels", REQUIRED), ("kernel_size", REQUIRED), ("depth_multiplier", 1),
                      ("stride", 1), ("padding", 0), ("dilation", 1), ("bias", True),
                      ("activation", None), ("in_channels", None)],
    Conv2DTranspose: [("out_channels", REQUIRED), ("kernel_size", REQUIRED), ("stride", 1),
                      ("padding", 0), ("output_padding", 0), ("bias", True), ("activation", None),
                      ("in_channels", None)],
    MaxPool2D: [("pool_size", 2), ("stride", None), ("padding", 0)],
    AvgPool2D: [("pool_size", 2), ("stride", None), ("padding", 0)],
    GlobalAvgPool2D: [], GlobalMaxPool2D: [], UpSampling2D: [("size", 2)],
    Dense: [("out_features", REQUIRED), ("activation", None), ("bias", True), ("in_features", None)],
    Flatten: [], Reshape: [("shape", REQUIRED)],
    BatchNorm1D: [("momentum", 0.1), ("eps", 1e-5)], BatchNorm2D: [("momentum", 0.1), ("eps", 1e-5)],
    Dropout: [("rate", REQUIRED)], SpatialDropout2D: [("rate", REQUIRED)],
    GaussianNoise: [("stddev", REQUIRED)],
    ReLU: [], LeakyReLU: [("alpha", 0.01)], ELU: [("alpha", 1.0)], Sigmoid: [], Tanh: [],
    Softmax: [("axis", 1)], ActivityRegularization: [("l1", 0.0), ("l2", 0.0)],
    Sequential: [("layers", REQUIRED), ("input_shape", None)],
    Residual: [("block", REQUIRED), ("shortcut", None)],
    Concatenate: [("branches", REQUIRED), ("axis", 1)],
}


@pytest.mark.parametrize("cls", list(LAYER_SIGNATURES), ids=lambda c: c.__name__)
def test_layer_constructor_signature(cls):
    assert issubclass(cls, Layer)
    documented = LAYER_SIGNATURES[cls]
    assert_signature_starts_with(cls, documented, cls.__name__)
    tail = signature_params(cls)[-2:]
    assert tail == [("dtype", np.float32), ("name", None)], f"{cls.__name__} ends with {tail}"


@pytest.mark.parametrize("cls", list(LAYER_SIGNATURES), ids=lambda c: c.__name__)
def test_layer_protocol_method_signatures(cls):
    for method, documented in [("forward", [("x", REQUIRED), ("training", False)]),
                               ("__call__", [("x", REQUIRED), ("training", False)]),
                               ("backward", [("dy", REQUIRED)]), ("build", [("input_shape", REQUIRED)]),
                               ("output_shape", [("input_shape", REQUIRED)]),
                               ("named_parameters", []), ("astype", [("dtype", REQUIRED)]),
                               ("to", [("device", REQUIRED)])]:
        assert_signature_starts_with(getattr(cls, method), documented, f"{cls.__name__}.{method}")


def test_constructors_take_documented_positional_order():
    x = rand(2, 3, 8, 8)
    conv = Conv2D(4, 3, 2, "same", 1, False, "relu", 3)
    assert conv.params["weight"].shape == (4, 3, 3, 3) and "bias" not in conv.params
    y = conv(x)
    assert y.shape == (2, 4, 4, 4) and y.min() >= 0
    depthwise = DepthwiseConv2D(3, 2, 1, 1, 2, True, None, 3)
    assert depthwise.params["weight"].shape == (6, 1, 3, 3)
    assert depthwise(x).shape == (2, 6, 6, 6)  # 8 + 2 - 2*2 = 6
    separable = SeparableConv2D(5, 3, 2, 1, "valid", 1, False, None, 3)
    assert separable.params["depthwise_weight"].shape == (6, 1, 3, 3)
    assert separable.params["pointwise_weight"].shape == (5, 6, 1, 1)
    assert "bias" not in separable.params and separable(x).shape == (2, 5, 6, 6)
    transpose = Conv2DTranspose(2, 3, 2, 1, 1, True, None, 3)
    assert transpose.params["weight"].shape == (3, 2, 3, 3) and transpose(x).shape == (2, 2, 16, 16)
    assert MaxPool2D(3, 1, 1)(x).shape == (2, 3, 8, 8)
    assert AvgPool2D(4, 2, 1)(x).shape == (2, 3, 4, 4)
    dense = Dense(5, "tanh", False, 7)
    assert dense.params["weight"].shape == (5, 7) and "bias" not in dense.params
    assert np.abs(dense(rand(3, 7))).max() < 1
    bn = BatchNorm2D(0.3, 1e-3)
    assert (bn.momentum, bn.eps) == (0.3, 1e-3)
    assert Reshape((3, 64))(x).shape == (2, 3, 64)
    assert UpSampling2D(3)(x).shape == (2, 3, 24, 24)
    assert Softmax(2)(x).sum(axis=2) == pytest.approx(np.ones((2, 3, 8)))


def test_in_size_given_builds_at_construction():
    for layer, shape in [(Conv2D(4, 3, in_channels=2), (4, 2, 3, 3)),
                         (DepthwiseConv2D(3, 2, in_channels=2), (4, 1, 3, 3)),
                         (SeparableConv2D(4, 3, in_channels=2), (2, 1, 3, 3)),
                         (Conv2DTranspose(4, 3, in_channels=2), (2, 4, 3, 3)),
                         (Dense(4, in_features=6), (4, 6))]:
        key = "depthwise_weight" if isinstance(layer, SeparableConv2D) else "weight"
        assert layer.params[key].shape == shape, type(layer).__name__


def test_layers_build_themselves_on_first_call():
    layer = Conv2D(4, 3)
    assert not layer.params
    layer(rand(1, 2, 5, 5))
    assert layer.built and layer.params["weight"].shape == (4, 2, 3, 3)
    explicit = Dense(3)
    explicit.build((6,))
    assert explicit.params["weight"].shape == (3, 6)


# ============================================================================ params and buffers
TABLE = [
    (lambda b: Conv2D(4, (3, 2), bias=b), (3, 7, 6), {"weight": (4, 3, 3, 2), "bias": (4,)}),
    (lambda b: DepthwiseConv2D(3, depth_multiplier=2, bias=b), (3, 7, 6),
     {"weight": (6, 1, 3, 3), "bias": (6,)}),
    (lambda b: SeparableConv2D(5, 3, depth_multiplier=2, bias=b), (3, 7, 6),
     {"depthwise_weight": (6, 1, 3, 3), "pointwise_weight": (5, 6, 1, 1), "bias": (5,)}),
    (lambda b: Conv2DTranspose(5, (2, 3), bias=b), (3, 7, 6), {"weight": (3, 5, 2, 3), "bias": (5,)}),
    (lambda b: Dense(4, bias=b), (6,), {"weight": (4, 6), "bias": (4,)}),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("make, sample, expected", TABLE, ids=["conv", "depthwise", "separable",
                                                              "transpose", "dense"])
def test_param_names_and_shapes(make, sample, expected, bias):
    layer = make(bias)
    layer.build(sample)
    if not bias:
        expected = {k: v for k, v in expected.items() if k != "bias"}
    assert {k: v.shape for k, v in layer.params.items()} == expected
    assert {k: v.shape for k, v in layer.grads.items()} == expected
    assert layer.buffers == {}
    triples = list(layer.named_parameters())
    assert [name for name, _, _ in triples] == list(layer.params)
    for name, param, grad in triples:
        assert param is layer.params[name] and grad is layer.grads[name]


@pytest.mark.parametrize("cls, sample", [(BatchNorm1D, (5,)), (BatchNorm2D, (5, 3, 3))])
def test_batchnorm_params_and_buffers(cls, sample):
    layer = cls()
    layer.build(sample)
    assert {k: v.shape for k, v in layer.params.items()} == {"weight": (5,), "bias": (5,)}
    assert {k: v.shape for k, v in layer.buffers.items()} == {"running_mean": (5,),
                                                               "running_var": (5,)}
    np.testing.assert_array_equal(layer.params["weight"], 1)  # torch's initial γ, β, statistics
    np.testing.assert_array_equal(layer.params["bias"], 0)
    np.testing.assert_array_equal(layer.buffers["running_mean"], 0)
    np.testing.assert_array_equal(layer.buffers["running_var"], 1)


def test_named_parameters_are_updated_in_place():
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(3)])
    model.build((1, 5, 5))
    names = [name for name, _, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for _, param, grad in model.named_parameters():
        assert param.shape == grad.shape
        param -= 1.0
    np.testing.assert_array_equal(model.state_dict()["2.bias"], -1.0)


def test_backward_overwrites_grads_and_returns_input_grad():
    layer = Dense(3)
    x, dy = rand(4, 5), rand(4, 3, seed=1)
    layer.forward(x)
    dx = layer.backward(dy)
    layer.forward(x)
    layer.backward(dy)  # overwrite, not accumulate
    w = np.asarray(layer.params["weight"], np.float64)
    assert_close(dx, dy @ w, np.float32)
    assert_close(layer.grads["weight"], dy.T @ x, np.float32)
    assert_close(layer.grads["bias"], dy.sum(0), np.float32)


# ============================================================================ call, shapes, dtype
def shape_cases():
    return [
        (Conv2D(4, 3, stride=2, padding="same"), (3, 9, 8)),
        (DepthwiseConv2D(3, 2, padding=1), (3, 7, 7)),
        (SeparableConv2D(4, 3), (3, 7, 8)),
        (Conv2DTranspose(2, 3, stride=2), (3, 4, 5)),
        (MaxPool2D(), (2, 7, 6)), (AvgPool2D(3), (2, 7, 9)),
        (GlobalAvgPool2D(), (3, 4, 5)), (GlobalMaxPool2D(), (3, 4, 5)), (UpSampling2D(), (2, 3, 4)),
        (Dense(4), (6,)), (Flatten(), (2, 3, 4)), (Reshape((4, 6)), (2, 3, 4)),
        (BatchNorm1D(), (5,)), (BatchNorm2D(), (3, 4, 4)), (Dropout(0.5), (6,)),
        (SpatialDropout2D(0.5), (3, 4, 4)), (GaussianNoise(0.1), (6,)),
        (ReLU(), (3, 4)), (LeakyReLU(), (5,)), (ELU(), (5,)), (Sigmoid(), (5,)), (Tanh(), (5,)),
        (Softmax(), (5,)), (ActivityRegularization(l1=0.1), (5,)),
        (Sequential([Conv2D(2, 3), Flatten(), Dense(3)]), (1, 6, 6)),
        (Residual(Sequential([Conv2D(3, 3, padding="same"), ReLU()])), (3, 5, 5)),
        (Concatenate([Conv2D(2, 1), Conv2D(3, 3, padding="same")]), (3, 5, 5)),
    ]


@pytest.mark.parametrize("layer, sample", shape_cases(), ids=lambda v: type(v).__name__
                         if isinstance(v, Layer) else "")
def test_call_equals_forward_and_output_shape_is_per_sample(layer, sample):
    x = rand(3, *sample)
    y_call = layer(x)
    assert isinstance(y_call, np.ndarray) and y_call.dtype == np.float32
    np.testing.assert_array_equal(y_call, layer.forward(x))
    np.testing.assert_array_equal(layer(x, training=False), layer.forward(x, training=False))
    assert tuple(layer.output_shape(sample)) == y_call.shape[1:]
    assert isinstance(layer.output_shape(sample), tuple)
    dx = layer.backward(np.ones_like(y_call))
    assert dx.shape == x.shape


@pytest.mark.parametrize("layer, sample", shape_cases()[::3], ids=lambda v: type(v).__name__
                         if isinstance(v, Layer) else "")
def test_astype_float64_converts_params_grads_buffers_and_outputs(layer, sample):
    x = rand(2, *sample)
    layer(x.astype(np.float32))
    assert layer.astype(np.float64) is layer
    for store in (layer.state_dict(), {n: g for n, _, g in layer.named_parameters()}):
        assert all(v.dtype == np.float64 for v in store.values())
    y = layer(x)
    assert y.dtype == np.float64
    assert layer.backward(np.ones_like(y)).dtype == np.float64


def test_dtype_argument_float64():
    layer = BatchNorm2D(dtype=np.float64)
    assert layer(rand(2, 3, 2, 2)).dtype == np.float64
    assert layer.buffers["running_var"].dtype == np.float64
    with pytest.raises(TypeError, match="Dense"):
        Dense(3, dtype=np.int32)


# ============================================================================ activations
def reference_activation(name, z):
    if name is None:
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(z))
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


ACTIVATION_LAYERS = [
    (lambda a: Conv2D(3, 3, activation=a), (2, 5, 5)),
    (lambda a: DepthwiseConv2D(3, activation=a), (2, 5, 5)),
    (lambda a: SeparableConv2D(3, 3, activation=a), (2, 5, 5)),
    (lambda a: Conv2DTranspose(3, 2, activation=a), (2, 3, 3)),
    (lambda a: Dense(4, activation=a), (6,)),
]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("make, sample", ACTIVATION_LAYERS,
                         ids=["conv", "depthwise", "separable", "transpose", "dense"])
def test_every_activation_string(make, sample, activation):
    x = rand(2, *sample)
    linear, activated = make(None).astype(np.float64), make(activation).astype(np.float64)
    linear.build(sample)
    activated.build(sample)
    activated.load_state_dict(linear.state_dict())
    expected = reference_activation(activation, linear(x))
    assert_close(activated(x), expected, np.float64, activation)
    if activation is not None:
        assert gradcheck.check_layer(activated, (2, *sample), seed=0, max_checks=20).ok


def test_unknown_activation_is_a_value_error_naming_the_layer():
    with pytest.raises(ValueError, match="Conv2D"):
        Conv2D(3, 3, activation="swishy")
    with pytest.raises(ValueError, match="Dense"):
        Dense(3, activation="swishy")


@pytest.mark.parametrize("layer, name", [(ReLU(), "relu"), (LeakyReLU(), "leaky_relu"),
                                         (ELU(), "elu"), (Sigmoid(), "sigmoid"), (Tanh(), "tanh"),
                                         (Softmax(), "softmax")])
def test_activation_layers_match_their_formulas(layer, name):
    x = rand(4, 3, 2, 2)
    assert_close(layer(x), reference_activation(name, x), np.float32, name)


def test_activation_alphas():
    x = rand(50)[None]
    assert_close(LeakyReLU(0.2)(x), np.where(x > 0, x, 0.2 * x), np.float32)
    assert_close(ELU(0.5)(x), np.where(x > 0, x, 0.5 * np.expm1(x)), np.float32)


# ============================================================================ padding and pooling
def torch_conv(x, layer, pad, stride=1, dilation=1):
    torch = require_torch()
    f = torch.nn.functional
    t = torch.from_numpy(x)
    t = f.pad(t, pad)  # (left, right, top, bottom)
    w = torch.from_numpy(np.asarray(layer.params["weight"], np.float64))
    b = torch.from_numpy(np.asarray(layer.params["bias"], np.float64))
    return f.conv2d(t, w, b, stride=stride, dilation=dilation).numpy()


@pytest.mark.parametrize("hw, kernel, stride, dilation, pad", [
    ((8, 8), 3, 2, 1, (0, 1, 0, 1)),      # odd total 1: the extra row/col at bottom/right
    ((7, 9), 4, 1, 1, (1, 2, 1, 2)),      # total 3 -> 1 top, 2 bottom
    ((7, 9), 3, 1, 2, (2, 2, 2, 2)),      # dilated kernel spans 5
    ((9, 10), 3, 3, 1, (0, 0, 1, 1)),     # rows need none, columns 2 (evenly split)
])
def test_same_padding_follows_tensorflow_rule(hw, kernel, stride, dilation, pad):
    x = rand(2, 2, *hw)
    layer = Conv2D(3, kernel, stride=stride, padding="same", dilation=dilation, dtype=np.float64)
    y = layer(x)
    assert y.shape[2:] == tuple(-(-s // stride) for s in hw)  # ceil(H / stride)
    top, bottom, left, right = pad
    assert_close(y, torch_conv(x, layer, (left, right, top, bottom), stride, dilation), np.float64)


@pytest.mark.parametrize("padding, torch_pad", [(0, (0, 0, 0, 0)), ("valid", (0, 0, 0, 0)),
                                                (2, (2, 2, 2, 2)), ((1, 2), (2, 2, 1, 1))])
def test_int_pair_and_valid_padding(padding, torch_pad):
    x = rand(2, 2, 6, 7)
    layer = Conv2D(3, 3, stride=2, padding=padding, dilation=2, dtype=np.float64)
    assert_close(layer(x), torch_conv(x, layer, torch_pad, 2, 2), np.float64)


def test_same_padding_for_depthwise_separable_and_transpose():
    torch = require_torch()
    f = torch.nn.functional
    x = rand(2, 3, 7, 8)
    depthwise = DepthwiseConv2D(3, 2, stride=2, padding="same", dtype=np.float64)
    y = depthwise(x)
    # rows: 4 outputs need (4-1)*2+3-7 = 2 -> (1, 1); columns (4-1)*2+3-8 = 1 -> (0, 1)
    expected = f.conv2d(f.pad(torch.from_numpy(x), (0, 1, 1, 1)),
                        torch.from_numpy(depthwise.params["weight"]),
                        torch.from_numpy(depthwise.params["bias"]), stride=2, groups=3).numpy()
    assert_close(y, expected, np.float64, "depthwise 'same'")
    assert SeparableConv2D(4, 4, padding="same")(x).shape == (2, 4, 7, 8)

    # Conv2DTranspose(padding='same') outputs H*stride and is the adjoint of Conv2D('same').
    transpose = Conv2DTranspose(2, 3, stride=2, padding="same", bias=False, dtype=np.float64)
    conv = Conv2D(3, 3, stride=2, padding="same", bias=False, dtype=np.float64)
    out = transpose(x)
    assert out.shape == (2, 2, 14, 16)
    conv.build(out.shape[1:])
    conv.params["weight"][...] = transpose.params["weight"]
    z = rand(*out.shape, seed=3)
    assert np.sum(conv(z) * x) == pytest.approx(np.sum(out * z), rel=1e-10)


def test_output_size_formula():
    layer = Conv2D(2, (3, 2), stride=(2, 3), padding=(1, 0), dilation=(2, 1))
    h, w = 11, 10
    expected = ((h + 2 - 2 * 2 - 1) // 2 + 1, (w + 0 - 1 * 1 - 1) // 3 + 1)
    assert layer.output_shape((3, h, w)) == (2, *expected)
    assert layer(rand(1, 3, h, w)).shape[2:] == expected


def test_pool_stride_none_means_pool_size_and_torch_padding_rules():
    torch = require_torch()
    f = torch.nn.functional
    x = -np.abs(rand(2, 3, 7, 8)) - 0.1  # all negative: a padded zero must never win the max
    t = torch.from_numpy(x)
    assert_close(MaxPool2D(3, dtype=np.float64)(x), f.max_pool2d(t, 3).numpy(), np.float64)
    assert_close(AvgPool2D(3, dtype=np.float64)(x), f.avg_pool2d(t, 3).numpy(), np.float64)
    assert_close(MaxPool2D(3, 2, 1, dtype=np.float64)(x), f.max_pool2d(t, 3, 2, 1).numpy(),
                 np.float64)
    assert_close(AvgPool2D(3, 2, 1, dtype=np.float64)(x),
                 f.avg_pool2d(t, 3, 2, 1, count_include_pad=True).numpy(), np.float64)
    assert MaxPool2D()(x).shape == (2, 3, 3, 4)


def test_global_pools_and_upsampling():
    x = rand(2, 3, 4, 5)
    assert GlobalAvgPool2D()(x).shape == (2, 3)
    assert_close(GlobalAvgPool2D()(x), x.mean(axis=(2, 3)), np.float32)
    assert_close(GlobalMaxPool2D()(x), x.max(axis=(2, 3)), np.float32)
    up = UpSampling2D()(x)
    assert_close(up, x.repeat(2, axis=2).repeat(2, axis=3), np.float32)


def test_flatten_and_reshape():
    x = rand(2, 3, 4, 5)
    assert_close(Flatten()(x), x.reshape(2, -1), np.float32)
    assert_close(Reshape((5, 12))(x), x.reshape(2, 5, 12), np.float32)


# ============================================================================ torch parity of the table
def parity_cases(torch):
    nn = torch.nn
    return [
        (Conv2D(4, 3, stride=2, padding=1), nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 6, 6)),
        (DepthwiseConv2D(3, 2, padding=1), nn.Conv2d(3, 6, 3, padding=1, groups=3), (2, 3, 5, 5)),
        (Conv2DTranspose(2, 3, stride=2, padding=1, output_padding=1),
         nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 4)),
        (Dense(4), nn.Linear(5, 4), (3, 5)),
        (Conv2D(2, 3, bias=False), nn.Conv2d(3, 2, 3, bias=False), (1, 3, 5, 5)),
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_table_layers_match_torch_modules(dtype):
    torch = require_torch()
    for i, (layer, module, shape) in enumerate(parity_cases(torch)):
        check_torch_parity(layer, module, rand(*shape, seed=i), dtype)


def test_separable_conv_matches_torch_depthwise_then_pointwise():
    torch = require_torch()
    nn = torch.nn
    layer = SeparableConv2D(4, 3, depth_multiplier=2, padding=1, dtype=np.float64)
    x = rand(2, 3, 5, 5)
    layer.build(x.shape[1:])
    state = layer.state_dict()
    dw = nn.Conv2d(3, 6, 3, padding=1, groups=3, bias=False).double()
    pw = nn.Conv2d(6, 4, 1).double()
    dw.weight.data = torch.from_numpy(state["depthwise_weight"])
    pw.weight.data = torch.from_numpy(state["pointwise_weight"])
    pw.bias.data = torch.from_numpy(state["bias"])
    assert_close(layer(x), pw(dw(torch.from_numpy(x))).detach().numpy(), np.float64)


# ============================================================================ normalization, dropout
def test_batchnorm_torch_semantics_by_hand():
    momentum, eps = 0.3, 1e-5
    layer = BatchNorm2D(momentum, eps, dtype=np.float64)
    x = rand(4, 3, 2, 2) * 2 + 1
    y = layer(x, training=True)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    unbiased = var * 16 / 15
    c = (slice(None), None, None)
    assert_close(y, (x - mean[c]) / np.sqrt(var[c] + eps), np.float64, "batch statistics")
    assert_close(layer.buffers["running_mean"], momentum * mean, np.float64)
    assert_close(layer.buffers["running_var"], (1 - momentum) + momentum * unbiased, np.float64)
    layer.params["weight"][...] = 2.0
    y_eval = layer(x, training=False)
    expected = 2 * (x - momentum * mean[c]) / np.sqrt(layer.buffers["running_var"][c] + eps)
    assert_close(y_eval, expected, np.float64, "running statistics in evaluation")

    bn1 = BatchNorm1D(dtype=np.float64)
    z = rand(6, 4)
    assert_close(bn1(z, training=True), (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5), np.float64)
    assert_close(bn1.buffers["running_var"], 0.9 + 0.1 * z.var(0, ddof=1), np.float64)


def test_dropout_is_inverted_and_identity_in_evaluation():
    rate = 0.25
    layer = Dropout(rate)
    x = np.ones((50, 80), np.float32)
    np.testing.assert_array_equal(layer(x), x)
    y = layer(x, training=True)
    kept = y != 0
    assert_close(y[kept], np.full(kept.sum(), 1 / (1 - rate)), np.float32)
    assert 0.70 < kept.mean() < 0.80
    dy = rand(50, 80)
    dx = layer.backward(dy)
    assert_close(dx, np.where(kept, dy / (1 - rate), 0), np.float32)


def test_spatial_dropout_drops_whole_channels():
    layer = SpatialDropout2D(0.5)
    y = layer(np.ones((20, 8, 3, 3)), training=True)
    per_channel = y.reshape(20, 8, 9)
    assert np.all(per_channel.min(axis=2) == per_channel.max(axis=2))
    assert set(np.unique(per_channel)) == {0.0, 2.0}
    np.testing.assert_array_equal(layer(np.ones((2, 8, 3, 3))), 1)


def test_gaussian_noise_only_in_training():
    layer = GaussianNoise(0.5)
    x = np.zeros((100, 100), np.float32)
    np.testing.assert_array_equal(layer(x), x)
    noise = layer(x, training=True)
    assert noise.std() == pytest.approx(0.5, rel=0.05)
    dy = rand(100, 100)
    assert_close(layer.backward(dy), dy, np.float32)


def test_activity_regularization_identity_with_penalty_gradient():
    l1, l2 = 0.03, 0.2
    model = Sequential([Dense(4), ActivityRegularization(l1=l1, l2=l2)], dtype=np.float64)
    x = rand(3, 5)
    y = model(x, training=True)
    assert_close(y, model.layers[0](x), np.float64, "identity forward")
    model(x, training=True)
    penalty = model.regularization_loss()
    assert penalty > 0
    dx = model.backward(np.zeros_like(y))  # only the penalty's own gradient flows

    def penalty_at(x_value):
        model(x_value, training=True)
        return model.regularization_loss()

    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = 1e-6
        numeric[i] = (penalty_at(x + step) - penalty_at(x - step)) / 2e-6
    np.testing.assert_allclose(dx, numeric, rtol=1e-5, atol=1e-9)


# ============================================================================ containers
def test_residual_and_concatenate_semantics():
    x = rand(2, 3, 5, 5)
    block = Conv2D(3, 3, padding="same")
    residual = Residual(block)
    assert_close(residual(x), block(x) + x, np.float32)
    shortcut = Conv2D(3, 1)
    assert_close(Residual(block, shortcut)(x), block(x) + shortcut(x), np.float32)
    a, b = Conv2D(2, 1), MaxPool2D(3, 1, 1)
    assert_close(Concatenate([a, b])(x), np.concatenate([a(x), b(x)], axis=1), np.float32)
    assert Concatenate([a, b], 1).output_shape((3, 5, 5)) == (5, 5, 5)


def test_sequential_names_load_into_torch_sequential():
    torch = require_torch()
    nn = torch.nn
    model = Sequential([Conv2D(4, 3, activation="relu"), BatchNorm2D(), MaxPool2D(), Flatten(),
                        Dense(3)], input_shape=(2, 6, 6))
    assert model.built
    module = nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU()), nn.BatchNorm2d(4),
                           nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    # torch holds the conv in a sub-Sequential so its activation can follow it: rename.
    state = {k.replace("0.", "0.0.", 1) if k.startswith("0.") else k: v for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected and [k for k in missing if "num_batches" not in k] == []
    x = rand(3, 2, 6, 6).astype(np.float32)
    module.eval()
    assert_close(model.predict(x), module(torch.from_numpy(x)).detach().numpy(), np.float32)


# ============================================================================ losses
def test_loss_signatures_and_names():
    assert_signature_starts_with(losses.CrossEntropy, [("label_smoothing", 0.0)], "CrossEntropy")
    assert_signature_starts_with(losses.BinaryCrossEntropy, [("from_logits", True)], "BCE")
    assert signature_params(losses.MSE) == [] and signature_params(losses.MAE) == []
    for name, cls in [("cross_entropy", losses.CrossEntropy), ("bce", losses.BinaryCrossEntropy),
                      ("mse", losses.MSE), ("mae", losses.MAE)]:
        model = Sequential([Dense(3)])
        model.compile(optim.SGD(model, lr=0.1), loss=name)
        assert isinstance(model.loss, cls), name


def loss_cases(torch):
    f = torch.nn.functional
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 2, 3])
    onehot = np.eye(4)[labels]
    real = rng.standard_normal((5, 4))
    probs = 1 / (1 + np.exp(-real))
    binary = (rng.random((5, 4)) > 0.5).astype(np.float64)
    return [
        (losses.CrossEntropy(), logits, labels, lambda p: f.cross_entropy(p, torch.from_numpy(labels))),
        (losses.CrossEntropy(0.1), logits, labels,
         lambda p: f.cross_entropy(p, torch.from_numpy(labels), label_smoothing=0.1)),
        (losses.CrossEntropy(), logits, onehot, lambda p: f.cross_entropy(p, torch.from_numpy(onehot))),
        (losses.BinaryCrossEntropy(), real, binary,
         lambda p: f.binary_cross_entropy_with_logits(p, torch.from_numpy(binary))),
        (losses.BinaryCrossEntropy(from_logits=False), probs, binary,
         lambda p: f.binary_cross_entropy(p, torch.from_numpy(binary))),
        (losses.MSE(), real, logits, lambda p: f.mse_loss(p, torch.from_numpy(logits))),
        (losses.MAE(), real, logits, lambda p: f.l1_loss(p, torch.from_numpy(logits))),
    ]


def test_losses_forward_float_backward_dpred_match_torch():
    torch = require_torch()
    for loss, pred, target, torch_loss in loss_cases(torch):
        value = loss.forward(pred, target)
        assert isinstance(value, float), type(value)
        tp = torch.from_numpy(pred.copy()).requires_grad_(True)
        expected = torch_loss(tp)
        expected.backward()
        assert value == pytest.approx(expected.item(), rel=1e-10), type(loss).__name__
        dpred = loss.backward()
        assert dpred.shape == pred.shape
        assert_close(dpred, tp.grad.numpy(), np.float64, type(loss).__name__)


def test_labels_out_of_range_raise_value_error():
    loss = losses.CrossEntropy()
    with pytest.raises(ValueError):
        loss.forward(rand(3, 4), np.array([0, 4, 1]))
    with pytest.raises(ValueError):
        loss.forward(rand(3, 4), np.array([0, -1, 1]))


# ============================================================================ optimizers
OPTIMIZER_SIGNATURES = {
    optim.SGD: [("model", REQUIRED), ("lr", REQUIRED), ("momentum", 0.0), ("nesterov", False),
                ("weight_decay", 0.0)],
    optim.Adam: [("model", REQUIRED), ("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8),
                 ("weight_decay", 0.0)],
    optim.AdamW: [("model", REQUIRED)], optim.RMSprop: [("model", REQUIRED)],
    optim.StepLR: [("optimizer", REQUIRED), ("step_size", REQUIRED), ("gamma", REQUIRED)],
    optim.CosineAnnealingLR: [("optimizer", REQUIRED), ("T_max", REQUIRED)],
}


@pytest.mark.parametrize("cls", list(OPTIMIZER_SIGNATURES), ids=lambda c: c.__name__)
def test_optimizer_and_scheduler_signatures(cls):
    assert_signature_starts_with(cls, OPTIMIZER_SIGNATURES[cls], cls.__name__)


TORCH_HYPERPARAMETERS = {
    "SGD": ["lr", "momentum", "dampening", "weight_decay", "nesterov"],
    "Adam": ["lr", "betas", "eps", "weight_decay", "amsgrad"],
    "AdamW": ["lr", "betas", "eps", "weight_decay", "amsgrad"],
    "RMSprop": ["lr", "alpha", "eps", "weight_decay", "momentum", "centered"],
    "StepLR": ["step_size", "gamma"], "CosineAnnealingLR": ["T_max", "eta_min"],
}


@pytest.mark.parametrize("name", list(TORCH_HYPERPARAMETERS))
def test_defaults_identical_to_torch_optim(name):
    torch = require_torch()
    home = torch.optim if hasattr(torch.optim, name) else torch.optim.lr_scheduler
    theirs = dict(signature_params(getattr(home, name)))
    ours = dict(signature_params(getattr(optim, name)))
    for arg in TORCH_HYPERPARAMETERS[name]:
        assert arg in ours, f"{name} lacks torch's {arg}"
        assert ours[arg] == theirs[arg], f"{name}({arg}=...): ours {ours[arg]!r}, torch {theirs[arg]!r}"


OPTIMIZER_RUNS = [  # (name, positional args after the model, keyword args), torch given the same
    ("SGD", (0.1,), {}), ("SGD", (0.1, 0.9, True, 0.01), {}), ("SGD", (), {}),
    ("SGD", (0.1,), dict(momentum=0.5, dampening=0.2, weight_decay=0.1)),
    ("Adam", (), {}), ("Adam", (0.01, (0.8, 0.9), 1e-6, 0.1), {}), ("Adam", (), dict(amsgrad=True)),
    ("AdamW", (), {}), ("AdamW", (0.01,), dict(betas=(0.8, 0.9), weight_decay=0.1)),
    ("RMSprop", (), {}), ("RMSprop", (0.001,), dict(momentum=0.5, centered=True, weight_decay=0.1)),
]
TORCH_ORDER = {"SGD": ["lr", "momentum", "nesterov", "weight_decay"],
               "Adam": ["lr", "betas", "eps", "weight_decay"], "AdamW": ["lr"], "RMSprop": ["lr"]}


@pytest.mark.parametrize("name, args, kwargs", OPTIMIZER_RUNS)
def test_update_rules_and_defaults_match_torch(name, args, kwargs):
    torch = require_torch()
    layer = Dense(3, dtype=np.float64)
    layer.build((4,))
    module = torch.nn.Linear(4, 3).double()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    ours = getattr(optim, name)(layer, *args, **kwargs)
    torch_kwargs = dict(zip(TORCH_ORDER[name], args), **kwargs)  # the contract's order, not torch's
    theirs = getattr(torch.optim, name)(module.parameters(), **torch_kwargs)
    for step in range(3):
        x, dy = rand(2, 4, seed=step), rand(2, 3, seed=10 + step)
        layer.forward(x)
        layer.backward(dy)
        ours.step()
        theirs.zero_grad()
        module(torch.from_numpy(x)).backward(torch.from_numpy(dy))
        theirs.step()
    for key, value in module.state_dict().items():
        assert_close(layer.params[key], value.numpy(), np.float64, f"{name} {args} {kwargs} {key}")


def test_optimizer_created_before_the_model_is_built():
    model = Sequential([Flatten(), Dense(3)])
    opt = optim.SGD(model, 0.5)
    x = rand(4, 2, 3)
    y = model(x, training=True)
    model.backward(np.ones_like(y))
    before = {name: p.copy() for name, p, _ in model.named_parameters()}
    grads = {name: g.copy() for name, _, g in model.named_parameters()}
    opt.step()
    for name, param, _ in model.named_parameters():
        assert_close(param, before[name] - 0.5 * grads[name], np.float32, name)


def test_schedulers_match_torch():
    torch = require_torch()
    for make_ours, make_theirs in [
            (lambda o: optim.StepLR(o, 2, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5)),
            (lambda o: optim.CosineAnnealingLR(o, 4),
             lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 4))]:
        ours = optim.SGD(Dense(2), lr=0.1)
        theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        our_sched, their_sched = make_ours(ours), make_theirs(theirs)
        for _ in range(6):
            theirs.step()
            our_sched.step()
            their_sched.step()
            assert ours.lr == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12)


# ============================================================================ models and training
def tiny_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    y[::5] = 2
    return x, y


def tiny_model(**kwargs):
    return Sequential([Conv2D(4, 3, padding="same", activation="relu"), MaxPool2D(), Flatten(),
                       Dense(3)], **kwargs)


def test_training_method_signatures():
    documented = {
        "compile": [("optimizer", REQUIRED), ("loss", REQUIRED), ("metrics", ("accuracy",))],
        "fit": [("x", REQUIRED), ("y", REQUIRED), ("epochs", 1), ("batch_size", 32),
                ("validation_data", None), ("callbacks", ()), ("shuffle", True), ("verbose", 1)],
        "evaluate": [("x", REQUIRED), ("y", REQUIRED)],
        "predict": [("x", REQUIRED), ("batch_size", 256)],
        "build": [("input_shape", REQUIRED)], "forward": [("x", REQUIRED), ("training", False)],
        "backward": [("dy", REQUIRED)], "to": [("device", REQUIRED)],
        "load_state_dict": [("state", REQUIRED)], "save": [("path", REQUIRED)],
        "summary": [], "parameters_count": [], "state_dict": [],
    }
    for method, params in documented.items():
        for cls in (models.Sequential, models.Autoencoder):
            assert_signature_starts_with(getattr(cls, method), params, f"{cls.__name__}.{method}")


def test_compile_fit_evaluate_predict():
    torch = require_torch()
    x, y = tiny_data()
    minicnn.seed(0)
    model = tiny_model()
    assert model.compile(optim.Adam(model, 0.01), "cross_entropy") in (None, model)
    history = model.fit(x, y, 3, 16, (x[:10], y[:10]), (), True, 0)  # documented positional order
    assert isinstance(history.history, dict)
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        assert len(history.history[key]) == 3, key
        assert all(isinstance(v, float) for v in history.history[key])
    result = model.evaluate(x, y)
    assert isinstance(result, dict) and set(result) >= {"loss", "accuracy"}
    pred = model.predict(x)
    assert isinstance(pred, np.ndarray) and pred.shape == (40, 3)
    np.testing.assert_allclose(model.predict(x, batch_size=7), pred, rtol=1e-6)
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(pred.astype(np.float64)),
                                                 torch.from_numpy(y)).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["accuracy"] == pytest.approx(float((pred.argmax(1) == y).mean()))
    model.compile(optim.SGD(model, 0.1), "cross_entropy", metrics=())
    assert set(model.fit(x, y, verbose=0).history) >= {"loss"}


def test_summary_parameters_count_and_device(capsys):
    model = tiny_model(input_shape=(1, 8, 8))
    expected = (4 * 1 * 9 + 4) + (3 * 64 + 3)
    assert model.parameters_count() == expected
    assert Dense(3, bias=False, in_features=4).parameters_count() == 12
    returned = model.summary()
    text = capsys.readouterr().out + str(returned or "")
    for needle in ("Conv2D", "MaxPool2D", "Flatten", "Dense", "4, 8, 8", "4, 4, 4", "64", "195",
                   str(expected)):
        assert needle in text, needle
    x = tiny_data()[0]
    before = model.predict(x)
    assert model.to("numpy") is model
    np.testing.assert_array_equal(model.predict(x), before)


def test_state_dict_save_and_load(tmp_path):
    x, y = tiny_data()
    model = Sequential([Conv2D(3, 3), BatchNorm2D(), Flatten(), Dropout(0.2), Dense(3)])
    model.compile(optim.SGD(model, 0.1), "cross_entropy")
    model.fit(x, y, epochs=1, verbose=0)
    state = model.state_dict()
    assert {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
            "4.weight", "4.bias"} == set(state)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    clone = Sequential([Conv2D(3, 3), BatchNorm2D(), Flatten(), Dropout(0.2), Dense(3)])
    clone.build((1, 8, 8))
    assert clone.load_state_dict(state) is None
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    with pytest.raises(ValueError):
        clone.load_state_dict({k: v for k, v in state.items() if k != "4.bias"})

    path = tmp_path / "model.npz"
    model.save(path)
    restored = minicnn.load(path)
    assert isinstance(restored, models.Sequential)
    np.testing.assert_array_equal(restored.predict(x), model.predict(x))
    assert restored.state_dict().keys() == state.keys()


def test_load_in_a_fresh_process_without_the_building_code(tmp_path):
    import subprocess
    import sys

    model = Sequential([Residual(Sequential([Conv2D(2, 3, padding="same"), BatchNorm2D()])),
                        Concatenate([Conv2D(2, 1, activation="relu"), AvgPool2D(3, 1, 1)]),
                        GlobalAvgPool2D(), Dense(3, activation="softmax")], input_shape=(2, 6, 6))
    x = rand(4, 2, 6, 6).astype(np.float32)
    model.save(tmp_path / "net.npz")
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np, minicnn; d = sys.argv[1]; m = minicnn.load(d + '/net.npz'); "
              "np.save(d + '/y.npy', m.predict(np.load(d + '/x.npy')))")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model.predict(x))


def test_model_astype_float64():
    model = tiny_model()
    model.build((1, 8, 8))
    assert model.astype(np.float64) is model
    assert all(p.dtype == np.float64 and g.dtype == np.float64 for _, p, g in model.named_parameters())
    assert model.predict(tiny_data()[0]).dtype == np.float64


def test_seed_reproduces_init_dropout_and_shuffling():
    x, y = tiny_data()

    def run(n):
        minicnn.seed(n)
        model = Sequential([Flatten(), Dropout(0.3), Dense(3)])
        model.compile(optim.SGD(model, 0.1), "cross_entropy")
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        return model.state_dict(), history.history["loss"]

    (state_a, loss_a), (state_b, loss_b), (state_c, loss_c) = run(7), run(7), run(8)
    assert loss_a == loss_b and loss_a != loss_c
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key])
    assert not np.array_equal(state_a["2.weight"], state_c["2.weight"])

    def augment(n):
        minicnn.seed(n)
        flip = minicnn.data.RandomFlip(p=0.5)
        loader = minicnn.data.DataLoader(x, y, batch_size=16, shuffle=True, augment=flip)
        return np.concatenate([xb for xb, _ in loader])

    np.testing.assert_array_equal(augment(3), augment(3))
    assert not np.array_equal(augment(3), augment(4))


# ============================================================================ callbacks
def test_callback_signatures():
    assert_signature_starts_with(callbacks.EarlyStopping, [("monitor", "val_loss")], "EarlyStopping")
    names = [n for n, _ in signature_params(callbacks.EarlyStopping)]
    assert {"patience", "restore_best_weights"} <= set(names)
    assert names.index("patience") == 1
    assert_signature_starts_with(callbacks.ModelCheckpoint, [("path", REQUIRED)], "ModelCheckpoint")
    assert_signature_starts_with(callbacks.LearningRateScheduler, [("scheduler", REQUIRED)], "LRS")
    assert_signature_starts_with(callbacks.FilterRecorder, [("layer", REQUIRED)], "FilterRecorder")


def counting_metric():
    """A metric whose value rises on every call; it snapshots the weights it was called with."""
    calls, snapshots = [], []

    def rising(pred, target):
        calls.append(len(calls))
        snapshots.append(model_ref[0].state_dict())
        return float(len(calls))

    model_ref = [None]
    return rising, model_ref, snapshots


def test_early_stopping_restores_best_weights_and_checkpoint_saves(tmp_path):
    x, y = tiny_data()
    rising, model_ref, snapshots = counting_metric()
    model = tiny_model()
    model_ref[0] = model
    model.compile(optim.SGD(model, 0.1), "cross_entropy", metrics=(rising,))
    stopper = callbacks.EarlyStopping(monitor="val_rising", patience=1, restore_best_weights=True)
    path = tmp_path / "ckpt.npz"
    history = model.fit(x, y, epochs=8, batch_size=40, validation_data=(x, y), verbose=0,
                        callbacks=[stopper, callbacks.ModelCheckpoint(path)])
    assert history.history["val_rising"][0] < history.history["val_rising"][1]
    assert len(history.history["loss"]) < 8
    best = snapshots[1]  # call 0: training batch of epoch 0; call 1: its validation
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, best[key])
    assert path.exists() and isinstance(minicnn.load(path), models.Sequential)


def test_early_stopping_patience_counts_like_keras():
    x, y = tiny_data()
    rising, model_ref, _ = counting_metric()
    model = tiny_model()
    model_ref[0] = model
    model.compile(optim.SGD(model, 0.1), "cross_entropy", metrics=(rising,))
    history = model.fit(x, y, epochs=8, batch_size=40, validation_data=(x, y), verbose=0,
                        callbacks=[callbacks.EarlyStopping(monitor="val_rising", patience=2)])
    assert len(history.history["loss"]) == 3  # best at epoch 0, two epochs without improvement


def test_learning_rate_scheduler_callback_with_step_lr():
    x, y = tiny_data()
    model = tiny_model()
    opt = optim.SGD(model, 0.1)
    model.compile(opt, "cross_entropy")
    history = model.fit(x, y, epochs=4, verbose=0,
                        callbacks=[callbacks.LearningRateScheduler(optim.StepLR(opt, 1, 0.5))])
    assert opt.lr == pytest.approx(0.1 * 0.5 ** 4)
    if "lr" in history.history:
        assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025, 0.0125])


# ============================================================================ model zoo, autoencoders
ZOO = ["lenet5", "mlp", "simple_cnn", "vgg_mini", "mobilenet_mini", "resnet_mini", "inception_mini"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_factory_signature_and_unbuilt_sequential(name):
    factory = getattr(models, name)
    params = dict(signature_params(factory))
    assert params.get("num_classes") == 10 and params.get("in_channels") == 1, params
    assert all(default is not REQUIRED for default in params.values())
    model = factory()
    assert isinstance(model, models.Sequential) and not model.built
    other = factory(num_classes=5, in_channels=3)
    assert other.output_shape((3, 32, 32)) == (5,)
    if name in ("lenet5", "mlp", "simple_cnn"):
        assert model.output_shape((1, 28, 28)) == (10,)
        assert other.predict(rand(2, 3, 32, 32).astype(np.float32)).shape == (2, 5)


def layer_types(model):
    return {type(layer).__name__ for layer in model.layers_recursive()}


def test_lenet5_variants_and_mlp_arguments():
    assert_signature_starts_with(models.mlp, [("hidden", REQUIRED), ("dropout", REQUIRED)], "mlp")
    modern = layer_types(models.lenet5())
    assert {"ReLU", "MaxPool2D"} <= modern and not {"Tanh", "AvgPool2D"} & modern
    classic = layer_types(models.lenet5(activation="tanh", pool="avg"))
    assert {"Tanh", "AvgPool2D"} <= classic and not {"ReLU", "MaxPool2D"} & classic
    net = models.mlp((16, 8), 0.5)
    net.build((1, 28, 28))
    assert [p.shape for n, p, _ in net.named_parameters() if n.endswith("weight")] == \
        [(16, 784), (8, 16), (10, 8)]
    assert any(isinstance(l, Dropout) and l.rate == 0.5 for l in net.layers_recursive())


def test_autoencoder_contract():
    assert_signature_starts_with(models.Autoencoder, [("encoder", REQUIRED), ("decoder", REQUIRED)],
                                 "Autoencoder")
    assert_signature_starts_with(models.dense_autoencoder, [
        ("input_dim", 784), ("hidden", ()), ("code_size", 32), ("sparse_l1", 0.0),
        ("noise_stddev", 0.0)], "dense_autoencoder")
    assert_signature_starts_with(models.conv_autoencoder, [
        ("in_channels", 1), ("filters", (16, 32)), ("code_channels", 8)], "conv_autoencoder")

    x = np.random.default_rng(0).random((16, 20)).astype(np.float32)
    ae = models.dense_autoencoder(20, (12,), 4)
    assert isinstance(ae, models.Autoencoder)
    ae.compile(optim.Adam(ae, 0.01), "mse")
    history = ae.fit(x, x, epochs=3, batch_size=8, verbose=0)
    assert len(history.history["loss"]) == 3
    code = ae.encode(x)
    assert code.shape == (16, 4)
    recon = ae.decode(code)
    np.testing.assert_allclose(recon, ae.predict(x), rtol=1e-5, atol=1e-6)
    assert "ActivityRegularization" in layer_types(models.dense_autoencoder(20, code_size=4,
                                                                            sparse_l1=1e-3))
    assert "GaussianNoise" in layer_types(models.dense_autoencoder(20, code_size=4,
                                                                   noise_stddev=0.2))

    conv = models.conv_autoencoder(2, (4, 6), 3)
    images = np.random.default_rng(1).random((2, 2, 8, 8)).astype(np.float32)
    assert conv.predict(images).shape == images.shape
    assert conv.encode(images).shape[:2] == (2, 3)

    enc, dec = Sequential([Dense(3)]), Sequential([Dense(20)])
    hand = models.Autoencoder(enc, dec)
    assert hand.predict(x).shape == x.shape


# ============================================================================ gradient checking
def test_gradcheck_contract():
    assert_signature_starts_with(gradcheck.check_layer, [("layer", REQUIRED), ("input_shape", REQUIRED),
                                                         ("seed", 0)], "check_layer")
    assert_signature_starts_with(gradcheck.check_loss, [("loss", REQUIRED), ("pred_shape", REQUIRED),
                                                        ("target", REQUIRED)], "check_loss")
    assert_signature_starts_with(gradcheck.check_model, [("model", REQUIRED), ("x", REQUIRED),
                                                         ("y", REQUIRED), ("loss", REQUIRED)],
                                 "check_model")
    report = gradcheck.check_layer(Conv2D(2, 3, padding=1), (2, 2, 4, 4), seed=0)
    assert report.ok and set(report.max_rel_error) == {"input", "weight", "bias"}
    assert all(isinstance(v, float) and v < 1e-5 for v in report.max_rel_error.values())

    class WrongDense(Dense):
        def backward(self, dy):
            dx = super().backward(dy)
            self.grads["bias"] = self.grads["bias"] * 1.01
            return dx

    broken = gradcheck.check_layer(WrongDense(3), (4, 5), seed=0)
    assert not broken.ok and broken.max_rel_error["bias"] > 1e-3
    assert broken.max_rel_error["input"] < 1e-5

    assert gradcheck.check_loss(losses.CrossEntropy(), (4, 3), np.array([0, 1, 2, 0])).ok
    x, y = tiny_data(6)
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(3)])
    assert gradcheck.check_model(model, x, y, "cross_entropy").ok


# ============================================================================ backends and kernels
def test_backend_contract():
    names = backend.available()
    assert isinstance(names, list) and "numpy" in names
    backend.set_backend("numpy")
    assert backend.get_array_module(np.zeros(2)) is np
    assert issubclass(backend.BackendUnavailableError, Exception)
    with pytest.raises(ValueError):
        backend.set_backend("tensorflow")
    if "cupy" not in names:
        with pytest.raises(backend.BackendUnavailableError, match="install"):
            backend.set_backend("cupy")
        with pytest.raises(backend.BackendUnavailableError):
            models.lenet5().to("cupy")


def test_kernels_im2col_col2im_match_reference_and_torch():
    torch = require_torch()
    from minicnn import kernels
    x = rand(2, 3, 6, 7)
    args = ((3, 2), (2, 1), (1, 0, 2, 1), (1, 2))
    cols = kernels.im2col(x, *args)
    np.testing.assert_allclose(cols, kernels.reference.im2col(x, *args), rtol=1e-12)
    w = rand(4, 3, 3, 2, seed=1)
    ho, wo = kernels.output_hw(x.shape, *args)
    y = (w.reshape(4, -1) @ cols).reshape(4, 2, ho, wo).transpose(1, 0, 2, 3)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 0), (2, 1)))
    expected = torch.nn.functional.conv2d(torch.from_numpy(padded), torch.from_numpy(w),
                                          stride=(2, 1), dilation=(1, 2)).numpy()
    assert_close(y, expected, np.float64, "im2col GEMM")
    c = rand(*cols.shape, seed=2)  # col2im is the adjoint: <im2col(x), c> = <x, col2im(c)>
    back = kernels.col2im(c, x.shape, *args)
    assert np.sum(cols * c) == pytest.approx(np.sum(x * back), rel=1e-10)
    np.testing.assert_allclose(back, kernels.reference.col2im(c, x.shape, *args), rtol=1e-12)


# ============================================================================ data, metrics, viz
def write_idx(path, array, magic, compress):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("loader_name, compress", [("load_mnist", True), ("load_fashion_mnist", False)])
def test_idx_loaders(tmp_path, loader_name, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28))
    labels = np.array([3, 1, 4, 1, 5])
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, 2051, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, 2049, compress)
    x, y = getattr(minicnn.data, loader_name)(tmp_path, "test")
    assert x.dtype == np.float32 and x.shape == (5, 1, 28, 28)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-6)


def test_cifar10_loader(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [7, 0, 9]}, f, protocol=2)
    x, y = minicnn.data.load_cifar10(tmp_path, "test")
    assert x.dtype == np.float32 and x.shape == (3, 3, 32, 32) and y.dtype == np.int64
    np.testing.assert_allclose(x[1, 2], data[1, 2048:].reshape(32, 32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, [7, 0, 9])


def test_digits_dataloader_transforms_split():
    x, y = minicnn.data.load_digits()
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1] == 1 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and len(x) == len(y) > 1000
    batches = list(minicnn.data.DataLoader(x[:70], y[:70], batch_size=32, shuffle=False))
    assert [len(b[0]) for b in batches] == [32, 32, 6]
    np.testing.assert_array_equal(batches[1][1], y[32:64])
    x_tr, x_te, y_tr, y_te = minicnn.data.train_test_split(x, y, test_size=0.25)
    assert len(x_te) == int(np.ceil(0.25 * len(x))) and len(x_tr) + len(x_te) == len(x)
    assert len(y_tr) == len(x_tr) and len(y_te) == len(x_te)
    flip = minicnn.data.RandomFlip
    assert issubclass(flip, minicnn.data.Transform)


def test_metrics_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    m = minicnn.metrics
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 50)
    y_pred = np.where(rng.random(50) < 0.8, y_true, 1 - y_true)
    scores = y_true * 0.5 + rng.random(50)
    assert m.accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert m.precision(y_true, y_pred) == pytest.approx(sk.precision_score(y_true, y_pred))
    assert m.recall(y_true, y_pred) == pytest.approx(sk.recall_score(y_true, y_pred))
    assert m.f1(y_true, y_pred) == pytest.approx(sk.f1_score(y_true, y_pred))
    np.testing.assert_array_equal(m.confusion_matrix(y_true, y_pred),
                                  sk.confusion_matrix(y_true, y_pred))
    fpr, tpr = m.roc_curve(y_true, scores)[:2]
    assert m.auc(fpr, tpr) == pytest.approx(sk.roc_auc_score(y_true, scores))


def test_viz_names_exist():
    for name in ("plot_history", "plot_feature_maps", "plot_filters", "plot_confusion_matrix",
                 "grad_cam", "plot_grad_cam", "plot_reconstructions", "plot_roc", "animate_filters"):
        assert hasattr(minicnn.viz, name), name


# ============================================================================ errors
@pytest.mark.parametrize("make, x, match", [
    (lambda: Conv2D(4, 3, in_channels=3), np.zeros((8, 1, 28, 28)), r"Conv2D.*3.*1"),
    (lambda: DepthwiseConv2D(3, in_channels=2), np.zeros((2, 3, 5, 5)), r"DepthwiseConv2D.*2.*3"),
    (lambda: Dense(4, in_features=6), np.zeros((2, 5)), r"Dense.*6.*5"),
    (lambda: Conv2D(4, 3), np.zeros((2, 5)), r"Conv2D.*\(2, 5\)"),
    (lambda: MaxPool2D(), np.zeros((2, 5, 5)), r"MaxPool2D.*\(2, 5, 5\)"),
    (lambda: Conv2D(4, 5), np.zeros((2, 1, 3, 3)), "Conv2D"),
    (lambda: Reshape((7,)), np.zeros((2, 3, 2)), "Reshape"),
    (lambda: Concatenate([Conv2D(2, 1), Conv2D(2, 3)]), np.zeros((1, 2, 5, 5)), "Concatenate"),
    (lambda: Dense(3), np.zeros((2, 3, 4, 4)), r"Dense.*\(2, 3, 4, 4\)"),
    (lambda: GlobalAvgPool2D(), np.zeros((2, 3)), r"GlobalAvgPool2D.*\(2, 3\)"),
    (lambda: BatchNorm1D(), np.zeros((2, 3, 4, 4)), "BatchNorm1D"),
    (lambda: Residual(Conv2D(4, 3, padding="same")), np.zeros((2, 3, 5, 5)), "Residual"),
])
def test_bad_inputs_raise_value_error_naming_the_layer(make, x, match):
    with pytest.raises(ValueError, match=match):
        make()(x)


@pytest.mark.parametrize("loss, pred, target, match", [
    (losses.CrossEntropy(), np.zeros((4, 3)), np.array([0, 1, 2]), "CrossEntropy"),
    (losses.CrossEntropy(), np.zeros(3), np.array([1]), "CrossEntropy"),
    (losses.MSE(), np.zeros((4, 3)), np.zeros(4), "MSE"),
    (losses.BinaryCrossEntropy(), np.zeros((4, 1)), np.zeros(4), "BinaryCrossEntropy"),
])
def test_losses_reject_mismatched_shapes(loss, pred, target, match):
    with pytest.raises(ValueError, match=match):
        loss.forward(pred, target)


def test_built_layer_rejects_a_different_channel_count():
    bn = BatchNorm2D()
    bn(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"BatchNorm2D.*3.*4"):
        bn(np.zeros((2, 4, 4, 4)))


@pytest.mark.parametrize("make, error, match", [
    (lambda: Conv2D(0, 3), ValueError, "Conv2D"),
    (lambda: Conv2D(4, -1), ValueError, "Conv2D"),
    (lambda: Conv2D(4, 3, padding="full"), ValueError, "Conv2D"),
    (lambda: Conv2D(4, 3, stride=0), ValueError, "Conv2D"),
    (lambda: Dense(0), ValueError, "Dense"),
    (lambda: Dense(2.5), TypeError, "Dense"),
    (lambda: MaxPool2D(0), ValueError, "MaxPool2D"),
    (lambda: Dropout(1.0), ValueError, "Dropout"),
    (lambda: Dropout(-0.1), ValueError, "Dropout"),
    (lambda: GaussianNoise(-1.0), ValueError, "GaussianNoise"),
    (lambda: BatchNorm2D(momentum=1.5), ValueError, "BatchNorm2D"),
    (lambda: Sequential([Dense(2), "relu"]), TypeError, "Sequential"),
])
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()
