"""Swin adapter: whole heads with their bias-table columns, PatchMerging's 4x channel stacking, replay."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch_pruning as tp
from attention_adapter_checks import (
    ATOL,
    assert_heads_whole,
    features,
    features_and_logits,
    head_layouts,
    outputs_by_attention_path,
    prune_with_metapruner,
    remove_head_and_zeroed_reference,
)
from timm.models.swin_transformer import PatchMerging

from rmtdeploy.adapters.base import get_adapter
from rmtdeploy.adapters.swin import PatchMergingPruner, SwinAdapter
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning import TARGET_TOLERANCE, load_pruned, prune_model, save_pruned

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODEL = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    return timm.create_model(MODEL, pretrained=False).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def dense_costs(dense, images):
    return tp.utils.count_ops_and_params(dense, images[:1])


@pytest.fixture(scope="module", params=[0.75, 0.5], ids=["keep_macs_0.75", "keep_macs_0.5"])
def pruned(request, dense):
    return request.param, prune_model(dense, keep_macs=request.param)


def test_registry_serves_swin_models(dense):
    assert isinstance(get_adapter(dense), SwinAdapter)


def test_prune_model_meets_the_mac_target_and_cuts_parameters(pruned, dense_costs, images):
    keep, result = pruned
    assert abs(result.macs_kept / keep - 1) <= TARGET_TOLERANCE
    macs, params = tp.utils.count_ops_and_params(result.model, images[:1])
    assert (macs, params) == (result.pruned_macs, result.pruned_params)
    assert macs < dense_costs[0] and params < dense_costs[1]
    assert features_and_logits(result.model, images)[1].shape == (2, 1000)


def test_pruned_heads_stay_whole_with_one_bias_column_each(pruned, dense):
    _, result = pruned
    adapter = SwinAdapter()
    assert_heads_whole(result.model, dense, adapter)
    for layout in adapter.attention_layouts(result.model):
        assert layout.attention.relative_position_bias_table.shape[1] == layout.num_heads


def test_fused_and_explicit_attention_agree_after_pruning(pruned, images):
    _, result = pruned
    explicit, fused = outputs_by_attention_path(copy.deepcopy(result.model), SwinAdapter(), images)
    assert torch.allclose(explicit, fused, atol=ATOL)


def test_saved_plan_replays_to_identical_outputs(pruned, images, tmp_path):
    _, result = pruned
    loaded = load_pruned(save_pruned(tmp_path / "swin", result))
    for loaded_out, pruned_out in zip(
        features_and_logits(loaded.model, images), features_and_logits(result.model, images), strict=True
    ):
        assert torch.equal(loaded_out, pruned_out)


def test_removing_a_head_equals_zeroing_it_and_keeps_the_right_bias_columns(dense, images):
    model = copy.deepcopy(dense)
    with torch.no_grad():  # make the bias table matter: a column sliced for the wrong head then shows
        for table in (m.relative_position_bias_table for m in model.modules() if hasattr(m, "num_heads")):
            table.normal_(std=2.0)
    table_before = model.layers[0].blocks[1].attn.relative_position_bias_table.detach().clone()
    reference = remove_head_and_zeroed_reference(model, SwinAdapter(), 1, head=1, images=images)
    attn = model.layers[0].blocks[1].attn
    assert attn.num_heads == 2 and attn.qkv.out_features == 3 * 2 * 32
    assert torch.equal(attn.relative_position_bias_table, table_before[:, [0, 2]])
    for pruned_out, reference_out in zip(
        outputs_by_attention_path(model, SwinAdapter(), images),
        outputs_by_attention_path(reference, SwinAdapter(), images),
        strict=True,
    ):
        assert torch.allclose(pruned_out, reference_out, atol=ATOL)


def test_patch_merging_pruner_cuts_every_neighbour_copy_of_a_channel():
    torch.manual_seed(0)
    merging = PatchMerging(dim=16, out_dim=24)
    norm_weight = merging.norm.weight.detach().clone()
    reduction_weight = merging.reduction.weight.detach().clone()
    pruner = PatchMergingPruner()
    pruner.prune_in_channels(merging, [1, 5])
    pruner.prune_out_channels(merging, [0, 23])
    kept = [k * 16 + c for k in range(4) for c in range(16) if c not in (1, 5)]
    assert (merging.dim, merging.out_dim) == (14, 22)
    assert torch.equal(merging.norm.weight, norm_weight[kept])
    assert torch.equal(merging.reduction.weight, reduction_weight[1:23][:, kept])
    assert pruner.get_in_channels(merging) == 14 and pruner.get_out_channels(merging) == 22
    # The merged tokens carry the input channels neighbour by neighbour: check the layout timm uses.
    tokens = torch.arange(16.0).expand(1, 2, 2, 16)
    stacked = tokens.reshape(1, 1, 2, 1, 2, 16).permute(0, 1, 3, 4, 2, 5).flatten(3)
    assert torch.equal(stacked[0, 0, 0], torch.arange(16.0).repeat(4))


@pytest.mark.parametrize("prune_head_dims", [False, True], ids=["whole_heads", "head_dims_too"])
def test_torch_pruning_metapruner_works_with_the_adapter_hooks(dense, images, prune_head_dims):
    model = copy.deepcopy(dense)
    adapter = SwinAdapter()
    prune_with_metapruner(model, adapter, images, 0.3, prune_head_dims=prune_head_dims)
    explicit, fused = outputs_by_attention_path(model, adapter, images)
    assert torch.allclose(explicit, fused, atol=ATOL)
    layouts = adapter.attention_layouts(model)
    assert any(layout.head_dim < 32 for layout in layouts) == prune_head_dims
    for layout in layouts:
        assert layout.qkv.out_features == 3 * layout.num_heads * layout.head_dim
        assert layout.attention.relative_position_bias_table.shape[1] == layout.num_heads


def test_repair_leaves_a_dense_model_unchanged(dense, images):
    model = copy.deepcopy(dense)
    SwinAdapter().repair(model)
    assert torch.equal(features(model, images), features(dense, images))
    assert head_layouts(model, SwinAdapter()) == head_layouts(dense, SwinAdapter())


def test_repair_refuses_heads_cut_without_the_trace_forward(dense):
    model = copy.deepcopy(dense)
    attn = model.layers[0].blocks[0].attn
    head = list(range(32))  # the first head, cut by hand: the bias table never hears of it
    qkv_rows = [part * 96 + i for part in range(3) for i in head]
    tp.pruner.function.prune_linear_out_channels(attn.qkv, qkv_rows)
    tp.pruner.function.prune_linear_in_channels(attn.proj, head)
    with pytest.raises(RmtdeployError, match="trace_forward"):
        SwinAdapter().repair(model)


def test_create_kwargs_rebuild_a_non_default_swin():
    model = timm.create_model(MODEL, pretrained=False, img_size=256, window_size=8, num_classes=10)
    adapter = SwinAdapter()
    rebuilt = timm.create_model(MODEL, pretrained=False, **adapter.create_kwargs(model))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert adapter.example_inputs(model, batch=2).shape == (2, 3, 256, 256)
