"""Pruning during training: the ``dynamic`` strategy's steps spread over the first part of a fine-tune.

The dense model is pruned in ``steps`` geometric steps towards the budget (``rmtdeploy.scores.dynamic``):
each step re-fits the spectra of the weights as trained so far, lowers the threshold (a deeper cut) and
hands the pruned student back to the training loop, which trains it for an equal share of the first
``fraction`` of all steps before the next cut. Once the budget is reached, training continues on the
final structure for the remaining steps. The width reached after every step, the validation top-1 and
the scoring used are recorded (``finetune.json`` → ``progressive``, the plan's ``strategy.steps``).

Checkpoints start once the final structure exists: a run interrupted during the pruning phase starts
over (its checkpoint would hold a structure the plan does not yet describe).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from rmtdeploy.errors import RmtdeployError

DEFAULT_PRUNING_FRACTION = 0.5


@dataclass(frozen=True)
class ProgressivePruning:
    """What to prune during training, and over which share of the steps."""

    keep_macs: float | None = None
    keep_params: float | None = None
    strategy: str = "dynamic"
    knobs: dict[str, Any] | None = None
    target: str = "jetson"
    round_to: int | None = None
    min_channels: int = 8
    head_rounding: str = "floor"
    fraction: float = DEFAULT_PRUNING_FRACTION
    source: Any = field(default=None, compare=False)  # the dense model's source, set by check()
    settings: Any = field(default=None, compare=False, repr=False)

    def check(self, model) -> ProgressivePruning:
        """Every rule before the dense model loads; returns a copy that knows its model source."""
        from rmtdeploy.models import model_source
        from rmtdeploy.scores.request import check_prune_request

        settings = check_prune_request(self.keep_macs, self.keep_params, self.strategy, self.knobs, self.target, self.round_to,
                          self.min_channels, self.head_rounding, None, 1, 0)  # fmt: skip
        if not settings.strategy.takes_finetune_hook:
            raise RmtdeployError(
                f"{{param}} '{self.strategy}' prunes in one shot; pruning during training needs a strategy that "
                "prunes in steps (dynamic)",
                param="strategy",
            )
        if not 0 < self.fraction < 1:
            raise RmtdeployError(f"{{param}} must lie in (0, 1), got {self.fraction}", param="prune_fraction")
        if model is None:
            raise RmtdeployError("pruning during training needs the dense model ({param})", param="model")
        source = model_source(model)
        source.check()
        return replace(self, source=source, settings=settings)

    def describe(self) -> str:
        budget = (
            f"keep_macs {self.keep_macs}" if self.keep_macs is not None else f"keep_params {self.keep_params}"
        )
        name = getattr(self.source, "name", self.source)
        return f"{name} pruned during training by {self.strategy} to {budget} over {self.fraction:g} of the steps"


def prune_while_training(trainer, loaded, progressive: ProgressivePruning) -> dict[str, Any]:
    """Prune ``loaded`` (the dense model) step by step while ``trainer`` trains each step's student; returns the final plan
    (the trainer holds the final student, evaluated as the starting point of the rest of the run)."""
    from rmtdeploy.data.source import ImageBatches

    settings = progressive.settings
    strategy = settings.strategy
    per_step = max(1, int(progressive.fraction * trainer.total_steps / strategy.steps))
    trainer.saving = trainer.tracking_best = False
    dense_top1 = trainer.evaluate(loaded.model)[0]

    def train_pruned(student):
        trainer.set_student(student)
        trainer.train_until(trainer.step + per_step)
        top1, _ = trainer.evaluate()
        trainer.reporter.status(f"pruning step done: val top-1 {top1:.2f} after {per_step} steps")
        return {"trained_steps": per_step, "val_top1": top1, "at_step": trainer.step}

    calibration = ImageBatches(
        trainer.data.plain, max(1, trainer.recipe.bn_images), batch_size=trainer.recipe.batch_size
    )
    dense = copy.deepcopy(loaded.model).cpu().requires_grad_(True)  # the teacher's copy is frozen
    result = strategy.prune(
        dense, keep_macs=progressive.keep_macs, keep_params=progressive.keep_params,
        round_to=settings.round_to, min_channels=progressive.min_channels, head_rounding=progressive.head_rounding,
        calibration_batches=calibration, finetune=train_pruned, evaluate=lambda m: trainer.evaluate(m)[0],
        model_name=loaded.name,
        provenance={"weights": loaded.weights, "target": settings.target.name, "calibrated": True,
                    "finetune_steps": per_step, "pruned_while_training": True},
    )  # fmt: skip
    trainer.set_student(result.model)
    trainer.saving = trainer.tracking_best = True
    trainer.extra_state = {"plan": result.plan, "widths_per_step": _steps(strategy.history, dense_top1)}
    start = trainer.start()
    trainer.reporter.status(
        f"final structure reached at step {trainer.step}: val top-1 {start['val_top1']:.2f}"
    )
    return result.plan


def _steps(history: list[dict[str, Any]], dense_top1: float) -> dict[str, Any]:
    return {
        "dense_val_top1": dense_top1,
        "steps": [
            {"step": h["step"], "goal_keep": h["goal_keep"], "kept": h["kept"], "scoring": h["scoring"],
             **h.get("finetune", {})}
            for h in history
        ],
    }  # fmt: skip
