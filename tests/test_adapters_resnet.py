"""ResNet adapter: residual streams stay consistent across basic and bottleneck blocks."""

from __future__ import annotations

import pytest
import timm
import torch

from rmtdeploy.pruning import prune_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("name", ["resnet18", "resnet26"])
def test_residual_streams_share_one_width_per_stage(name):
    result = prune_model(timm.create_model(name, pretrained=False).eval(), keep_macs=0.5)
    model = result.model
    stage_widths = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        last_convs = [block.conv3 if hasattr(block, "conv3") else block.conv2 for block in stage]
        widths = {conv.out_channels for conv in last_convs}
        if stage[0].downsample is not None:
            widths.add(stage[0].downsample[0].out_channels)
        assert len(widths) == 1
        stage_widths += widths
    assert model.num_features == model.head_hidden_size == model.fc.in_features == stage_widths[-1] < 2048
    assert [info["num_chs"] for info in model.feature_info] == [model.bn1.num_features, *stage_widths]
    model.reset_classifier(10)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)
