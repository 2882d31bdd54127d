"""Backend selection and its errors, on any machine."""
import numpy as np
import pytest

from minicnn import backend


def test_numpy_backend_is_default_and_available():
    assert backend.get_backend() == "numpy"
    assert backend.available()[0] == "numpy"
    assert backend.get_array_module() is np


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="set_backend expected one of .*'tensorflow'"):
        backend.set_backend("tensorflow")


@pytest.mark.skipif("cupy" in backend.available(), reason="this machine has CuPy and a GPU")
def test_cupy_without_cupy_or_gpu_says_which_and_how_to_install():
    with pytest.raises(backend.BackendUnavailableError) as err:
        backend.set_backend("cupy")
    message = str(err.value)
    assert "CuPy is not installed" in message or "no CUDA GPU" in message
    assert "pip install" in message or "nvidia-smi" in message
    assert backend.get_backend() == "numpy"  # a failed switch changes nothing


def test_workspace_limit_is_validated_and_settable():
    old = backend.get_workspace_limit()
    try:
        backend.set_workspace_limit(1)
        assert backend.get_workspace_limit() == 2**20
        with pytest.raises(ValueError, match="positive"):
            backend.set_workspace_limit(0)
    finally:
        backend.set_workspace_limit(old / 2**20)


def test_scratch_reuses_one_buffer_per_slot_and_respects_the_workspace_limit():
    backend.release_scratch()
    a = backend.scratch("test.a", (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    b = backend.scratch("test.a", (2, 3), np.float64)  # smaller: the same memory
    assert np.shares_memory(a, b)
    assert not np.shares_memory(a, backend.scratch("test.b", (4, 5), np.float32))  # another slot
    c = backend.scratch("test.a", (100, 100), np.float32)  # larger: grows, then stays
    assert np.shares_memory(c, backend.scratch("test.a", (10,), np.float32))
    old = backend.get_workspace_limit()
    try:
        backend.set_workspace_limit(1)  # 1 MiB: a 2 MiB request gets its own memory
        big = backend.scratch("test.a", (2**19,), np.float32)
        assert not np.shares_memory(big, backend.scratch("test.a", (2**19,), np.float32))
    finally:
        backend.set_workspace_limit(old / 2**20)
        backend.release_scratch()


def test_cupy_installed_without_a_gpu_says_so(monkeypatch):
    """The other half of the error: CuPy imports, but the CUDA runtime finds no device."""
    import sys
    import types

    class NoDevice(RuntimeError):
        pass

    def no_device():
        raise NoDevice("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)  # forget the answer cached at import
    assert backend.available() == ["numpy"]
    with pytest.raises(backend.BackendUnavailableError, match="CuPy is installed but no CUDA GPU is usable"):
        backend.set_backend("cupy")
    with pytest.raises(backend.BackendUnavailableError, match="nvidia-smi"):
        backend.to_device(np.zeros(3), "cupy")
    assert backend.get_backend() == "numpy"
