"""One seeded random generator for the whole library.

Initialisation, shuffling, dropout masks and augmentation all draw from
:func:`get_rng`, so ``minicnn.seed(n)`` makes a whole run reproducible: two runs
with the same seed give bit-identical weights on the CPU.

Random numbers are always drawn with NumPy (then moved to the GPU where needed),
so a seed means the same thing on either backend.
"""
from __future__ import annotations

import numpy as np

__all__ = ["seed", "get_rng"]

_rng = np.random.default_rng()


def seed(n: int) -> None:
    """Reseed minicnn's generator (weights, shuffling, dropout, augmentation)."""
    global _rng
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"seed expected a non-negative integer, got {n!r}")
    _rng = np.random.default_rng(int(n))


def get_rng() -> np.random.Generator:
    """The library's current ``numpy.random.Generator``."""
    return _rng
