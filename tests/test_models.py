"""The model zoo and the autoencoders: parameter counts, shapes, torch twins, gradients, training."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn import models
from minicnn.gradcheck import check_model, kink_free_input
from minicnn.layers import (ActivityRegularization, AvgPool2D, Concatenate, Dense, GaussianNoise, MaxPool2D,
                            Residual, Sequential, Tanh)
from tests.helpers import DTYPES, check_torch_parity, require_torch


# ---------------------------------------------------------------------- torch twins
def _fused(torch_class, activation):
    """A torch layer with its activation applied in forward; its state-dict keys stay the layer's own."""
    torch = require_torch()
    act = {"relu": torch.relu, "tanh": torch.tanh}[activation]

    class Fused(torch_class):
        def forward(self, x):
            return act(super().forward(x))

    return Fused


def torch_lenet5(activation, pool, in_channels=1, num_classes=10):
    nn = require_torch().nn
    conv, linear = _fused(nn.Conv2d, activation), _fused(nn.Linear, activation)
    pooling = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pool]
    return nn.Sequential(conv(in_channels, 6, 5, padding=2), pooling(2), conv(6, 16, 5), pooling(2),
                         nn.Flatten(), linear(400, 120), linear(120, 84), nn.Linear(84, num_classes))


def torch_residual_block(cin, cout, stride):
    torch = require_torch()
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                       nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            projection = stride != 1 or cin != cout
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout)) if projection else None

        def forward(self, x):
            return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

    return BasicBlock()


def torch_inception_block(cin, c1, c3r, c3, c5r, c5, pool_proj):
    torch = require_torch()
    nn = torch.nn
    conv = _fused(nn.Conv2d, "relu")

    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.branches = nn.ModuleList([
                conv(cin, c1, 1),
                nn.Sequential(conv(cin, c3r, 1), conv(c3r, c3, 3, padding=1)),
                nn.Sequential(conv(cin, c5r, 1), conv(c5r, c5, 5, padding=2)),
                nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv(cin, pool_proj, 1)),
            ])

        def forward(self, x):
            return torch.cat([branch(x) for branch in self.branches], dim=1)

    return Inception()


def torch_separable_block(cin, cout, stride):
    nn = require_torch().nn
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------- LeNet-5
@pytest.mark.parametrize("activation, pool", [("relu", "max"), ("tanh", "avg")])
def test_lenet5_has_61706_parameters(activation, pool):
    model = models.lenet5(activation=activation, pool=pool)
    assert isinstance(model, Sequential) and not model.built
    model.build((1, 28, 28))
    assert model.parameters_count() == 61_706
    assert "Total params: 61,706" in model.summary(print_fn=None)
    assert model.output_shape((1, 28, 28)) == (10,)


def test_lenet5_1998_form_uses_tanh_and_average_pooling():
    model = models.lenet5(activation="tanh", pool="avg")
    assert isinstance(model[0].activation, Tanh) and isinstance(model[1], AvgPool2D)
    assert isinstance(models.lenet5()[1], MaxPool2D)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation, pool", [("relu", "max"), ("tanh", "avg")])
def test_lenet5_matches_torch(activation, pool, dtype):
    minicnn.seed(0)
    model = models.lenet5(num_classes=4, in_channels=2, activation=activation, pool=pool)
    check_torch_parity(model, torch_lenet5(activation, pool, in_channels=2, num_classes=4),
                       _input((2, 2, 28, 28)), dtype)


# ---------------------------------------------------------------------- every model runs
ZOO = [
    (models.lenet5, (1, 28, 28)),
    (models.mlp, (1, 28, 28)),
    (models.simple_cnn, (1, 8, 8)),
    (models.vgg_mini, (3, 32, 32)),
    (models.mobilenet_mini, (3, 32, 32)),
    (models.resnet_mini, (3, 32, 32)),
    (models.inception_mini, (3, 32, 32)),
]


@pytest.mark.parametrize("factory, shape", ZOO, ids=[f.__name__ for f, _ in ZOO])
def test_zoo_model_builds_and_runs_forward_and_backward(factory, shape):
    minicnn.seed(1)
    model = factory(num_classes=7, in_channels=shape[0])
    assert isinstance(model, Sequential) and not model.built
    model.build(shape)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    y = model(x, training=True)
    assert y.shape == (2, 7) and y.dtype == np.float32 and np.isfinite(y).all()
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape
    for name, _, grad in model.named_parameters():
        assert np.isfinite(grad).all(), name
    assert any(np.abs(grad).max() > 0 for _, _, grad in model.named_parameters())
    assert model(x).shape == (2, 7)  # evaluation mode (running statistics) too
    frozen = sum(b.size for _, b in model.named_buffers())
    assert f"Total params: {model.parameters_count() + frozen:,}" in model.summary(print_fn=None)


def test_zoo_models_reject_a_wrong_channel_count():
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        models.vgg_mini(in_channels=3)(np.zeros((1, 1, 32, 32), np.float32))


def test_resnet_mini_projects_only_where_the_shape_changes():
    model = models.resnet_mini(in_channels=3)
    model.build((3, 32, 32))
    residuals = [layer for layer in model if isinstance(layer, Residual)]
    assert len(residuals) == 3
    assert residuals[0].shortcut is None  # 16 -> 16 channels at stride 1: identity
    for block, stride in zip(residuals[1:], (2, 2)):
        projection = block.shortcut[0]
        assert projection.params["weight"].shape[2:] == (1, 1) and projection.stride == (stride, stride)
    assert model.output_shape((3, 32, 32)) == (10,)


def test_mobilenet_mini_uses_depthwise_then_pointwise():
    model = models.mobilenet_mini(in_channels=3)
    model.build((3, 32, 32))
    block = model[1]
    assert [type(layer).__name__ for layer in block] == [
        "DepthwiseConv2D", "BatchNorm2D", "ReLU", "Conv2D", "BatchNorm2D", "ReLU"]
    assert block[0].params["weight"].shape == (32, 1, 3, 3)   # one 3x3 filter per channel
    assert block[3].params["weight"].shape == (64, 32, 1, 1)  # then a 1x1 mix of channels


def test_inception_mini_concatenates_four_branches():
    model = models.inception_mini(in_channels=3)
    model.build((3, 32, 32))
    blocks = [layer for layer in model if isinstance(layer, Concatenate)]
    assert [len(block.branches) for block in blocks] == [4, 4]
    assert blocks[0].output_shape((32, 16, 16)) == (16 + 24 + 8 + 8, 16, 16)
    assert isinstance(blocks[0].branches[3][0], MaxPool2D)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cin, cout, stride", [(4, 4, 1), (3, 5, 2)])
def test_residual_block_matches_torch(cin, cout, stride, dtype):
    minicnn.seed(2)
    check_torch_parity(models.residual_block(cin, cout, stride), torch_residual_block(cin, cout, stride),
                       _input((3, cin, 6, 6)), dtype, training=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inception_block_matches_torch(dtype):
    minicnn.seed(3)
    widths = (3, 2, 4, 2, 3, 2)
    check_torch_parity(models.inception_block(*widths), torch_inception_block(3, *widths),
                       _input((2, 3, 6, 6)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_separable_block_matches_torch(dtype):
    minicnn.seed(4)
    check_torch_parity(models.separable_block(6, stride=2), torch_separable_block(3, 6, 2),
                       _input((3, 3, 7, 7)), dtype, training=True)


def test_simple_cnn_gradients_are_right():
    minicnn.seed(5)
    model = models.simple_cnn(num_classes=3, filters=(3, 4), hidden=5)
    x = kink_free_input((3, 1, 8, 8), np.random.default_rng(0))
    report = check_model(model, x, np.array([0, 2, 1]), "cross_entropy", max_checks=25)
    assert report.ok, report


def test_mlp_layout():
    model = models.mlp(hidden=(32, 16), dropout=0.25, num_classes=3)
    assert [type(layer).__name__ for layer in model] == ["Flatten", "Dense", "Dropout", "Dense", "Dropout",
                                                         "Dense"]
    model.build((1, 6, 6))
    assert model.parameters_count() == (36 * 32 + 32) + (32 * 16 + 16) + (16 * 3 + 3)


def test_simple_cnn_learns_digits():
    from minicnn.data import load_digits, train_test_split

    minicnn.seed(0)
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=True)
    model = models.simple_cnn()
    model.compile("adam", "cross_entropy", lr=3e-3)
    model.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
    assert model.evaluate(x_test, y_test)["accuracy"] >= 0.95


@pytest.mark.parametrize("call, error, match", [
    (lambda: models.lenet5(pool="median"), ValueError, "pool 'max' or 'avg', got 'median'"),
    (lambda: models.lenet5(activation="swish"), ValueError, "unknown activation 'swish'"),
    (lambda: models.simple_cnn(num_classes=0), ValueError, "num_classes >= 1, got 0"),
    (lambda: models.vgg_mini(in_channels="3"), TypeError, "in_channels as an int"),
    (lambda: models.mlp(dropout=1.0), ValueError, r"dropout in \[0, 1\)"),
    (lambda: models.mlp(hidden=(16, 0)), ValueError, "hidden >= 1, got 0"),
    (lambda: models.resnet_mini(stages=()), ValueError, "stages"),
    (lambda: models.dense_autoencoder(code_size=0), ValueError, "code_size >= 1"),
    (lambda: models.dense_autoencoder(sparse_l1=-1.0), ValueError, "sparse_l1 >= 0"),
    (lambda: models.conv_autoencoder(filters=()), TypeError, "non-empty tuple"),
])
def test_bad_arguments_are_rejected(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------- autoencoders
def test_dense_autoencoder_reconstructs_the_input_shape():
    minicnn.seed(6)
    model = models.dense_autoencoder()
    assert isinstance(model, models.Autoencoder) and model.built
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    reconstruction = model(x)
    assert reconstruction.shape == (3, 784)
    assert (reconstruction > 0).all() and (reconstruction < 1).all()  # sigmoid output
    code = model.encode(x)
    assert isinstance(code, np.ndarray) and code.shape == (3, 32)
    np.testing.assert_allclose(model.decode(code), reconstruction, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.encode(x, batch_size=2), code, rtol=1e-5, atol=1e-6)  # BLAS may round by batch
    assert [name for name, _, _ in model.named_parameters()] == ["0.0.weight", "0.0.bias", "1.0.weight",
                                                                 "1.0.bias"]


def test_deep_autoencoder_mirrors_the_encoder():
    model = models.dense_autoencoder(input_dim=20, hidden=(16, 8), code_size=4)

    def widths(part):
        return [layer.params["weight"].shape for layer in part]

    assert widths(model.encoder) == [(16, 20), (8, 16), (4, 8)]
    assert widths(model.decoder) == [(8, 4), (16, 8), (20, 16)]


def test_sparse_autoencoder_penalises_the_code():
    minicnn.seed(7)
    model = models.dense_autoencoder(input_dim=12, code_size=6, sparse_l1=0.1)
    assert isinstance(model.encoder[-1], ActivityRegularization)
    x = np.random.default_rng(0).random((4, 12), dtype=np.float32)
    code = model.encode(x)  # no noise, so the same code as in training
    model(x, training=True)  # (after encode: an evaluation forward records no penalty)
    assert model.regularization_loss() == pytest.approx(0.1 * np.abs(code).sum() / 4, rel=1e-5)
    assert models.dense_autoencoder(input_dim=12).regularization_loss() == 0.0


def test_denoising_autoencoder_adds_noise_in_training_only():
    minicnn.seed(8)
    model = models.dense_autoencoder(input_dim=12, code_size=6, noise_stddev=0.5)
    assert isinstance(model.encoder[0], GaussianNoise)
    x = np.random.default_rng(0).random((4, 12), dtype=np.float32)
    np.testing.assert_array_equal(model(x), model(x))
    assert not np.allclose(model(x, training=True), model(x))
    np.testing.assert_array_equal(model.encode(x), model.encoder(x))


def test_dense_autoencoder_wants_flat_inputs():
    with pytest.raises(ValueError, match="Dense"):
        models.dense_autoencoder(input_dim=64)(np.zeros((2, 1, 8, 8), np.float32))


@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 16)])
def test_conv_autoencoder_reconstructs_the_input_shape(in_channels, size):
    minicnn.seed(9)
    model = models.conv_autoencoder(in_channels=in_channels)
    x = np.random.default_rng(0).random((2, in_channels, size, size), dtype=np.float32)
    reconstruction = model(x)
    assert reconstruction.shape == x.shape
    assert (reconstruction > 0).all() and (reconstruction < 1).all()
    assert model.encode(x).shape == (2, 8, size // 4, size // 4)


def test_conv_autoencoder_needs_sizes_divisible_by_the_pooling():
    with pytest.raises(ValueError, match=r"reconstructs shape \(1, 28, 28\) from inputs of shape \(1, 30, 30\)"):
        models.conv_autoencoder().build((1, 30, 30))


@pytest.mark.parametrize("factory", [
    lambda: models.dense_autoencoder(input_dim=6, hidden=(5,), code_size=3, sparse_l1=0.05),
    lambda: models.conv_autoencoder(in_channels=1, filters=(2,), code_channels=2),
], ids=["dense_sparse", "conv"])
def test_autoencoder_gradients_are_right(factory):
    minicnn.seed(10)
    model = factory()
    shape = (3, 6) if model.built else (2, 1, 4, 4)
    model.build(shape[1:])
    rng = np.random.default_rng(0)
    # Zero biases put a dead ReLU channel's successors exactly on the next ReLU's kink,
    # where finite differences are meaningless; small positive ones keep clear of it.
    for name, param, _ in model.named_parameters():
        if name.endswith("bias"):
            param[...] = rng.uniform(0.05, 0.2, param.shape)
    x = rng.random(shape)
    report = check_model(model, x, x, "mse", max_checks=20)
    assert report.ok, report


def test_autoencoder_trains_with_fit():
    from minicnn.data import load_digits

    minicnn.seed(11)
    x, _ = load_digits()
    x = x[:512].reshape(512, -1)
    model = models.dense_autoencoder(input_dim=64, code_size=16)
    model.compile("adam", "mse", metrics=(), lr=3e-3)
    history = model.fit(x, x, epochs=4, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]


def test_autoencoder_arguments():
    with pytest.raises(TypeError, match="encoder to be a Layer"):
        models.Autoencoder(3, Dense(2))
    model = models.Autoencoder(Sequential([Dense(2)]), Sequential([Dense(4)]), input_shape=(4,))
    assert model.encoder is model[0] and model.decoder is model[1]
    with pytest.raises(TypeError, match="exactly"):
        model.add(Dense(2))
    assert set(model.get_config()) >= {"encoder", "decoder"} and "layers" not in model.get_config()
