"""The benchmark suite runs and reports what it says (its figures live in docs/benchmarks.md).

Nothing here is timed against a target: targets live in the benchmark's own verdicts.
"""
import json

import pytest

from benchmarks import harness
from tests.helpers import require_torch


def test_time_blocks_times_both_and_gives_short_calls_more_repeats():
    calls = {"a": 0, "b": 0}

    def first():
        calls["a"] += 1

    def second():
        calls["b"] += 1

    a_ms, b_ms = harness.time_blocks((first, second), warmup=1, repeats=3, rounds=3, settle=0).medians
    assert a_ms >= 0 and b_ms >= 0
    # Calls of a few microseconds: each round times up to 50 of each, plus warm-up and a probe.
    assert calls["a"] == calls["b"] > 3 * 3


def test_a_quick_run_prints_json_with_ratios_and_verdicts(capsys):
    require_torch()
    from benchmarks.__main__ import main

    assert main(["--only", "maxpool", "--no-memory", "--repeats", "3", "--rounds", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["meta"]["threads"] >= 1 and report["meta"]["sgemm_gflops"] > 0
    (row,) = report["results"]
    assert row["name"].startswith("maxpool")
    assert row["minicnn_ms"] > 0 and row["torch_ms"] > 0
    assert row["ratio"] == pytest.approx(row["minicnn_ms"] / row["torch_ms"])
    assert row["verdicts"] and row["verdicts"][0].split()[0] in ("PASS", "MISS")
    assert len(row["ratio_by_round"]) == 3  # three rounds, each with its own ratio


def test_the_table_and_plot_show_the_per_round_range(tmp_path):
    from benchmarks.report import format_table, plot_ratios

    row = {"name": "L9 conv", "minicnn_ms": 2.0, "torch_ms": 2.5, "ratio": 0.8, "ratio_by_round": [0.75, 0.8, 1.3],
           "gflops": None, "minicnn_mib": None, "torch_mib": None, "max_ratio": 1.2}
    table = format_table([row], {"sgemm_gflops": 150.0, "threads": 2, "numba_threading_layer": "workqueue",
                                 "repeats": 15})
    assert "0.75-1.30" in table and "PASS ratio<=1.2" in table
    plot_ratios([row], tmp_path / "ratios.png")
    assert (tmp_path / "ratios.png").stat().st_size > 0


def test_time_blocks_times_each_callable_in_every_round():
    order = []
    fns = [lambda name=name: order.append(name) for name in "abc"]
    medians, by_round = harness.time_blocks(fns, warmup=0, repeats=2, rounds=2, settle=0)
    assert len(medians) == 3 and all(ms >= 0 for ms in medians)
    assert len(by_round) == 2 and all(len(r) == 3 for r in by_round)
    # after the probe call of each, blocks of one callable at a time, a, b, c, a, b, c
    blocks = [name for i, name in enumerate(order[3:]) if i == 0 or order[3 + i - 1] != name]
    assert blocks == list("abcabc")


def test_the_sgemm_timed_alongside_is_reported_but_the_target_stays_the_ceiling():
    from benchmarks.report import verdicts

    row = {"min_ceiling": 0.7, "gflops": 100.0, "sgemm_alongside_gflops": 125.0}
    (verdict,) = verdicts(row, ceiling=180.0)
    assert verdict.startswith("MISS >=70% sgemm") and "80% of the 125 GFLOP/s sgemm timed alongside" in verdict
    assert verdicts(dict(row, gflops=130.0), ceiling=180.0)[0].startswith("PASS")
    fn, gflop = harness.sgemm_call(64)
    assert fn().shape == (64, 64) and gflop == pytest.approx(2 * 64**3 / 1e9)


@pytest.mark.parametrize("option", ["--rounds", "--repeats"])
def test_rounds_and_repeats_must_be_positive(option, capsys):
    require_torch()  # benchmarks.__main__ imports torch first
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit):
        main(["--only", "maxpool", option, "0"])
    assert f"argument {option}: expected a positive integer, got '0'" in capsys.readouterr().err
