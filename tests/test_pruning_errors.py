"""Bad budgets, ratios and directories fail with one-line RmtdeployErrors, never tracebacks from TP."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import file_sha256
from rmtdeploy.pruning import load_pruned, prune_model, save_pruned

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("resnet18", pretrained=False).eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_macs": 0.0}, "keep_macs must lie in"),
        ({"keep_macs": -0.2}, "keep_macs must lie in"),
        ({"keep_params": 1.5}, "keep_params must lie in"),
        ({"keep_macs": 0.5, "keep_params": 0.5}, "not both"),
        ({}, "give a budget"),
        ({"keep_macs": 0.5, "round_to": 0}, "round_to must be"),
        ({"keep_macs": 0.5, "min_channels": 0}, "min_channels must be"),
        ({"keep_macs": 0.001}, "cannot reach keep_macs=0.001"),
    ],
)
def test_bad_budget_is_a_user_error(resnet, kwargs, message):
    with pytest.raises(RmtdeployError, match=message):
        prune_model(resnet, **kwargs)


def test_ratio_that_would_empty_a_layer_is_refused(resnet):
    with pytest.raises(RmtdeployError, match="would leave the layer empty"):
        prune_model(resnet, pruning_ratio_dict={resnet.layer1[0].conv1: 1.0})


def test_ratio_keys_must_be_modules_of_the_model(resnet):
    stranger = nn.Linear(4, 4)
    with pytest.raises(RmtdeployError, match="keys must be modules"):
        prune_model(resnet, keep_macs=0.5, pruning_ratio_dict={stranger: 0.5})
    with pytest.raises(RmtdeployError, match="names no layer with prunable channels"):
        prune_model(resnet, keep_macs=0.5, pruning_ratio_dict={resnet.fc: 0.5})


def test_ratio_dict_with_global_pruning_is_refused(resnet):
    with pytest.raises(RmtdeployError, match="cannot be combined with global_pruning"):
        prune_model(
            resnet, keep_macs=0.5, global_pruning=True, pruning_ratio_dict={resnet.layer1[0].conv1: 0.5}
        )


def test_model_without_adapter_is_refused():
    with pytest.raises(RmtdeployError, match="no pruning adapter"):
        prune_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), keep_macs=0.5)


def test_load_from_a_directory_without_plan_fails(tmp_path):
    with pytest.raises(RmtdeployError, match="no plan.json"):
        load_pruned(tmp_path)


def test_load_refuses_a_foreign_plan_and_mismatched_weights(tmp_path, resnet):
    result = prune_model(resnet, keep_macs=0.75)
    save_pruned(tmp_path, result)
    with pytest.raises(RmtdeployError, match="already holds"):
        save_pruned(tmp_path, result)
    plan = json.loads((tmp_path / "plan.json").read_text())
    plan["operations"] = []  # weights are pruned, the replayed architecture is not
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(RmtdeployError, match="plan.json changed after its run wrote it"):
        load_pruned(tmp_path)
    # Even with the manifest made to agree, the replayed architecture does not take the weights.
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"]["plan.json"] = file_sha256(tmp_path / "plan.json")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RmtdeployError, match="does not fit the architecture"):
        load_pruned(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(RmtdeployError, match="not an rmtdeploy pruning plan"):
        load_pruned(tmp_path)


def test_input_model_keeps_its_training_mode(resnet):
    resnet.train()
    try:
        result = prune_model(resnet, keep_macs=0.75)
        assert result.model.training and resnet.training
    finally:
        resnet.eval()
    assert torch.is_grad_enabled()


def test_frozen_parameters_are_still_pruned(resnet):
    resnet.requires_grad_(False)
    try:
        result = prune_model(resnet, keep_macs=0.75)
    finally:
        resnet.requires_grad_(True)
    assert result.plan["operations"] and abs(result.macs_kept / 0.75 - 1) <= 0.03
    assert not any(p.requires_grad for p in result.model.parameters())
