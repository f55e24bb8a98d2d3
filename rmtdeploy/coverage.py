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

import copy
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
# The models a Jetson user most often brings (issue 24): no family adapter of the original six serves them;
# the generic adapter and the adapters built on it do (benchmarks/edge_coverage.py, at their default size).
EDGE_MODELS: tuple[str, ...] = (
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "efficientnet_b0",
    "regnety_016",
    "ghostnet_100",
    "repvit_m1",
    "dla34",
    "fastvit_t8",
    "efficientvit_b0",
    "mobilevitv2_050",
    "levit_128s",
    "tiny_vit_5m_224",
    "edgenext_small",
    "caformer_s18",
    "eva02_tiny_patch14_224",
    "swinv2_tiny_window8_256",
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


# -- verification of a pruned model: what the prune stage asks before it accepts a generic prune -----------
FUNCTION_RTOL = 1e-4  # relative to the output's scale: summation order only, not a changed function
REPARAMETERIZED_RTOL = 1e-4
EXPLODING_OUTPUTS = 1e4  # random-weight outputs beyond this are float32 noise for a parity check
LIVE_FEATURES = 1e-2  # random-weight features below this make every comparison of outputs pass


@dataclass
class Verification:
    """Every check of :func:`verify_pruned`: what was measured, and each failure as "check: reason"."""

    measured: dict[str, Any]
    failures: list[str]
    not_applicable: dict[str, str] = field(default_factory=dict)  # check -> why it could not run

    @property
    def ok(self) -> bool:
        return not self.failures


def verify_pruned(
    dense: nn.Module, result: PruneResult, *, export: bool = True, seed: int = 0
) -> Verification:
    """Check ``result`` (pruned from ``dense``) before it is accepted; failures name the check and the layer.

    The checks: the output has the dense shape and is finite; MACs kept lie within ``TARGET_TOLERANCE`` of
    the plan's budget; ``save_pruned`` → ``load_pruned`` gives the same outputs; the plan is exact (its
    removals replayed on the dense weights compute what the dense model computes with those channels masked:
    ``rmtdeploy.pruning.exactness``; the layer of the first inexact removal is named); a model with
    re-parameterisable blocks computes the same after timm's ``reparameterize_model``; and the ONNX export
    matches PyTorch (``rmtdeploy.exporting.export_onnx``'s parity check)."""
    from rmtdeploy.adapters import get_adapter

    adapter = get_adapter(dense)
    generator = torch.Generator().manual_seed(seed)
    images = adapter.example_inputs(dense, batch=2)
    images = torch.randn(images.shape, generator=generator)
    verification = Verification(measured={}, failures=[])
    measured, failed = verification.measured, verification.failures
    dense_features, dense_logits = features_and_logits(dense.eval(), images)
    dense_shape = list(dense_logits.shape)
    features, logits = features_and_logits(result.model, images)
    measured["output_shape"] = list(logits.shape)
    if measured["output_shape"] != dense_shape:
        failed.append(f"output shape: {measured['output_shape']} != dense {dense_shape}")
    if not (torch.isfinite(features).all() and torch.isfinite(logits).all()):
        failed.append("finite outputs: the pruned model outputs NaN or Inf")
    budget = result.plan.get("budget") or {}
    kept = result.macs_kept if budget.get("metric") == "macs" else result.params_kept
    measured["kept"] = round(kept, 4)
    if budget and abs(kept - budget["keep"]) > TARGET_TOLERANCE * budget["keep"]:
        failed.append(
            f"budget: {budget['metric']} kept {kept:.3f}, target {budget['keep']} ±{TARGET_TOLERANCE:.0%}"
        )
    with tempfile.TemporaryDirectory(prefix="rmtdeploy_verify_") as tmp:
        save_pruned(Path(tmp) / "pruned", result)
        reloaded = load_pruned(Path(tmp) / "pruned").model
    measured["reload_max_abs"] = _max_abs_difference(
        features_and_logits(reloaded, images), (features, logits)
    )
    if measured["reload_max_abs"] > RELOAD_ATOL:
        failed.append(f"reload: load_pruned differs by {measured['reload_max_abs']:.2e}")
    scales = (dense_features.abs().max().item(), max(features.abs().max().item(), logits.abs().max().item()))
    dense, pruned = _live_pair(dense, result.model, images, scales, measured)
    if measured["output_shape"] == dense_shape:
        _function_check(dense, adapter, result.plan["operations"], images, verification)
    else:
        verification.not_applicable["function"] = "the output shape differs from the dense model's"
    _reparameterized_check(pruned, images, verification)
    if export and not failed:
        _export_check(pruned, images, verification)
    return verification


def _live_pair(
    dense: nn.Module,
    pruned: nn.Module,
    images: torch.Tensor,
    scales: tuple[float, float],
    measured: dict[str, Any],
) -> tuple[nn.Module, nn.Module]:
    """``dense`` and ``pruned`` (a zero-initialised classifier seeded: :func:`with_live_classifier`), or copies
    whose BatchNorm statistics are re-estimated on ``images`` when the random-weight dense features vanish
    (deep EfficientNets and RegNets reach 1e-13: comparisons of outputs that small pass whatever the layers
    compute) or either model's outputs explode (MobileOne reaches 1e13, where float32 rounding alone fails any
    parity tolerance). ``scales``: max |dense features|, max |pruned outputs|. The copies are the same
    function of their weights."""
    from rmtdeploy.pruning import recalibrate_batchnorm

    dense_scale, pruned_scale = scales
    measured["dense_feature_scale"] = float(f"{dense_scale:.3g}")
    pruned = with_live_classifier(pruned)
    if LIVE_FEATURES <= dense_scale <= EXPLODING_OUTPUTS and pruned_scale <= EXPLODING_OUTPUTS:
        return dense, pruned
    dense = recalibrate_batchnorm(copy.deepcopy(dense), [images])
    pruned = recalibrate_batchnorm(copy.deepcopy(pruned), [images])
    live = features_and_logits(dense, images)[0].abs().max().item()
    measured["checked_on"] = (
        f"copies with BatchNorm statistics from the check's images (features up to {live:.3g})"
    )
    return dense, pruned


def replay(dense: nn.Module, adapter, operations: list[dict[str, Any]], example_inputs) -> nn.Module:
    """A copy of ``dense`` with ``operations`` applied and repaired: the plan's structure on the dense weights."""
    from rmtdeploy.pruning.graph import apply_operations, build_dependency_graph

    model = copy.deepcopy(dense).eval()
    if operations:
        apply_operations(build_dependency_graph(model, adapter, example_inputs), model, operations)
    adapter.repair(model)
    return model


def with_live_classifier(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy whose all-zero classifier weights (Hiera's initialisation) are seeded random
    ones: with zero logits every comparison of outputs would pass, whatever the layers before compute."""
    from rmtdeploy.adapters.base import classifier_layers

    dead = [p for layer in classifier_layers(model) for p in layer.parameters() if not p.abs().max() > 0]
    if not dead:
        return model.eval()
    model = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in classifier_layers(model):
            for param in layer.parameters():
                if not param.abs().max() > 0:
                    param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    return model


def function_gap(dense: nn.Module, adapter, operations: list[dict[str, Any]], images: torch.Tensor) -> float:
    """Max |replayed plan − masked dense| over the logits, relative to the masked logits' scale.

    Logits, not pre-logit features: the classifier keeps its outputs, so the two compare channel for channel
    (a zero-initialised classifier, Hiera's, gets seeded random weights first, on a copy)."""
    from rmtdeploy.pruning.exactness import masked_reference

    dense = with_live_classifier(dense)
    example = images[:1]
    reference = masked_reference(dense, adapter, operations, example)(images)[1]
    with torch.no_grad():
        replayed = replay(dense, adapter, operations, example)(images)
    return (replayed - reference).abs().max().item() / max(reference.abs().max().item(), 1e-12)


def _function_check(dense, adapter, operations, images, verification: Verification) -> None:
    from rmtdeploy.pruning.exactness import NotApplicable

    try:
        gap = function_gap(dense, adapter, operations, images)
    except NotApplicable as exc:
        verification.not_applicable["function"] = str(exc)
        return
    verification.measured["function_gap"] = gap
    if gap > FUNCTION_RTOL:
        culprit = _inexact_operation(dense, adapter, operations, images)
        where = f"; first inexact removal at {culprit}" if culprit else ""
        verification.failures.append(
            f"function: the pruned model differs from the dense model with the removed channels masked by "
            f"{gap:.1e} (relative){where}"
        )


def _inexact_operation(dense, adapter, operations, images) -> str | None:
    """The root layer of one removal that is inexact on its own (bisection), or None."""
    if len({(op["root"], op["fn"]) for op in operations}) != len(operations):
        return None  # a progressive plan: its later removals are numbered after the earlier ones
    candidates = operations
    while len(candidates) > 1:
        half = candidates[: len(candidates) // 2]
        if function_gap(dense, adapter, half, images) > FUNCTION_RTOL:
            candidates = half
        elif function_gap(dense, adapter, rest := candidates[len(half) :], images) > FUNCTION_RTOL:
            candidates = rest
        else:
            return None  # only inexact together
    return candidates[0]["root"]


def reparameterizable(model: nn.Module) -> list[str]:
    """Names of the modules timm's ``reparameterize_model`` would fuse (the model itself excluded)."""
    return [
        name
        for name, module in model.named_modules()
        if name and any(hasattr(module, method) for method in ("fuse", "reparameterize", "switch_to_deploy"))
    ]


def _reparameterized_check(model: nn.Module, images: torch.Tensor, verification: Verification) -> None:
    if not reparameterizable(model):
        return
    from timm.utils.model import reparameterize_model

    try:
        fused = reparameterize_model(model.eval())
        outputs = features_and_logits(fused, images)
    except Exception as exc:  # a stale cached width surfaces here: name it
        verification.failures.append(f"re-parameterised form: {type(exc).__name__}: {str(exc)[:200]}")
        return
    reference = features_and_logits(model, images)
    gap = _max_abs_difference(outputs, reference) / max(max(t.abs().max().item() for t in reference), 1e-12)
    verification.measured["reparameterized_gap"] = gap
    if gap > REPARAMETERIZED_RTOL:
        verification.failures.append(f"re-parameterised form: differs from the training form by {gap:.1e}")


def _export_check(model: nn.Module, images: torch.Tensor, verification: Verification) -> None:
    from rmtdeploy.errors import RmtdeployError
    from rmtdeploy.exporting.graph import export_onnx

    with tempfile.TemporaryDirectory(prefix="rmtdeploy_verify_") as tmp:
        try:
            exported = export_onnx(model, Path(tmp) / "model.onnx")
        except RmtdeployError as exc:
            verification.failures.append(f"ONNX export: {exc}")
            return
    verification.measured["onnx_max_abs_diff"] = exported.max_abs_diff
