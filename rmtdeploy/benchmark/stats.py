"""What a latency measurement gives back: per-model statistics, speedups and the report holding both."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rmtdeploy.errors import RmtdeployError


@dataclass(frozen=True)
class LatencyStats:
    """Distribution of one model's per-run latency, in milliseconds."""

    label: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_samples(cls, label: str, samples_ms: np.ndarray) -> LatencyStats:
        q10, q25, q50, q75, q90, q99 = np.percentile(samples_ms, [10, 25, 50, 75, 90, 99])
        return cls(
            label=label,
            median_ms=float(q50),
            p10_ms=float(q10),
            p90_ms=float(q90),
            p99_ms=float(q99),
            iqr_ms=float(q75 - q25),
            mean_ms=float(np.mean(samples_ms)),
            min_ms=float(np.min(samples_ms)),
            runs=int(samples_ms.size),
        )


@dataclass(frozen=True)
class SpeedupStats:
    """``baseline / candidate`` latency ratio over interleaved rounds (> 1: candidate is faster)."""

    baseline: str
    candidate: str
    median: float
    p10: float
    p90: float
    iqr: float
    pairs: int
    paired: bool  # False when the models were not interleaved: then ratios pair runs by index only

    @classmethod
    def from_samples(
        cls, baseline: str, candidate: str, base_ms: np.ndarray, cand_ms: np.ndarray, paired: bool
    ) -> SpeedupStats:
        ratios = base_ms / cand_ms
        q10, q25, q50, q75, q90 = np.percentile(ratios, [10, 25, 50, 75, 90])
        return cls(
            baseline=baseline,
            candidate=candidate,
            median=float(q50),
            p10=float(q10),
            p90=float(q90),
            iqr=float(q75 - q25),
            pairs=int(ratios.size),
            paired=paired,
        )


@dataclass
class LatencyReport:
    """Per-model latency, pairwise speedups and the measurement conditions; ``to_dict`` is JSON-ready."""

    models: dict[str, LatencyStats]
    speedups: list[SpeedupStats]
    conditions: dict[str, Any]
    samples_ms: dict[str, list[float]] = field(repr=False, default_factory=dict)

    def speedup(self, baseline: str, candidate: str, *, quietest: float | None = None) -> SpeedupStats:
        """Speedup of ``candidate`` over ``baseline`` from the stored interleaved samples.

        ``quietest`` (e.g. 0.25) keeps only that fraction of rounds with the smallest summed time over
        both models, i.e. the rounds other processes disturbed least. On a shared machine the ratio
        itself depends on contention (a contended core hurts the larger model's multi-threaded kernels
        more), so this estimates the ratio on an otherwise idle machine, next to the all-round median.
        """
        for label in (baseline, candidate):
            if label not in self.samples_ms:
                raise RmtdeployError(
                    f"no latency samples for '{label}'; measured: {', '.join(self.samples_ms)}"
                )
        base = np.asarray(self.samples_ms[baseline])
        cand = np.asarray(self.samples_ms[candidate])
        if quietest is not None:
            if not 0.0 < quietest <= 1.0:
                raise RmtdeployError(f"quietest must be a fraction in (0, 1], got {quietest}")
            keep = max(1, round(quietest * base.size))
            rounds = np.argsort(base + cand, kind="stable")[:keep]
            base, cand = base[rounds], cand[rounds]
        return SpeedupStats.from_samples(
            baseline, candidate, base, cand, paired=bool(self.conditions.get("interleave", False))
        )

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "conditions": dict(self.conditions),
            "models": {label: asdict(stats) for label, stats in self.models.items()},
            "speedups": [asdict(s) for s in self.speedups],
        }
        if include_samples:
            out["samples_ms"] = {label: list(s) for label, s in self.samples_ms.items()}
        return out
