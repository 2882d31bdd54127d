"""minicnn — a from-scratch CNN framework: NumPy + Numba on the CPU, CuPy on the GPU.

Every layer has a hand-derived forward and backward pass (``minicnn.layers``);
the hot loops live in ``minicnn.kernels``. Quick tour::

    import minicnn
    from minicnn import layers, models

    minicnn.seed(0)
    model = models.lenet5()
    model.build((1, 28, 28))
    model.summary()
"""
from __future__ import annotations

import importlib

from . import backend
from . import threads  # noqa: F401
from .rng import seed
from . import layers, losses, optim, gradcheck, callbacks, models
from .layers import *  # noqa: F401,F403
from .callbacks import *  # noqa: F401,F403

__version__ = "0.1.0"

# The lazily loaded modules (data, metrics, viz, ...) stay out, so `import *` stays light.
__all__ = (["backend", "seed", "load", "layers", "losses", "optim", "gradcheck", "callbacks", "models"]
           + layers.__all__ + callbacks.__all__)

# Heavier modules (matplotlib, scikit-learn, torch interop) load on first use.
_LAZY_MODULES = {"data", "metrics", "viz", "interop", "sklearn", "cli", "serialization", "training"}
_LAZY_NAMES = {"load": "serialization"}


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'minicnn' has no attribute {name!r}")
