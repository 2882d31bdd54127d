"""Datasets, mini-batches and augmentation.

Every loader returns ``(x, y)`` with ``x`` float32 NCHW in [0, 1] and ``y`` int64::

    from minicnn import data

    x, y = data.load_digits()                          # offline, (1797, 1, 8, 8)
    x_train, x_test, y_train, y_test = data.train_test_split(x, y, stratify=True)
    augment = data.Compose([data.RandomShift(1), data.RandomNoise(0.05)])
    for xb, yb in data.DataLoader(x_train, y_train, batch_size=64, augment=augment):
        ...

Modules: :mod:`~minicnn.data.datasets` (the loaders), :mod:`~minicnn.data.idx`
(the MNIST file format), :mod:`~minicnn.data.download` (checksum-verified,
atomic downloads), :mod:`~minicnn.data.loader` (``DataLoader``,
``train_test_split``), :mod:`~minicnn.data.transforms` (augmentation).
"""
from __future__ import annotations

from .datasets import (SAMPLE_IMAGES, load_cifar10, load_digits, load_fashion_mnist, load_mnist,
                       load_sample_image)
from .download import default_cache_dir, download_dataset
from .idx import read_idx
from .loader import DataLoader, train_test_split
from .transforms import (Compose, Normalize, RandomCrop, RandomFlip, RandomNoise, RandomRotation,
                         RandomShift, Transform)

__all__ = [
    "load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10", "load_sample_image",
    "SAMPLE_IMAGES", "read_idx", "download_dataset", "default_cache_dir",
    "DataLoader", "train_test_split",
    "Transform", "Compose", "RandomFlip", "RandomShift", "RandomCrop", "RandomRotation",
    "RandomNoise", "Normalize",
]
