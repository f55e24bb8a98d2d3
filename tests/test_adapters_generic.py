"""The generic adapter: timm models of no family are pruned where the graph traces them exactly, proven by
``verify_pruned`` (the plan against the dense model with the removed channels masked, the re-parameterised
form, reload, ONNX), and refused with the layer and the check named when they are not."""

from __future__ import annotations

import contextlib

import pytest
import timm
import torch
from torch import nn

from rmtdeploy.adapters import ADAPTERS, find_adapter, get_adapter
from rmtdeploy.adapters.generic import GenericAdapter
from rmtdeploy.coverage import function_gap, verify_pruned
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import ModelSource, model_family
from rmtdeploy.pruning import load_pruned, prune_model, save_pruned
from rmtdeploy.pruning.graph import build_dependency_graph

pytestmark = pytest.mark.usefixtures("single_torch_thread")
AT_64 = {"pretrained_cfg_overlay": {"input_size": (3, 64, 64)}}


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **AT_64, **kwargs).eval()


def test_a_timm_model_of_no_family_is_served_by_the_generic_adapter():
    model = _model("mobilenetv3_small_050")
    assert model_family(model) == "mobilenetv3"  # its timm file names it; the plan records that
    assert type(get_adapter(model)) is GenericAdapter and type(find_adapter(model)) is GenericAdapter
    assert "mobilenetv3" not in ADAPTERS
    with pytest.raises(RmtdeployError, match="no pruning adapter for Sequential"):
        get_adapter(nn.Sequential(nn.Conv2d(3, 8, 3)))  # not a timm model: nothing to rebuild it from


def test_squeeze_excitation_and_depthwise_blocks_prune_exactly_and_reload(tmp_path):
    model = _model("mobilenetv3_small_050")
    result = prune_model(model, keep_macs=0.5)
    verification = verify_pruned(model, result)
    assert verification.ok, verification.failures
    # Exact, not just running: the replayed plan is the dense model with the removed channels masked.
    assert verification.measured["function_gap"] < 1e-5
    assert verification.measured["onnx_max_abs_diff"] < 1e-4
    save_pruned(tmp_path / "pruned", result)
    plan = load_pruned(tmp_path / "pruned").plan
    assert plan["family"] == "mobilenetv3"  # rebuilt by timm name through the same family
    se_pairs = zip(_squeeze_excites(model), _squeeze_excites(result.model), strict=True)
    assert any(pruned.conv_expand.out_channels < dense.conv_expand.out_channels for dense, pruned in se_pairs)


def _squeeze_excites(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "SqueezeExcite"]


def test_grouped_convolutions_shrink_every_group_alike_and_prune_exactly():
    model = _model("regnetx_002")
    result = prune_model(model, keep_macs=0.5)
    pairs = zip(model.modules(), result.model.modules(), strict=True)
    grouped = [(d, p) for d, p in pairs if isinstance(d, nn.Conv2d) and 1 < d.groups < d.in_channels]
    assert grouped and any(p.in_channels < d.in_channels for d, p in grouped)
    assert all(p.groups == d.groups and p.in_channels % p.groups == 0 for d, p in grouped)
    assert (
        function_gap(model, get_adapter(model), result.plan["operations"], torch.randn(2, 3, 64, 64)) < 1e-5
    )


def test_reparameterisable_blocks_prune_in_training_form_and_fuse_to_the_same_function():
    model = _model("mobileone_s0")
    result = prune_model(model, keep_macs=0.5)
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures
    assert verification.measured["reparameterized_gap"] < 1e-4  # timm's reparameterize_model on the pruned
    blocks = [m for m in result.model.modules() if type(m).__name__ == "MobileOneBlock"]
    assert any(b.conv_kxk[0].conv.out_channels < d.conv_kxk[0].conv.out_channels
               for b, d in zip(blocks, [m for m in model.modules() if type(m).__name__ == "MobileOneBlock"], strict=True))  # fmt: skip
    for block in blocks:  # the group count its fused identity kernel is built from follows the branches
        assert block.groups == block.conv_kxk[0].conv.groups
    # The export is the fused form (one convolution per block), verified against the training form.
    adapter = get_adapter(result.model)
    branches = sum(1 for m in result.model.modules() if type(m).__name__ == "MobileOneBlock")
    with adapter.export_mode(result.model, "onnxruntime"):
        assert not any(type(m).__name__ == "MobileOneBlock" and m.reparam_conv is None
                       for m in result.model.modules())  # fmt: skip
    assert sum(1 for m in result.model.modules() if type(m).__name__ == "MobileOneBlock") == branches
    assert all(m.reparam_conv is None for m in result.model.modules() if type(m).__name__ == "MobileOneBlock")


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "vit_tiny_patch16_224"])
def test_a_model_without_classifier_keeps_its_output_width(name):
    # A ViT's features are its residual stream: found by the coverage sweep (a SigLIP ViT built without a
    # head came out 528 wide instead of 768); the last layer with weights now guards the output width.
    model = _model(name, num_classes=0)
    result = prune_model(model, keep_macs=0.5)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert result.model(images).shape == model(images).shape
    assert result.macs_kept < 0.53


class _Multiplier(nn.Module):
    """A channel-multiplier convolution (groups == in_channels, out = 2 x in) between two plain ones."""

    def __init__(self):
        super().__init__()
        self.stem, self.dw, self.fc = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3, groups=16), nn.Linear(32, 4)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.dw(self.stem(x)).mean((2, 3)))


def test_groups_the_graph_would_prune_wrongly_are_left_whole_with_the_reason():
    model, adapter = _Multiplier(), GenericAdapter()
    graph = build_dependency_graph(model, adapter, torch.randn(1, 3, 16, 16))
    names = {m: n for n, m in model.named_modules()}
    problem = adapter.group_problem(graph, graph.get_pruning_group(model.stem, graph.get_pruner_of_module(
        model.stem).prune_out_channels, list(range(16))), names)  # fmt: skip
    assert problem == "dw: grouped convolution with 16 groups from 16 to 32 channels (a channel multiplier)"


def test_a_pruned_forward_that_breaks_is_refused_naming_the_layer(monkeypatch):
    # Without its adapter, MetaFormer's Scale keeps a stale view shape: the generic path must say where.
    monkeypatch.delitem(ADAPTERS, "metaformer")
    model = _model("poolformerv2_s12")
    with pytest.raises(
        RmtdeployError, match=r"forward fails at stages\.\d\.blocks\.0\.\w+_scale\d \(Scale\)"
    ):
        prune_model(model, keep_macs=0.5)


def test_the_function_check_catches_channels_mapped_to_the_wrong_rows(monkeypatch):
    from rmtdeploy.adapters.byobnet import KeyValuePruner

    rows = KeyValuePruner.rows

    def shifted(layer, idxs):  # the right number of rows, the value rows of the wrong channels: it runs
        keys_and_values = rows(layer, idxs)
        inner, half = (layer.out_channels - 1) // 2, len(keys_and_values) // 2
        return keys_and_values[:half] + [
            1 + inner + (r - 1 - inner + 1) % inner for r in keys_and_values[half:]
        ]

    model = _model("mobilevitv2_050")
    result = prune_model(model, keep_macs=0.5)
    assert verify_pruned(model, result, export=False).ok
    monkeypatch.setattr(KeyValuePruner, "rows", staticmethod(shifted))
    verification = verify_pruned(model, result, export=False)
    assert any(f.startswith("function:") and "attn.out_proj" in f for f in verification.failures)


def test_the_prune_stage_refuses_a_generic_prune_that_fails_verification(tmp_path, monkeypatch):
    from rmtdeploy.coverage import Verification
    from rmtdeploy.pruning import stage

    def failing(dense, result, **_):
        return Verification(measured={}, failures=["function: differs by 1.0e-01 (relative); first inexact "
                                                   "removal at blocks.1.0.conv_pw"])  # fmt: skip

    monkeypatch.setattr("rmtdeploy.coverage.verify_pruned", failing)
    with pytest.raises(
        RmtdeployError, match=r"^refused mobilenetv3_small_050 \(generic adapter\): function:"
    ):
        source = ModelSource("mobilenetv3_small_050", weights="random")
        stage.prune(source, tmp_path / "out", keep_macs=0.5, strategy="magnitude", target="cpu-ort")
    assert not (tmp_path / "out").exists()  # nothing accepted, nothing written


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("tf_efficientnet_cc_b0_4e", "CondConv2d"),
        ("mixnet_s", "MixedConv2d"),
        ("gc_efficientnetv2_rw_t", "GlobalContext"),
    ],
)
def test_layers_the_graph_cannot_slice_refuse_the_model_before_any_work(name, layer):
    # Found by the coverage sweep: CondConv and GlobalContext ran out of memory while pruning, MixNet's split
    # broke its forward.
    model = timm.create_model(name, pretrained=False)
    with pytest.raises(RmtdeployError, match=f"cannot prune {name} \\(generic family\\): .*{layer}"):
        get_adapter(model)


@pytest.mark.usefixtures("single_torch_thread")
def test_a_graph_that_maps_channels_past_a_layers_width_refuses_the_model_naming_the_layer():
    # Found by the coverage sweep: Res2Net splits in dla60_res2next, where torch-pruning indexes past a
    # layer's width mid-removal (it was an IndexError-like RuntimeError, a "broken" row).
    torch.manual_seed(0)
    model = timm.create_model("dla60_res2next", pretrained=False).eval()
    with pytest.raises(
        RmtdeployError, match=r"maps the channels removed at level\d\.\S+ past a layer's width"
    ):
        prune_model(model, keep_macs=0.5)


@pytest.mark.parametrize(("name", "norm"), [("convnext_zepto_rms", "SimpleNorm2d"), ("test_vit4", "RmsNorm")])
def test_timm_rms_and_simple_norms_shrink_with_their_channels_and_prune_exactly(name, norm):
    # Found by the coverage sweep: torch-pruning saw their weights as bare parameters (normalized_shape stayed
    # dense) and the exactness check did not mask their statistics, so ConvNeXt's RMS variants were refused.
    model = _model(name)
    result = prune_model(model, keep_macs=0.5)
    norms = [m for m in result.model.modules() if type(m).__name__ == norm]
    assert norms
    assert all(n.normalized_shape == tuple(n.weight.shape) for n in norms)
    assert any(
        p.normalized_shape[0] < d.normalized_shape[0]
        for d, p in zip((m for m in model.modules() if type(m).__name__ == norm), norms, strict=True)
    )
    images = torch.randn(2, *result.plan["input_size"])
    assert function_gap(model, get_adapter(model), result.plan["operations"], images) < 1e-5


def test_the_function_check_masks_timm_norm_statistics(monkeypatch):
    # The check must fail when a norm's statistics are not narrowed: the pruned model is then not what the
    # masked reference computes.
    from rmtdeploy.pruning import exactness

    model = _model("convnext_zepto_rms")
    result = prune_model(model, keep_macs=0.5)
    images = torch.randn(2, *result.plan["input_size"])
    monkeypatch.setattr(exactness, "_masked_timm_norms", lambda *_: contextlib.nullcontext())
    assert function_gap(model, get_adapter(model), result.plan["operations"], images) > 1e-3


def test_an_index_mapping_that_grows_without_bound_is_refused_before_memory_runs_out(monkeypatch):
    # GlobalContext's reshapes made torch-pruning's flatten mapping compound until the kernel killed the
    # process (the sweep's one "broken" row); any such model is now refused with a message, whatever its layers.
    from rmtdeploy.pruning import graph

    monkeypatch.setattr(GenericAdapter, "unsupported_layers", {})
    monkeypatch.setattr(graph, "MAX_MAPPED_INDICES", 100_000)  # the same growth, caught sooner
    with pytest.raises(RmtdeployError, match=r"channel mapping through a reshape grows past 100,000 indices"):
        prune_model(_model("gc_efficientnetv2_rw_t"), keep_macs=0.5)


def test_vanishing_random_weight_features_are_revived_so_the_checks_can_fail(monkeypatch):
    # Found in the coverage sweep's numbers: deep random-weight CNNs (EfficientNet, RegNetV, MobileNetV4
    # hybrids) end with features of 1e-5 to 1e-15, so logits were their classifier's bias and ONNX parity
    # (absolute 1e-3) compared near-zeros: the checks could not fail. They now run on copies with BatchNorm
    # statistics from the check's images.
    from rmtdeploy import coverage

    model = _model("efficientnet_b0")
    with torch.no_grad():
        model.get_classifier().bias.fill_(1.0)  # logits of the bias alone, as efficientnet_b1_pruned's
    result = prune_model(model, keep_macs=0.5)
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures
    assert verification.measured["dense_feature_scale"] < coverage.LIVE_FEATURES
    assert "BatchNorm statistics" in verification.measured["checked_on"]
    replay = coverage.replay

    def stem_channels_swapped(*args):  # a plan whose replay computes a different function
        replayed = replay(*args)
        replayed.conv_stem.weight.data = replayed.conv_stem.weight.data.roll(1, 0)
        return replayed

    monkeypatch.setattr(coverage, "replay", stem_channels_swapped)
    assert any(f.startswith("function:") for f in verify_pruned(model, result, export=False).failures)
    monkeypatch.setattr(coverage, "LIVE_FEATURES", 0.0)  # the check as it was: blind to the swap
    assert verify_pruned(model, result, export=False).ok
