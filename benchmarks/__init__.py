"""minicnn against PyTorch on the CPU: ``python -m benchmarks`` (or ``make bench``).

Both frameworks run in the same process, on the same shapes, with the same
number of threads (``torch.set_num_threads(minicnn.threads.get_num_threads())``).
Each case is timed in interleaved blocks (minicnn's calls back to back, then
torch's, seven rounds), each block after a 0.3 s pause (so the other framework's
idle workers have stopped spinning) and a warm-up; the table reports medians.
See ``docs/benchmarks.md`` for the method and the figures measured.

Modules: ``harness`` (timing, the sgemm ceiling, peak memory), ``cases`` (what
is measured: layers and training steps), ``report`` (table, JSON, plot).
Benchmarks never run inside the test suite.
"""
__all__ = ["harness", "cases", "report"]
