"""LeViT: timm's ``Levit`` / ``LevitDistilled`` (convolutional stem, attention with per-head key, key and
value splits and position-bias tables, BatchNorm-ed linear layers, two classifiers when distilled).

What differs from the generic path: inside an ``Attention`` / ``AttentionDownsample`` the projections are
split per head into ``key_dim, key_dim, val_dim`` (sizes the module caches) and read position biases per
head, so their inner channels are left whole; the streams between blocks, the MLPs and the stem prune. The
graph is traced with the query's token subsampling written as a gather (the same function), which it
follows.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.levit import Attention, AttentionDownsample, Downsample
from torch import nn

from rmtdeploy.adapters._attention import forwards_replaced
from rmtdeploy.adapters.generic import GenericAdapter
from rmtdeploy.adapters.registry import register_adapter


@register_adapter("levit")
class LevitAdapter(GenericAdapter):
    family = "levit"

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if isinstance(module, (Attention, AttentionDownsample)) and module.use_conv:
            return (
                "the convolutional form (levit_conv_*): its attention's 4-D reshapes make the dependency "
                "graph's index mapping grow without bound; the linear form (levit_*, the same weights) prunes"
            )
        return super().unsupported_reason(module)

    def trace_forward(self, model: nn.Module, example_inputs: Any) -> Any:
        # The token subsampling before a downsampling attention's query is a 4-D view, a strided slice and
        # a reshape, which the graph does not follow (the query would keep its input width); the same
        # subsampling as one gather over tokens keeps channels on their axis.
        subsamples = [m for m in model.modules() if isinstance(m, Downsample) and m.pool is None]
        with forwards_replaced(subsamples, _subsample_by_gather):
            return super().trace_forward(model, example_inputs)

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


def _subsample_by_gather(module: Downsample, x: torch.Tensor) -> torch.Tensor:
    """``Downsample.forward`` (no pooling) as one gather of the kept tokens: the same output."""
    rows, cols = module.resolution
    keep = torch.arange(rows * cols, device=x.device).view(rows, cols)[:: module.stride, :: module.stride]
    return x[:, keep.flatten()]


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
