"""A measured latency curve: the dense model and pruned candidates at several keep ratios, timed together.

The Jetson bundle's sweep (``make_bundle(..., sweep=[0.3, ..., 0.9])``) ships one candidate per keep ratio;
its on-device script times them all in one interleaved run and writes one ``bench.json``. Each candidate's
model facts carry the ``keep_macs`` it was pruned to, so the curve is read from any such file:
:func:`curve_points` (latency and speedup with their spread against the keep ratio), :func:`read_curve`
(a device's file, checked), :func:`pick_keep` (the largest keep ratio a latency budget allows, by
monotone interpolation between the two measured points around it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from rmtdeploy.benchmark.results import read_results, report_from_samples
from rmtdeploy.benchmark.stats import LatencyReport
from rmtdeploy.errors import RmtdeployError

SWEEP_PREFIX = "keep-"
MIN_SWEEP_POINTS = 2  # swept candidates besides dense: fewer leaves nothing to interpolate between
DENSE = "dense"


def sweep_label(keep: float) -> str:
    """The label (and file stem) of the candidate pruned to ``keep``: ``keep-0.3``."""
    return f"{SWEEP_PREFIX}{keep:g}"


def check_sweep(sweep: Any, param: str = "sweep") -> list[float]:
    """The keep ratios of a sweep, sorted: each a number in (0, 1], no ratio twice, at least one."""
    if isinstance(sweep, (int, float)) and not isinstance(sweep, bool):
        sweep = [sweep]
    if not isinstance(sweep, (list, tuple)) or not sweep:
        raise RmtdeployError(
            f"{{param}} takes keep ratios in (0, 1], e.g. 0.3,0.5,0.7; got {sweep!r}", param=param
        )
    for keep in sweep:
        if (
            isinstance(keep, bool)
            or not isinstance(keep, (int, float))
            or not (math.isfinite(keep) and 0 < keep <= 1)
        ):
            raise RmtdeployError(f"{{param}} ratios must lie in (0, 1], got {keep!r}", param=param)
    labels = [sweep_label(float(k)) for k in sweep]
    if len(set(labels)) != len(labels):
        raise RmtdeployError(f"{{param}} names a keep ratio twice: {', '.join(map(str, sweep))}", param=param)
    return sorted(float(k) for k in sweep)


def curve_points(report: LatencyReport, models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per swept candidate and the dense model (keep 1.0), by keep ratio: median latency with
    p10–p90, the speedup over dense (median of per-round ratios) with p10–p90, and the MACs kept.
    Empty when the results hold no swept candidate."""
    swept = [label for label in report.models if "keep_macs" in (models.get(label) or {})]
    if not swept or DENSE not in report.models:
        return []
    speedups = {s.candidate: s for s in report.speedups if s.baseline == DENSE}
    dense_macs = (models.get(DENSE) or {}).get("macs")
    points = []
    for label in [*swept, DENSE]:
        stats, facts = report.models[label], models.get(label) or {}
        s = speedups.get(label)
        macs = facts.get("macs")
        points.append({
            "label": label, "keep_macs": 1.0 if label == DENSE else float(facts["keep_macs"]),
            "macs_kept": round(macs / dense_macs, 4) if macs and dense_macs else None,
            "median_ms": stats.median_ms, "p10_ms": stats.p10_ms, "p90_ms": stats.p90_ms,
            "speedup": s.median if s else 1.0, "speedup_p10": s.p10 if s else 1.0, "speedup_p90": s.p90 if s else 1.0,
        })  # fmt: skip
    return sorted(points, key=lambda p: p["keep_macs"])


def inversions(points: list[dict[str, Any]]) -> list[str]:
    """Where latency falls as the keep ratio rises (neighbouring points), in words."""
    return [
        f"keep {a['keep_macs']:g} ran {a['median_ms']:.3f} ms, slower than keep {b['keep_macs']:g} at {b['median_ms']:.3f} ms"
        for a, b in zip(points, points[1:], strict=False)
        if b["median_ms"] < a["median_ms"]
    ]


@dataclass
class DeviceCurve:
    """A device's measured curve: where it ran, what dense model it timed, the points."""

    file: str
    device: str
    target: str | None
    dense_macs: int | None
    points: list[dict[str, Any]]
    conditions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        keep = (
            "backend",
            "runs",
            "warmup",
            "batch",
            "tensorrt_version",
            "jetpack",
            "nvpmodel",
            "jetson_clocks",
        )
        return {"file": self.file, "device": self.device, "target": self.target, "dense_macs": self.dense_macs,
                "points": self.points, "conditions": {k: self.conditions.get(k) for k in keep}}  # fmt: skip


def device_name(conditions: dict[str, Any]) -> str:
    """The machine a result was measured on, as its conditions name it."""
    named = (conditions.get("board") or conditions.get("device_name") or conditions.get("gpu")
             or conditions.get("cpu_model") or conditions.get("cpu"))  # fmt: skip
    return str(named or "the device")


def read_curve(path: str | os.PathLike) -> DeviceCurve:
    """A ``bench.json`` holding a sweep (the bundle's on-device run), checked: a dense model and at least
    :data:`MIN_SWEEP_POINTS` swept candidates. Statistics are recomputed from the samples."""
    data = read_results(path)
    models = data.get("models") or {}
    points = curve_points(report_from_samples(data), models)
    swept = [p for p in points if p["label"] != DENSE]
    if DENSE not in data["samples_ms"]:
        raise RmtdeployError(
            f"{path} has no 'dense' latency samples: a curve is measured against the dense model"
        )
    if len(swept) < MIN_SWEEP_POINTS:
        held = ", ".join(f"keep {p['keep_macs']:g}" for p in swept) or "none"
        raise RmtdeployError(
            f"{path} holds too few points for a measured curve: {len(swept)} swept model(s) ({held}), at least "
            f"{MIN_SWEEP_POINTS} needed; bundle with a sweep of keep ratios (e.g. 0.3,0.5,0.7,0.9) and time it on "
            "the device, or judge the budget by a dense latency alone (latency_reference, an estimate)"
        )
    conditions = dict(data.get("conditions") or {})
    return DeviceCurve(str(path), device_name(conditions), conditions.get("target"),
                       (models.get(DENSE) or {}).get("macs"), points, conditions)  # fmt: skip


def check_budget_reachable(curve: DeviceCurve, budget_ms: float) -> None:
    """Refuse a budget below every measured point, naming the closest (the fastest) one."""
    fastest = min(curve.points, key=lambda p: p["median_ms"])
    if fastest["median_ms"] > budget_ms:
        raise RmtdeployError(
            f"latency budget {budget_ms:g} ms is below the sweep's fastest point on {curve.device}: the closest "
            f"is keep {fastest['keep_macs']:g} at {fastest['median_ms']:.3f} ms (p10–p90 {fastest['p10_ms']:.3f}–"
            f"{fastest['p90_ms']:.3f}); raise the budget or sweep smaller keep ratios"
        )


def pick_keep(curve: DeviceCurve, budget_ms: float) -> dict[str, Any]:
    """The largest keep ratio whose latency on the device meets ``budget_ms``.

    The largest measured point within the budget and its measured neighbour above (which misses it, so
    the segment rises through the budget) bracket the answer; the keep ratio is interpolated linearly on
    that segment (monotone by construction) and rounded down to 0.001. A pick strictly between the two
    is an interpolation, to confirm with one more point on the device; where the curve elsewhere is not
    monotone, ``inversions`` says where."""
    check_budget_reachable(curve, budget_ms)
    points = curve.points
    met = [p for p in points if p["median_ms"] <= budget_ms]
    low = max(met, key=lambda p: p["keep_macs"])
    pick = {"keep_macs": low["keep_macs"], "judged_ms": low["median_ms"], "interpolated": False,
            "between": None, "inversions": inversions(points)}  # fmt: skip
    above = [p for p in points if p["keep_macs"] > low["keep_macs"]]
    if not above:
        return pick  # the dense model meets the budget
    high = min(above, key=lambda p: p["keep_macs"])
    share = (budget_ms - low["median_ms"]) / (high["median_ms"] - low["median_ms"])
    keep = (
        math.floor(1000 * (low["keep_macs"] + share * (high["keep_macs"] - low["keep_macs"])) + 1e-9) / 1000
    )
    keep = min(max(keep, low["keep_macs"]), high["keep_macs"])
    if keep > low["keep_macs"]:
        slope = (high["median_ms"] - low["median_ms"]) / (high["keep_macs"] - low["keep_macs"])
        pick.update(keep_macs=keep, interpolated=True, between=[low["label"], high["label"]],
                    judged_ms=round(low["median_ms"] + slope * (keep - low["keep_macs"]), 4))  # fmt: skip
    return pick
