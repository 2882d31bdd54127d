"""Ready-made architectures (each returns an unbuilt ``Sequential``) and autoencoders."""
from . import autoencoder, zoo
from ..layers import containers
from ..layers.containers import *  # noqa: F401,F403  (Sequential)
from .zoo import *  # noqa: F401,F403
from .autoencoder import *  # noqa: F401,F403

__all__ = containers.__all__ + zoo.__all__ + autoencoder.__all__
