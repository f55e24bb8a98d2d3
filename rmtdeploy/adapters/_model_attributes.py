"""Attributes timm models keep outside their layers: cached widths (re-read from the layers after pruning)
and the build arguments a rebuild from the timm name needs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def sync_model_widths(model: nn.Module, stage_widths: list[int], num_features: int) -> None:
    """Set ``feature_info`` channel counts, ``num_features`` and the classifier head's cached widths.

    These feed ``features_only`` wrappers, ``reset_classifier`` and reports; the forward never reads them,
    so a stale value would only surface later, far from the pruning that caused it.
    """
    for info, width in zip(getattr(model, "feature_info", []), stage_widths, strict=True):
        info["num_chs"] = width
    model.num_features = num_features
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "in_features"):
        head.in_features = num_features
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Linear):
        # Width entering the classifier: num_features unless the head has its own hidden layer.
        if head is not None and hasattr(head, "num_features"):
            head.num_features = classifier.in_features
        model.head_hidden_size = classifier.in_features


def layer_norm_width(norm: nn.Module) -> int:
    """Channel count of a LayerNorm-like layer (the last normalized dimension)."""
    return int(norm.normalized_shape[-1])


def image_kwargs(model: nn.Module, img_size: tuple[int, ...], in_chans: int) -> dict[str, Any]:
    """``img_size`` / ``in_chans`` for ``timm.create_model`` when they differ from the pretrained config's."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    default_chans, *default_size = cfg.get("input_size", (3, 224, 224))
    kwargs: dict[str, Any] = {}
    if tuple(int(s) for s in img_size) != tuple(default_size):
        kwargs["img_size"] = [int(s) for s in img_size]
    if int(in_chans) != default_chans:
        kwargs["in_chans"] = int(in_chans)
    return kwargs


class PatchEmbedSizeMixin:
    """For models whose ``patch_embed`` checks the input size strictly (ViT/DeiT, Swin): the image size and
    channels it was built with are the truth, for tracing and for rebuilding from a plan."""

    def example_inputs(self, model: nn.Module, batch: int = 1) -> torch.Tensor:
        height, width = model.patch_embed.img_size
        return torch.randn(batch, model.patch_embed.proj.in_channels, height, width)

    def create_kwargs(self, model: nn.Module) -> dict[str, Any]:
        embed = model.patch_embed
        return {**super().create_kwargs(model), **image_kwargs(model, embed.img_size, embed.proj.in_channels)}
