"""Coverage cases: the models every family adapter is proven on, and what makes a pruned model sound.

One place for the case code of the CI matrix (``tests/test_strategies_families.py``: one small model per
family, at a reduced resolution) and of the full coverage benchmark (``benchmarks/model_coverage.py``: every
model the pruning issue names, at 224). A pruned case is sound when (:func:`check_pruned`): its output has
the dense shape and is finite, its pre-logit features are not all zero, MACs kept lie within
``TARGET_TOLERANCE`` of the target, parameters shrink, ``save_pruned`` → ``load_pruned`` gives the same
outputs, and attention models give the same outputs through the fused (SDPA) and the explicit path.

Outputs are compared as pre-logit features and logits: timm zero-initialises some classifiers (Hiera's), so
random-weight logits are all 0 and would compare equal whatever the body computes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from rmtdeploy.pruning import TARGET_TOLERANCE, PruneResult, load_pruned, save_pruned


@dataclass(frozen=True)
class CoverageModel:
    """A timm model built with random weights; ``kwargs`` shrink its input (pruning is resolution-free)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return timm.create_model(self.name, pretrained=False, **self.kwargs).eval()


_CNN_AT_128 = {"pretrained_cfg_overlay": {"input_size": (3, 128, 128)}}
# One small model per family, at a reduced input resolution so that every family × strategy × keep case
# fits CI's time budget (the adapter tests run the native 224 inputs).
FAMILY_MODELS: dict[str, CoverageModel] = {
    "vit": CoverageModel("vit_tiny_patch16_224", {"img_size": 112}),
    "deit": CoverageModel("deit_tiny_distilled_patch16_224", {"img_size": 112}),
    "swin": CoverageModel("swin_tiny_patch4_window7_224", {"img_size": 128, "window_size": 4}),
    "convnext": CoverageModel("convnext_atto", _CNN_AT_128),
    "hiera": CoverageModel("hiera_tiny_224", {"img_size": 128}),
    "resnet": CoverageModel("resnet18", _CNN_AT_128),
}
# Every model the pruning issue names (the full benchmark builds them at their native 224 input).
ISSUE_MODELS: tuple[str, ...] = (
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_small_distilled_patch16_224",
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "convnext_atto",
    "convnext_tiny",
    "convnext_small",
    "hiera_tiny_224",
    "hiera_small_224",
    "hiera_base_plus_224",
    "resnet18",
    "resnet50",
    "resnet101",
)
# Knobs per strategy name in coverage runs: fewer progressive steps bound the time; the mechanism is the same.
CASE_KNOBS: dict[str, dict[str, Any]] = {"dynamic": {"steps": 2}}
RELOAD_ATOL = 1e-6
ATTENTION_ATOL = 1e-5


def features_and_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre-logit features, logits) from one forward pass of ``model`` in eval mode, without gradients."""
    with torch.no_grad():
        tokens = model.eval().forward_features(images)
        return model.forward_head(tokens, pre_logits=True), model.forward_head(tokens)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm attention modules that can switch between SDPA and explicit softmax (``fused_attn``)."""
    return [module for module in model.modules() if hasattr(module, "fused_attn")]


def fused_vs_explicit(model: nn.Module, images: torch.Tensor) -> float | None:
    """Max |fused − explicit| over features and logits; None for a model without attention modules.

    Each module's own ``fused_attn`` is restored afterwards: timm's defaults differ by family (Swin's is
    explicit), and a reload is compared against a freshly built model's default path."""
    modules = attention_modules(model)
    if not modules:
        return None
    defaults = [module.fused_attn for module in modules]
    outputs = []
    try:
        for fused in (False, True):
            for module in modules:
                module.fused_attn = fused
            outputs.append(features_and_logits(model, images))
    finally:
        for module, default in zip(modules, defaults, strict=True):
            module.fused_attn = default
    return _max_abs_difference(*outputs)


@dataclass
class PrunedCheck:
    """What :func:`check_pruned` measured, and every way the case failed (empty: sound)."""

    output_shape: list[int]
    finite: bool
    reload_max_abs: float
    fused_vs_explicit_max_abs: float | None
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def check_pruned(
    result: PruneResult,
    images: torch.Tensor,
    *,
    dense_shape: list[int],
    keep_macs: float,
    reload_atol: float = RELOAD_ATOL,
    attention_atol: float = ATTENTION_ATOL,
) -> PrunedCheck:
    """Check a pruned case on ``images`` against the contract in the module docstring."""
    features, logits = features_and_logits(result.model, images)
    with tempfile.TemporaryDirectory(prefix="rmtdeploy_coverage_") as tmp:
        save_pruned(Path(tmp) / "pruned", result)
        reloaded = load_pruned(Path(tmp) / "pruned").model
    check = PrunedCheck(
        output_shape=list(logits.shape),
        finite=bool(torch.isfinite(features).all() and torch.isfinite(logits).all()),
        reload_max_abs=_max_abs_difference(features_and_logits(reloaded, images), (features, logits)),
        fused_vs_explicit_max_abs=fused_vs_explicit(result.model, images),
        failures=[],
    )
    failed = check.failures
    if check.output_shape != dense_shape:
        failed.append(f"output shape {check.output_shape} != dense {dense_shape}")
    if not check.finite:
        failed.append("non-finite output")
    elif not features.abs().max() > 0:
        failed.append("pre-logit features are all zero")
    if abs(result.macs_kept - keep_macs) > TARGET_TOLERANCE * keep_macs:
        failed.append(f"MACs kept {result.macs_kept:.3f} outside ±{TARGET_TOLERANCE:.0%} of {keep_macs}")
    if result.pruned_params >= result.dense_params:
        failed.append("parameters did not shrink")
    if check.reload_max_abs > reload_atol:
        failed.append(f"reload differs by {check.reload_max_abs:.2e}")
    if check.fused_vs_explicit_max_abs is not None and check.fused_vs_explicit_max_abs > attention_atol:
        failed.append(f"fused vs explicit attention differ by {check.fused_vs_explicit_max_abs:.2e}")
    return check


def _max_abs_difference(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))
