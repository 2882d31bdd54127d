"""Timing, the sgemm ceiling and peak memory: the measuring instruments.

Peak memory
-----------
Neither framework can be asked the same question through its own tools
(tracemalloc sees NumPy's buffers but not torch's; torch has no CPU peak
counter), so both are measured the same way, from outside: the process's
resident-set high-water mark. For that phase glibc is told (``mallopt``) to
serve every allocation of 64 KiB or more with its own ``mmap`` and to give it
back on ``free`` (``malloc_trim`` first returns what the timing phase left in
the heap), so resident memory follows live arrays; the high-water mark
is reset (``/proc/self/clear_refs``), one forward+backward runs, and the peak
minus the resident size before it is the memory the step needed beyond its
inputs and parameters (minicnn's reusable scratch buffers are released first, so they
count). Only pages actually touched count, for both. This runs
after all timings, because it makes every large allocation fault its pages in.
Linux only; elsewhere the column reads ``n/a``.
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
from typing import NamedTuple

import numpy as np

__all__ = ["time_blocks", "Timings", "sgemm_ceiling", "sgemm_call", "peak_memory", "memory_supported",
           "SETTLE_SECONDS"]

SETTLE_SECONDS = 0.3
"""Pause before each timed block: longer than OpenBLAS's default spin after its last GEMM."""


class Timings(NamedTuple):
    medians: tuple    # milliseconds, one per callable: the median of all its timed calls
    by_round: tuple   # per round, the median of each callable's calls in that round


def time_blocks(fns, warmup: int = 3, repeats: int = 15, rounds: int = 3,
                settle: float = SETTLE_SECONDS) -> Timings:
    """Medians in milliseconds of each callable in ``fns``, timed in interleaved blocks,
    overall and round by round.

    Each of ``rounds`` rounds, for each callable in turn, waits ``settle`` seconds, warms
    up and times it back to back. Back-to-back calls are how a framework runs in training:
    one framework at a time, its own thread pools warm. The pause before each block lets
    the other framework's idle workers stop spinning first: OpenBLAS's spin for up to
    ~0.1 s after a GEMM (``OPENBLAS_THREAD_TIMEOUT``), torch's OpenMP workers for a while
    too, and on 2 cores a spinning pool slows whoever runs next (torch's L2 measured
    2.8-3.9 ms after a pause, 6.6-8.8 ms right after minicnn's block; see docs/benchmarks.md).
    (Strict alternation, call by call, charged each framework for the other's spinning
    threads on every call.) Rounds spread slow drifts in machine load over all of them;
    how far the rounds disagree is how far the machine moved while the case ran.
    """
    times = [[] for _ in fns]
    by_round = []
    per_round = max(1, -(-repeats // rounds))  # at least ``repeats`` calls in all
    # Short calls get more repeats (blocks of about 0.15 s, at most 50 calls): on a shared
    # 2-core VM a 10 ms case moves by 10-30 % between blocks of 5, less between blocks of 15.
    per_round = max(per_round, min(50, int(0.15 / max(max(_seconds(fn) for fn in fns), 1e-4))))
    for _ in range(rounds):
        for fn, fn_times in zip(fns, times):
            time.sleep(settle)
            for _ in range(warmup):
                fn()
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                fn_times.append(time.perf_counter() - start)
        by_round.append(tuple(1e3 * statistics.median(fn_times[-per_round:]) for fn_times in times))
    return Timings(tuple(1e3 * statistics.median(fn_times) for fn_times in times), tuple(by_round))


def sgemm_ceiling(size: int = 2048, repeats: int = 7) -> float:
    """GFLOP/s of NumPy's float32 matmul (OpenBLAS) on ``size x size`` matrices: the best case."""
    call, gflop = sgemm_call(size)
    call()
    best = min(_seconds(call) for _ in range(repeats))
    return gflop / best


def sgemm_call(size: int = 2048):
    """``(fn, gflop)``: a zero-argument ``size x size`` float32 matmul (the ceiling's) and its GFLOP.

    Timed alongside a case (``time_blocks``), its median says how fast BLAS ran while the case
    did: on a shared host the best reading (``sgemm_ceiling``) and a busy minute differ by up
    to 1.5x."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, size, size), dtype=np.float32)
    out = np.empty_like(a)
    return (lambda: np.matmul(a, b, out=out)), 2 * size**3 / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------- peak memory (RSS high-water mark)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_configured = False
_libc = None


def memory_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _configure_malloc() -> None:
    global _malloc_configured, _libc
    if not _malloc_configured:
        _libc = ctypes.CDLL("libc.so.6")
        _libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        _libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024)
        _malloc_configured = True


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(fn, repeats: int = 3) -> float | None:
    """MiB the process's resident set grew to above its level before ``fn()`` (smallest of repeats).

    ``fn.release()``, if ``fn`` has it, runs before each measured call: it drops what the
    measured code keeps between calls for reuse (minicnn's im2col columns), so it counts."""
    if not memory_supported():
        return None
    _configure_malloc()
    fn()  # first call after mallopt: lets any cached state settle
    from minicnn.backend import release_scratch

    peaks = []
    for _ in range(repeats):
        release_scratch()  # minicnn's reusable scratch buffers count as memory the call needs
        getattr(fn, "release", lambda: None)()  # ... and so do buffers a layer keeps between calls
        gc.collect()
        _libc.malloc_trim(0)  # free heap memory left over from the timing phase goes back to the OS
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current VmRSS
        before = _status_bytes("VmRSS")
        fn()
        peaks.append(_status_bytes("VmHWM") - before)
    return max(0, min(peaks)) / 2**20
