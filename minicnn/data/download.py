"""Fetching the public datasets: official URLs, checksums, atomic writes.

A download is trusted only after its checksum matches the published one, and a
file appears under its final name only once it is complete and verified::

    stream into  <dir>/.<name>.part-XXXX   (same folder, so the rename below is atomic)
    hash while streaming, compare with the table
    os.replace(part, <dir>/<name>)         (readers see no file or the whole file)

On any failure (network error, short body, checksum mismatch, Ctrl-C) the
partial file is deleted, so a cache never holds a half-written file.

The base URL of a dataset can be replaced (``mirror=`` or ``$MINICNN_MIRROR``),
which is how the tests point downloads at a local HTTP server; the checksum
table can be replaced the same way (``checksums=``).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from ..fileio import atomic_write

__all__ = ["SOURCES", "default_cache_dir", "download_dataset", "download_file", "extract_tar",
           "extract_cifar10"]

# Published digests, as ``(algorithm, hexdigest)``; a file passes if it matches any entry.
# MNIST and Fashion-MNIST: the MD5s published with the datasets (and used by torchvision).
# The MNIST test files also list the SHA-256 of the ossci-mirror copies kept in
# ../shared/data/mnist/SHA256SUMS, whose gzip headers differ from the 1998 originals.
SOURCES = {
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "files": {
            "train-images-idx3-ubyte.gz": [("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873")],
            "train-labels-idx1-ubyte.gz": [("md5", "d53e105ee54ea40749a09fcbcd1e9432")],
            "t10k-images-idx3-ubyte.gz": [
                ("md5", "9fb629c4189551a2d022fa330f9573f3"),
                ("sha256", "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b")],
            "t10k-labels-idx1-ubyte.gz": [
                ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
                ("sha256", "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c")],
        },
    },
    "fashion-mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "files": {
            "train-images-idx3-ubyte.gz": [("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d")],
            "train-labels-idx1-ubyte.gz": [("md5", "25c81989df183df01b3e8a0aad5dffbe")],
            "t10k-images-idx3-ubyte.gz": [("md5", "bef4ecab320f06d8554ea6380940ec79")],
            "t10k-labels-idx1-ubyte.gz": [("md5", "bb300cfdad3c16e7a12a480ee83cd310")],
        },
    },
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/",
        "files": {
            "cifar-10-python.tar.gz": [("md5", "c58f30108f718f92721af3b95e74349a")],
        },
    },
}

_CHUNK = 1 << 20


def default_cache_dir(name: str) -> Path:
    """Where ``download=True`` puts dataset ``name``: ``$MINICNN_DATA/<name>`` or ``~/.minicnn/data/<name>``."""
    root = os.environ.get("MINICNN_DATA")
    return (Path(root) if root else Path.home() / ".minicnn" / "data") / name


def _digest_ok(hashers: dict, accepted) -> bool:
    return any(hashers[algo].hexdigest() == digest.lower() for algo, digest in accepted)


def _hashers_for(accepted) -> dict:
    return {algo: hashlib.new(algo) for algo, _ in accepted}


def _file_matches(path: Path, accepted) -> bool:
    hashers = _hashers_for(accepted)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            for h in hashers.values():
                h.update(chunk)
    return _digest_ok(hashers, accepted)


def download_file(url: str, dest, accepted, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest``, verified against ``accepted`` ``[(algorithm, hexdigest), ...]``.

    Raises ValueError on a checksum mismatch or a short body and OSError on a
    network failure; in every failure case nothing is left at ``dest`` or beside it.
    """
    dest = Path(dest)
    if not accepted:
        raise ValueError(f"download_file refuses {url}: no checksum given to verify it against")
    dest.parent.mkdir(parents=True, exist_ok=True)
    hashers = _hashers_for(accepted)
    with atomic_write(dest, suffix=".part") as part:
        with open(part, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            received = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                received += len(chunk)
                for h in hashers.values():
                    h.update(chunk)
        if declared is not None and received != int(declared):
            raise ValueError(f"download of {url} was cut short: expected {declared} bytes, "
                             f"received {received}; nothing was saved")
        if not _digest_ok(hashers, accepted):
            found = ", ".join(f"{algo} {h.hexdigest()}" for algo, h in hashers.items())
            wanted = " or ".join(f"{algo} {digest}" for algo, digest in accepted)
            raise ValueError(f"checksum mismatch for {url}: expected {wanted}, got {found}; "
                             "the file was discarded (a bad mirror or a corrupted transfer)")
    return dest


def extract_tar(archive, dest) -> None:
    """Unpack ``archive`` into ``dest``, refusing members that would land outside it or are special files."""
    dest = Path(dest)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            try:
                tar.extractall(dest, filter="data")
            except tarfile.FilterError as exc:
                raise ValueError(f"refusing to extract from {archive}: {exc}") from exc
            return
        root = dest.resolve()
        for member in tar.getmembers():  # the same check by hand on Pythons without filters
            target = (dest / member.name).resolve()
            if not (member.isfile() or member.isdir()) or root not in (target, *target.parents):
                raise ValueError(f"refusing to extract {member.name!r} from {archive}: "
                                 "not a plain file inside the destination")
        tar.extractall(dest)


def download_dataset(name: str, root=None, files=None, mirror: str | None = None,
             checksums: dict | None = None, timeout: float = 30.0) -> Path:
    """Download dataset ``name`` (a key of :data:`SOURCES`) into ``root``; return ``root``.

    Parameters
    ----------
    root : folder to save into (default :func:`default_cache_dir`).
    files : the file names to fetch (default: all of the dataset's files). Files
        already present with a matching checksum are not fetched again.
    mirror : base URL replacing the official one (default ``$MINICNN_MIRROR``, then the official URL).
    checksums : ``{file name: [(algorithm, hexdigest), ...]}`` replacing the published table.
    """
    if name not in SOURCES:
        raise ValueError(f"download_dataset expected a dataset name in {sorted(SOURCES)}, got {name!r}")
    source = SOURCES[name]
    table = source["files"] if checksums is None else checksums
    base = mirror or os.environ.get("MINICNN_MIRROR") or source["url"]
    root = Path(root) if root is not None else default_cache_dir(name)
    for filename in (files if files is not None else list(table)):
        if filename not in table:
            raise ValueError(f"download_dataset has no checksum for {filename!r} of {name!r}; "
                             f"known files: {sorted(table)}")
        dest = root / filename
        if dest.exists() and _file_matches(dest, table[filename]):
            continue
        download_file(base.rstrip("/") + "/" + filename, dest, table[filename], timeout=timeout)
    return root


def extract_cifar10(archive: Path, root: Path) -> Path:
    """Unpack ``cifar-10-python.tar.gz`` so ``root/cifar-10-batches-py`` appears whole or not at all."""
    final = root / "cifar-10-batches-py"
    staging = Path(tempfile.mkdtemp(prefix=".cifar-extract-", dir=root))
    try:
        extract_tar(archive, staging)
        unpacked = staging / "cifar-10-batches-py"
        if not unpacked.is_dir():
            raise ValueError(f"{archive} holds no cifar-10-batches-py folder")
        if final.exists():
            shutil.rmtree(final)
        os.replace(unpacked, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
