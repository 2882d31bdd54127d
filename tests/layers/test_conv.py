"""Conv2D, DepthwiseConv2D, SeparableConv2D and Conv2DTranspose against independent oracles.

* central differences (``check_layer``, float64) for the input and every parameter gradient;
* PyTorch for the forward pass, the input gradient and every parameter gradient, in float64
  (rtol 1e-6) and float32 (rtol 1e-4): ``nn.Conv2d``, ``nn.Conv2d(groups=C_in)`` and
  ``nn.ConvTranspose2d`` where torch has the same padding, and small functional modules where
  it does not (TensorFlow-style ``'same'`` padding is applied with an explicit ``F.pad``
  whose amounts the tests compute themselves, not with ``minicnn.layers.shapes``);
* hand computations: the course's 6x6 vertical-edge example and MobileNet's parameter counts.

The chunked (bounded-workspace) path is checked against the one-chunk path, the 1x1 fast
path against torch with im2col switched off, the Conv2D sweep again with the columns ordered
batch-innermost (``kernels.batch_inner``), and every bad argument or input for an error
that names the layer.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from minicnn import backend, kernels
from minicnn.gradcheck import check_layer
from minicnn.layers import Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D
from tests.helpers import DTYPES, check_torch_parity, require_torch

MAX_CHECKS = 40   # entries per tensor perturbed by the gradient check


# ---------------------------------------------------------------------- torch oracles
def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def tf_same_pads(size, k, s, d=1):
    """TensorFlow's 'same' rule, written out here: ceil(size/s) outputs, extra pad after."""
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def f_pad(hw, kernel_size, stride=1, padding=0, dilation=1):
    """``(left, right, top, bottom)`` for ``F.pad`` equivalent to minicnn's ``padding``."""
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel_size), _pair(stride), _pair(dilation)
    if padding == "same":
        top, bottom = tf_same_pads(hw[0], kh, sh, dh)
        left, right = tf_same_pads(hw[1], kw, sw, dw)
        return left, right, top, bottom
    ph, pw = (0, 0) if padding == "valid" else _pair(padding)
    return pw, pw, ph, ph


def functional(fn, **shapes):
    """A torch module with parameters of exactly these names and shapes computing ``fn(x, module)``."""
    torch = require_torch()

    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, shape in shapes.items():
                self.register_parameter(name, None if shape is None else torch.nn.Parameter(torch.zeros(shape)))

        def forward(self, x):
            return fn(x, self)

    return Functional()


def with_activation(module, activation):
    """``module`` followed by ``activation`` (a forward hook that returns replaces the output)."""
    if activation is not None:
        act = getattr(require_torch().nn.functional, activation)
        module.register_forward_hook(lambda _module, _inputs, out: act(out))
    return module


def torch_conv2d(x_shape, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 activation=None, groups=1):
    """torch ``nn.Conv2d`` (``groups`` for depthwise); F.pad + F.conv2d for TF-style 'same'."""
    torch = require_torch()
    F = torch.nn.functional
    c_in = x_shape[1]
    if padding != "same":
        padding = 0 if padding == "valid" else padding
        module = torch.nn.Conv2d(c_in, out_channels, kernel_size, stride, padding, dilation,
                                 groups=groups, bias=bias)
        return with_activation(module, activation)
    pads = f_pad(x_shape[2:], kernel_size, stride, padding, dilation)
    module = functional(lambda x, m: F.conv2d(F.pad(x, pads), m.weight, m.bias, stride, 0, dilation, groups),
                        weight=(out_channels, c_in // groups, *_pair(kernel_size)),
                        bias=(out_channels,) if bias else None)
    return with_activation(module, activation)


def torch_separable(x_shape, out_channels, kernel_size, depth_multiplier=1, stride=1, padding=0,
                    dilation=1, bias=True, activation=None):
    """Keras' SeparableConv2D in torch: grouped conv without bias, then a 1x1 conv with bias."""
    F = require_torch().nn.functional
    c_in = x_shape[1]
    mid = c_in * depth_multiplier
    pads = f_pad(x_shape[2:], kernel_size, stride, padding, dilation)

    def forward(x, m):
        z = F.conv2d(F.pad(x, pads), m.depthwise_weight, None, stride, 0, dilation, groups=c_in)
        return F.conv2d(z, m.pointwise_weight, m.bias)

    module = functional(forward, depthwise_weight=(mid, 1, *_pair(kernel_size)),
                        pointwise_weight=(out_channels, mid, 1, 1), bias=(out_channels,) if bias else None)
    return with_activation(module, activation)


def torch_transpose(x_shape, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                    bias=True, activation=None):
    """torch ``nn.ConvTranspose2d``; for 'same', the unpadded transpose cropped to H*stride.

    'same' is the transpose of a conv('same') on an H*stride input, so torch's full output
    ``(H-1)*s + k`` loses the conv's top/left pads at the start and the rest at the end
    (a negative F.pad crops; where k < s the "crop" is positive and appends zero rows).
    The bias is added after cropping, so appended rows hold the bias, as in TensorFlow.
    """
    torch = require_torch()
    F = torch.nn.functional
    c_in = x_shape[1]
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    if padding != "same":
        padding = 0 if padding == "valid" else padding
        module = torch.nn.ConvTranspose2d(c_in, out_channels, kernel_size, stride, padding,
                                          output_padding, bias=bias)
        return with_activation(module, activation)
    top, _ = tf_same_pads(x_shape[2] * sh, kh, sh)
    left, _ = tf_same_pads(x_shape[3] * sw, kw, sw)
    crop = (-left, -(kw - sw - left), -top, -(kh - sh - top))

    def forward(x, m):
        y = F.pad(F.conv_transpose2d(x, m.weight, None, stride), crop)
        return y if m.bias is None else y + m.bias[:, None, None]

    module = functional(forward, weight=(c_in, out_channels, kh, kw), bias=(out_channels,) if bias else None)
    return with_activation(module, activation)


# ---------------------------------------------------------------------- sweeps
# (input shape with batch, constructor kwargs). Strides 1-2, paddings 0/1/pair/'valid'/'same'
# (odd totals at stride 2 and with an even kernel), dilation 1-2, bias on/off, non-square
# kernels and inputs, the 1x1 fast path and a strided 1x1 that goes through im2col.
CONV_CASES = [
    ((2, 3, 7, 7), dict(out_channels=4, kernel_size=3)),
    ((2, 3, 8, 8), dict(out_channels=5, kernel_size=3, stride=2, padding=1)),
    ((1, 2, 9, 7), dict(out_channels=3, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), bias=False)),
    ((2, 2, 8, 9), dict(out_channels=3, kernel_size=3, stride=2, padding="same")),   # totals 1 and 2
    ((2, 3, 7, 6), dict(out_channels=2, kernel_size=4, padding="same")),             # total 3
    ((2, 2, 9, 9), dict(out_channels=3, kernel_size=3, dilation=2, padding=1)),
    ((2, 2, 10, 9), dict(out_channels=4, kernel_size=3, stride=2, dilation=2, padding="same", bias=False)),
    ((2, 3, 6, 6), dict(out_channels=4, kernel_size=5, padding="valid")),
    ((2, 4, 5, 5), dict(out_channels=6, kernel_size=1)),                             # 1x1 fast path
    ((2, 4, 5, 5), dict(out_channels=3, kernel_size=1, stride=2)),
    ((3, 2, 6, 6), dict(out_channels=3, kernel_size=3, padding=1, activation="relu")),
    ((2, 2, 6, 7), dict(out_channels=3, kernel_size=3, stride=2, padding="same", activation="relu")),
    # ReLU without bias (fused epilogue), an activation outside the fused epilogue, and the
    # 1x1 path (no epilogue) with ReLU.
    ((2, 2, 5, 6), dict(out_channels=3, kernel_size=3, padding=1, bias=False, activation="relu")),
    ((2, 2, 6, 6), dict(out_channels=3, kernel_size=3, activation="elu")),
    ((2, 4, 5, 5), dict(out_channels=3, kernel_size=1, activation="relu")),
    # 3x3 stride 1 with >= 16 channels runs Winograd F(2x2, 3x3): fused ReLU, no bias with
    # 'same' and an odd width, no padding with an activation outside the kernel.
    ((2, 16, 6, 7), dict(out_channels=16, kernel_size=3, padding=1, activation="relu")),
    ((2, 16, 5, 5), dict(out_channels=17, kernel_size=3, padding="same", bias=False)),
    ((1, 16, 6, 5), dict(out_channels=16, kernel_size=3, activation="tanh")),
    # Stride 1 with at most kernels.DIRECT_MAX_TAPS (25) taps per filter runs the direct
    # kernels (so do the 2-channel 3x3 cases above): LeNet-5's conv1, an even kernel with
    # 'same' (pads 1 and 2) and an activation outside the kernel, a rectangular kernel with
    # pads at k - 1 and no bias.
    ((2, 1, 8, 7), dict(out_channels=6, kernel_size=5, padding=2, activation="relu")),
    ((2, 1, 7, 6), dict(out_channels=2, kernel_size=4, padding="same", activation="tanh")),
    ((1, 2, 5, 6), dict(out_channels=3, kernel_size=(3, 2), padding=(2, 1), bias=False)),
]

DEPTHWISE_CASES = [
    ((2, 3, 7, 7), dict(kernel_size=3)),
    ((2, 2, 8, 8), dict(kernel_size=3, depth_multiplier=2, stride=2, padding="same")),  # total 1
    ((1, 3, 9, 8), dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 2), dilation=2, bias=False)),
    ((2, 2, 6, 6), dict(kernel_size=3, depth_multiplier=2, padding=1, dilation=(2, 1))),
    ((2, 3, 6, 7), dict(kernel_size=4, padding="same", activation="relu")),
    ((2, 2, 6, 6), dict(kernel_size=2, depth_multiplier=2, stride=2, padding="valid")),
]

SEPARABLE_CASES = [
    ((2, 3, 7, 7), dict(out_channels=4, kernel_size=3)),
    ((2, 2, 8, 8), dict(out_channels=5, kernel_size=3, depth_multiplier=2, stride=2, padding="same")),
    ((1, 3, 8, 9), dict(out_channels=2, kernel_size=(2, 3), padding=(1, 2), dilation=2, bias=False)),
    ((2, 2, 6, 6), dict(out_channels=3, kernel_size=3, depth_multiplier=2, padding=1, activation="relu")),
    ((2, 2, 7, 6), dict(out_channels=3, kernel_size=3, stride=2, padding="valid")),
]

TRANSPOSE_CASES = [
    ((2, 3, 5, 5), dict(out_channels=4, kernel_size=3)),
    ((2, 3, 5, 5), dict(out_channels=4, kernel_size=3, stride=2, padding=1, output_padding=1)),
    ((1, 2, 4, 6), dict(out_channels=3, kernel_size=(3, 4), stride=(2, 3), padding=(1, 2),
                        output_padding=(0, 2), bias=False)),
    ((2, 2, 4, 4), dict(out_channels=3, kernel_size=4, stride=2, padding=1)),        # DCGAN x2
    ((2, 4, 5, 5), dict(out_channels=2, kernel_size=1)),                             # 1x1 fast path
    ((2, 2, 3, 4), dict(out_channels=2, kernel_size=3, stride=2, padding="same")),   # total 1
    ((2, 2, 3, 3), dict(out_channels=2, kernel_size=2, stride=3, padding="same")),   # k < s
    ((2, 2, 4, 4), dict(out_channels=3, kernel_size=3, stride=2, padding="valid", activation="tanh")),
]

SWEEPS = {
    "conv": (Conv2D, torch_conv2d, CONV_CASES),
    "depthwise": (DepthwiseConv2D, None, DEPTHWISE_CASES),
    "separable": (SeparableConv2D, torch_separable, SEPARABLE_CASES),
    "transpose": (Conv2DTranspose, torch_transpose, TRANSPOSE_CASES),
}


def _case_id(shape, kwargs):
    return "x".join(map(str, shape)) + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.fixture(autouse=True)
def winograd_on_small_inputs(monkeypatch):
    """Layers take the Winograd path, and run their GEMMs side by side, only on large inputs;
    these tests' inputs are small."""
    monkeypatch.setattr(kernels, "WINOGRAD_MIN_WORK", 0)
    monkeypatch.setattr(kernels, "WINOGRAD_MIN_OUTPUT", 1)
    monkeypatch.setattr(kernels.cpu, "SIDE_BY_SIDE_MIN_FLOP", 0)


ALL_CASES = [pytest.param(family, shape, kwargs, id=f"{family}-{_case_id(shape, kwargs)}")
             for family, (_, _, cases) in SWEEPS.items() for shape, kwargs in cases]


def _torch_for(family, shape, kwargs):
    if family == "depthwise":
        kwargs = dict(kwargs)
        m = kwargs.pop("depth_multiplier", 1)
        return torch_conv2d(shape, shape[1] * m, groups=shape[1], **kwargs)
    return SWEEPS[family][1](shape, **kwargs)


def _input(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("family, shape, kwargs", ALL_CASES)
def test_gradcheck(family, shape, kwargs):
    layer = SWEEPS[family][0](**kwargs, dtype=np.float64)
    report = check_layer(layer, shape, max_checks=MAX_CHECKS)
    assert report.ok, str(report)
    assert set(report.max_rel_error) == {"input"} | set(layer.params)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("family, shape, kwargs", ALL_CASES)
def test_torch_parity(family, shape, kwargs, dtype):
    layer = SWEEPS[family][0](**kwargs, dtype=dtype)
    check_torch_parity(layer, _torch_for(family, shape, kwargs), _input(shape, dtype), dtype)


@pytest.fixture
def batch_inner_always(monkeypatch):
    """Every im2col convolution through ``kernels.batch_inner`` (layers take it from batch 4
    and for outputs at most 16 wide), in blocks of 2 samples so that odd batches end in a
    ragged block."""
    monkeypatch.setattr(kernels, "BATCH_INNER_MIN_BATCH", 1)
    monkeypatch.setattr(kernels, "BATCH_INNER_MAX_WIDTH", 10**6)
    monkeypatch.setattr(kernels.batch_inner, "BATCH_BLOCK", 2)


# The Conv2D sweep again with the columns batch-innermost (the cases that take Winograd, the
# direct kernels or the 1x1 path still do), batches of 1 to 3 and one of 5.
BATCH_INNER_CASES = [pytest.param(shape, kwargs, id=_case_id(shape, kwargs))
                     for shape, kwargs in CONV_CASES + [((5, 3, 7, 6), dict(out_channels=4, kernel_size=3, stride=2,
                                                                              padding=1, activation="relu"))]]


@pytest.mark.parametrize("shape, kwargs", BATCH_INNER_CASES)
def test_batch_inner_gradcheck(batch_inner_always, shape, kwargs):
    layer = Conv2D(**kwargs, dtype=np.float64)
    report = check_layer(layer, shape, max_checks=MAX_CHECKS)
    assert report.ok, str(report)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape, kwargs", BATCH_INNER_CASES)
def test_batch_inner_torch_parity(batch_inner_always, shape, kwargs, dtype):
    layer = Conv2D(**kwargs, dtype=dtype)
    check_torch_parity(layer, torch_conv2d(shape, **kwargs), _input(shape, dtype), dtype)


@pytest.mark.parametrize("family, shape, kwargs", ALL_CASES)
def test_output_shape_and_dtype(family, shape, kwargs):
    layer = SWEEPS[family][0](**kwargs)
    y = layer(_input(shape, np.float64))
    assert y.dtype == np.float32
    assert y.shape == (shape[0], *layer.output_shape(shape[1:]))
    stride = _pair(kwargs.get("stride", 1))
    if kwargs.get("padding") == "same" and family == "transpose":
        assert y.shape[2:] == (shape[2] * stride[0], shape[3] * stride[1])
    elif kwargs.get("padding") == "same":
        assert y.shape[2:] == (math.ceil(shape[2] / stride[0]), math.ceil(shape[3] / stride[1]))


def test_transpose_output_size_formula():
    # (H-1)*s - 2p + (k-1) + output_padding + 1 = 4*2 - 2 + 2 + 1 + 1 = 10
    layer = Conv2DTranspose(3, 3, stride=2, padding=1, output_padding=1)
    assert layer.output_shape((2, 5, 5)) == (3, 10, 10)
    assert layer(_input((1, 2, 5, 5), np.float32)).shape == (1, 3, 10, 10)


def test_in_channels_creates_params_in_constructor():
    layer = SeparableConv2D(5, 3, depth_multiplier=2, in_channels=4)
    assert {k: v.shape for k, v in layer.params.items()} == {
        "depthwise_weight": (8, 1, 3, 3), "pointwise_weight": (5, 8, 1, 1), "bias": (5,)}
    assert not layer.built and layer.children() == []
    assert "bias" not in Conv2D(2, 3, bias=False, in_channels=1).params


# ---------------------------------------------------------------------- hand computations
def test_course_vertical_edge_example():
    image = np.array([[3, 0, 1, 2, 7, 4], [1, 5, 8, 9, 3, 1], [2, 7, 2, 5, 1, 3],
                      [0, 1, 3, 1, 7, 8], [4, 2, 1, 6, 2, 8], [2, 4, 5, 2, 3, 9]], dtype=np.float32)
    layer = Conv2D(1, 3, in_channels=1)
    layer.params["weight"][...] = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]])
    layer.params["bias"][...] = 0
    expected = [[-5, -4, 0, 8], [-10, -2, 2, 3], [0, -2, -4, -7], [-3, -2, -3, -16]]
    np.testing.assert_array_equal(layer(image[None, None])[0, 0], expected)


@pytest.mark.parametrize("layer, count", [
    (Conv2D(64, 3), 1792),          # 64 * (3*3*3) weights + 64 biases
    (DepthwiseConv2D(3), 30),       # 3 * (3*3) weights + 3 biases
    (Conv2D(64, 1), 256),           # 64 * 3 weights + 64 biases
    (SeparableConv2D(64, 3), 27 + 192 + 64),
    (Conv2DTranspose(64, 3), 3 * 64 * 9 + 64),
], ids=["conv3x3", "depthwise3x3", "pointwise", "separable", "transpose"])
def test_mobilenet_parameter_counts_on_rgb(layer, count):
    layer.build((3, 32, 32))
    assert layer.parameters_count() == count


def test_init_he_for_relu_glorot_otherwise():
    from minicnn import seed
    seed(0)
    he = Conv2D(64, 3, activation="relu", in_channels=32).params["weight"]
    glorot = Conv2D(64, 3, in_channels=32).params["weight"]
    assert abs(he.std() - math.sqrt(2 / (32 * 9))) < 0.05 * math.sqrt(2 / (32 * 9))
    limit = math.sqrt(6 / (32 * 9 + 64 * 9))
    assert np.abs(glorot).max() <= limit and np.abs(glorot).max() > 0.95 * limit


# ---------------------------------------------------------------------- workspace and fast paths
@pytest.fixture
def workspace_limit():
    saved = backend.get_workspace_limit()
    yield backend.set_workspace_limit
    backend.set_workspace_limit(saved / 2**20)


@pytest.fixture
def im2col_calls(monkeypatch):
    calls = []
    original = kernels.im2col

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(kernels, "im2col", counting)
    return calls


def _run(layer, x, dy, training):
    y = layer.forward(x, training=training)
    dx = layer.backward(dy)
    return y, dx, {k: g.copy() for k, g in layer.grads.items()}


def _fast_path_matches_im2col(monkeypatch, training, counted, switch, layer, x, dy):
    """Run ``layer`` through a fast path (``counted`` = (module, function) it calls once per
    forward), then with ``switch`` = (module, name, off, on) set to ``off`` through im2col:
    equal outputs and gradients; then, ``on`` again, as a first layer (``skip_input_grad``):
    no dx and the same parameter gradients. Returns the calls counted."""
    calls = []
    original = getattr(*counted)
    monkeypatch.setattr(*counted, lambda *a, **k: calls.append(1) or original(*a, **k))
    fast = _run(layer, x, dy, training)
    assert calls == [1]
    monkeypatch.setattr(switch[0], switch[1], switch[2])  # the same layer through im2col
    im2col = _run(layer, x, dy, training)
    assert calls == [1]
    for a, b in zip(fast[:2], im2col[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for name in fast[2]:
        np.testing.assert_allclose(fast[2][name], im2col[2][name], rtol=1e-10, atol=1e-12)
    layer.skip_input_grad = True
    monkeypatch.setattr(switch[0], switch[1], switch[3])
    layer.forward(x, training=training)
    assert layer.backward(dy) is None and calls == [1, 1]
    for name in fast[2]:
        np.testing.assert_allclose(layer.grads[name], im2col[2][name], rtol=1e-10, atol=1e-12)
    return calls


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kwargs", [dict(activation="relu"), dict(activation="tanh", bias=False), dict()],
                         ids=["relu", "tanh-nobias", "linear"])
def test_batch_inner_path_is_taken_and_matches_im2col(monkeypatch, training, kwargs):
    layer = Conv2D(4, 3, stride=2, padding=1, dtype=np.float64, **kwargs)  # batch 5 >= 4, output 4 wide <= 16
    calls = _fast_path_matches_im2col(monkeypatch, training, (kernels.batch_inner, "conv"),
                                      (kernels, "BATCH_INNER_MIN_BATCH", 6, 4), layer,
                                      _input((5, 3, 9, 8), np.float64), _input((5, 4, 5, 4), np.float64, seed=2))
    monkeypatch.setattr(kernels, "BATCH_INNER_MAX_WIDTH", 3)  # too wide now
    layer.forward(_input((5, 3, 9, 8), np.float64), training=training)
    assert calls == [1, 1]


def test_batch_inner_path_stays_within_the_workspace(workspace_limit, im2col_calls):
    """A block of samples whose columns exceed the workspace limit takes the sample-major path,
    which goes down to one sample per chunk."""
    layer, x = Conv2D(4, 3, stride=2, padding=1, dtype=np.float64), _input((5, 3, 9, 8), np.float64)
    per_sample = 27 * 5 * 4 * 8  # (C*kh*kw) x (Ho*Wo) float64 columns
    workspace_limit(5 * per_sample / 2**20)  # the whole batch (one block of 5) fits
    layer.forward(x)
    assert im2col_calls == []
    workspace_limit(4 * per_sample / 2**20)
    layer.forward(x)
    assert im2col_calls == [4, 1]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("factory, x_shape, samples_per_chunk", [
    (lambda: Conv2D(4, 3, padding=1, dtype=np.float64), (5, 3, 8, 8), 2),
    (lambda: Conv2D(4, 3, stride=2, padding="same", dtype=np.float64), (4, 3, 9, 9), 1),
    (lambda: Conv2DTranspose(3, 3, stride=2, padding=1, output_padding=1, dtype=np.float64), (5, 2, 4, 4), 2),
], ids=["conv", "conv-same-s2", "transpose"])
def test_chunked_path_matches_one_chunk(factory, x_shape, samples_per_chunk, training,
                                        workspace_limit, im2col_calls, monkeypatch):
    monkeypatch.setattr(kernels, "BATCH_INNER_MIN_BATCH", 10**6)  # the sample-major columns (GPU's path)
    layer = factory()
    x = _input(x_shape, np.float64)
    dy = _input((x_shape[0], *layer.output_shape(x_shape[1:])), np.float64, seed=2)
    whole = _run(layer, x, dy, training)
    assert im2col_calls == [x_shape[0]] * (1 if training or isinstance(layer, Conv2DTranspose) else 2)

    # Bytes of im2col columns per sample: (C*kh*kw) rows by one column per position of the
    # convolution's output, which for a transposed convolution is this layer's input.
    conv_output_hw = x_shape[2:] if isinstance(layer, Conv2DTranspose) else layer.output_shape(x_shape[1:])[1:]
    per_sample = np.prod(layer.params["weight"].shape[1:]) * np.prod(conv_output_hw) * 8
    workspace_limit((samples_per_chunk + 0.5) * per_sample / 2**20)
    im2col_calls.clear()
    chunked = _run(layer, x, dy, training)
    expected_chunks = math.ceil(x_shape[0] / samples_per_chunk)
    assert len(im2col_calls) >= expected_chunks and max(im2col_calls) <= samples_per_chunk
    for a, b in zip(whole[:2], chunked[:2]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    for key in whole[2]:
        np.testing.assert_allclose(chunked[2][key], whole[2][key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_winograd_path_is_taken_and_matches_im2col(monkeypatch, training):
    calls = []
    original = kernels.winograd.conv3x3
    monkeypatch.setattr(kernels.winograd, "conv3x3", lambda *a, **k: calls.append(1) or original(*a, **k))
    x, layer = _input((3, 16, 7, 6), np.float64), Conv2D(20, 3, padding=1, activation="relu", dtype=np.float64)
    dy = _input((3, 20, 7, 6), np.float64, seed=2)
    winograd = _run(layer, x, dy, training)
    assert calls  # forward (and the input gradient, a Winograd convolution itself)
    taken = len(calls)
    monkeypatch.setattr(kernels, "WINOGRAD_MIN_CHANNELS", 10**6)  # the same layer through im2col
    im2col = _run(layer, x, dy, training)
    assert len(calls) == taken
    for a, b in zip(winograd[:2], im2col[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for name in winograd[2]:
        np.testing.assert_allclose(winograd[2][name], im2col[2][name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kwargs", [dict(activation="relu"), dict(activation="tanh", bias=False), dict()],
                         ids=["relu", "tanh-nobias", "linear"])
def test_direct_path_is_taken_and_matches_im2col(monkeypatch, training, kwargs):
    _fast_path_matches_im2col(monkeypatch, training, (kernels.direct, "conv"), (kernels, "DIRECT_MAX_TAPS", 0, 25),
                              Conv2D(6, 5, padding=2, dtype=np.float64, **kwargs),
                              _input((3, 1, 9, 8), np.float64), _input((3, 6, 9, 8), np.float64, seed=2))


@pytest.mark.parametrize("factory, x_shape", [
    (lambda: Conv2D(4, 5, padding=2), (2, 1, 6, 6)),                        # direct
    (lambda: Conv2D(4, 3, padding=1), (1, 3, 6, 6)),                        # one block, N = 1
    (lambda: Conv2D(4, 3, stride=2), (5, 3, 9, 9)),                         # batch-inner, chunks
    (lambda: Conv2D(4, 3, stride=2), (3, 3, 9, 9)),                         # several blocks
    (lambda: Conv2D(16, 3, padding=1, activation="relu"), (2, 16, 6, 6)),   # Winograd
    (lambda: Conv2DTranspose(3, 3, stride=2, padding=1), (1, 4, 4, 4)),
    (lambda: Conv2DTranspose(3, 3, stride=2), (5, 4, 4, 4)),
], ids=["direct", "conv-n1", "batch-inner", "conv-blocks", "winograd", "transpose-n1", "transpose-blocks"])
def test_results_never_live_in_scratch_memory(factory, x_shape, monkeypatch):
    """Layers keep temporaries in reusable scratch buffers (backend.scratch); what they
    return or cache must not be one: a second layer's calls would overwrite it."""
    from minicnn.layers import conv
    monkeypatch.setattr(conv, "_BLOCK_BYTES", 2000)  # several blocks where the batch allows
    monkeypatch.setattr(kernels.batch_inner, "BATCH_BLOCK", 2)
    monkeypatch.setattr(kernels.batch_inner, "BLOCK_BYTES", 2000)
    first, second = factory(), factory()
    x = _input(x_shape, np.float32)
    y = first.forward(x, training=True)
    dy = _input(y.shape, np.float32, seed=3)
    dx = first.backward(dy)
    saved = [y.copy(), dx.copy()] + [g.copy() for g in first.grads.values()]
    second.forward(_input(x_shape, np.float32, seed=4), training=True)  # same slots, new data
    second.backward(_input(y.shape, np.float32, seed=5))
    for before, after in zip(saved, [y, dx, *first.grads.values()]):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(first.backward(dy), dx)  # forward's caches survived too


@pytest.mark.parametrize("min_batch", [10**6, 1], ids=["im2col", "batch-inner"])
def test_kept_columns_reuse_their_memory_only_where_they_fit(monkeypatch, min_batch):
    """A training forward keeps its im2col columns for backward, backward writes the columns'
    gradient into them once the weight gradient is done, and the next training forward writes
    its columns there again (no fresh pages). Every step must still equal a fresh layer's,
    when the batch size, the input or the mode changes between steps, and a second backward
    must not see the spent columns."""
    monkeypatch.setattr(kernels, "BATCH_INNER_MIN_BATCH", min_batch)
    layer = Conv2D(4, 5, padding=1, in_channels=3, dtype=np.float64)  # padding: zeros rewritten too
    fresh = Conv2D(4, 5, padding=1, in_channels=3, dtype=np.float64)
    fresh.load_state_dict(layer.state_dict())
    kept = None
    for step, (n, training) in enumerate([(2, True), (2, True), (3, True), (3, False), (3, True), (2, True)]):
        x = _input((n, 3, 9, 9), np.float64, seed=step)
        dy = _input((n, 4, 7, 7), np.float64, seed=10 + step)
        y, dx, grads = _run(layer, x, dy, training)
        expected = _run(fresh, x, dy, training)
        fresh._cache_cols = None  # the oracle always starts from fresh memory
        np.testing.assert_array_equal(y, expected[0])
        np.testing.assert_array_equal(dx, expected[1])
        for key in grads:
            np.testing.assert_array_equal(grads[key], expected[2][key])
        cols = layer._cache_spare_cols[0] if training else None  # backward spent them on dcols
        np.testing.assert_array_equal(layer.backward(dy), dx)  # again: columns recomputed
        np.testing.assert_array_equal(layer.grads["weight"], expected[2]["weight"])
        if step == 1:
            assert cols is kept, "the same shape should reuse the last step's columns"
        if step == 2:
            assert cols is not kept and cols.shape[1] == 3 * 49, "a new batch size needs new columns"
        kept = cols
    # A new dtype must not write float32 columns into the float64 ones kept from the last step.
    layer.astype(np.float32)
    fresh.astype(np.float32)
    x, dy = _input((2, 3, 9, 9), np.float32, seed=20), _input((2, 4, 7, 7), np.float32, seed=21)
    y, dx, grads = _run(layer, x, dy, True)
    expected = _run(fresh, x, dy, True)
    np.testing.assert_array_equal(y, expected[0])
    np.testing.assert_array_equal(dx, expected[1])
    assert layer._cache_spare_cols[0].dtype == np.float32


def test_pointwise_fast_path_skips_im2col(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a 1x1, stride-1, unpadded convolution should not call im2col")

    monkeypatch.setattr(kernels, "im2col", refuse)
    monkeypatch.setattr(kernels, "col2im", refuse)
    shape = (3, 4, 5, 6)
    for layer, module in [(Conv2D(5, 1), torch_conv2d(shape, 5, 1)),
                          (Conv2DTranspose(5, 1), torch_transpose(shape, 5, 1)),
                          (SeparableConv2D(5, 1), torch_separable(shape, 5, 1))]:
        check_torch_parity(layer, module, _input(shape, np.float64), np.float64)


@pytest.mark.parametrize("factory", [
    lambda: Conv2D(4, 3, padding=1), lambda: DepthwiseConv2D(3, depth_multiplier=2),
    lambda: SeparableConv2D(4, 3), lambda: Conv2DTranspose(4, 3, stride=2),
], ids=["conv", "depthwise", "separable", "transpose"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_skip_input_grad_returns_none_but_fills_grads(factory, training):
    x = _input((2, 3, 6, 6), np.float64)
    layer = factory().astype(np.float64)
    dy = _input((2, *layer.output_shape((3, 6, 6))), np.float64, seed=3)
    _, dx, grads = _run(layer, x, dy, training)
    assert dx is not None
    layer.skip_input_grad = True
    _, skipped_dx, skipped_grads = _run(layer, x, dy, training)
    assert skipped_dx is None
    for key, grad in grads.items():
        assert np.abs(grad).max() > 0
        np.testing.assert_allclose(skipped_grads[key], grad, rtol=1e-12)


def test_grads_are_overwritten_in_place():
    layer = Conv2D(2, 3, in_channels=1, dtype=np.float64)
    weight_grad = layer.grads["weight"]
    x = _input((2, 1, 5, 5), np.float64)
    layer.forward(x)
    layer.backward(np.ones((2, 2, 3, 3)))
    first = weight_grad.copy()
    layer.forward(x)
    layer.backward(np.ones((2, 2, 3, 3)))
    assert layer.grads["weight"] is weight_grad
    np.testing.assert_allclose(weight_grad, first)   # overwritten, not accumulated


# ---------------------------------------------------------------------- bad arguments and inputs
@pytest.mark.parametrize("factory, error, match", [
    (lambda: Conv2D(0, 3), ValueError, r"Conv2D expected out_channels >= 1, got 0"),
    (lambda: Conv2D(4.0, 3), TypeError, r"Conv2D expected out_channels as an int"),
    (lambda: Conv2D(4, 0), ValueError, r"Conv2D expected kernel_size >= 1"),
    (lambda: Conv2D(4, (3, -1)), ValueError, r"Conv2D expected kernel_size >= 1"),
    (lambda: Conv2D(4, 3, stride=0), ValueError, r"Conv2D expected stride >= 1"),
    (lambda: Conv2D(4, 3, dilation=0), ValueError, r"Conv2D expected dilation >= 1"),
    (lambda: Conv2D(4, 3, padding=-1), ValueError, r"Conv2D expected padding >= 0"),
    (lambda: Conv2D(4, 3, padding="full"), ValueError, r"Conv2D expected padding 'same', 'valid'"),
    (lambda: Conv2D(4, 3, padding=1.5), TypeError, r"Conv2D expected padding as an int or a pair"),
    (lambda: Conv2D(4, 3, activation="swish"), ValueError, r"Conv2D got unknown activation 'swish'"),
    (lambda: Conv2D(4, 3, bias="yes"), TypeError, r"Conv2D expected bias as True or False"),
    (lambda: Conv2D(4, 3, in_channels=0), ValueError, r"Conv2D expected in_channels >= 1"),
    (lambda: DepthwiseConv2D(0), ValueError, r"DepthwiseConv2D expected kernel_size >= 1"),
    (lambda: DepthwiseConv2D(3, depth_multiplier=0), ValueError, r"DepthwiseConv2D expected depth_multiplier >= 1"),
    (lambda: DepthwiseConv2D(3, stride=0), ValueError, r"DepthwiseConv2D expected stride >= 1"),
    (lambda: SeparableConv2D(0, 3), ValueError, r"SeparableConv2D expected out_channels >= 1"),
    (lambda: SeparableConv2D(4, 3, padding="half"), ValueError, r"SeparableConv2D expected padding"),
    (lambda: SeparableConv2D(4, 3, activation="gelu"), ValueError, r"SeparableConv2D got unknown activation"),
    (lambda: Conv2DTranspose(0, 3), ValueError, r"Conv2DTranspose expected out_channels >= 1"),
    (lambda: Conv2DTranspose(4, 0), ValueError, r"Conv2DTranspose expected kernel_size >= 1"),
    (lambda: Conv2DTranspose(4, 3, stride=2, output_padding=2), ValueError,
     r"Conv2DTranspose expected output_padding smaller than stride"),
    (lambda: Conv2DTranspose(4, 3, output_padding=1), ValueError, r"output_padding smaller than stride"),
    (lambda: Conv2DTranspose(4, 3, stride=2, padding="same", output_padding=1), ValueError,
     r"Conv2DTranspose with padding='same' .* expected output_padding 0"),
    (lambda: Conv2DTranspose(4, 3, padding="full"), ValueError, r"Conv2DTranspose expected padding"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_arguments(factory, error, match):
    with pytest.raises(error, match=match):
        factory()


@pytest.mark.parametrize("factory, x_shape, match", [
    (lambda: Conv2D(4, 3, in_channels=3), (8, 1, 28, 28),
     r"^Conv2D expected 3 input channels, got 1 \(input shape \(8, 1, 28, 28\)\)$"),
    (lambda: Conv2D(4, 3), (8, 28, 28), r"Conv2D expected a 4-D input \(N, C, H, W\), got shape \(8, 28, 28\)"),
    (lambda: Conv2D(4, 3), (8, 1, 1, 28, 28), r"Conv2D expected a 4-D input"),
    (lambda: Conv2D(2, 5), (1, 1, 3, 3), r"Conv2D kernel 5x5 \(dilated\) is larger than the padded input 3x3"),
    (lambda: Conv2D(2, 3, dilation=3), (1, 1, 6, 6), r"Conv2D kernel 7x7 \(dilated\) is larger"),
    (lambda: DepthwiseConv2D(3, in_channels=2), (4, 3, 8, 8), r"DepthwiseConv2D expected 2 input channels, got 3"),
    (lambda: DepthwiseConv2D(5, padding=1), (1, 2, 2, 2), r"DepthwiseConv2D kernel 5x5 \(dilated\) is larger"),
    (lambda: SeparableConv2D(4, 3), (2, 8), r"SeparableConv2D expected a 4-D input"),
    (lambda: SeparableConv2D(4, 3, in_channels=1), (2, 3, 8, 8), r"SeparableConv2D expected 1 input channels, got 3"),
    (lambda: Conv2DTranspose(4, 3, in_channels=5), (2, 3, 4, 4), r"Conv2DTranspose expected 5 input channels, got 3"),
    (lambda: Conv2DTranspose(4, 3, padding=3), (1, 1, 2, 2),
     r"Conv2DTranspose padding \(3, 3\) is too large .* output would be -2x-2"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_inputs(factory, x_shape, match):
    with pytest.raises(ValueError, match=match):
        factory()(np.zeros(x_shape, np.float32))


@pytest.mark.parametrize("cls", [Conv2D, Conv2DTranspose])
def test_channel_count_checked_after_lazy_build(cls):
    layer = cls(4, 3)
    layer(np.zeros((2, 3, 6, 6), np.float32))
    with pytest.raises(ValueError, match=rf"^{cls.__name__} expected 3 input channels, got 2 "
                                         r"\(input shape \(2, 2, 6, 6\)\)$"):
        layer(np.zeros((2, 2, 6, 6), np.float32))
    with pytest.raises(ValueError, match=rf"{cls.__name__} expected 3 input channels, got 1"):
        cls(4, 3, in_channels=3).build((1, 6, 6))


def test_backward_misuse():
    layer = Conv2D(2, 3)
    with pytest.raises(RuntimeError, match=r"Conv2D.backward called before forward"):
        layer.backward(np.zeros((1, 2, 3, 3)))
    layer(np.zeros((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D.backward expected dy of shape \(1, 2, 3, 3\) \(the output of the last forward\), got \(1, 2, 5, 5\)"):
        layer.backward(np.zeros((1, 2, 5, 5)))


def test_padding_that_is_too_large_for_output_shape():
    with pytest.raises(ValueError, match=r"Conv2D kernel 3x3 \(dilated\) is larger"):
        Conv2D(1, 3).output_shape((1, 2, 2))
    with pytest.raises(ValueError, match=r"Conv2D expected a 3-D input"):
        Conv2D(1, 3).output_shape((2, 2))


def test_failed_build_leaves_layer_unbuilt():
    layer = Conv2D(2, 5)
    with pytest.raises(ValueError, match=r"Conv2D kernel 5x5"):
        layer(np.zeros((1, 1, 3, 3), np.float32))
    assert not layer.built and not layer.params
    assert layer(np.zeros((1, 1, 6, 6), np.float32)).shape == (1, 2, 2, 2)
