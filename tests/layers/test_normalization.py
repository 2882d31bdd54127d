"""BatchNorm1D / BatchNorm2D against finite differences, PyTorch and a hand computation.

The oracles are independent of the code under test: central differences
(``check_layer``) for every gradient in training and evaluation mode,
``torch.nn.BatchNorm1d/2d`` for the forward pass, all gradients and the
running statistics over several training steps, and a two-number batch worked
out by hand (which runs without torch).
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.gradcheck import check_layer
from minicnn.layers import BatchNorm1D, BatchNorm2D
from tests.helpers import DTYPES, assert_close, check_torch_parity, copy_to_torch, require_torch

# (layer class, input shape with batch, momentum, eps): 1-D and 2-D, tiny and uneven
# batches, a batch of one image (H·W > 1 values per channel), 1x1 maps, non-default
# momentum and eps.
CASES = [
    (BatchNorm1D, (8, 5), 0.1, 1e-5),
    (BatchNorm1D, (2, 3), 0.3, 1e-3),
    (BatchNorm1D, (17, 1), 0.1, 1e-5),
    (BatchNorm2D, (4, 3, 5, 5), 0.1, 1e-5),
    (BatchNorm2D, (1, 2, 3, 4), 0.5, 1e-5),
    (BatchNorm2D, (6, 4, 1, 1), 0.1, 1e-2),
    (BatchNorm2D, (3, 7, 2, 3), 1.0, 1e-5),
]
IDS = [f"{cls.__name__}-{'x'.join(map(str, shape))}-m{m}-eps{eps}" for cls, shape, m, eps in CASES]


def _torch_module(cls, channels, momentum, eps):
    torch = require_torch()
    module_cls = torch.nn.BatchNorm1d if cls is BatchNorm1D else torch.nn.BatchNorm2d
    return module_cls(channels, momentum=momentum, eps=eps)


def _randomised(cls, shape, momentum, eps, seed=0, dtype=np.float64):
    """A built layer with non-trivial gamma, beta and running statistics."""
    rng = np.random.default_rng(seed)
    layer = cls(momentum=momentum, eps=eps, dtype=dtype)
    layer.build(shape[1:])
    channels = shape[1]
    layer.params["weight"][...] = rng.uniform(0.5, 2.0, channels) * rng.choice([-1, 1], channels)
    layer.params["bias"][...] = rng.standard_normal(channels)
    layer.buffers["running_mean"][...] = rng.standard_normal(channels)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, channels)
    return layer


def _batch(shape, seed, dtype=np.float64):
    """Inputs whose mean and spread are far from 0 and 1, so normalising matters."""
    rng = np.random.default_rng(seed)
    return (3.0 + 2.5 * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls, shape, momentum, eps", CASES, ids=IDS)
def test_gradcheck(cls, shape, momentum, eps, training):
    layer = _randomised(cls, shape, momentum, eps)
    report = check_layer(layer, shape, training=training, max_checks=40)
    assert report.ok, str(report)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("cls, shape, momentum, eps", CASES, ids=IDS)
def test_torch_parity_training(cls, shape, momentum, eps, dtype):
    layer = _randomised(cls, shape, momentum, eps, dtype=dtype)
    module = _torch_module(cls, shape[1], momentum, eps)
    check_torch_parity(layer, module, _batch(shape, 1), dtype, training=True)
    # The one training step also moved the running statistics, as torch's did.
    assert_close(layer.buffers["running_mean"], module.running_mean.detach().numpy(), dtype, "running_mean")
    assert_close(layer.buffers["running_var"], module.running_var.detach().numpy(), dtype, "running_var")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("cls, shape, momentum, eps", CASES[::2], ids=IDS[::2])
def test_torch_parity_eval(cls, shape, momentum, eps, dtype):
    layer = _randomised(cls, shape, momentum, eps, dtype=dtype)
    running_before = {k: v.copy() for k, v in layer.buffers.items()}
    module = _torch_module(cls, shape[1], momentum, eps)
    check_torch_parity(layer, module, _batch(shape, 2), dtype, training=False)
    for key, value in layer.buffers.items():
        np.testing.assert_array_equal(value, running_before[key], err_msg=f"eval changed {key}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("cls, shape", [(BatchNorm1D, (6, 4)), (BatchNorm2D, (3, 5, 4, 4))])
def test_running_statistics_follow_torch_over_steps(cls, shape, dtype):
    torch = require_torch()
    layer = cls(momentum=0.2, dtype=dtype)
    layer.build(shape[1:])
    module = _torch_module(cls, shape[1], 0.2, 1e-5).to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_to_torch(layer, module)
    module.train()
    for step in range(5):
        # Different batch sizes and shifting statistics, so each step moves the buffers differently.
        x = _batch((shape[0] + step,) + shape[1:], seed=10 + step, dtype=dtype) * (1 + step)
        layer.forward(x, training=True)
        with torch.no_grad():
            module(torch.from_numpy(x))
        assert_close(layer.buffers["running_mean"], module.running_mean.numpy(), dtype, f"running_mean, step {step}")
        assert_close(layer.buffers["running_var"], module.running_var.numpy(), dtype, f"running_var, step {step}")

    module.eval()
    x = _batch(shape, seed=99, dtype=dtype)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert_close(layer.forward(x, training=False), expected, dtype, "eval output after training")


def test_hand_computed_batch():
    # Two samples, one channel: x = [1, 3] -> mean 2, biased variance 1, unbiased variance 2.
    layer = BatchNorm1D(momentum=0.1, eps=1e-5, dtype=np.float64)
    x = np.array([[1.0], [3.0]])
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y[:, 0], [-1 / np.sqrt(1 + 1e-5), 1 / np.sqrt(1 + 1e-5)], rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_mean"], [0.9 * 0 + 0.1 * 2], rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_var"], [0.9 * 1 + 0.1 * 2], rtol=1e-12)
    # With dy = [1, 1] the output shift absorbs everything: d_beta = 2, d_gamma = 0, dx = 0.
    dx = layer.backward(np.ones((2, 1)))
    np.testing.assert_allclose(dx, 0.0, atol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], [2.0])
    np.testing.assert_allclose(layer.grads["weight"], [0.0], atol=1e-12)
    # Evaluation uses the running statistics: (x - 0.2) / sqrt(1.1 + eps).
    np.testing.assert_allclose(layer.forward(x, training=False)[:, 0],
                               (np.array([1.0, 3.0]) - 0.2) / np.sqrt(1.1 + 1e-5), rtol=1e-12)


def test_params_buffers_and_default_dtype():
    layer = BatchNorm2D()
    y = layer.forward(_batch((2, 3, 4, 4), 0), training=True)
    assert y.dtype == np.float32
    assert sorted(layer.params) == ["bias", "weight"] and sorted(layer.buffers) == ["running_mean", "running_var"]
    for store in (layer.params, layer.buffers):
        assert all(v.shape == (3,) and v.dtype == np.float32 for v in store.values())
    # Normalised per channel: mean 0, (biased) variance 1 up to eps.
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-3)


@pytest.mark.parametrize("make, built_on, x_shape, match", [
    (BatchNorm2D, (3, 5, 5), (8, 1, 5, 5), r"BatchNorm2D expected 3 input channels, got 1 \(input shape \(8, 1, 5, 5\)\)"),
    (BatchNorm1D, (4,), (8, 6), r"BatchNorm1D expected 4 input channels, got 6"),
    (BatchNorm2D, None, (8, 3), r"BatchNorm2D expected a 4-D input"),
    (BatchNorm1D, None, (8, 3, 2, 2), r"BatchNorm1D expected a 2-D input"),
])
def test_bad_input_shapes(make, built_on, x_shape, match):
    layer = make()
    if built_on is not None:
        layer.build(built_on)
    with pytest.raises(ValueError, match=match):
        layer.forward(np.ones(x_shape, np.float32), training=True)


@pytest.mark.parametrize("make, x_shape", [(BatchNorm1D, (1, 4)), (BatchNorm2D, (1, 3, 1, 1))])
def test_one_value_per_channel_fails_in_training_only(make, x_shape):
    layer = make()
    with pytest.raises(ValueError, match="expected more than 1 value per channel when training"):
        layer.forward(np.ones(x_shape, np.float32), training=True)
    # Evaluation normalises with the running statistics, so a single sample is fine.
    np.testing.assert_allclose(layer.forward(np.ones(x_shape, np.float32)), 1 / np.sqrt(1 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(momentum=-0.1), ValueError, r"momentum in \[0, 1\], got -0.1"),
    (dict(momentum=1.5), ValueError, r"momentum in \[0, 1\], got 1.5"),
    (dict(eps=0.0), ValueError, r"eps > 0, got 0.0"),
    (dict(eps=-1e-5), ValueError, r"eps > 0"),
    (dict(momentum="0.1"), TypeError, r"momentum as a real number"),
    (dict(eps=None), TypeError, r"eps as a real number"),
])
@pytest.mark.parametrize("cls", [BatchNorm1D, BatchNorm2D])
def test_bad_constructor_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=f"{cls.__name__} expected {match}"):
        cls(**kwargs)
