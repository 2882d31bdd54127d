"""Small dataset files written byte by byte, independently of the loaders under test.

The IDX layout is written here with ``struct`` straight from the format's
definition (big-endian magic, dimensions, then uint8 values), and CIFAR batches
with plain ``pickle``, so a loader that misreads the format cannot agree with them.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x0800 + ndim unless given)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 + array.ndim if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def fake_digits(n: int, seed: int = 0):
    """``n`` random 28x28 uint8 images and labels 0-9."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, size=n, dtype=np.uint8))


def write_idx_pair(folder: Path, prefix: str, images, labels, gz: bool) -> list[Path]:
    """Write ``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        payload = idx_bytes(array)
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(payload) if gz else payload)
        paths.append(path)
    return paths


def write_cifar_batch(path: Path, data: np.ndarray, labels, str_keys: bool = False) -> None:
    """A CIFAR-10 python batch: ``{b'data': uint8 (N, 3072), b'labels': [int], ...}``."""
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    batch = {key("batch_label"): b"fake batch", key("data"): data, key("labels"): [int(v) for v in labels],
             key("filenames"): [f"img{i}.png".encode() for i in range(len(labels))]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
