"""The adapter contract: what a family's adapter may say about its models (the registry is ``registry.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import CREATE_KWARGS_ATTRIBUTE


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
    # True for an adapter that prunes models it was not written for (the generic one): the prune stage then
    # accepts a pruned model only once ``rmtdeploy.coverage.verify_pruned`` passes, and refuses it naming
    # the failed check.
    needs_verification: ClassVar[bool] = False
    # Layer types of some variants of the family that this adapter cannot prune -> why (for the user).
    unsupported_layers: ClassVar[dict[type[nn.Module], str]] = {}

    def check_supported(self, model: nn.Module) -> None:
        """Raise RmtdeployError, with the reason, for a model of this family the adapter cannot prune.

        Called by ``get_adapter`` before any work, so a variant built from blocks the dependency graph
        cannot follow is refused in the first seconds rather than failing deep inside pruning. Default: the
        first module for which :meth:`unsupported_reason` has a reason refuses the model."""
        for module in model.modules():
            reason = self.unsupported_reason(module)
            if reason is not None:
                cfg = getattr(model, "pretrained_cfg", None) or {}
                name = cfg.get("architecture") or type(model).__name__
                raise RmtdeployError(f"cannot prune {name} ({self.family} family): {reason}")

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Why this adapter cannot prune a model containing ``module``, or None. Default: the reason given
        for its type in :attr:`unsupported_layers`."""
        for layer_type, reason in self.unsupported_layers.items():
            if isinstance(module, layer_type):
                return reason
        return None

    def example_inputs(self, model: nn.Module, batch: int = 1) -> torch.Tensor:
        """An input of the model's native resolution (timm's pretrained_cfg), for tracing the graph."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        chans, height, width = cfg.get("input_size", (3, 224, 224))
        return torch.randn(batch, chans, height, width)

    def create_kwargs(self, model: nn.Module) -> dict[str, Any]:
        """Keyword arguments beyond the name that ``timm.create_model`` needs to rebuild this architecture
        (before pruning). Must be JSON-able: they are stored in the pruning plan."""
        kwargs = dict(getattr(model, CREATE_KWARGS_ATTRIBUTE, None) or {})  # what it was built with
        num_classes = getattr(model, "num_classes", None)
        return kwargs if num_classes is None else {**kwargs, "num_classes": int(num_classes)}

    def ignored_layers(self, model: nn.Module) -> list[nn.Module]:
        """Layers whose outputs must keep their width: the classifier(s); for a model built without one
        (``num_classes=0``, a feature extractor), the last layer with weights that its forward runs, so that
        the features keep their width (torch-pruning skips every group that would cut an ignored layer's
        outputs, a whole residual stream included)."""
        classifiers = classifier_layers(model)
        if any(True for layer in classifiers for _ in layer.parameters()):
            return classifiers
        return classifiers + self._last_weighted_layer(model)

    def _last_weighted_layer(self, model: nn.Module) -> list[nn.Module]:
        ran: list[nn.Module] = []
        leaves = [m for m in model.modules() if not any(True for _ in m.children())]
        hooks = [
            m.register_forward_hook(lambda m, *_: ran.append(m))
            for m in leaves
            if any(True for _ in m.parameters())
        ]
        try:
            with torch.no_grad():
                self.trace_forward(model, self.example_inputs(model))
        finally:
            for hook in hooks:
                hook.remove()
        return ran[-1:]

    def attention_heads(self, model: nn.Module) -> dict[nn.Module, int]:
        """Fused qkv Linear -> number of heads, for head-wise pruning. Empty for CNNs."""
        return {}

    def group_problem(self, graph: Any, group: Any, names: dict[nn.Module, str]) -> str | None:
        """Why a torch-pruning group of the dense model must be left whole, or None to prune it.

        ``graph`` and ``group`` are torch-pruning's; ``names`` maps the model's modules to their names.
        Families whose adapters know every layer return None (default); the generic adapter refuses the
        groups it cannot prune exactly (see ``rmtdeploy.adapters.generic``)."""
        return None

    def reroot_group(self, graph: Any, group: Any) -> Any:
        """The group to prune instead of ``group`` (rooted elsewhere, e.g. at the layer that reads a gated
        hidden layer), or ``group`` itself (default)."""
        return group

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
        ``rmtdeploy.exporting.export_onnx``; must leave the model as it found it."""
        yield

    def repair(self, model: nn.Module) -> None:
        """Fix attributes that cache widths (num_heads, head_dim, scale, ...) after physical removal.

        Must derive everything from the (pruned) module shapes, and be a no-op on an unpruned model."""
