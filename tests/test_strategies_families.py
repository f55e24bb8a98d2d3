"""Every family × every strategy × keep {0.75, 0.5}: a smaller model that runs, saves and reloads.

One small timm model per family (the issue's CI matrix), built at a reduced input resolution so the 60
cases fit CI's time budget (every pruning mechanism is resolution independent; the adapter tests run the
native 224 inputs). Per case: the forward on batch 2 has the right
shape, MACs are within ±3% of the target, parameters shrink, save → load gives identical outputs, and
attention models give the same output through the fused (SDPA) and the explicit attention path. Outputs
are compared as pre-logit features and logits: timm zero-initialises Hiera's classifier, so its random
logits are all zero and would compare equal whatever the body computes.
"""

from __future__ import annotations

import pytest
import timm
import torch
from attention_adapter_checks import features_and_logits

from rmtdeploy.pruning import load_pruned, save_pruned
from rmtdeploy.scores import get_strategy, strategy_names

_CNN_AT_128 = {"pretrained_cfg_overlay": {"input_size": (3, 128, 128)}}
FAMILY_MODELS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 112}),
    "deit": ("deit_tiny_distilled_patch16_224", {"img_size": 112}),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 128, "window_size": 4}),
    "convnext": ("convnext_atto", _CNN_AT_128),
    "hiera": ("hiera_tiny_224", {"img_size": 128}),
    "resnet": ("resnet18", _CNN_AT_128),
}
pytestmark = pytest.mark.usefixtures("single_torch_thread")
# Fewer progressive steps keep the CI matrix inside its time budget; the mechanism is the same.
KNOBS = {"dynamic": {"steps": 2}}
_MODELS: dict[str, torch.nn.Module] = {}


def dense(family: str) -> torch.nn.Module:
    if family not in _MODELS:
        torch.manual_seed(0)
        name, kwargs = FAMILY_MODELS[family]
        _MODELS[family] = timm.create_model(name, pretrained=False, **kwargs).eval()
    return _MODELS[family]


def set_fused_attention(model: torch.nn.Module, fused: bool) -> int:
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
            switched += 1
    return switched


@pytest.mark.parametrize("keep", [0.75, 0.5])
@pytest.mark.parametrize("strategy", strategy_names())
@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_family_prunes_with_strategy(family, strategy, keep, tmp_path):
    model = dense(family)
    result = get_strategy(strategy, **KNOBS.get(strategy, {})).prune(model, keep_macs=keep)
    pruned = result.model.eval()
    assert abs(result.macs_kept - keep) <= 0.03 * keep
    assert result.pruned_params < result.dense_params
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())

    x = torch.randn(2, *result.plan["input_size"])
    with torch.no_grad():
        out = features_and_logits(pruned, x)
        assert out[1].shape == (2, 1000) and torch.isfinite(out[0]).all() and out[0].abs().max() > 0
        own_setting = [(m, m.fused_attn) for m in pruned.modules() if hasattr(m, "fused_attn")]
        if set_fused_attention(pruned, False):
            explicit = features_and_logits(pruned, x)
            set_fused_attention(pruned, True)
            for fused_part, explicit_part in zip(features_and_logits(pruned, x), explicit, strict=True):
                assert torch.allclose(fused_part, explicit_part, atol=1e-5, rtol=0)
            for module, fused in own_setting:  # Swin defaults to explicit attention: leave it as it was
                module.fused_attn = fused

    save_pruned(tmp_path / "pruned", result)
    reloaded = load_pruned(tmp_path / "pruned").model
    with torch.no_grad():
        for reloaded_part, part in zip(features_and_logits(reloaded, x), out, strict=True):
            assert torch.equal(reloaded_part, part)
