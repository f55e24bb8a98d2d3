"""Latency-aware allocation: component keys, weighted ratios, the pruner cutting a weighted component
harder at the same budget, the tilted candidates, the choice rule, and one real measured choice."""

from __future__ import annotations

import pytest
import timm
import torch

from rmtdeploy.benchmark.allocation import fastest_allocation
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning import latency, prune_model
from rmtdeploy.pruning.latency import module_component, tilted_weights, weighted_ratios

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


def test_tilted_candidates_split_the_model_front_back_and_attention_rest():
    candidates = tilted_weights(_vit(), torch.zeros(1, 3, 32, 32), tilt=1.5)
    assert set(candidates) == {"front-first", "back-first", "attention-first", "non-attention-first"}
    front, attention = candidates["front-first"], candidates["attention-first"]
    assert front["blocks.0"] == front["blocks.0.attn"] == 1.5 and front["blocks.1"] == pytest.approx(1 / 1.5)
    assert attention["blocks.1.attn"] == 1.5 and attention["blocks.1"] == pytest.approx(1 / 1.5)
    assert all(
        w == pytest.approx(1 / v)
        for w, v in zip(candidates["back-first"].values(), front.values(), strict=True)
    )
    resnet, example = _resnet(), torch.zeros(1, 3, 64, 64)
    assert set(tilted_weights(resnet, example)) == {"front-first", "back-first"}
    # With the units' owners: a stage's residual width (shared by blocks) against a block's own width.
    owners = [("conv1", "layer1.0.bn2", "layer1.1.bn2"), ("layer1.0.conv1", "layer1.0.bn1")]
    by_kind = tilted_weights(resnet, example, owners=owners)
    assert by_kind["shared-first"] == {latency.SHARED: 1.5, latency.OWN: 1 / 1.5}
    assert weighted_ratios(resnet, owners, [0.4, 0.4], by_kind["shared-first"]) == pytest.approx(
        [0.6, 0.4 / 1.5]
    )


class _Speedup:
    def __init__(self, candidate, median):
        self.candidate, self.median = candidate, median


@pytest.mark.parametrize(
    ("ratios", "macs", "chosen"),
    [({"a": 1.10, "b": 1.03}, {"a": 100, "b": 100}, "a"),  # the fastest at equal MACs
     ({"a": 1.10, "b": 1.03}, {"a": 90, "b": 100}, "b"),  # a is faster only because it has fewer MACs
     ({"a": 1.01, "b": 0.95}, {"a": 100, "b": 100}, "base")],  # nothing beats MAC-only by MIN_GAIN
)  # fmt: skip
def test_the_fastest_allocation_at_equal_macs_is_chosen_past_the_noise(monkeypatch, ratios, macs, chosen):
    import rmtdeploy.benchmark as benchmark

    seen = {}

    def fake_measure(paths, **kwargs):
        seen["labels"] = sorted(paths)
        return type("Report", (), {"speedups": [_Speedup(k, v) for k, v in ratios.items()], "conditions": {}})

    monkeypatch.setattr(benchmark, "measure_onnx_latency", fake_measure)
    model = _vit()
    candidates = {"base": (model, 100), **{k: (model, m) for k, m in macs.items()}}
    label, record = fastest_allocation(candidates, torch.zeros(1, 3, 32, 32), baseline="base", runs=3)
    assert label == chosen and record["chosen"] == chosen and seen["labels"] == ["a", "b", "base"]
    assert record["gain_at_equal_macs"]["a"] == pytest.approx(ratios["a"] * macs["a"] / 100)


def test_a_measured_allocation_is_recorded_and_is_the_one_built():
    model = _vit()
    plain = prune_model(model, keep_macs=0.5, model_name="vit_tiny_patch16_224")
    aware = prune_model(
        model, keep_macs=0.5, model_name="vit_tiny_patch16_224", latency_weights=fastest_allocation
    )
    record = aware.plan["latency_allocation"]
    tilts = {"front-first", "back-first", "attention-first", "non-attention-first"}
    assert tilts <= set(record["gain_at_equal_macs"]) <= tilts | {"shared-first", "own-first"}
    assert (
        record["chosen"] in {"mac-only", *record["gain_at_equal_macs"]}
        and "ONNX Runtime CPU" in record["measured"]
    )
    assert abs(aware.macs_kept - 0.5) <= 0.015
    widths = lambda r: r.plan["widths"]["pruned"]  # noqa: E731
    if record["chosen"] == "mac-only":
        assert record["weights"] is None and widths(aware) == widths(plain)
    else:
        # The recorded weights are the chosen candidate's, and they changed the widths.
        candidates = tilted_weights(model, torch.zeros(1, 3, 32, 32))
        candidates.update(latency.width_kind_weights())
        assert record["weights"] == candidates[record["chosen"]] and widths(aware) != widths(plain)
