"""Model zoo: names, weight sources and strict checkpoint loading."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from rmtdeploy import models
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import MODEL_ALIASES, load_model, model_family, resolve_model_name


def test_every_alias_names_a_timm_model():
    for alias, full in MODEL_ALIASES.items():
        assert timm.is_model(full), alias


def test_full_timm_names_pass_through_and_unknown_names_fail_with_a_hint():
    assert resolve_model_name("resnet34") == "resnet34"
    assert resolve_model_name("swin_t") == "swin_tiny_patch4_window7_224"
    with pytest.raises(RmtdeployError, match="unknown model 'swinn_t'"):
        resolve_model_name("swinn_t")


@pytest.mark.parametrize(
    "name, family",
    [
        ("vit_tiny_patch16_224", "vit"),
        ("deit_small_distilled_patch16_224", "deit"),
        ("swin_tiny_patch4_window7_224", "swin"),
        ("convnext_atto", "convnext"),
        ("hiera_tiny_224", "hiera"),
        ("resnet18", "resnet"),
    ],
)
def test_family_comes_from_the_timm_module(name, family):
    assert model_family(timm.create_model(name, pretrained=False)) == family


def test_random_weights_are_labelled():
    loaded = load_model("resnet18", weights="random")
    assert loaded.weights == "random" and loaded.is_random and not loaded.model.training


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_round_trip_gives_identical_weights(tmp_path, suffix):
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / f"ckpt{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:  # training scripts wrap the state dict and prefix DDP's "module."
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    loaded = load_model("resnet18", checkpoint=path)
    assert loaded.weights == f"checkpoint:{path}"
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_checkpoint_mismatches_are_named(tmp_path):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state.pop("fc.bias")
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(RmtdeployError) as info:
        load_model("resnet18", checkpoint=path)
    message = str(info.value)
    assert "1 missing: fc.bias" in message and "1 unexpected: extra.weight" in message
    assert "layer1.0.conv1.weight (32, 64, 3, 3) vs model (64, 64, 3, 3)" in message


def test_checkpoint_with_own_classifier_width_loads_with_num_classes(tmp_path):
    source = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "ten.pth"
    torch.save(source.state_dict(), path)
    assert load_model("resnet18", checkpoint=path, num_classes=10).model.fc.out_features == 10
    assert load_model("resnet18", checkpoint=path).model.fc.out_features == 10  # the head says it


def test_missing_or_unreadable_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RmtdeployError, match="checkpoint not found"):
        load_model("resnet18", checkpoint=tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(RmtdeployError, match="cannot read checkpoint"):
        load_model("resnet18", checkpoint=garbage)


def test_pretrained_without_a_reachable_hub_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(RmtdeployError, match="give a local checkpoint"):
        load_model("resnet18", weights="pretrained")


def test_random_weights_are_the_same_every_run_and_leave_the_global_seed_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = load_model("resnet18", weights="random").model.state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    second = load_model("resnet18", weights="random").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
