"""The measurement protocol, the same for every runner: warm up, interleave, time, summarise.

Why interleaving and per-round ratios: docs/benchmarks.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rmtdeploy.benchmark.stats import LatencyReport, LatencyStats, SpeedupStats
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.machine import loadavg, machine_conditions

if TYPE_CHECKING:  # the runners import this module
    from rmtdeploy.benchmark.runners.base import Runner

TIMER = "time.perf_counter around one inference call, input already in memory"


def check_counts(models: Mapping[str, Any], batch: int, threads: int, warmup: int, runs: int) -> None:
    if not models:
        raise RmtdeployError("nothing to benchmark: no models given")
    if batch < 1 or threads < 1 or runs < 1 or warmup < 0:
        raise RmtdeployError(
            f"batch, threads and runs must be >= 1 and warmup >= 0 (got batch={batch}, threads={threads}, "
            f"runs={runs}, warmup={warmup})"
        )


def check_pairs(labels: list[str], pairs: Sequence[tuple[str, str]] | None) -> None:
    for base, cand in pairs or ():
        for label in (base, cand):
            if label not in labels:
                raise RmtdeployError(
                    f"speedup pair names unknown model '{label}'; known: {', '.join(labels)}"
                )


def protocol_conditions(
    runner: type[Runner] | Runner, *, batch: int, threads: int, warmup: int, runs: int, interleave: bool
) -> dict[str, Any]:
    """How a report was measured, before the runner adds its own facts: settings and machine."""
    return {
        "backend": runner.backend,
        "device": runner.device,
        "batch": batch,
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "interleave": interleave,
        "timer": TIMER,
        **machine_conditions(),
    }


def run_rounds(
    runner: Runner, models: Mapping[str, Any], *, warmup: int, runs: int, interleave: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Bind every model on ``runner`` and time them: per-run samples (ms) and the runner's conditions."""
    with runner:
        calls = {label: runner.bind(label, model) for label, model in models.items()}
        samples = timed_rounds(calls, warmup=warmup, runs=runs, interleave=interleave)
        return samples, runner.conditions()


def timed_rounds(
    calls: Mapping[str, Callable[[], object]], *, warmup: int, runs: int, interleave: bool
) -> dict[str, np.ndarray]:
    """Per-run latency in ms. Interleaved: round r runs every model once, starting at model r mod n."""
    labels = list(calls)
    for _ in range(warmup):
        for label in labels:
            calls[label]()
    times = {label: np.empty(runs, dtype=np.float64) for label in labels}
    clock = time.perf_counter
    if interleave:
        for r in range(runs):
            # Rotating the start cancels any systematic advantage of going first (warm caches, turbo).
            offset = r % len(labels)
            for label in labels[offset:] + labels[:offset]:
                t0 = clock()
                calls[label]()
                times[label][r] = (clock() - t0) * 1e3
    else:
        for label in labels:
            run = calls[label]
            for r in range(runs):
                t0 = clock()
                run()
                times[label][r] = (clock() - t0) * 1e3
    return times


def measure(
    labels: list[str],
    time_models: Callable[[], dict[str, np.ndarray]],
    *,
    pairs: Sequence[tuple[str, str]] | None,
    interleave: bool,
    conditions: dict[str, Any],
) -> LatencyReport:
    """Run ``time_models`` between two load readings and summarise its samples into a report.

    ``pairs`` lists ``(baseline, candidate)`` labels; by default the first label is every other's
    baseline. ``conditions`` is completed in place with the wall time and the load averages.
    """
    if pairs is None:
        pairs = [(labels[0], other) for other in labels[1:]]
    load_before = loadavg()
    started = time.time()
    samples = time_models()
    conditions.update(
        started_unix=round(started, 3),
        wall_s=round(time.time() - started, 3),
        loadavg_before=load_before,
        loadavg_after=loadavg(),
    )
    models = {label: LatencyStats.from_samples(label, samples[label]) for label in labels}
    speedups = [
        SpeedupStats.from_samples(base, cand, samples[base], samples[cand], paired=interleave)
        for base, cand in pairs
    ]
    return LatencyReport(
        models=models,
        speedups=speedups,
        conditions=conditions,
        samples_ms={label: [float(v) for v in samples[label]] for label in labels},
    )
