"""recalibrate_batchnorm re-estimates running statistics and restores the model's modes."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning import prune_model, recalibrate_batchnorm

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_recalibration_matches_the_statistics_of_the_data():
    model = prune_model(timm.create_model("resnet18", pretrained=False).eval(), keep_macs=0.5).model
    bn = model.bn1
    momentum = bn.momentum
    batches = [torch.randn(4, 3, 64, 64) * 2 + 1 for _ in range(3)]
    recalibrate_batchnorm(model, batches)
    assert not model.training and not bn.training and bn.momentum == momentum
    assert int(bn.num_batches_tracked) == 3
    # bn1 sees conv1's outputs: its running mean is their per-channel mean over all batches (equal sizes).
    with torch.no_grad():
        conv_out = torch.cat([model.conv1(x) for x in batches])
    assert torch.allclose(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-4)


def test_recalibration_accepts_input_target_pairs_and_stops_at_max_batches():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5))
    recalibrate_batchnorm(model, ((torch.randn(2, 3, 8, 8), 0) for _ in range(10)), max_batches=4)
    assert int(model[1].num_batches_tracked) == 4


def test_recalibration_without_batches_is_refused_before_resetting():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    model[1].running_mean.fill_(3.0)
    with pytest.raises(RmtdeployError, match="at least one batch"):
        recalibrate_batchnorm(model, [])
    assert torch.all(model[1].running_mean == 3.0)
