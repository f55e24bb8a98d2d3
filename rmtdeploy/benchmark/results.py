"""A ``bench.json``: its format, reading one measured anywhere (here, a GPU machine, the board), and the
statistics recomputed from its samples, never trusted from the file. The bench stage writes them; the
latency-budget stage judges a budget against a device's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rmtdeploy.benchmark.stats import LatencyReport, LatencyStats, SpeedupStats
from rmtdeploy.errors import RmtdeployError

BENCH_FORMAT = "rmtdeploy-bench"
BENCH_VERSION = 1


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RmtdeployError(f"results file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise RmtdeployError(f"cannot read {path} as JSON: {str(exc).splitlines()[0][:160]}") from exc
    if not isinstance(data, dict) or data.get("format") != BENCH_FORMAT:
        raise RmtdeployError(f"{path} is not an rmtdeploy benchmark result (format '{BENCH_FORMAT}')")
    samples = data.get("samples_ms")
    if (
        not isinstance(samples, dict)
        or not samples
        or not all(
            isinstance(v, list) and v and all(isinstance(x, (int, float)) and x > 0 for x in v)
            for v in samples.values()
        )
    ):
        raise RmtdeployError(f"{path} holds no usable samples_ms (label -> list of positive milliseconds)")
    if len({len(v) for v in samples.values()}) != 1:
        raise RmtdeployError(f"{path}: every model needs the same number of interleaved samples")
    return data


def report_from_samples(data: dict[str, Any]) -> LatencyReport:
    """Statistics recomputed from the samples (never trusted from the file)."""
    import numpy as np

    samples = {label: np.asarray(v, dtype=float) for label, v in data["samples_ms"].items()}
    labels = list(samples)
    conditions = dict(data.get("conditions") or {})
    paired = bool(conditions.get("interleave", False))
    pairs = [(labels[0], other) for other in labels[1:]]
    return LatencyReport(
        models={label: LatencyStats.from_samples(label, samples[label]) for label in labels},
        speedups=[SpeedupStats.from_samples(a, b, samples[a], samples[b], paired=paired) for a, b in pairs],
        conditions=conditions,
        samples_ms={label: [float(x) for x in v] for label, v in samples.items()},
    )


def efficiency(report: LatencyReport, models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per speedup pair: the MAC reduction and speedup ÷ MAC reduction, where both models' MACs are known."""
    rows = []
    for s in report.speedups:
        base, cand = models.get(s.baseline, {}).get("macs"), models.get(s.candidate, {}).get("macs")
        reduction = base / cand if base and cand else None
        rows.append({
            "baseline": s.baseline, "candidate": s.candidate, "speedup": s.median,
            "mac_reduction": reduction, "efficiency": s.median / reduction if reduction else None,
        })  # fmt: skip
    return rows
