"""The results table (text and JSON) and the bar chart of ratios."""
from __future__ import annotations

import json

__all__ = ["verdicts", "format_table", "to_json", "plot_ratios"]


def verdicts(row: dict, ceiling: float) -> list[str]:
    """PASS/MISS for each target a row has."""
    out = []
    if row.get("max_ratio") is not None and row.get("ratio") is not None:
        ok = row["ratio"] <= row["max_ratio"]
        out.append(f"{'PASS' if ok else 'MISS'} ratio<={row['max_ratio']:g}")
    if row.get("min_ceiling") is not None and row.get("gflops") is not None:
        ok = row["gflops"] >= row["min_ceiling"] * ceiling
        out.append(f"{'PASS' if ok else 'MISS'} >={100 * row['min_ceiling']:.0f}% sgemm")
        if row.get("sgemm_alongside_gflops"):  # a diagnostic, not the target: see sgemm_call
            out[-1] += (f" ({100 * row['gflops'] / row['sgemm_alongside_gflops']:.0f}% of the "
                        f"{row['sgemm_alongside_gflops']:.0f} GFLOP/s sgemm timed alongside)")
    return out


def _spread(values) -> str:
    """``"0.95-1.30"``: the lowest and highest of the per-round ratios."""
    return "n/a" if not values else f"{min(values):.2f}-{max(values):.2f}"


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def format_table(rows: list[dict], meta: dict) -> str:
    ceiling = meta["sgemm_gflops"]
    header = (f"{'case':<46} {'minicnn ms':>10} {'torch ms':>9} {'ratio':>6} {'by round':>9} {'GFLOP/s':>8} "
              f"{'%sgemm':>6} {'mem MiB':>8} {'torch MiB':>9}  targets")
    lines = [f"threads={meta['threads']} numba layer={meta['numba_threading_layer']} "
             f"sgemm ceiling={ceiling:.0f} GFLOP/s  (medians of >= {meta['repeats']} calls in interleaved blocks, "
             f"{meta.get('settle_seconds', 0):g} s pause before each)",
             header, "-" * len(header)]
    for row in rows:
        if row.get("error"):
            lines.append(f"{row['name']:<46} skipped: {row['error']}")
            continue
        pct = None if row["gflops"] is None else 100 * row["gflops"] / ceiling
        lines.append(f"{row['name']:<46} {row['minicnn_ms']:>10.2f} {row['torch_ms']:>9.2f} "
                     f"{row['ratio']:>6.2f} {_spread(row.get('ratio_by_round')):>9} "
                     f"{_fmt(row['gflops'], '8.1f'):>8} {_fmt(pct, '5.0f'):>6} "
                     f"{_fmt(row['minicnn_mib'], '8.1f'):>8} {_fmt(row['torch_mib'], '9.1f'):>9}  "
                     + ", ".join(verdicts(row, ceiling)))
    return "\n".join(lines)


def to_json(rows: list[dict], meta: dict) -> str:
    for row in rows:
        if not row.get("error"):
            row["verdicts"] = verdicts(row, meta["sgemm_gflops"])
    return json.dumps({"meta": meta, "results": rows}, indent=2)


def plot_ratios(rows: list[dict], path) -> None:
    """A horizontal bar chart of minicnn/torch time, with each case's target marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r.get("error")]
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(rows) + 1.2), dpi=90)
    names = [r["name"] for r in rows][::-1]
    ratios = [r["ratio"] for r in rows][::-1]
    targets = [r.get("max_ratio") for r in rows][::-1]
    colors = ["tab:blue" if t is None else "tab:green" if v <= t else "tab:red"
              for v, t in zip(ratios, targets)]
    ax.barh(range(len(rows)), ratios, color=colors)
    spreads = [r.get("ratio_by_round") or [r["ratio"]] for r in rows][::-1]  # per-round range
    ax.errorbar(ratios, range(len(rows)), fmt="none", ecolor="dimgrey", capsize=2, linewidth=1,
                xerr=[[max(0.0, v - min(s)) for v, s in zip(ratios, spreads)],
                      [max(0.0, max(s) - v) for v, s in zip(ratios, spreads)]])
    for i, target in enumerate(targets):
        if target is not None:
            ax.plot([target, target], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.set_xlabel("minicnn time / PyTorch time (lower is better)\n"
                  "black tick: target; green met, red missed, blue no target; whiskers: per-round range",
                  fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
