"""The adapter registry and the defaults every family inherits."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from rmtdeploy.adapters import get_adapter
from rmtdeploy.adapters.base import ArchitectureAdapter, classifier_layers
from rmtdeploy.adapters.convnext import ConvNeXtAdapter
from rmtdeploy.adapters.resnet import ResNetAdapter
from rmtdeploy.adapters.vit import VisionTransformerAdapter
from rmtdeploy.errors import RmtdeployError

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize(
    ("name", "adapter"),
    [
        ("vit_tiny_patch16_224", VisionTransformerAdapter),
        ("deit_tiny_patch16_224", VisionTransformerAdapter),
        ("deit_tiny_distilled_patch16_224", VisionTransformerAdapter),
        ("convnext_atto", ConvNeXtAdapter),
        ("resnet18", ResNetAdapter),
    ],
)
def test_family_resolves_to_its_adapter_and_repair_is_a_no_op_when_dense(name, adapter):
    model = timm.create_model(name, pretrained=False).eval()
    found = get_adapter(model)
    assert type(found) is adapter
    before = {k: v for k, v in vars(model).items() if isinstance(v, int)}
    found.repair(model)
    assert {k: v for k, v in vars(model).items() if isinstance(v, int)} == before


def test_model_outside_every_family_has_no_adapter():
    with pytest.raises(RmtdeployError, match="no pruning adapter for Sequential"):
        get_adapter(nn.Sequential(nn.Linear(2, 2)))


def test_two_headed_classifier_is_ignored_whole():
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    assert classifier_layers(model) == [model.head, model.head_dist]
    assert get_adapter(model).ignored_layers(model) == [model.head, model.head_dist]


def test_default_trace_forward_is_the_models_forward():
    model = timm.create_model("resnet18", pretrained=False).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ArchitectureAdapter().trace_forward(model, images), model(images))


def test_create_kwargs_keep_a_non_default_class_count():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    assert get_adapter(model).create_kwargs(model) == {"num_classes": 10}
