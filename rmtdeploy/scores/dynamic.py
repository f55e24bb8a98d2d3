"""``dynamic`` — dynamic threshold: progressive pruning that switches scoring when accuracy starts to go.

The budget is reached in ``steps`` geometric steps (keep_i = keep^(i/steps) of the dense MACs). Every step
re-fits the spectra of the current, already pruned weights, and counts its widths from the dense model's
(``prune_model(reference=...)``): a unit keeps what one cut to the step's goal would leave it, not the last
step's width rounded down to the channel multiple once more (which took a narrow stage to its floor).
Scoring starts with ``start`` (magnitude) and switches to ``then`` (``rmt``'s signal energy) once the
model degrades:

* with an ``evaluate`` callback (top-1 in %), when the drop from the dense top-1, measured after the
  step's recalibration / fine-tune, exceeds ``drop_threshold`` points (0.7 in the published protocol);
* without one, when the pruning depth passes ``switch_depth`` (the hybrid protocol's 20%).

Between steps, in this order: the step prunes, BatchNorm is recalibrated on ``calibration_batches``,
``finetune(model)`` runs when given, then ``evaluate(model)``. The fine-tune stage's hook is a short
label-free distillation from the dense model (``rmtdeploy.finetuning.distill``; ``rmtdeploy prune`` runs
it on the ``--calibration`` images, ``--finetune-steps``); a hook that returns a record (a dataclass
such as ``DistillRecord``, or a dict) has it kept per step under ``history[i]["finetune"]`` and the
plan's ``strategy.steps``. Pick it when data is at hand and the target is aggressive.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning.plan import compose_plans
from rmtdeploy.scores.base import Strategy
from rmtdeploy.scores.registry import STRATEGIES, get_strategy, register_strategy


@register_strategy("dynamic")
@dataclass
class DynamicThresholdStrategy(Strategy):
    takes_finetune_hook: ClassVar[bool] = True

    steps: int = 4
    start: str = "magnitude"
    # rmt (its allocation=auto): within 1 point of magnitude or above in every family after the short
    # distillation at keep 0.3, where hybrid trailed it on ResNet (docs/strategies.md, "No strategy is a trap")
    then: str = "rmt"
    drop_threshold: float = 0.7  # top-1 points lost (vs dense) that trigger the switch
    switch_depth: float = 0.2  # without an evaluator: switch once 1 − keep exceeds this
    # The last run's per-step record (what the plan's ``strategy.steps`` holds): state, not a knob.
    history: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False, compare=False)

    def check_knobs(self) -> None:
        self.require(self.steps >= 1, "steps", "must be >= 1")
        # Each step is one pass of a one-shot strategy; a progressive one (like this) cannot be a step.
        one_shot = sorted(name for name, cls in STRATEGIES.items() if not cls.takes_finetune_hook)
        for knob in ("start", "then"):
            self.require(
                getattr(self, knob) in one_shot, knob, f"must name a one-shot strategy: {', '.join(one_shot)}"
            )
        self.require(0 <= self.drop_threshold <= 100, "drop_threshold", "top-1 points, must lie in [0, 100]")
        self.require(0 <= self.switch_depth < 1, "switch_depth", "a pruning depth in [0, 1)")

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
        metric, keep = _budget(keep_macs, keep_params)
        scorers = {"start": get_strategy(self.start), "then": get_strategy(self.then)}
        dense_of = functools.partial(_cost, metric=metric, dense=True)
        pruned_of = functools.partial(_cost, metric=metric, dense=False)
        dense_top1 = evaluate(model) if evaluate else None
        self.history = []
        switched = False
        current, results = model, []
        for step in range(1, self.steps + 1):
            goal = keep ** (step / self.steps)
            # Each step's budget is relative to the model it starts from, which is already pruned.
            relative = goal * dense_of(results[0]) / pruned_of(results[-1]) if results else goal
            switched = switched or (evaluate is None and 1 - goal > self.switch_depth)
            scorer = scorers["then" if switched else "start"]
            budget = {f"keep_{metric}": relative, "reference": model}  # widths count from the dense model's
            result = scorer.prune(
                current, calibration_batches=calibration_batches, **budget, **pruner_options
            )
            record = finetune(result.model) if finetune is not None else None
            top1 = evaluate(result.model) if evaluate else None
            switched = switched or (top1 is not None and dense_top1 - top1 > self.drop_threshold)
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
        final.plan = compose_plans(
            [r.plan for r in results],
            strategy={
                "name": self.name,
                "knobs": self.knobs(),
                "steps": self.history,
                "dense_top1": dense_top1,
            },
        )
        final.dense_macs, final.dense_params = results[0].dense_macs, results[0].dense_params
        return final


def _budget(keep_macs: float | None, keep_params: float | None) -> tuple[str, float]:
    """The budget's unit (``"macs"`` or ``"params"``) and the fraction of it to keep."""
    metric = "macs" if keep_params is None else "params"
    keep = keep_macs if keep_params is None else keep_params
    if keep is None:
        raise RmtdeployError("dynamic strategy needs a budget: keep_macs or keep_params")
    return metric, keep


def _cost(result, metric: str, *, dense: bool) -> int:
    """A PruneResult's dense or pruned cost in the budget's unit."""
    if metric == "macs":
        return result.dense_macs if dense else result.pruned_macs
    return result.dense_params if dense else result.pruned_params


def _plain_record(record: Any) -> dict[str, Any]:
    """A fine-tune hook's record as a plain dict (it goes into plan.json)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    if isinstance(record, dict):
        return dict(record)
    raise TypeError(f"a finetune hook returns None, a dataclass or a dict, not {type(record).__name__}")
