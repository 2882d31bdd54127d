"""``python -m benchmarks [--quick] [--json] [--plot PATH] [--repeats N] [--rounds N]``."""
from __future__ import annotations

import argparse
import platform
import sys
import time

# torch first: it loads its OpenMP runtime with its default settings, as in any
# user's process; minicnn.threads then adapts (see minicnn/threads.py).
import torch

import minicnn
from minicnn import threads

from . import cases as case_list
from .harness import SETTLE_SECONDS, peak_memory, sgemm_call, sgemm_ceiling, time_blocks
from .report import format_table, plot_ratios, to_json


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fast subset (small layers, LeNet-5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", metavar="PATH", help="write a bar chart of the ratios (PNG)")
    parser.add_argument("--repeats", type=_positive, default=None,
                        help="timed repeats per case (default 15, quick 7)")
    parser.add_argument("--rounds", type=_positive, default=None,
                        help="interleaved rounds per case (default 7, quick 3): the repeats are spread over them")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory phase")
    parser.add_argument("--only", metavar="TEXT", action="append",
                        help="run only cases whose name contains TEXT (repeat for several)")
    return parser.parse_args(argv)


def _recording_best(fn, gflop):
    """``(fn', gflop)``: ``fn`` that also keeps its fastest call's GFLOP/s in ``fn'.best_gflops``."""
    def timed():
        start = time.perf_counter()
        fn()
        timed.best_gflops = max(timed.best_gflops, gflop / max(time.perf_counter() - start, 1e-9))
    timed.best_gflops = 0.0
    return timed, gflop


def main(argv=None) -> int:
    args = _parse(argv)
    repeats = args.repeats or (7 if args.quick else 15)
    # Seven rounds since the tenth session: on this shared host one round's ratio can be 0.8 and the
    # next 1.9 for the same code, and with three rounds one such block moved a case's median by
    # 20 % (L2: 1.09-1.36 in four runs with 3 rounds, 1.07-1.19 in eight with 7; docs/benchmarks.md).
    rounds = args.rounds or (3 if args.quick else 7)
    torch.set_num_threads(threads.get_num_threads())
    ceiling = sgemm_ceiling()
    info = threads.describe()
    meta = {"threads": threads.get_num_threads(), "numba_threading_layer": info["numba_threading_layer"],
            "blas_threads": info["blas_threads"], "torch_threads": torch.get_num_threads(),
            "sgemm_gflops": ceiling, "repeats": repeats, "rounds": rounds, "settle_seconds": SETTLE_SECONDS, "python": platform.python_version(),
            "numpy": __import__("numpy").__version__, "numba": __import__("numba").__version__,
            "torch": torch.__version__, "minicnn": minicnn.__version__, "machine": platform.processor()}
    selected = [c for c in case_list.all_cases(args.quick) if not args.only or any(text in c.name for text in args.only)]
    rows, pairs, sgemm_readings = [], [], []
    for case in selected:
        row = {"name": case.name, "max_ratio": case.max_ratio, "min_ceiling": case.min_ceiling}
        try:
            run_minicnn, run_torch = case.build()
            if case.min_ceiling is None:
                timings = time_blocks((run_minicnn, run_torch), repeats=repeats, rounds=rounds)
            else:  # also the ceiling's matmul, in the same rounds: how fast BLAS ran meanwhile
                run_sgemm, sgemm_gflop = _recording_best(*sgemm_call())
                timings = time_blocks((run_minicnn, run_torch, run_sgemm), repeats=repeats, rounds=rounds)
                row["sgemm_alongside_gflops"] = sgemm_gflop / (timings.medians[2] / 1e3)
                sgemm_readings.append(run_sgemm.best_gflops)
            minicnn_ms, torch_ms = timings.medians[:2]
            row["ratio_by_round"] = [ms[0] / ms[1] for ms in timings.by_round]
        except Exception as exc:  # a layer or model not written yet: report and carry on
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            pairs.append(None)
            print(f"{case.name}: skipped ({row['error']})", file=sys.stderr)
            continue
        row.update(minicnn_ms=minicnn_ms, torch_ms=torch_ms, ratio=minicnn_ms / torch_ms,
                   gflops=case.gflop / (minicnn_ms / 1e3) if case.gflop else None,
                   torch_gflops=case.gflop / (torch_ms / 1e3) if case.gflop else None,
                   minicnn_mib=None, torch_mib=None)
        rows.append(row)
        pairs.append((run_minicnn, run_torch))
        if not args.json:
            print(f"  {case.name}: {minicnn_ms:.2f} ms vs torch {torch_ms:.2f} ms",
                  file=sys.stderr, flush=True)
    # The ceiling is the best case by definition: measured again after the timings, and the
    # largest reading kept, the fastest call timed alongside a case included (a busy moment
    # at start-up once gave 98 GFLOP/s instead of ~185; a busy start and end once gave 148
    # while the calls in between reached 177).
    meta["sgemm_gflops"] = max(ceiling, sgemm_ceiling(), *sgemm_readings)
    if not args.no_memory:  # after all timings: this phase changes how malloc behaves
        for row, pair in zip(rows, pairs):
            if pair is not None:
                row["minicnn_mib"], row["torch_mib"] = peak_memory(pair[0]), peak_memory(pair[1])
    print(to_json(rows, meta) if args.json else format_table(rows, meta))
    if args.plot:
        plot_ratios(rows, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
