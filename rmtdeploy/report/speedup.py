"""Dense-vs-pruned speedup of one model from several timing passes, as a report row's numbers.

These are the fields :mod:`rmtdeploy.report.speedup_markdown` reads: the headline pass, every pass,
the quietest rounds and the thread cross-check, each with its efficiency ``speedup / MAC reduction``.
The latency reports come from :func:`rmtdeploy.benchmark.measure_onnx_latency` with the labels
``"dense"`` and ``"pruned"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rmtdeploy.benchmark import LatencyReport

DENSE, PRUNED = "dense", "pruned"


def quietest_pass(passes: Sequence[LatencyReport]) -> LatencyReport:
    """The pass with the smallest dense + pruned median: other processes only ever add time, so it ran
    closest to an idle machine."""
    return min(passes, key=lambda r: r.models[DENSE].median_ms + r.models[PRUNED].median_ms)


def speedup_summary(
    passes: Sequence[LatencyReport], mac_reduction: float, *, efficiency_target: float, quiet_fraction: float
) -> dict[str, Any]:
    """Headline (quietest pass) latency and speedup, every pass, and the quietest rounds' speedup.

    Contention changes the ratio itself (see :meth:`LatencyReport.speedup`), so the quietest
    ``quiet_fraction`` of the headline's rounds gives a low-contention estimate beside the median.
    """
    headline = quietest_pass(passes)
    every_pass = pass_rows(passes, headline, mac_reduction)
    quiet = headline.speedup(DENSE, PRUNED, quietest=quiet_fraction)
    return {
        **headline_row(headline, mac_reduction, efficiency_target),
        "passes": every_pass,
        "median_pass_efficiency": round(float(np.median([p["efficiency"] for p in every_pass])), 4),
        "quiet_rounds": quiet.pairs,
        "quiet_speedup_median": round(quiet.median, 4),
        "quiet_efficiency": round(quiet.median / mac_reduction, 4),
    }


def headline_row(report: LatencyReport, mac_reduction: float, efficiency_target: float) -> dict[str, Any]:
    speed = report.speedup(DENSE, PRUNED)
    efficiency = speed.median / mac_reduction
    return {
        **_latency_ms(report),
        "dense_iqr_ms": round(report.models[DENSE].iqr_ms, 3),
        "pruned_iqr_ms": round(report.models[PRUNED].iqr_ms, 3),
        "speedup_median": round(speed.median, 4),
        "speedup_p10": round(speed.p10, 4),
        "speedup_p90": round(speed.p90, 4),
        "speedup_iqr": round(speed.iqr, 4),
        "efficiency": round(efficiency, 4),
        "efficiency_p10": round(speed.p10 / mac_reduction, 4),
        "meets_target": efficiency >= efficiency_target,
    }


def pass_rows(
    passes: Sequence[LatencyReport], headline: LatencyReport, mac_reduction: float
) -> list[dict[str, Any]]:
    rows = []
    for report in passes:
        speedup = report.speedup(DENSE, PRUNED).median
        rows.append(
            {
                **_latency_ms(report),
                "speedup_median": round(speedup, 4),
                "efficiency": round(speedup / mac_reduction, 4),
                "loadavg_before": report.conditions.get("loadavg_before"),
                "headline": report is headline,
            }
        )
    return rows


def threads_check_row(report: LatencyReport, mac_reduction: float, threads: int) -> dict[str, Any]:
    """The cross-check on another thread count: its speedup, spread, efficiency and conditions."""
    speed = report.speedup(DENSE, PRUNED)
    return {
        "threads": threads,
        **_latency_ms(report),
        "speedup_median": round(speed.median, 4),
        "speedup_p10": round(speed.p10, 4),
        "speedup_p90": round(speed.p90, 4),
        "efficiency": round(speed.median / mac_reduction, 4),
        "conditions": report.conditions,
    }


def _latency_ms(report: LatencyReport) -> dict[str, float]:
    return {
        "dense_ms": round(report.models[DENSE].median_ms, 3),
        "pruned_ms": round(report.models[PRUNED].median_ms, 3),
    }
