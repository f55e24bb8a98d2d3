"""The adapter contract and its registry."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import model_family

ADAPTERS: dict[str, type[ArchitectureAdapter]] = {}

# Adapter modules that register themselves on import.
_BUILTIN_ADAPTER_MODULES = ("convnext", "hiera", "resnet", "swin", "vit")


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
        raise RmtdeployError(
            f"no pruning adapter for {type(model).__name__} (family '{family}'); known: {known}"
        )
    return ADAPTERS[family]()


def find_adapter(model: nn.Module) -> ArchitectureAdapter | None:
    """The model's adapter, or None for a model no adapter serves (stages that work without one)."""
    _import_builtin_adapters()
    adapter = ADAPTERS.get(model_family(model))
    return adapter() if adapter is not None else None


def _import_builtin_adapters() -> None:
    # Adapters register themselves on import; importing here keeps the registry complete.
    for name in _BUILTIN_ADAPTER_MODULES:
        importlib.import_module(f"rmtdeploy.adapters.{name}")


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The classifier module(s): timm returns a tuple for two-headed models (DeiT distilled)."""
    classifier = model.get_classifier()
    return list(classifier) if isinstance(classifier, (tuple, list)) else [classifier]


class ArchitectureAdapter:
    """Defaults suit a plain CNN; families override only what differs.

    Everything here is read from the model itself (not from a plan or a name), so the same adapter serves
    the dense model, every trial copy during pruning and the rebuilt model in ``load_pruned``.
    """

    family: str = "other"

    def example_inputs(self, model: nn.Module, batch: int = 1) -> torch.Tensor:
        """An input of the model's native resolution (timm's pretrained_cfg), for tracing the graph."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        chans, height, width = cfg.get("input_size", (3, 224, 224))
        return torch.randn(batch, chans, height, width)

    def create_kwargs(self, model: nn.Module) -> dict[str, Any]:
        """Keyword arguments beyond the name that ``timm.create_model`` needs to rebuild this architecture
        (before pruning). Must be JSON-able: they are stored in the pruning plan."""
        num_classes = getattr(model, "num_classes", None)
        return {} if num_classes is None else {"num_classes": int(num_classes)}

    def ignored_layers(self, model: nn.Module) -> list[nn.Module]:
        """Layers whose outputs must keep their width: the classifier(s)."""
        return classifier_layers(model)

    def attention_heads(self, model: nn.Module) -> dict[nn.Module, int]:
        """Fused qkv Linear -> number of heads, for head-wise pruning. Empty for CNNs."""
        return {}

    def customized_pruners(self, model: nn.Module) -> dict:
        """Module type (or instance) -> torch_pruning BasePruningFunc for layers TP cannot handle."""
        return {}

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        """Bare parameters (pos embeds, tokens, layer-scale gammas) and the dim that follows channels."""
        return []

    def trace_forward(self, model: nn.Module, example_inputs: Any) -> Any:
        """The forward torch-pruning traces to build its dependency graph (TP's ``forward_fn``).

        Default: the model's own forward. Families override it to hold tracing-only changes (probes wired
        in, a traceable attention path); every graph over the model, including replays, is built with it."""
        inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        return model(*inputs)

    @contextlib.contextmanager
    def export_mode(self, model: nn.Module, backend: str) -> Iterator[None]:
        """Changes for the ONNX export only: the same function, written so ``backend`` runs it fast.

        ``backend`` is a target's (``"onnxruntime"`` or ``"tensorrt"``): a form that helps one runtime's
        optimizer can hide a pattern the other fuses. Default: none. Entered by
        ``rmtdeploy.export.export_onnx``; must leave the model as it found it."""
        yield

    def repair(self, model: nn.Module) -> None:
        """Fix attributes that cache widths (num_heads, head_dim, scale, ...) after physical removal.

        Must derive everything from the (pruned) module shapes, and be a no-op on an unpruned model."""
