"""to_torch / from_torch: converted models compute the same function as the original.

PyTorch is the independent witness: the converted torch module's output must
equal minicnn's within float32 tolerance (float64 tight where noted).
"""
import numpy as np
import pytest

import minicnn
from minicnn import models
from minicnn.interop import from_torch, to_torch
from minicnn.layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Conv2DTranspose, Dense,
                            DepthwiseConv2D, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, Reshape,
                            SeparableConv2D, Sequential, UpSampling2D)
from tests.helpers import assert_close, require_torch


def randomize(model, rng):
    """Random params and plausible BN statistics, so no default value hides a copy error."""
    model.load_state_dict({k: (np.abs(rng.standard_normal(v.shape)) + 0.5 if k.endswith("running_var")
                               else rng.standard_normal(v.shape) * 0.3).astype(v.dtype)
                           for k, v in model.state_dict().items()})
    return model


def torch_output(module, x):
    torch = require_torch()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


CASES = {
    "lenet5": lambda: (models.lenet5(), (1, 28, 28)),
    "lenet5_1998": lambda: (models.lenet5(activation="tanh", pool="avg"), (1, 28, 28)),
    "bn_depthwise": lambda: (Sequential([
        Conv2D(6, 3, padding=1, bias=False), BatchNorm2D(), DepthwiseConv2D(3, depth_multiplier=2,
                                                                            stride=2, padding=1,
                                                                            activation="relu"),
        BatchNorm2D(), SeparableConv2D(5, 3, padding="same", activation="elu"),
        GlobalAvgPool2D(), Dense(8), BatchNorm1D(), Dense(4, activation="softmax")]), (3, 11, 11)),
    "asymmetric_same": lambda: (Sequential([
        Conv2D(4, 4, padding="same", activation="sigmoid"), Conv2D(3, (2, 3), stride=2, padding="same"),
        AvgPool2D(3, stride=1, padding=1), MaxPool2D(2), Flatten(), Dense(5, activation="leaky_relu")]),
        (2, 9, 8)),
    "upsample_transpose": lambda: (Sequential([
        Flatten(), Dense(32), Reshape((2, 4, 4)), UpSampling2D(2),
        Conv2DTranspose(3, 3, stride=2, padding=1, output_padding=1, activation="tanh"),
        Dropout(0.5)]), (1, 5, 5)),
    "resnet_mini": lambda: (models.resnet_mini(stages=((4, 1), (8, 2))), (1, 10, 10)),
    "inception_mini": lambda: (models.inception_mini(), (1, 12, 12)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_torch_matches_minicnn(name, dtype):
    torch = require_torch()
    minicnn.seed(0)
    model, shape = CASES[name]()
    model.build(shape)
    model.astype(dtype)
    rng = np.random.default_rng(1)
    randomize(model, rng)
    module = to_torch(model)
    assert isinstance(module, torch.nn.Sequential) and not module.training
    x = rng.random((4, *shape)).astype(dtype)
    assert_close(torch_output(module, x), model.predict(x), dtype, f"{name} forward")


def test_to_torch_needs_a_built_model():
    require_torch()
    with pytest.raises(ValueError, match="not built"):
        to_torch(models.lenet5())


def test_from_torch_converts_a_torch_model():
    torch = require_torch()
    nn = torch.nn
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 12, 3, groups=6, stride=2, padding=1, bias=False), nn.LeakyReLU(0.1),
        nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(12, 4, 2),  # TensorFlow-style 'same' at stride 1
        nn.MaxPool2d(2), nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(36, 10), nn.ELU()),
        nn.BatchNorm1d(10), nn.Linear(10, 3), nn.Softmax(dim=1))
    for m in module.modules():  # non-default running statistics
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    module.eval()
    model = from_torch(module, input_shape=(2, 12, 12))
    x = np.random.default_rng(0).random((5, 2, 12, 12)).astype(np.float32)
    assert_close(model.predict(x), torch_output(module, x), np.float32, "from_torch forward")
    assert type(model.layers[3]).__name__ == "DepthwiseConv2D"
    assert model.layers[5].get_config()["padding"] == "same"


@pytest.mark.parametrize("name", ["lenet5", "bn_depthwise", "upsample_transpose"])
def test_round_trip_minicnn_torch_minicnn(name):
    require_torch()
    model, shape = CASES[name]()
    model.build(shape)
    rng = np.random.default_rng(2)
    randomize(model, rng)
    back = from_torch(to_torch(model), input_shape=shape)
    x = rng.random((3, *shape)).astype(np.float32)
    assert_close(back.predict(x), model.predict(x), np.float32, f"{name} round trip")
    assert back.parameters_count() == model.parameters_count()


def test_from_torch_names_unsupported_modules():
    torch = require_torch()
    nn = torch.nn
    with pytest.raises(ValueError, match=r"LSTM at '1'"):
        from_torch(nn.Sequential(nn.Flatten(), nn.LSTM(4, 4)))
    with pytest.raises(ValueError, match="groups=2"):
        from_torch(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))
    with pytest.raises(ValueError, match="padding_mode"):
        from_torch(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")))
    with pytest.raises(ValueError, match="ceil_mode"):
        from_torch(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)))
