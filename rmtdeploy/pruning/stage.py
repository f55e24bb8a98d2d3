"""The prune stage as one library call: ``prune(model, out, keep_macs=0.5) -> PruneRun``.

Everything a run needs is checked before the model is loaded (budget, strategy and knobs, target,
calibration folder, weight source, output folder), the output folder is locked for the run, and
``model.safetensors``, ``plan.json`` and ``report.json`` land together as one unit (see
:class:`rmtdeploy.io.OutputFolder`). ``rmtdeploy prune`` is a thin shell over this function, and
``compose`` will call it as its prune step.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmtdeploy.adapters import get_adapter
from rmtdeploy.data import open_data
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import OutputFolder
from rmtdeploy.models import LoadedModel, ModelSource, model_source
from rmtdeploy.pruning.arguments import HEAD_ROUNDINGS
from rmtdeploy.pruning.plan import PRUNED_FILES, layer_report, write_pruned
from rmtdeploy.pruning.result import PruneResult
from rmtdeploy.pruning.table_allocation import DEFAULT_TRUST as DEFAULT_TABLE_TRUST
from rmtdeploy.scores import get_strategy, strategy_names
from rmtdeploy.scores.request import (
    DEFAULT_STRATEGY,
    SHORT_DISTILL_STEPS,
    PruneSettings,
    check_prune_request,
    default_strategy,
    finetune_steps_for,
)

REPORT_FILE = "report.json"
PRUNE_FILES = (*PRUNED_FILES, REPORT_FILE)
DEFAULT_TARGET = "jetson"
DEFAULT_CALIBRATION_IMAGES = 512
# A strategy that fine-tunes between its pruning steps distils this many AdamW steps after each step when
# calibration images are given and no count is: two passes over 512 images in batches of 32. Short: it
# repairs, it does not train (that is the fine-tune stage's work).

Status = Callable[[str], None]


@dataclass
class PruneRun:
    """A finished prune stage: the pruned model, its plan and the folder that holds them.

    ``to_dict()`` is ``report.json``, whose schema this class alone owns."""

    directory: Path
    result: PruneResult
    model_name: str
    weights: str
    target: str
    round_to: int
    round_to_from: str
    head_rounding: str
    finetune_steps: int
    # TensorRT targets: head sizes its fused attention kernels cannot take (rmtdeploy.engine.attention)
    attention_problems: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def plan(self) -> dict[str, Any]:
        return self.result.plan

    def to_dict(self) -> dict[str, Any]:
        result = self.result
        return {
            "model": self.model_name,
            "weights": self.weights,
            "strategy": result.plan["strategy"],
            "target": self.target,
            "round_to": self.round_to,
            "round_to_from": self.round_to_from,
            "head_rounding": self.head_rounding,
            "finetune_steps": self.finetune_steps,
            "attention_fusion_problems": self.attention_problems,
            "macs": {
                "dense": result.dense_macs,
                "pruned": result.pruned_macs,
                "kept": round(result.macs_kept, 4),
            },
            "params": {
                "dense": result.dense_params,
                "pruned": result.pruned_params,
                "kept": round(result.params_kept, 4),
            },
            "counted_by": "rmtdeploy.macs.count_ops (torch-pruning's counter; layer subclasses, weights used through "
            "F.linear and timm attentions' projections counted as they run), batch 1, input "
            + "x".join(map(str, result.plan["input_size"])),
            **layer_report(result.plan),
        }


def prune(
    model: str | ModelSource | LoadedModel,
    out: str | os.PathLike,
    *,
    keep_macs: float | None = None,
    keep_params: float | None = None,
    strategy: str | None = None,
    knobs: dict[str, Any] | None = None,
    target: str = DEFAULT_TARGET,
    round_to: int | None = None,
    min_channels: int = 8,
    head_rounding: str = "floor",
    calibration: str | os.PathLike | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    finetune_steps: int | None = None,
    latency_aware: bool = False,
    latency_table: str | os.PathLike | None = None,
    latency_budget_ms: float | None = None,
    latency_table_trust: float | None = None,
    strict: bool = False,
    force: bool = False,
    status: Status | None = None,
) -> PruneRun:
    """Prune ``model`` (a name, a :class:`ModelSource` or a loaded model) and write it to ``out``.

    The budget is ``keep_macs`` or ``keep_params`` (a fraction in (0, 1]). ``strategy`` with its ``knobs``
    scores the channels (``rmtdeploy.scores``; None: :func:`rmtdeploy.scores.request.default_strategy`, which
    with calibration images and no knobs picks by the model's family, on the accuracy benchmark's evidence);
    ``target`` (a profile name, alias or YAML path) sets the channel multiple unless ``round_to`` does.
    ``calibration``: an ImageFolder whose first ``calibration_images`` images re-estimate BatchNorm
    statistics, and, for a strategy that fine-tunes
    between its steps, the images of a short distillation from the dense model (``finetune_steps`` AdamW
    steps per pruning step; default :data:`SHORT_DISTILL_STEPS` with calibration images, else none).
    ``latency_aware`` meets the budget with the MAC-only allocation and up to six tilted ones and keeps the one
    that runs fastest on ONNX Runtime CPU at equal MACs (:mod:`rmtdeploy.pruning.latency`).
    ``latency_table`` (a JSON file measured here or on the board, :mod:`rmtdeploy.pruning.latency_table`)
    chooses the widths instead: the most importance kept per predicted ms, at the budget, which may then
    be ``latency_budget_ms`` (the table's prediction meets it) instead of a keep fraction, each unit within
    ``latency_table_trust`` (default :data:`rmtdeploy.pruning.table_allocation.DEFAULT_TRUST`) of the width the
    strategy's own allocation gives it.
    For a TensorRT target the pruned model's attention head sizes are checked against TensorRT's fused
    attention kernels (:mod:`rmtdeploy.engine.attention`): reported, or refused with ``strict``.
    An existing output is replaced only with ``force``. ``status(text)`` receives progress lines.
    """
    settings = check_prune_request(
        keep_macs, keep_params, strategy or DEFAULT_STRATEGY, knobs, target, round_to, min_channels,
        head_rounding, calibration, calibration_images, finetune_steps, latency_budget_ms=latency_budget_ms,
        latency_table_trust=latency_table_trust,
    )  # fmt: skip
    allocation = _allocation_options(latency_aware, latency_table, latency_budget_ms, settings.strategy,
                                     latency_table_trust)  # fmt: skip
    source = model_source(model)
    source.check()
    with OutputFolder(out, PRUNE_FILES, force=force, stage="prune") as folder:
        loaded = source.load()
        if strategy is None:
            settings = _default_for_family(settings, loaded, knobs, finetune_steps, status, allocation)
        _check_supported(loaded, allocation, settings.strategy)
        batches = _calibration_batches(settings.calibration, loaded, calibration_images)
        result = _run_strategy(
            settings, loaded, batches, status, keep_macs=keep_macs, keep_params=keep_params,
            min_channels=min_channels, head_rounding=head_rounding, **allocation,
        )  # fmt: skip
        _verify_unproven(loaded, result, status)
        problems = _attention_check(settings.target, result.model, strict, status)
        run = PruneRun(
            directory=Path(out),
            result=result,
            model_name=loaded.name,
            weights=loaded.weights,
            target=settings.target.name,
            round_to=settings.round_to,
            round_to_from=settings.round_to_from,
            head_rounding=head_rounding,
            finetune_steps=settings.finetune_steps,
            attention_problems=problems,
        )
        write_pruned(folder, result)
        folder.write_json(REPORT_FILE, run.to_dict())
        run.files = folder.commit()
    return run


def _default_for_family(
    settings: PruneSettings, loaded: LoadedModel, knobs, finetune_steps, status, allocation=None
) -> PruneSettings:
    """The settings with the default strategy for ``loaded``'s family (the data-free default was checked)."""
    have_data = settings.calibration is not None
    own = default_strategy(loaded.family, have_data, knobs)
    name = family_default(loaded, have_data, knobs, chooses_widths=bool(allocation))
    if name == settings.strategy.name:
        return settings
    if name != own:  # the family's own default ranks across layers (rmt on Hiera)
        _say(status, f"strategy {name}: {own}, the {loaded.family} family's default, ranks channels across "
                     f"layers, and {_ALLOCATION_NAMES[_allocation_kind(allocation)]} chooses each unit's width")  # fmt: skip
    else:
        data = " with calibration images" if have_data else ""
        _say(status, f"strategy {name}: the default for the {loaded.family} family{data} "
                     "(docs/strategies.md, 'Which strategy to pick')")  # fmt: skip
    chosen = get_strategy(name)
    steps = finetune_steps_for(finetune_steps, chosen, have_images=True)
    return dataclasses.replace(settings, strategy=chosen, finetune_steps=steps)


def family_default(loaded: LoadedModel, have_data: bool, knobs, *, chooses_widths: bool = False) -> str:
    """The strategy a prune of ``loaded`` runs when none is asked for (:func:`default_strategy`); where the
    widths are chosen by something else (``chooses_widths``: a latency table, the latency-aware tilts) and
    that default ranks channels across layers (rmt on Hiera), :data:`DEFAULT_STRATEGY`."""
    name = default_strategy(loaded.family, have_data, knobs)
    if chooses_widths and get_strategy(name).ranks_across_layers(loaded.model):
        return DEFAULT_STRATEGY
    return name


_ALLOCATION_NAMES = {"latency_table": "the latency table", "latency_weights": "latency-aware allocation"}


def _allocation_kind(allocation: dict[str, Any]) -> str:
    return "latency_table" if "latency_table" in allocation else "latency_weights"


def _run_strategy(
    settings: PruneSettings, loaded: LoadedModel, batches, status, **pruner_options
) -> PruneResult:
    _say(status, f"pruning {loaded.name} with {settings.strategy.name}")
    return settings.strategy.prune(
        loaded.model,
        round_to=settings.round_to,
        calibration_batches=batches,
        model_name=loaded.name,
        provenance={
            "weights": loaded.weights,
            "target": settings.target.name,
            "calibrated": batches is not None,
            "finetune_steps": settings.finetune_steps,
            **({"labels": list(loaded.labels)} if getattr(loaded, "labels", None) else {}),
        },
        **_hooks(settings, loaded, batches, status),
        **pruner_options,
    )


def _attention_check(profile, model, strict: bool, status: Status | None) -> list[str]:
    """TensorRT targets: head sizes its fused attention will not take; an error under ``strict``."""
    if profile.backend != "tensorrt":
        return []
    from rmtdeploy.engine.attention import attention_fusion_problems

    problems = attention_fusion_problems(model, profile.precision)
    if problems and strict:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RmtdeployError(
            f"target {profile.name} ({profile.precision}): {problems[0]}{more}; {{param}} refuses such a plan",
            param="strict",
        )
    for problem in problems:
        _say(status, f"warning: {problem}")
    return problems


def _check_supported(loaded: LoadedModel, allocation: dict[str, Any] | None = None, strategy=None) -> None:
    """The family's adapter refuses in seconds what it cannot prune; a latency table measured on another
    model, and a strategy ranking across layers under an allocation that chooses each unit's width, are
    refused (before spectra are fitted)."""

    get_adapter(loaded.model)
    allocation = allocation or {}
    if allocation.get("latency_table") is not None:
        read_latency_table(allocation["latency_table"], loaded)
    if allocation and strategy is not None and strategy.ranks_across_layers(loaded.model):
        kind = _allocation_kind(allocation)
        raise RmtdeployError(
            f"strategy '{strategy.name}' ranks the {loaded.family} family's channels across layers (knob "
            f"allocation={getattr(strategy, 'allocation', 'global')}), and {{param}} chooses each unit's width: "
            "add --knob allocation=uniform, or choose another strategy",
            param="latency_table" if kind == "latency_table" else "latency_aware",
        )


def read_latency_table(table, loaded: LoadedModel | None = None):
    """A latency table (a JSON path or a ``LatencyTable``) read and checked; against ``loaded``'s model when
    given (a table measured on another model is refused)."""
    from rmtdeploy.pruning.graph import layer_widths
    from rmtdeploy.pruning.latency_table import LatencyTable, load_latency_table

    table = table if isinstance(table, LatencyTable) else load_latency_table(table)
    if loaded is not None:
        table.check_model(layer_widths(loaded.model), loaded.name)
    return table


def _allocation_options(latency_aware: bool, table, budget_ms, strategy, trust=None) -> dict[str, Any]:
    """The pruner options that choose the widths: the measured tilts, or a latency table (read and checked
    here, before the model loads), or none (the MAC allocation)."""
    if table is None:
        if budget_ms is not None:
            raise RmtdeployError("{param} is met by a latency table's prediction, and no latency table is given",
                                 param="latency_budget_ms")  # fmt: skip
        if trust is not None:
            raise RmtdeployError("{param} bounds a latency table's allocation, and no latency table is given",
                                 param="latency_table_trust")  # fmt: skip
        if not latency_aware:
            return {}
        from rmtdeploy.benchmark.allocation import fastest_allocation

        return {"latency_weights": fastest_allocation}
    if latency_aware:
        raise RmtdeployError(
            "{param} and latency-aware allocation each choose the widths: give one", param="latency_table"
        )
    if strategy.steps > 1:
        raise RmtdeployError(
            f"{{param}} describes the dense model; strategy '{strategy.name}' prunes in {strategy.steps} steps, each "
            "from an already pruned one (use a one-shot strategy, or steps=1)",
            param="latency_table",
        )
    return {
        "latency_table": read_latency_table(table),
        **({"latency_budget_ms": budget_ms} if budget_ms is not None else {}),
        **({"latency_table_trust": trust} if trust is not None else {}),
    }


def _verify_unproven(loaded: LoadedModel, result: PruneResult, status: Status | None) -> None:
    """A model pruned by an adapter not written for it (the generic one) is accepted only once verified."""
    from rmtdeploy.adapters import get_adapter

    if not get_adapter(loaded.model).needs_verification:
        return
    from rmtdeploy.coverage import verify_pruned

    _say(status, f"verifying the pruned {loaded.name} (generic adapter)")
    verification = verify_pruned(loaded.model, result)
    if not verification.ok:
        raise RmtdeployError(f"refused {loaded.name} (generic adapter): {verification.failures[0]}")


def _calibration_batches(data, loaded: LoadedModel, images: int):
    """``images`` training images of the calibration data, streamed anew on every pass."""
    if data is None:
        return None
    from rmtdeploy.data.source import calibration_batches

    return calibration_batches(data, loaded.model, images)


def _hooks(settings: PruneSettings, loaded: LoadedModel, batches, status: Status | None) -> dict[str, Any]:
    """The strategy's between-steps fine-tune: a short distillation from the dense model, counted in
    ``status``. The teacher is the loaded model itself: pruning works on copies and leaves it dense."""
    if not settings.finetune_steps:
        return {}
    from rmtdeploy.finetuning import distill

    rounds = itertools.count(1)
    total = settings.strategy.steps

    def finetune(student):
        label = f"distilling after pruning step {next(rounds)}/{total},"
        return distill(
            student, loaded.model, batches, steps=settings.finetune_steps, progress=_counter(status, label)
        )

    return {"finetune": finetune}


def _counter(status: Status | None, label: str):
    """``start(total) -> advance(n)`` that reports ``label step i/total`` through ``status``."""
    if status is None:
        return None

    def start(total: int):
        done = 0
        status(f"{label} step 0/{total}")

        def advance(n: int = 1):
            nonlocal done
            done += n
            status(f"{label} step {done}/{total}")

        return advance

    return start


def _say(status: Status | None, text: str) -> None:
    if status is not None:
        status(text)


# Besides the stage call, what its callers (the pipeline, the CLI) use: they import nothing from the
# mechanisms below the stage floor (docs/architecture.md, tests/test_architecture.py).
__all__ = [
    "DEFAULT_STRATEGY", "DEFAULT_TABLE_TRUST", "default_strategy", "family_default", "HEAD_ROUNDINGS", "SHORT_DISTILL_STEPS", "PruneRun", "get_adapter", "get_strategy", "open_data", "prune", "read_latency_table", "strategy_names",
]  # fmt: skip
