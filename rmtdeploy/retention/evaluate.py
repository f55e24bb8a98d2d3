"""Every criterion at every keep on one dense model: top-1 right after pruning, then after a fixed short
distillation from the dense model or after the fine-tune stage's default recipe, and the scoring time.

Per point: top-1 right after pruning (BatchNorm recalibrated on the seed's calibration draw for CNNs),
top-1 after a fixed short label-free distillation from the dense model (:func:`rmtdeploy.finetuning.distill`,
the same budget for every criterion) or after ``FinetuneRecipe()`` (``settings.finetune == "default"``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from rmtdeploy.retention.criteria import prune_with
from rmtdeploy.retention.families import train_dense
from rmtdeploy.retention.settings import Settings


def _loader(settings: Settings, split: str, model, *, max_images=None):
    from rmtdeploy.data import builtin_loader

    return builtin_loader(settings.dataset, split, model=model, augment=False, seed=None,
                          max_images=max_images, shuffle=split == "train" and max_images is None)  # fmt: skip


def val_image_count(settings: Settings) -> int:
    """How many validation images every top-1 is measured on."""
    return len(_loader(settings, "val", None, max_images=settings.val_images).dataset)


def _batches(loader) -> list:
    return [(images, labels) for images, labels in loader]


def seeded_draw(settings: Settings, seed: int, count: int, salt: int, *, model, batch_size: int = 64) -> list:
    """``count`` training images drawn with ``seed`` (a different draw per seed and purpose ``salt``), as
    a list of (images, labels) batches, normalised with ``model``'s mean and std, as it was trained and is
    evaluated (ViT's are 0.5, the others ImageNet's: drawing with a default once fed ViT off-distribution
    calibration and distillation images)."""
    from rmtdeploy.data import builtin_dataset
    from rmtdeploy.data.builtin import model_input_spec

    spec = model_input_spec(model)
    dataset = builtin_dataset(
        settings.dataset, "train", image_size=settings.image_size, mean=spec["mean"], std=spec["std"]
    )
    generator = torch.Generator().manual_seed(seed * 1000 + salt)
    indices = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    subset = torch.utils.data.Subset(dataset, indices)
    return _batches(torch.utils.data.DataLoader(subset, batch_size=batch_size))


def _worker_log(events):
    """Log lines to ``events`` (a queue the driver drains) or, without one, to stdout."""
    parent = os.getppid()

    def log(message: str) -> None:
        # A worker outlives a killed driver until its task ends (minutes, both cores): stop with it.
        if events is not None:
            if os.getppid() != parent:
                os._exit(1)
            events.put(("log", message))
        else:
            print(message, flush=True)

    return log


def run_family_seed(
    family: str, seed: int, settings: Settings, cache: str | Path | None, events=None
) -> dict:
    """Train (or load from ``cache``) one dense model and score every criterion at every keep on it, in
    one torch thread. ``events`` (anything with ``put``, e.g. a process queue) receives ``("point",
    family)`` after each point and ``("log", message)`` lines. Returns the dense record (with its top-1
    on the validation images, ``top1_eval``) and the points."""
    torch.set_num_threads(1)
    from rmtdeploy.finetuning import distill, evaluate_top1, teacher_outputs

    log = _worker_log(events)
    dense, record = train_dense(family, seed, settings, cache, log)
    val = _batches(_loader(settings, "val", dense, max_images=settings.val_images))
    calibration = seeded_draw(settings, seed, settings.calibration_images, salt=1, model=dense)
    distill_set = seeded_draw(
        settings, seed, settings.distill_images, salt=2, model=dense, batch_size=settings.distill_batch
    )
    teacher_logits = teacher_outputs(dense, distill_set)
    dense_top1 = evaluate_top1(dense, val)
    table = _latency_table(settings, family)
    if settings.export_onnx:
        _export(dense, settings, f"{family}-s{seed}-dense")
    points = []
    for keep in settings.keeps:
        for criterion in settings.criteria:
            started = time.perf_counter()
            result, scoring_s = prune_with(criterion, dense, keep, calibration, image_size=settings.image_size,
                                           round_to=settings.round_to, hessian_samples=settings.hessian_samples,
                                           seed=seed, latency_table=table, table_trust=settings.table_trust)  # fmt: skip
            prune_s = time.perf_counter() - started
            pruned_top1 = evaluate_top1(result.model, val)
            point = {
                "family": family, "seed": seed, "keep": keep, "criterion": criterion,
                "macs_kept": round(result.macs_kept, 4), "params_kept": round(result.params_kept, 4),
                "top1_pruned": round(pruned_top1, 2), "scoring_s": round(scoring_s, 3), "prune_s": round(prune_s, 2),
                "widths": width_summary(result),
            }  # fmt: skip
            if settings.finetune == "distill":
                fine = distill(result.model, dense, distill_set, steps=settings.distill_steps,
                               lr=settings.distill_lr, seed=seed, teacher_logits=teacher_logits)  # fmt: skip
                point |= {"top1_distilled": round(evaluate_top1(result.model, val), 2),
                          "kd_loss_before": round(fine.loss_before, 4), "kd_loss_after": round(fine.loss_after, 4)}  # fmt: skip
            else:
                point |= finetune_default(result.model, dense, settings, seed)
            if table is not None:
                point["predicted_ms"] = round(table.predict(table.widths_of(result.plan["operations"])), 5)
            if settings.export_onnx and criterion in ("hybrid", "hybrid-table", "hybrid-table-macs"):
                point["onnx"] = _export(result.model, settings, f"{family}-s{seed}-{keep:g}-{criterion}")
            points.append(point)
            if events is not None:
                events.put(("point", family))
            log(f"{family} s{seed} keep {keep} {criterion:12s} MACs {result.macs_kept:.3f} "
                f"top-1 {pruned_top1:5.1f} -> {point[settings.after_key]:5.1f} (dense {dense_top1:.1f})")  # fmt: skip
    return {"dense": {**record, "top1_eval": round(dense_top1, 2)}, "points": points}


def _latency_table(settings: Settings, family: str):
    """The family's latency table from ``settings.latency_tables`` (None without that folder)."""
    if not settings.latency_tables:
        return None
    from rmtdeploy.pruning.latency_table import load_latency_table

    return load_latency_table(Path(settings.latency_tables) / f"{family}.latency_table.json")


def _export(model, settings: Settings, name: str) -> str:
    """``model`` as ONNX Runtime's graph (batch 1, static) in ``settings.export_onnx``; its file name."""
    from rmtdeploy.exporting import export_for_timing

    folder = Path(settings.export_onnx)
    folder.mkdir(parents=True, exist_ok=True)
    export_for_timing(model.eval(), folder / f"{name}.onnx", (3, settings.image_size, settings.image_size))
    return f"{name}.onnx"


def finetune_default(model, dense, settings: Settings, seed: int) -> dict:
    """The fine-tune stage's default recipe on the whole training split, keeping the last epoch (what a
    user gets without a validation split to pick by); the start is the trainer's own (BN recalibrated)."""
    from rmtdeploy.finetuning.recipe import FinetuneRecipe
    from rmtdeploy.finetuning.trainer import train_in_memory

    epochs = {"epochs": settings.finetune_epochs} if settings.finetune_epochs else {}
    started = time.perf_counter()
    trainer = train_in_memory(
        model, dense, settings.dataset, recipe=FinetuneRecipe(seed=seed, **epochs), keep="last"
    )
    curve = [m["val_top1"] for m in trainer.metrics if m["event"] == "epoch"]
    start = next(m for m in trainer.metrics if m["event"] == "start")
    return {"top1_finetuned": round(curve[-1], 2), "top1_finetune_start": round(start["val_top1"], 2),
            "finetune_curve": [round(v, 2) for v in curve], "finetune_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def width_summary(result) -> dict:
    """Kept fraction of output channels per module (the allocation a criterion chose), for diagnosis."""
    dense, pruned = result.plan["widths"]["dense"], result.plan["widths"]["pruned"]
    return {name: round(pruned[name] / width, 3) for name, width in dense.items() if pruned[name] != width}


def recipe_conditions(settings: Settings) -> dict | None:
    """The default fine-tune recipe a ``finetune == "default"`` run used (its seed aside: one per seed)."""
    if settings.finetune != "default":
        return None
    from rmtdeploy.finetuning.recipe import FinetuneRecipe

    epochs = {"epochs": settings.finetune_epochs} if settings.finetune_epochs else {}
    return {k: v for k, v in FinetuneRecipe(**epochs).to_dict().items() if k != "seed"}
