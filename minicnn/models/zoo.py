"""The model zoo: classic architectures, scaled down to train on a CPU.

Each factory takes ``num_classes=10, in_channels=1`` and returns an *unbuilt*
``Sequential``: the first call (or ``model.build((C, H, W))``) fixes the input
size. The models output logits; train them with ``CrossEntropy``, which fuses
the softmax.

A convolution or dense layer directly followed by its non-linearity takes it
as ``activation=``, as in Keras: the layer then also picks the initialisation
that suits it (He for ReLU, Glorot for tanh), which makes these small nets
train noticeably faster than with a separate ``ReLU()`` after a
Glorot-initialised layer. Where batch norm sits in between (VGG, MobileNet,
ResNet), the ``ReLU()`` is a layer of its own.

The building blocks (``conv_bn_relu``, ``separable_block``, ``residual_block``,
``inception_block``) are public, to compose new architectures from.
"""
from __future__ import annotations

import numbers

from ..layers.activations import ACTIVATIONS, ReLU
from ..layers.containers import Concatenate, Residual, Sequential
from ..layers.conv import Conv2D, DepthwiseConv2D
from ..layers.dense import Dense
from ..layers.dropout import Dropout
from ..layers.normalization import BatchNorm2D
from ..layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from ..layers.reshape import Flatten

__all__ = [
    "lenet5", "mlp", "simple_cnn", "vgg_mini", "mobilenet_mini", "resnet_mini", "inception_mini",
    "conv_bn_relu", "separable_block", "residual_block", "inception_block",
]


def lenet5(num_classes: int = 10, in_channels: int = 1, activation: str = "relu", pool: str = "max"):
    """LeNet-5 (LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to
    document recognition", Proc. IEEE 1998), for 28×28 MNIST digits.

    ::

        Conv(6, 5×5, pad 2, act) → pool 2   (6, 28, 28) → (6, 14, 14)
        Conv(16, 5×5, act)       → pool 2   (16, 10, 10) → (16, 5, 5)
        Flatten → Dense(120, act) → Dense(84, act) → Dense(num_classes)

    The paper's input is 32×32; padding 2 on 28×28 MNIST gives the same maps.
    On ``(1, 28, 28)`` the model has 61,706 parameters. The defaults (ReLU,
    max-pooling) are the modern form; ``activation='tanh', pool='avg'`` gives the
    1998 one (its scaled tanh and trainable subsampling simplified to plain
    tanh and average pooling, and its sparse C3 connection table to a full one).
    """
    _check_sizes("lenet5", num_classes, in_channels)
    pool_layer = _pool_factory("lenet5", pool)
    _check_activation("lenet5", activation)
    return Sequential([
        Conv2D(6, 5, padding=2, activation=activation, in_channels=in_channels), pool_layer(),
        Conv2D(16, 5, activation=activation), pool_layer(),
        Flatten(),
        Dense(120, activation=activation),
        Dense(84, activation=activation),
        Dense(num_classes),
    ], name="lenet5")


def mlp(hidden=(256, 128), dropout: float = 0.0, num_classes: int = 10, in_channels: int = 1):
    """A multi-layer perceptron: ``Flatten → [Dense(h, relu) (→ Dropout)]* → Dense(num_classes)``.

    The baseline a CNN is compared against: it sees pixels with no notion of
    locality, so it needs many more parameters for the same accuracy.
    ``in_channels`` is accepted for a uniform signature; the input size is
    inferred from the first batch. ``dropout > 0`` adds inverted dropout after
    each hidden layer (Srivastava et al., JMLR 2014).
    """
    _check_sizes("mlp", num_classes, in_channels)
    hidden = _positive_tuple("mlp", "hidden", hidden, allow_empty=True)
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"mlp expected dropout in [0, 1), got {dropout!r}")
    layers = [Flatten()]
    for width in hidden:
        layers.append(Dense(width, activation="relu"))
        if dropout > 0:
            layers.append(Dropout(dropout))
    layers.append(Dense(num_classes))
    return Sequential(layers, name="mlp")


def simple_cnn(num_classes: int = 10, in_channels: int = 1, filters=(16, 32), hidden: int = 64):
    """A small two-block CNN, the quick-start model (trains on 8×8 digits in seconds).

    ::

        [Conv(f, 3×3, 'same', relu) → MaxPool 2] for f in filters
        Flatten → Dense(hidden, relu) → Dense(num_classes)

    'same' padding keeps each block's spatial size until the pooling, so even
    8×8 inputs survive two blocks (8 → 4 → 2).
    """
    _check_sizes("simple_cnn", num_classes, in_channels)
    filters = _positive_tuple("simple_cnn", "filters", filters)
    layers = []
    for index, width in enumerate(filters):
        first = {"in_channels": in_channels} if index == 0 else {}
        layers += [Conv2D(width, 3, padding="same", activation="relu", **first), MaxPool2D(2)]
    layers += [Flatten(), Dense(_positive_int("simple_cnn", "hidden", hidden), activation="relu"),
               Dense(num_classes)]
    return Sequential(layers, name="simple_cnn")


def conv_bn_relu(out_channels: int, kernel_size=3, stride=1, in_channels=None):
    """``Conv2D(bias=False) → BatchNorm2D → ReLU`` with 'same'-style padding ``k // 2``.

    The conv has no bias: batch norm's β would cancel it (BN subtracts the mean).
    """
    return Sequential([
        Conv2D(out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False,
               in_channels=in_channels),
        BatchNorm2D(), ReLU(),
    ])


def vgg_mini(num_classes: int = 10, in_channels: int = 1, widths=(32, 64, 128)):
    """A small VGG net (Simonyan & Zisserman, "Very Deep Convolutional Networks for
    Large-Scale Image Recognition", ICLR 2015), with batch norm (Ioffe & Szegedy, ICML 2015).

    VGG's idea: only 3×3 convolutions, two stacked per block (a 5×5 receptive
    field for fewer weights), the width doubling whenever pooling halves the map::

        [conv_bn_relu(w) → conv_bn_relu(w) → MaxPool 2] for w in widths
        GlobalAvgPool → Dense(num_classes)

    Designed for 32×32 inputs (CIFAR-10: ``in_channels=3``); the global average
    pooling (instead of VGG's large dense layers) makes it accept any input of at
    least ``2 ** len(widths)`` pixels a side.
    """
    _check_sizes("vgg_mini", num_classes, in_channels)
    widths = _positive_tuple("vgg_mini", "widths", widths)
    layers, channels = [], in_channels
    for width in widths:
        layers += [conv_bn_relu(width, in_channels=channels), conv_bn_relu(width), MaxPool2D(2)]
        channels = width
    layers += [GlobalAvgPool2D(), Dense(num_classes)]
    return Sequential(layers, name="vgg_mini")


def separable_block(out_channels: int, stride: int = 1, in_channels=None):
    """MobileNet's depthwise-separable block.

    ``DepthwiseConv2D(3×3) → BN → ReLU → Conv2D(1×1) → BN → ReLU``: a 3×3 filter
    per channel (spatial mixing), then a 1×1 convolution (channel mixing). For
    ``C_in → C_out`` it costs ``9·C_in + C_in·C_out`` weights instead of
    ``9·C_in·C_out``.
    """
    return Sequential([
        DepthwiseConv2D(3, stride=stride, padding=1, bias=False, in_channels=in_channels),
        BatchNorm2D(), ReLU(),
        Conv2D(out_channels, 1, bias=False), BatchNorm2D(), ReLU(),
    ])


def mobilenet_mini(num_classes: int = 10, in_channels: int = 1,
                   blocks=((64, 1), (128, 2), (128, 1), (256, 2))):
    """A small MobileNet (Howard et al., "MobileNets: Efficient Convolutional Neural
    Networks for Mobile Vision Applications", arXiv:1704.04861, 2017).

    ::

        conv_bn_relu(32, 3×3)
        separable_block(c, stride s) for (c, s) in blocks
        GlobalAvgPool → Dense(num_classes)

    The paper uses ReLU6 and 13 blocks to 1024 channels on 224×224 images; this
    keeps the structure at CIFAR scale (``blocks`` lists ``(channels, stride)``).
    """
    _check_sizes("mobilenet_mini", num_classes, in_channels)
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError(f"mobilenet_mini expected blocks as a non-empty list of (channels, stride), got {blocks!r}")
    layers = [conv_bn_relu(32, in_channels=in_channels)]
    for channels, stride in blocks:
        layers.append(separable_block(_positive_int("mobilenet_mini", "block channels", channels),
                                      stride=_positive_int("mobilenet_mini", "block stride", stride)))
    layers += [GlobalAvgPool2D(), Dense(num_classes)]
    return Sequential(layers, name="mobilenet_mini")


def residual_block(in_channels: int, out_channels: int, stride: int = 1) -> Residual:
    """ResNet's basic block, ``F(x) + shortcut(x)``; follow it with ``ReLU()``.

    ``F = Conv3×3(stride) → BN → ReLU → Conv3×3 → BN``. The shortcut is the
    identity when the shape is unchanged, else a projection ``Conv1×1(stride) → BN``
    (option B of the paper).
    """
    block = Sequential([
        Conv2D(out_channels, 3, stride=stride, padding=1, bias=False, in_channels=in_channels),
        BatchNorm2D(), ReLU(),
        Conv2D(out_channels, 3, padding=1, bias=False), BatchNorm2D(),
    ])
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = Sequential([Conv2D(out_channels, 1, stride=stride, bias=False, in_channels=in_channels),
                               BatchNorm2D()])
    return Residual(block, shortcut)


def resnet_mini(num_classes: int = 10, in_channels: int = 1, stages=((16, 1), (32, 2), (64, 2)),
                blocks_per_stage: int = 1):
    """A small ResNet (He, Zhang, Ren & Sun, "Deep Residual Learning for Image
    Recognition", CVPR 2016), in the CIFAR layout of the paper's section 4.2.

    ::

        conv_bn_relu(16, 3×3)
        for (c, s) in stages: residual_block(c, stride s) → ReLU,
                              then blocks_per_stage - 1 more at stride 1
        GlobalAvgPool → Dense(num_classes)

    Where a stage changes the channel count or the stride, the first block's
    shortcut is a 1×1 projection; elsewhere it is the identity.
    """
    _check_sizes("resnet_mini", num_classes, in_channels)
    blocks_per_stage = _positive_int("resnet_mini", "blocks_per_stage", blocks_per_stage)
    if not isinstance(stages, (list, tuple)) or not stages:
        raise ValueError(f"resnet_mini expected stages as a non-empty list of (channels, stride), got {stages!r}")
    channels = 16
    layers = [conv_bn_relu(channels, in_channels=in_channels)]
    for width, stride in stages:
        width = _positive_int("resnet_mini", "stage channels", width)
        stride = _positive_int("resnet_mini", "stage stride", stride)
        for index in range(blocks_per_stage):
            layers += [residual_block(channels, width, stride if index == 0 else 1), ReLU()]
            channels = width
    layers += [GlobalAvgPool2D(), Dense(num_classes)]
    return Sequential(layers, name="resnet_mini")


def inception_block(c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int):
    """GoogLeNet's Inception module: four parallel branches, concatenated on channels.

    ::

        1×1 conv (c1)
        1×1 conv (c3_reduce) → 3×3 conv (c3)
        1×1 conv (c5_reduce) → 5×5 conv (c5)
        3×3 max-pool (stride 1, pad 1) → 1×1 conv (pool_proj)

    each conv with a ReLU; padding keeps every branch at the input's size,
    so the output has ``c1 + c3 + c5 + pool_proj`` channels. The 1×1 "reduce"
    convolutions shrink the channels before the expensive 3×3 and 5×5 ones.
    """
    def conv(width, kernel):
        return Conv2D(width, kernel, padding=kernel // 2, activation="relu")

    return Concatenate([
        conv(c1, 1),
        Sequential([conv(c3_reduce, 1), conv(c3, 3)]),
        Sequential([conv(c5_reduce, 1), conv(c5, 5)]),
        Sequential([MaxPool2D(3, stride=1, padding=1), conv(pool_proj, 1)]),
    ])


def inception_mini(num_classes: int = 10, in_channels: int = 1):
    """A small GoogLeNet (Szegedy et al., "Going Deeper with Convolutions", CVPR 2015).

    ::

        Conv(32, 3×3, pad 1, relu) → MaxPool 2
        inception_block(16, 16, 24, 4, 8, 8)    → 56 channels
        MaxPool 2
        inception_block(32, 24, 48, 8, 16, 16)  → 112 channels
        GlobalAvgPool → Dense(num_classes)

    The branch widths follow the paper's proportions (inception 3a) at a quarter
    of its scale. Inputs need at least 4 pixels a side.
    """
    _check_sizes("inception_mini", num_classes, in_channels)
    return Sequential([
        Conv2D(32, 3, padding=1, activation="relu", in_channels=in_channels), MaxPool2D(2),
        inception_block(16, 16, 24, 4, 8, 8),
        MaxPool2D(2),
        inception_block(32, 24, 48, 8, 16, 16),
        GlobalAvgPool2D(), Dense(num_classes),
    ], name="inception_mini")


# ---------------------------------------------------------------------- argument checks
def _positive_int(owner: str, what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner} expected {what} as an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{owner} expected {what} >= 1, got {value}")
    return int(value)


def _positive_tuple(owner: str, what: str, values, allow_empty: bool = False) -> tuple:
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, (list, tuple)) or (not values and not allow_empty):
        raise TypeError(f"{owner} expected {what} as a {'' if allow_empty else 'non-empty '}"
                        f"tuple of ints, got {values!r}")
    return tuple(_positive_int(owner, what, v) for v in values)


def _check_sizes(owner: str, num_classes, in_channels) -> None:
    _positive_int(owner, "num_classes", num_classes)
    _positive_int(owner, "in_channels", in_channels)


def _check_activation(owner: str, activation) -> None:
    if activation is None or activation not in ACTIVATIONS:
        known = ", ".join(repr(k) for k in ACTIVATIONS if k is not None)
        raise ValueError(f"{owner} got unknown activation {activation!r}; expected one of {known}")


def _pool_factory(owner: str, pool: str):
    pools = {"max": MaxPool2D, "avg": AvgPool2D}
    if pool not in pools:
        raise ValueError(f"{owner} expected pool 'max' or 'avg', got {pool!r}")
    return lambda: pools[pool](2)
