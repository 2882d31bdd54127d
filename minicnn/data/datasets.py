"""Dataset loaders. Each returns ``(x, y)``: ``x`` float32 NCHW scaled to [0, 1], ``y`` int64.

==========================  ====================  =========================================
loader                      x shape               source
==========================  ====================  =========================================
``load_digits()``           (1797, 1, 8, 8)       scikit-learn's bundled 8x8 digits (offline)
``load_mnist(split=)``      (60000|10000, 1, 28, 28)  IDX files, gzipped or not
``load_fashion_mnist()``    (60000|10000, 1, 28, 28)  IDX files, gzipped or not
``load_cifar10(split=)``    (50000|10000, 3, 32, 32)  the "python version" pickle batches
``load_sample_image(name)`` (3, H, W), one photo  scikit-learn's bundled photos
==========================  ====================  =========================================

With ``path=None`` the file loaders look in, in order: ``$MINICNN_DATA/<name>``,
``$MINICNN_DATA`` (MNIST and CIFAR-10 only, whose file names say what they are),
``~/.minicnn/data/<name>``, and ``../shared/data/<name>`` relative to the working
directory and to the repository. ``download=True`` fetches missing files from the
official site (checksum-verified, see :mod:`minicnn.data.download`).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .download import SOURCES, default_cache_dir, download_dataset, extract_cifar10
from .idx import IDX_IMAGES, IDX_LABELS, read_idx

__all__ = ["load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10",
           "load_sample_image", "SAMPLE_IMAGES"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
_SPLITS = ("train", "test")
SAMPLE_IMAGES = ("china.jpg", "flower.jpg")


def _check_split(split, owner: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"{owner} expected split 'train' or 'test', got {split!r}")
    return split


def _candidate_dirs(name: str, bare_env: bool) -> list[Path]:
    """The folders searched for dataset ``name`` when no path is given (module docstring)."""
    dirs = []
    env = os.environ.get("MINICNN_DATA")
    if env:
        dirs.append(Path(env) / name)
        if bare_env:
            dirs.append(Path(env))
    dirs.append(Path.home() / ".minicnn" / "data" / name)
    dirs.append(Path.cwd().parent / "shared" / "data" / name)
    dirs.append(_REPO_ROOT.parent / "shared" / "data" / name)
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _not_found(title: str, wanted, looked, name: str) -> FileNotFoundError:
    places = "\n".join(f"  {d}" for d in looked)
    env_note = "" if os.environ.get("MINICNN_DATA") else " ($MINICNN_DATA is not set)"
    return FileNotFoundError(
        f"{title} files not found: {', '.join(wanted)}.\nLooked in{env_note}:\n{places}\n"
        f"Get them with download=True (saves to {default_cache_dir(name)}), or download "
        f"{', '.join(SOURCES[name]['files'])} from {SOURCES[name]['url']} into one of those "
        "folders (unpacking any .tar.gz), or point $MINICNN_DATA at them.")


# ----------------------------------------------------------------------------- IDX datasets

def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dataset(name: str, title: str, path, split, download: bool, mirror):
    _check_split(split, f"load_{name.replace('-', '_')}")
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    looked = [Path(path)] if path is not None else _candidate_dirs(name, bare_env=(name == "mnist"))
    for folder in looked:
        files = [_find_idx(folder, stem) for stem in stems]
        if all(files):
            break
    else:
        if not download:
            raise _not_found(f"{title} {split}", [f"{s}[.gz]" for s in stems], looked, name)
        root = download_dataset(name, path, files=[f"{s}.gz" for s in stems], mirror=mirror)
        files = [root / f"{s}.gz" for s in stems]

    images = read_idx(files[0], IDX_IMAGES)
    labels = read_idx(files[1], IDX_LABELS)
    if len(images) != len(labels):
        raise ValueError(f"{title} {split}: {files[0]} holds {len(images)} images but "
                         f"{files[1]} holds {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{title} {split}: {files[1]} holds label {labels.max()}, expected 0-9")
    x = (images.astype(np.float32) / 255.0)[:, None]
    return x, labels.astype(np.int64)


def load_mnist(path=None, split: str = "train", download: bool = False, mirror: str | None = None):
    """MNIST handwritten digits: ``x`` (N, 1, 28, 28) float32 in [0, 1], ``y`` (N,) int64 in 0-9.

    ``path`` is a folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``
    (``split='train'``, 60,000 images) or the ``t10k-`` files (``split='test'``, 10,000).
    ``path=None`` searches the places listed in :mod:`minicnn.data.datasets`;
    ``download=True`` fetches missing files (from ``mirror`` if given).
    """
    return _load_idx_dataset("mnist", "MNIST", path, split, download, mirror)


def load_fashion_mnist(path=None, split: str = "train", download: bool = False,
                       mirror: str | None = None):
    """Fashion-MNIST (Zalando): same files, shapes and arguments as :func:`load_mnist`.

    Labels: 0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt,
    7 sneaker, 8 bag, 9 ankle boot. A bare ``$MINICNN_DATA`` is not searched: its
    file names are MNIST's, and loading one as the other would fail silently.
    """
    return _load_idx_dataset("fashion-mnist", "Fashion-MNIST", path, split, download, mirror)


# ----------------------------------------------------------------------------- CIFAR-10

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, nothing else.

    A pickle can name any function to call while loading; a tampered CIFAR file
    could run code. The CIFAR batches need only these globals.
    """

    _ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # how Python 3's protocol 2 stores bytes

    def find_class(self, module, name):
        if module.startswith("numpy.core"):  # pickles written by NumPy 1.x
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays)")
        return super().find_class(module, name)


def _read_cifar_batch(file: Path):
    try:
        with open(file, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{file} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{file} is not a CIFAR-10 batch: holds a {type(batch).__name__}, expected a dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{file} is not a CIFAR-10 batch: keys {sorted(batch)}, expected 'data' and 'labels'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{file}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise ValueError(f"{file}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{file}: labels span {labels.min()}..{labels.max()}, expected 0-9")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: NCHW already.
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(path=None, split: str = "train", download: bool = False, mirror: str | None = None):
    """CIFAR-10: ``x`` (N, 3, 32, 32) float32 in [0, 1], ``y`` (N,) int64 in 0-9.

    Reads the "python version" batches (``data_batch_1`` ... ``data_batch_5`` for
    ``split='train'``, 50,000 images; ``test_batch`` for ``'test'``, 10,000) from
    ``path`` or ``path/cifar-10-batches-py``. Labels: 0 airplane, 1 automobile, 2 bird,
    3 cat, 4 deer, 5 dog, 6 frog, 7 horse, 8 ship, 9 truck.
    """
    _check_split(split, "load_cifar10")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    roots = [Path(path)] if path is not None else _candidate_dirs("cifar10", bare_env=True)
    looked = [d for root in roots for d in (root, root / "cifar-10-batches-py")]
    folder = next((d for d in looked if all((d / n).is_file() for n in names)), None)
    if folder is None:
        if not download:
            raise _not_found(f"CIFAR-10 {split}", names, looked, "cifar10")
        root = download_dataset("cifar10", path, mirror=mirror)
        folder = extract_cifar10(root / "cifar-10-python.tar.gz", root)
    parts = [_read_cifar_batch(folder / n) for n in names]
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    return x, np.concatenate([p[1] for p in parts])


# ----------------------------------------------------------------------------- bundled with scikit-learn

def load_digits():
    """scikit-learn's 8x8 handwritten digits (UCI), offline: ``x`` (1797, 1, 8, 8), ``y`` (1797,).

    Pixels are counts 0-16 in the original; dividing by 16 puts them in [0, 1].
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]
    return x, digits.target.astype(np.int64)


def load_sample_image(name: str):
    """One of scikit-learn's bundled photos as a (3, H, W) float32 array in [0, 1].

    ``name`` is ``'china.jpg'`` or ``'flower.jpg'`` (both 427 x 640); real images for
    looking at what filters and feature maps do.
    """
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"load_sample_image expected one of {list(SAMPLE_IMAGES)}, got {name!r}")
    from sklearn.datasets import load_sample_image as sklearn_sample_image

    image = sklearn_sample_image(name)  # (H, W, 3) uint8
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
