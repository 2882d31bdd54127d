"""minicnn.threads: OpenBLAS's idle workers stop spinning soon after a GEMM once minicnn is imported.

Each test runs a fresh interpreter, because the setting is made once, at ``import minicnn``.
"""
import ctypes.util
import importlib
import json
import os
import subprocess
import sys

import pytest
import threadpoolctl

# In the child: CPU time the process burns while its main thread sleeps right after a
# two-thread GEMM is the time OpenBLAS's idle worker spends spinning.
SCRIPT = r"""
import json, os, sys, time
import numpy as np

def spin_seconds():
    a = np.ones((512, 512), np.float32)
    a @ a
    start = time.process_time()
    time.sleep(0.3)
    return time.process_time() - start

before = [spin_seconds() for _ in range(3)]
import minicnn
after = [spin_seconds() for _ in range(3)]
rng = np.random.default_rng(0)
a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 400))
error = float(np.abs(a @ b - np.einsum("ij,jk->ik", a, b)).max())
print(json.dumps({"before": before, "after": after, "error": error,
                  "setting": minicnn.threads.describe()["openblas_thread_timeout"]}))
"""


def _pthreads_openblas_with_two_threads():
    importlib.import_module("numpy")  # loads its BLAS, so threadpoolctl sees it
    return any(info["internal_api"] == "openblas" and info.get("threading_layer") == "pthreads"
               and info["num_threads"] >= 2 for info in threadpoolctl.threadpool_info())


def _run(env_update):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "MINICNN_THREADS")}
    env.update(env_update)
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


needs_openblas = pytest.mark.skipif(
    not _pthreads_openblas_with_two_threads() or len(os.sched_getaffinity(0)) < 2,
    reason="needs NumPy on a pthreads OpenBLAS with at least two threads and two cores")


@needs_openblas
def test_import_shortens_the_spin_of_an_already_loaded_openblas():
    got = _run({"OMP_NUM_THREADS": "2"})
    # Before: the worker spins ~0.1 s (2**28 cycles). After: ~0.4 ms, then sleeps.
    assert max(got["before"]) > 0.03, got
    assert min(got["after"]) < 0.01, got
    assert got["setting"] == "20"
    assert got["error"] < 1e-10  # the restarted workers still multiply correctly


@needs_openblas
def test_an_exported_openblas_thread_timeout_is_left_alone():
    got = _run({"OMP_NUM_THREADS": "2", "OPENBLAS_THREAD_TIMEOUT": "28"})
    assert got["setting"] == "28"
    assert min(got["after"]) > 0.03, got  # OpenBLAS's own spin, untouched


def test_shorten_does_nothing_when_the_user_chose(monkeypatch):
    from minicnn import threads
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "25")
    assert threads._shorten_openblas_spin() is False
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "25"


def test_shorten_leaves_no_setting_behind_when_there_is_no_openblas(monkeypatch):
    from minicnn import threads
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    monkeypatch.setattr(threads.threadpoolctl, "threadpool_info",
                        lambda: [{"internal_api": "mkl", "user_api": "blas", "filepath": "libmkl_rt.so"}])
    assert threads._shorten_openblas_spin() is False
    assert "OPENBLAS_THREAD_TIMEOUT" not in os.environ


def test_shorten_leaves_no_setting_behind_when_the_functions_are_missing(monkeypatch):
    # A pthreads OpenBLAS that does not export openblas_read_env & co: libm stands in for it.
    from minicnn import threads
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    monkeypatch.setattr(threads.threadpoolctl, "threadpool_info", lambda: [
        {"internal_api": "openblas", "threading_layer": "pthreads", "user_api": "blas",
         "filepath": ctypes.util.find_library("m") or "libm.so.6"}])
    assert threads._shorten_openblas_spin() is False
    assert "OPENBLAS_THREAD_TIMEOUT" not in os.environ


LAYER_SCRIPT = r"""
import json, os, sys
if sys.argv[1] == "torch":
    import torch
import numpy as np
import minicnn
from minicnn.kernels import cpu
cpu.maxpool_forward(np.ones((64, 64, 32, 32), np.float32), (2, 2), (2, 2), (0, 0, 0, 0))  # starts Numba's pool
print(json.dumps(minicnn.threads.describe()))
"""


@pytest.mark.parametrize("first", ["torch", "minicnn"])
def test_numba_runs_on_openmp_whoever_was_imported_first(first):
    if first == "torch":
        pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", LAYER_SCRIPT, first], env=env, capture_output=True,
                            text=True, timeout=300, check=True)
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["numba_threading_layer"] == "omp"
    # minicnn asks for sleeping workers only where it is still in time to: before any libgomp loaded
    assert got["omp_wait_policy"] == (None if first == "torch" else "PASSIVE")
