"""Containers: layers made of layers.

* ``Sequential``  — ``y = f_n(... f_2(f_1(x)))``, the model class (it also trains:
  ``compile``/``fit``/``evaluate``/``predict`` come from ``TrainingMixin``);
* ``Residual``    — ``y = block(x) + shortcut(x)`` (He et al., 2016);
* ``Concatenate`` — ``y = [b_1(x), ..., b_k(x)]`` joined along the channel axis,
  the parallel branches of an Inception module (Szegedy et al., 2015).

A container has no maths of its own beyond the chain rule, so each backward is
a few lines:

* a chain ``y = g(f(x))`` passes the gradient through in reverse order,
  ``dL/dx = f'(x)^T g'(f(x))^T dL/dy``;
* a sum ``y = a(x) + b(x)`` hands ``dL/dy`` to both paths unchanged and adds the
  two input gradients, ``dL/dx = a'(x)^T dL/dy + b'(x)^T dL/dy``;
* a concatenation ``y = [a(x), b(x)]`` splits ``dL/dy`` back into the slices each
  branch produced, and the input gradients add as for a sum (``x`` fed both).

Parameter names are qualified by the child's name, as in PyTorch, so a
container's ``state_dict`` loads into the equivalent ``torch.nn`` module:
``Sequential`` names children by index (``'0.weight'``, ``'3.bias'``),
``Residual`` by role (``'block.0.weight'``, ``'shortcut.0.weight'``) and
``Concatenate`` by branch (``'branches.1.0.weight'``, torch's ``nn.ModuleList``
under an attribute ``branches``).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ..backend import get_array_module
from ..training import TrainingMixin
from .base import Layer

__all__ = ["Container", "Sequential", "Residual", "Concatenate"]


class Container(Layer):
    """What every container shares: named children, shape propagation, the input-grad flag.

    Subclasses define ``named_children()`` (``(name, child)`` pairs, which give the
    qualified parameter names) and ``_child_input_shapes(input_shape)`` (what each
    child sees, used by ``Sequential.summary``).

    Setting ``skip_input_grad`` on a container passes it to the children that
    receive the container's input, so the first layer of a model can skip the
    input-gradient GEMM no matter how the model is nested.
    """

    def __init__(self, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        # An explicitly given dtype is the model's dtype: it is imposed on every child.
        self._dtype_explicit = "dtype" in (self._config or {})

    def _adopt(self, child, label: str) -> Layer:
        """Type-check a child and give it the container's dtype if one was asked for."""
        if not isinstance(child, Layer):
            raise TypeError(f"{self.name} expected a Layer for {label}, got {type(child).__name__} "
                            f"({child!r})")
        if self._dtype_explicit:
            child.astype(self.dtype)  # recursive, so layers nested in a child convert too
        return child

    def _child_input_shapes(self, input_shape) -> list[tuple[str, Layer, tuple]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        """PyTorch-style: one line per child, named as in ``named_parameters``."""
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items()
                         if not _holds_layers(value))
        lines = [f"{type(self).__name__}({args}"]
        for child_name, child in self.named_children():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({child_name}): {body}")
        return "\n".join(lines) + "\n)"

    @property
    def skip_input_grad(self) -> bool:
        return getattr(self, "_skip_input_grad", False)

    @skip_input_grad.setter
    def skip_input_grad(self, value) -> None:
        self._skip_input_grad = bool(value)
        self._propagate_skip()

    def _propagate_skip(self) -> None:
        if not self._children_ready():  # Layer.__init__ sets the flag before children exist
            return
        for child in self._input_children():
            child.skip_input_grad = self.skip_input_grad

    def _input_children(self) -> list[Layer]:
        """The children that receive this container's input (all of them by default)."""
        return self.children()

    def _children_ready(self) -> bool:
        return True


class Sequential(TrainingMixin, Container):
    """A stack of layers applied in order: ``y = f_n(... f_2(f_1(x)))``.

    Parameters
    ----------
    layers : list of Layer, optional
        The stack; more can be appended with ``add``.
    input_shape : tuple, optional
        Per-sample input shape, e.g. ``(1, 28, 28)``. Given, the model is built at
        once; otherwise it builds on its first call (or an explicit ``build``).
    dtype : float dtype
        Given explicitly, every layer is converted to it (``astype``); left at its
        default, each layer keeps its own.

    Shapes
    ------
    ``build`` walks the per-sample shape through the stack: layer ``i`` is built
    for the output shape of layer ``i - 1``, so nothing but the first input
    size is ever stated. Any error on the way names the failing layer's index.

    Backward
    --------
    ``dL/dx = J_1^T J_2^T ... J_n^T dL/dy``: each layer's ``backward`` is called in
    reverse order on the previous one's result. A layer that returns ``None``
    (it was told ``skip_input_grad``) ends the pass: nothing before it needs a
    gradient, and ``backward`` returns ``None``.

    Parameter names are torch ``nn.Sequential``'s: ``'0.weight'``, ``'3.bias'``.
    """

    def __init__(self, layers=None, input_shape=None, dtype=np.float32, name=None):
        self.layers: list[Layer] = []
        super().__init__(dtype, name)
        if isinstance(layers, Layer) or isinstance(layers, (str, bytes)):
            raise TypeError(f"{self.name} expected a list of layers, got a single "
                            f"{type(layers).__name__}; write Sequential([layer])")
        for index, layer in enumerate(layers or []):
            self.layers.append(self._adopt(layer, f"layer {index}"))
        self._propagate_skip()
        if input_shape is not None:
            self.build(input_shape)

    def add(self, layer: Layer) -> "Sequential":
        """Append a layer (built at once if the model already is); returns self."""
        index = len(self.layers)
        layer = self._adopt(layer, f"layer {index}")
        if self.built:
            shape = self.output_shape(self.input_shape)
            _build_child(self, index, layer, shape)
        self.layers.append(layer)
        self._propagate_skip()
        return self

    def build(self, input_shape) -> None:
        super().build(input_shape)
        shape = self.input_shape
        with _unbuilt_on_error(self):
            for index, layer in enumerate(self.layers):
                shape = _build_child(self, index, layer, shape)
        self._propagate_skip()

    def forward(self, x, training=False):
        x = self._prepare(x)
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
            if dy is None:
                return None
        return dy

    def output_shape(self, input_shape) -> tuple:
        shape = tuple(input_shape)
        for index, layer in enumerate(self.layers):
            shape = _child_output_shape(self, index, layer, shape)
        return shape

    # ------------------------------------------------------------------ structure
    def named_children(self):
        return [(str(index), layer) for index, layer in enumerate(self.layers)]

    def _child_input_shapes(self, input_shape):
        rows, shape = [], tuple(input_shape)
        for index, layer in enumerate(self.layers):
            rows.append((str(index), layer, shape))
            shape = layer.output_shape(shape)
        return rows

    def _input_children(self) -> list[Layer]:
        """The first layer, and the parameter-free layers before the first trained one.

        With ``Flatten`` first (an MLP) the flag must reach the ``Dense`` after it,
        which is the layer that can skip a GEMM.
        """
        held = []
        for layer in self.layers:
            held.append(layer)
            if not layer.built or any(True for _ in layer.named_parameters()):
                break
        return held

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(self.layers[index])
        return self.layers[index]

    def __iter__(self):
        return iter(self.layers)

    def get_config(self) -> dict:
        config = super().get_config()
        config["layers"] = list(self.layers)  # the current stack, including add()ed layers
        return config

    # ------------------------------------------------------------------ reporting
    def summary(self, print_fn=print) -> str:
        """Print and return a table: layer, output shape, parameter count, and totals.

        Output shapes show the batch axis as ``None`` (any size), as Keras does.
        Children of nested containers (``Residual``, ``Concatenate``, an inner
        ``Sequential``) appear as indented rows under their container; the first
        column is the qualified prefix of their parameter names.

        Counts include buffers, as Keras does: "Non-trainable params" are buffers
        such as batch-norm running statistics, and "Total" is trainable plus
        non-trainable. ``parameters_count()`` is the trainable count alone.

        ``print_fn=None`` only returns the string.
        """
        if not self.built:
            raise ValueError(f"{self.name}.summary: the model is not built yet; call "
                             f"model.build(input_shape), e.g. model.build((1, 28, 28)), first")
        rows = []
        _summary_rows(self, self.input_shape, "", 0, rows)
        trainable = self.parameters_count()
        frozen = int(sum(b.size for _, b in self.named_buffers()))
        headers = ("Layer (type)", "Output Shape", "Param #")
        widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(3)] if rows \
            else [len(h) for h in headers]
        line_width = sum(widths) + 4

        def fmt(row):
            return f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}"

        lines = [f'Model: "{self.name}"  (input shape {_with_batch(self.input_shape)}, '
                 f"dtype {np.dtype(self.dtype).name})",
                 "_" * line_width, fmt(headers), "=" * line_width]
        lines += [fmt(row) for row in rows]
        lines += ["=" * line_width,
                  f"Total params: {trainable + frozen:,}",
                  f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {frozen:,}",
                  "_" * line_width]
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text


class Residual(Container):
    """A residual connection: ``y = block(x) + shortcut(x)``.

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. The
    block learns the residual ``F(x) = H(x) - x`` rather than ``H(x)``; the
    identity path lets gradients reach early layers undiminished.

    Parameters
    ----------
    block : Layer
        Usually a ``Sequential`` such as conv-BN-ReLU-conv-BN.
    shortcut : Layer, optional
        ``None`` is the identity. Where the block changes the channel count or
        the spatial size, use a projection, e.g. ``Sequential([Conv2D(c, 1,
        stride=2, bias=False), BatchNorm2D()])`` (the paper's option B).

    Shapes
    ------
    Both paths must give the same output shape; otherwise a ValueError names
    the two shapes. The activation that follows the addition in the paper is
    not part of this layer: put a ``ReLU()`` after it.

    Backward
    --------
    ``dL/dx = block'(x)^T dL/dy + shortcut'(x)^T dL/dy`` (``+ dL/dy`` for the
    identity): the upstream gradient goes down both paths unchanged.

    Parameter names: ``'block.*'`` and ``'shortcut.*'``, as a torch module with
    attributes ``self.block`` and ``self.shortcut``.
    """

    def __init__(self, block, shortcut=None, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.block = self._adopt(block, "block")
        self.shortcut = None if shortcut is None else self._adopt(shortcut, "shortcut")
        self._propagate_skip()

    def build(self, input_shape) -> None:
        super().build(input_shape)
        with _unbuilt_on_error(self):
            for child_name, child in self.named_children():
                _build_child(self, child_name, child, self.input_shape)
            self.output_shape(self.input_shape)  # raises if the two paths disagree

    def forward(self, x, training=False):
        x = self._prepare(x)
        y = self.block.forward(x, training=training)
        shortcut = x if self.shortcut is None else self.shortcut.forward(x, training=training)
        if y.shape != shortcut.shape:
            raise ValueError(self._mismatch(y.shape[1:], shortcut.shape[1:], tuple(x.shape)))
        return y + shortcut

    def backward(self, dy):
        dx_block = self.block.backward(dy)
        dx_shortcut = dy if self.shortcut is None else self.shortcut.backward(dy)
        if self.skip_input_grad or dx_block is None or dx_shortcut is None:
            return None
        return dx_block + dx_shortcut

    def output_shape(self, input_shape) -> tuple:
        block_shape = tuple(self.block.output_shape(input_shape))
        shortcut_shape = tuple(input_shape) if self.shortcut is None \
            else tuple(self.shortcut.output_shape(input_shape))
        if block_shape != shortcut_shape:
            raise ValueError(self._mismatch(block_shape, shortcut_shape, _with_batch(input_shape)))
        return block_shape

    def _mismatch(self, block_shape, shortcut_shape, input_shape) -> str:
        which = "the identity shortcut" if self.shortcut is None else "the shortcut"
        hint = ("; give a projection shortcut, e.g. Residual(block, shortcut=Conv2D(channels, 1, "
                "stride=...))" if self.shortcut is None else "")
        return (f"{self.name}: the block gives output shape {_with_batch(block_shape)} but "
                f"{which} gives {_with_batch(shortcut_shape)} (input shape {input_shape}); "
                f"they must match to be added{hint}")

    def named_children(self):
        named = [("block", self.block)]
        if self.shortcut is not None:
            named.append(("shortcut", self.shortcut))
        return named

    def _child_input_shapes(self, input_shape):
        return [(child_name, child, tuple(input_shape)) for child_name, child in self.named_children()]

    def _children_ready(self) -> bool:
        return hasattr(self, "shortcut")


class Concatenate(Container):
    """Parallel branches on the same input, outputs joined: ``y = [b_1(x), ..., b_k(x)]``.

    The Inception module of Szegedy et al., "Going Deeper with Convolutions",
    CVPR 2015: 1×1, 3×3 and 5×5 convolutions and a pooling path look at the same
    input at several scales, and their feature maps are stacked along channels.

    Parameters
    ----------
    branches : list of Layer
        Each receives the whole input (typically a ``Sequential``).
    axis : int
        Axis of the batched output to join along; ``1`` (channels in NCHW, features
        for ``(N, F)``) by default. Negative values count from the end; the batch
        axis ``0`` cannot be joined.

    Shapes
    ------
    Branch outputs must agree on every axis but ``axis``; otherwise a ValueError
    names the disagreeing shapes. The output size along ``axis`` is the sum.

    Backward
    --------
    Branch ``k`` produced the slice ``[o_k, o_k + c_k)`` of ``y`` along ``axis``, so
    ``dL/d b_k(x)`` is that slice of ``dL/dy``. Every branch read the same ``x``,
    so ``dL/dx = sum_k b_k'(x)^T dL/dy[o_k : o_k + c_k]``.

    Parameter names: ``'branches.<k>.*'``, as a torch module with an
    ``nn.ModuleList`` attribute ``self.branches``.
    """

    def __init__(self, branches, axis: int = 1, dtype=np.float32, name=None):
        super().__init__(dtype, name)
        if isinstance(branches, Layer) or not isinstance(branches, (list, tuple)):
            raise TypeError(f"{self.name} expected a list of branch layers, got {type(branches).__name__}")
        if len(branches) == 0:
            raise ValueError(f"{self.name} expected at least one branch, got none")
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise TypeError(f"{self.name} expected an int axis, got {axis!r}")
        if axis == 0:
            raise ValueError(f"{self.name} cannot join along the batch axis 0; use axis=1 for channels")
        self.axis = int(axis)
        self.branches = [self._adopt(branch, f"branch {k}") for k, branch in enumerate(branches)]
        self._propagate_skip()

    def build(self, input_shape) -> None:
        super().build(input_shape)
        with _unbuilt_on_error(self):
            for child_name, branch in self.named_children():
                _build_child(self, child_name, branch, self.input_shape)
            self.output_shape(self.input_shape)  # raises if the branches disagree

    def forward(self, x, training=False):
        x = self._prepare(x)
        xp = get_array_module(x)
        outputs = [branch.forward(x, training=training) for branch in self.branches]
        axis = self._batch_axis(outputs[0].ndim - 1)
        self._join_shape([tuple(out.shape[1:]) for out in outputs], axis - 1)
        self._cache_sizes = [out.shape[axis] for out in outputs]
        return xp.concatenate(outputs, axis=axis)

    def backward(self, dy):
        xp = get_array_module(dy)
        axis = self._batch_axis(dy.ndim - 1)
        pieces = xp.split(dy, np.cumsum(self._cache_sizes)[:-1].tolist(), axis=axis)
        dxs = [branch.backward(piece) for branch, piece in zip(self.branches, pieces)]
        if self.skip_input_grad or any(dx is None for dx in dxs):
            return None
        return sum(dxs[1:], dxs[0])

    def output_shape(self, input_shape) -> tuple:
        shapes = [tuple(branch.output_shape(input_shape)) for branch in self.branches]
        return self._join_shape(shapes, self._batch_axis(len(shapes[0])) - 1)

    def _batch_axis(self, sample_rank: int) -> int:
        """``self.axis`` as a non-negative axis of a batched array of ``sample_rank + 1`` dims."""
        axis = self.axis + sample_rank + 1 if self.axis < 0 else self.axis
        if not 1 <= axis <= sample_rank:
            raise ValueError(f"{self.name} axis {self.axis} is out of range for branch outputs "
                             f"with {sample_rank} axes per sample (batched rank {sample_rank + 1})")
        return axis

    def _join_shape(self, shapes, sample_axis: int) -> tuple:
        """The per-sample output shape, or a ValueError naming two branches that disagree."""
        first = shapes[0]
        for k, shape in enumerate(shapes[1:], start=1):
            others_agree = len(shape) == len(first) and all(
                a == b for i, (a, b) in enumerate(zip(shape, first)) if i != sample_axis)
            if not others_agree:
                raise ValueError(
                    f"{self.name}: branch 0 gives output shape {_with_batch(first)} but branch {k} "
                    f"gives {_with_batch(shape)}; they must agree on every axis except axis "
                    f"{self.axis} to be concatenated")
        joined = list(first)
        joined[sample_axis] = sum(shape[sample_axis] for shape in shapes)
        return tuple(joined)

    def named_children(self):
        return [(f"branches.{k}", branch) for k, branch in enumerate(self.branches)]

    def _child_input_shapes(self, input_shape):
        return [(child_name, child, tuple(input_shape)) for child_name, child in self.named_children()]

    def _children_ready(self) -> bool:
        return hasattr(self, "branches")


# ---------------------------------------------------------------------- helpers
def _holds_layers(value) -> bool:
    return isinstance(value, Layer) or (isinstance(value, (list, tuple))
                                        and any(isinstance(v, Layer) for v in value))


def _with_batch(shape) -> tuple:
    """``(6, 28, 28) -> (None, 6, 28, 28)``: a per-sample shape as Keras prints it."""
    return (None, *tuple(shape))


@contextmanager
def _unbuilt_on_error(container):
    """A container whose children fail to build is left unbuilt, so a retry rebuilds it."""
    try:
        yield
    except Exception:
        container.built = False
        raise


def _build_child(parent, child_name, layer: Layer, shape) -> tuple:
    """Build ``layer`` (if needed) for ``shape``; return its output shape.

    ValueError/TypeError from the layer are re-raised naming the child (its
    index in a ``Sequential``), so "Dense expected 400 input features, got 256"
    can be found in a long stack.
    """
    try:
        if not layer.built:
            layer.build(shape)
        return tuple(layer.output_shape(shape))
    except (ValueError, TypeError) as exc:
        raise _renamed(exc, parent, child_name, layer, shape) from exc


def _child_output_shape(parent, child_name, layer: Layer, shape) -> tuple:
    try:
        return tuple(layer.output_shape(shape))
    except (ValueError, TypeError) as exc:
        raise _renamed(exc, parent, child_name, layer, shape) from exc


def _renamed(exc, parent, child_name, layer, shape):
    what = f"layer {child_name}" if isinstance(parent, Sequential) else str(child_name)
    return type(exc)(f"{parent.name} {what} ({layer.name}) failed for input shape "
                     f"{_with_batch(shape)}: {exc}")


def _summary_rows(container, input_shape, prefix: str, depth: int, rows: list) -> None:
    """Append ``(label, output shape, count)`` rows for each child, recursing into containers."""
    children = container._child_input_shapes(input_shape)
    path_width = max((len(prefix + child_name) for child_name, _, _ in children), default=0)
    for child_name, child, child_shape in children:
        path = prefix + child_name
        kind = type(child).__name__
        title = kind if child.name == kind else f"{child.name} ({kind})"
        activation = getattr(child, "activation", None)
        if isinstance(activation, Layer) and type(activation).__name__ != "Identity":
            title += f" + {type(activation).__name__}"  # a fused activation= shows in its row
        label = f"{'  ' * depth}{path:<{path_width}}  {title}"
        count = child.parameters_count() + int(sum(b.size for _, b in child.named_buffers()))
        rows.append((label, str(_with_batch(child.output_shape(child_shape))), f"{count:,}"))
        if isinstance(child, Container):
            _summary_rows(child, child_shape, path + ".", depth + 1, rows)
