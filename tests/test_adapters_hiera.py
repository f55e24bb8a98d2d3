"""Hiera adapter: whole heads through q-pooling and stage transitions, the mask-unit trace, replay."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch_pruning as tp
from attention_adapter_checks import (
    ATOL,
    assert_heads_whole,
    build_graph,
    features,
    features_and_logits,
    head_layouts,
    outputs_by_attention_path,
    prune_with_metapruner,
    remove_head_and_zeroed_reference,
)
from timm.models.hiera import MaskUnitAttention

from rmtdeploy.adapters.base import get_adapter
from rmtdeploy.adapters.hiera import HieraAdapter
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning import TARGET_TOLERANCE, load_pruned, prune_model, save_pruned

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODEL = "hiera_tiny_224"


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


def test_registry_serves_hiera_models(dense):
    assert isinstance(get_adapter(dense), HieraAdapter)


def test_prune_model_meets_the_mac_target_and_cuts_parameters(pruned, dense_costs, images):
    keep, result = pruned
    assert abs(result.macs_kept / keep - 1) <= TARGET_TOLERANCE
    macs, params = tp.utils.count_ops_and_params(result.model, images[:1])
    assert (macs, params) == (result.pruned_macs, result.pruned_params)
    assert macs < dense_costs[0] and params < dense_costs[1]
    assert features_and_logits(result.model, images)[1].shape == (2, 1000)


def test_pruned_heads_stay_whole_and_cached_widths_follow(pruned, dense):
    _, result = pruned
    adapter = HieraAdapter()
    assert_heads_whole(result.model, dense, adapter)
    for layout in adapter.attention_layouts(result.model):
        attn = layout.attention
        assert attn.dim_out == attn.heads * attn.head_dim and attn.scale == attn.head_dim**-0.5
    model = result.model
    stage_widths = [model.blocks[end].dim_out for end in model.stage_ends]
    assert [info["num_chs"] for info in model.feature_info] == stage_widths
    assert model.num_features == model.head.norm.normalized_shape[0] == model.get_classifier().in_features


def test_fused_and_explicit_attention_agree_after_pruning(pruned, images):
    _, result = pruned
    explicit, fused = outputs_by_attention_path(copy.deepcopy(result.model), HieraAdapter(), images)
    assert torch.allclose(explicit, fused, atol=ATOL)


def test_saved_plan_replays_to_identical_outputs(pruned, images, tmp_path):
    _, result = pruned
    loaded = load_pruned(save_pruned(tmp_path / "hiera", result))
    for loaded_out, pruned_out in zip(
        features_and_logits(loaded.model, images), features_and_logits(result.model, images), strict=True
    ):
        assert torch.equal(loaded_out, pruned_out)


def test_removing_a_head_equals_zeroing_it(dense, images):
    # blocks[1] opens stage 2: two heads, q-pooling, mask-unit attention and the width change in one block.
    model = copy.deepcopy(dense)
    reference = remove_head_and_zeroed_reference(model, HieraAdapter(), 1, head=0, images=images)
    attn = model.blocks[1].attn
    assert (attn.heads, attn.head_dim, attn.dim_out, attn.qkv.out_features) == (1, 96, 96, 288)
    for pruned_out, reference_out in zip(
        outputs_by_attention_path(model, HieraAdapter(), images),
        outputs_by_attention_path(reference, HieraAdapter(), images),
        strict=True,
    ):
        assert torch.allclose(pruned_out, reference_out, atol=ATOL)


def test_plain_torch_pruning_trace_still_divides_by_zero_on_mask_unit_attention(dense, images):
    # Pins why HieraAdapter.tracing_mode exists: TP 1.6.1 reads Hiera's 5-D matmul expands as
    # grouped-query attention. If this starts failing, the global-attention trace can go.
    model = copy.deepcopy(dense)
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=images[:1], unwrapped_parameters=[(model.pos_embed, 2)]
        )
    with pytest.raises(ZeroDivisionError):
        list(graph.get_all_groups(root_module_types=(torch.nn.Linear,)))


def _attention_paths(model: torch.nn.Module) -> list[tuple[bool, bool]]:
    return [(m.use_mask_unit_attn, m.fused_attn) for m in model.modules() if isinstance(m, MaskUnitAttention)]


def test_trace_forward_restores_the_attention_paths(dense, images):
    model = copy.deepcopy(dense)
    before = _attention_paths(model)
    build_graph(model, HieraAdapter(), images)
    assert _attention_paths(model) == before and (True, True) in before


@pytest.mark.parametrize("prune_head_dims", [False, True], ids=["whole_heads", "head_dims_too"])
def test_torch_pruning_metapruner_works_with_the_adapter_hooks(dense, images, prune_head_dims):
    model = copy.deepcopy(dense)
    adapter = HieraAdapter()
    prune_with_metapruner(model, adapter, images, 0.3, prune_head_dims=prune_head_dims)
    explicit, fused = outputs_by_attention_path(model, adapter, images)
    assert torch.allclose(explicit, fused, atol=ATOL)
    layouts = adapter.attention_layouts(model)
    assert any(layout.head_dim < 96 for layout in layouts) == prune_head_dims
    for layout in layouts:
        assert layout.qkv.out_features == 3 * layout.num_heads * layout.head_dim


def test_repair_leaves_a_dense_model_unchanged(dense, images):
    model = copy.deepcopy(dense)
    HieraAdapter().repair(model)
    assert torch.equal(features(model, images), features(dense, images))
    assert head_layouts(model, HieraAdapter()) == head_layouts(dense, HieraAdapter())


def test_repair_refuses_heads_cut_without_the_trace_forward(dense):
    model = copy.deepcopy(dense)
    attn = model.blocks[1].attn  # 2 heads of 96 channels; cut the first by hand
    head = list(range(96))
    qkv_rows = [part * 192 + i for part in range(3) for i in head]
    tp.pruner.function.prune_linear_out_channels(attn.qkv, qkv_rows)
    tp.pruner.function.prune_linear_in_channels(attn.proj, head)
    with pytest.raises(RmtdeployError, match="trace_forward"):
        HieraAdapter().repair(model)


def test_create_kwargs_rebuild_a_non_default_hiera():
    model = timm.create_model(MODEL, pretrained=False, img_size=256, in_chans=1, num_classes=10)
    adapter = HieraAdapter()
    assert adapter.create_kwargs(model) == {"img_size": [256, 256], "in_chans": 1, "num_classes": 10}
    assert adapter.example_inputs(model, batch=2).shape == (2, 1, 256, 256)
