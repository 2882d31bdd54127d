"""What is measured: single layers (forward + backward) and whole training steps.

Each ``Case`` builds, on demand, a pair of zero-argument callables, one running
minicnn and one running the equivalent PyTorch code on the same shapes and the
same weights. Layer cases time ``forward(training=True)`` then ``backward(dy)``
with the input gradient computed in both frameworks; training steps time
forward, cross-entropy, backward and an SGD (momentum 0.9) update.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Case", "layer_cases", "model_cases", "all_cases"]


@dataclass
class Case:
    name: str
    build: callable                 # () -> (minicnn_fn, torch_fn)
    gflop: float = 0.0              # useful work of one call (forward + backward), GFLOP
    max_ratio: float | None = None  # target: minicnn ms / torch ms <= this
    min_ceiling: float | None = None  # target: GFLOP/s >= this fraction of the sgemm ceiling
    quick: bool = False             # part of the --quick subset
    notes: list = field(default_factory=list)


def _torch():
    import torch
    return torch


def _conv_gflop(n, c_in, h, w, c_out, k, pad, groups=1):
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    forward = 2 * n * c_out * ho * wo * (c_in // groups) * k * k
    return 3 * forward / 1e9  # forward, input grad and weight grad: one GEMM-sized product each


def _layer_pair(layer, module, x_shape, seed=0):
    """Callables running forward+backward of a minicnn layer and a torch module with equal weights."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in layer.state_dict().items()}
    module.load_state_dict(state, strict=False)
    module.train()
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tdy = torch.from_numpy(dy.copy())

    def run_minicnn():
        layer.forward(x, training=True)
        layer.backward(dy)

    def run_torch():
        tx.grad = None
        module.zero_grad(set_to_none=True)
        module(tx).backward(tdy)

    run_minicnn.release = lambda: _drop_caches(layer)
    return run_minicnn, run_torch


def _drop_caches(model):
    """Forget what every layer keeps from its last call (the memory phase counts it as needed)."""
    for layer in model.layers_recursive():
        layer._clear_cache()


def _conv_case(name, n, c_in, h, w, c_out, k, pad, **targets):
    def build():
        from minicnn.layers import Conv2D
        torch = _torch()
        layer = Conv2D(c_out, k, padding=pad, in_channels=c_in)
        module = torch.nn.Conv2d(c_in, c_out, k, padding=pad)
        return _layer_pair(layer, module, (n, c_in, h, w))
    return Case(f"{name} conv {n}x{c_in}x{h}x{w}->{c_out} k{k} p{pad}", build,
                _conv_gflop(n, c_in, h, w, c_out, k, pad), **targets)


def _depthwise_case(name, n, c, h, w, k, pad, **targets):
    def build():
        from minicnn.layers import DepthwiseConv2D
        torch = _torch()
        layer = DepthwiseConv2D(k, padding=pad, in_channels=c)
        module = torch.nn.Conv2d(c, c, k, padding=pad, groups=c)
        return _layer_pair(layer, module, (n, c, h, w))
    return Case(f"{name} depthwise {n}x{c}x{h}x{w} k{k} p{pad}", build,
                _conv_gflop(n, c, h, w, c, k, pad, groups=c), **targets)


def _maxpool_case(n, c, h, w, **targets):
    def build():
        from minicnn.layers import MaxPool2D
        return _layer_pair(MaxPool2D(2), _torch().nn.MaxPool2d(2), (n, c, h, w))
    return Case(f"maxpool 2x2 {n}x{c}x{h}x{w}", build, **targets)


def _batchnorm_case(n, c, h, w, **targets):
    def build():
        from minicnn.layers import BatchNorm2D
        return _layer_pair(BatchNorm2D(), _torch().nn.BatchNorm2d(c), (n, c, h, w))
    return Case(f"batchnorm2d {n}x{c}x{h}x{w}", build, **targets)


def layer_cases() -> list[Case]:
    return [
        _conv_case("L1", 128, 1, 28, 28, 6, 5, 2, max_ratio=1.2, quick=True),
        _conv_case("L2", 128, 6, 14, 14, 16, 5, 0, max_ratio=1.2, quick=True),
        _conv_case("L3", 64, 64, 32, 32, 64, 3, 1, max_ratio=1.2, min_ceiling=0.7),
        _conv_case("L4", 64, 128, 16, 16, 128, 3, 1, max_ratio=1.2, min_ceiling=0.7),
        _depthwise_case("L5", 64, 64, 32, 32, 3, 1, max_ratio=0.7, quick=True),
        _conv_case("L6", 64, 64, 32, 32, 128, 1, 0, max_ratio=0.7),
        _maxpool_case(64, 64, 32, 32, max_ratio=0.7, quick=True),
        _batchnorm_case(64, 64, 32, 32, max_ratio=0.7, quick=True),
    ]


def _training_step_case(label, factory, batch, sample_shape, **targets):
    def build():
        import minicnn
        from minicnn import interop, losses, models, optim
        torch = _torch()
        minicnn.seed(0)
        model = getattr(models, factory)(in_channels=sample_shape[0])
        model.build(sample_shape)
        module = interop.to_torch(model).train()
        model.children()[0].skip_input_grad = True  # as fit() does: nobody needs dL/d(data)
        rng = np.random.default_rng(0)
        x = rng.random((batch,) + sample_shape, dtype=np.float32)
        y = rng.integers(0, 10, batch)
        loss = losses.CrossEntropy()
        opt = optim.SGD(model, lr=0.01, momentum=0.9)
        tx, ty = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
        topt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)

        def run_minicnn():
            loss.forward(model.forward(x, training=True), y)
            model.backward(loss.backward())
            opt.step()

        def run_torch():
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(module(tx), ty).backward()
            topt.step()

        run_minicnn.release = lambda: _drop_caches(model)
        return run_minicnn, run_torch
    return Case(f"{label} train step b{batch} {'x'.join(map(str, sample_shape))}", build, **targets)


def model_cases() -> list[Case]:
    return [
        _training_step_case("LeNet-5", "lenet5", 128, (1, 28, 28), max_ratio=1.0, quick=True),
        _training_step_case("VGG-mini", "vgg_mini", 32, (3, 32, 32)),
        _training_step_case("MobileNet-mini", "mobilenet_mini", 32, (3, 32, 32)),
    ]


def all_cases(quick: bool = False) -> list[Case]:
    cases = layer_cases() + model_cases()
    return [c for c in cases if c.quick] if quick else cases
