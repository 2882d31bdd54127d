"""Convolution layers: Conv2D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose.

A convolution (strictly, a cross-correlation, as in every deep-learning library)
slides a ``kh x kw`` window over the zero-padded input::

    y[n, o, i, j] = b[o] + sum_{c, p, q} W[o, c, p, q] * x_pad[n, c, i*sh + p*dh, j*sw + q*dw]

im2col turns this into one matrix product. Every receptive field is unrolled into
a column, ``cols = im2col(x)`` of shape ``(C_in*kh*kw, N*Ho*Wo)``, and the weight
is flattened to ``W2 = W.reshape(C_out, C_in*kh*kw)``, so that::

    Y2 = W2 @ cols               (C_out, N*Ho*Wo)  -> reshaped to (N, C_out, Ho, Wo)

The backward pass is two more GEMMs. With ``dY2`` the upstream gradient in the
same layout as ``Y2``::

    dW2   = dY2 @ cols.T         (each weight met every column it multiplied)
    dcols = W2.T @ dY2           (each column entry fed every output channel)
    dx    = col2im(dcols)        (the adjoint of im2col: a pixel that appeared in
                                  several windows sums the gradients of all of them)

A transposed convolution is this picture read backwards: its forward pass is the
``dx`` line above and its backward pass is the forward line, so ``Conv2DTranspose``
reuses the same three helpers with the roles of ``x`` and ``y`` swapped.

Memory: ``cols`` is ``kh*kw`` times larger than the input. The helpers split the
batch into blocks of samples whose columns take about ``_BLOCK_BYTES`` (16 MB) and
never more than ``minicnn.backend.get_workspace_limit()`` bytes, so memory does not
grow with the batch size. A 1x1 kernel with stride 1 and no padding needs no im2col at all: the
input, viewed as ``(N, C, H*W)``, is already its own column matrix.

Large 3x3 stride-1 convolutions on the CPU take a third road, Winograd's F(2x2, 3x3)
(``kernels/winograd.py``): the same sums with 2.25x fewer multiplications, for the forward
pass and both gradients. ``kernels.winograd_pays`` decides (3x3, stride 1, pads <= 2, at
least 16 channels in and out, a large enough batch, an output of at least 8x8); the
im2col form above stays the definition the tests and the teaching start from.

Stride-1 layers with few taps per filter (``C_in*kh*kw <= 25``, LeNet-5's first layer) take
a fourth, the plainest: the sum above computed directly (``kernels/direct.py``), because
their im2col columns (25 times the input) and 6-row GEMMs cost more than the arithmetic.
``kernels.direct_pays`` decides.

The rest of the CPU's convolutions with small outputs (at most 16 wide, batches of 4 or more:
LeNet-5's conv2) keep im2col and its three GEMMs but order the columns batch-innermost, 16
samples at a time (``kernels/batch_inner.py``): a tap's values for one output row are then
``Wo*16`` consecutive input floats instead of ``Wo``, so im2col and col2im copy long runs
instead of 10-float pieces. ``kernels.batch_inner_pays`` decides; the helpers below stay the
GPU's path and the definition.
"""
from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..backend import get_array_module, get_workspace_limit, scratch
from ..initializers import init_weight
from .activations import Identity, ReLU, get_activation
from .base import Layer
from .shapes import as_pair, positive_int, conv_output_size, resolve_padding

__all__ = ["Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose"]

_UNIT = (1, 1)
_NO_PAD = (0, 0, 0, 0)


# ---------------------------------------------------------------------- im2col + GEMM plumbing
# The GEMMs run on blocks of about this many bytes of columns: big enough that a
# block's GEMM and kernel launches amortise their fixed costs (a LeNet-5 layer's
# whole batch of 128 is one block, so forward keeps its columns for backward),
# small enough that the columns are still largely in cache (L3 cache: 32 MB on the
# benchmark machine) when the GEMM reads them and that they need no fresh memory pages.
_BLOCK_BYTES = 16 * 2**20


def _is_pointwise(kernel, stride, pads) -> bool:
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and not any(pads)


def _batch_chunks(n: int, bytes_per_sample: int) -> list[slice]:
    """Slices of the batch whose im2col columns take about ``_BLOCK_BYTES``, never more than
    the workspace limit, and at least one sample each."""
    block = min(_BLOCK_BYTES, get_workspace_limit())
    step = max(1, block // max(1, bytes_per_sample))
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def _to_gemm(y):
    """``(N, C, H, W) -> (C, N*H*W)``: the column order of ``im2col`` (a view when N = 1)."""
    return y.transpose(1, 0, 2, 3).reshape(y.shape[1], -1)


def _from_gemm(y2, n: int, h: int, w: int):
    """``(C, N*H*W) -> (N, C, H, W)``."""
    return y2.reshape(-1, n, h, w).transpose(1, 0, 2, 3)


def _columns(part: slice, hw: int) -> slice:
    """The GEMM-layout columns of the samples in ``part`` (each sample owns ``hw`` columns)."""
    return slice(part.start * hw, part.stop * hw)


def _reusable(kept, shape, like):
    """The array in ``kept`` (a one-item list, as ``_conv_gemm`` returns columns, or None) if
    it has ``shape`` and ``like``'s dtype and array module, so it can be written over; else None."""
    old = kept[0] if kept else None
    fits = (old is not None and old.shape == tuple(shape) and old.dtype == like.dtype
            and get_array_module(old) is get_array_module(like))
    return old if fits else None


def _block_im2col(x, part, kernel, stride, pads, dilation, rows: int, hw: int):
    """``im2col(x[part])`` in the scratch buffer ``"cols"`` (``rows`` = C*kh*kw, ``hw`` = Ho*Wo)."""
    out = scratch("cols", (rows, (part.stop - part.start) * hw), x.dtype, like=x)
    return kernels.im2col(x[part], kernel, stride, pads, dilation, out=out)


def _conv_gemm(x, weight, stride, pads, dilation, keep_cols: bool = False, reuse=None):
    """``Y2 = W2 @ im2col(x)`` without bias, in GEMM layout ``(C_out, N*Ho*Wo)``.

    One GEMM per block of samples. Returns ``(Y2, cols)``; with ``keep_cols`` set and the
    whole batch in one block, ``cols`` is that block's columns in a one-item list (backward
    reuses them), else ``None``. Larger batches recompute their columns in backward: keeping
    dozens of blocks alive costs more in fresh memory pages than the second im2col (136 ms
    against 71 ms for a forward of L3). ``reuse``, a ``cols`` list from an earlier call that
    nobody needs any more, gives the kept columns their memory when its shape still fits:
    fresh pages for LeNet-5's conv2 (7.7 MB) made its forward 2.1-3.6 ms instead of 1.4-1.6.

    ``Y2`` lives in the scratch buffer ``"gemm"`` (``minicnn.backend.scratch``): the caller
    must copy what it keeps before the next convolution call. Each block's GEMM writes
    straight into its columns of ``Y2``, and block columns live in the scratch ``"cols"``.
    """
    n, c_out, kernel = x.shape[0], weight.shape[0], weight.shape[2:]
    w2d = weight.reshape(c_out, -1)
    ho, wo = kernels.output_hw(x.shape, kernel, stride, pads, dilation)
    y2 = scratch("gemm", (c_out, n * ho * wo), x.dtype, like=x)
    chunks = _batch_chunks(n, w2d.shape[1] * ho * wo * x.itemsize)
    if len(chunks) == 1 and keep_cols:  # the columns get their own memory: kept for backward
        out = _reusable(reuse, (w2d.shape[1], n * ho * wo), x)
        cols = kernels.im2col(x, kernel, stride, pads, dilation, out=out)
        return kernels.matmul(w2d, cols, out=y2), [cols]
    for part in chunks:
        cols = _block_im2col(x, part, kernel, stride, pads, dilation, w2d.shape[1], ho * wo)
        kernels.matmul(w2d, cols, out=y2[:, _columns(part, ho * wo)])
    return y2, None


def _conv_weight_grad_gemm(dy2, x, weight_shape, stride, pads, dilation, cols=None):
    """``dW2 = sum over blocks of dY2 @ cols.T``, ``dY2`` in GEMM layout; reuses ``cols`` when given."""
    kernel, n = weight_shape[2:], x.shape[0]
    rows, hw = math.prod(weight_shape[1:]), dy2.shape[1] // n
    chunks = _batch_chunks(n, rows * hw * dy2.itemsize)
    if cols is None:
        cols = (_block_im2col(x, part, kernel, stride, pads, dilation, rows, hw) for part in chunks)
    return sum(kernels.matmul_nt(dy2[:, _columns(part, hw)], block)
               for part, block in zip(chunks, cols)).reshape(weight_shape)


def _conv_input_grad_gemm(dy2, weight, x_shape, stride, pads, dilation, spent_cols=None):
    """``dx = col2im(W2.T @ dY2)`` per block of samples, ``dY2`` in GEMM layout.

    ``spent_cols``, forward's kept columns once nothing needs them any more (a one-item list,
    as ``_conv_gemm`` returns them), take the columns' gradient when the batch is one block:
    it has their shape, and one 7.7 MB buffer in cache instead of two took L2 (LeNet-5's
    conv2) from 5.9 to 4.4 and from 6.3 to 5.9 ms forward+backward in two A/B runs."""
    xp = get_array_module(dy2)
    kernel, n = weight.shape[2:], x_shape[0]
    w2d, hw = weight.reshape(weight.shape[0], -1), dy2.shape[1] // n
    chunks = _batch_chunks(n, w2d.shape[1] * hw * dy2.itemsize)
    dx = xp.empty(x_shape, dtype=dy2.dtype)
    for part in chunks:  # the columns' gradient of each block in the scratch buffer "cols"
        shape = (w2d.shape[1], (part.stop - part.start) * hw)
        dcols = _reusable(spent_cols, shape, dy2)
        if dcols is None:
            dcols = scratch("cols", shape, dy2.dtype, like=dy2)
        kernels.matmul(w2d.T, dy2[:, _columns(part, hw)], out=dcols)
        dx[part] = kernels.col2im(dcols, dx[part].shape, kernel, stride, pads, dilation)
    return dx


# The same three steps with ``x``, ``y`` and ``dy`` as (N, C, H, W) arrays, for the layers
# that do not work in GEMM layout. A 1x1 convolution needs no im2col: per sample it is
# ``(C_out, C) @ (C, H*W)`` on the input as it lies in memory.
def _conv_forward(x, weight, stride, pads, dilation, keep_cols: bool = False):
    """``y = conv(x, weight)`` without bias, as (N, C_out, Ho, Wo); ``cols`` as ``_conv_gemm``."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    c_out, kernel = weight.shape[0], weight.shape[2:]
    if _is_pointwise(kernel, stride, pads):
        y = xp.empty((n, c_out, h * w), dtype=x.dtype)
        return kernels.matmul_each(weight.reshape(c_out, c), x.reshape(n, c, h * w), y).reshape(n, c_out, h, w), None
    y2, cols = _conv_gemm(x, weight, stride, pads, dilation, keep_cols)
    ho, wo = kernels.output_hw(x.shape, kernel, stride, pads, dilation)
    return _from_gemm(y2, n, ho, wo).copy(), cols  # a copy: y2 is scratch memory


def _conv_weight_grad(dy, x, weight_shape, stride, pads, dilation, cols=None):
    """``dW`` from ``dy`` (N, C_out, Ho, Wo); see ``_conv_weight_grad_gemm``."""
    n, c_out = dy.shape[:2]
    if _is_pointwise(weight_shape[2:], stride, pads):
        return kernels.sum_matmul_nt(dy.reshape(n, c_out, -1), x.reshape(n, x.shape[1], -1)).reshape(weight_shape)
    return _conv_weight_grad_gemm(_to_gemm(dy), x, weight_shape, stride, pads, dilation, cols)


def _conv_input_grad(dy, weight, x_shape, stride, pads, dilation):
    """``dx`` from ``dy`` (N, C_out, Ho, Wo): the adjoint of ``_conv_forward``."""
    xp = get_array_module(dy)
    n, c_out, ho, wo = dy.shape
    if _is_pointwise(weight.shape[2:], stride, pads):
        dx = xp.empty((n, x_shape[1], ho * wo), dtype=dy.dtype)
        return kernels.matmul_each(weight.reshape(c_out, -1).T, dy.reshape(n, c_out, ho * wo), dx).reshape(x_shape)
    return _conv_input_grad_gemm(_to_gemm(dy), weight, x_shape, stride, pads, dilation)


# ---------------------------------------------------------------------- argument checks


def _check_padding(padding, owner: str):
    """``'same'``/``'valid'`` as given, anything else as a validated ``(ph, pw)``."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{owner} expected padding 'same', 'valid', an int or a pair, got {padding!r}")
        return padding
    return as_pair(padding, "padding", owner, minimum=0)


class _ConvLayer(Layer):
    """What the convolution layers share: argument checks, lazy parameters, padding.

    Parameters are created by ``_create_params(in_channels)`` as soon as the
    number of input channels is known: in the constructor when ``in_channels``
    is given, otherwise on the first ``build``.
    """

    input_rank = 3

    def __init__(self, kernel_size, stride, padding, dilation, bias, activation, in_channels,
                 dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.kernel_size = as_pair(kernel_size, "kernel_size", self.name)
        self.stride = as_pair(stride, "stride", self.name)
        self.dilation = as_pair(dilation, "dilation", self.name)
        self.padding = _check_padding(padding, self.name)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{self.name} expected bias as True or False, got {bias!r}")
        self.use_bias = bool(bias)
        self.activation_name = activation
        self.activation = get_activation(activation, self.name, dtype)
        self.in_channels = None if in_channels is None else positive_int(in_channels, "in_channels", self.name)

    def build(self, input_shape) -> None:
        input_shape = tuple(int(s) for s in input_shape)
        self._check_rank(input_shape, with_batch=False)
        if self.in_channels is not None and input_shape[0] != self.in_channels:
            raise ValueError(f"{self.name} expected {self.in_channels} input channels, "
                             f"got {input_shape[0]} (input shape {input_shape})")
        self.output_shape(input_shape)  # raises if the kernel does not fit this input
        super().build(input_shape)
        if not self.params:
            self.in_channels = input_shape[0]
            self._create_params(self.in_channels)

    def _create_params(self, in_channels: int) -> None:
        raise NotImplementedError

    def _prepare(self, x):
        # Check channels before building, so the error shows the whole batch's shape.
        if self.in_channels is not None and getattr(x, "ndim", 0) == 4:
            self._expect_input(x, "input channels", 1, self.in_channels)
        return super()._prepare(x)

    def _geometry(self, h: int, w: int):
        """``(pads, (Ho, Wo))`` for an ``H x W`` input; pads are ``(top, bottom, left, right)``."""
        pads = resolve_padding(self.padding, self.kernel_size, self.stride, self.dilation, (h, w), self.name)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        return pads, (conv_output_size(h, kh, sh, pads[0] + pads[1], dh),
                      conv_output_size(w, kw, sw, pads[2] + pads[3], dw))

    def _finish_forward(self, x, y, training, biased: bool = False):
        """Add the bias (unless the kernel did: ``biased``), cache the input and output shape,
        apply the activation."""
        if self.use_bias and not biased:
            y += self.params["bias"][:, None, None]
        self._cache_x, self._cache_y_shape = x, y.shape
        return self.activation.forward(y, training)

    def _start_backward(self, dy, bias_grad: bool = True):
        """Check ``dy``, go back through the activation, and fill the bias gradient (unless
        the caller's kernel sums it: ``bias_grad=False``)."""
        dy = self.activation.backward(self._checked_dy(dy))
        if self.use_bias and bias_grad:
            self.grads["bias"][...] = dy.sum(axis=(0, 2, 3))
        return dy

    def _checked_dy(self, dy):
        """``dy`` checked against the last forward's output, in the layer's dtype."""
        self._check_dy(dy, None if getattr(self, "_cache_x", None) is None else self._cache_y_shape)
        return dy.astype(self.dtype, copy=False)

    def _finish_forward_gemm(self, x, y2, out_hw, training):
        """``_finish_forward`` for an output ``y2`` in GEMM layout (C_out, N*Ho*Wo).

        ``kernels.conv_epilogue`` writes ``act(y2 + b)`` as (N, C_out, Ho, Wo) in one pass
        when the activation is ReLU or none; a ReLU layer then keeps its output ``y`` for
        backward (``y > 0`` exactly where ``z > 0``). Other activations run on their own.
        """
        y = kernels.conv_epilogue(y2, self.params.get("bias"), (x.shape[0], y2.shape[0], *out_hw),
                                  self._relu_fused())
        return self._finish_forward_fused(x, y, training)

    def _relu_fused(self) -> bool:
        """Is the activation a ReLU, which the convolution kernels apply themselves?"""
        return isinstance(self.activation, ReLU)

    def _finish_forward_fused(self, x, y, training):
        """Cache for backward after a kernel wrote ``y = act(z + b)`` (ReLU or none) or ``z + b``."""
        relu = self._relu_fused()
        fused = relu or isinstance(self.activation, Identity)
        self._cache_x, self._cache_y_shape, self._cache_fused = x, y.shape, fused
        self._cache_relu_y = y if relu else None
        return y if fused else self.activation.forward(y, training)

    def _activation_backward(self, dy):
        """Check ``dy`` and go back through an activation the kernels did not fuse (not ReLU)."""
        dy = self._checked_dy(dy)
        return dy if self._cache_fused else self.activation.backward(dy)

    def _start_backward_gemm(self, dy, gemm_layout: bool = True):
        """``_start_backward`` returning the gradient of ``act``'s input in GEMM layout (C_out, N*Ho*Wo),
        or in ``dy``'s (N, C_out, Ho, Wo) with ``gemm_layout=False``.

        ``kernels.conv_epilogue_backward`` applies ReLU's mask ``[y > 0]``, transposes (or not)
        and sums the bias gradient in one pass. The result lives in the scratch buffer ``"gemm"``,
        or is ``dy`` itself when there is neither a mask nor a transpose to apply.
        """
        dy = self._activation_backward(dy)
        c = dy.shape[1]
        shape = (c, dy.size // c) if gemm_layout else dy.shape
        moved = gemm_layout or self._cache_relu_y is not None
        dy2, dbias = kernels.conv_epilogue_backward(dy, self._cache_relu_y, gemm_layout=gemm_layout,
                                                    out=scratch("gemm", shape, dy.dtype, like=dy) if moved else None)
        if self.use_bias:
            self.grads["bias"][...] = dbias
        return dy2


# ---------------------------------------------------------------------- layers
class Conv2D(_ConvLayer):
    """2-D convolution: ``y = act(conv(x, W) + b)``, PyTorch ``nn.Conv2d`` numerics.

    Forward::

        y[n, o, i, j] = b[o] + sum_{c,p,q} W[o, c, p, q] * x_pad[n, c, i*sh + p*dh, j*sw + q*dw]
        computed as   Y2 = W.reshape(C_out, -1) @ im2col(x) + b

    Shapes: ``x`` (N, C_in, H, W) -> ``y`` (N, C_out, Ho, Wo) with
    ``Ho = floor((H + pad_top + pad_bottom - dh*(kh-1) - 1) / sh) + 1`` (likewise Wo);
    ``weight`` (C_out, C_in, kh, kw), ``bias`` (C_out,).

    Backward (``dY2`` = ``dy`` in GEMM layout (C_out, N*Ho*Wo))::

        dW = (dY2 @ cols.T).reshape(W.shape)     db = sum_{n,i,j} dy[n, :, i, j]
        dx = col2im(W2.T @ dY2)

    Padding is an int, ``(ph, pw)``, ``'valid'`` (0) or ``'same'`` (``ceil(H / stride)``
    outputs, the odd extra row/column at the bottom/right, TensorFlow's rule); it is
    resolved per call because ``'same'`` depends on the input size.

    3x3 stride-1 layers with many channels run Winograd F(2x2, 3x3) instead (forward and
    both gradients; see the module docstring), stride-1 layers with at most 25 taps per
    filter a direct convolution, and small outputs (at most 16 wide, batches from 4) the
    same im2col + GEMMs with the columns ordered batch-innermost; all equal the above up
    to rounding.

    Large batches are processed in chunks of samples so the im2col columns stay within
    ``minicnn.backend.get_workspace_limit()`` bytes. Forward in training keeps the
    columns for backward when the whole batch fits in one chunk; otherwise backward
    recomputes them chunk by chunk. Kept columns are written over once spent (backward
    puts the columns' gradient there, the next training forward its columns), so a
    training loop does not fault in fresh memory for them every step. With
    ``skip_input_grad`` set (a model's first layer) backward fills the gradients but skips
    ``dx`` and returns ``None``.
    """

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 activation=None, in_channels=None, dtype=np.float32, name=None):
        super().__init__(kernel_size, stride, padding, dilation, bias, activation, in_channels, dtype, name)
        self.out_channels = positive_int(out_channels, "out_channels", self.name)
        if self.in_channels is not None:
            self._create_params(self.in_channels)

    def _create_params(self, in_channels: int) -> None:
        shape = (self.out_channels, in_channels, *self.kernel_size)
        self.add_param("weight", init_weight(shape, self.activation_name, self.dtype))
        if self.use_bias:
            self.add_param("bias", np.zeros(self.out_channels))

    def forward(self, x, training=False):
        x = self._prepare(x)
        pads, out_hw = self._geometry(*x.shape[2:])
        weight = self.params["weight"]
        old_cols = getattr(self, "_cache_cols", None) or getattr(self, "_cache_spare_cols", None)
        self._cache_pads, self._cache_cols, self._cache_spare_cols = pads, None, None
        if _is_pointwise(self.kernel_size, self.stride, pads):
            y, _ = _conv_forward(x, weight, self.stride, pads, self.dilation)
            return self._finish_forward(x, y, training)
        self._cache_direct = kernels.direct_pays(x, weight.shape, self.stride, pads, self.dilation)
        if self._cache_direct:  # few taps per filter (LeNet-5's conv1): no columns at all
            y = kernels.direct.conv(x, weight, pads, self.params.get("bias"), self._relu_fused())
            return self._finish_forward_fused(x, y, training)
        self._cache_winograd = kernels.winograd_pays(x, weight.shape, self.stride, pads, self.dilation)
        if self._cache_winograd:  # 3x3, stride 1: Winograd F(2x2, 3x3), bias and ReLU fused
            y = kernels.winograd.conv3x3(x, weight, pads, self.params.get("bias"), self._relu_fused())
            return self._finish_forward_fused(x, y, training)
        self._cache_batch_inner = kernels.batch_inner_pays(x, weight.shape, self.stride, pads, self.dilation)
        if self._cache_batch_inner:  # im2col + GEMM with the columns ordered batch-innermost
            y, self._cache_cols = kernels.batch_inner.conv(x, weight, self.stride, pads, self.dilation,
                                                           self.params.get("bias"), self._relu_fused(),
                                                           keep_cols=training, reuse=old_cols)
            return self._finish_forward_fused(x, y, training)
        y2, self._cache_cols = _conv_gemm(x, weight, self.stride, pads, self.dilation, keep_cols=training,
                                          reuse=old_cols)  # the last step's columns: memory without page faults
        return self._finish_forward_gemm(x, y2, out_hw, training)

    def backward(self, dy):
        dy = self._checked_dy(dy)  # before reading the cache: says "backward called before forward"
        x, weight, pads = self._cache_x, self.params["weight"], self._cache_pads
        if _is_pointwise(self.kernel_size, self.stride, pads):  # forward ran in (N, C, H, W) layout
            dy = self._start_backward(dy)
            self.grads["weight"][...] = _conv_weight_grad(dy, x, weight.shape, self.stride, pads, self.dilation)
            return None if self.skip_input_grad else _conv_input_grad(dy, weight, x.shape, self.stride,
                                                                      pads, self.dilation)
        if self._cache_direct:  # ReLU's mask and the bias gradient inside the kernel too
            return self._kernel_grads(kernels.direct.conv_backward(self._activation_backward(dy), x, weight, pads,
                                                                   self._cache_relu_y, not self.skip_input_grad))
        if self._cache_winograd:  # both gradients by Winograd too (kernels/winograd.py), dz as (N, C, Ho, Wo)
            dz = self._start_backward_gemm(dy, gemm_layout=False)
            self.grads["weight"][...] = kernels.winograd.conv3x3_weight_grad(dz, x, pads)
            return None if self.skip_input_grad else kernels.winograd.conv3x3_input_grad(dz, weight, x.shape, pads)
        cols = self._cache_cols
        if cols:  # spent by backward: their memory takes dcols, and a second backward recomputes them
            self._cache_cols, self._cache_spare_cols = None, cols
        if self._cache_batch_inner:
            return self._kernel_grads(kernels.batch_inner.conv_backward(
                self._activation_backward(dy), x, weight, self.stride, pads, self.dilation, self._cache_relu_y,
                cols, not self.skip_input_grad))
        dy2 = self._start_backward_gemm(dy)
        self.grads["weight"][...] = _conv_weight_grad_gemm(dy2, x, weight.shape, self.stride, pads,
                                                           self.dilation, cols=cols)
        if self.skip_input_grad:
            return None
        return _conv_input_grad_gemm(dy2, weight, x.shape, self.stride, pads, self.dilation, spent_cols=cols)

    def _kernel_grads(self, grads):
        """Store ``(dx, dweight, dbias)`` from a kernel that computed all three; return ``dx``."""
        dx, dweight, dbias = grads
        self.grads["weight"][...] = dweight
        if self.use_bias:
            self.grads["bias"][...] = dbias
        return dx

    def output_shape(self, input_shape) -> tuple:
        self._check_rank(tuple(input_shape), with_batch=False)
        _, (ho, wo) = self._geometry(*input_shape[1:])
        return (self.out_channels, ho, wo)


class DepthwiseConv2D(_ConvLayer):
    """Depthwise convolution: every input channel convolved with its own ``m`` filters.

    Equal to torch ``nn.Conv2d(C_in, C_in*m, k, groups=C_in)``. Output channel
    ``c*m + j`` is input channel ``c`` convolved with filter ``c*m + j``::

        y[n, c*m + j, i, l] = b[c*m + j] + sum_{p,q} W[c*m + j, 0, p, q] * x_pad[n, c, i*sh + p*dh, l*sw + q*dw]

    Shapes: ``x`` (N, C_in, H, W) -> ``y`` (N, C_in*m, Ho, Wo); ``weight`` (C_in*m, 1, kh, kw),
    ``bias`` (C_in*m,). Output size and padding as ``Conv2D``.

    Backward: each filter touches one channel only, so im2col + GEMM would waste a
    factor C_in on zeros; ``kernels.depthwise_backward`` computes directly::

        dW[c*m + j, 0, p, q] = sum_{n,i,l} dy[n, c*m + j, i, l] * x_pad[n, c, i*sh + p*dh, l*sw + q*dw]
        dx_pad[n, c, i*sh + p*dh, l*sw + q*dw] += sum_j dy[n, c*m + j, i, l] * W[c*m + j, 0, p, q]

    ``db`` sums ``dy`` over batch and space. The MobileNet building block: with
    ``m = 1`` a 3x3 depthwise layer on C channels has ``10*C`` parameters
    against ``(9*C + 1)*C_out`` for a full 3x3 convolution.
    """

    def __init__(self, kernel_size, depth_multiplier=1, stride=1, padding=0, dilation=1, bias=True,
                 activation=None, in_channels=None, dtype=np.float32, name=None):
        super().__init__(kernel_size, stride, padding, dilation, bias, activation, in_channels, dtype, name)
        self.depth_multiplier = positive_int(depth_multiplier, "depth_multiplier", self.name)
        if self.in_channels is not None:
            self._create_params(self.in_channels)

    def _create_params(self, in_channels: int) -> None:
        channels, (kh, kw) = in_channels * self.depth_multiplier, self.kernel_size
        # A filter sees kh*kw inputs of one channel; each channel feeds m filters.
        weight = init_weight((channels, 1, kh, kw), self.activation_name, self.dtype,
                             fan_in=kh * kw, fan_out=self.depth_multiplier * kh * kw)
        self.add_param("weight", weight)
        if self.use_bias:
            self.add_param("bias", np.zeros(channels))

    def forward(self, x, training=False):
        x = self._prepare(x)
        pads, _ = self._geometry(*x.shape[2:])
        y = kernels.depthwise_forward(x, self.params["weight"], self.stride, pads, self.dilation,
                                      bias=self.params.get("bias"))  # the kernel adds the bias
        self._cache_pads = pads
        return self._finish_forward(x, y, training, biased=True)

    def backward(self, dy):
        dy = self._start_backward(dy, bias_grad=False)  # the kernel sums it
        dx, dweight, dbias = kernels.depthwise_backward(dy, self._cache_x, self.params["weight"],
                                                        self.stride, self._cache_pads, self.dilation)
        self.grads["weight"][...] = dweight
        if self.use_bias:
            self.grads["bias"][...] = dbias
        return None if self.skip_input_grad else dx

    def output_shape(self, input_shape) -> tuple:
        self._check_rank(tuple(input_shape), with_batch=False)
        _, (ho, wo) = self._geometry(*input_shape[1:])
        return (input_shape[0] * self.depth_multiplier, ho, wo)


class SeparableConv2D(_ConvLayer):
    """Depthwise-separable convolution (Keras semantics): depthwise, then pointwise 1x1.

    Forward::

        z = depthwise(x, W_d)                       (N, C_in*m, Ho, Wo), no bias
        y = act(W_p.reshape(C_out, C_in*m) @ z + b) (N, C_out, Ho, Wo), a 1x1 convolution

    Shapes: ``depthwise_weight`` (C_in*m, 1, kh, kw), ``pointwise_weight`` (C_out, C_in*m, 1, 1),
    ``bias`` (C_out,). Stride, padding and dilation apply to the depthwise step.

    Backward, the chain rule through the two steps::

        dW_p = sum_n dy[n] @ z[n].T      dz = W_p.T @ dy      db = sum_{n,i,j} dy
        (dx, dW_d) = depthwise_backward(dz)

    ``C_in*m*(kh*kw + C_out) + C_out`` parameters instead of ``C_in*kh*kw*C_out + C_out``.
    """

    def __init__(self, out_channels, kernel_size, depth_multiplier=1, stride=1, padding=0, dilation=1,
                 bias=True, activation=None, in_channels=None, dtype=np.float32, name=None):
        super().__init__(kernel_size, stride, padding, dilation, bias, activation, in_channels, dtype, name)
        self.out_channels = positive_int(out_channels, "out_channels", self.name)
        self.depth_multiplier = positive_int(depth_multiplier, "depth_multiplier", self.name)
        if self.in_channels is not None:
            self._create_params(self.in_channels)

    def _create_params(self, in_channels: int) -> None:
        mid, (kh, kw) = in_channels * self.depth_multiplier, self.kernel_size
        # No non-linearity between the two steps, so the depthwise step is initialised as linear.
        self.add_param("depthwise_weight", init_weight((mid, 1, kh, kw), None, self.dtype, fan_in=kh * kw,
                                                       fan_out=self.depth_multiplier * kh * kw))
        self.add_param("pointwise_weight", init_weight((self.out_channels, mid, 1, 1),
                                                       self.activation_name, self.dtype))
        if self.use_bias:
            self.add_param("bias", np.zeros(self.out_channels))

    def forward(self, x, training=False):
        x = self._prepare(x)
        pads, _ = self._geometry(*x.shape[2:])
        z = kernels.depthwise_forward(x, self.params["depthwise_weight"], self.stride, pads, self.dilation)
        y, _ = _conv_forward(z, self.params["pointwise_weight"], _UNIT, _NO_PAD, _UNIT)
        self._cache_z, self._cache_pads = z, pads
        return self._finish_forward(x, y, training)

    def backward(self, dy):
        dy = self._start_backward(dy)
        z, pointwise = self._cache_z, self.params["pointwise_weight"]
        self.grads["pointwise_weight"][...] = _conv_weight_grad(dy, z, pointwise.shape, _UNIT, _NO_PAD, _UNIT)
        dz = _conv_input_grad(dy, pointwise, z.shape, _UNIT, _NO_PAD, _UNIT)
        dx, ddepthwise, _ = kernels.depthwise_backward(dz, self._cache_x, self.params["depthwise_weight"],
                                                       self.stride, self._cache_pads, self.dilation)
        self.grads["depthwise_weight"][...] = ddepthwise
        return None if self.skip_input_grad else dx

    def output_shape(self, input_shape) -> tuple:
        self._check_rank(tuple(input_shape), with_batch=False)
        _, (ho, wo) = self._geometry(*input_shape[1:])
        return (self.out_channels, ho, wo)


class Conv2DTranspose(_ConvLayer):
    """Transposed convolution ("deconvolution"), PyTorch ``nn.ConvTranspose2d`` numerics.

    Take the ordinary convolution ``conv: (N, C_out, Hy, Wy) -> (N, C_in, H, W)``
    whose weight is this layer's ``weight`` (C_in, C_out, kh, kw). This layer's
    forward pass is that convolution's *input gradient*, and its backward pass is
    that convolution's forward pass::

        forward:   y  = col2im(W2.T @ X2) + b          W2 = W.reshape(C_in, C_out*kh*kw),
                                                       X2 = x in GEMM layout (C_in, N*H*W)
        backward:  dx = conv(dy, W)   = W2 @ im2col(dy)
                   dW = (X2 @ im2col(dy).T).reshape(W.shape)     db = sum_{n,i,j} dy

    so it uses the same im2col/col2im kernels and GEMM helpers as ``Conv2D``, with
    the roles of input and output swapped (and the same bounded workspace).

    Shapes: ``x`` (N, C_in, H, W) -> ``y`` (N, C_out, Hy, Wy) with::

        Hy = (H - 1)*sh - 2*ph + (kh - 1) + output_padding_h + 1      (likewise Wy)

    ``output_padding`` (< stride, torch's rule) picks among the output sizes that the
    strided convolution maps back to ``H``. ``padding='same'`` gives ``Hy = H*sh``: it is
    the exact transpose of ``Conv2D(padding='same')`` on an ``H*sh`` input (TensorFlow's
    ``conv2d_transpose``, the odd extra row/column at the bottom/right), and needs
    ``output_padding = 0``. ``'valid'`` is padding 0.
    """

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, output_padding=0, bias=True,
                 activation=None, in_channels=None, dtype=np.float32, name=None):
        super().__init__(kernel_size, stride, padding, 1, bias, activation, in_channels, dtype, name)
        self.out_channels = positive_int(out_channels, "out_channels", self.name)
        self.output_padding = as_pair(output_padding, "output_padding", self.name, minimum=0)
        if any(op >= s for op, s in zip(self.output_padding, self.stride)):
            raise ValueError(f"{self.name} expected output_padding smaller than stride (as torch), "
                             f"got output_padding {self.output_padding} with stride {self.stride}")
        if self.padding == "same" and any(self.output_padding):
            raise ValueError(f"{self.name} with padding='same' always outputs H*stride; "
                             f"expected output_padding 0, got {self.output_padding}")
        if self.in_channels is not None:
            self._create_params(self.in_channels)

    def _create_params(self, in_channels: int) -> None:
        shape = (in_channels, self.out_channels, *self.kernel_size)
        self.add_param("weight", init_weight(shape, self.activation_name, self.dtype))
        if self.use_bias:
            self.add_param("bias", np.zeros(self.out_channels))

    def forward(self, x, training=False):
        x = self._prepare(x)
        pads, (hy, wy) = self._geometry(*x.shape[2:])
        y_shape = (x.shape[0], self.out_channels, hy, wy)
        y = _conv_input_grad(x, self.params["weight"], y_shape, self.stride, pads, _UNIT)
        self._cache_pads = pads
        return self._finish_forward(x, y, training)

    def backward(self, dy):
        dy = self._start_backward(dy)
        x, weight, pads = self._cache_x, self.params["weight"], self._cache_pads
        dx, cols = None, None
        if not self.skip_input_grad:
            dx, cols = _conv_forward(dy, weight, self.stride, pads, _UNIT, keep_cols=True)
        # The conv's weight gradient, with dy as its input and x as its upstream gradient.
        self.grads["weight"][...] = _conv_weight_grad(x, dy, weight.shape, self.stride, pads, _UNIT, cols=cols)
        return dx

    def output_shape(self, input_shape) -> tuple:
        self._check_rank(tuple(input_shape), with_batch=False)
        _, (hy, wy) = self._geometry(*input_shape[1:])
        return (self.out_channels, hy, wy)

    def _geometry(self, h: int, w: int):
        """``(pads, (Hy, Wy))``: the padding of the underlying conv and this layer's output size."""
        (kh, kw), (sh, sw), (oph, opw) = self.kernel_size, self.stride, self.output_padding
        if self.padding == "same":
            out_hw = (h * sh, w * sw)
            return resolve_padding("same", self.kernel_size, self.stride, _UNIT, out_hw, self.name), out_hw
        ph, pw = (0, 0) if self.padding == "valid" else self.padding
        out_hw = ((h - 1) * sh - 2 * ph + kh + oph, (w - 1) * sw - 2 * pw + kw + opw)
        if min(out_hw) < 1:
            raise ValueError(f"{self.name} padding {(ph, pw)} is too large for kernel {self.kernel_size} "
                             f"on a {h}x{w} input: the output would be {out_hw[0]}x{out_hw[1]}")
        return (ph, ph, pw, pw), out_hw
