"""Autoencoders: networks trained to reproduce their input through a narrow code.

An autoencoder is ``decoder(encoder(x)) ≈ x``. The encoder squeezes each sample
into a code smaller than the input, so to reconstruct well it must keep what
matters and drop the rest (Hinton & Salakhutdinov, "Reducing the
Dimensionality of Data with Neural Networks", Science 2006). Variants:

* **deep** — more hidden layers in the encoder, mirrored in the decoder;
* **sparse** — an L1 penalty on the code (``ActivityRegularization``) makes most
  code units zero for any one input, even when the code is wide;
* **denoising** — noise is added to the input in training only
  (``GaussianNoise``) while the target stays clean, so the network learns to
  undo corruption (Vincent et al., ICML 2008);
* **convolutional** — conv + pooling down, upsampling + conv back up.

Train with the input as its own target: ``model.compile('adam', 'mse');
model.fit(x, x, ...)``. The decoders end in a sigmoid, for data in ``[0, 1]``:
use ``'mse'`` or ``BinaryCrossEntropy(from_logits=False)`` — not the default
``'bce'``, which expects logits.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from ..layers.base import Layer
from ..layers.containers import Sequential
from ..layers.conv import Conv2D
from ..layers.dense import Dense
from ..layers.dropout import GaussianNoise
from ..layers.pooling import MaxPool2D, UpSampling2D
from ..layers.regularization import ActivityRegularization
from .zoo import _positive_int, _positive_tuple

__all__ = ["Autoencoder", "dense_autoencoder", "conv_autoencoder"]


class Autoencoder(Sequential):
    """A model ``x -> decoder(encoder(x))`` that can also run either half alone.

    A ``Sequential`` of exactly two layers, ``[encoder, decoder]``, so
    ``compile``/``fit``/``evaluate``/``predict``/``save`` work as for any model,
    and forward/backward are the chain of the two. Parameter names are
    ``'0.*'`` (encoder) and ``'1.*'`` (decoder).

    Parameters
    ----------
    encoder, decoder : Layer
        Usually ``Sequential``s. The decoder's output must have the input's shape
        (checked when the model is built).
    input_shape : tuple, optional
        Per-sample input shape; given, the model is built at once.

    Methods
    -------
    ``encode(x)`` and ``decode(code)`` run one half in evaluation mode (no noise,
    no dropout) over batches of ``batch_size`` and return NumPy arrays.
    """

    def __init__(self, encoder, decoder, input_shape=None, dtype=np.float32, name=None):
        for role, part in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(part, Layer):
                raise TypeError(f"Autoencoder expected the {role} to be a Layer, got {type(part).__name__}")
        super().__init__([encoder, decoder], input_shape=input_shape, dtype=dtype, name=name)

    @property
    def encoder(self) -> Layer:
        return self.layers[0]

    @property
    def decoder(self) -> Layer:
        return self.layers[1]

    def build(self, input_shape) -> None:
        super().build(input_shape)
        reconstructed = self.output_shape(self.input_shape)
        if reconstructed != self.input_shape:
            self.built = False
            raise ValueError(
                f"{self.name}: the decoder reconstructs shape {reconstructed} from inputs of shape "
                f"{self.input_shape}; an autoencoder's output must match its input (for "
                f"conv_autoencoder, height and width must be divisible by 2 ** len(filters))")

    def add(self, layer):
        raise TypeError(f"{self.name} holds exactly [encoder, decoder]; add layers to "
                        f"model.encoder or model.decoder before building instead")

    def encode(self, x, batch_size: int = 256):
        """The code ``encoder(x)`` of a batch, in evaluation mode, as a NumPy array."""
        if not self.built:
            self.build(tuple(x.shape[1:]))
        return _in_batches(self.encoder, x, batch_size, self.device)

    def decode(self, code, batch_size: int = 256):
        """The reconstruction ``decoder(code)``, in evaluation mode, as a NumPy array."""
        return _in_batches(self.decoder, code, batch_size, self.device)

    def get_config(self) -> dict:
        config = dict(self._config or {})
        config.update(encoder=self.encoder, decoder=self.decoder)
        return config


def dense_autoencoder(input_dim: int = 784, hidden=(), code_size: int = 32,
                      sparse_l1: float = 0.0, noise_stddev: float = 0.0) -> Autoencoder:
    """A fully connected autoencoder for inputs of shape ``(N, input_dim)``.

    ::

        encoder: [GaussianNoise(noise_stddev)] → Dense(h, relu) for h in hidden
                 → Dense(code_size, relu) → [ActivityRegularization(l1=sparse_l1)]
        decoder: Dense(h, relu) for h in reversed(hidden) → Dense(input_dim, sigmoid)

    The bracketed layers are present only when their argument is positive:
    ``hidden=()`` is the vanilla single-layer autoencoder, ``hidden=(128,)`` a
    deep one, ``sparse_l1 > 0`` a sparse one, ``noise_stddev > 0`` a denoising
    one. Images must be flattened first, e.g. ``x.reshape(len(x), -1)`` (the model
    is built for ``(input_dim,)``, so a 4-D input raises an error saying so).
    """
    input_dim = _positive_int("dense_autoencoder", "input_dim", input_dim)
    code_size = _positive_int("dense_autoencoder", "code_size", code_size)
    hidden = _positive_tuple("dense_autoencoder", "hidden", hidden, allow_empty=True)
    sparse_l1 = _non_negative("dense_autoencoder", "sparse_l1", sparse_l1)
    noise_stddev = _non_negative("dense_autoencoder", "noise_stddev", noise_stddev)

    encoder = [GaussianNoise(noise_stddev)] if noise_stddev > 0 else []
    encoder += [Dense(width, activation="relu") for width in hidden]
    encoder.append(Dense(code_size, activation="relu"))
    if sparse_l1 > 0:
        encoder.append(ActivityRegularization(l1=sparse_l1))
    decoder = [Dense(width, activation="relu") for width in reversed(hidden)]
    decoder.append(Dense(input_dim, activation="sigmoid"))
    return Autoencoder(Sequential(encoder, name="encoder"), Sequential(decoder, name="decoder"),
                       input_shape=(input_dim,), name="dense_autoencoder")


def conv_autoencoder(in_channels: int = 1, filters=(16, 32), code_channels: int = 8) -> Autoencoder:
    """A convolutional autoencoder for images ``(N, in_channels, H, W)``.

    ::

        encoder: [Conv(f, 3×3, 'same', relu) → MaxPool 2] for f in filters
                 → Conv(code_channels, 3×3, 'same', relu)
        decoder: [UpSampling 2 → Conv(f, 3×3, 'same', relu)] for f in reversed(filters)
                 → Conv(in_channels, 3×3, 'same', sigmoid)

    On 28×28 with the defaults the code is ``(8, 7, 7)`` (392 numbers for 784
    pixels) and the reconstruction is 28×28 again. Height and width must be
    divisible by ``2 ** len(filters)``. Nearest upsampling followed by a
    convolution avoids the checkerboard artefacts of strided transposed
    convolutions (Odena et al., Distill 2016).
    """
    in_channels = _positive_int("conv_autoencoder", "in_channels", in_channels)
    filters = _positive_tuple("conv_autoencoder", "filters", filters)
    code_channels = _positive_int("conv_autoencoder", "code_channels", code_channels)

    encoder = []
    for index, width in enumerate(filters):
        first = {"in_channels": in_channels} if index == 0 else {}
        encoder += [Conv2D(width, 3, padding="same", activation="relu", **first), MaxPool2D(2)]
    encoder.append(Conv2D(code_channels, 3, padding="same", activation="relu"))
    decoder = []
    for width in reversed(filters):
        decoder += [UpSampling2D(2), Conv2D(width, 3, padding="same", activation="relu")]
    decoder.append(Conv2D(in_channels, 3, padding="same", activation="sigmoid"))
    return Autoencoder(Sequential(encoder, name="encoder"), Sequential(decoder, name="decoder"),
                       name="conv_autoencoder")


# ---------------------------------------------------------------------- helpers
def _in_batches(part: Layer, x, batch_size: int, device: str):
    """Evaluation-mode ``part(x)`` over slices of ``batch_size`` samples, gathered as NumPy."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not hasattr(x, "shape") or len(x.shape) < 2 or x.shape[0] == 0:
        raise ValueError(f"{part.name} expected a non-empty batch of samples (N, ...), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    outputs = [backend.to_numpy(part.forward(backend.to_device(x[start:start + batch_size], device)))
               for start in range(0, len(x), batch_size)]
    return np.concatenate(outputs, axis=0)


def _non_negative(owner: str, what: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner} expected {what} as a real number, got {value!r}")
    if not 0.0 <= float(value) < np.inf:
        raise ValueError(f"{owner} expected a finite {what} >= 0, got {value}")
    return float(value)
