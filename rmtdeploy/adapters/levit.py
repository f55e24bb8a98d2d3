"""LeViT: timm's ``Levit`` / ``LevitDistilled`` (convolutional stem, attention with per-head key, key and
value splits and position-bias tables, BatchNorm-ed linear layers, two classifiers when distilled).

What differs from the generic path: inside an ``Attention`` / ``AttentionDownsample`` the projections are
split per head into ``key_dim, key_dim, val_dim`` (sizes the module caches) and read position biases per
head, so their inner channels are left whole; the streams between blocks, the MLPs and the stem prune.
"""

from __future__ import annotations

from typing import Any

from timm.models.levit import Attention, AttentionDownsample
from torch import nn

from rmtdeploy.adapters.generic import GenericAdapter
from rmtdeploy.adapters.registry import register_adapter


@register_adapter("levit")
class LevitAdapter(GenericAdapter):
    family = "levit"

    def group_problem(self, graph: Any, group: Any, names: dict[nn.Module, str]) -> str | None:
        inner = {
            layer: name
            for attn, name in names.items()
            if isinstance(attn, (Attention, AttentionDownsample))
            for layer in _head_projections(attn)
        }
        for dep, _ in group:
            if dep.target.module in inner and graph.is_out_channel_pruning_fn(dep.handler):
                return f"{inner[dep.target.module]}: attention heads split into cached key / value sizes"
        return super().group_problem(graph, group, names)


def _head_projections(attn: nn.Module) -> list[nn.Module]:
    """The layers whose outputs the attention splits per head (the Linear and its BatchNorm)."""
    layers = [getattr(attn, name, None) for name in ("qkv", "kv", "q")]
    return [
        m
        for layer in layers
        if layer is not None
        for m in layer.modules()
        if isinstance(m, (nn.Linear, nn.modules.batchnorm._BatchNorm))
    ]
