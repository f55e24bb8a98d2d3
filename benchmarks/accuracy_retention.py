"""Benchmark: how much accuracy each pruning criterion keeps, on real images, at equal achieved MACs.

One small model per family (ViT, DeiT, Swin, ConvNeXt, Hiera, ResNet), trained from scratch on a built-in
real dataset (``rmtdeploy.data``, MNIST-5k by default) by this script (cached per seed), is pruned to
keep-macs 0.75 / 0.5 / 0.3 by every criterion through the same pruner, adapters and width rules:

* rmtdeploy's strategies: magnitude, rmt, hybrid, edge-budget, dynamic (its between-step distillation off,
  so every criterion gets the same fine-tune budget; it switches scoring by depth);
* torch-pruning's importances as peers: group L1 (``GroupMagnitudeImportance(p=1)``), Taylor, Hessian,
  random. Group L2 is the ``magnitude`` strategy itself (the very TP class).

Per point: top-1 right after pruning (BatchNorm recalibrated on the seed's calibration draw for CNNs),
top-1 after a fixed short label-free distillation from the dense model (``rmtdeploy.finetuning.distill``, the
same budget for every criterion), and the scoring time. Writes ``results/accuracy_retention.{json,md,png}``.
With ``--finetune default`` the second column is the fine-tune stage's default recipe instead
(``FinetuneRecipe()``: KD from the dense model over the whole training split, augmented, its default
epochs), written to ``results/accuracy_retention_finetuned.*``.

    python benchmarks/accuracy_retention.py                # the full run (make bench-accuracy)
    python benchmarks/accuracy_retention.py --finetune default --criteria magnitude rmt hybrid edge-budget dynamic \
        --keeps 0.5 0.3                                    # after the default fine-tune recipe (~1.5 h)
    python benchmarks/accuracy_retention.py --quick --out /tmp/acc   # a CI-sized smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"
CACHE = Path(os.environ.get("RMTDEPLOY_CACHE", Path.home() / ".cache" / "rmtdeploy")) / "accuracy_retention"
SPECTRAL = ("rmt", "hybrid", "edge-budget", "dynamic")
STRATEGIES = ("magnitude", *SPECTRAL)
PEERS = ("tp-l1", "tp-taylor", "tp-hessian", "tp-random")
CRITERIA = (*STRATEGIES, *PEERS)
# Ablations (``--criteria``), not in the default run: rmt as it was before the benchmark (one global
# ranking, norm layers ignored) and each change alone; the "flow" score; and dynamic without its switch to
# spectral scoring (is its gain the spectrum's, or the progressive steps'?); and the head rounding of the
# width rules (torch-pruning's: any ratio > 0 takes a head). Each: (strategy, knobs, pruner options).
ABLATIONS = {
    "rmt-global": ("rmt", {"allocation": "global", "norm_scales": False}, {}),
    "rmt-global-scaled": ("rmt", {"allocation": "global", "norm_scales": True}, {}),
    "rmt-unscaled": ("rmt", {"allocation": "uniform", "norm_scales": False}, {}),
    "rmt-flow": ("rmt", {"score": "flow"}, {}),
    "dynamic-magnitude": ("dynamic", {"then": "magnitude"}, {}),
    # Latency-aware allocation (rmtdeploy.pruning.latency): does steering widths by measured cost lose accuracy?
    "hybrid-latency": ("hybrid", {}, {"latency_weights": "measure"}),
    **{f"{name}-ceil-heads": (name, {}, {"head_rounding": "ceil"}) for name in STRATEGIES},
}
LABELS = {"magnitude": "magnitude (= TP group L2)", "tp-l1": "TP group L1", "tp-taylor": "TP Taylor",
          "tp-hessian": "TP Hessian", "tp-random": "TP random"}  # fmt: skip


@dataclass(frozen=True)
class ModelRecipe:
    """A small member of a family at the benchmark's input size, and how it is trained from scratch."""

    timm_name: str
    kwargs: dict = field(default_factory=dict)
    epochs: int = 8
    lr: float = 2e-3
    batch_size: int = 64
    fixed_size: bool = True  # built for one input size (patch embeddings); CNNs take any size

    def key(self, dataset: str, image_size: int, seed: int) -> str:
        text = json.dumps([self.timm_name, self.kwargs, self.epochs, self.lr, self.batch_size, dataset,
                           image_size, seed, TRAIN_RECIPE_VERSION], sort_keys=True)  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:12]


TRAIN_RECIPE_VERSION = 1
VIT_KWARGS = {"patch_size": 8, "depth": 6}
FAMILIES = {
    "vit": ModelRecipe("vit_tiny_patch16_224", VIT_KWARGS, epochs=10, lr=1e-3),
    "deit": ModelRecipe("deit_tiny_patch16_224", VIT_KWARGS, epochs=10, lr=1e-3),
    "swin": ModelRecipe(
        "swin_tiny_patch4_window7_224",
        {"window_size": 4, "embed_dim": 48, "depths": (2, 2, 2, 2), "num_heads": (2, 4, 8, 16)},
        epochs=10,
        lr=1e-3,
    ),
    "convnext": ModelRecipe("convnext_atto", epochs=8, fixed_size=False),
    "hiera": ModelRecipe("hiera_tiny_224", {"embed_dim": 48, "num_heads": 1}, epochs=10, lr=1e-3),
    "resnet": ModelRecipe("resnet18", epochs=6, fixed_size=False),
}


@dataclass(frozen=True)
class Settings:
    dataset: str = "mnist5k"
    image_size: int = 32
    keeps: tuple[float, ...] = (0.75, 0.5, 0.3)
    criteria: tuple[str, ...] = CRITERIA
    calibration_images: int = 256  # BN recalibration, Taylor / Hessian gradients (a seeded draw per seed)
    hessian_samples: int = 64  # per-sample gradients averaged into the Hessian diagonal
    distill_images: int = 1024  # the distillation set (a seeded draw of the training split)
    distill_steps: int = 32  # AdamW steps of batch 32: one pass over the distillation set
    distill_batch: int = 32
    distill_lr: float = 1e-4
    val_images: int | None = None  # None: the whole validation split
    round_to: int = 8
    epochs_scale: float = 1.0  # quick mode trains for a fraction of the recipe's epochs
    finetune: str = "distill"  # after pruning: the short distillation above, or "default" (FinetuneRecipe())
    finetune_epochs: int | None = None  # None: the default recipe's epochs

    @property
    def after_key(self) -> str:
        return "top1_distilled" if self.finetune == "distill" else "top1_finetuned"

    @property
    def after_name(self) -> str:
        return "distillation" if self.finetune == "distill" else "fine-tuning"


def build_model(recipe: ModelRecipe, image_size: int, num_classes: int) -> torch.nn.Module:
    import timm

    size = {"img_size": image_size} if recipe.fixed_size else {}
    model = timm.create_model(recipe.timm_name, num_classes=num_classes, **size, **recipe.kwargs)
    # The model's own config says what it expects, so the adapter, data loaders and MAC counts agree.
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, image_size, image_size)}
    return model


def _loader(settings: Settings, split: str, model, *, seed=None, augment=False, max_images=None):
    from rmtdeploy.data import builtin_loader

    return builtin_loader(settings.dataset, split, model=model, augment=augment, seed=seed,
                          max_images=max_images, shuffle=split == "train" and max_images is None)  # fmt: skip


def train_dense(family: str, seed: int, settings: Settings, cache: Path, log) -> tuple[torch.nn.Module, dict]:
    """The family's model trained on the dataset's training split with ``seed``; cached by recipe + seed."""
    from safetensors.torch import load_file, save_file

    from rmtdeploy.data import get_dataset
    from rmtdeploy.io import atomic_write_json

    recipe = FAMILIES[family]
    epochs = max(1, round(recipe.epochs * settings.epochs_scale))
    recipe = dataclasses.replace(recipe, epochs=epochs)
    dataset = get_dataset(settings.dataset)
    key = recipe.key(settings.dataset, settings.image_size, seed)
    weights, record_path = (
        cache / f"{family}-s{seed}-{key}.safetensors",
        cache / f"{family}-s{seed}-{key}.json",
    )
    torch.manual_seed(seed)
    model = build_model(recipe, settings.image_size, dataset.num_classes)
    if weights.exists() and record_path.exists():
        model.load_state_dict(load_file(weights))
        return model.eval(), json.loads(record_path.read_text())
    from rmtdeploy.finetuning.scratch import ScratchRecipe, train_from_scratch

    scratch = ScratchRecipe(dataset=settings.dataset, image_size=settings.image_size, epochs=epochs,
                            lr=recipe.lr, batch_size=recipe.batch_size, seed=seed)  # fmt: skip
    trained = train_from_scratch(
        model, scratch, val_images=settings.val_images,
        on_epoch=lambda epoch, total, top1: log(f"{family} seed {seed}: epoch {epoch}/{total} val top-1 {top1:.1f}"),
    )  # fmt: skip
    curve = trained["val_curve"]
    record = {
        "family": family,
        "seed": seed,
        "timm_name": recipe.timm_name,
        "kwargs": recipe.kwargs,
        "epochs": epochs,
        "lr": recipe.lr,
        "val_curve": curve,
        "top1": curve[-1],
        "train_s": trained["train_s"],
    }
    cache.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    atomic_write_json(record_path, record)
    return model.eval(), record


def _batches(loader) -> list:
    return [(images, labels) for images, labels in loader]


def _seeded_draw(settings: Settings, seed: int, count: int, salt: int, batch_size: int = 64) -> list:
    """``count`` training images drawn with ``seed`` (a different draw per seed and purpose)."""
    from rmtdeploy.data import builtin_dataset

    dataset = builtin_dataset(settings.dataset, "train", image_size=settings.image_size)
    generator = torch.Generator().manual_seed(seed * 1000 + salt)
    indices = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    subset = torch.utils.data.Subset(dataset, indices)
    return _batches(torch.utils.data.DataLoader(subset, batch_size=batch_size))


def _gradient_copy(model, batches, per_sample: int | None) -> torch.nn.Module:
    """A copy of ``model`` whose ``.grad`` holds what TP's gradient importances read: the summed
    cross-entropy gradient (Taylor), or the mean squared per-sample gradient — the empirical Fisher
    diagonal that ``GroupHessianImportance`` expects — over ``per_sample`` images (Hessian).

    TP's own ``accumulate_grad`` keys its running sum by name but stores by parameter, so it keeps only
    the last sample; and ``prune_model`` scores a deep copy, which the accumulator would not reach. The
    Hessian diagonal is therefore put in ``.grad`` here, where the copy's scores read it."""
    copy_ = copy.deepcopy(model).eval()
    copy_.zero_grad(set_to_none=True)
    if per_sample is None:
        for images, labels in batches:
            F.cross_entropy(copy_(images), labels).backward()
        return copy_
    squares = {name: torch.zeros_like(p) for name, p in copy_.named_parameters()}
    images = torch.cat([b[0] for b in batches])[:per_sample]
    labels = torch.cat([b[1] for b in batches])[:per_sample]
    for image, label in zip(images, labels, strict=True):
        copy_.zero_grad(set_to_none=True)
        F.cross_entropy(copy_(image[None]), label[None]).backward()
        for name, p in copy_.named_parameters():
            if p.grad is not None:
                squares[name] += p.grad.pow(2)
    for name, p in copy_.named_parameters():
        p.grad = squares[name] / len(images)
    return copy_


def prune_with(criterion: str, model, keep: float, calibration: list, settings: Settings, seed: int):
    """Prune ``model`` to ``keep`` MACs with ``criterion``; returns (result, scoring seconds)."""
    import torch_pruning as tp

    from rmtdeploy.pruning import prune_model, recalibrate_batchnorm
    from rmtdeploy.scores import get_strategy

    example = torch.zeros(1, 3, settings.image_size, settings.image_size)
    options = {"keep_macs": keep, "round_to": settings.round_to, "example_inputs": example}
    if criterion in STRATEGIES or criterion in ABLATIONS:
        name, knobs, extra = ABLATIONS.get(criterion, (criterion, {}, {}))
        result = get_strategy(name, **knobs).prune(model, calibration_batches=calibration, **options, **extra)
        return result, result.timings.get("spectra_s", 0.0) + result.timings["scores_s"]
    started = time.perf_counter()
    if criterion == "tp-l1":
        source, importance = model, tp.importance.GroupMagnitudeImportance(p=1)
    elif criterion == "tp-taylor":
        source, importance = _gradient_copy(model, calibration, None), tp.importance.GroupTaylorImportance()
    elif criterion == "tp-hessian":
        source = _gradient_copy(model, calibration, settings.hessian_samples)
        importance = tp.importance.GroupHessianImportance()
    elif criterion == "tp-random":
        torch.manual_seed(seed)
        source, importance = model, tp.importance.RandomImportance()
    else:
        raise ValueError(f"unknown criterion {criterion}")
    gradients_s = time.perf_counter() - started
    result = prune_model(source, importance=importance, **options)
    recalibrate_batchnorm(result.model, calibration)
    return result, gradients_s + result.timings["scores_s"]


def run_family_seed(family: str, seed: int, settings: Settings, cache: Path, events=None) -> dict:
    """Train (or load) one dense model and score every criterion at every keep on it."""
    torch.set_num_threads(1)
    from rmtdeploy.finetuning import distill, evaluate_top1, teacher_outputs

    parent = os.getppid()

    def log(message):
        # A worker outlives a killed driver until its task ends (minutes, both cores): stop with it.
        if events is not None:
            if os.getppid() != parent:
                os._exit(1)
            events.put(("log", message))
        else:
            print(message, flush=True)

    dense, record = train_dense(family, seed, settings, cache, log)
    val = _batches(_loader(settings, "val", dense, max_images=settings.val_images))
    calibration = _seeded_draw(settings, seed, settings.calibration_images, salt=1)
    distill_set = _seeded_draw(
        settings, seed, settings.distill_images, salt=2, batch_size=settings.distill_batch
    )
    teacher_logits = teacher_outputs(dense, distill_set)
    dense_top1 = evaluate_top1(dense, val)
    points = []
    for keep in settings.keeps:
        for criterion in settings.criteria:
            started = time.perf_counter()
            result, scoring_s = prune_with(criterion, dense, keep, calibration, settings, seed)
            prune_s = time.perf_counter() - started
            pruned_top1 = evaluate_top1(result.model, val)
            point = {
                "family": family, "seed": seed, "keep": keep, "criterion": criterion,
                "macs_kept": round(result.macs_kept, 4), "params_kept": round(result.params_kept, 4),
                "top1_pruned": round(pruned_top1, 2), "scoring_s": round(scoring_s, 3), "prune_s": round(prune_s, 2),
                "widths": _width_summary(result),
            }  # fmt: skip
            if settings.finetune == "distill":
                fine = distill(result.model, dense, distill_set, steps=settings.distill_steps,
                               lr=settings.distill_lr, seed=seed, teacher_logits=teacher_logits)  # fmt: skip
                point |= {"top1_distilled": round(evaluate_top1(result.model, val), 2),
                          "kd_loss_before": round(fine.loss_before, 4), "kd_loss_after": round(fine.loss_after, 4)}  # fmt: skip
            else:
                point |= _finetune_default(result.model, dense, settings, seed)
            points.append(point)
            if events is not None:
                events.put(("point", family))
            log(f"{family} s{seed} keep {keep} {criterion:12s} MACs {result.macs_kept:.3f} "
                f"top-1 {pruned_top1:5.1f} -> {point[settings.after_key]:5.1f} (dense {dense_top1:.1f})")  # fmt: skip
    return {"dense": {**record, "top1_eval": round(dense_top1, 2)}, "points": points}


def _finetune_default(model, dense, settings: Settings, seed: int) -> dict:
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


def _width_summary(result) -> dict:
    """Kept fraction of output channels per module (the allocation a criterion chose), for diagnosis."""
    dense, pruned = result.plan["widths"]["dense"], result.plan["widths"]["pruned"]
    return {name: round(pruned[name] / width, 3) for name, width in dense.items() if pruned[name] != width}


# -- statistics and rendering ---------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(points: list[dict], families: list[str], settings: Settings) -> dict:
    """Mean ± std over seeds per (family, criterion, keep), and the goal's status per family."""
    table: dict = {}
    for family in families:
        for criterion in settings.criteria:
            for keep in settings.keeps:
                rows = [
                    p for p in points if (p["family"], p["criterion"], p["keep"]) == (family, criterion, keep)
                ]
                if not rows:
                    continue
                table.setdefault(family, {}).setdefault(criterion, {})[str(keep)] = {
                    "macs_kept": _mean_std([r["macs_kept"] for r in rows]),
                    "pruned": _mean_std([r["top1_pruned"] for r in rows]),
                    "distilled": _mean_std([r[settings.after_key] for r in rows]),
                    "scoring_s": _mean_std([r["scoring_s"] for r in rows]),
                    "kd_below_start": sum(r[settings.after_key] < r["top1_pruned"] for r in rows),
                    "seeds": len(rows),
                }
    goals = {family: _goal(points, family, settings) for family in families}
    return {"table": table, "goals": goals}


def _paired(points, family, keep, criterion, column) -> dict[int, float]:
    return {p["seed"]: p[column] for p in points
            if (p["family"], p["keep"], p["criterion"]) == (family, keep, criterion)}  # fmt: skip


def _goal(points: list[dict], family: str, settings: Settings) -> dict:
    """The issue's goal for one family: the best spectral strategy (highest mean pre-fine-tune top-1 over
    the curve) vs group L2 (``magnitude``): above it at every keep, ≥ 2 points ahead at the deepest keep
    with the per-seed paired gap positive in every seed; after distillation, level with every TP criterion
    (mean within one std of the best of them, or above)."""
    spectral = [c for c in SPECTRAL if c in settings.criteria]
    if "magnitude" not in settings.criteria or not spectral:
        return {}

    def curve_mean(criterion):
        return statistics.fmean(
            statistics.fmean(_paired(points, family, k, criterion, "top1_pruned").values())
            for k in settings.keeps
        )

    best = max(spectral, key=curve_mean)
    gaps = {}
    for keep in settings.keeps:
        ours, l2 = (_paired(points, family, keep, c, "top1_pruned") for c in (best, "magnitude"))
        diffs = [ours[s] - l2[s] for s in ours if s in l2]
        gaps[str(keep)] = {"mean": statistics.fmean(diffs), "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                           "min": min(diffs)}  # fmt: skip
    deepest = str(min(settings.keeps))
    peers = [c for c in ("magnitude", *PEERS) if c in settings.criteria]
    after = {}
    for keep in settings.keeps:
        column = settings.after_key
        ours = _mean_std(list(_paired(points, family, keep, best, column).values()))
        top_peer = max(
            peers, key=lambda c: statistics.fmean(_paired(points, family, keep, c, column).values())
        )
        theirs = _mean_std(list(_paired(points, family, keep, top_peer, column).values()))
        after[str(keep)] = {"ours": ours[0], "best_peer": top_peer, "peer": theirs[0],
                            "level": ours[0] >= theirs[0] - max(ours[1], theirs[1])}  # fmt: skip
    return {
        "best_spectral": best,
        "gap_pruned_vs_l2": gaps,
        "above_l2_every_keep": all(g["mean"] > 0 for g in gaps.values()),
        "deep_gap_met": gaps[deepest]["mean"] >= 2.0 and gaps[deepest]["min"] > 0,
        "after_distill": after,
        "level_after_distill": all(a["level"] for a in after.values()),
    }


def _cell(stats) -> str:
    mean, std = stats
    return f"{mean:.1f} ± {std:.1f}"


def _after_text(settings: Settings, conditions: dict) -> str:
    if settings.finetune == "distill":
        return (f"after distillation ({settings.distill_steps} AdamW steps of {settings.distill_batch}, lr "
                f"{settings.distill_lr:g} cosine to 0, on {settings.distill_images} training images, label-free KD "
                "from the dense model, the same for every criterion)")  # fmt: skip
    return (f"after fine-tuning with the fine-tune stage's default recipe, the same for every criterion "
            f"(`FinetuneRecipe` {conditions.get('recipe')}: KD from the dense model on the whole augmented training "
            "split, BatchNorm re-estimated first; the last epoch is reported, not the best)")  # fmt: skip


def render_markdown(summary: dict, dense: dict, settings: Settings, conditions: dict) -> list[str]:
    lines = [
        f"Dataset `{settings.dataset}` (fixed split; val {conditions['val_images']} images), input "
        f"{settings.image_size}×{settings.image_size}; seeds {conditions['seeds']} (training seed = calibration "
        f"draw); cells: top-1 % mean ± std over seeds, **right after pruning** (BN recalibrated on "
        f"{settings.calibration_images} images) → {_after_text(settings, conditions)}. Width rules: round_to "
        f"{settings.round_to}, min 8 channels, whole heads; every point within ±3% of its keep-macs.",
        "",
        "## Dense models",
        "",
        "| family | timm model (reduced) | MACs | epochs | val top-1 per seed | last-epoch change |",
        "|---|---|---|---|---|---|",
    ]
    for family, records in dense.items():
        first = records[0]
        tops = ", ".join(f"{r['top1_eval']:.1f}" for r in records)
        change = ", ".join(f"{r['val_curve'][-1] - r['val_curve'][-2]:+.1f}" if len(r["val_curve"]) > 1 else "–"
                           for r in records)  # fmt: skip
        lines.append(f"| {family} | `{first['timm_name']}` {first['kwargs'] or ''} | {first.get('macs_m', 0):.1f} M | "
                     f"{first['epochs']} | {tops} | {change} |")  # fmt: skip
    lines += ["", f"## Top-1 after pruning → after {settings.after_name}", ""]
    keeps = settings.keeps
    for family, criteria in summary["table"].items():
        lines += [f"### {family}", "", "| criterion | " + " | ".join(f"keep {k}" for k in keeps) + " | scoring s |",
                  "|---|" + "---|" * (len(keeps) + 1)]  # fmt: skip
        for criterion, by_keep in criteria.items():
            cells = []
            for k in keeps:
                c = by_keep.get(str(k))
                if c is None:
                    cells.append("–")
                    continue
                warn = " ⚠" if c["kd_below_start"] else ""
                cells.append(f"{_cell(c['pruned'])} → {_cell(c['distilled'])}{warn}")
            scoring = statistics.fmean(by_keep[str(k)]["scoring_s"][0] for k in keeps if str(k) in by_keep)
            lines.append(
                f"| {LABELS.get(criterion, criterion)} | " + " | ".join(cells) + f" | {scoring:.2f} |"
            )
        lines.append("")
    lines += ["## Goal status per family", "",
              "Best spectral = the spectral strategy with the highest mean top-1 after pruning over the curve. "
              "Gap = its per-seed paired difference to group L2 (`magnitude`), mean ± std (min).", "",
              "| family | best spectral | gap at " + " | gap at ".join(str(k) for k in keeps)
              + f" | above L2 everywhere | ≥ 2 pts at deepest | level with TP after {settings.after_name} |",
              "|---|---|" + "---|" * (len(keeps) + 3)]  # fmt: skip
    for family, goal in summary["goals"].items():
        if not goal:
            continue
        gaps = " | ".join(
            f"{g['mean']:+.1f} ± {g['std']:.1f} ({g['min']:+.1f})" for g in goal["gap_pruned_vs_l2"].values()
        )
        level = (
            "yes"
            if goal["level_after_distill"]
            else "no: "
            + ", ".join(
                f"{k}: {a['ours']:.1f} vs {a['best_peer']} {a['peer']:.1f}"
                for k, a in goal["after_distill"].items()
                if not a["level"]
            )
        )
        lines.append(f"| {family} | {goal['best_spectral']} | {gaps} | {'yes' if goal['above_l2_every_keep'] else 'no'} | "
                     f"{'yes' if goal['deep_gap_met'] else 'no'} | {level} |")  # fmt: skip
    lines += [
        "",
        f"⚠ = in at least one seed, the {settings.after_name} ended below the pruned starting point.",
        "",
    ]
    return lines


def plot(points: list[dict], families: list[str], settings: Settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(families))
    rows = math.ceil(len(families) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, family in zip(axes.flat, families, strict=False):
        for index, criterion in enumerate(settings.criteria):
            xs, pre, post = [], [], []
            for keep in sorted(settings.keeps):
                rows_ = [
                    p for p in points if (p["family"], p["criterion"], p["keep"]) == (family, criterion, keep)
                ]
                if rows_:
                    xs.append(statistics.fmean(r["macs_kept"] for r in rows_))
                    pre.append(statistics.fmean(r["top1_pruned"] for r in rows_))
                    post.append(statistics.fmean(r[settings.after_key] for r in rows_))
            style = {"color": colours(index), "marker": "o", "lw": 2 if criterion in SPECTRAL else 1.2}
            ax.plot(xs, pre, ls="-", label=LABELS.get(criterion, criterion), **style)
            ax.plot(xs, post, ls=":", **style)
        ax.set_title(family)
        ax.set_xlabel("achieved MACs kept")
        ax.set_ylabel("val top-1 %")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(families) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Accuracy vs achieved MACs on {settings.dataset}: solid = after pruning, dotted = after {settings.after_name}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- driver -----------------------------------------------------------------------------------------------


@functools.cache
def _macs_of(family: str, image_size: int) -> float:
    from rmtdeploy.pruning import count_macs_params

    model = build_model(FAMILIES[family], image_size, 10)
    return count_macs_params(model, torch.zeros(1, 3, image_size, image_size))[0] / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=[*CRITERIA, *ABLATIONS])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.75, 0.5, 0.3])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: digits at 16×16, 1 seed, keep 0.5, ResNet + ViT, 1 epoch, 2 KD steps")  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, default=CACHE, help="trained dense models (default %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", help="output file names (default accuracy_retention[_finetuned])")
    parser.add_argument("--finetune", choices=("distill", "default"), default="distill",
                        help="after pruning: the short distillation (default) or the fine-tune stage's default recipe")  # fmt: skip
    parser.add_argument(
        "--finetune-epochs", type=int, help="with --finetune default: override the recipe's epochs"
    )
    parser.add_argument("--baseline", type=Path, help="an earlier results JSON whose rows join this table")
    parser.add_argument("--baseline-criteria", nargs="+", default=["magnitude", "rmt"], metavar="C")
    args = parser.parse_args(argv)
    from rmtdeploy.benchmark import cpu_model
    from rmtdeploy.io import atomic_write_json, atomic_write_text

    settings = Settings(dataset=args.dataset, keeps=tuple(args.keeps), criteria=tuple(args.criteria),
                        finetune=args.finetune, finetune_epochs=args.finetune_epochs)  # fmt: skip
    args.stem = args.stem or (
        "accuracy_retention" if args.finetune == "distill" else "accuracy_retention_finetuned"
    )
    families, seeds = args.families, list(range(args.seeds))
    if args.quick:
        settings = Settings(dataset="digits", image_size=16, keeps=(0.5,), criteria=tuple(args.criteria),
                            calibration_images=64, hessian_samples=8, distill_images=128, distill_steps=2,
                            val_images=128, epochs_scale=0.1, finetune=args.finetune,
                            finetune_epochs=args.finetune_epochs or (1 if args.finetune == "default" else None))  # fmt: skip
        if args.families == list(FAMILIES):
            families = ["resnet", "vit"]
        seeds = [0]
    started = time.perf_counter()
    tasks = [(family, seed) for seed in seeds for family in families]
    results = _run(tasks, settings, args.cache, args.workers)
    wall_s = time.perf_counter() - started

    points = [p for family, seed in tasks for p in results[(family, seed)]["points"]]
    if args.baseline is not None:
        # Rows of an earlier run on the same data and seeds, so an ablation table shows its reference.
        earlier = json.loads(args.baseline.read_text())
        same = {k: v for k, v in earlier["conditions"]["settings"].items() if k not in ("criteria", "keeps")}
        mine = {k: v for k, v in asdict(settings).items() if k not in ("criteria", "keeps")}
        if same != mine:
            raise SystemExit(f"--baseline {args.baseline} was measured with other settings")
        borrowed = [p for p in earlier["points"] if (p["family"], p["seed"]) in set(tasks) and p["keep"] in settings.keeps
                    and p["criterion"] in args.baseline_criteria]  # fmt: skip
        points = borrowed + points
        settings = dataclasses.replace(settings, criteria=(*args.baseline_criteria, *settings.criteria))
    dense: dict[str, list] = {}
    for family, seed in tasks:
        record = results[(family, seed)]["dense"]
        dense.setdefault(family, []).append({**record, "macs_m": _macs_of(family, settings.image_size)})
    summary = summarise(points, families, settings)
    conditions = {
        "what": " ".join(["benchmarks/accuracy_retention.py", *(sys.argv[1:] if argv is None else argv)]),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "threads_per_worker": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "wall_s": round(wall_s, 1),
        "seeds": seeds,
        "val_images": len(_loader(settings, "val", None, max_images=settings.val_images).dataset),
        "settings": asdict(settings),
    }
    if settings.finetune == "default":
        from rmtdeploy.finetuning.recipe import FinetuneRecipe

        epochs = {"epochs": settings.finetune_epochs} if settings.finetune_epochs else {}
        conditions["recipe"] = {k: v for k, v in FinetuneRecipe(**epochs).to_dict().items() if k != "seed"}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.stem}.json",
                      {"conditions": conditions, "dense": dense, "summary": summary, "points": points})  # fmt: skip
    header = (f"`{conditions['what']}` on {conditions['cpu']} ({conditions['cpu_count']} cores), "
              f"{args.workers} worker processes × 1 torch thread, torch {conditions['torch']}; "
              f"wall {wall_s / 60:.1f} min (includes training the dense models when not cached).")  # fmt: skip
    body = render_markdown(summary, dense, settings, conditions)
    atomic_write_text(args.out / f"{args.stem}.md",
                      "\n".join(["# Accuracy retention on real data", "", header, "", *body, "",
                                 f"![accuracy vs MACs]({args.stem}.png)", ""]))  # fmt: skip
    plot(points, families, settings, args.out / f"{args.stem}.png")
    print(f"wrote {args.out}/{args.stem}.{{json,md,png}} in {wall_s / 60:.1f} min", flush=True)
    return 0


def _run(tasks, settings: Settings, cache: Path, workers: int) -> dict:
    """Run every (family, seed) task, in ``workers`` processes (one torch thread each) when > 1, with a
    progress bar over all points."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = len(tasks) * len(settings.keeps) * len(settings.criteria)
    results = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("pruned points", total=total)
        if workers <= 1:
            for family, seed in tasks:
                results[(family, seed)] = run_family_seed(
                    family, seed, settings, cache, _Events(progress, bar)
                )
            return results
        manager = multiprocessing.get_context("spawn").Manager()
        events = manager.Queue()
        # Heaviest first, so the two workers finish together.
        order = sorted(tasks, key=lambda t: -FAMILIES[t[0]].epochs * _macs_of(t[0], settings.image_size))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_family_seed, f, s, settings, cache, events): (f, s) for f, s in order}
            pending = set(futures)
            while pending:
                _drain(events, progress, bar)
                done = {f for f in pending if f.done()}
                for future in done:
                    results[futures[future]] = future.result()
                pending -= done
                time.sleep(0.2)
        _drain(events, progress, bar)
    return results


def _drain(events, progress, bar) -> None:
    while not events.empty():
        _drain_one(events.get(), progress, bar)


class _Events:
    """The in-process stand-in for the workers' queue."""

    def __init__(self, progress, bar):
        self.progress, self.bar = progress, bar

    def put(self, event):
        _drain_one(event, self.progress, self.bar)


def _drain_one(event, progress, bar) -> None:
    kind, message = event
    if kind == "point":
        progress.advance(bar)
    else:
        progress.console.log(message)


if __name__ == "__main__":
    sys.exit(main())
