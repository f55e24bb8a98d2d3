"""The fine-tune recipe: every training setting, with gentle defaults, checked before any work.

Gentle, because the student starts close to a converged teacher: a fresh AdamW at a training-from-scratch
learning rate throws that away in its first hundred steps (a probe saw a pruned resnet18 fall from 97% to
78% in one epoch at lr 5e-4 without warm-up). The defaults — a small peak learning rate reached by a
linear warm-up, cosine decay, distillation from the dense teacher plus cross-entropy on the data's labels —
are pinned on real data by ``tests/test_finetune_stage.py`` and measured in ``benchmarks/finetune_recovery.py``
(large set, confident teacher) and ``benchmarks/finetune_small_data.py`` (small ImageFolders).

The labels term is on by default because distillation alone carries only what the teacher is sure of: a
teacher trained briefly on a small set gives nearly flat soft targets (top-two margins of a tenth of a
logit), and matching them lowered the student's top-1 in every epoch while the KD loss fell. The labels
are the model's classes: the stage checks their count, and the labels it writes for apps assume the data's
class order is the classifier's. The same teacher's BatchNorm statistics lagged its weights: a copy of it is
re-estimated on the images the student's are (``bn_images``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from rmtdeploy.errors import RmtdeployError


@dataclass(frozen=True)
class FinetuneRecipe:
    """How to train. ``lr`` is the peak learning rate of the whole (global) batch."""

    epochs: int = 3
    batch_size: int = 64  # per process
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup: float = 0.1  # fraction of all steps spent rising linearly to ``lr``
    weight_decay: float = 0.05  # on weight matrices and kernels; not on biases and norms
    clip_grad: float = 1.0  # max global gradient norm; 0: off
    temperature: float = 2.0  # of the distillation's softened logits
    kd_weight: float = 1.0  # KL(teacher ‖ student) × T²
    ce_weight: float = 1.0  # cross-entropy on labels (label-smoothed); 0: label-free (distillation only)
    label_smoothing: float = 0.1
    augment: bool = True  # training augmentation (timm's for folders, shifts for the digit sets)
    bn_images: int = 1024  # BatchNorm recalibration before training (student and a teacher copy); 0: off
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints; 0: at epoch ends only
    seed: int = 0

    def check(self) -> FinetuneRecipe:
        """Raise :class:`RmtdeployError` naming the first bad setting; returns the recipe."""
        rules = [
            ("epochs", _is_int(self.epochs) and self.epochs >= 1, "a positive integer"),
            ("batch_size", _is_int(self.batch_size) and self.batch_size >= 1, "a positive integer"),
            ("lr", _finite(self.lr) and self.lr > 0, "a learning rate > 0"),
            ("min_lr", _finite(self.min_lr) and 0 <= self.min_lr <= self.lr, "in [0, lr]"),
            ("warmup", _finite(self.warmup) and 0 <= self.warmup < 1, "a fraction of the steps in [0, 1)"),
            ("weight_decay", _finite(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
            ("clip_grad", _finite(self.clip_grad) and self.clip_grad >= 0, ">= 0 (0: off)"),
            ("temperature", _finite(self.temperature) and self.temperature > 0, "> 0"),
            ("kd_weight", _finite(self.kd_weight) and self.kd_weight >= 0, ">= 0"),
            ("ce_weight", _finite(self.ce_weight) and self.ce_weight >= 0, ">= 0"),
            ("label_smoothing", _finite(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("bn_images", _is_int(self.bn_images) and self.bn_images >= 0, "an integer >= 0"),
            ("checkpoint_every", _is_int(self.checkpoint_every) and self.checkpoint_every >= 0, ">= 0"),
            ("seed", _is_int(self.seed) and self.seed >= 0, "an integer >= 0"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise RmtdeployError(f"{{param}} must be {rule}, got {getattr(self, name)!r}", param=name)
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise RmtdeployError(
                "kd_weight and ce_weight are both 0: the loss would be zero", param="kd_weight"
            )
        return self

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup × total`` steps, then cosine down to ``min_lr``."""
        warm = math.floor(self.warmup * total)
        if step < warm:
            return self.lr * (step + 1) / (warm + 1)
        progress = (step - warm) / max(1, total - warm)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_options(cls, **options: Any) -> FinetuneRecipe:
        """The default recipe with ``options`` (recipe field names) replaced; unknown names are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise RmtdeployError(
                f"unknown fine-tune setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
            )
        return cls(**options).check()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
