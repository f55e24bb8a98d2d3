"""What the head-probing adapters (Swin, Hiera) share: pruning to a budget with whole heads, identical
attention paths, exact replay, and compatibility with plain torch-pruning. Family-only traps live in
test_adapters_swin.py and test_adapters_hiera.py."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from attention_adapter_checks import (
    ATOL,
    assert_heads_whole,
    features,
    features_and_logits,
    head_layouts,
    outputs_by_attention_path,
    prune_with_metapruner,
)

from rmtdeploy.adapters import get_adapter
from rmtdeploy.adapters.hiera import HieraAdapter
from rmtdeploy.adapters.swin import SwinAdapter
from rmtdeploy.macs import count_ops
from rmtdeploy.pruning import TARGET_TOLERANCE, load_pruned, prune_model, save_pruned

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def swin_bias_tables_follow_heads(model: torch.nn.Module) -> None:
    for layout in SwinAdapter().attention_layouts(model):
        assert layout.attention.relative_position_bias_table.shape[1] == layout.num_heads


def hiera_cached_widths_follow(model: torch.nn.Module) -> None:
    for layout in HieraAdapter().attention_layouts(model):
        attn = layout.attention
        assert attn.dim_out == attn.heads * attn.head_dim and attn.scale == attn.head_dim**-0.5
    stage_widths = [model.blocks[end].dim_out for end in model.stage_ends]
    assert [info["num_chs"] for info in model.feature_info] == stage_widths
    assert model.num_features == model.head.norm.normalized_shape[0] == model.get_classifier().in_features


# family -> (timm model, adapter, what else must follow the removed heads)
FAMILIES = {
    "swin": ("swin_tiny_patch4_window7_224", SwinAdapter, swin_bias_tables_follow_heads),
    "hiera": ("hiera_tiny_224", HieraAdapter, hiera_cached_widths_follow),
}


# Swin at 224 takes half a minute to export and verify: every run prunes Hiera, `make test-slow` both
# (Swin's head pruning is also covered by test_adapters_swin.py in every run).
@pytest.fixture(scope="module", params=["hiera", pytest.param("swin", marks=pytest.mark.slow)])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def adapter(family):
    return FAMILIES[family][1]()


@pytest.fixture(scope="module")
def dense(family):
    torch.manual_seed(0)
    return timm.create_model(FAMILIES[family][0], pretrained=False).eval()


# keep 0.75 runs in `make test-slow`; keep 0.5 (heads and channels both cut) in every run.
@pytest.fixture(
    scope="module",
    params=[
        pytest.param(0.75, marks=pytest.mark.slow, id="keep_macs_0.75"),
        pytest.param(0.5, id="keep_macs_0.5"),
    ],
)
def pruned(request, dense):
    return request.param, prune_model(dense, keep_macs=request.param)


def test_registry_serves_the_family(dense, adapter):
    assert type(get_adapter(dense)) is type(adapter)


def test_prune_model_meets_the_mac_target_and_cuts_parameters(pruned, dense, images):
    keep, result = pruned
    assert abs(result.macs_kept / keep - 1) <= TARGET_TOLERANCE
    dense_macs, dense_params = count_ops(dense, images[:1])
    macs, params = count_ops(result.model, images[:1])
    assert (macs, params) == (result.pruned_macs, result.pruned_params)
    assert macs < dense_macs and params < dense_params
    assert features_and_logits(result.model, images)[1].shape == (2, 1000)


def test_pruned_heads_stay_whole_and_cached_attributes_follow(pruned, dense, adapter, family):
    _, result = pruned
    assert_heads_whole(result.model, dense, adapter)
    FAMILIES[family][2](result.model)


def test_fused_and_explicit_attention_agree_after_pruning(pruned, adapter, images):
    _, result = pruned
    explicit, fused = outputs_by_attention_path(copy.deepcopy(result.model), adapter, images)
    assert torch.allclose(explicit, fused, atol=ATOL)


def test_saved_plan_replays_to_identical_outputs(pruned, images, tmp_path):
    _, result = pruned
    loaded = load_pruned(save_pruned(tmp_path / "pruned", result))
    for loaded_out, pruned_out in zip(
        features_and_logits(loaded.model, images), features_and_logits(result.model, images), strict=True
    ):
        assert torch.equal(loaded_out, pruned_out)


@pytest.mark.parametrize("prune_head_dims", [False, True], ids=["whole_heads", "head_dims_too"])
def test_torch_pruning_metapruner_works_with_the_adapter_hooks(
    dense, adapter, family, images, prune_head_dims
):
    dense_head_dims = {layout.head_dim for layout in adapter.attention_layouts(dense)}
    model = copy.deepcopy(dense)
    prune_with_metapruner(model, adapter, images, 0.3, prune_head_dims=prune_head_dims)
    explicit, fused = outputs_by_attention_path(model, adapter, images)
    assert torch.allclose(explicit, fused, atol=ATOL)
    layouts = adapter.attention_layouts(model)
    assert any(layout.head_dim < min(dense_head_dims) for layout in layouts) == prune_head_dims
    for layout in layouts:
        assert layout.qkv.out_features == 3 * layout.num_heads * layout.head_dim
    if family == "swin":
        swin_bias_tables_follow_heads(model)


def test_repair_leaves_a_dense_model_unchanged(dense, adapter, images):
    model = copy.deepcopy(dense)
    adapter.repair(model)
    assert torch.equal(features(model, images), features(dense, images))
    assert head_layouts(model, adapter) == head_layouts(dense, adapter)


def test_export_form_of_attention_computes_timms_attention(pruned, dense, adapter, images):
    # timm's forward on both attention paths, dense and pruned; leaving the mode restores the class's forward.
    for model in (copy.deepcopy(dense), copy.deepcopy(pruned[1].model)):  # the fixtures keep their paths
        explicit, fused = outputs_by_attention_path(model, adapter, images)
        with adapter.export_mode(model, "onnxruntime"):
            exported = features(model, images)
        assert torch.allclose(exported, explicit, atol=ATOL) and torch.allclose(exported, fused, atol=ATOL)
        assert not any("forward" in vars(layout.attention) for layout in adapter.attention_layouts(model))
        copy.deepcopy(model)  # no bound method of the original left behind to copy


def test_onnx_runtime_runs_the_exported_attention_without_moving_head_dim(pruned, adapter, tmp_path):
    # timm's form becomes one Transpose per attention that moves head_dim off the innermost axis, which ONNX
    # Runtime runs element by element; the export form folds kᵀ into the GEMM (FusedMatMul transB) instead.
    import onnx
    import onnxruntime as ort

    from rmtdeploy.exporting import export_onnx

    model = pruned[1].model

    def optimized_graph(backend: str) -> list:
        export_onnx(model, tmp_path / f"{backend}.onnx", batch=1, dynamic_batch=False, backend=backend)
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{backend}.optimized.onnx")
        ort.InferenceSession(str(tmp_path / f"{backend}.onnx"), options, providers=["CPUExecutionProvider"])
        return list(onnx.load(str(tmp_path / f"{backend}.optimized.onnx")).graph.node)

    def attention_transpose_perms(nodes: list) -> list[list[int]]:
        transposes = [n for n in nodes if n.op_type == "Transpose" and "/attn/" in n.name]
        return [list(onnx.helper.get_attribute_value(a)) for n in transposes for a in n.attribute]

    nodes = optimized_graph("onnxruntime")
    perms = attention_transpose_perms(nodes)
    assert perms and all(perm[-1] == len(perm) - 1 for perm in perms), perms
    transposed_b = [
        n
        for n in nodes
        if n.op_type == "FusedMatMul"
        and any(a.name == "transB" and onnx.helper.get_attribute_value(a) == 1 for a in n.attribute)
    ]
    assert len(transposed_b) == len(adapter.attention_layouts(model))
    # For TensorRT the export keeps timm's form (the pattern TensorRT's attention fusion matches).
    assert any(perm[-1] != len(perm) - 1 for perm in attention_transpose_perms(optimized_graph("tensorrt")))
