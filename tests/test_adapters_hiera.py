"""Hiera adapter: whole heads through q-pooling and stage transitions, the mask-unit trace, replay."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch_pruning as tp
from attention_adapter_checks import (
    ATOL,
    build_graph,
    outputs_by_attention_path,
    remove_head_and_zeroed_reference,
)
from timm.models.hiera import MaskUnitAttention

from rmtdeploy.adapters.hiera import HieraAdapter
from rmtdeploy.errors import RmtdeployError

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODEL = "hiera_tiny_224"


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    return timm.create_model(MODEL, pretrained=False).eval()


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
