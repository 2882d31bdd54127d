"""minicnn layers: one module per family, each layer one class with its backward.

See ``base.py`` for the protocol every layer follows.
"""
from . import (activations, containers, conv, dense, dropout, normalization, pooling,
               regularization, reshape)
from .base import Layer
from .activations import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .dense import *  # noqa: F401,F403
from .reshape import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .regularization import *  # noqa: F401,F403
from .containers import *  # noqa: F401,F403

_FAMILIES = (activations, conv, pooling, dense, reshape, normalization, dropout, regularization,
             containers)
__all__ = ["Layer"] + [name for family in _FAMILIES for name in family.__all__]
