"""Latency budgets: find the largest keep-macs whose pruned model meets a latency measured here.

Users ask for milliseconds, not MACs. The search prunes the dense model at a few keep ratios (spectra
fitted once and reused, :func:`rmtdeploy.scores.channel_spectra.reused_spectra`), exports each trial and
times it against the dense model on ONNX Runtime CPU, interleaved, and bisects (on log keep) towards the
largest keep whose median latency is within the budget. Every trial is recorded with its spread. A
budget below what the smallest allowed model reaches is an error that names the closest latency.

With a device's measured sweep (:func:`read_device_curve`: the Jetson bundle's candidates timed together
on the board) nothing is timed here: :func:`budget_from_curve` picks the keep ratio from the measured
points (:func:`rmtdeploy.benchmark.curve.pick_keep`), marked measured on that board, with one confirming
point to time there when the pick falls between two measured ones.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmtdeploy.errors import RmtdeployError

CALIBRATION_IMAGES = 256  # what a strategy reading calibration images scores each trial on

MIN_KEEP = 0.2  # the smallest model the search considers (below, widths hit their floors)
MAX_TRIALS = 7
TOLERANCE = 0.05  # a trial within 5% under the budget ends the search


@dataclass
class BudgetSearch:
    budget_ms: float
    keep_macs: float
    dense_ms: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None  # the device results the budget is judged against
    measured: dict[str, Any] | None = None  # the device's measured curve the keep ratio was picked from

    def to_dict(self) -> dict[str, Any]:
        if self.measured is not None:
            return {"budget_ms": self.budget_ms, "keep_macs": self.keep_macs, "dense_ms": self.dense_ms,
                    "trials": self.trials, "how": _how_measured(self.measured), "conditions": self.conditions,
                    "reference": None, "measured": self.measured}  # fmt: skip
        how = ("ONNX Runtime CPU, batch {batch}, {threads} threads, shared pool, {runs} interleaved rounds per "
               "trial, median").format(**self.conditions)  # fmt: skip
        if self.reference:
            how += (f"; judged on {self.reference['device']}: the device's dense median {self.reference['dense_ms']:.3f} "
                    f"ms (from {self.reference['file']}) ÷ each trial's speedup measured here — an estimate to "
                    "confirm on the device")  # fmt: skip
        return {"budget_ms": self.budget_ms, "keep_macs": self.keep_macs, "dense_ms": self.dense_ms,
                "trials": self.trials, "how": how, "conditions": self.conditions, "reference": self.reference}  # fmt: skip


def read_reference(path: str | os.PathLike) -> dict[str, Any]:
    """A device's benchmark results (``bench.json`` of the bundle's on-device run, or any rmtdeploy bench):
    its dense model's median latency, MACs and where it was measured."""
    import numpy as np

    from rmtdeploy.benchmark.results import read_results

    data = read_results(path)
    if "dense" not in data["samples_ms"]:
        raise RmtdeployError(f"{path} has no 'dense' latency samples to judge a budget against")
    conditions = data.get("conditions", {})
    device = (
        conditions.get("device_name")
        or conditions.get("gpu")
        or conditions.get("board")
        or conditions.get("cpu")
    )
    return {"file": str(path), "dense_ms": float(np.median(data["samples_ms"]["dense"])),
            "dense_macs": (data.get("models", {}).get("dense") or {}).get("macs"),
            "device": str(device or "the device"), "backend": conditions.get("backend")}  # fmt: skip


def read_device_curve(path: str | os.PathLike, budget_ms: float, target) -> Any:
    """A device's measured sweep, checked before any work: enough points, measured for ``target`` (a
    target profile), and a budget the fastest point meets (else the closest point is named)."""
    from rmtdeploy.benchmark.curve import check_budget_reachable, read_curve

    curve = read_curve(path)
    if curve.target is not None and curve.target != target.name:
        raise RmtdeployError(
            f"{{param}} {path} was measured for target {curve.target} ({curve.device}); this run's target is {target.name}: "
            "give results of a bundle for this target",
            param="device_results",
        )
    check_budget_reachable(curve, budget_ms)
    return curve


def check_device_model(device: dict[str, Any], loaded) -> None:
    """Device results are of this dense model: its MACs (``device["dense_macs"]``) match the loaded one's."""
    from rmtdeploy.adapters import get_adapter
    from rmtdeploy.pruning.result import count_macs_params

    if not device.get("dense_macs"):
        return
    macs = count_macs_params(loaded.model, get_adapter(loaded.model).example_inputs(loaded.model))[0]
    if abs(device["dense_macs"] / macs - 1) > 0.01:
        raise RmtdeployError(
            f"{device['file']} was measured on a dense model of {device['dense_macs'] / 1e9:.3f} GMACs; "
            f"{loaded.name} here has {macs / 1e9:.3f}: give results of this model's bundle"
        )


def budget_from_curve(curve, budget_ms: float, status: Callable[[str], None] | None = None) -> BudgetSearch:
    """The keep ratio a latency budget allows on the device whose measured sweep ``curve`` is
    (:func:`read_device_curve`): measured there, interpolated between measured points where it falls
    between them (then one point to confirm on the device)."""
    from rmtdeploy.benchmark.curve import pick_keep

    say = status or (lambda text: None)
    pick = pick_keep(curve, budget_ms)
    dense = next(p for p in curve.points if p["label"] == "dense")
    trials = [{**{k: p[k] for k in ("keep_macs", "macs_kept", "median_ms", "p10_ms", "p90_ms", "speedup")},
               "judged_ms": p["median_ms"], "met": p["median_ms"] <= budget_ms, "note": p["label"]}
              for p in curve.points]  # fmt: skip
    if pick["interpolated"]:  # the pick as a trial of its own, judged by interpolation: to confirm there
        trials.append({"keep_macs": pick["keep_macs"], "judged_ms": pick["judged_ms"], "met": True,
                       "note": f"interpolated between {' and '.join(pick['between'])}"})  # fmt: skip
    measured = {**curve.to_dict(), **pick}
    search = BudgetSearch(budget_ms, pick["keep_macs"], dense["median_ms"], trials, dict(measured["conditions"]),
                          measured=measured)  # fmt: skip
    for problem in pick["inversions"]:
        say(f"the measured curve is not monotone: {problem}")
    say(f"keep-macs {pick['keep_macs']:g} meets {budget_ms:g} ms on {curve.device}: "
        f"{pick['judged_ms']:.2f} ms {'interpolated' if pick['interpolated'] else 'measured'}")  # fmt: skip
    return search


def _how_measured(measured: dict[str, Any]) -> str:
    c = measured["conditions"]
    how = (f"measured on {measured['device']}: the bundle's sweep timed there ({c.get('backend') or '?'}"
           f"{', TensorRT ' + c['tensorrt_version'] if c.get('tensorrt_version') else ''}, batch {c.get('batch', '?')}, "
           f"{c.get('runs', '?')} interleaved rounds, median; from {measured['file']})")  # fmt: skip
    if measured["interpolated"]:
        low, high = measured["between"]
        how += (f"; keep {measured['keep_macs']:g} interpolated between the measured {low} and {high} (monotone "
                "on that segment): confirm it on the device with this run's bundle")  # fmt: skip
    if measured["inversions"]:
        how += "; the curve is not monotone elsewhere: " + "; ".join(measured["inversions"])
    return how


def search_keep_for_latency(
    loaded,
    *,
    budget_ms: float,
    strategy,
    round_to: int,
    latency_aware: bool = False,
    threads: int | None = None,
    runs: int = 30,
    warmup: int = 5,
    reference: dict[str, Any] | None = None,
    calibration=None,
    status: Callable[[str], None] | None = None,
) -> BudgetSearch:
    """The largest keep-macs in [MIN_KEEP, 1] whose pruned ``loaded`` model runs within ``budget_ms``:
    measured here, or, with ``reference`` (:func:`read_reference`), estimated for the device it came from.
    ``calibration`` (an opened data source) feeds a strategy whose scores read calibration images."""
    from rmtdeploy.scores.channel_spectra import reused_spectra

    say = status or (lambda text: None)
    threads = threads or os.cpu_count() or 1
    conditions = {
        "batch": 1,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "backend": "onnxruntime-cpu",
    }
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-budget-") as tmp, reused_spectra():
        trial = _Trials(
            loaded, strategy, round_to, latency_aware, Path(tmp), conditions, budget_ms, calibration
        )
        search = BudgetSearch(budget_ms, 1.0, trial.dense_ms(), conditions=conditions)
        trial.judge_against(reference, search)
        where = f"on {reference['device']} (estimated)" if reference else f"(ORT CPU, {threads} threads)"
        say(
            f"latency budget {budget_ms:g} ms {where}; dense {loaded.name}: {trial.judged(search.dense_ms):.2f} ms"
        )
        if trial.judged(search.dense_ms) <= budget_ms:
            search.trials.append({"keep_macs": 1.0, "median_ms": search.dense_ms, "judged_ms": trial.judged(search.dense_ms),
                                  "met": True, "note": "dense model"})  # fmt: skip
            say("the dense model already meets the budget: nothing is pruned for latency (keep 1.0)")
            return search
        low = trial(MIN_KEEP, say)
        search.trials.append(low)
        if not low["met"]:
            raise RmtdeployError(
                f"latency budget {budget_ms:g} ms is below what the smallest allowed model reaches: "
                f"{low['judged_ms']:.2f} ms at keep-macs {MIN_KEEP} {where}, dense {trial.judged(search.dense_ms):.2f} "
                "ms; raise the budget or choose a smaller model"
            )
        search.keep_macs = _bisect(trial, search, low, say)
        return search


def _bisect(trial, search: BudgetSearch, low: dict[str, Any], say) -> float:
    """Bisection on log keep between a trial that meets the budget and the dense model, which does not."""
    best, budget_ms = low, search.budget_ms
    lo, hi = math.log(MIN_KEEP), 0.0
    for _ in range(MAX_TRIALS - 1):
        keep = round(math.exp((lo + hi) / 2), 3)
        point = trial(keep, say)
        search.trials.append(point)
        if point["met"]:
            lo, best = math.log(keep), max(best, point, key=lambda p: p["keep_macs"])
            if point["judged_ms"] >= budget_ms * (1 - TOLERANCE):
                break
        else:
            hi = math.log(keep)
        if hi - lo < 0.02:
            break
    say(f"keep-macs {best['keep_macs']} meets {budget_ms:g} ms: {best['judged_ms']:.2f} ms")
    return best["keep_macs"]


class _Trials:
    """Prunes, exports and times one keep ratio at a time (the dense graph exported once)."""

    def __init__(
        self,
        loaded,
        strategy,
        round_to,
        latency_aware,
        folder: Path,
        conditions,
        budget_ms: float,
        calibration=None,
    ):
        self.loaded, self.strategy, self.round_to, self.budget_ms = loaded, strategy, round_to, budget_ms
        self.latency_aware, self.folder, self.conditions = latency_aware, folder, conditions
        self.dense_path = folder / "dense.onnx"
        self._dense_ms: float | None = None
        self.device_dense_ms: float | None = None
        self.calibration = calibration  # the data source of a strategy that reads calibration images
        self._batches: list | None = None

    def judge_against(self, reference: dict[str, Any] | None, search: BudgetSearch) -> None:
        """Judge trials by the device's latency: local latency × (device dense ÷ local dense)."""
        if reference is None:
            return
        from rmtdeploy.pruning.result import count_macs_params

        macs = count_macs_params(self.loaded.model, self._example())[0]
        if reference["dense_macs"] and abs(reference["dense_macs"] / macs - 1) > 0.01:
            raise RmtdeployError(
                f"{reference['file']} was measured on a dense model of {reference['dense_macs'] / 1e9:.3f} GMACs; "
                f"{self.loaded.name} here has {macs / 1e9:.3f}: give results of this model's bundle"
            )
        self.device_dense_ms = reference["dense_ms"]
        search.reference = dict(reference)

    def judged(self, local_ms: float, local_dense_ms: float | None = None) -> float:
        """The latency a budget is judged by: measured here, or the device's dense latency scaled by the
        speedup measured here in the same interleaved rounds."""
        if self.device_dense_ms is None:
            return local_ms
        return self.device_dense_ms * local_ms / (local_dense_ms or self._dense_ms)

    def _example(self):
        from rmtdeploy.adapters import get_adapter

        return get_adapter(self.loaded.model).example_inputs(self.loaded.model)

    def _data(self) -> dict[str, Any]:
        """``calibration_batches`` for a strategy that reads calibration images (drawn once for all trials)."""
        if not self.strategy.reads_calibration or self.calibration is None:
            return {}
        if self._batches is None:
            from rmtdeploy.data.source import calibration_batches

            self._batches = list(calibration_batches(self.calibration, self.loaded.model, CALIBRATION_IMAGES))
        return {"calibration_batches": self._batches}

    def dense_ms(self) -> float:
        from rmtdeploy.exporting import export_onnx

        export_onnx(self.loaded.model, self.dense_path)
        self._dense_ms = self._time({"dense": self.dense_path})["dense"]["median_ms"]
        return self._dense_ms

    def __call__(self, keep: float, say) -> dict[str, Any]:
        from rmtdeploy.benchmark.allocation import fastest_allocation
        from rmtdeploy.exporting import export_onnx

        result = self.strategy.prune(
            self.loaded.model, keep_macs=keep, round_to=self.round_to, model_name=self.loaded.name,
            **({"latency_weights": fastest_allocation} if self.latency_aware else {}), **self._data(),
        )  # fmt: skip
        path = self.folder / f"keep-{keep}.onnx"
        export_onnx(result.model, path)
        timed = self._time({"dense": self.dense_path, "pruned": path})
        path.unlink(missing_ok=True)
        point = {
            "keep_macs": keep,
            "macs_kept": round(result.macs_kept, 4),
            "median_ms": round(timed["pruned"]["median_ms"], 4),
            "p90_ms": round(timed["pruned"]["p90_ms"], 4),
            "dense_median_ms": round(timed["dense"]["median_ms"], 4),
        }
        point["judged_ms"] = round(self.judged(point["median_ms"], point["dense_median_ms"]), 4)
        point["met"] = point["judged_ms"] <= self.budget_ms
        say(f"trial keep-macs {keep}: {point['judged_ms']:.2f} ms (p90 {point['p90_ms']:.2f}; dense "
            f"{point['dense_median_ms']:.2f}) {'meets' if point['met'] else 'misses'} the budget")  # fmt: skip
        return point

    def _time(self, models: dict[str, Path]) -> dict[str, dict[str, float]]:
        from rmtdeploy.benchmark.latency import measure_onnx_latency

        c = self.conditions
        report = measure_onnx_latency(
            models, batch=1, threads=c["threads"], runs=c["runs"], warmup=c["warmup"]
        )
        return {label: {"median_ms": s.median_ms, "p90_ms": s.p90_ms} for label, s in report.models.items()}
