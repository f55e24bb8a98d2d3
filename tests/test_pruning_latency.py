"""Latency-aware allocation: component keys shared by ONNX node names and module names, weighted ratios,
the pruner cutting a costly component harder at the same budget, and one real ORT profile."""

from __future__ import annotations

import pytest
import timm
import torch

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning import prune_model
from rmtdeploy.pruning.latency import (
    component_cost_weights,
    module_component,
    onnx_node_component,
    weighted_ratios,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10
    ).eval()


def _resnet():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 64, 64)}
    return model


@pytest.mark.parametrize(
    ("node", "component"),
    [("/blocks/blocks.3/attn/qkv/MatMul", "blocks.3.attn"), ("/blocks/blocks.3/mlp/fc1/MatMul", "blocks.3"),
     ("/layer2/layer2.0/conv1/Conv", "layer2.0"), ("/layers/layers.1/blocks/blocks.0/attn/MatMul", "layers.1.attn"),
     ("/Add", "(top)"), ("fused_node_17", "(unscoped)")],
)  # fmt: skip
def test_onnx_nodes_and_modules_share_component_keys(node, component):
    assert onnx_node_component(node) == component


def test_module_components_match():
    vit = _vit()
    assert module_component(vit, "blocks.1.attn.qkv") == "blocks.1.attn"
    assert module_component(vit, "blocks.1.mlp.fc1") == "blocks.1"
    assert module_component(_resnet(), "layer3.1.conv2") == "layer3.1"


def test_weights_scale_the_base_ratios_within_the_clip():
    vit = _vit()
    owners = [("blocks.0.attn.qkv",), ("blocks.0.mlp.fc1",), ("head",)]
    ratios = weighted_ratios(vit, owners, [0.5, 0.5, 0.0], {"blocks.0.attn": 10.0, "blocks.0": 0.8})
    assert ratios == pytest.approx([1.0, 0.4, 0.0])  # 10 clipped to 2; a whole layer stays whole


def test_a_costly_component_is_cut_harder_at_the_same_budget():
    model = _resnet()
    plain = prune_model(model, keep_macs=0.5, model_name="resnet18")
    costly = {"layer4.0": 2.0, "layer4.1": 2.0}
    aware = prune_model(model, keep_macs=0.5, model_name="resnet18", latency_weights=costly)
    assert abs(plain.macs_kept - 0.5) <= 0.015 and abs(aware.macs_kept - 0.5) <= 0.015
    widths = lambda r: r.plan["widths"]["pruned"]  # noqa: E731
    assert widths(aware)["layer4.0.conv1"] < widths(plain)["layer4.0.conv1"]
    assert widths(aware)["layer1.0.conv1"] >= widths(plain)["layer1.0.conv1"]
    assert aware.plan["latency_weights"] == costly and "latency_weights" not in plain.plan
    with pytest.raises(RmtdeployError, match="cannot be combined with global_pruning"):
        prune_model(model, keep_macs=0.5, model_name="resnet18", latency_weights=costly, global_pruning=True)


def test_measured_weights_cover_attention_and_the_rest_of_each_block():
    weights = component_cost_weights(_vit(), torch.zeros(1, 3, 32, 32), threads=1, runs=3)
    assert {"blocks.0", "blocks.0.attn", "blocks.1", "blocks.1.attn"} <= set(weights)
    assert all(w > 0 for w in weights.values())
