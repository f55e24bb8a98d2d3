"""A pruning request checked before any model loads: the strategy and its knobs, the target and the channel
multiple its widths round to, the budget's rules, calibration images and the between-steps distillation.

The prune stage and pruning during training (:mod:`rmtdeploy.finetuning.progressive`) check the same
request here, so both refuse the same bad input with the same line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning.arguments import check_pruning_arguments
from rmtdeploy.scores.registry import get_strategy

# The accuracy benchmark's choice without calibration data, for every family (docs/strategies.md, "Which
# strategy to pick"), and with it where none is asked for.
DEFAULT_STRATEGY = "hybrid"
# With calibration data, the families where data-rmt started ahead of hybrid at keep 0.3 on the evidence of
# three tasks (mnist5k, CIFAR-10, sign-digits; docs/strategies.md): ConvNeXt on all three, Hiera on the two it
# learns, Swin on two of three; ResNet since data-rmt weighs by the loss (fisher=sampled): ahead on two of
# three right after pruning, on all three after the short distillation. The plain ViTs (measured with the
# loss weighting on one task) keep hybrid, and so do the families data-rmt has not been measured on.
DATA_STRATEGY_BY_FAMILY = {
    "convnext": "data-rmt",
    "swin": "data-rmt",
    "resnet": "data-rmt",
}
# With data or without: Hiera takes rmt, which ranks its channels across layers there (allocation=auto):
# ahead of hybrid and data-rmt at keep 0.5 and 0.3 on mnist5k (keep 0.3: 85.3 vs 64.1 and 70.9, and ahead of
# Taylor's 77.0) and ahead of hybrid at both keeps on CIFAR-10 (docs/strategies.md, "No strategy is a trap").
STRATEGY_BY_FAMILY = {"hiera": "rmt"}


def default_strategy(family: str, have_data: bool, knobs: dict[str, Any] | None = None) -> str:
    """The strategy a prune runs when none is asked for: :data:`STRATEGY_BY_FAMILY`, then
    :data:`DATA_STRATEGY_BY_FAMILY` with calibration data, else :data:`DEFAULT_STRATEGY`, which knobs given
    without a strategy always belong to (they are checked before the model, and so its family, is known)."""
    if knobs:
        return DEFAULT_STRATEGY
    if family in STRATEGY_BY_FAMILY:
        return STRATEGY_BY_FAMILY[family]
    return DATA_STRATEGY_BY_FAMILY.get(family, DEFAULT_STRATEGY) if have_data else DEFAULT_STRATEGY


SHORT_DISTILL_STEPS = (
    32  # the dynamic strategy's distillation steps per pruning step, with calibration images
)


@dataclass(frozen=True)
class PruneSettings:
    """The prune arguments after checking, before any work."""

    strategy: Any
    target: Any
    round_to: int
    round_to_from: str
    finetune_steps: int
    calibration: Any = None  # the opened DataSource


def check_prune_request(
    keep_macs, keep_params, strategy, knobs, target, round_to, min_channels, head_rounding,
    calibration, calibration_images, finetune_steps, *, latency_budget_ms=None, latency_table_trust=None,
) -> PruneSettings:  # fmt: skip
    """Every argument rule, before the model is loaded: a bad value costs the user no waiting.
    ``latency_budget_ms``: a budget in ms that a latency table's prediction meets (instead of a keep);
    ``latency_table_trust``: the trust region of a latency table's allocation (None: the default)."""
    from rmtdeploy.targets import load_target

    if keep_macs is None and keep_params is None and latency_budget_ms is None:
        raise RmtdeployError("give a budget: keep_macs or keep_params (a fraction in (0, 1])")
    chosen = get_strategy(strategy, **(knobs or {}))
    profile = load_target(target)
    multiple = profile.channel_multiple if round_to is None else round_to
    check_pruning_arguments(
        keep_macs=keep_macs,
        keep_params=keep_params,
        round_to=multiple,
        min_channels=min_channels,
        head_rounding=head_rounding,
        latency_budget_ms=latency_budget_ms,
        **({} if latency_table_trust is None else {"latency_table_trust": latency_table_trust}),
    )
    chosen.check_calibration(
        calibration is not None, "calibration", " (a built-in dataset's name or an image folder)"
    )
    chosen.check_labels(labelled=False, param="calibration")
    data = _check_calibration(calibration, calibration_images) if calibration is not None else None
    return PruneSettings(
        strategy=chosen,
        target=profile,
        round_to=multiple,
        round_to_from="round_to argument"
        if round_to is not None
        else f"target: {profile.channel_multiple_from}",
        finetune_steps=finetune_steps_for(finetune_steps, chosen, have_images=calibration is not None),
        calibration=data,
    )


def _check_calibration(root, images: int):
    """The calibration data (a built-in dataset's name or an ImageFolder), opened and its files checked."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise RmtdeployError(
            f"{{param}} must be a positive integer, got {images}", param="calibration_images"
        )

    from rmtdeploy.data import open_data

    return open_data(root, split=False)


def finetune_steps_for(steps: int | None, strategy, *, have_images: bool) -> int:
    """Distillation steps per pruning step; unset: a short one where the strategy takes it and images exist."""
    takes_finetune = strategy.takes_finetune_hook
    if steps is None:
        return SHORT_DISTILL_STEPS if takes_finetune and have_images else 0
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise RmtdeployError(f"{{param}} must be an integer >= 0, got {steps}", param="finetune_steps")
    if steps and not takes_finetune:
        raise RmtdeployError(
            f"{{param}} applies to strategies that fine-tune between pruning steps (not '{strategy.name}'); "
            "the fine-tune stage for the others comes later",
            param="finetune_steps",
        )
    if steps and not have_images:
        raise RmtdeployError(
            "{param} needs calibration images: the images to distil on", param="finetune_steps"
        )
    return steps
