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
    if data.get("curve"):
        lines += ["## Measured curve: latency and speedup against the keep ratio", "",
                  *table_head(CURVE_COLUMNS), *[table_row(row) for row in curve_rows(data["curve"])],
                  "", "![curve](curve.png)", ""]  # fmt: skip
    return "\n".join(lines)


CURVE_COLUMNS = ["keep ratio", "MACs kept", "median ms", "p10–p90 ms", "speedup", "p10–p90"]


def curve_rows(points: list[dict[str, Any]]) -> list[list[str]]:
    """One row per point of a measured curve (a sweep's candidates and dense), by keep ratio."""
    return [
        [f"{p['keep_macs']:g}" + (" (dense)" if p["label"] == "dense" else ""),
         f"{p['macs_kept']:.3f}" if p.get("macs_kept") else "–", f"{p['median_ms']:.3f}",
         f"{p['p10_ms']:.3f}–{p['p90_ms']:.3f}", f"×{p['speedup']:.3f}", f"×{p['speedup_p10']:.3f}–×{p['speedup_p90']:.3f}"]
        for p in points
    ]  # fmt: skip


def curve_figure(points: list[dict[str, Any]], title: str, budget_ms: float | None = None, pick=None):
    """Latency (median, p10–p90) and speedup over dense (median of per-round ratios, p10–p90) against the
    keep ratio; the MAC reduction (1 / MACs kept) dashed for scale. With ``budget_ms`` a line at the
    budget, with ``pick`` (keep ratio, ms) the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = [p["keep_macs"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    median = [p["median_ms"] for p in points]
    left.errorbar(keep, median, yerr=[[m - p["p10_ms"] for m, p in zip(median, points, strict=True)],
                                      [p["p90_ms"] - m for m, p in zip(median, points, strict=True)]],
                  marker="o", capsize=4, label="measured (median, p10–p90)")  # fmt: skip
    if budget_ms is not None:
        left.axhline(budget_ms, color="#c44e52", linestyle="--", label=f"budget {budget_ms:g} ms")
    if pick is not None:
        left.plot([pick[0]], [pick[1]], "*", color="#c44e52", markersize=12, label=f"pick: keep {pick[0]:g}")
    left.set(xlabel="keep ratio (MACs)", ylabel="latency, ms", title="latency")
    speedup = [p["speedup"] for p in points]
    right.errorbar(keep, speedup, yerr=[[s - p["speedup_p10"] for s, p in zip(speedup, points, strict=True)],
                                        [p["speedup_p90"] - s for s, p in zip(speedup, points, strict=True)]],
                   marker="o", capsize=4, label="speedup over dense")  # fmt: skip
    right.plot(keep, [1 / (p.get("macs_kept") or p["keep_macs"]) for p in points], "--", color="#8c8c8c",
               label="MAC reduction")  # fmt: skip
    right.set(xlabel="keep ratio (MACs)", ylabel="× dense", title="speedup")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_curve(data: dict[str, Any], path: str | Path) -> None:
    """``curve.png``: the measured curve of a bench result holding a sweep."""
    import matplotlib.pyplot as plt

    c = data.get("conditions", {})
    where = c.get("board") or c.get("gpu") or c.get("cpu_model") or c.get("device", "?")
    fig = curve_figure(data["curve"], f"measured on {where}: {c.get('backend', '?')}, batch {c.get('batch', '?')}, "
                                      f"{c.get('runs', '?')} interleaved rounds")  # fmt: skip
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
