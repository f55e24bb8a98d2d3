"""Fine-tuning a pruned model: label-free knowledge distillation from the dense model.

Pipeline stage: pruned student + dense teacher + image batches -> the student, fine-tuned in place, and a
plain :class:`DistillRecord` of what was done. Today this is the short loop the ``dynamic`` strategy runs
between its pruning steps; the full training-time fine-tune extends it.

The loss is label-free: KL(teacher ‖ student) between logits softened by a temperature T, ×T² so the
gradient scale does not depend on T (Hinton et al., 2015). No labels are needed, which is the point: an
ImageFolder's class indices are the folder names' order, not the model's classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rmtdeploy.errors import RmtdeployError


@dataclass
class DistillRecord:
    """What one distillation run did; losses are the mean KD loss per image, in eval mode, on its batches."""

    steps: int
    lr: float
    temperature: float
    weight_decay: float
    batches: int
    images: int
    loss_before: float
    loss_after: float


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    return (
        F.kl_div(
            F.log_softmax(student_logits / temperature, dim=-1),
            F.log_softmax(teacher_logits / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )


def distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable,
    *,
    steps: int,
    lr: float = 1e-4,
    temperature: float = 2.0,
    weight_decay: float = 0.05,
    seed: int = 0,
    progress: Callable[[int], Callable[..., object] | None] | None = None,
    teacher_logits: list[torch.Tensor] | None = None,
) -> DistillRecord:
    """Fine-tune ``student`` in place to match ``teacher``'s logits for ``steps`` AdamW steps, the learning
    rate decaying from ``lr`` to zero along a cosine.

    ``batches`` are input tensors, or (inputs, labels) pairs whose labels are ignored; the loop cycles over
    them in order until ``steps`` optimizer steps are done. A re-iterable (a list, a loader,
    :class:`rmtdeploy.data.source.ImageBatches`) is streamed anew on every pass, only the teacher's logits
    are kept; a one-shot iterator is read into memory first. The teacher runs once per batch, in eval mode
    under no_grad (its logits are reused every cycle). Weight decay applies to weight matrices and conv
    kernels only, not to biases and norm parameters (timm's convention). ``seed`` seeds dropout / drop-path
    in a forked RNG, so the global one is left as it was. ``progress(steps)`` may return a callable advanced
    once per step. The student ends in eval mode. ``teacher_logits`` (one tensor per batch, from
    :func:`teacher_outputs`) spares the teacher's forward when many students learn from one teacher.

    BatchNorm layers stay in eval mode during the loop: they normalise with their running statistics
    (just re-estimated by the pruner's recalibration) and do not update them, while their affine weights
    train. Batch statistics from a few small calibration batches — the last one may hold a single image —
    are noisy (one image at a 1×1 feature map is an error), worst in depthwise/BN nets; and in eval mode
    the loss the loop lowers is the one the deployed model has.
    """
    _check_settings(steps, lr, temperature, weight_decay)
    batches = _Inputs(batches)
    device = next(student.parameters()).device
    if teacher_logits is None:
        teacher_logits = teacher_outputs(teacher, batches)
    if not teacher_logits:
        raise RmtdeployError("distillation needs at least one batch of images")
    targets = [t.to(device) for t in teacher_logits]
    loss_before = _mean_kd_loss(student, batches, targets, temperature)
    optimizer, schedule = _optimizer(student, steps, lr, weight_decay)
    advance = progress(steps) if progress is not None and steps else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        _train_except_batchnorm(student)
        try:
            for _step, (index, inputs) in zip(range(steps), _cycle(batches), strict=False):
                loss = kd_loss(student(inputs.to(device)), targets[index], temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if advance is not None:
                    advance(1)
        finally:
            student.eval()
    loss_after = _mean_kd_loss(student, batches, targets, temperature) if steps else loss_before
    if not math.isfinite(loss_after):
        raise RmtdeployError(f"distillation diverged (KD loss {loss_after}); try a lower learning rate")
    return DistillRecord(
        steps=steps,
        lr=lr,
        temperature=temperature,
        weight_decay=weight_decay,
        batches=len(targets),
        images=sum(len(t) for t in targets),
        loss_before=loss_before,
        loss_after=loss_after,
    )


def _check_settings(steps: int, lr: float, temperature: float, weight_decay: float) -> None:
    if steps < 0:
        raise RmtdeployError(f"distillation needs steps >= 0, got {steps}")
    if not lr > 0:
        raise RmtdeployError(f"distillation needs a learning rate > 0, got {lr}")
    if not temperature > 0:
        raise RmtdeployError(f"distillation needs a temperature > 0, got {temperature}")
    if weight_decay < 0:
        raise RmtdeployError(f"distillation needs weight_decay >= 0, got {weight_decay}")


def _optimizer(student: nn.Module, steps: int, lr: float, weight_decay: float):
    """AdamW without decay on biases and norms (timm's convention), and a cosine decay of its lr to zero."""
    optimizer = torch.optim.AdamW(adamw_param_groups(student, weight_decay), lr=lr)
    # Cosine decay to zero: the last steps move the weights least, so the run ends where it settled.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
    )
    return optimizer, schedule


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters in AdamW groups: decay on weight matrices and kernels, none on biases and
    norms (timm's convention)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise RmtdeployError("training needs a model with trainable parameters")
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, batches: Iterable) -> list[torch.Tensor]:
    """The teacher's logits for each batch (inputs, or (inputs, labels) pairs), in eval mode."""
    teacher.eval()
    device = next(teacher.parameters()).device
    inputs = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in batches]
    return [teacher(x.to(device)).cpu() for x in inputs]


@torch.no_grad()
def evaluate_top1(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy in % of ``model`` (eval mode) over (inputs, labels) batches."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for inputs, labels in loader:
        predicted = model(inputs.to(device)).argmax(dim=-1).cpu()
        correct += int((predicted == labels).sum())
        total += len(labels)
    if total == 0:
        raise RmtdeployError("evaluation needs at least one labelled image")
    return 100.0 * correct / total


def _train_except_batchnorm(model: nn.Module) -> None:
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class _Inputs:
    """The input tensors of ``batches``, re-iterable (a one-shot iterator is read into a list)."""

    def __init__(self, batches: Iterable):
        self.batches = list(batches) if iter(batches) is batches else batches

    def __iter__(self):
        for batch in self.batches:
            yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _cycle(batches: _Inputs):
    """(batch index, inputs) over the batches in order, again and again."""
    while True:
        yield from enumerate(batches)


@torch.no_grad()
def _mean_kd_loss(student: nn.Module, batches: _Inputs, targets: list, temperature: float) -> float:
    """Mean KD loss per image of ``student`` in eval mode over all batches."""
    student.eval()
    device = targets[0].device
    total = 0.0
    count = 0
    for x, target in zip(batches, targets, strict=True):
        logits = student(x.to(device))
        if logits.shape != target.shape:
            raise RmtdeployError(
                f"student and teacher disagree on the output: {tuple(logits.shape)} vs {tuple(target.shape)}"
            )
        total += kd_loss(logits, target, temperature).item() * len(x)
        count += len(x)
    return total / count
