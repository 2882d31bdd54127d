"""The layer protocol every minicnn layer follows.

A layer is one class with an explicit, hand-derived backward pass — there is no
autograd. The life of a layer:

    layer = Conv2D(16, 3)            # hyper-parameters only; nothing allocated yet
    y  = layer(x, training=True)     # first call builds params for x.shape[1:], caches
    dx = layer.backward(dy)          # uses the cache, overwrites layer.grads, returns dL/dx

State lives in three dicts of arrays, keyed like PyTorch's ``state_dict`` so
weights can be copied across and compared:

* ``params``  — trained values (``weight``, ``bias``);
* ``grads``   — same keys and shapes, overwritten by each ``backward``;
* ``buffers`` — non-trained state such as batch-norm running statistics.

Shapes passed to ``build`` and ``output_shape`` are *per sample* (no batch axis),
e.g. ``(C, H, W)`` for images and ``(features,)`` for vectors.
"""
from __future__ import annotations

import inspect

import numpy as np

from .. import backend

__all__ = ["Layer"]

_LAYOUTS = {1: "(N, features)", 3: "(N, C, H, W)"}


class _ConstructorSignature:
    """``inspect.signature(ReLU)`` shows ``(dtype=..., name=None)``, not ``__new__``'s ``*args``.

    Python prefers ``__new__`` over an ``__init__`` defined in the same class, so a layer
    that inherits both from ``Layer`` would otherwise advertise ``(*args, **kwargs)``.
    Looked up on an instance it is absent, so ``inspect.signature(layer)`` stays ``__call__``'s.
    """

    def __get__(self, instance, owner):
        if instance is not None:
            raise AttributeError("__signature__")
        signature = inspect.signature(owner.__init__)
        return signature.replace(parameters=list(signature.parameters.values())[1:])


class Layer:
    """Base class: parameter bookkeeping, lazy building, dtype and device moves.

    Subclasses implement ``build`` (create params), ``forward`` (cache what
    backward needs) and ``backward`` (return dL/dx, fill ``grads``), and, where
    the output shape differs from the input's, ``output_shape``.

    Class attributes
    ----------------
    input_rank : int or None
        Rank of one sample (3 for ``(C, H, W)``, 1 for ``(features,)``);
        ``None`` accepts any rank. Checked on every call, so a wrong input
        raises an error naming the layer instead of a broadcasting error.
    """

    input_rank: int | None = None
    __signature__ = _ConstructorSignature()

    def __new__(cls, *args, **kwargs):
        layer = super().__new__(cls)
        # Remember the constructor call, so save() can rebuild this layer from a
        # file in a fresh process without the code that built it.
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
            layer._config = {k: v for k, v in list(bound.arguments.items())[1:]}
        except TypeError:
            layer._config = None  # __init__ will raise the real error for bad arguments
        return layer

    def __init__(self, dtype=np.float32, name: str | None = None):
        self.dtype = _float_dtype(dtype, type(self).__name__)
        self.name = name or type(self).__name__
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}
        self.built = False
        self.input_shape: tuple | None = None
        self.device = backend.get_backend()
        # Set by training on the first layer of a model: nobody needs dL/dx of the data,
        # so layers that honour it (convolutions, dense) skip that GEMM and return None.
        self.skip_input_grad = False

    # ------------------------------------------------------------------ protocol
    def build(self, input_shape) -> None:
        """Create parameters for one sample of shape ``input_shape``.

        Subclasses call ``super().build(input_shape)`` first: it validates the rank
        and records the shape.
        """
        input_shape = tuple(int(s) for s in input_shape)
        self._check_rank(input_shape, with_batch=False)
        if any(s <= 0 for s in input_shape):
            raise ValueError(f"{self.name} expected positive sizes in the input shape, got {input_shape}")
        self.input_shape = input_shape
        self.built = True

    def output_shape(self, input_shape) -> tuple:
        """Per-sample output shape for a per-sample ``input_shape`` (identity by default)."""
        return tuple(input_shape)

    def forward(self, x, training: bool = False):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x, training: bool = False):
        return self.forward(x, training=training)

    # ------------------------------------------------------------------ helpers for subclasses
    def _prepare(self, x):
        """Validate a batch, build on first use, and cast it to the layer's dtype.

        Every ``forward`` starts with ``x = self._prepare(x)``.
        """
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{self.name} expected a numpy or cupy array, got {type(x).__name__}")
        self._check_rank(x.shape, with_batch=True)
        if x.shape[0] == 0:
            raise ValueError(f"{self.name} received an empty batch (input shape {tuple(x.shape)})")
        if not self.built:
            self.build(x.shape[1:])
        if self.params:
            backend.check_same_device(self.name, x, next(iter(self.params.values())))
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return x

    def _check_rank(self, shape, with_batch: bool) -> None:
        if self.input_rank is None:
            return
        expected = self.input_rank + (1 if with_batch else 0)
        if len(shape) != expected:
            layout = _LAYOUTS.get(self.input_rank, "")
            layout = layout if with_batch else layout.replace("N, ", "")
            hint = ""
            if self.input_rank == 3 and len(shape) == expected - 1:
                # The classic: grayscale images as (N, H, W), without their channel axis.
                hint = "; if these are single-channel images, add the channel axis with x[:, None]"
            raise ValueError(
                f"{self.name} expected a {expected}-D input {layout}, got shape {tuple(shape)}{hint}"
            )

    def _expect_input(self, x, axis_name: str, axis: int, expected: int) -> None:
        """Raise a clear error when one axis of the input does not have the built size."""
        if x.shape[axis] != expected:
            raise ValueError(
                f"{self.name} expected {expected} {axis_name}, got {x.shape[axis]} "
                f"(input shape {tuple(x.shape)})"
            )

    def add_param(self, name: str, value) -> None:
        """Register a trained array (and a zero gradient of the same shape)."""
        value = backend.to_device(np.asarray(value, dtype=self.dtype), self.device)
        self.params[name] = value
        self.grads[name] = backend.get_array_module(value).zeros_like(value)

    def add_buffer(self, name: str, value) -> None:
        """Register a non-trained array (running statistics and the like)."""
        self.buffers[name] = backend.to_device(np.asarray(value, dtype=self.dtype), self.device)

    # ------------------------------------------------------------------ structure
    def named_children(self) -> list[tuple[str, "Layer"]]:
        """``(name, sub-layer)`` pairs; the names qualify parameter names (containers override)."""
        return []

    def children(self) -> list["Layer"]:
        return [child for _, child in self.named_children()]

    def named_parameters(self, prefix: str = ""):
        """Yield ``(qualified_name, param, grad)``; names follow PyTorch (``'0.weight'``)."""
        for key, value in self.params.items():
            yield prefix + key, value, self.grads[key]
        for child_name, child in self.named_children():
            yield from child.named_parameters(f"{prefix}{child_name}.")

    def named_buffers(self, prefix: str = ""):
        for key, value in self.buffers.items():
            yield prefix + key, value
        for child_name, child in self.named_children():
            yield from child.named_buffers(f"{prefix}{child_name}.")

    def layers_recursive(self):
        """This layer and every layer it holds (children, activations), depth first.

        Walks attributes rather than ``children()`` so that helpers such as a conv's
        ``activation`` follow ``astype`` and ``to`` too.
        """
        yield self
        for value in vars(self).values():
            held = value if isinstance(value, (list, tuple)) else [value]
            for item in held:
                if isinstance(item, Layer):
                    yield from item.layers_recursive()

    def parameters_count(self) -> int:
        return int(sum(p.size for _, p, _ in self.named_parameters()))

    def regularization_loss(self) -> float:
        """Penalty this layer adds to the training loss (see ``ActivityRegularization``)."""
        return float(sum(child.regularization_loss() for child in self.children()))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Params and buffers by qualified name, as NumPy copies (PyTorch-compatible keys)."""
        state = {name: backend.to_numpy(p).copy() for name, p, _ in self.named_parameters()}
        state.update({name: backend.to_numpy(b).copy() for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into existing params and buffers, checking names and shapes."""
        own = {name: p for name, p, _ in self.named_parameters()}
        own.update(dict(self.named_buffers()))
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{self.name}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
                + ("" if own else " (build the model first, e.g. model.build(input_shape))")
            )
        for name, target in own.items():
            value = np.asarray(backend.to_numpy(state[name]))
            if value.shape != target.shape:
                raise ValueError(
                    f"{self.name}.load_state_dict: '{name}' expected shape {target.shape}, "
                    f"got {value.shape}"
                )
            target[...] = backend.to_device(value.astype(target.dtype), backend.backend_name(target))

    # ------------------------------------------------------------------ dtype and device
    def astype(self, dtype) -> "Layer":
        """Convert params, grads and buffers (and future inputs) to ``dtype``; returns self."""
        for layer in self.layers_recursive():
            layer.dtype = _float_dtype(dtype, layer.name)
            for store in (layer.params, layer.grads, layer.buffers):
                for key in store:
                    store[key] = store[key].astype(layer.dtype)
        return self

    def to(self, device: str) -> "Layer":
        """Move params, grads and buffers to ``'numpy'`` or ``'cupy'``; returns self."""
        for layer in self.layers_recursive():
            for store in (layer.params, layer.grads, layer.buffers):
                for key in store:
                    store[key] = backend.to_device(store[key], device)
            layer.device = device
            layer._clear_cache()
        return self

    def _check_dy(self, dy, expected) -> None:
        """The errors a ``backward`` gives for a ``dy`` it cannot use: ``expected`` (the shape
        of the last forward's output) is None when there was no forward since the last clear."""
        if expected is None:
            raise RuntimeError(f"{self.name}.backward called before forward")
        if tuple(dy.shape) != tuple(expected):
            raise ValueError(f"{self.name}.backward expected dy of shape {tuple(expected)} "
                             f"(the output of the last forward), got {tuple(dy.shape)}")

    def _clear_cache(self) -> None:
        """Drop arrays cached by forward (called when the layer moves device)."""
        for key in [k for k in vars(self) if k.startswith("_cache")]:
            setattr(self, key, None)

    def get_config(self) -> dict:
        """The constructor arguments this layer was created with."""
        return dict(self._config or {})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in (self._config or {}).items()
                         if not isinstance(v, (list, tuple, Layer)) or k != "layers")
        return f"{type(self).__name__}({args})"


def _float_dtype(dtype, owner: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"{owner} expected a floating dtype (float32 or float64), got {dtype}")
    return dtype
