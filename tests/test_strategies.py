"""Strategies do what their formulas say: on a model with planted signal they keep or drop it."""

from __future__ import annotations

import pytest
import timm
import torch
import torch_pruning as tp

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.finetuning import distill
from rmtdeploy.pruning import load_pruned, prune_model, save_pruned
from rmtdeploy.pruning.graph import layer_widths
from rmtdeploy.pruning.plan import plan_to_json
from rmtdeploy.scores import get_strategy, strategy_names
from rmtdeploy.scores.channel_spectra import channel_spectra_by_module
from rmtdeploy.scores.edge_budget import EdgeBudgetStrategy

PLANTED_BLOCK = 5
PLANTED_ROWS = torch.arange(0, 768, 12)  # 64 of the 768 hidden channels
MARKER = 1000.0
CNN_AT_128 = {"input_size": (3, 128, 128)}  # small inputs keep the suite fast; scores ignore resolution
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def planted_vit():
    """vit_tiny whose blocks.5 MLP holds 64 hidden channels of pure, rank-one signal with *small* norm.

    Their rows are 0.7× the norm of a noise row (magnitude ranks them last), yet together they form a
    spike ~1.9× above the MP edge (every spectral score ranks them first). Their fc1 biases carry markers
    so the survivors can be counted after pruning (biases take no part in any score).
    """
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=112).eval()
    fc1 = model.blocks[PLANTED_BLOCK].mlp.fc1
    with torch.no_grad():
        noise_row_norm = fc1.weight.norm(dim=1).mean()
        direction = torch.randn(fc1.in_features)
        fc1.weight[PLANTED_ROWS] = 0.7 * noise_row_norm * direction / direction.norm()
        fc1.bias.zero_()
        fc1.bias[PLANTED_ROWS] = MARKER
    return model


def surviving_planted(result) -> int:
    return int((result.model.blocks[PLANTED_BLOCK].mlp.fc1.bias >= MARKER).sum())


def kept_fraction(result, block: int) -> float:
    return result.model.blocks[block].mlp.fc1.out_features / 768


def test_planted_rows_are_a_spike_in_the_analysis(planted_vit):
    spectra = channel_spectra_by_module(planted_vit)[f"blocks.{PLANTED_BLOCK}.mlp.fc1"]
    assert spectra.spikes == 1
    top = torch.topk(spectra.row_signal, len(PLANTED_ROWS)).indices
    assert set(top.tolist()) == set(PLANTED_ROWS.tolist())


def test_magnitude_drops_the_small_signal_channels(planted_vit):
    result = get_strategy("magnitude").prune(planted_vit, keep_macs=0.5)
    assert surviving_planted(result) <= len(PLANTED_ROWS) // 4


@pytest.mark.parametrize("name", ["rmt", "hybrid"])
def test_spectral_strategies_keep_every_signal_channel(planted_vit, name):
    result = get_strategy(name).prune(planted_vit, keep_macs=0.5)
    assert surviving_planted(result) == len(PLANTED_ROWS)
    assert abs(result.macs_kept - 0.5) <= 0.03 * 0.5


def test_rmt_with_global_allocation_takes_most_from_all_bulk_layers(planted_vit):
    result = get_strategy("rmt", allocation="global").prune(planted_vit, keep_macs=0.5)
    others = [kept_fraction(result, b) for b in range(12) if b != PLANTED_BLOCK]
    assert kept_fraction(result, PLANTED_BLOCK) > max(others)


def test_rmt_by_default_gives_every_mlp_the_same_width_and_lets_the_spectrum_pick_the_channels(planted_vit):
    result = get_strategy("rmt").prune(planted_vit, keep_macs=0.5)
    assert len({kept_fraction(result, b) for b in range(12)}) == 1
    assert surviving_planted(result) == len(PLANTED_ROWS)


def test_rmt_ranks_across_layers_by_default_only_on_the_families_where_that_measured_best():
    """allocation=auto: one ranking across layers for Hiera (the accuracy benchmark's evidence), the same
    keep per layer elsewhere; a named allocation is obeyed."""
    hiera = timm.create_model("hiera_tiny_224", embed_dim=48, num_heads=1, img_size=64, num_classes=10).eval()
    resnet = timm.create_model("resnet18", num_classes=10).eval()
    rmt = get_strategy("rmt")
    assert rmt.allocation == "auto"
    assert rmt.settings(hiera, 0.5).global_pruning and not rmt.settings(resnet, 0.5).global_pruning
    assert not get_strategy("rmt", allocation="uniform").settings(hiera, 0.5).global_pruning


def test_rmt_rejects_an_unknown_allocation_before_any_model_is_seen():
    with pytest.raises(RmtdeployError, match="allocation='greedy': expected one of auto, uniform, global"):
        get_strategy("rmt", allocation="greedy")


def test_magnitude_strategy_is_torch_prunings_group_magnitude(planted_vit):
    ours = get_strategy("magnitude").prune(planted_vit, keep_macs=0.6)
    reference = prune_model(
        planted_vit, importance=tp.importance.GroupMagnitudeImportance(p=2), keep_macs=0.6
    )
    assert ours.plan["operations"] == reference.plan["operations"]


def test_hybrid_is_pure_magnitude_at_light_pruning(planted_vit):
    assert get_strategy("hybrid").spectral_weight(0.8) == 0.0
    assert get_strategy("hybrid").spectral_weight(0.5) == 1.0
    hybrid = get_strategy("hybrid").prune(planted_vit, keep_macs=0.8)
    magnitude = get_strategy("magnitude").prune(planted_vit, keep_macs=0.8)
    assert hybrid.plan["operations"] == magnitude.plan["operations"]


def test_edge_budget_gives_the_signal_layer_the_smallest_ratio(planted_vit):
    ratios = EdgeBudgetStrategy().base_ratios(planted_vit)
    fc1 = {name: r for name, r in ratios.items() if name.endswith("mlp.fc1")}
    assert min(fc1, key=fc1.get) == f"blocks.{PLANTED_BLOCK}.mlp.fc1"
    result = get_strategy("edge-budget").prune(planted_vit, keep_macs=0.5)
    others = [kept_fraction(result, b) for b in range(12) if b != PLANTED_BLOCK]
    assert kept_fraction(result, PLANTED_BLOCK) > max(others)
    assert abs(result.macs_kept - 0.5) <= 0.03 * 0.5


def test_dynamic_switches_scoring_by_depth_and_composes_one_replayable_plan(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, pretrained_cfg_overlay=CNN_AT_128).eval()
    strategy = get_strategy("dynamic", steps=3, switch_depth=0.25)
    result = strategy.prune(model, keep_macs=0.5)
    steps = result.plan["strategy"]["steps"]
    assert [s["scoring"] for s in steps] == ["magnitude", "rmt", "rmt"]
    assert [s["goal_keep"] for s in steps] == pytest.approx([0.5 ** (1 / 3), 0.5 ** (2 / 3), 0.5], abs=1e-3)
    assert abs(result.macs_kept - 0.5) <= 0.03 * 0.5
    assert result.plan["macs"]["dense"] == result.dense_macs
    save_pruned(tmp_path / "dyn", result)
    loaded = load_pruned(tmp_path / "dyn")
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.model.eval()(x))


def falling_top1(*values: float):
    """A fake evaluator: the dense model's top-1, then each step's, in call order (the model is ignored)."""
    calls = iter(values)

    def evaluate(model):
        assert not model.training
        return next(calls)

    return evaluate


@pytest.fixture(scope="module")
def tiny_resnet():
    """timm's test ResNet: a few ms per pruning step. Its layers are narrow, so the tests prune with
    round_to=1 (multiples of 8 could not meet the small cuts of many geometric steps)."""
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False).eval()


def test_dynamic_switches_to_then_on_the_step_after_the_drop_passes_the_threshold(tiny_resnet):
    # Drops vs dense: 0.2, 0.5 (at the threshold: no switch), 0.9 (past it) -> steps 4 and 5 switch.
    evaluate = falling_top1(80.0, 79.8, 79.5, 79.1, 75.0, 70.0)
    strategy = get_strategy("dynamic", steps=5, drop_threshold=0.5, then="rmt")
    result = strategy.prune(tiny_resnet, keep_macs=0.5, evaluate=evaluate, round_to=1)
    steps = result.plan["strategy"]["steps"]
    assert [s["scoring"] for s in steps] == ["magnitude"] * 3 + ["rmt"] * 2
    assert [s["top1"] for s in steps] == [79.8, 79.5, 79.1, 75.0, 70.0]
    assert result.plan["strategy"]["dense_top1"] == 80.0


def test_dynamic_keeps_start_while_accuracy_holds_even_past_the_switch_depth(tiny_resnet):
    evaluate = falling_top1(80.0, 80.0, 79.9, 79.8, 79.7)
    strategy = get_strategy("dynamic", steps=4, switch_depth=0.0)  # the depth rule alone would switch at once
    result = strategy.prune(tiny_resnet, keep_macs=0.5, evaluate=evaluate, round_to=1)
    assert [s["scoring"] for s in result.plan["strategy"]["steps"]] == ["magnitude"] * 4


def test_dynamic_distils_after_recalibration_and_before_evaluation_and_records_each_step():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, pretrained_cfg_overlay=CNN_AT_128).eval()
    batches = [torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(1))]
    calls = []

    def finetune(student):  # a fresh timm BatchNorm has mean 0: nonzero means recalibrated already
        calls.append(("finetune", bool(student.bn1.running_mean.abs().sum() > 0)))
        return distill(student, model, batches, steps=3)

    def evaluate(candidate):
        calls.append(("evaluate", not candidate.training))
        return 100.0

    result = get_strategy("dynamic", steps=2).prune(
        model, keep_macs=0.6, calibration_batches=batches, finetune=finetune, evaluate=evaluate
    )
    assert calls == [("evaluate", True), *[("finetune", True), ("evaluate", True)] * 2]
    records = [step["finetune"] for step in result.plan["strategy"]["steps"]]
    assert [(r["steps"], r["images"]) for r in records] == [(3, 4), (3, 4)]
    assert all(r["loss_after"] < r["loss_before"] for r in records)
    assert plan_to_json(result.plan)  # JSON without NaN, as plan.json is written


def test_registry_lists_the_strategies_and_rejects_unknown_names_and_knobs():
    assert strategy_names() == ["data-rmt", "dynamic", "edge-budget", "hybrid", "magnitude", "rmt"]
    with pytest.raises(RmtdeployError, match="unknown strategy 'lottery'"):
        get_strategy("lottery")
    with pytest.raises(RmtdeployError, match="no knob steps"):
        get_strategy("rmt", steps=3)


def test_dynamic_ends_no_narrower_than_one_cut_to_its_goal():
    """Its steps count widths from the dense model, so a narrow stage loses what one cut would take: the
    40-channel first stage of a ConvNeXt-atto keeps one cut's 24 at keep 0.5, where rounding every step's
    widths down from the last step's left 8. Elsewhere the two budget searches may part by their slack."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    example = torch.zeros(1, 3, 32, 32)
    one_cut = layer_widths(
        get_strategy("magnitude").prune(model, keep_macs=0.5, example_inputs=example).model
    )
    result = get_strategy("dynamic").prune(model, keep_macs=0.5, example_inputs=example)
    stepped, dense = layer_widths(result.model), layer_widths(model)
    assert one_cut["stem.0"] == 24 and stepped["stem.0"] >= 24
    slack = {name: max(8, 0.05 * width) for name, width in dense.items()}
    narrower = {
        name: (one_cut[name], stepped[name]) for name in dense if stepped[name] < one_cut[name] - slack[name]
    }
    assert narrower == {}
    assert abs(result.macs_kept - 0.5) <= 0.03 * 0.5


def test_edge_budget_starves_no_layer_below_its_spike_or_uniform_floor():
    """Block 0 of a small ViT holds strong rank-8 signal (base ratio 0.045), block 1 is noise (0.9): one
    factor for keep 0.3 pushed block 1 to one head of 3 and 31% of its MLP. Now every fitted layer keeps at
    least 2 channels per spike and 0.85·√keep of its channels (rounded up to 8 channels or a whole head)."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10
    ).eval()
    with torch.no_grad():
        for layer in (model.blocks[0].mlp.fc1, model.blocks[0].mlp.fc2, model.blocks[0].attn.qkv):
            signal = torch.randn(layer.out_features, 8) @ torch.randn(8, layer.in_features)
            layer.weight.add_(signal * (3 * layer.weight.norm() / signal.norm()))
    spectra = channel_spectra_by_module(model)
    assert spectra["blocks.0.mlp.fc1"].spikes == 8 and spectra["blocks.1.mlp.fc1"].spikes == 0
    keep = 0.3
    result = get_strategy("edge-budget").prune(
        model, keep_macs=keep, example_inputs=torch.zeros(1, 3, 32, 32)
    )
    dense, kept = layer_widths(model), layer_widths(result.model)
    floors = {
        name: max(2 * s.spikes, 0.85 * keep**0.5 * dense[name]) for name, s in spectra.items() if s.fitted
    }
    starved = {name: (kept[name], round(floor, 1)) for name, floor in floors.items() if kept[name] < floor}
    assert starved == {}
    assert kept["blocks.1.attn.qkv"] == 2 * 192  # 2 of 3 heads: ceil(0.47 · 3)
    assert abs(result.macs_kept - keep) <= 0.03 * keep


def test_edge_budget_floor_knobs_are_range_checked():
    with pytest.raises(RmtdeployError, match="uniform_floor=1.0: a share of the uniform keep in"):
        get_strategy("edge-budget", uniform_floor=1.0)
    with pytest.raises(RmtdeployError, match="spike_margin=-1.0: channels per spike"):
        get_strategy("edge-budget", spike_margin=-1)
