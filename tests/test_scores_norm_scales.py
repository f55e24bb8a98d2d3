"""Norm layers' channel scales are found from the call order, and the rmt score weighs channels by them."""

from __future__ import annotations

import pytest
import timm
import torch

from rmtdeploy.scores import get_strategy
from rmtdeploy.scores.norm_scales import norm_channel_scales

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _scales(name, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    return model, norm_channel_scales(model, torch.randn(1, 3, 64, 64))


def test_batchnorm_after_a_conv_scales_its_rows_by_gamma_over_sigma():
    model, scales = _scales("resnet18")
    with torch.no_grad():
        model.bn1.weight.uniform_(-2, 2)
        model.bn1.running_var.uniform_(0.5, 3)
    scales = norm_channel_scales(model, torch.randn(1, 3, 64, 64))
    bn = model.bn1
    expected = (bn.weight / (bn.running_var + bn.eps).sqrt()).abs()
    assert torch.allclose(scales["conv1"]["rows"], expected)
    assert "rows" in scales["layer2.0.downsample.0"]  # the shortcut's conv → BN pair too


def test_layernorm_before_a_linear_scales_its_columns_and_layer_scale_its_rows():
    model, scales = _scales("vit_tiny_patch16_224", img_size=64, depth=2, init_values=0.1)
    assert torch.equal(scales["blocks.0.attn.qkv"]["cols"], model.blocks[0].norm1.weight.abs())
    assert torch.equal(scales["blocks.1.mlp.fc1"]["cols"], model.blocks[1].norm2.weight.abs())
    assert torch.equal(scales["blocks.0.mlp.fc2"]["rows"], model.blocks[0].ls2.gamma.abs())
    assert "cols" not in scales.get("blocks.0.mlp.fc2", {})  # GELU between fc1 and fc2 is no norm


def test_convnext_bare_gamma_scales_the_last_layer_of_its_block():
    model, scales = _scales("convnext_atto")
    block = model.stages[0].blocks[0]
    assert torch.equal(scales["stages.0.blocks.0.mlp.fc2"]["rows"], block.gamma.abs())
    assert torch.equal(scales["stages.0.blocks.0.mlp.fc1"]["cols"], block.norm.weight.abs())


def test_rmt_prunes_the_channels_a_batchnorm_switches_off():
    # Channels whose BN gamma is 0 contribute nothing to the function, whatever their conv weights.
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained_cfg_overlay={"input_size": (3, 64, 64)}).eval()
    off = torch.arange(0, 256, 4)  # 64 of layer3.0.conv1's 256 channels
    with torch.no_grad():
        model.layer3[0].conv1.weight[off] *= 3  # big weights: magnitude would keep them
        model.layer3[0].bn1.weight[off] = 0.0
    kept = get_strategy("rmt").prune(model, keep_macs=0.6).plan["operations"]
    pruned = {i for op in kept if op["root"] == "layer3.0.conv1" for i in op["pruned"]}
    assert len(pruned) >= 32 and pruned <= set(off.tolist())  # the switched-off channels go first
    unscaled = get_strategy("rmt", norm_scales=False).prune(model, keep_macs=0.6).plan["operations"]
    pruned_unscaled = {i for op in unscaled if op["root"] == "layer3.0.conv1" for i in op["pruned"]}
    assert not pruned_unscaled & set(off.tolist())  # blind to the BN, the big weights win


def test_rmt_flow_score_prunes_the_channels_no_consumer_reads():
    # "flow": producer power × the consumers' reading. Channels with big fc1 rows whose fc2 columns are
    # zero deliver nothing downstream; the per-channel "signal" score, reading fc1 too, keeps some.
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2).eval()
    unread = torch.arange(0, 768, 8)  # 96 of block 0's 768 hidden channels
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[unread] *= 3
        model.blocks[0].mlp.fc2.weight[:, unread] = 0.0

    def pruned_hidden(**knobs):
        operations = get_strategy("rmt", **knobs).prune(model, keep_macs=0.6).plan["operations"]
        return {i for op in operations if op["root"] == "blocks.0.mlp.fc1" for i in op["pruned"]}

    assert set(unread.tolist()) <= pruned_hidden(score="flow")
    assert not set(unread.tolist()) <= pruned_hidden(score="signal")
