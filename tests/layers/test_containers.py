"""Sequential, Residual and Concatenate against torch, finite differences and hand computations.

The torch oracles are written out here with the same attribute names as the
minicnn containers (``nn.Sequential`` indices, ``block``/``shortcut``,
``branches``), so ``state_dict`` keys map one to one and every parameter
gradient can be compared by name.
"""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn.gradcheck import check_layer, check_model
from minicnn.layers import (ActivityRegularization, AvgPool2D, BatchNorm2D, Concatenate, Conv2D, Dense,
                            Flatten, Layer, MaxPool2D, ReLU, Residual, Sequential, Tanh)
from tests.helpers import DTYPES, assert_close, check_torch_parity, require_torch


# ---------------------------------------------------------------------- builders (minicnn and torch twins)
def small_cnn():
    return Sequential([Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Conv2D(6, 3), Tanh(),
                       Flatten(), Dense(10), ReLU(), Dense(3)])


def torch_small_cnn(in_channels, flat):
    nn = require_torch().nn
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3), nn.Tanh(), nn.Flatten(), nn.Linear(flat, 10), nn.ReLU(),
                         nn.Linear(10, 3))


def bn_cnn():
    return Sequential([Conv2D(5, 3, padding=1, bias=False), BatchNorm2D(), ReLU(), AvgPool2D(2),
                       Flatten(), Dense(4)])


def torch_bn_cnn(in_channels, flat):
    nn = require_torch().nn
    return nn.Sequential(nn.Conv2d(in_channels, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5),
                         nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(flat, 4))


def residual(in_channels, out_channels, stride, projection):
    block = Sequential([Conv2D(out_channels, 3, stride=stride, padding=1, bias=False), BatchNorm2D(), ReLU(),
                        Conv2D(out_channels, 3, padding=1), BatchNorm2D()])
    shortcut = Sequential([Conv2D(out_channels, 1, stride=stride, bias=False), BatchNorm2D()]) \
        if projection else None
    return Residual(block, shortcut)


def torch_residual(in_channels, out_channels, stride, projection):
    torch = require_torch()
    nn = torch.nn

    class TorchResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU(),
                nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels))
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels)) if projection else None

        def forward(self, x):
            return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

    return TorchResidual()


def inception(c1=3, c3r=2, c3=4, c5r=2, c5=3, pool_proj=2):
    return Concatenate([
        Sequential([Conv2D(c1, 1), ReLU()]),
        Sequential([Conv2D(c3r, 1), ReLU(), Conv2D(c3, 3, padding=1), ReLU()]),
        Sequential([Conv2D(c5r, 1), ReLU(), Conv2D(c5, 5, padding=2), ReLU()]),
        Sequential([MaxPool2D(3, stride=1, padding=1), Conv2D(pool_proj, 1), ReLU()]),
    ])


def torch_inception(cin, c1=3, c3r=2, c3=4, c5r=2, c5=3, pool_proj=2):
    torch = require_torch()
    nn = torch.nn

    class TorchInception(nn.Module):
        def __init__(self):
            super().__init__()
            self.branches = nn.ModuleList([
                nn.Sequential(nn.Conv2d(cin, c1, 1), nn.ReLU()),
                nn.Sequential(nn.Conv2d(cin, c3r, 1), nn.ReLU(), nn.Conv2d(c3r, c3, 3, padding=1), nn.ReLU()),
                nn.Sequential(nn.Conv2d(cin, c5r, 1), nn.ReLU(), nn.Conv2d(c5r, c5, 5, padding=2), nn.ReLU()),
                nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(cin, pool_proj, 1), nn.ReLU()),
            ])

        def forward(self, x):
            return torch.cat([branch(x) for branch in self.branches], dim=1)

    return TorchInception()


def _input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------- Sequential
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (2, 1, 10, 12)])
def test_sequential_matches_torch_sequential(shape, dtype):
    minicnn.seed(1)
    model = small_cnn()
    flat = 6 * (shape[2] // 2 - 2) * (shape[3] // 2 - 2)
    check_torch_parity(model, torch_small_cnn(shape[1], flat), _input(shape), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_with_batchnorm_matches_torch_in_training(dtype):
    minicnn.seed(2)
    model = bn_cnn()
    torch_model = torch_bn_cnn(3, 5 * 3 * 3)
    check_torch_parity(model, torch_model, _input((4, 3, 6, 6)), dtype, training=True)
    # The running statistics were updated like torch's, under the same names.
    for name, value in model.named_buffers():
        assert_close(value, torch_model.state_dict()[name].numpy(), dtype, name)


def test_sequential_equals_the_layers_composed_by_hand():
    minicnn.seed(3)
    model = small_cnn()
    x = _input((2, 2, 8, 8))
    y = model(x)
    by_hand = x.astype(np.float32)
    for layer in model.layers:
        by_hand = layer.forward(by_hand)
    np.testing.assert_array_equal(y, by_hand)

    dy = _input(y.shape, seed=1).astype(np.float32)
    dx = model.backward(dy)
    grads = {name: grad.copy() for name, _, grad in model.named_parameters()}
    d = dy
    for layer in reversed(model.layers):
        d = layer.backward(d)
    np.testing.assert_array_equal(dx, d)
    for name, _, grad in model.named_parameters():
        np.testing.assert_array_equal(grads[name], grad, err_msg=name)


def test_sequential_gradcheck():
    minicnn.seed(4)
    model = Sequential([Conv2D(3, 3, padding=1), Tanh(), MaxPool2D(2), Flatten(), Dense(4)])
    report = check_layer(model, (2, 2, 6, 6), max_checks=40)
    assert report.ok, report
    assert set(report.max_rel_error) == {"input", "0.weight", "0.bias", "4.weight", "4.bias"}


def test_check_model_on_a_small_conv_net():
    minicnn.seed(5)
    model = Sequential([Conv2D(3, 3, padding=1), BatchNorm2D(), ReLU(), MaxPool2D(2), Flatten(), Dense(3)])
    x = minicnn.gradcheck.kink_free_input((4, 2, 6, 6), np.random.default_rng(0))
    report = check_model(model, x, np.array([0, 2, 1, 2]), "cross_entropy", max_checks=30)
    assert report.ok, report


def test_check_model_notices_a_broken_backward_inside_a_container():
    class ForgetfulReLU(ReLU):
        def backward(self, dy):
            return dy  # ignores the mask

    minicnn.seed(5)
    model = Sequential([Dense(6), Residual(Sequential([Dense(6), ForgetfulReLU()])), Dense(2)])
    x = np.random.default_rng(0).standard_normal((4, 5))
    report = check_model(model, x, np.array([0, 1, 1, 0]), "cross_entropy")
    assert not report.ok


def test_parameter_names_follow_torch_sequential():
    model = small_cnn()
    model.build((2, 8, 8))
    names = [name for name, _, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias", "8.weight", "8.bias"]
    assert model.parameters_count() == (2 * 4 * 9 + 4) + (4 * 6 * 9 + 6) + (24 * 10 + 10) + (10 * 3 + 3)


def test_lazy_build_propagates_shapes():
    model = small_cnn()
    assert not model.built
    y = model(np.zeros((1, 2, 8, 8), np.float32))
    assert model.built and model.input_shape == (2, 8, 8)
    assert model.layers[6].params["weight"].shape == (10, 24)  # Dense got 6 * 2 * 2 inputs
    assert model.output_shape((2, 8, 8)) == (3,) == y.shape[1:]


def test_input_shape_builds_at_once_and_add_builds_the_new_layer():
    model = Sequential([Flatten(), Dense(5)], input_shape=(2, 3, 3))
    assert model.built and model.layers[1].params["weight"].shape == (5, 18)
    model.add(Dense(2))
    assert model.layers[2].built and model.layers[2].params["weight"].shape == (2, 5)
    assert model(np.zeros((4, 2, 3, 3))).shape == (4, 2)


def test_sequence_protocol():
    layers = [Flatten(), Dense(4), ReLU()]
    model = Sequential(layers)
    assert len(model) == 3
    assert model[1] is layers[1] and model[-1] is layers[2]
    assert list(model) == layers
    head = model[:2]
    assert isinstance(head, Sequential) and head.layers == layers[:2]


def test_dtype_given_to_the_model_reaches_every_layer():
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(3)], dtype=np.float64)
    y = model(np.ones((1, 1, 5, 5), np.float32))
    assert y.dtype == np.float64
    assert all(p.dtype == np.float64 for _, p, _ in model.named_parameters())


def test_skip_input_grad_reaches_the_first_trained_layer():
    minicnn.seed(6)
    model = Sequential([Flatten(), Dense(5), ReLU(), Dense(2)])
    x, dy = _input((3, 2, 2, 2)), _input((3, 2), seed=1)
    model.astype(np.float64)
    model(x)
    dx = model.backward(dy)
    expected = {name: grad.copy() for name, _, grad in model.named_parameters()}

    model.skip_input_grad = True
    model(x)
    assert model.backward(dy) is None
    assert model.layers[1].skip_input_grad  # through the parameter-free Flatten
    for name, _, grad in model.named_parameters():
        np.testing.assert_array_equal(grad, expected[name], err_msg=name)

    model.skip_input_grad = False
    model(x)
    np.testing.assert_array_equal(model.backward(dy), dx)


def test_state_dict_round_trip_and_errors():
    minicnn.seed(7)
    source = Sequential([Conv2D(3, 3), BatchNorm2D(), residual(3, 3, 1, False), Flatten(), Dense(2)])
    source.build((2, 6, 6))
    source(_input((4, 2, 6, 6)).astype(np.float32), training=True)  # moves the running stats
    state = source.state_dict()
    assert {"0.weight", "1.running_mean", "2.block.0.weight", "2.block.4.running_var", "4.bias"} <= set(state)

    minicnn.seed(8)
    target = Sequential([Conv2D(3, 3), BatchNorm2D(), residual(3, 3, 1, False), Flatten(), Dense(2)],
                        input_shape=(2, 6, 6))
    x = _input((2, 2, 6, 6)).astype(np.float32)
    assert not np.allclose(target(x), source(x))
    target.load_state_dict(state)
    np.testing.assert_array_equal(target(x), source(x))

    missing = dict(state)
    del missing["2.block.0.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['2.block.0.weight'\]"):
        target.load_state_dict(missing)
    wrong = dict(state, **{"4.weight": np.zeros((2, 5), np.float32)})
    with pytest.raises(ValueError, match=r"'4.weight' expected shape \(2, 48\), got \(2, 5\)"):
        target.load_state_dict(wrong)


def test_regularization_loss_is_collected_through_nested_containers():
    model = Sequential([Flatten(), Residual(Sequential([Dense(4), ActivityRegularization(l1=0.5)]),
                                            shortcut=Dense(4))])
    x = _input((2, 1, 2, 3))
    model(x, training=True)
    code = model.layers[1].block.layers[0](x.reshape(2, -1).astype(np.float32))
    assert model.regularization_loss() == pytest.approx(0.5 * np.abs(code).sum() / 2, rel=1e-6)


# ---------------------------------------------------------------------- summary and counts
def test_summary_lists_every_layer_and_the_totals():
    model = Sequential([Conv2D(4, 3, padding=1), BatchNorm2D(), ReLU(), MaxPool2D(2), Flatten(),
                        Dense(10, name="head")], input_shape=(1, 8, 8))
    lines = []
    text = model.summary(print_fn=lines.append)
    assert lines == [text]
    rows = {line.split()[0]: line for line in text.splitlines() if line[:1].isdigit()}
    assert sorted(rows) == ["0", "1", "2", "3", "4", "5"]
    assert "Conv2D" in rows["0"] and "(None, 4, 8, 8)" in rows["0"] and rows["0"].endswith(" 40")
    assert "BatchNorm2D" in rows["1"] and rows["1"].endswith(" 16")  # 8 trained + 8 running stats
    assert "(None, 4, 4, 4)" in rows["3"] and "(None, 64)" in rows["4"]
    assert "head (Dense)" in rows["5"] and "(None, 10)" in rows["5"] and rows["5"].endswith(" 650")
    assert "Total params: 706" in text            # 40 + 8 + 650 trained, 8 buffers
    assert "Trainable params: 698" in text
    assert "Non-trainable params: 8" in text
    assert model.parameters_count() == 698


def test_summary_shows_nested_children_indented():
    model = Sequential([Conv2D(4, 1), residual(4, 8, 2, True), inception()], input_shape=(3, 8, 8))
    text = model.summary(print_fn=None)
    assert "\n  1.block  " in text and "\n    1.block.0  Conv2D" in text
    assert "\n  1.shortcut  Sequential" in text
    assert "\n  2.branches.3  Sequential" in text and "\n    2.branches.3.0  MaxPool2D" in text
    assert "(None, 12, 4, 4)" in text  # 3 + 4 + 3 + 2 channels out of the inception block
    total = sum(p.size for _, p, _ in model.named_parameters()) + sum(b.size for _, b in model.named_buffers())
    assert f"Total params: {total:,}" in text


def test_summary_of_an_unbuilt_model_says_to_build_it():
    with pytest.raises(ValueError, match=r"not built yet.*build\("):
        small_cnn().summary()


def test_a_large_dense_head_has_the_expected_parameter_count():
    # Flatten → Dense(512, relu) → Dense(128, relu) → Dense(1) on 3×224×224 images: built, never run.
    model = Sequential([Flatten(), Dense(512, activation="relu"), Dense(128, activation="relu"), Dense(1)])
    model.build((3, 224, 224))
    assert model.parameters_count() == 77_136_641
    assert "Total params: 77,136,641" in model.summary(print_fn=None)


# ---------------------------------------------------------------------- Residual
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cin, cout, stride, projection", [(3, 3, 1, False), (3, 5, 1, True), (2, 4, 2, True)])
def test_residual_matches_torch(cin, cout, stride, projection, dtype):
    minicnn.seed(9)
    layer = residual(cin, cout, stride, projection)
    check_torch_parity(layer, torch_residual(cin, cout, stride, projection), _input((3, cin, 6, 6)),
                       dtype, training=True)


def test_residual_gradcheck():
    minicnn.seed(10)
    layer = Residual(Sequential([Conv2D(3, 3, padding=1), Tanh(), Conv2D(3, 3, padding=1)]),
                     shortcut=Conv2D(3, 1))
    report = check_layer(layer, (2, 2, 5, 5), max_checks=40)
    assert report.ok, report
    assert {"block.0.weight", "block.2.bias", "shortcut.weight"} <= set(report.max_rel_error)


def test_residual_identity_adds_the_input():
    block = Sequential([Dense(4, in_features=4), Tanh()])
    layer = Residual(block)
    x = _input((3, 4)).astype(np.float32)
    np.testing.assert_allclose(layer(x), block(x) + x, rtol=1e-6)
    dy = _input((3, 4), seed=1).astype(np.float32)
    np.testing.assert_allclose(layer.backward(dy), block.backward(dy) + dy, rtol=1e-6)


def test_residual_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"block gives output shape \(None, 4, 3, 3\).*"
                                         r"identity shortcut gives \(None, 2, 6, 6\)"):
        Residual(Sequential([Conv2D(4, 3, stride=2, padding=1)])).build((2, 6, 6))
    layer = Residual(Conv2D(3, 3, padding=1), shortcut=Conv2D(3, 3))
    with pytest.raises(ValueError, match=r"\(None, 3, 5, 5\).*\(None, 3, 3, 3\)"):
        layer(np.zeros((1, 2, 5, 5)))


# ---------------------------------------------------------------------- Concatenate
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cin, hw", [(3, 6), (2, 5)])
def test_inception_block_matches_torch(cin, hw, dtype):
    minicnn.seed(11)
    layer = inception()
    _, torch_y = check_torch_parity(layer, torch_inception(cin), _input((2, cin, hw, hw)), dtype)
    assert torch_y.shape == (2, 12, hw, hw)


def test_concatenate_gradcheck():
    minicnn.seed(12)
    layer = Concatenate([Conv2D(2, 1), Sequential([Conv2D(3, 3, padding=1), Tanh()]),
                         Sequential([MaxPool2D(3, stride=1, padding=1), Conv2D(1, 1)])])
    report = check_layer(layer, (2, 3, 5, 5), max_checks=40)
    assert report.ok, report
    assert {"branches.0.weight", "branches.1.0.weight", "branches.2.1.bias"} <= set(report.max_rel_error)


def test_concatenate_along_features_by_hand():
    a, b = Dense(2, in_features=3), Dense(4, in_features=3)
    layer = Concatenate([a, b], axis=-1)
    x = _input((5, 3)).astype(np.float32)
    y = layer(x)
    np.testing.assert_array_equal(y, np.concatenate([a(x), b(x)], axis=1))
    dy = _input((5, 6), seed=1).astype(np.float32)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, dy[:, :2] @ a.params["weight"] + dy[:, 2:] @ b.params["weight"], rtol=1e-6)
    assert layer.output_shape((3,)) == (6,)


def test_concatenate_mismatched_spatial_sizes_names_both_shapes():
    layer = Concatenate([Conv2D(2, 3), Conv2D(2, 1)])
    with pytest.raises(ValueError, match=r"branch 0 gives output shape \(None, 2, 6, 6\) but branch 1 "
                                         r"gives \(None, 2, 8, 8\)"):
        layer.build((3, 8, 8))
    with pytest.raises(ValueError, match=r"\(None, 2, 6, 6\).*\(None, 2, 8, 8\)"):
        Concatenate([Conv2D(2, 3), Conv2D(2, 1)])(np.zeros((1, 3, 8, 8)))


# ---------------------------------------------------------------------- bad arguments
def test_a_non_layer_is_rejected_naming_its_index_and_type():
    with pytest.raises(TypeError, match=r"layer 1, got int"):
        Sequential([ReLU(), 3])
    with pytest.raises(TypeError, match=r"layer 1, got str"):
        Sequential([ReLU()]).add("relu")
    with pytest.raises(TypeError, match=r"list of layers, got a single ReLU"):
        Sequential(ReLU())
    with pytest.raises(TypeError, match=r"block, got function"):
        Residual(small_cnn)
    with pytest.raises(TypeError, match=r"branch 1, got NoneType"):
        Concatenate([ReLU(), None])


def test_a_build_error_names_the_failing_layer_index():
    model = Sequential([Flatten(), Dense(4, in_features=10), ReLU()])
    with pytest.raises(ValueError, match=r"layer 1 \(Dense\) failed for input shape \(None, 12\).*"
                                         r"expected 10 input features, got 12"):
        model.build((3, 2, 2))
    assert not model.built
    with pytest.raises(ValueError, match=r"layer 2 \(Conv2D\)"):
        Sequential([Conv2D(2, 3), MaxPool2D(2), Conv2D(2, 3)]).build((1, 6, 6))


def test_concatenate_rejects_bad_axes_and_empty_branches():
    with pytest.raises(ValueError, match="batch axis"):
        Concatenate([ReLU()], axis=0)
    with pytest.raises(ValueError, match="at least one branch"):
        Concatenate([])
    with pytest.raises(TypeError, match="int axis"):
        Concatenate([ReLU()], axis=1.0)
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        Concatenate([Dense(2)], axis=3).build((4,))


def test_container_is_a_layer():
    assert isinstance(Sequential(), Layer) and isinstance(Residual(ReLU()), Layer)
    x = _input((2, 3))
    np.testing.assert_array_equal(Sequential()(x), x.astype(np.float32))  # empty: identity
