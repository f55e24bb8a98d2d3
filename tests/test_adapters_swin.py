"""Swin adapter: whole heads with their bias-table columns, PatchMerging's 4x channel stacking, replay."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch_pruning as tp
from attention_adapter_checks import (
    ATOL,
    outputs_by_attention_path,
    remove_head_and_zeroed_reference,
)
from timm.models.swin_transformer import PatchMerging

from rmtdeploy.adapters.swin import PatchMergingPruner, SwinAdapter
from rmtdeploy.errors import RmtdeployError

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODEL = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    return timm.create_model(MODEL, pretrained=False).eval()


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
