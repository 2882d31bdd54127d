"""Numba CPU kernels. PLACEHOLDER during bring-up: re-exports the NumPy reference.

The performance issue replaces this file with @njit(cache=True) kernels of the
same signatures.
"""
from .reference import (im2col, col2im, maxpool_forward, maxpool_backward,  # noqa: F401
                        avgpool_forward, avgpool_backward, depthwise_forward, depthwise_backward)
