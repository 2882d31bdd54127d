"""Shared test machinery: tolerances and the PyTorch parity check.

PyTorch is the independent witness: weights are copied from a minicnn layer
into the equivalent torch module (parameter names match by contract), both run
forward and backward on the same input and upstream gradient, and the output,
the input gradient and every parameter gradient must agree.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# float64 must agree to 1e-6 relative, float32 to 1e-4 (the contract).
TOLERANCES = {np.float64: dict(rtol=1e-6, atol=1e-9), np.float32: dict(rtol=1e-4, atol=1e-5)}
DTYPES = [np.float64, np.float32]


def require_torch():
    """The torch module, or skip the test with the reason."""
    torch = pytest.importorskip("torch", reason="PyTorch (the parity oracle) is not installed; "
                                                 "`pip install -e .[test]`")
    torch.set_num_threads(1)
    return torch


def assert_close(actual, expected, dtype, what=""):
    tol = TOLERANCES[np.dtype(dtype).type]
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               err_msg=what, **tol)


def copy_to_torch(layer, module):
    """Copy a built minicnn layer's params and buffers into a torch module (same names)."""
    torch = require_torch()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in layer.state_dict().items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert not missing and not unexpected, f"name mismatch: missing {missing}, unexpected {unexpected}"


def check_torch_parity(layer, module, x, dtype, training=False, seed=0):
    """Forward, input grad and every param grad of ``layer`` equal those of ``module``.

    ``layer`` is built (or builds) on ``x``; its weights are copied into ``module``.
    Returns ``(y, torch_y)`` for further checks.
    """
    torch = require_torch()
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=dtype)
    layer.astype(dtype)
    if not layer.built:
        layer.build(x.shape[1:])
    module = module.to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_to_torch(layer, module)
    module.train(training)

    y = layer.forward(x, training=training)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = module(tx)
    assert y.shape == tuple(ty.shape), f"output shape {y.shape} vs torch {tuple(ty.shape)}"
    assert_close(y, ty.detach().numpy(), dtype, "forward")

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    ty.backward(torch.from_numpy(dy))
    assert_close(dx, tx.grad.numpy(), dtype, "input grad")
    torch_grads = {name: p.grad for name, p in module.named_parameters()}
    for name, _, grad in layer.named_parameters():
        assert torch_grads[name] is not None, f"torch has no grad for {name}"
        assert_close(grad, torch_grads[name].numpy(), dtype, f"grad of {name}")
    return y, ty.detach().numpy()


def mnist_dir() -> Path | None:
    """Where the real MNIST test set lives (``$MINICNN_DATA`` or ``../shared/data/mnist``)."""
    candidates = []
    if os.environ.get("MINICNN_DATA"):
        env = Path(os.environ["MINICNN_DATA"])
        candidates += [env / "mnist", env]
    root = Path(__file__).resolve().parents[1]
    candidates += [root.parent / "shared" / "data" / "mnist", root / "shared" / "data" / "mnist"]
    for path in candidates:
        if (path / "t10k-images-idx3-ubyte.gz").exists() or (path / "t10k-images-idx3-ubyte").exists():
            return path
    return None
