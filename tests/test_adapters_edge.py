"""Adapters built on the generic one (Eva, MetaFormer, EdgeNeXt, ByobNet/MobileViT v2): what each adds is
checked on a small model, and every prune passes ``verify_pruned``. The edge models at their default size
are ``make test-slow`` cases and ``benchmarks/edge_coverage.py``."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from rmtdeploy.adapters import get_adapter
from rmtdeploy.coverage import EDGE_MODELS, verify_pruned
from rmtdeploy.pruning import prune_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")
AT_64 = {"pretrained_cfg_overlay": {"input_size": (3, 64, 64)}}


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _heads(result) -> dict[str, tuple[int, int]]:
    return {name: (c["dense"], c["pruned"]) for name, c in result.plan["heads"].items()}


def test_eva_removes_whole_heads_and_slices_the_query_and_value_biases():
    from timm.models.eva import EvaAttention

    model = _model("eva02_tiny_patch14_224", img_size=56, num_classes=10)
    with torch.no_grad():  # non-zero biases, so slicing the wrong heads' entries would show
        for attn in (m for m in model.modules() if isinstance(m, EvaAttention)):
            attn.q_bias.normal_(), attn.v_bias.normal_()
    result = prune_model(model, keep_macs=0.3)  # three heads a block: a cut deep enough to take one
    assert type(get_adapter(model)).__name__ == "EvaAdapter"
    assert any(pruned < dense for dense, pruned in _heads(result).values())
    for attn in (m for m in result.model.modules() if isinstance(m, EvaAttention)):
        width = attn.num_heads * attn.head_dim
        assert attn.head_dim == 64 and attn.qkv.out_features == 3 * width  # rotary head_dim intact
        assert attn.q_bias.numel() == attn.v_bias.numel() == attn.k_bias.numel() == width
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures
    assert verification.measured["function_gap"] < 1e-5  # with the real rotary embedding and biases


def test_metaformer_prunes_attention_heads_and_repairs_the_scale_shapes():
    from timm.models.metaformer import Attention, Scale

    model = _model("caformer_s18", **AT_64)
    result = prune_model(model, keep_macs=0.5)
    assert any(pruned < dense for dense, pruned in _heads(result).values())
    scales = [m for m in result.model.modules() if isinstance(m, Scale)]
    assert scales and all(s.shape[0] == s.scale.numel() for s in scales)
    assert all(
        a.attention_dim == a.num_heads * a.head_dim
        for a in result.model.modules()
        if isinstance(a, Attention)
    )
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures


def test_edgenext_leaves_cross_covariance_attention_whole_and_prunes_the_rest():
    from timm.models.edgenext import CrossCovarianceAttn

    model = _model("edgenext_xx_small", **AT_64)
    result = prune_model(model, keep_macs=0.5)
    pairs = zip(model.modules(), result.model.modules(), strict=True)
    xca = [(d, p) for d, p in pairs if isinstance(d, CrossCovarianceAttn)]
    assert xca and all(p.qkv.out_features == d.qkv.out_features for d, p in xca)
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures


def test_mobilevit_v2_inner_channels_take_their_key_and_value_rows_and_the_split_follows():
    # The wrong-rows pin (a silent mis-mapping caught by the exactness check) is in test_adapters_generic.py.
    from timm.models.mobilevit import LinearSelfAttention

    model = _model("mobilevitv2_050", **AT_64)
    result = prune_model(model, keep_macs=0.5)
    pairs = zip(model.modules(), result.model.modules(), strict=True)
    attentions = [(d, p) for d, p in pairs if isinstance(d, LinearSelfAttention)]
    assert any(p.out_proj.in_channels < d.out_proj.in_channels for d, p in attentions)
    for _, pruned in attentions:
        assert pruned.embed_dim == pruned.out_proj.in_channels
        assert pruned.qkv_proj.out_channels == 1 + 2 * pruned.embed_dim  # the score row stays


@pytest.mark.slow
@pytest.mark.parametrize("name", EDGE_MODELS)
def test_every_edge_model_prunes_to_the_budget_and_verifies_at_its_default_size(name):
    model = _model(name)
    verification = verify_pruned(model, prune_model(model, keep_macs=0.5))
    assert verification.ok, verification.failures
