"""One small model per family (ViT, DeiT, Swin, ConvNeXt, Hiera, ResNet), trained from scratch on a built-in
real dataset at the benchmark's input size; two edge models (MobileNetV3, EfficientViT) beside them, asked
for by name (:data:`EDGE_FAMILIES`), never in the default run.

The trainer and its cache are the ones ``rmtdeploy compress --weights trained`` uses
(:func:`rmtdeploy.finetuning.scratch.trained_model`): cross-entropy with label smoothing, AdamW with one
warm-up epoch then cosine, the augmented training split; cached by everything that shapes the weights,
so a model trained for one is loaded by the other.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rmtdeploy.finetuning.scratch import ScratchRecipe, build_small_model, trained_model
from rmtdeploy.retention.settings import Settings


@dataclass(frozen=True)
class FamilyModel:
    """A small member of a family, and how it is trained from scratch."""

    timm_name: str
    kwargs: dict = field(default_factory=dict)  # timm kwargs that make the model small
    epochs: int = 8
    lr: float = 2e-3
    batch_size: int = 64
    fixed_size: bool = True  # built for one input size (patch embeddings); CNNs take any size

    def scratch_recipe(
        self, dataset: str, image_size: int, seed: int, epochs_scale: float = 1.0
    ) -> ScratchRecipe:
        """The trainer's recipe: the model built for ``image_size`` when it needs one, its epochs scaled by
        ``epochs_scale`` (at least one), ``seed`` for the initial weights and the data order."""
        size = {"img_size": image_size} if self.fixed_size else {}
        return ScratchRecipe(
            dataset=dataset,
            image_size=image_size,
            model_kwargs={**size, **self.kwargs},
            epochs=max(1, round(self.epochs * epochs_scale)),
            lr=self.lr,
            batch_size=self.batch_size,
            seed=seed,
        )


VIT_KWARGS = {"patch_size": 8, "depth": 6}
FAMILIES = {
    "vit": FamilyModel("vit_tiny_patch16_224", VIT_KWARGS, epochs=10, lr=1e-3),
    "deit": FamilyModel("deit_tiny_patch16_224", VIT_KWARGS, epochs=10, lr=1e-3),
    "swin": FamilyModel(
        "swin_tiny_patch4_window7_224",
        {"window_size": 4, "embed_dim": 48, "depths": (2, 2, 2, 2), "num_heads": (2, 4, 8, 16)},
        epochs=10,
        lr=1e-3,
    ),
    "convnext": FamilyModel("convnext_atto", epochs=8, fixed_size=False),
    "hiera": FamilyModel("hiera_tiny_224", {"embed_dim": 48, "num_heads": 1}, epochs=10, lr=1e-3),
    "resnet": FamilyModel("resnet18", epochs=6, fixed_size=False),
}
# Edge models (issue 24) at timm's own sizes, pruned through the generic adapter: a depthwise CNN with
# squeeze-excitation, and a CNN-attention hybrid (LiteMLA, ReLU linear attention, in its last two stages).
# Both downsample 32×, so at 32 px their last stage is 1×1 (one token for the attention): run them at 64 px
# (the benchmark's --image-size). Not in FAMILIES, so runs that name no family measure what they always did.
EDGE_FAMILIES = {
    "mobilenetv3": FamilyModel("mobilenetv3_large_100", epochs=8, fixed_size=False),
    "efficientvit": FamilyModel("efficientvit_b0", epochs=8, fixed_size=False),
}
ALL_FAMILIES = {**FAMILIES, **EDGE_FAMILIES}


def train_dense(
    family: str, seed: int, settings: Settings, cache: str | Path | None, log: Callable[[str], Any]
) -> tuple[torch.nn.Module, dict]:
    """The family's model trained on ``settings.dataset``'s training split with ``seed`` (or loaded from
    ``cache``, the trainer's default when None); returns it in eval mode and its record (the val curve
    on ``settings.val_images`` images, the wall time of the training)."""
    member = ALL_FAMILIES[family]
    recipe = member.scratch_recipe(settings.dataset, settings.image_size, seed, settings.epochs_scale)
    torch.manual_seed(seed)  # what follows the training starts from the same random state either way

    def on_epoch(epoch: int, total: int, top1: float) -> None:
        log(f"{family} seed {seed}: epoch {epoch}/{total} val top-1 {top1:.1f}")

    loaded, trained, _ = trained_model(
        member.timm_name, recipe, cache=cache, val_images=settings.val_images, on_epoch=on_epoch
    )
    record = {
        "family": family,
        "seed": seed,
        "timm_name": member.timm_name,
        "kwargs": json.loads(json.dumps(member.kwargs)),  # as a cached record reads: tuples are lists
        "epochs": recipe.epochs,
        "lr": recipe.lr,
        "val_curve": trained["val_curve"],
        "top1": trained["val_curve"][-1],
        "train_s": trained["train_s"],
    }
    return loaded.model.eval(), record


@functools.cache
def family_macs(family: str, image_size: int) -> float:
    """The family's dense MACs (millions) at ``image_size`` and 10 classes."""
    from rmtdeploy.pruning import count_macs_params

    recipe = ALL_FAMILIES[family].scratch_recipe("mnist5k", image_size, seed=0)
    model = build_small_model(ALL_FAMILIES[family].timm_name, recipe, 10)
    return count_macs_params(model, torch.zeros(1, 3, image_size, image_size))[0] / 1e6
