"""Latency-aware allocation, measured: of candidate allocations met at the same MACs, the one that runs
fastest on ONNX Runtime CPU (:mod:`rmtdeploy.pruning.latency` makes the candidates; this times them).

Pass :func:`fastest_allocation` as ``latency_weights`` to :func:`rmtdeploy.pruning.prune_model` (the prune
stage does so for ``latency_aware``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmtdeploy.pruning.latency import MIN_GAIN


def fastest_allocation(
    candidates: Mapping[str, tuple[nn.Module, int]],
    example: torch.Tensor,
    baseline: str = "mac-only",
    *,
    threads: int = 2,
    runs: int = 30,
) -> tuple[str, dict[str, Any]]:
    """Time ``candidates`` ({label: (pruned model, MACs)}) interleaved on ONNX Runtime CPU at batch 1; the
    label chosen and the record: each candidate's latency ratio to ``baseline`` at equal MACs (> 1:
    faster), and how it was measured. Latency is taken as proportional to MACs over the budget's ±3%."""
    from rmtdeploy import (
        benchmark,
    )  # its measure_onnx_latency, looked up at call time (tests stand in for it)
    from rmtdeploy.exporting import export_for_timing

    with tempfile.TemporaryDirectory(prefix="rmtdeploy-allocation-") as tmp:
        paths = {}
        for label, (model, _) in candidates.items():
            paths[label] = str(Path(tmp) / f"{label}.onnx")
            export_for_timing(model, paths[label], example.shape[1:])
        others = [label for label in candidates if label != baseline]
        report = benchmark.measure_onnx_latency(paths, threads=threads, runs=runs, warmup=5,
                                      pairs=[(baseline, label) for label in others])  # fmt: skip
    base_macs = candidates[baseline][1]
    gains = {
        s.candidate: round(s.median * candidates[s.candidate][1] / base_macs, 4) for s in report.speedups
    }
    best = max(gains, key=gains.get) if gains else baseline
    chosen = best if gains.get(best, 0.0) >= MIN_GAIN else baseline
    record = {"chosen": chosen, "gain_at_equal_macs": gains, "min_gain": MIN_GAIN,
              "measured": f"ONNX Runtime CPU, batch 1, {threads} threads, {runs} interleaved rounds, median of per-round ratios",
              "cpu": report.conditions.get("cpu_model")}  # fmt: skip
    return chosen, record
