"""Mini-batches: :class:`DataLoader` and :func:`train_test_split`.

One epoch of a :class:`DataLoader` visits every sample exactly once: the sample
order is a fresh permutation from :func:`minicnn.rng.get_rng` (so ``minicnn.seed``
reproduces it), cut into consecutive batches; ``augment`` is applied to each batch
as it is produced, so every epoch sees new random variants of the images.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import to_numpy
from ..rng import get_rng

__all__ = ["DataLoader", "train_test_split"]


def _check_lengths(x, y, owner: str, other: str = "y") -> None:
    if y is not None and len(x) != len(y):
        raise ValueError(f"{owner} expected x and {other} of the same length, got {len(x)} samples "
                         f"in x and {len(y)} in {other}")


class DataLoader:
    """Iterate over ``(xb, yb)`` batches of ``x`` and ``y`` (or just ``xb`` when ``y`` is None).

    Parameters
    ----------
    x : array (N, ...), e.g. images (N, C, H, W). NumPy (or CuPy, without ``augment``).
    y : array (N, ...) of targets, or None.
    batch_size : samples per batch; the last batch is smaller unless ``drop_last``.
    shuffle : draw a new sample order every epoch (from ``minicnn.rng``).
    augment : a callable applied to each ``xb`` (see :mod:`minicnn.data.transforms`).
    drop_last : skip the final incomplete batch (keeps batch statistics comparable).
    """

    def __init__(self, x, y=None, batch_size: int = 32, shuffle: bool = True, augment=None,
                 drop_last: bool = False):
        x = x if hasattr(x, "shape") else np.asarray(x)
        y = y if y is None or hasattr(y, "shape") else np.asarray(y)
        if x.ndim < 1 or len(x) == 0:
            raise ValueError(f"DataLoader expected at least one sample, got x of shape {x.shape}")
        _check_lengths(x, y, "DataLoader")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise TypeError(f"DataLoader expected batch_size as an int, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"DataLoader expected batch_size >= 1, got {batch_size}")
        if augment is not None and not callable(augment):
            raise TypeError(f"DataLoader expected augment to be callable or None, got {augment!r}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.augment, self.drop_last = (
            int(batch_size), bool(shuffle), augment, bool(drop_last))

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.x)
        order = get_rng().permutation(n) if self.shuffle else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            # Unshuffled batches are slices (views, no copy); shuffled ones a gather.
            index = slice(start, start + self.batch_size) if order is None else \
                order[start:start + self.batch_size]
            xb = self.x[index]
            if self.augment is not None:
                xb = self.augment(xb)
            yield xb if self.y is None else (xb, self.y[index])


def train_test_split(x, y=None, test_size=0.2, stratify=None, seed=None):
    """Split into ``x_train, x_test, y_train, y_test`` (``x_train, x_test`` when ``y`` is None).

    scikit-learn's ``train_test_split``. ``stratify=True`` keeps the class
    proportions of ``y`` in both parts (or pass the labels to stratify by);
    ``seed=None`` draws the split from ``minicnn.rng`` so ``minicnn.seed`` reproduces it.
    """
    from sklearn.model_selection import train_test_split as sklearn_split

    x = to_numpy(x)
    y = None if y is None else to_numpy(y)
    _check_lengths(x, y, "train_test_split")
    if stratify is True:
        if y is None:
            raise ValueError("train_test_split(stratify=True) needs the labels y")
        stratify = y
    elif stratify is False:
        stratify = None
    elif stratify is not None:
        stratify = to_numpy(stratify)
        _check_lengths(x, stratify, "train_test_split", "stratify")
    if seed is None:
        seed = int(get_rng().integers(2**31 - 1))
    arrays = (x,) if y is None else (x, y)
    return sklearn_split(*arrays, test_size=test_size, stratify=stratify, random_state=seed)
