"""Save a model to one ``.npz`` file and load it back without the code that built it.

The file is an ordinary NumPy archive holding

* ``__minicnn__`` — a JSON record (as UTF-8 bytes): the format name and version,
  the architecture as nested ``{"class": name, "config": constructor args}``
  entries (from ``layer.get_config()``; nested layers — a ``Sequential``'s list,
  a ``Residual``'s block and shortcut, a ``Concatenate``'s branches — are
  recorded the same way), and the input shape the model was built for;
* ``state:<name>`` — one array per entry of ``model.state_dict()`` (weights and
  buffers, under PyTorch-style names such as ``state:0.weight``).

Loading looks classes up *by name* in ``minicnn.layers`` and ``minicnn.models``
only, and reads with ``allow_pickle=False``: a model file can describe layers but
never run code. JSON has no tuples, so tuples are tagged (``{"__tuple__": [...]}``)
and restored, as are dtypes.

Saving writes a temporary file next to the target and renames it into place
(``os.replace`` is atomic), so a crash mid-save leaves any previous file intact.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .fileio import atomic_write

__all__ = ["save", "load", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "minicnn"
FORMAT_VERSION = 1
_RECORD_KEY = "__minicnn__"
_STATE_PREFIX = "state:"


# ---------------------------------------------------------------------- save
def save(model, path) -> str:
    """Write ``model`` (architecture, weights, buffers, input shape) to ``path``; returns the path.

    ``.npz`` is appended when ``path`` has no suffix of that name.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    record = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "minicnn_version": _version(),
        "model": _encode_layer(model),
        "input_shape": list(model.input_shape) if model.built and model.input_shape else None,
    }
    arrays = {_RECORD_KEY: np.frombuffer(json.dumps(record).encode("utf-8"), dtype=np.uint8)}
    arrays.update({_STATE_PREFIX + name: value for name, value in model.state_dict().items()})

    with atomic_write(path) as temporary:
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
    return path


def _encode_layer(layer) -> dict:
    cls = type(layer)
    if _lookup_class(cls.__name__) is not cls:
        raise ValueError(
            f"cannot save layer class {cls.__module__}.{cls.__name__}: minicnn.load rebuilds layers "
            f"by name from minicnn.layers and minicnn.models only, so custom layer classes cannot "
            f"be saved (save the weights with np.savez(path, **model.state_dict()) instead)")
    config = layer.get_config()
    # The current dtype (after any astype()), recorded only where it is not the default
    # float32, so a container does not start imposing a dtype it was never given.
    if "dtype" in config or (np.dtype(layer.dtype) != np.float32 and _accepts(cls, "dtype")):
        config["dtype"] = np.dtype(layer.dtype).name
    return {"class": cls.__name__,
            "config": {key: _encode_value(value, f"{cls.__name__}.{key}") for key, value in config.items()}}


def _encode_value(value, where: str):
    from .layers.base import Layer

    if isinstance(value, Layer):
        return {"__layer__": _encode_layer(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_value(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode_value(v, where) for v in value]
    if isinstance(value, dict):
        return {"__dict__": {str(k): _encode_value(v, where) for k, v in value.items()}}
    if isinstance(value, (np.dtype, type)) and _is_dtype(value):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot save {where}={value!r}: only numbers, strings, tuples, lists, "
                     f"dtypes and layers can be written to a model file")


def _is_dtype(value) -> bool:
    try:
        np.dtype(value)
        return True
    except TypeError:
        return False


def _accepts(cls, argument: str) -> bool:
    import inspect

    return argument in inspect.signature(cls.__init__).parameters


def _version() -> str:
    from . import __version__

    return __version__


# ---------------------------------------------------------------------- load
def load(path):
    """Rebuild a model saved with :func:`save` (or ``model.save``).

    Raises FileNotFoundError for a missing file and ValueError, saying what is
    wrong, for a file that is corrupt, truncated, or not a minicnn model.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"minicnn.load: no such file {path!r}")
    record, state = _read_archive(path)
    try:
        model = _decode_layer(record["model"])
        if record.get("input_shape") is not None:
            model.build(tuple(record["input_shape"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: the architecture record is invalid or names layers this "
                         f"minicnn cannot build ({type(exc).__name__}: {exc})") from exc
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{path}: the weights do not fit the architecture: {exc}") from exc
    return model


def _read_archive(path) -> tuple[dict, dict]:
    """The JSON record and the state arrays, or a ValueError saying why they cannot be read."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a minicnn model file: it is not a readable .npz archive "
                         f"(corrupt, truncated or another format; {type(exc).__name__}: {exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not a minicnn model file: it holds a single .npy array, "
                         f"not a .npz archive")
    with archive:
        if _RECORD_KEY not in archive.files:
            raise ValueError(f"{path} is a .npz archive but not a minicnn model file: it has no "
                             f"'{_RECORD_KEY}' record (keys found: {archive.files[:10]})")
        try:
            raw = archive[_RECORD_KEY]
            state = {key[len(_STATE_PREFIX):]: archive[key] for key in archive.files
                     if key.startswith(_STATE_PREFIX)}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"{path} is a damaged minicnn model file: an array could not be read "
                             f"(truncated or corrupt; {type(exc).__name__}: {exc})") from exc
    try:
        record = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is a damaged minicnn model file: its architecture record is not "
                         f"valid JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a minicnn model file: its record does not say "
                         f"format '{FORMAT_NAME}'")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} was written in minicnn model format version {version!r}; this "
                         f"minicnn reads versions up to {FORMAT_VERSION} (upgrade minicnn)")
    return record, state


def _decode_layer(spec: dict):
    name = spec["class"]
    cls = _lookup_class(name)
    if cls is None:
        raise ValueError(f"unknown layer class {name!r} (not found in minicnn.layers or minicnn.models)")
    config = {key: _decode_value(value) for key, value in spec["config"].items()}
    return cls(**config)


def _decode_value(value):
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, dict):
        if "__layer__" in value:
            return _decode_layer(value["__layer__"])
        if "__tuple__" in value:
            return tuple(_decode_value(v) for v in value["__tuple__"])
        if "__dtype__" in value:
            return np.dtype(value["__dtype__"])
        if "__dict__" in value:
            return {k: _decode_value(v) for k, v in value["__dict__"].items()}
        raise ValueError(f"unrecognised entry {value!r} in the architecture record")
    return value


def _lookup_class(name: str):
    """A Layer subclass named ``name`` in minicnn.layers or minicnn.models, else None."""
    from . import layers, models
    from .layers.base import Layer

    for module in (layers, models):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, Layer):
            return cls
    return None
