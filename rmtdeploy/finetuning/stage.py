"""The fine-tune stage as one library call: ``finetune(pruned_dir, data, out, epochs=3) -> FinetuneRun``.

Everything is checked before a model is loaded (recipe, device, data — every image file's header and
end —, the pruned folder's plan and manifest, the teacher's source, the output folder, the checkpoint
folder). The student is the pruned model; the teacher is the dense model, rebuilt from what the plan
records (timm name + build arguments + weight source) or given. The output folder holds what
``rmtdeploy.load_pruned`` reads (``model.safetensors`` + ``plan.json`` with the fine-tune record
appended under ``"finetune"``) plus ``metrics.jsonl`` and ``finetune.json``, written as one unit.

With ``progressive=`` (the ``dynamic`` strategy) the input is a dense model instead, and pruning happens
during training: see :mod:`rmtdeploy.finetuning.progressive`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.finetuning.checkpoint import Checkpoints
from rmtdeploy.finetuning.distill import evaluate_top1
from rmtdeploy.finetuning.distributed import Distributed, resolve_device, setup_distributed
from rmtdeploy.finetuning.progressive import DEFAULT_PRUNING_FRACTION, ProgressivePruning
from rmtdeploy.finetuning.recipe import FinetuneRecipe
from rmtdeploy.finetuning.scratch import ScratchRecipe, trained_model
from rmtdeploy.finetuning.trainer import Reporter, StopRequested, Trainer, TrainingData
from rmtdeploy.io import OutputFolder, json_text
from rmtdeploy.pruning.plan import PLAN_FILE, WEIGHTS_FILE, write_pruned
from rmtdeploy.pruning.result import PruneResult

FINETUNE_FILE = "finetune.json"
METRICS_FILE = "metrics.jsonl"
FINETUNE_FILES = (WEIGHTS_FILE, PLAN_FILE, FINETUNE_FILE, METRICS_FILE)
KEEP_CHOICES = ("best", "last")


@dataclass
class FinetuneRun:
    """A finished fine-tune: the trained student, its plan, the training record and the output folder.

    ``to_dict()`` is ``finetune.json``, whose schema this class alone owns."""

    directory: Path
    result: PruneResult
    record: dict[str, Any]
    metrics: list[dict[str, Any]]
    wall_s: float = 0.0  # not in any file: identical runs write identical bytes
    files: list[Path] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.result.model

    @property
    def plan(self) -> dict[str, Any]:
        return self.result.plan

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped after a whole step and left a resumable checkpoint (the message says where)."""


@dataclass(frozen=True)
class _Inputs:
    """What the run reads, checked: the student's source, the teacher's, the data, the recipe."""

    recipe: FinetuneRecipe
    data: Any  # DataSource
    pruned: Path | None
    plan: dict[str, Any] | None
    teacher: Any
    progressive: Any


def finetune(
    pruned: str | os.PathLike | None,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    epochs: int | None = None,
    recipe: FinetuneRecipe | None = None,
    teacher: Any = None,
    new_head: bool = False,
    keep: str = "best",
    device: str = "auto",
    workers: int = 0,
    val_fraction: float | None = None,
    convert_grey: bool = False,
    check_files: bool = True,
    progressive: Any = None,
    resume: bool = False,
    force: bool = False,
    reporter: Reporter | None = None,
) -> FinetuneRun:
    """Fine-tune the pruned model in folder ``pruned`` on ``data`` and write the result to ``out``.

    ``data``: a built-in dataset's name or an ImageFolder (``train/`` + ``val/``, or one folder split by
    ``val_fraction``). ``recipe`` (:class:`FinetuneRecipe`; ``epochs`` overrides its epochs) says how to
    train. ``teacher``: the dense model (module, model source or checkpoint path); default: rebuilt from
    the plan. ``new_head`` re-initialises the classifier for ``data``'s classes (trained on labels; the
    teacher's logits no longer apply). ``keep``: the output holds the best epoch by validation top-1
    (the start included) or the last. ``progressive``: a :class:`ProgressivePruning` — then ``pruned`` is
    a dense model source (name, :class:`ModelSource` or loaded model) pruned during training. ``resume``
    continues an interrupted run from ``<out>.checkpoints``. Runs under ``torchrun`` train data-parallel.
    """
    reporter = reporter or Reporter()
    # The quick refusals first: nobody should wait for an image scan to learn that --force is missing.
    from rmtdeploy.io import check_output_dir

    check_output_dir(out, FINETUNE_FILES, force=force, stage="finetune")
    target_device = resolve_device(device)
    Checkpoints(out, writer=False).check_start(resume=resume, force=force)
    inputs = _check(pruned, data, epochs, recipe, teacher, new_head, keep, val_fraction, convert_grey,
                    check_files, progressive, workers, reporter)  # fmt: skip
    dist = setup_distributed(target_device)
    checkpoints = Checkpoints(out, writer=dist.is_main)
    folder = OutputFolder(out, FINETUNE_FILES, force=force, stage="finetune") if dist.is_main else None
    with folder if folder is not None else contextlib.nullcontext():
        started = time.perf_counter()
        if not resume:
            checkpoints.remove()  # a fresh start (force): the old run's state and live log go
        student, plan, dense_teacher, loaded = _load_models(inputs, reporter)
        student, plan = _fit_head(student, plan, inputs.data, new_head)
        recipe = _effective_recipe(inputs.recipe, new_head, dense_teacher)
        trainer = Trainer(
            student=student, teacher=_teacher_on(dense_teacher, target_device, recipe), recipe=recipe,
            data=_training_data(inputs.data, student, recipe, workers), device=target_device, dist=dist,
            checkpoints=checkpoints, fingerprint=_fingerprint(inputs, recipe, dist, new_head, keep),
            reporter=reporter,
        )  # fmt: skip
        result = _train(trainer, inputs, plan, loaded, resume, checkpoints)
        record = _record(trainer, inputs, recipe, result, new_head, keep, dist)
        result = _final_result(trainer, result, record, keep)
        run = FinetuneRun(Path(out), result, record, trainer.metrics, wall_s=time.perf_counter() - started)
        if folder is not None:
            write_pruned(folder, result)
            folder.write_text(METRICS_FILE, "".join(json.dumps(m) + "\n" for m in trainer.metrics))
            folder.write_text(FINETUNE_FILE, json_text(record))
            run.files = folder.commit()
            checkpoints.remove()
        dist.barrier()
    return run


def _train(trainer: Trainer, inputs: _Inputs, plan, loaded, resume, checkpoints) -> PruneResult:
    """Start (or resume) and train to the end; Ctrl-C becomes :class:`StageInterrupted` with a checkpoint."""
    try:
        if resume:
            state = checkpoints.load(trainer.fingerprint)
            extra = json.loads(state["extra_json"])
            if "plan" in extra:  # a progressively pruned student: rebuild it
                from rmtdeploy.pruning.plan import rebuild_pruned_architecture

                plan = extra["plan"]
                trainer.set_student(rebuild_pruned_architecture(plan))
                trainer.extra_state = extra  # the plan and the per-step widths finetune.json reports
            trainer.load_state_dict(state)
            trainer.reporter.status(f"resumed at epoch {trainer.epoch + 1}, step {trainer.step}")
        elif inputs.progressive is not None:
            from rmtdeploy.finetuning.progressive import prune_while_training

            plan = prune_while_training(trainer, loaded, inputs.progressive)
        else:
            trainer.start()
        trainer.train_until(trainer.total_steps)
    except StopRequested as stop:
        raise StageInterrupted(
            f"{stop}; a checkpoint is at {checkpoints.path}: continue with resume=True (--resume)"
        ) from None
    return PruneResult(
        model=trainer.student, plan=plan, dense_macs=plan["macs"]["dense"], pruned_macs=plan["macs"]["pruned"],
        dense_params=plan["params"]["dense"], pruned_params=plan["params"]["pruned"],
    )  # fmt: skip


def _check(pruned, data, epochs, recipe, teacher, new_head, keep, val_fraction, convert_grey, check_files,
           progressive, workers, reporter) -> _Inputs:  # fmt: skip
    """Every argument rule, before any model is loaded."""
    from rmtdeploy.data import open_data
    from rmtdeploy.data.source import DEFAULT_VAL_FRACTION
    from rmtdeploy.pruning.plan import read_plan

    recipe = (recipe or FinetuneRecipe()).check()
    if epochs is not None:
        recipe = FinetuneRecipe.from_options(**{**recipe.to_dict(), "epochs": epochs})
    if keep not in KEEP_CHOICES:
        raise RmtdeployError(
            f"{{param}} must be one of {', '.join(KEEP_CHOICES)}, got '{keep}'", param="keep"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise RmtdeployError(f"{{param}} must be an integer >= 0, got {workers}", param="workers")
    plan = None
    if progressive is not None:
        progressive = progressive.check(pruned)
    else:
        if pruned is None or not Path(pruned).is_dir():
            raise RmtdeployError(f"pruned-model directory not found: {pruned}", param="pruned")
        plan = read_plan(pruned)
        from rmtdeploy.io import verify_output_folder
        from rmtdeploy.pruning.plan import PRUNED_MODEL_STAGES

        verify_output_folder(pruned, PRUNED_MODEL_STAGES)
    teacher_spec = _check_teacher(teacher, plan, recipe, new_head)
    val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction  # 0 is an error, not unset
    source = open_data(data, val_fraction=val_fraction, convert_grey=convert_grey, check_files=check_files,
                       progress=_scan_progress(reporter))  # fmt: skip
    return _Inputs(
        recipe, source, Path(pruned) if plan is not None else None, plan, teacher_spec, progressive
    )


def _scan_progress(reporter: Reporter):
    def start(total: int):
        reporter.status(f"checking {total} image files")
        return None

    return start


def _check_teacher(teacher, plan, recipe: FinetuneRecipe, new_head: bool):
    """The teacher as something loadable: a module, a model source, a checkpoint path, or the plan's own."""
    from rmtdeploy.models import LoadedModel, ModelSource, check_checkpoint_file

    if new_head or recipe.kd_weight == 0:
        return None  # no logits to match: the classes differ, or the loss is label-only
    if isinstance(teacher, (nn.Module, LoadedModel)):
        return teacher
    if isinstance(teacher, ModelSource):
        teacher.check()
        return teacher
    if teacher is not None:
        check_checkpoint_file(Path(teacher))
        return Path(teacher)
    if plan is None:
        return None  # progressive: the dense model itself teaches
    weights = plan.get("weights")
    if weights in (None, "random"):
        raise RmtdeployError(
            "the pruned model was made from random weights; a random teacher teaches nothing: give the dense "
            "model as {param}, or train on labels only (kd_weight 0, ce_weight > 0)",
            param="teacher",
        )
    if str(weights).startswith("checkpoint:"):
        path = Path(str(weights).split(":", 1)[1])
        if not path.is_file():
            raise RmtdeployError(
                f"the teacher is the dense model the plan records, checkpoint {path}, which is not found: "
                "give the dense model as {param}",
                param="teacher",
            )
        check_checkpoint_file(path)
        return path
    return "pretrained"


def _load_models(inputs: _Inputs, reporter: Reporter):
    """(student, its plan, the dense teacher or None, the loaded dense model when pruning while training)."""
    if inputs.progressive is not None:
        loaded = inputs.progressive.source.load()
        reporter.status(f"loaded dense {loaded.name} ({loaded.weights}); it will be pruned while training")
        return copy.deepcopy(loaded.model), None, loaded.model, loaded
    from rmtdeploy.pruning.plan import load_pruned

    result = load_pruned(inputs.pruned)
    reporter.status(f"loaded pruned {result.plan['model']} from {inputs.pruned}")
    return result.model, result.plan, _load_teacher(inputs.teacher, result.plan), None


def _load_teacher(spec, plan: dict[str, Any]) -> nn.Module | None:
    import timm

    from rmtdeploy.models import LoadedModel, ModelSource, _create_pretrained, load_checkpoint_strict

    if spec is None or isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, LoadedModel):
        return spec.model
    if isinstance(spec, ModelSource):
        return spec.load().model
    if spec == "pretrained":
        return _create_pretrained(plan["model"], dict(plan["create_kwargs"])).eval()
    model = timm.create_model(plan["model"], pretrained=False, **plan["create_kwargs"])
    load_checkpoint_strict(model, spec)
    return model.eval()


def _fit_head(student: nn.Module, plan, data, new_head: bool):
    """The student's classifier against the data's classes: equal, re-initialised, or a clear error."""
    classes = getattr(student, "num_classes", None)
    if new_head:
        student.reset_classifier(data.num_classes)
        if plan is not None:
            plan = {**plan, "create_kwargs": {**plan["create_kwargs"], "num_classes": data.num_classes}}
        return student, plan
    if classes is not None and classes != data.num_classes:
        raise RmtdeployError(
            f"the model predicts {classes} classes but {data.name} has {data.num_classes}; "
            "re-initialise and train the classifier with {param}",
            param="new_head",
        )
    return student, plan


def _effective_recipe(recipe: FinetuneRecipe, new_head: bool, teacher) -> FinetuneRecipe:
    """A new head cannot match the teacher's logits: it trains on labels alone."""
    if new_head or teacher is None:
        if recipe.ce_weight == 0:
            return FinetuneRecipe.from_options(**{**recipe.to_dict(), "kd_weight": 0.0, "ce_weight": 1.0})
        return FinetuneRecipe.from_options(**{**recipe.to_dict(), "kd_weight": 0.0})
    return recipe


def _teacher_on(teacher: nn.Module | None, device: torch.device, recipe: FinetuneRecipe):
    if teacher is None or recipe.kd_weight == 0:
        return None
    return teacher.to(device).eval()  # runs under no_grad; its parameters are left as given


def _training_data(source, student: nn.Module, recipe: FinetuneRecipe, workers: int) -> TrainingData:
    plain = source.dataset("train", student)
    train = source.dataset("train", student, train=True) if recipe.augment else plain
    return TrainingData(train=train, plain=plain, val=source.dataset("val", student), workers=workers)


def _fingerprint(
    inputs: _Inputs, recipe: FinetuneRecipe, dist: Distributed, new_head: bool, keep: str
) -> dict:
    student = inputs.plan["weights_sha256"] if inputs.plan is not None else inputs.progressive.describe()
    return {
        "student": student,
        "data": json.dumps(inputs.data.describe(), sort_keys=True),
        "recipe": json.dumps(recipe.to_dict(), sort_keys=True),
        "world": dist.world,
        "new_head": new_head,
        "keep": keep,
    }


def _record(trainer: Trainer, inputs: _Inputs, recipe, result, new_head, keep, dist) -> dict[str, Any]:
    """``finetune.json``: what was trained, on what, how, and what it reached (every number measured)."""
    epochs = [m for m in trainer.metrics if m["event"] == "epoch"]
    start = next(m for m in trainer.metrics if m["event"] == "start")
    skipped = sorted(set(trainer.skipped))
    return {
        "input": str(inputs.pruned) if inputs.pruned is not None else inputs.progressive.describe(),
        "model": result.plan["model"],
        "data": inputs.data.describe(),
        "labels": list(inputs.data.classes),  # the classifier's index order; export writes it for apps
        "recipe": recipe.to_dict(),
        "teacher": _teacher_label(inputs, trainer),
        "new_head": new_head,
        "device": str(trainer.device), "amp": trainer.amp, "world_size": dist.world,
        "torch_threads": torch.get_num_threads(),
        "steps": trainer.step, "steps_per_epoch": trainer.steps_per_epoch,
        "top1": {
            "as_given": start["val_top1_as_given"], "start": start["val_top1"],
            "teacher": start.get("val_top1_teacher"),
            "epochs": [m["val_top1"] for m in epochs],
            "best": trainer.best["val_top1"], "best_epoch": trainer.best["epoch"],
            "last": epochs[-1]["val_top1"] if epochs else start["val_top1"],
        },
        "top5_last": epochs[-1]["val_top5"] if epochs else start["val_top5"],
        "kept": keep,
        "skipped_images": {"count": len(skipped), "files": _skipped_names(trainer, skipped)},
        "progressive": trainer.extra_state.get("widths_per_step"),
        "measured": "val top-1/top-5 in % on the data's val split, eval mode, every image once",
    }  # fmt: skip


def _teacher_label(inputs: _Inputs, trainer: Trainer) -> str | None:
    if trainer.teacher is None:
        return None
    spec = inputs.teacher
    if spec is None:
        return "the dense model itself (progressive pruning)"
    if isinstance(spec, Path):
        return f"checkpoint:{spec}"
    return spec if isinstance(spec, str) else f"given: {type(spec).__name__}"


def _skipped_names(trainer: Trainer, skipped: list[int], limit: int = 20) -> list[str]:
    path_of = getattr(trainer.data.train, "path", None)
    return [path_of(i) if path_of else str(i) for i in skipped[:limit]]


def _final_result(trainer: Trainer, result: PruneResult, record: dict[str, Any], keep: str) -> PruneResult:
    """The kept weights (best or last) in the student, and the plan with this run's record appended."""
    if keep == "best" and trainer.best is not None:
        trainer.student.load_state_dict(trainer.best["state"])
    trainer.student.cpu().eval()
    entry = {
        k: record[k] for k in ("data", "labels", "recipe", "teacher", "new_head", "steps", "top1", "kept")
    }
    plan = {**result.plan, "finetune": [*result.plan.get("finetune", []), entry]}
    result.model, result.plan = trainer.student, plan
    return result


# Besides the stage call, what its callers (the pipeline, the CLI) use: they import nothing from the
# mechanisms below the stage floor (docs/architecture.md, tests/test_architecture.py).
__all__ = [
    "DEFAULT_PRUNING_FRACTION", "Checkpoints", "FinetuneRecipe", "FinetuneRun", "ProgressivePruning", "Reporter",
    "ScratchRecipe", "evaluate_top1", "finetune", "trained_model",
]  # fmt: skip
