"""Ready-made architectures (each returns an unbuilt ``Sequential``) and autoencoders."""
from ..layers.containers import *  # noqa: F401,F403  (Sequential)
from .zoo import *  # noqa: F401,F403
from .autoencoder import *  # noqa: F401,F403
