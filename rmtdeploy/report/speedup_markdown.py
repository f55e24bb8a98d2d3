"""The pruning-speedup report (``benchmarks/prune_speedup.py``'s JSON) as Markdown.

The report is a dict with ``settings`` (how it was measured) and ``families`` (one row per model:
``status`` ``"ok"`` with MACs, latency, speedup, efficiency, passes, the thread check, structure, ONNX
ops and, when profiled, ORT time per op and per block; or an error). Rendering never measures.
"""

from __future__ import annotations

from typing import Any

from rmtdeploy.report.markdown import ratio, table_head, table_row

TITLE = "# Pruning speedup (ONNX Runtime CPU)"
SUMMARY_COLUMNS = (
    "model",
    "GMACs dense → pruned",
    "MAC red.",
    "Mparams dense → pruned",
    "dense ms",
    "pruned ms",
    "speedup (p10–p90)",
    "efficiency",
    "≥ target",
    "every pass's efficiency",
)
BLOCK_COLUMNS = (
    "block",
    "share of dense time",
    "dense → pruned ms",
    "speedup",
    "MAC red.",
    "GMAC/s dense → pruned",
)
MIN_BLOCK_SHARE = 0.01  # blocks below this share of the dense time are left out of the block tables


def render_speedup_markdown(
    report: dict[str, Any], *, efficiency_target: float, quiet_fraction: float
) -> str:
    """The whole report: how it was measured, the summary table, the machine, structure and blocks.

    ``efficiency_target`` and ``quiet_fraction`` are the benchmark's own definitions (the claim it
    checks, the share of rounds in the low-contention estimate), named in the text.
    """
    settings, families = report["settings"], report["families"]
    ok = [r for r in families if r.get("status") == "ok"]
    lines = [TITLE, "", *_intro(settings, efficiency_target, quiet_fraction), ""]
    lines += _summary_table(families, settings, quiet_fraction)
    lines += _machine_lines(ok)
    if ok:
        lines += ["", "## Structure and where the time goes", ""]
        lines += [_structure_line(r, settings["round_to"]) for r in ok]
        lines += _block_tables(ok)
    lines.append("")
    return "\n".join(lines)


def _intro(s: dict[str, Any], efficiency_target: float, quiet_fraction: float) -> list[str]:
    return [
        f"keep_macs={s['keep_macs']}, round_to={s['round_to']} ({s.get('round_to_from', '')}), "
        f"pruner={s['pruner']}; {s['export']}.",
        f"Latency: batch {s['batch']}, {s['threads']} threads (one ORT thread pool shared by both models, "
        f"default spinning), {s['runs']} interleaved rounds after {s['warmup']} warm-up, in "
        f"{s.get('passes', 1)} passes that rotate over the families (a family's passes lie minutes apart); "
        "the headline is each family's quietest pass (smallest dense + pruned median: other processes only "
        "add time), and every pass's efficiency is listed. Speedup = median "
        "(p10-p90) of per-round dense/pruned ratios. "
        f"Efficiency = speedup / MAC reduction; target >= {efficiency_target}. Weights: {s['weights']}.",
        "",
        "Two cross-checks, because the machine is shared and contention changes the ratio itself, in both "
        "directions (a core taken by another process stalls two-thread kernels, more so the pruned model's "
        "shorter ones; heavy load slows the dense model more): the quietest "
        f"{quiet_fraction:.0%} of rounds (smallest dense+pruned time), and a one-thread run "
        "(half the rounds), which other processes disturb far less.",
    ]


def _summary_table(
    families: list[dict[str, Any]], settings: dict[str, Any], quiet_fraction: float
) -> list[str]:
    columns = [
        *SUMMARY_COLUMNS,
        f"quietest-{quiet_fraction:.0%} speedup / eff.",
        f"{settings.get('check_threads') or '–'}-thread speedup / eff.",
    ]
    lines = table_head(columns)
    for r in families:
        if r.get("status") != "ok":
            error = r.get("error", "")[:160].replace("|", "/")
            lines.append(f"| {r['model']} | {r.get('status')}: {error} |" + " |" * (len(columns) - 2))
        else:
            lines.append(_family_row(r))
    return lines


def _family_row(r: dict[str, Any]) -> str:
    return table_row(
        [
            r["model"],
            f"{r['dense_gmacs']:.2f} → {r['pruned_gmacs']:.2f}",
            ratio(r["mac_reduction"]),
            f"{r['dense_mparams']:.1f} → {r['pruned_mparams']:.1f}",
            f"{r['dense_ms']:.1f}",
            f"{r['pruned_ms']:.1f}",
            f"{ratio(r['speedup_median'])} ({r['speedup_p10']:.2f}–{r['speedup_p90']:.2f})",
            f"{r['efficiency']:.2f}",
            "yes" if r["meets_target"] else "**no**",
            _passes_cell(r),
            f"{ratio(r['quiet_speedup_median'])} / {r['quiet_efficiency']:.2f}",
            _check_cell(r),
        ]
    )


def _machine_lines(ok: list[dict[str, Any]]) -> list[str]:
    if not ok:
        return []
    c = ok[0]["latency"]["conditions"]
    return [
        "",
        f"Measured on {c['cpu_model']} ({c['cpu_count']} logical CPUs, shared with other "
        f"jobs), onnxruntime {c['onnxruntime_version']}, {c['platform']}. "
        f"1-minute load average during the runs: {_load_range(ok)} on "
        f"{c['cpu_count']} CPUs (other engineers' jobs; per-family values in the JSON).",
    ]


def _structure_line(r: dict[str, Any], round_to: int) -> str:
    st = r["structure"]
    odd_key = next(k for k in st if k.startswith("widths_not_multiple_of_"))
    ops_d, ops_p = r["onnx_ops"]["dense"], r["onnx_ops"]["pruned"]
    line = (
        f"- **{r['model']}**: {st[odd_key]} of {st['layers']} conv/linear layers off the multiple of {round_to}"
        + (f" (e.g. {', '.join(st['examples'][:3])})" if st["examples"] else "")
        + (f"; heads×head_dim {st['attention_heads_x_head_dim']}" if st["attention_heads_x_head_dim"] else "")
        + f"; ONNX nodes {ops_d['nodes']} → {ops_p['nodes']}"
    )
    if "ort_op_ms" in r:
        top = _op_time_shift(r["ort_op_ms"]["dense"], r["ort_op_ms"]["pruned"])
        line += f"; ORT ms/run by op (dense → pruned): {top}"
    return line


def _block_tables(rows: list[dict[str, Any]]) -> list[str]:
    """Per-block tables for the families below target (or the least efficient one when all pass)."""
    with_blocks = [r for r in rows if r.get("blocks")]
    if not with_blocks:
        return []
    chosen = [r for r in with_blocks if not r["meets_target"]] or [
        min(with_blocks, key=lambda r: r["efficiency"])
    ]
    lines: list[str] = []
    for r in chosen:
        lines += [
            "",
            f"### {r['model']}: per block (efficiency {r['efficiency']:.2f})",
            "",
            "Profiled separately (ORT profiler, dense and pruned interleaved, fastest of 20 runs per block), "
            "so block times do not add up to the latency above. GMAC/s = the block's MAC throughput.",
            "",
            *table_head(BLOCK_COLUMNS),
        ]
        lines += [_block_row(b) for b in r["blocks"] if b["share_of_dense_time"] >= MIN_BLOCK_SHARE]
    return lines


def _block_row(b: dict[str, Any]) -> str:
    rate = (
        f"{b['dense_gmacs_per_s']:.0f} → {b['pruned_gmacs_per_s']:.0f}"
        if b["dense_gmacs_per_s"] and b["pruned_gmacs_per_s"]
        else "–"
    )
    return table_row(
        [
            b["block"],
            f"{b['share_of_dense_time']:.0%}",
            f"{b['dense_ms']:.2f} → {b['pruned_ms']:.2f}",
            ratio(b["speedup"]),
            ratio(b["mac_reduction"], missing="no MACs"),
            rate,
        ]
    )


def _passes_cell(row: dict[str, Any]) -> str:
    return " / ".join(
        f"**{p['efficiency']:.2f}**" if p["headline"] else f"{p['efficiency']:.2f}"
        for p in row.get("passes", [])
    )


def _check_cell(row: dict[str, Any]) -> str:
    check = row.get("threads_check")
    if not check:
        return "–"
    return f"×{check['speedup_median']:.2f} / {check['efficiency']:.2f}"


def _load_range(rows: list[dict[str, Any]]) -> str:
    loads = [
        load[0]
        for r in rows
        if r.get("status") == "ok"
        for load in (
            r["latency"]["conditions"]["loadavg_before"],
            r["latency"]["conditions"]["loadavg_after"],
        )
        if load
    ]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else "unknown"


def _op_time_shift(dense: dict[str, float], pruned: dict[str, float], top: int = 5) -> str:
    ops = sorted(set(dense) | set(pruned), key=lambda op: -dense.get(op, 0.0))[:top]
    return ", ".join(f"{op} {dense.get(op, 0):.1f} → {pruned.get(op, 0):.1f}" for op in ops)
