"""Array backends: NumPy on the CPU, CuPy on a CUDA GPU.

This is the only module in minicnn that imports CuPy or knows which backend is
active. Layers ask for the array module of their input with one line,

    xp = get_array_module(x)

and then write NumPy-style code against ``xp``; CuPy mirrors NumPy's API, so
the same line of maths runs on either device.

Parameters are created with NumPy (so ``minicnn.seed`` gives the same weights
on any machine) and moved with :func:`to_device` to the active backend.
"""
from __future__ import annotations

import math
import os
import threading

import numpy as np

__all__ = [
    "BackendUnavailableError",
    "available",
    "set_backend",
    "get_backend",
    "get_array_module",
    "backend_name",
    "to_device",
    "to_numpy",
    "is_cupy_array",
    "require_cupy",
    "check_same_device",
    "set_workspace_limit",
    "get_workspace_limit",
    "scratch",
    "release_scratch",
]

_BACKENDS = ("numpy", "cupy")
_active = "numpy"
_cupy = None          # the cupy module once imported and a GPU was found
_cupy_error = None    # why CuPy is unavailable, once we have looked


# Upper bound on scratch memory (im2col columns and the like) a kernel call may hold.
# Layers split large batches into chunks to stay under it, so memory does not grow
# with N*H*W*C*k^2 (the failure mode of many im2col implementations).
_workspace_bytes = int(os.environ.get("MINICNN_WORKSPACE_MB", "256")) * 2**20


def set_workspace_limit(megabytes: float) -> None:
    """Cap the scratch memory of one layer call (default 256 MiB, or ``$MINICNN_WORKSPACE_MB``)."""
    global _workspace_bytes
    if megabytes <= 0:
        raise ValueError(f"set_workspace_limit expected a positive size in MiB, got {megabytes}")
    _workspace_bytes = int(megabytes * 2**20)


def get_workspace_limit() -> int:
    """The scratch-memory budget in bytes."""
    return _workspace_bytes


# Reusable buffers for temporaries that die inside one layer call (im2col columns, GEMM
# outputs, Winograd's transformed tiles). Allocating them afresh each call costs more than
# one would think: glibc hands large blocks back to the kernel when they are freed, so the
# next call touches new pages, and a page fault on the benchmark VM costs ~4 us (2,400 faults,
# ~9 ms, in one forward + backward of a 32-channel VGG layer). One buffer per named slot and
# thread, grown on demand, never above the workspace limit.
_scratch = threading.local()


def scratch(slot: str, shape, dtype, like=None):
    """An array of ``shape`` and ``dtype`` in the reusable buffer named ``slot``.

    Its contents are garbage, and the next ``scratch(slot, ...)`` call on this thread hands
    out the same memory: only for temporaries that are dead by then, and never returned to
    a caller outside the kernel or layer that asked. Arrays larger than the workspace limit
    are allocated normally, and so is everything on the GPU (``like`` a CuPy array): CuPy's
    memory pool already reuses device memory.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if like is not None and is_cupy_array(like):
        return get_array_module(like).empty(shape, dtype=dtype)
    if nbytes > _workspace_bytes:
        return np.empty(shape, dtype=dtype)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = buffers[slot] = np.empty(max(nbytes, 64), dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def release_scratch() -> None:
    """Free this thread's scratch buffers (they are re-created, empty, when next needed)."""
    _scratch.__dict__.pop("buffers", None)


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for that this machine cannot provide."""


def _load_cupy():
    """Import CuPy and check a GPU is visible; remember the answer either way."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy
    except ImportError as exc:  # CuPy not installed
        _cupy_error = (
            "CuPy is not installed, so the 'cupy' backend is unavailable "
            f"({exc}). Install it with `pip install minicnn[gpu]` "
            "(or `pip install cupy-cuda12x` matching your CUDA version)."
        )
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # driver missing, no device, CUDA error
        _cupy_error = (
            f"CuPy is installed but no CUDA GPU is usable ({type(exc).__name__}: {exc}). "
            "Check `nvidia-smi` and that the CUDA driver matches your cupy-cudaXXx package."
        )
        return None
    if count < 1:
        _cupy_error = "CuPy is installed but no CUDA GPU was found (device count is 0)."
        return None
    _cupy = cupy
    return _cupy


def require_cupy():
    """The ``cupy`` module, or :class:`BackendUnavailableError` saying what is missing."""
    cupy = _load_cupy()
    if cupy is None:
        raise BackendUnavailableError(_cupy_error)
    return cupy


def available() -> list[str]:
    """The backends this machine can run: always ``'numpy'``, plus ``'cupy'`` with a GPU."""
    names = ["numpy"]
    if _load_cupy() is not None:
        names.append("cupy")
    return names


def set_backend(name: str) -> None:
    """Choose where new parameters live: ``'numpy'`` (CPU) or ``'cupy'`` (GPU).

    Raises :class:`BackendUnavailableError`, saying what is missing, when
    ``'cupy'`` is asked for without CuPy or without a GPU.
    """
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"set_backend expected one of {_BACKENDS}, got {name!r}")
    if name == "cupy" and _load_cupy() is None:
        raise BackendUnavailableError(_cupy_error)
    _active = name


def get_backend() -> str:
    """The name of the active backend, ``'numpy'`` or ``'cupy'``."""
    return _active


def get_array_module(x=None):
    """The array module (``numpy`` or ``cupy``) that ``x`` belongs to.

    With no argument, the module of the active backend.
    """
    if x is None:
        return _cupy if _active == "cupy" else np
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy
    return np


def is_cupy_array(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def backend_name(x) -> str:
    """``'cupy'`` for a CuPy array, ``'numpy'`` otherwise."""
    return "cupy" if is_cupy_array(x) else "numpy"


def to_device(x, name: str | None = None):
    """Move an array to backend ``name`` (default: the active one). No copy if already there."""
    name = name or _active
    if name == "numpy":
        return to_numpy(x)
    if name == "cupy":
        return require_cupy().asarray(x)
    raise ValueError(f"to_device expected one of {_BACKENDS}, got {name!r}")


def to_numpy(x):
    """A NumPy array from a NumPy or CuPy array (or anything array-like)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def check_same_device(owner: str, x, param) -> None:
    """Raise a clear TypeError when input and parameters live on different devices.

    CuPy's own message for this mistake ("Unsupported type <class 'numpy.ndarray'>")
    does not say what to do; this one does.
    """
    if backend_name(x) != backend_name(param):
        raise TypeError(
            f"{owner} has its parameters on '{backend_name(param)}' but received a "
            f"{backend_name(x)} array; move the model with model.to('{backend_name(x)}') "
            f"or the data with minicnn.backend.to_device(x, '{backend_name(param)}')"
        )


def _init_from_environment() -> None:
    """``MINICNN_BACKEND=cupy`` selects the GPU at import, as a convenience for scripts."""
    name = os.environ.get("MINICNN_BACKEND")
    if name:
        set_backend(name)


_init_from_environment()
