"""The adapter contract and its registry."""

from __future__ import annotations

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import model_family

ADAPTERS: dict[str, type[ArchitectureAdapter]] = {}


def register_adapter(*families: str):
    """Class decorator: ``@register_adapter("vit", "deit")`` makes the adapter serve those families."""

    def wrap(cls):
        for family in families:
            ADAPTERS[family] = cls
        return cls

    return wrap


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    family = model_family(model)
    _import_builtin_adapters()
    if family not in ADAPTERS:
        known = ", ".join(sorted(ADAPTERS))
        raise RmtdeployError(f"no pruning adapter for {type(model).__name__} (family '{family}'); known: {known}")
    return ADAPTERS[family]()


def _import_builtin_adapters() -> None:
    # Adapters register themselves on import; importing here keeps the registry complete.
    from rmtdeploy.adapters import convnext, hiera, resnet, swin, vit  # noqa: F401


class ArchitectureAdapter:
    """Defaults suit a plain CNN; families override only what differs."""

    family: str = "other"

    def example_inputs(self, model: nn.Module, batch: int = 1) -> torch.Tensor:
        """An input of the model's native resolution (timm's pretrained_cfg), for tracing the graph."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        chans, height, width = cfg.get("input_size", (3, 224, 224))
        return torch.randn(batch, chans, height, width)

    def ignored_layers(self, model: nn.Module) -> list[nn.Module]:
        """Layers whose outputs must keep their width: the classifier(s)."""
        return [model.get_classifier()]

    def attention_heads(self, model: nn.Module) -> dict[nn.Module, int]:
        """Fused qkv Linear -> number of heads, for head-wise pruning. Empty for CNNs."""
        return {}

    def customized_pruners(self, model: nn.Module) -> dict:
        """Module type (or instance) -> torch_pruning BasePruningFunc for layers TP cannot handle."""
        return {}

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        """Bare parameters (pos embeds, tokens, layer-scale gammas) and the dim that follows channels."""
        return []

    def repair(self, model: nn.Module) -> None:
        """Fix attributes that cache widths (num_heads, head_dim, scale, ...) after physical removal."""
