"""Plain-NumPy kernels: the teaching version and the oracle for the fast ones.

Every fast kernel in ``cpu.py`` (Numba) and ``gpu.py`` (CUDA) has the same
signature and must return the same numbers as the function of the same name
here; ``tests/kernels`` checks that over a sweep of shapes.

Conventions shared by all kernels
---------------------------------
* ``x`` is ``(N, C, H, W)``; ``kernel``, ``stride`` and ``dilation`` are pairs
  ``(along H, along W)``; ``padding`` is ``(top, bottom, left, right)``.
* Output size: ``floor((H + top + bottom - dilation*(k-1) - 1) / stride) + 1``.
* ``im2col`` lays patches out as ``(C*kh*kw, N*Ho*Wo)``: row ``c*kh*kw + i*kw + j``
  matches ``weight.reshape(C_out, -1)``, column ``n*Ho*Wo + oh*Wo + ow`` is one
  output position, so a convolution is one GEMM: ``W2d @ cols``.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from minicnn.backend import get_array_module

__all__ = [
    "output_hw", "im2col", "col2im",
    "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward",
    "depthwise_forward", "depthwise_backward", "batchnorm_forward", "batchnorm_backward",
    "conv_epilogue", "conv_epilogue_backward", "relu_forward", "relu_backward", "matmul_nt", "matmul_each",
    "sum_matmul_nt",
]


def output_hw(x_shape, kernel, stride, padding, dilation=(1, 1)) -> tuple[int, int]:
    _, _, h, w = x_shape
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, padding, dilation
    return ((h + pt + pb - dh * (kh - 1) - 1) // sh + 1,
            (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def _windows(x, kernel, stride, padding, dilation, fill=0.0):
    """A read-only view ``(N, C, Ho, Wo, kh, kw)`` of every (dilated) window of padded ``x``."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = output_hw(x.shape, kernel, stride, padding, dilation)
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    view = sliding_window_view(padded, span, axis=(2, 3))
    return view[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw, ::dh, ::dw]


def _add_windows(dwin, x_shape, kernel, stride, padding, dilation):
    """Adjoint of ``_windows``: scatter-add ``(N, C, Ho, Wo, kh, kw)`` back onto ``x``'s grid."""
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = dwin.shape[2:4]
    padded = np.zeros((n, c, h + pt + pb, w + pl + pr), dtype=dwin.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                         j * dw : j * dw + sw * (wo - 1) + 1 : sw] += dwin[:, :, :, :, i, j]
    return padded[:, :, pt : pt + h, pl : pl + w]


def check_out(out, shape, dtype, owner: str) -> None:
    """Raise unless ``out`` (a caller's buffer, or ``None``) is a C-contiguous ``dtype`` array of ``shape``."""
    if out is not None and (tuple(out.shape) != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous):
        raise ValueError(f"{owner} expected out as a C-contiguous {dtype} array of shape {tuple(shape)}, "
                         f"got {out.dtype} {tuple(out.shape)}")


def check_conv_operands(x, weight, owner: str) -> None:
    """Raise unless ``x`` is a float32/float64 (N, C, H, W) NumPy array and ``weight`` a
    (C_out, C, kh, kw) NumPy array (the CPU convolution kernels' first check)."""
    if not isinstance(x, np.ndarray) or not isinstance(weight, np.ndarray):
        raise TypeError(f"{owner} expected NumPy arrays, got {type(x).__name__} and {type(weight).__name__}")
    if x.ndim != 4 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{owner} expected a float32/float64 array of 4 dimensions, got {x.dtype} {x.shape}")
    if weight.ndim != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"{owner} expected a (C_out, {x.shape[1]}, kh, kw) weight, got shape {weight.shape}")


def _into(out, result):
    """``result``, or ``result`` copied into ``out`` when the caller supplied a buffer."""
    if out is None:
        return result
    out[...] = result
    return out


def im2col(x, kernel, stride, padding, dilation, out=None):
    """Unfold every receptive field of ``x`` into a column: ``(C*kh*kw, N*Ho*Wo)``, into ``out`` if given."""
    n, c = x.shape[:2]
    win = _windows(x, kernel, stride, padding, dilation)           # N, C, Ho, Wo, kh, kw
    cols = win.transpose(1, 4, 5, 0, 2, 3)                          # C, kh, kw, N, Ho, Wo
    return _into(out, np.ascontiguousarray(cols).reshape(c * kernel[0] * kernel[1], -1))


def col2im(cols, x_shape, kernel, stride, padding, dilation):
    """Adjoint of ``im2col``: sum every column entry back onto the pixel it came from."""
    n, c = x_shape[:2]
    ho, wo = output_hw(x_shape, kernel, stride, padding, dilation)
    dwin = cols.reshape(c, kernel[0], kernel[1], n, ho, wo).transpose(3, 0, 4, 5, 1, 2)
    return _add_windows(dwin, x_shape, kernel, stride, padding, dilation)


def maxpool_forward(x, kernel, stride, padding):
    """Max over each window; padded cells are ``-inf`` so they never win.

    Returns ``(y, argmax)``: ``argmax`` holds, for each output, the flat index
    ``h * W + w`` of the winning input pixel in its ``(H, W)`` plane. Ties go to
    the first window position in row-major order.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (pt, _, pl, _) = kernel, stride, padding
    win = _windows(x, kernel, stride, padding, (1, 1), fill=-np.inf)
    ho, wo = win.shape[2:4]
    flat = win.reshape(n, c, ho, wo, kh * kw)
    pos = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, pos[..., None], axis=-1)[..., 0]
    rows = np.arange(ho)[:, None] * sh + pos // kw - pt
    cols = np.arange(wo)[None, :] * sw + pos % kw - pl
    return y, (rows * w + cols).astype(np.int64)


def maxpool_backward(dy, argmax, x_shape):
    """Route each output gradient to the input pixel that won its window (summing repeats)."""
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), dtype=dy.dtype)
    plane = np.repeat(np.arange(n * c), dy.shape[2] * dy.shape[3])
    np.add.at(dx, (plane, argmax.reshape(-1)), dy.reshape(-1))
    return dx.reshape(x_shape)


def avgpool_forward(x, kernel, stride, padding):
    """Mean over each window; padded cells count as zeros (divisor ``kh*kw``, as torch's default)."""
    win = _windows(x, kernel, stride, padding, (1, 1))
    return win.sum(axis=(-2, -1)) / (kernel[0] * kernel[1])


def avgpool_backward(dy, x_shape, kernel, stride, padding):
    """Spread each output gradient evenly, ``dy / (kh*kw)``, over its window."""
    dwin = np.broadcast_to((dy / (kernel[0] * kernel[1]))[..., None, None], dy.shape + tuple(kernel))
    return _add_windows(dwin, x_shape, kernel, stride, padding, (1, 1))


def depthwise_forward(x, weight, stride, padding, dilation, bias=None):
    """Each input channel convolved with its own ``m`` filters (torch ``groups=C``), plus ``bias``.

    ``weight`` is ``(C*m, 1, kh, kw)``; output channel ``c*m + j`` is input channel
    ``c`` convolved with filter ``c*m + j``; ``bias`` (C*m,) or None.
    """
    n, c = x.shape[:2]
    kh, kw = weight.shape[2:]
    m = weight.shape[0] // c
    win = _windows(x, (kh, kw), stride, padding, dilation)
    y = np.einsum("nchwkl,cmkl->ncmhw", win, weight.reshape(c, m, kh, kw)).reshape(n, c * m, *win.shape[2:4])
    return y if bias is None else y + bias[:, None, None]


def depthwise_backward(dy, x, weight, stride, padding, dilation):
    """Returns ``(dx, dweight, dbias)`` for ``depthwise_forward`` (``dbias`` sums ``dy`` per channel)."""
    n, c = x.shape[:2]
    kh, kw = weight.shape[2:]
    m = weight.shape[0] // c
    win = _windows(x, (kh, kw), stride, padding, dilation)
    dy5 = dy.reshape(n, c, m, *dy.shape[2:])
    dweight = np.einsum("ncmhw,nchwkl->cmkl", dy5, win).reshape(weight.shape)
    dwin = np.einsum("ncmhw,cmkl->nchwkl", dy5, weight.reshape(c, m, kh, kw))
    dx = _add_windows(dwin, x.shape, (kh, kw), stride, padding, dilation)
    return dx, dweight, dy.sum(axis=(0, 2, 3))


def _per_channel(x):
    """The axes holding one channel's values (all but axis 1) and the shape that broadcasts a (C,) vector."""
    return (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)


def batchnorm_forward(x, weight, bias, eps):
    """Training-mode batch norm of ``(N, C)`` or ``(N, C, H, W)`` ``x``, per channel over all other axes.

    Returns ``(y, mean, var, inv_std)``: ``mean`` and the biased variance ``var`` of each
    channel, ``inv_std = 1 / sqrt(var + eps)`` and ``y = weight * x_hat + bias`` with
    ``x_hat = (x - mean) * inv_std``; the vectors have shape ``(C,)``. ``x_hat`` itself is not
    returned: backward recomputes it from ``x``, ``mean`` and ``inv_std`` (as torch does),
    which saves writing and keeping an input-sized array.
    """
    axes, shape = _per_channel(x)
    mean = x.mean(axis=axes)
    centered = x - mean.reshape(shape)
    var = (centered * centered).mean(axis=axes)
    # Array methods and operators only (no np.* call), so the GPU backend runs this same
    # function on CuPy arrays: each line becomes a CuPy kernel.
    inv_std = 1.0 / (var + eps) ** 0.5
    x_hat = centered * inv_std.reshape(shape)
    return weight.reshape(shape) * x_hat + bias.reshape(shape), mean, var, inv_std


def batchnorm_backward(dy, x, mean, weight, inv_std):
    """Training-mode gradients ``(dx, dweight, dbias)`` for ``batchnorm_forward``.

    With ``M`` values per channel and ``x_hat = (x - mean) * inv_std`` (derivation in
    ``minicnn/layers/normalization.py``)::

        dx = weight * inv_std / M * (M dy - sum(dy) - x_hat * sum(dy * x_hat))
    """
    axes, shape = _per_channel(dy)
    count = dy.size // dy.shape[1]
    x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    dbias = dy.sum(axis=axes)
    dweight = (dy * x_hat).sum(axis=axes)
    scale = (weight * inv_std / count).reshape(shape)
    dx = scale * (count * dy - dbias.reshape(shape) - x_hat * dweight.reshape(shape))
    return dx, dweight, dbias


def conv_epilogue(z2, bias, out_shape, relu):
    """A convolution's last step: ``y = act(z + bias)`` out of the GEMM layout.

    ``z2`` is the GEMM output ``(C, N*Ho*Wo)`` (column ``n*Ho*Wo + i*Wo + j``, as ``im2col``);
    ``y`` is ``(N, C, Ho, Wo)`` with ``y[n, c, i, j] = act(z2[c, n*Ho*Wo + i*Wo + j] + bias[c])``,
    ``act`` ReLU when ``relu`` is set, else the identity. ``bias`` may be ``None`` (no bias).
    """
    n, c, ho, wo = out_shape
    z = z2.reshape(c, n, ho, wo).transpose(1, 0, 2, 3)
    if bias is not None:
        z = z + bias[:, None, None]
    return np.maximum(z, 0) if relu else np.ascontiguousarray(z)


def conv_epilogue_backward(dy, relu_output=None, out=None, gemm_layout=True):
    """Adjoint of ``conv_epilogue``: ``(dz2, dbias)`` from ``dy`` (N, C, Ho, Wo).

    ``dz = dy * [y > 0]`` when ``relu_output`` (the ``y`` of a ReLU epilogue) is given, else
    ``dz = dy``; ``dz2`` is ``dz`` in the GEMM layout ``(C, N*Ho*Wo)`` (or ``dz`` itself,
    (N, C, Ho, Wo), with ``gemm_layout=False``: for Winograd, which reads that layout) and
    ``dbias[c]`` sums ``dz[:, c]`` over batch and space.
    """
    dz = dy if relu_output is None else dy * (relu_output > 0)
    if not gemm_layout:
        return _into(out, np.ascontiguousarray(dz)), dz.sum(axis=(0, 2, 3))
    dz2 = np.ascontiguousarray(dz.transpose(1, 0, 2, 3)).reshape(dy.shape[1], -1)
    return _into(out, dz2), dz.sum(axis=(0, 2, 3))


def relu_forward(x):
    """``y = max(x, 0)`` elementwise; NaN stays NaN (as torch's ReLU)."""
    return np.maximum(x, 0)


def relu_backward(dy, relu_output):
    """``dx = dy`` where ``relu_output > 0`` (the ``y`` of ``relu_forward``), else 0. ``y > 0``
    exactly where ``x > 0``, so the output serves as the mask; a NaN output passes nothing."""
    return np.where(relu_output > 0, dy, np.zeros((), dtype=np.result_type(dy, relu_output)))


def matmul(a, b, out=None):
    """``a @ b`` into ``out`` if given (the CPU version runs big products on minicnn's threads)."""
    return get_array_module(a).matmul(a, b, out=out)


def matmul_nt(a, b):
    """``a @ b.T`` for ``a`` (M, K) and ``b`` (N, K): a convolution's weight gradient
    ``dY2 @ cols.T``. (The CPU version only works around a slow BLAS case.)"""
    return a @ b.T


def matmul_each(a, b, out):
    """``out[i] = a @ b[i]`` for every ``i`` of the stack ``b`` (N, K, P), ``a`` (M, K): a 1x1
    convolution sample by sample. One GEMM per sample: ``matmul(a, b)`` would broadcast the
    2-D ``a`` over the stack, a case NumPy 2.4 runs in its own loop instead of BLAS (50 ms
    against 10 ms on a 64x64x32x32 input). NumPy or CuPy arrays."""
    xp = get_array_module(b)
    for i in range(b.shape[0]):
        xp.matmul(a, b[i], out=out[i])
    return out


def sum_matmul_nt(a, b):
    """``sum_i a[i] @ b[i].T`` for stacks ``a`` (N, M, K) and ``b`` (N, P, K): a 1x1
    convolution's weight gradient, sample by sample. NumPy or CuPy arrays."""
    return sum(a[i] @ b[i].T for i in range(a.shape[0]))
