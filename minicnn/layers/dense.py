"""The fully connected layer."""
from __future__ import annotations

import numpy as np

from ..initializers import init_weight
from .activations import get_activation
from .base import Layer
from .shapes import positive_int

__all__ = ["Dense"]


class Dense(Layer):
    """Fully connected layer, ``y = act(z)`` with ``z = x W^T + b``.

    Shapes: ``x (N, in)``, ``W`` = ``params['weight'] (out, in)``,
    ``b`` = ``params['bias'] (out,)``, ``y (N, out)`` — torch ``nn.Linear``'s layout,
    so weights copy across unchanged. Images must be flattened first (``Flatten()``).

    Parameters
    ----------
    out_features : int
        Number of output units.
    activation : str or None
        Applied after the affine map (see ``get_activation``); also picks the
        initialisation: He-normal for the ReLU family, Glorot-uniform otherwise.
    bias : bool
        With ``False`` there is no ``'bias'`` key in ``params``.
    in_features : int or None
        Input size; when ``None`` it is taken from the first input.

    Backward
    --------
    With ``dz = act'(z) dy`` (the activation's own backward) and
    ``z[n, o] = sum_i x[n, i] W[o, i] + b[o]``::

        dW = dz^T x          (out, in)   — sum over the batch of outer products
        db = sum_n dz[n]     (out,)
        dx = dz W            (N, in)     — skipped when ``skip_input_grad`` is set
    """

    input_rank = 1

    def __init__(self, out_features: int, activation=None, bias: bool = True, in_features=None,
                 dtype=np.float32, name=None):
        super().__init__(dtype, name)
        self.out_features = positive_int(out_features, "out_features", self.name)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{self.name} expected bias to be True or False, got {bias!r}")
        self.use_bias = bool(bias)
        self.activation_name = activation
        self.activation = get_activation(activation, self.name, self.dtype)
        self.in_features = None
        if in_features is not None:
            self.build((positive_int(in_features, "in_features", self.name),))

    def build(self, input_shape) -> None:
        super().build(input_shape)
        features = self.input_shape[0]
        if self.in_features is not None:  # params exist already (in_features given or built before)
            if features != self.in_features:
                raise ValueError(f"{self.name} expected {self.in_features} input features, got {features} "
                                 f"(per-sample input shape {self.input_shape})")
            return
        self.in_features = features
        shape = (self.out_features, features)
        self.add_param("weight", init_weight(shape, self.activation_name, self.dtype))
        if self.use_bias:
            self.add_param("bias", np.zeros(self.out_features, dtype=self.dtype))

    def output_shape(self, input_shape) -> tuple:
        self._check_rank(tuple(input_shape), with_batch=False)
        if self.in_features is not None and input_shape[0] != self.in_features:
            raise ValueError(f"{self.name} expected {self.in_features} input features, got {input_shape[0]} "
                             f"(per-sample input shape {tuple(input_shape)})")
        return (self.out_features,)

    def forward(self, x, training=False):
        x = self._prepare(x)
        self._expect_input(x, "input features", 1, self.in_features)
        self._cache_x = x
        z = x @ self.params["weight"].T
        if self.use_bias:
            z += self.params["bias"]
        return self.activation.forward(z, training=training)

    def backward(self, dy):
        dz = self.activation.backward(dy)
        self.grads["weight"][...] = dz.T @ self._cache_x
        if self.use_bias:
            self.grads["bias"][...] = dz.sum(axis=0)
        if self.skip_input_grad:  # first layer of a model: nobody needs dL/d(data)
            return None
        return dz @ self.params["weight"]

    def _check_rank(self, shape, with_batch: bool) -> None:
        # A conv feature map fed straight into Dense is the classic mistake: say how to fix it.
        expected = 2 if with_batch else 1
        if len(shape) > expected:
            layout = "(N, features)" if with_batch else "(features,)"
            raise ValueError(f"{self.name} expected a {expected}-D input {layout}, got shape {tuple(shape)}; "
                             f"add Flatten() before {self.name} to turn feature maps into vectors")
        super()._check_rank(shape, with_batch)


