"""ConvNeXt adapter: layer-scale gamma and GRN parameters are cut with their channels; cached widths follow."""

from __future__ import annotations

import pytest
import timm
import torch

from rmtdeploy.pruning import prune_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _kept_rows(dense: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Indices of the dense rows each pruned row came from (random weights: rows are unique)."""
    flat_dense, flat_pruned = dense.flatten(1), pruned.flatten(1)
    return torch.tensor([int((flat_dense == row).all(dim=1).nonzero()) for row in flat_pruned])


def test_layer_scale_gamma_is_pruned_along_channels():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False).eval()
    with torch.no_grad():
        for stage in model.stages:
            for block in stage.blocks:
                block.gamma.uniform_()
    result = prune_model(model, keep_macs=0.5)
    for dense_stage, stage in zip(model.stages, result.model.stages, strict=True):
        for dense_block, block in zip(dense_stage.blocks, stage.blocks, strict=True):
            kept = _kept_rows(dense_block.conv_dw.weight, block.conv_dw.weight)
            assert block.gamma.shape == (block.conv_dw.out_channels,)
            assert torch.equal(block.gamma, dense_block.gamma[kept])


def test_cached_widths_follow_the_last_stage_and_the_head_can_be_reset():
    result = prune_model(timm.create_model("convnext_atto", pretrained=False).eval(), keep_macs=0.5)
    model = result.model
    width = model.stages[-1].blocks[-1].conv_dw.out_channels
    assert width < 320
    assert model.num_features == model.head_hidden_size == model.head.in_features == width
    stage_widths = [stage.blocks[-1].conv_dw.out_channels for stage in model.stages]
    assert [info["num_chs"] for info in model.feature_info] == stage_widths
    model.reset_classifier(10)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)


def test_convnext_v2_global_response_norm_is_pruned():
    model = timm.create_model("convnextv2_atto", pretrained=False).eval()
    result = prune_model(model, keep_macs=0.5)
    for block in (b for stage in result.model.stages for b in stage.blocks):
        assert block.mlp.grn.weight.numel() == block.mlp.fc1.out_channels  # v2 atto runs its MLP as 1x1 convs
    with torch.no_grad():
        assert result.model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
