"""``dynamic`` — dynamic threshold: progressive pruning that switches scoring when accuracy starts to go.

The budget is reached in ``steps`` geometric steps (keep_i = keep^(i/steps) of the dense MACs). Every step
re-fits the spectra of the current, already pruned weights. Scoring starts with ``start`` (magnitude)
and switches to ``then`` (hybrid magnitude × SER) once the model degrades:

* with an ``evaluate`` callback (top-1 in %), when the drop from the dense top-1, measured after the
  step's recalibration / fine-tune, exceeds ``drop_threshold`` points (0.7 in the published protocol);
* without one, when the pruning depth passes ``switch_depth`` (the hybrid protocol's 20%).

Between steps, in this order: the step prunes, BatchNorm is recalibrated on ``calibration_batches``,
``finetune(model)`` runs when given, then ``evaluate(model)``. The fine-tune stage's hook is a short
label-free distillation from the dense model (``rmtdeploy.finetune.distill``; ``rmtdeploy prune`` runs
it on the ``--calibration`` images, ``--finetune-steps``); a hook that returns a record (a dataclass
such as ``DistillRecord``, or a dict) has it kept per step under ``history[i]["finetune"]`` and the
plan's ``strategy.steps``. Pick it when data is at hand and the target is aggressive.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.scores.base import Strategy, get_strategy, register_strategy


@register_strategy("dynamic")
@dataclass
class DynamicThresholdStrategy(Strategy):
    steps: int = 4
    start: str = "magnitude"
    then: str = "hybrid"
    drop_threshold: float = 0.7  # top-1 points lost (vs dense) that trigger the switch
    switch_depth: float = 0.2  # without an evaluator: switch once 1 − keep exceeds this
    history: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)

    def knobs(self) -> dict[str, Any]:
        return {k: v for k, v in super().knobs().items() if k != "history"}

    def prune(
        self,
        model: nn.Module,
        *,
        keep_macs: float | None = None,
        keep_params: float | None = None,
        calibration_batches=None,
        finetune: Callable[[nn.Module], Any] | None = None,
        evaluate: Callable[[nn.Module], float] | None = None,
        **pruner_options: Any,
    ):
        if self.steps < 1:
            raise RmtdeployError(f"dynamic strategy needs steps >= 1, got {self.steps}")
        if self.start == "dynamic" or self.then == "dynamic":
            raise RmtdeployError("dynamic strategy cannot nest itself")
        metric = "macs" if keep_params is None else "params"
        keep = keep_macs if keep_params is None else keep_params
        if keep is None:
            raise RmtdeployError("dynamic strategy needs a budget: keep_macs or keep_params")
        scorers = {"start": get_strategy(self.start), "then": get_strategy(self.then)}

        # Costs in the budget's unit, read off a PruneResult.
        def dense_of(result) -> int:
            return result.dense_macs if metric == "macs" else result.dense_params

        def pruned_of(result) -> int:
            return result.pruned_macs if metric == "macs" else result.pruned_params

        dense_top1 = evaluate(model) if evaluate else None
        self.history = []
        switched = False
        current, results = model, []
        for step in range(1, self.steps + 1):
            goal = keep ** (step / self.steps)
            # Each step's budget is relative to the model it starts from, which is already pruned.
            relative = goal * dense_of(results[0]) / pruned_of(results[-1]) if results else goal
            if not switched and evaluate is None and 1 - goal > self.switch_depth:
                switched = True
            scorer = scorers["then" if switched else "start"]
            budget = {"keep_macs": relative} if metric == "macs" else {"keep_params": relative}
            result = scorer.prune(
                current, calibration_batches=calibration_batches, **budget, **pruner_options
            )
            record = finetune(result.model) if finetune is not None else None
            top1 = evaluate(result.model) if evaluate else None
            if top1 is not None and dense_top1 - top1 > self.drop_threshold:
                switched = True
            results.append(result)
            kept = pruned_of(result) / dense_of(results[0])
            entry = {
                "step": step,
                "goal_keep": round(goal, 4),
                "scoring": scorer.name,
                "top1": top1,
                "kept": round(kept, 4),
            }
            if record is not None:
                entry["finetune"] = _plain_record(record)
            self.history.append(entry)
            current = result.model
        final = results[-1]
        final.timings = {
            key: sum(r.timings.get(key, 0.0) for r in results) for key in ("spectra_s", "scores_s")
        }
        final.plan = compose_plans([r.plan for r in results])
        final.dense_macs, final.dense_params = results[0].dense_macs, results[0].dense_params
        final.plan["strategy"] = {
            "name": self.name,
            "knobs": self.knobs(),
            "steps": self.history,
            "dense_top1": dense_top1,
        }
        return final


def _plain_record(record: Any) -> dict[str, Any]:
    """A fine-tune hook's record as a plain dict (it goes into plan.json)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    if isinstance(record, dict):
        return dict(record)
    raise TypeError(f"a finetune hook returns None, a dataclass or a dict, not {type(record).__name__}")


def compose_plans(plans: list[dict[str, Any]]) -> dict[str, Any]:
    """One plan equivalent to applying ``plans`` in order: operations concatenated, dense side from the
    first, pruned side from the last."""
    first, last = plans[0], plans[-1]
    composed = copy.deepcopy(last)
    composed["operations"] = [op for plan in plans for op in plan["operations"]]
    composed["widths"]["dense"] = first["widths"]["dense"]
    for name, heads in composed["heads"].items():
        heads["dense"] = first["heads"][name]["dense"]
    composed["macs"]["dense"] = first["macs"]["dense"]
    composed["params"]["dense"] = first["params"]["dense"]
    return composed
