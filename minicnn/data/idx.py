"""Reading IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then
the values in C order::

    magic = 0x00 0x00 <type> <ndim>        type 0x08 = unsigned byte
    2051 = 0x00000803: images, (N, rows, cols) uint8
    2049 = 0x00000801: labels, (N,) uint8

Files may be gzipped (``*.gz``, recognised by the gzip signature ``1f 8b``, not
by the name). Everything the header declares is checked against what the file
holds, so a truncated download fails loudly instead of loading garbage.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_IMAGES", "IDX_LABELS", "read_idx"]

IDX_IMAGES = 2051
IDX_LABELS = 2049

_GZIP_SIGNATURE = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_SIGNATURE):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{path} is a corrupt gzip file ({type(exc).__name__}: {exc}); "
                         "delete it and download it again") from exc


def read_idx(path, expected_magic: int) -> np.ndarray:
    """The uint8 array stored in the IDX file at ``path``.

    ``expected_magic`` is :data:`IDX_IMAGES` (2051) or :data:`IDX_LABELS` (2049).
    Raises ValueError naming the file when the magic number, the header or the
    amount of data does not match what is expected.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path} is too short to be an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == IDX_IMAGES else "labels"
        raise ValueError(f"{path} has magic number {magic}, expected {expected_magic} (IDX {kind}); "
                         "is it the right file, or an unpacked/renamed download?")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: its header needs {header} bytes, found {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "corrupt (trailing data)"
        raise ValueError(f"{path} is {what}: header declares shape {shape}, expected {expected} "
                         f"bytes of data, found {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
