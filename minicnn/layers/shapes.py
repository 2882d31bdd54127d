"""Shape arithmetic shared by the convolution and pooling layers.

Output size of a convolution or pooling window along one axis::

    out = floor((size + pad_before + pad_after - dilation * (k - 1) - 1) / stride) + 1

``'same'`` padding (TensorFlow's rule) targets ``out = ceil(size / stride)`` and
pads ``total = max((out - 1) * stride + dilation * (k - 1) + 1 - size, 0)``;
where ``total`` is odd the extra row/column goes at the bottom/right.
Padding is carried around as ``(top, bottom, left, right)``.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["positive_int", "as_pair", "conv_output_size", "same_padding", "resolve_padding"]


def positive_int(value, what: str, owner: str) -> int:
    """``value`` as an int >= 1, or a TypeError/ValueError naming ``owner`` and ``what``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner} expected {what} as an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{owner} expected {what} >= 1, got {value}")
    return int(value)


def as_pair(value, what: str, owner: str, minimum: int = 1) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 5) -> (3, 5)``; validates integers >= ``minimum``."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{owner} expected {what} as an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{owner} expected {what} >= {minimum}, got {value!r}")
    return pair


def conv_output_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int = 1) -> int:
    """Number of window positions along one axis (see the module docstring)."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """``(before, after)`` padding that gives ``ceil(size / stride)`` outputs."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, kernel, stride, dilation, in_hw, owner: str) -> tuple[int, int, int, int]:
    """Turn ``int | (ph, pw) | 'valid' | 'same'`` into ``(top, bottom, left, right)``.

    Raises a ValueError naming ``owner`` when the (dilated) kernel does not fit
    in the padded input.
    """
    (kh, kw), (sh, sw), (dh, dw), (h, w) = kernel, stride, dilation, in_hw
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            pads = same_padding(h, kh, sh, dh) + same_padding(w, kw, sw, dw)
        else:
            raise ValueError(f"{owner} expected padding 'same', 'valid', an int or a pair, got {padding!r}")
    else:
        ph, pw = as_pair(padding, "padding", owner, minimum=0)
        pads = (ph, ph, pw, pw)
    top, bottom, left, right = pads
    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if h + top + bottom < eff_h or w + left + right < eff_w:
        raise ValueError(
            f"{owner} kernel {eff_h}x{eff_w} (dilated) is larger than the padded input "
            f"{h + top + bottom}x{w + left + right} (input {h}x{w}, padding {pads})"
        )
    return pads
