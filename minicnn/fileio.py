"""Writing files without ever losing the previous one.

Every file minicnn writes (saved models, checkpoints, downloads, plots, GIFs)
goes through :func:`atomic_write`: the data is written to a temporary file in
the same directory, flushed to disk, and then moved over the target with
``os.replace``, which is atomic on POSIX and Windows. A reader sees the old file
or the whole new one; a crash, a full disk or Ctrl-C halfway leaves the old
file as it was and removes the temporary one.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``suffix`` ends the temporary name, for writers that pick the format from the
    file extension (matplotlib's ``savefig``, Pillow's GIF writer).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                         suffix=suffix)
    os.close(handle)
    try:
        yield temporary
        _flush_to_disk(temporary)
        umask = os.umask(0)  # mkstemp makes the file private; give it the usual permissions
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:  # Ctrl-C included: never leave a half-written file behind
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _flush_to_disk(path: str) -> None:
    """fsync the file's data, so a power cut after the rename cannot leave it empty."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:  # some filesystems (and Windows, on read-only handles) refuse: not fatal
        pass
    finally:
        os.close(handle)
