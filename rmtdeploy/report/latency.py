"""The benchmark stage's report: ``bench.json`` data rendered as Markdown and as a picture.

Every number shown comes from the samples in the data, and the header says how they were measured
(backend, device, batch, threads, rounds, thread pool, CPU/GPU, versions, load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmtdeploy.report.markdown import table_head, table_row


def render_latency_markdown(data: dict[str, Any]) -> str:
    """``bench.md``: how it was measured, per-model latency, and each pair's speedup against its MACs."""
    c = data.get("conditions", {})
    batch = int(c.get("batch") or 1)
    lines = ["# Latency: dense vs pruned", "", how_measured(c), ""]
    lines += table_head(["model", "MACs", "params", "median ms", "p10–p90 ms", "p99 ms", "images/s"])
    for label, stats in data["latency"].items():
        facts = data.get("models", {}).get(label, {})
        lines.append(table_row([
            label, _giga(facts.get("macs")), _mega(facts.get("params")), f"{stats['median_ms']:.3f}",
            f"{stats['p10_ms']:.3f}–{stats['p90_ms']:.3f}", f"{stats['p99_ms']:.3f}",
            f"{batch * 1000 / stats['median_ms']:.1f}",
        ]))  # fmt: skip
    lines += ["", *table_head(["pair", "speedup (median of per-round ratios)", "p10–p90", "MAC reduction",
                               "speedup ÷ MAC reduction"])]  # fmt: skip
    lines += [table_row(row) for row in speedup_rows(data)]
    lines += ["", "![latency](bench.png)", ""]
    return "\n".join(lines)


def plot_latency(data: dict[str, Any], path: str | Path) -> None:
    """Median latency per model with p10–p90 whiskers, and each speedup written over its bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = data["latency"]
    labels = list(stats)
    medians = [stats[k]["median_ms"] for k in labels]
    low = [stats[k]["median_ms"] - stats[k]["p10_ms"] for k in labels]
    high = [stats[k]["p90_ms"] - stats[k]["median_ms"] for k in labels]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(labels), 3.6))
    ax.bar(labels, medians, yerr=[low, high], capsize=6, color=plt.get_cmap("tab10").colors[: len(labels)])
    speedups = {s["candidate"]: s["median"] for s in data["speedups"]}
    for x, label in enumerate(labels):
        if label in speedups:
            ax.annotate(f"×{speedups[label]:.2f}", (x, stats[label]["p90_ms"]), ha="center", va="bottom",
                        xytext=(0, 4), textcoords="offset points")  # fmt: skip
    c = data.get("conditions", {})
    ax.set_ylabel("latency, ms (median, p10–p90)")
    ax.set_title(f"{c.get('backend', '?')} on {c.get('device', '?')}, batch {c.get('batch', '?')}, "
                 f"{c.get('threads', '?')} threads", fontsize=9)  # fmt: skip
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedup_rows(data: dict[str, Any]) -> list[list[str]]:
    """Each pair: speedup (median of per-round ratios), its p10–p90, MAC reduction, and their ratio."""
    return [
        [f"{s['baseline']} → {s['candidate']}", f"×{s['median']:.3f}", f"×{s['p10']:.3f}–×{s['p90']:.3f}",
         f"×{row['mac_reduction']:.3f}" if row.get("mac_reduction") else "not known",
         f"{row['efficiency']:.2f}" if row.get("efficiency") else "not known"]
        for row, s in zip(data["efficiency"], data["speedups"], strict=True)
    ]  # fmt: skip


def how_measured(c: dict[str, Any]) -> str:
    machine = c.get("gpu") or c.get("cpu_model") or c.get("board") or "unknown machine"
    pool = f", ORT thread pool {c['thread_pool']}" if c.get("thread_pool") else ""
    load = c.get("loadavg_before")
    return (
        f"Measured on {machine} ({c.get('cpu_count', '?')} CPUs{', governor ' + c['cpu_governor'] if c.get('cpu_governor') else ''}): "
        f"backend {c.get('backend', '?')} on {c.get('device', '?')}, batch {c.get('batch', '?')}, "
        f"{c.get('threads', '?')} threads{pool}, {c.get('warmup', '?')} warm-up + {c.get('runs', '?')} "
        f"{'interleaved' if c.get('interleave') else 'sequential'} rounds, timer: {c.get('timer', '?')}; "
        f"load average before {load if load is not None else 'unknown'}. Versions: "
        + ", ".join(f"{k.removesuffix('_version')} {v}" for k, v in c.items() if k.endswith("_version") and v)
        + "."
    )


def _giga(value) -> str:
    return f"{value / 1e9:.3f} G" if value else "–"


def _mega(value) -> str:
    return f"{value / 1e6:.2f} M" if value else "–"
