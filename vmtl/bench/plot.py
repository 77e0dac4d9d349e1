"""PNG of a concurrency sweep: throughput and p50/p99 latency against concurrency, one line per configuration."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from vmtl.bench.load import Measurement


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot_sweep(measurements: Sequence[Measurement], out: Path, title: str) -> Path:
    """Write the two-panel plot to ``out`` (PNG) and return it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(
            "the PNG plot needs matplotlib: pip install 'vmtl[bench]' (or pass --no-plot)"
        ) from exc

    series: dict[str, list[Measurement]] = defaultdict(list)
    for m in measurements:
        series[m.config].append(m)
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.8))
    for config, ms in series.items():
        ms = sorted(ms, key=lambda m: m.concurrency)
        xs = [m.concurrency for m in ms]
        (line,) = ax_t.plot(xs, [m.throughput for m in ms], marker="o", label=config)
        ax_l.plot(xs, [m.latency_us(50) / 1e3 for m in ms], marker="o", color=line.get_color(), label=config)
        ax_l.plot(xs, [m.latency_us(99) / 1e3 for m in ms], linestyle="--", color=line.get_color())
    concurrencies = sorted({m.concurrency for m in measurements})
    for ax in (ax_t, ax_l):
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.grid(True, alpha=0.3)
    ax_t.set_ylabel("inferences / second (clips)")
    ax_t.set_title("throughput")
    ax_l.set_ylabel("latency (ms): p50 solid, p99 dashed")
    ax_l.set_yscale("log")
    ax_l.set_title("latency")
    ax_t.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
