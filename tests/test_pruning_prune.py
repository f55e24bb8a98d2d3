"""prune_model on the small model of every family this package adapts: budgets, shapes, heads, save/load."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import timm
import torch
import torch_pruning as tp
from timm.layers import Attention
from torch import nn

from rmtdeploy.adapters import get_adapter
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.macs import count_ops
from rmtdeploy.pruning import TARGET_TOLERANCE, layer_report, load_pruned, prune_model, save_pruned

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TRANSFORMERS = ["vit_tiny_patch16_224", "deit_tiny_patch16_224"]
MODELS = [*TRANSFORMERS, "convnext_atto", "resnet18"]
KEEPS = (0.75, 0.5)
# DeiT-S distilled (dist token + head_dist) is larger: one budget only.
DISTILLED = pytest.param("deit_small_distilled_patch16_224", 0.5, marks=pytest.mark.slow)
# The light cut (0.75) of every model runs in `make test-slow`; keep 0.5 in every run.
CASES = [
    pytest.param(name, keep, marks=[pytest.mark.slow] if keep == 0.75 else [])
    for name in MODELS
    for keep in KEEPS
] + [DISTILLED]
ATTENTION_CASES = [(name, keep) for name in TRANSFORMERS for keep in KEEPS] + [DISTILLED]


@functools.cache
def dense_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval()


@functools.cache
def pruned(name: str, keep: float, head_rounding: str = "floor"):
    return prune_model(dense_model(name), keep_macs=keep, head_rounding=head_rounding)


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "keep"), CASES)
def test_pruned_model_meets_mac_budget_and_runs(name, keep):
    result = pruned(name, keep)
    dense = dense_model(name)
    example = torch.randn(1, 3, 224, 224)
    macs, params = count_ops(result.model, example)
    dense_macs, dense_params = count_ops(dense, example)
    assert (result.dense_macs, result.pruned_macs, result.pruned_params) == (dense_macs, macs, params)
    assert abs(macs / (keep * dense_macs) - 1) <= TARGET_TOLERANCE
    assert params < dense_params
    with torch.no_grad():
        assert result.model(images()).shape == (2, dense.num_classes)


@pytest.mark.parametrize(("name", "keep"), CASES)
def test_pruned_widths_are_rounded_and_floored(name, keep):
    plan = pruned(name, keep).plan
    changed = {n: w for n, w in plan["widths"]["pruned"].items() if w != plan["widths"]["dense"][n]}
    assert changed, "nothing was pruned"
    # Depthwise convolutions follow their residual stream; every width that moved is a multiple of 8.
    assert all(w % plan["round_to"] == 0 and w >= plan["min_channels"] for w in changed.values())


@pytest.mark.parametrize(("name", "keep"), CASES)
def test_save_load_gives_identical_outputs(name, keep, tmp_path):
    result = pruned(name, keep)
    save_pruned(tmp_path / "out", result)
    loaded = load_pruned(tmp_path / "out")
    # The saved plan is the in-memory one plus the sha256 that ties it to its weights.
    assert {k: v for k, v in loaded.plan.items() if k != "weights_sha256"} == json.loads(
        json.dumps(result.plan)
    )
    assert (loaded.pruned_macs, loaded.pruned_params) == (result.pruned_macs, result.pruned_params)
    with torch.no_grad():
        assert torch.equal(loaded.model(images()), result.model(images()))


@pytest.mark.parametrize(("name", "keep"), ATTENTION_CASES)
def test_heads_are_removed_whole_and_attention_attributes_agree(name, keep):
    result = pruned(name, keep, head_rounding="ceil")  # TP's rule: a head goes at any ratio
    dense_attn = [m for m in dense_model(name).modules() if isinstance(m, Attention)]
    attn = [m for m in result.model.modules() if isinstance(m, Attention)]
    assert any(a.num_heads < d.num_heads for a, d in zip(attn, dense_attn, strict=True))
    for a, d in zip(attn, dense_attn, strict=True):
        assert a.head_dim == d.head_dim  # heads go whole; head_dim never shrinks
        assert a.attn_dim == a.num_heads * a.head_dim >= a.head_dim
        assert a.qkv.out_features == 3 * a.attn_dim and a.proj.in_features == a.attn_dim
        assert a.scale == a.head_dim**-0.5
    assert [h["pruned"] for h in result.plan["heads"].values()] == [a.num_heads for a in attn]


@pytest.mark.parametrize(("name", "keep"), ATTENTION_CASES)
def test_fused_and_explicit_attention_agree(name, keep):
    model = copy.deepcopy(pruned(name, keep).model)
    attn = [m for m in model.modules() if isinstance(m, Attention)]
    with torch.no_grad():
        for m in attn:
            m.fused_attn = True
        fused = model(images())
        for m in attn:
            m.fused_attn = False
        explicit = model(images())
    assert torch.allclose(fused, explicit, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_keep_one_is_the_dense_model(name):
    dense = dense_model(name)
    result = prune_model(dense, keep_macs=1.0)
    assert result.plan["operations"] == []
    assert result.pruned_macs == result.dense_macs
    with torch.no_grad():
        assert torch.equal(result.model(images()), dense(images()))


def test_prune_leaves_the_input_model_untouched():
    dense = dense_model("resnet18")
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    pruned("resnet18", 0.5)
    after = dense.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_keep_params_budget_is_met():
    dense = dense_model("resnet18")
    result = prune_model(dense, keep_params=0.5)
    assert abs(result.params_kept / 0.5 - 1) <= TARGET_TOLERANCE


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet18"])
def test_global_pruning_meets_mac_budget(name):
    result = prune_model(dense_model(name), keep_macs=0.5, global_pruning=True)
    assert abs(result.macs_kept / 0.5 - 1) <= TARGET_TOLERANCE
    with torch.no_grad():
        assert result.model(images()).shape == (2, 1000)


def test_ratio_dict_is_scaled_to_budget_and_spares_unnamed_layers():
    dense = dense_model("resnet18")
    ratios = {dense.layer3[0].conv1: 0.8, dense.layer4[0].conv1: 0.4, dense.layer4[1].conv1: 0.2}
    result = prune_model(dense, keep_macs=0.8, pruning_ratio_dict=ratios)
    assert abs(result.macs_kept / 0.8 - 1) <= TARGET_TOLERANCE
    roots = {op["root"] for op in result.plan["operations"]}
    assert roots <= {"layer3.0.conv1", "layer4.0.conv1", "layer4.1.conv1"}
    widths = result.plan["widths"]["pruned"]
    assert widths["layer3.0.conv1"] < 256 and widths["layer4.1.conv1"] >= widths["layer4.0.conv1"]


def test_operations_keep_the_recorded_channels():
    dense = dense_model("vit_tiny_patch16_224")
    result = pruned("vit_tiny_patch16_224", 0.5, "ceil")  # heads go too
    fc1 = next(op for op in result.plan["operations"] if op["root"] == "blocks.0.mlp.fc1")
    kept = torch.tensor(fc1["kept"])
    assert torch.equal(
        result.model.blocks[0].mlp.fc1.weight,
        dense.blocks[0].mlp.fc1.weight[kept][:, _embed_kept(result.plan)],
    )
    heads = next(op for op in result.plan["operations"] if op["root"] == "blocks.0.attn.proj")
    assert heads["kind"] == "heads" and len(heads["kept_heads"]) == result.model.blocks[0].attn.num_heads


def _embed_kept(plan) -> torch.Tensor:
    # The embedding width is the only channel group of width 192 (its root is wherever TP's trace met it).
    op = next(op for op in plan["operations"] if op["kind"] == "channels" and op["width"] == 192)
    return torch.tensor(op["kept"])


def test_layer_report_lists_every_layer_and_block():
    plan = pruned("vit_tiny_patch16_224", 0.5).plan
    report = layer_report(plan)
    assert {row["name"] for row in report["layers"]} == set(plan["widths"]["dense"])
    fc1 = next(row for row in report["layers"] if row["name"] == "blocks.0.mlp.fc1")
    assert fc1["dense_width"] == 768 and fc1["kept_fraction"] == round(fc1["pruned_width"] / 768, 4)
    assert len(report["heads"]) == 12 and all(row["dense_heads"] == 3 for row in report["heads"])


@pytest.mark.parametrize(
    ("name", "ratio"), [("resnet18", 0.5), ("vit_tiny_patch16_224", 0.5), ("convnext_atto", 0.3)]
)
def test_magnitude_path_chooses_what_torch_pruning_chooses(name, ratio):
    """Same ratio everywhere: our units, scores and selection must reproduce TP's BasePruner exactly."""
    dense = dense_model(name)
    layers = [m for m in dense.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    ours = prune_model(
        dense, pruning_ratio_dict={m: ratio for m in layers}, min_channels=1, head_rounding="ceil"
    )

    reference = copy.deepcopy(dense)
    adapter = get_adapter(reference)
    heads = adapter.attention_heads(reference)
    pruner = tp.pruner.BasePruner(
        reference,
        adapter.example_inputs(reference),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=adapter.ignored_layers(reference),
        round_to=8,
        num_heads=dict(heads),
        prune_num_heads=bool(heads),
        prune_head_dims=not heads,
        head_pruning_ratio=ratio if heads else 0.0,
        unwrapped_parameters=adapter.unwrapped_parameters(reference),
        forward_fn=adapter.trace_forward,
        # Fresh dicts: TP's defaults are shared between pruner instances.
        in_channel_groups={},
        out_channel_groups={},
    )
    pruner.step()
    adapter.repair(reference)
    ours_state, reference_state = ours.model.state_dict(), reference.state_dict()
    assert ours_state.keys() == reference_state.keys()
    assert all(torch.equal(ours_state[k], reference_state[k]) for k in ours_state)


def test_without_head_pruning_every_head_stays():
    result = prune_model(dense_model("vit_tiny_patch16_224"), keep_macs=0.6, prune_heads=False)
    assert all(h["pruned"] == h["dense"] == 3 for h in result.plan["heads"].values())
    assert abs(result.macs_kept / 0.6 - 1) <= TARGET_TOLERANCE


def test_head_rounding_floor_keeps_heads_until_the_ratio_asks_for_a_whole_one():
    # vit_tiny has 3 heads per block: at keep 0.75 the uniform ratio is ~0.1, a third of a head.
    floor, ceil = pruned("vit_tiny_patch16_224", 0.75), pruned("vit_tiny_patch16_224", 0.75, "ceil")
    assert {h["pruned"] for h in floor.plan["heads"].values()} == {3}
    assert {h["pruned"] for h in ceil.plan["heads"].values()} == {2}
    assert floor.plan["head_rounding"] == "floor" and ceil.plan["head_rounding"] == "ceil"
    for result in (floor, ceil):
        assert abs(result.macs_kept - 0.75) <= 0.03 * 0.75
    with pytest.raises(RmtdeployError, match="head_rounding must be one of floor, ceil"):
        prune_model(dense_model("vit_tiny_patch16_224"), keep_macs=0.75, head_rounding="round")


def test_a_reference_that_is_not_the_models_ancestor_is_refused_before_any_trial():
    # The reference gives the widths ratios count from: a narrower model (or another architecture) cannot be.
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    narrower = prune_model(model, keep_macs=0.5, round_to=1).model
    with pytest.raises(RmtdeployError, match="the reference model does not match the model being pruned at"):
        prune_model(model, keep_macs=0.5, round_to=1, reference=narrower)
    with pytest.raises(RmtdeployError, match="min_keep_dict gives fc 1.5: a kept fraction lies in"):
        prune_model(model, keep_macs=0.5, round_to=1, min_keep_dict={model.fc: 1.5})
