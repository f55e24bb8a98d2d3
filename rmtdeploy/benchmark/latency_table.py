"""Measuring a latency table (:mod:`rmtdeploy.pruning.latency_table` says what it holds): timing a plan's
groups on ONNX Runtime CPU, and assembling the table from a plan and its timings, wherever they were taken.

:mod:`rmtdeploy.benchmark.latency_table_plan` writes what to time. Timings are JSON, one record per plan
group in the plan's order::

    {"groups": [{"labels": [...], "reference": "dense",      # one of the labels, in every group
                 "ms": {label: [median, p10, p90]},          # per-sample milliseconds
                 "speedup": {label: [median, p10, p90]}}]}   # per-round reference / label

so a board's script (``bench_on_device.py``, TensorRT) produces the same record as
:func:`time_plan_onnxruntime`. Assembling takes each graph's time as the dense median (over all groups)
divided by its median per-round speedup; prices each layer between two units at the mean in-graph time per
MAC of its two units (each unit's saving over the MACs it saves, from its narrowest width to dense); then
fits the one scale by which the summed savings are multiplied so that the joint configurations' savings
come out right (least squares through the origin), and records that fit's error.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmtdeploy.benchmark.latency_table_plan import TablePlan, grid_widths, plan_latency_table
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning.latency_table import LatencyTable, LayerGrid, UnitCurve

__all__ = ["assemble_latency_table", "grid_widths", "measure_latency_table", "time_plan_onnxruntime",
           "timings_from_macs"]  # fmt: skip

Status = Callable[[str], None]


def measure_latency_table(
    model: nn.Module,
    *,
    model_name: str | None = None,
    example_inputs: torch.Tensor | None = None,
    round_to: int = 8,
    min_channels: int = 8,
    points: int = 5,
    calibration_points: int = 6,
    group_size: int = 9,
    threads: int = 2,
    runs: int = 50,
    warmup: int = 5,
    backend: str = "onnxruntime",
    status: Status | None = None,
) -> LatencyTable:
    """The latency table of ``model`` (eval mode, batch 1, at ``example_inputs``' size) on ONNX Runtime CPU:
    plan, time, assemble (see :func:`plan_latency_table` for ``points``, ``calibration_points`` and
    ``group_size``); ``runs`` interleaved rounds per group after ``warmup``.

    ``backend="macs"`` times nothing: every "time" is the graph's (or the layer's) MACs in millions, so the
    table's predictions must equal counted MACs, a check of its structure (which layers each unit sets, the
    interactions) free of timing noise.
    """
    from rmtdeploy.machine import loadavg

    if backend not in ("onnxruntime", "macs"):
        raise RmtdeployError(f"{{param}} must be onnxruntime or macs, got {backend!r}", param="backend")
    load = loadavg()
    options = {"model_name": model_name, "example_inputs": example_inputs, "round_to": round_to,
               "min_channels": min_channels, "points": points, "calibration_points": calibration_points,
               "group_size": group_size, "status": status}  # fmt: skip
    if backend == "macs":
        plan = plan_latency_table(model, None, **options)
        return assemble_latency_table(
            plan, timings_from_macs(plan), {"backend": "macs (MMACs as ms: the structure check)"}
        )
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-latency-table-") as tmp:
        plan = plan_latency_table(model, tmp, **options)
        timings = time_plan_onnxruntime(plan, tmp, threads=threads, runs=runs, warmup=warmup, status=status)
    return assemble_latency_table(plan, timings, _ort_conditions(timings, threads, runs, warmup, load))


def time_plan_onnxruntime(
    plan: TablePlan,
    folder: str | Path,
    *,
    threads: int = 2,
    runs: int = 50,
    warmup: int = 5,
    status: Status | None = None,
) -> dict[str, Any]:
    """Each group of ``plan`` (its graphs in ``folder``) timed alone on ONNX Runtime CPU, interleaved on one
    shared pool of ``threads``; the timings record (module docstring).

    Each group runs behind a *pilot* (:data:`rmtdeploy.benchmark.latency.PILOT`), a copy of its first graph
    timed with it and dropped: in early A/A runs the session created first ran 1–5 % slower, and as the
    reference that offset entered every unit's saving."""
    from rmtdeploy.benchmark.latency import measure_onnx_latency

    records, versions = [], set()
    for i, group in enumerate(plan.groups):
        labels, reference = group["labels"], group["reference"]
        if status is not None:
            status(f"timing group {i + 1}/{len(plan.groups)} ({len(labels)} graphs)")
        paths = {label: str(Path(folder) / plan.graphs[label]) for label in labels}
        report = measure_onnx_latency(
            paths, threads=threads, runs=runs, warmup=warmup, pilot=True,
            pairs=[(reference, label) for label in labels if label != reference],
        )  # fmt: skip
        versions.add(report.conditions.get("onnxruntime_version"))
        records.append({
            "labels": list(labels), "reference": reference,
            "ms": {label: _triple(s.median_ms, s.p10_ms, s.p90_ms) for label, s in report.models.items()},
            "speedup": {s.candidate: _triple(s.median, s.p10, s.p90) for s in report.speedups},
        })  # fmt: skip
    return {"groups": records, "onnxruntime": sorted(v for v in versions if v)}


def timings_from_macs(plan: TablePlan) -> dict[str, Any]:
    """The timings record with each graph's MACs (millions) for its milliseconds: noise-free."""
    macs = plan.data["macs"]
    records = []
    for group in plan.groups:
        reference = group["reference"]
        ms = {label: [macs[label] / 1e6] * 3 for label in group["labels"]}
        speedup = {
            label: [macs[reference] / macs[label]] * 3 for label in group["labels"] if label != reference
        }
        records.append(
            {"labels": list(group["labels"]), "reference": reference, "ms": ms, "speedup": speedup}
        )
    return {"groups": records}


def assemble_latency_table(
    plan: TablePlan | Mapping[str, Any], timings: Mapping[str, Any], measured: Mapping[str, Any]
) -> LatencyTable:
    """The table from ``plan``, its ``timings`` (measured anywhere) and ``measured`` (where and how:
    backend, device or CPU, threads, runs, ...); a timings record that does not fit the plan is refused."""
    plan = plan if isinstance(plan, TablePlan) else TablePlan.from_dict(plan)
    data = plan.data
    ms, spread, dense_ms = _graph_times(plan, timings)
    units = {}
    for root, u in data["units"].items():
        times = [ms[label] for label in u["labels"]]
        units[root] = UnitCurve(
            u["kind"], int(u["full"]), tuple(u["widths"]), tuple(times),
            tuple(spread.get(label, (t, t))[0] for label, t in zip(u["labels"], times, strict=True)),
            tuple(spread.get(label, (t, t))[1] for label, t in zip(u["labels"], times, strict=True)),
            tuple(data["macs"][label] for label in u["labels"]),
        )  # fmt: skip
    per_mac = {root: _ms_per_mac(curve) for root, curve in units.items()}
    layers = {}
    for name, g in data["layers"].items():
        rate = (per_mac[g["in_unit"]] + per_mac[g["out_unit"]]) / 2
        layers[name] = LayerGrid(
            g["in_unit"], g["out_unit"], tuple(g["in_widths"]), tuple(g["out_widths"]),
            tuple(tuple(round(rate * m, 7) or 1e-7 for m in row) for row in g["macs"]),
            {**g["graph"], "ms": "layer MACs x the mean in-graph ms per MAC of its two units"},
        )  # fmt: skip
    table = LatencyTable(
        model=data["model"], input_size=tuple(data["input_size"]), round_to=data["round_to"],
        dense_ms=round(dense_ms, 5), dense_macs=data["dense_macs"], layer_widths=dict(data["layer_widths"]),
        units=units, layers=layers,
        measured={**measured, "points": data["points"], "unmodelled_layers": data["unmodelled_layers"]},
    )  # fmt: skip
    table.scale, table.calibration = _calibration(table, data["calibration"], ms)
    return table


def _graph_times(plan: TablePlan, timings: Mapping[str, Any]):
    """Each label's time (ms), the spread of model graphs' times, and the dense time they are anchored to."""
    groups = timings.get("groups") if isinstance(timings, Mapping) else None
    if not isinstance(groups, list) or len(groups) != len(plan.groups):
        raise RmtdeployError(f"{{param}} does not fit the plan: {len(plan.groups)} groups planned",
                             param="latency_table_timings")  # fmt: skip
    references = []
    for planned, timed in zip(plan.groups, groups, strict=True):
        if list(timed.get("labels", [])) != list(planned["labels"]):
            raise RmtdeployError("{param} does not fit the plan: a group's labels differ",
                                 param="latency_table_timings")  # fmt: skip
        references.append(float(timed["ms"][planned["reference"]][0]))
    dense_ms = round(statistics.median(references), 5)
    ms, spread = {"dense": dense_ms}, {}
    for planned, timed in zip(plan.groups, groups, strict=True):
        for label in planned["labels"]:
            if label != planned["reference"]:
                median, p10, p90 = (float(v) for v in timed["speedup"][label])
                ms[label], spread[label] = dense_ms / median, (dense_ms / p90, dense_ms / p10)
    return ms, spread, dense_ms


def _ms_per_mac(curve: UnitCurve) -> float:
    """A unit's in-graph time per MAC: what narrowing it to its narrowest width saves, over the MACs saved."""
    macs = curve.macs[-1] - curve.macs[0]
    return max(curve.smoothed[-1] - curve.smoothed[0], 0.0) / macs if macs > 0 else 0.0


def _calibration(table: LatencyTable, joints: list[dict[str, Any]], ms: Mapping[str, float]):
    """The scale on the units' summed savings that fits the joint configurations, and the fit's record."""
    if not joints:
        return 1.0, {
            "scale": 1.0,
            "points": [],
            "note": "no joint configurations: the savings are summed as measured",
        }
    raw = [(table.predict(j["widths"]) - table.dense_ms, ms[j["label"]] - table.dense_ms) for j in joints]
    square = sum(p * p for p, _ in raw)
    scale = sum(p * m for p, m in raw) / square if square > 0 else 1.0
    note = "least squares through the origin: measured saving = scale x summed saving, over the joint configurations"
    if scale <= 0:
        scale, note = (
            1.0,
            "the joint configurations contradict the units' savings (fitted scale <= 0): left at 1",
        )
    points = []
    for j, (p, m) in zip(joints, raw, strict=True):
        predicted, measured = table.dense_ms + scale * p, table.dense_ms + m
        points.append({"label": j["label"], "measured_ms": round(measured, 5), "predicted_ms": round(predicted, 5),
                       "summed_ms": round(table.dense_ms + p, 5), "error": round(predicted / measured - 1, 4)})  # fmt: skip
    return round(scale, 5), {"scale": round(scale, 5), "note": note, "points": points,
                             "largest_error": max(abs(p["error"]) for p in points)}  # fmt: skip


def _ort_conditions(timings, threads: int, runs: int, warmup: int, load) -> dict[str, Any]:
    from rmtdeploy.machine import cpu_model

    return {
        "backend": "onnxruntime-cpu", "cpu": cpu_model(), "threads": threads, "runs": runs, "warmup": warmup,
        "batch": 1, "interleaved": True, "thread_pool": "shared", "onnxruntime": ", ".join(timings["onnxruntime"]),
        "load_average_at_start": load, "groups": len(timings["groups"]),
        "unit_timing": "whole graph with one unit narrowed, timed in small groups with the dense model: "
                       "dense median / median per-round ratio (p10-p90 spread)",
        "interactions": "layers between two units: their MACs x the two units' mean in-graph ms per MAC",
    }  # fmt: skip


def _triple(median: float, p10: float, p90: float) -> list[float]:
    return [round(float(median), 6), round(float(p10), 6), round(float(p90), 6)]
