"""Every layer on CuPy equals the same layer on NumPy (and PyTorch on CUDA).

Run on a machine with a CUDA GPU and CuPy: ``pytest -m gpu`` (``make test-gpu``).
Elsewhere the whole module is skipped with the reason. The NumPy backend is
itself checked against finite differences and PyTorch (tests/layers), so equal
numbers here carry those checks over to the GPU.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn import backend, layers, losses, models, optim
from minicnn.kernels import gpu, reference
from tests.helpers import assert_close, mnist_dir

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("cupy" not in backend.available(),
                       reason="needs CuPy and a CUDA GPU (pip install minicnn[gpu])"),
]

LAYERS = {
    "conv3x3": (lambda: layers.Conv2D(8, 3, padding=1, activation="relu"), (4, 3, 12, 12)),
    "conv_same_s2_dil": (lambda: layers.Conv2D(5, 3, stride=2, padding="same", dilation=2), (3, 2, 11, 10)),
    "conv1x1": (lambda: layers.Conv2D(6, 1), (2, 4, 7, 7)),
    "depthwise": (lambda: layers.DepthwiseConv2D(3, depth_multiplier=2, stride=2, padding="same"), (2, 3, 9, 9)),
    "separable": (lambda: layers.SeparableConv2D(7, 3, padding=1), (2, 3, 8, 8)),
    "transpose": (lambda: layers.Conv2DTranspose(4, 3, stride=2, padding=1, output_padding=1), (2, 3, 5, 5)),
    "maxpool": (lambda: layers.MaxPool2D(3, stride=2, padding=1), (2, 3, 9, 9)),
    "avgpool": (lambda: layers.AvgPool2D(2), (2, 3, 8, 8)),
    "global_avg": (lambda: layers.GlobalAvgPool2D(), (2, 3, 5, 5)),
    "global_max": (lambda: layers.GlobalMaxPool2D(), (2, 3, 5, 5)),
    "upsampling": (lambda: layers.UpSampling2D(2), (2, 3, 4, 4)),
    "dense": (lambda: layers.Dense(7, activation="tanh"), (5, 11)),
    "batchnorm2d": (lambda: layers.BatchNorm2D(), (4, 3, 5, 5)),
    "batchnorm1d": (lambda: layers.BatchNorm1D(), (6, 5)),
    "softmax": (lambda: layers.Softmax(), (4, 10)),
    "elu": (lambda: layers.ELU(), (4, 10)),
}


def _run(layer, x, dy):
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    return backend.to_numpy(y), backend.to_numpy(dx), {k: backend.to_numpy(g) for k, g in layer.grads.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_on_cupy_equals_numpy(name, dtype):
    make, shape = LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    cpu_layer = make().astype(dtype)
    cpu_layer.build(shape[1:])
    gpu_layer = make().astype(dtype)
    gpu_layer.build(shape[1:])
    gpu_layer.load_state_dict(cpu_layer.state_dict())
    gpu_layer.to("cupy")

    y_cpu = cpu_layer.forward(x, training=True)
    dy = rng.standard_normal(y_cpu.shape).astype(dtype)
    y_cpu, dx_cpu, grads_cpu = y_cpu, cpu_layer.backward(dy), dict(cpu_layer.grads)
    y_gpu, dx_gpu, grads_gpu = _run(gpu_layer, backend.to_device(x, "cupy"), backend.to_device(dy, "cupy"))

    assert_close(y_gpu, y_cpu, dtype, f"{name} forward")
    assert_close(dx_gpu, dx_cpu, dtype, f"{name} input grad")
    for key in grads_cpu:
        assert_close(grads_gpu[key], grads_cpu[key], dtype, f"{name} grad of {key}")
    for key, buffer in cpu_layer.buffers.items():
        assert_close(backend.to_numpy(gpu_layer.buffers[key]), buffer, dtype, f"{name} buffer {key}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_on_cupy_equal_reference(dtype):
    cupy = backend.require_cupy()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 11, 9)).astype(dtype)
    args = ((3, 2), (2, 1), (1, 2, 0, 1), (2, 1))
    cols = gpu.im2col(cupy.asarray(x), *args)
    assert_close(cols.get(), reference.im2col(x, *args), dtype)
    assert_close(gpu.col2im(cols, x.shape, *args).get(), reference.col2im(cols.get(), x.shape, *args), dtype)


def test_mixing_numpy_input_with_cupy_model_is_a_clear_error():
    layer = layers.Conv2D(4, 3)
    layer.build((3, 8, 8))
    layer.to("cupy")
    with pytest.raises(TypeError, match="model.to"):
        layer.forward(np.zeros((1, 3, 8, 8), np.float32))


def test_conv_on_cupy_equals_torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch here has no CUDA")
    layer = layers.Conv2D(16, 3, stride=2, padding=1).astype(np.float64)
    layer.build((8, 17, 17))
    conv = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1).double().cuda()
    conv.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    layer.to("cupy")
    x = np.random.default_rng(2).standard_normal((4, 8, 17, 17))
    tx = torch.from_numpy(x).cuda().requires_grad_(True)
    ty = conv(tx)
    y = layer.forward(backend.to_device(x, "cupy"))
    assert_close(y.get(), ty.detach().cpu().numpy(), np.float64, "forward vs torch CUDA")
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dx = layer.backward(backend.to_device(dy, "cupy"))
    ty.backward(torch.from_numpy(dy).cuda())
    assert_close(dx.get(), tx.grad.cpu().numpy(), np.float64, "input grad vs torch CUDA")
    assert_close(layer.grads["weight"].get(), conv.weight.grad.cpu().numpy(), np.float64, "weight grad")


def test_training_step_on_cupy_equals_numpy():
    rng = np.random.default_rng(4)
    x = rng.random((16, 1, 28, 28)).astype(np.float64)
    y = rng.integers(0, 10, 16)
    results = []
    for device in ("numpy", "cupy"):
        import minicnn
        minicnn.seed(0)
        model = models.lenet5().astype(np.float64)
        model.build((1, 28, 28))
        model.to(device)
        opt = optim.SGD(model, lr=0.1, momentum=0.9)
        loss = losses.CrossEntropy()
        for _ in range(3):
            loss.forward(model.forward(backend.to_device(x, device), training=True), backend.to_device(y, device))
            model.backward(loss.backward())
            opt.step()
        results.append(model.state_dict())
    for key in results[0]:
        assert_close(results[1][key], results[0][key], np.float64, key)


@pytest.mark.slow
def test_lenet5_trains_on_mnist_on_the_gpu_like_on_the_cpu():
    import minicnn
    from minicnn import data

    path = mnist_dir()
    if path is None:
        pytest.skip("the MNIST test set is not in ../shared/data/mnist or $MINICNN_DATA")
    x, y = data.load_mnist(path, split="test")
    accuracies = {}
    for device in ("numpy", "cupy"):
        minicnn.seed(0)
        model = models.lenet5()
        model.build((1, 28, 28))
        model.to(device)
        model.compile(optimizer="adam", loss="cross_entropy")
        model.fit(x[:8000], y[:8000], epochs=2, batch_size=64, verbose=0)
        accuracies[device] = model.evaluate(x[8000:], y[8000:])["accuracy"]
    assert accuracies["cupy"] >= 0.96
    assert abs(accuracies["cupy"] - accuracies["numpy"]) < 0.01
