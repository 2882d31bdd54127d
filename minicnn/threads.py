"""Thread-pool hygiene: keep Numba's and OpenBLAS's threads from fighting.

A minicnn convolution alternates two thread pools: Numba's (``im2col``,
pooling, ``col2im``, in ``minicnn.kernels``) and OpenBLAS's (the GEMM behind
``W @ cols``). Both pools *spin* for a while after finishing a job, waiting for
the next one. On a machine with few cores the spinning pool steals the cores
the other pool is trying to work on, and a training step runs 3-10x slower
than the sum of its parts. This module is imported once by ``import minicnn``:

* Numba uses its OpenMP layer (``omp``) unless the user chose one with
  ``NUMBA_THREADING_LAYER``. If no OpenMP runtime that Numba would share is loaded yet,
  minicnn sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set a policy): idle workers
  sleep at once, and a kernel launch costs ~20 us.
* If such a runtime is already loaded (``import torch`` before ``import minicnn`` does
  that), Numba shares it with its policy: torch's workers spin ~5-8 ms after each
  kernel, and so do Numba's. That keeps launches at ~3-20 us (Numba's ``workqueue``
  layer, used here until the twelfth session, sleeps and paid ~150 us a launch on
  the 2-core benchmark VM, where waking an idle virtual CPU is slow), and the large
  GEMMs no longer need a core of their own: they run on Numba's threads too
  (``kernels.cpu.matmul``, ``kernels/batch_inner.py``, ``kernels/winograd.py``), one
  BLAS thread each. In two full benchmark runs against two with ``workqueue`` and
  NumPy's own GEMMs: VGG-mini's step 1.23-1.27x torch's time against 1.37-1.55, LeNet-5's
  0.53-0.55 against 0.71-0.83 (docs/benchmarks.md, twelfth session).

OpenBLAS's idle workers spin too, calling ``sched_yield``, for ``2**28`` CPU cycles
(~0.1 s) after each multi-threaded GEMM, and ``sched_yield`` hands a core back only in
part: a Numba kernel that runs on both cores right after a dense layer's GEMM shares one
of them with the spinner (LeNet-5's step: 12.7 against 9.3 ms). So, unless the user exported
``OPENBLAS_THREAD_TIMEOUT`` (export it to keep OpenBLAS's own setting: ``28`` is its
default), minicnn sets it to ``20`` (``2**20`` cycles, ~0.4 ms: GEMMs called back to back
still find the workers awake) and makes the already loaded OpenBLAS use it: NumPy loaded
it, and read its environment, before ``import minicnn`` could run. ``_shorten_openblas_spin``
calls OpenBLAS's ``openblas_read_env``, stops its workers with ``blas_thread_shutdown_``
(what OpenBLAS's own fork handler does) and starts them again with ``blas_thread_init``,
which reads the new timeout. Any other BLAS (MKL, Accelerate, an OpenMP build of OpenBLAS) is left
alone.

Waking sleeping workers has its price: a parallel Numba launch measured 80-110 us on the
2-core benchmark VM with either layer, so ``kernels/cpu.py`` runs calls that touch less than
``PARALLEL_MIN_BYTES`` (8 MiB) on the calling thread instead (every core is compiled in a
serial and a parallel version).

Thread count
------------
``MINICNN_THREADS`` (if set) sets both pools; otherwise ``OMP_NUM_THREADS``,
then the number of cores this process may run on, sets Numba's pool and
OpenBLAS keeps its own setting (it honours ``OPENBLAS_NUM_THREADS`` and
``OMP_NUM_THREADS`` itself). ``set_num_threads(n)`` changes both at run time.
Variables the user exported are never overwritten.
"""
from __future__ import annotations

import ctypes
import os
import re

import numba
import threadpoolctl

__all__ = ["set_num_threads", "get_num_threads", "describe"]

_blas_limiter = None   # keeps threadpoolctl's handle; the limit holds while it lives


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value.split(",")[0])  # OMP_NUM_THREADS may be a list per nesting level
    except ValueError:
        raise ValueError(f"minicnn.threads expected ${name} to be a positive integer, "
                         f"got {value!r}") from None
    if number < 1:
        raise ValueError(f"minicnn.threads expected ${name} to be a positive integer, got {value!r}")
    return number


def _shared_openmp_loaded() -> bool:
    """Is a ``libgomp.so`` (the one Numba's OpenMP layer would link to) already loaded?

    Vendored copies with a hashed name (scikit-learn's ``libgomp-<hash>.so``)
    are separate runtimes and do not count.
    """
    try:
        with open("/proc/self/maps") as maps:
            return re.search(r"/libgomp\.so", maps.read()) is not None
    except OSError:  # no /proc: ask threadpoolctl about any OpenMP runtime
        return any(info["user_api"] == "openmp" for info in threadpoolctl.threadpool_info())


def _choose_threading_layer() -> None:
    """Numba's OpenMP layer, idle workers sleeping if we can still say so, unless the user
    chose a layer or Numba already started."""
    if os.environ.get("NUMBA_THREADING_LAYER") or numba.np.ufunc.parallel._is_initialized:
        return
    user_wait_policy = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    if not _shared_openmp_loaded() and not user_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read by libgomp when Numba loads it below
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]


OPENBLAS_SPIN = 20
"""``OPENBLAS_THREAD_TIMEOUT`` set by minicnn: OpenBLAS's idle workers spin ``2**20`` cycles."""


def _shorten_openblas_spin() -> bool:
    """Make a loaded pthreads OpenBLAS spin ``2**OPENBLAS_SPIN`` cycles after a GEMM, not ``2**28``.

    Returns whether it did. Does nothing if the user exported ``OPENBLAS_THREAD_TIMEOUT``
    or the BLAS is not a pthreads OpenBLAS exporting the four functions used.
    """
    if os.environ.get("OPENBLAS_THREAD_TIMEOUT"):
        return False
    libraries = [info["filepath"] for info in threadpoolctl.threadpool_info()
                 if info["internal_api"] == "openblas" and info.get("threading_layer") == "pthreads"]
    if not libraries:
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(OPENBLAS_SPIN)
    done = False
    for path in libraries:
        try:
            library = ctypes.CDLL(path)
            read_env, timeout = library.openblas_read_env, library.openblas_thread_timeout
            shutdown, start = library.blas_thread_shutdown_, library.blas_thread_init
        except (OSError, AttributeError):  # an OpenBLAS that does not export them
            continue
        read_env()                 # OpenBLAS reads its variables again ...
        if timeout() == OPENBLAS_SPIN:
            shutdown()             # ... and its workers start again, with the new timeout
            start()
            done = True
    if not done:
        del os.environ["OPENBLAS_THREAD_TIMEOUT"]
    return done


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in Numba's kernels and in the BLAS behind the GEMMs."""
    global _blas_limiter
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads expected a positive integer, got {n!r}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _blas_limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int:
    """The number of threads minicnn's Numba kernels use."""
    return numba.get_num_threads()


def describe() -> dict:
    """What was chosen: Numba's layer and thread count, and each BLAS library's threads."""
    blas = {info["internal_api"]: info["num_threads"]
            for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"}
    return {"numba_threading_layer": numba.threading_layer(), "numba_threads": numba.get_num_threads(),
            "blas_threads": blas, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT")}


def _init_from_environment() -> None:
    _choose_threading_layer()
    _shorten_openblas_spin()
    requested = _env_int("MINICNN_THREADS")
    if requested is not None:
        set_num_threads(requested)
    else:
        count = _env_int("OMP_NUM_THREADS") or _available_cores()
        # Starts Numba's pool now, so the layer chosen above is the one used.
        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))


_init_from_environment()
