"""``python -m benchmarks.gpu [--batches 128 512] [--json]``: minicnn on CuPy against PyTorch/cuDNN.

The GPU rows of the benchmark suite. Same process, same shapes, same weights:

* layers L1–L6 (the CPU suite's shapes, batch scaled to each ``--batches`` value),
  max-pool and BatchNorm, forward + backward;
* training steps (forward, cross-entropy, backward, SGD momentum update) of
  LeNet-5 (1x28x28) and VGG-mini (3x32x32);
* VGG-mini's training step on minicnn's CPU backend, for the GPU-over-CPU speed-up.

Timing: CUDA events recorded on the current stream around each call, after a
warm-up (which also compiles minicnn's kernels and lets cuDNN pick algorithms);
the median of the repeats is reported. A call is timed from its first launch to
its last kernel's end, so minicnn's Python launch overhead counts when it leaves
the GPU idle — as it would in training. Targets from the GPU issue: LeNet-5 and
VGG-mini at batch 512 within 1.5x of PyTorch; VGG-mini on the GPU >= 10x faster
than minicnn on the CPU.

Without CuPy and a GPU, or without a CUDA build of PyTorch, it says which and
exits 0, so it can sit in any script.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

LAYERS = [  # name, (C_in, H, W), factory args: same shapes as benchmarks/cases.py
    ("L1 conv 1x28x28->6 k5 p2", (1, 28, 28), ("conv", 6, 5, 2)),
    ("L2 conv 6x14x14->16 k5 p0", (6, 14, 14), ("conv", 16, 5, 0)),
    ("L3 conv 64x32x32->64 k3 p1", (64, 32, 32), ("conv", 64, 3, 1)),
    ("L4 conv 128x16x16->128 k3 p1", (128, 16, 16), ("conv", 128, 3, 1)),
    ("L5 depthwise 64x32x32 k3 p1", (64, 32, 32), ("depthwise", 64, 3, 1)),
    ("L6 conv 64x32x32->128 k1 p0", (64, 32, 32), ("conv", 128, 1, 0)),
    ("maxpool 2x2 64x32x32", (64, 32, 32), ("maxpool",)),
    ("batchnorm2d 64x32x32", (64, 32, 32), ("batchnorm",)),
]
MODELS = [("LeNet-5", "lenet5", (1, 28, 28)), ("VGG-mini", "vgg_mini", (3, 32, 32))]
MAX_MODEL_RATIO = 1.5
MIN_GPU_SPEEDUP = 10.0


def _requirements():
    """(cupy, torch) or a reason why the GPU rows cannot run here."""
    from minicnn import backend

    if "cupy" not in backend.available():
        try:
            backend.set_backend("cupy")
        except backend.BackendUnavailableError as exc:
            return None, str(exc)
    import torch

    if not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} here has no CUDA: nothing to compare against"
    return (backend.require_cupy(), torch), None


def _time_gpu(fn, cupy, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()`` between two CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def _time_torch(fn, torch, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _make_layer(kind, *args):
    from minicnn import layers

    if kind == "conv":
        return layers.Conv2D(args[0], args[1], padding=args[2])
    if kind == "depthwise":
        return layers.DepthwiseConv2D(args[1], padding=args[2])
    if kind == "maxpool":
        return layers.MaxPool2D(2)
    return layers.BatchNorm2D()


def _torch_layer(torch, kind, c_in, *args):
    if kind == "conv":
        return torch.nn.Conv2d(c_in, args[0], args[1], padding=args[2])
    if kind == "depthwise":
        return torch.nn.Conv2d(c_in, c_in, args[1], padding=args[2], groups=c_in)
    if kind == "maxpool":
        return torch.nn.MaxPool2d(2)
    return torch.nn.BatchNorm2d(c_in)


def layer_row(name, sample_shape, spec, batch, cupy, torch, warmup, repeats) -> dict:
    from minicnn import backend

    layer = _make_layer(*spec)
    layer.build(sample_shape)
    module = _torch_layer(torch, spec[0], sample_shape[0], *spec[1:])
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()}, strict=False)
    module = module.cuda().train()
    layer.to("cupy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + sample_shape, dtype=np.float32)
    gx = backend.to_device(x, "cupy")
    dy = cupy.asarray(rng.standard_normal(layer.forward(gx, training=True).shape, dtype=np.float32))
    tx = torch.from_numpy(x).cuda().requires_grad_(True)
    tdy = torch.as_tensor(cupy.asnumpy(dy)).cuda()

    def run_minicnn():
        layer.forward(gx, training=True)
        layer.backward(dy)

    def run_torch():
        tx.grad = None
        module.zero_grad(set_to_none=True)
        module(tx).backward(tdy)

    ms = _time_gpu(run_minicnn, cupy, warmup, repeats)
    torch_ms = _time_torch(run_torch, torch, warmup, repeats)
    return {"name": f"{name} b{batch}", "minicnn_ms": ms, "torch_ms": torch_ms, "ratio": ms / torch_ms}


def _training_step(factory, sample_shape, batch, device):
    """A minicnn training-step closure for ``device`` and the model it trains."""
    import minicnn
    from minicnn import backend, losses, models, optim

    minicnn.seed(0)
    model = getattr(models, factory)(in_channels=sample_shape[0])
    model.build(sample_shape)
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.random((batch,) + sample_shape, dtype=np.float32), device)
    y = backend.to_device(rng.integers(0, 10, batch), device)
    model.to(device)
    model.skip_input_grad = True  # as fit() does: nobody needs dL/d(data)
    loss, opt = losses.CrossEntropy(), optim.SGD(model, lr=0.01, momentum=0.9)

    def step():
        loss.forward(model.forward(x, training=True), y)
        model.backward(loss.backward())
        opt.step()

    return step, model


def model_row(label, factory, sample_shape, batch, cupy, torch, warmup, repeats) -> dict:
    from minicnn import interop

    step, model = _training_step(factory, sample_shape, batch, "cupy")
    model.to("numpy")
    module = interop.to_torch(model).cuda().train()
    model.to("cupy")
    rng = np.random.default_rng(0)
    tx = torch.from_numpy(rng.random((batch,) + sample_shape, dtype=np.float32)).cuda()
    ty = torch.from_numpy(rng.integers(0, 10, batch)).cuda()
    topt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)

    def run_torch():
        topt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(module(tx), ty).backward()
        topt.step()

    ms = _time_gpu(step, cupy, warmup, repeats)
    torch_ms = _time_torch(run_torch, torch, warmup, repeats)
    row = {"name": f"{label} train step b{batch}", "minicnn_ms": ms, "torch_ms": torch_ms,
           "ratio": ms / torch_ms}
    if batch == 512:
        row["target"] = f"ratio<={MAX_MODEL_RATIO:g}"
        row["pass"] = row["ratio"] <= MAX_MODEL_RATIO
    return row


def cpu_speedup_row(batch, cupy, warmup, repeats) -> dict:
    """VGG-mini's step on minicnn's CPU backend against the same step on the GPU."""
    cpu_step, _ = _training_step("vgg_mini", (3, 32, 32), batch, "numpy")
    gpu_step, _ = _training_step("vgg_mini", (3, 32, 32), batch, "cupy")
    cpu_step()
    cpu_times = []
    for _ in range(max(3, repeats // 4)):
        start = time.perf_counter()
        cpu_step()
        cpu_times.append(1e3 * (time.perf_counter() - start))
    cpu_ms, gpu_ms = statistics.median(cpu_times), _time_gpu(gpu_step, cupy, warmup, repeats)
    speedup = cpu_ms / gpu_ms
    return {"name": f"VGG-mini train step b{batch}: minicnn CPU / minicnn GPU", "cpu_ms": cpu_ms,
            "minicnn_ms": gpu_ms, "speedup": speedup, "target": f"speedup>={MIN_GPU_SPEEDUP:g}",
            "pass": speedup >= MIN_GPU_SPEEDUP}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    found, reason = _requirements()
    if found is None:
        print(f"GPU benchmarks skipped: {reason}")
        return 0
    cupy, torch = found
    torch.backends.cudnn.benchmark = True
    rows = []
    for batch in args.batches:
        for name, shape, spec in LAYERS:
            rows.append(layer_row(name, shape, spec, batch, cupy, torch, 5, args.repeats))
        for label, factory, shape in MODELS:
            rows.append(model_row(label, factory, shape, batch, cupy, torch, 5, args.repeats))
    rows.append(cpu_speedup_row(128, cupy, 5, args.repeats))

    props = cupy.cuda.runtime.getDeviceProperties(0)
    meta = {"gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "driver": cupy.cuda.runtime.driverGetVersion(), "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cupy": cupy.__version__, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return 0
    print(" ".join(f"{k}={v}" for k, v in meta.items()))
    print(f"{'case':<52} {'minicnn ms':>10} {'torch ms':>9} {'ratio':>6}  target")
    for row in rows:
        verdict = "" if "pass" not in row else f"{'PASS' if row['pass'] else 'MISS'} {row['target']}"
        if "speedup" in row:
            print(f"{row['name']:<52} {row['minicnn_ms']:>10.2f} {row['cpu_ms']:>9.2f} "
                  f"{row['speedup']:>5.1f}x  {verdict}   (CPU ms in the torch column)")
        else:
            print(f"{row['name']:<52} {row['minicnn_ms']:>10.2f} {row['torch_ms']:>9.2f} "
                  f"{row['ratio']:>6.2f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
