"""Adapters built on the generic one (Eva, MetaFormer, FastViT, TinyViT, EdgeNeXt, LeViT, SwinV2, ByobNet/MobileViT v2):
what each adds is checked on a small model, and every prune passes ``verify_pruned``. The edge models at their
default size are ``make test-slow`` cases and ``benchmarks/edge_coverage.py``."""

from __future__ import annotations

from operator import attrgetter

import pytest
import torch
from torch import nn

from rmtdeploy.adapters import get_adapter
from rmtdeploy.coverage import EDGE_MODELS, verify_pruned
from rmtdeploy.models import build_timm_model
from rmtdeploy.pruning import prune_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")
AT_64 = {"pretrained_cfg_overlay": {"input_size": (3, 64, 64)}}


def _model(name: str, **kwargs) -> nn.Module:
    """Built as the model zoo builds it: the kwargs are recorded, so a plan (and its reload) rebuilds the same
    reduced architecture."""
    torch.manual_seed(0)
    return build_timm_model(name, pretrained=False, **kwargs).eval()


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


def test_fastvit_attention_stages_lose_whole_heads_and_reshape_to_their_own_width():
    # Found by the coverage sweep: FastViT-SA/MCI's attention reshaped to the block's width and broke.
    from rmtdeploy.adapters.fastvit import PrunedAttention

    model = _model("fastvit_sa12", **AT_64)
    result = prune_model(model, keep_macs=0.5)
    assert type(get_adapter(model)).__name__ == "FastVitAdapter"
    assert any(pruned < dense for dense, pruned in _heads(result).values())
    pruned = [m for m in result.model.modules() if isinstance(m, PrunedAttention)]
    assert pruned and all(a.qkv.out_features == 3 * a.num_heads * a.head_dim for a in pruned)
    assert any(a.num_heads * a.head_dim < a.proj.out_features for a in pruned)
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures
    assert verification.measured["function_gap"] < 1e-5
    assert verification.measured["reparameterized_gap"] < 1e-4


def _heads_keep_their_rows(dense, result, attention_type, kept_rows, table: str) -> int:
    """For every head removal in the plan: the pruned attention holds exactly the kept heads' rows of its
    projections (``kept_rows(dense attention, kept heads)``: per-row vector -> the rows it keeps; vectors, not
    weights, whose input columns went too) and their entries of the per-head ``table``, and its head count
    follows. Returns the heads removed."""
    dense_modules, pruned_modules = dict(dense.named_modules()), dict(result.model.named_modules())
    removed = 0
    for op in (op for op in result.plan["operations"] if op["kind"] == "heads"):
        name = op["root"].split(".proj", 1)[0]
        before, after = dense_modules[name], pruned_modules[name]
        assert isinstance(after, attention_type)
        for vector, rows in kept_rows(before, op["kept_heads"]).items():
            assert torch.equal(attrgetter(vector)(after), attrgetter(vector)(before)[rows]), vector
        assert torch.equal(getattr(after, table), getattr(before, table)[op["kept_heads"]])
        assert after.num_heads == len(op["kept_heads"]) == before.num_heads - len(op["pruned_heads"])
        removed += len(op["pruned_heads"])
    return removed


def _blocks_of(rows: int, heads: list[int]) -> list[int]:
    """The rows of ``heads`` when each head owns one block of ``rows`` rows (q, k and v interleaved)."""
    return [h * rows + r for h in heads for r in range(rows)]


def test_tiny_vit_removes_whole_heads_with_their_qkv_rows_and_bias_table_rows():
    from timm.models.tiny_vit import Attention

    small = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 2, 1], "num_heads": [1, 2, 3, 4]}
    model = _model("tiny_vit_5m_224", num_classes=10, **small, **AT_64)
    with torch.no_grad():  # non-zero biases and bias tables (timm starts them at zero): a wrong row shows
        for attn in (m for m in model.modules() if isinstance(m, Attention)):
            attn.attention_biases.normal_(), attn.qkv.bias.normal_()
    result = prune_model(model, keep_macs=0.5)

    def kept_rows(attn, heads):
        return {"qkv.bias": _blocks_of(2 * attn.key_dim + attn.val_dim, heads)}

    assert _heads_keep_their_rows(model, result, Attention, kept_rows, "attention_biases") > 0
    assert type(get_adapter(model)).__name__ == "TinyVitAdapter"
    for attn in (m for m in result.model.modules() if isinstance(m, Attention)):
        assert attn.proj.in_features == attn.out_dim == attn.num_heads * attn.val_dim
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures
    assert verification.measured["function_gap"] < 1e-5


def test_edgenext_removes_whole_cross_covariance_heads_with_their_temperatures():
    from timm.models.edgenext import CrossCovarianceAttn

    model = _model("edgenext_xx_small", num_classes=10, **AT_64)
    with torch.no_grad():  # temperatures and biases that differ by head, so a wrong head's entry would show
        for attn in (m for m in model.modules() if isinstance(m, CrossCovarianceAttn)):
            attn.temperature.uniform_(0.5, 2.0), attn.qkv.bias.normal_()
        for name, scale in model.named_parameters():  # timm's 1e-6 layer scales would hide the attention
            if name.endswith(("gamma", "gamma_xca")):
                scale.fill_(1.0)
    result = prune_model(model, keep_macs=0.5)

    def kept_rows(attn, heads):  # q | k | v stacked, each head-major
        head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        width = attn.num_heads * head_dim
        return {
            "qkv.bias": [
                s * width + h * head_dim + d for s in range(3) for h in heads for d in range(head_dim)
            ]
        }

    assert _heads_keep_their_rows(model, result, CrossCovarianceAttn, kept_rows, "temperature") > 0
    pairs = zip(model.modules(), result.model.modules(), strict=True)
    for dense, pruned in ((d, p) for d, p in pairs if isinstance(d, CrossCovarianceAttn)):
        head_dim = dense.proj.in_features // dense.num_heads  # unchanged: heads go whole
        assert pruned.qkv.out_features == 3 * pruned.proj.in_features == 3 * pruned.num_heads * head_dim
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures
    assert verification.measured["function_gap"] < 1e-5


def test_levit_removes_whole_heads_from_every_projection_with_their_batchnorm_and_bias_rows():
    from timm.models.levit import Attention, AttentionDownsample

    small = {"embed_dim": (32, 48, 64), "num_heads": (2, 3, 4), "depth": (1, 1, 1), "img_size": 64}
    model = _model("levit_128s", num_classes=10, **small, **AT_64)
    attentions = (Attention, AttentionDownsample)
    with (
        torch.no_grad()
    ):  # bias tables and BatchNorm scales that differ by row (timm: 0, and 1 or 0 for proj)
        for attn in (m for m in model.modules() if isinstance(m, attentions)):
            attn.attention_biases.normal_()
            for bn in (m for m in attn.modules() if isinstance(m, nn.BatchNorm1d)):
                bn.weight.normal_()
    result = prune_model(model, keep_macs=0.5)

    def kept_rows(attn, heads):
        key_dim, val_dim = attn.key_dim, attn.val_dim
        if isinstance(attn, Attention):
            return {"qkv.bn.weight": _blocks_of(2 * key_dim + val_dim, heads)}
        return {
            "kv.bn.weight": _blocks_of(key_dim + val_dim, heads),
            "q.ln.bn.weight": _blocks_of(key_dim, heads),
        }

    assert _heads_keep_their_rows(model, result, attentions, kept_rows, "attention_biases") > 0
    heads_cut = [op["root"] for op in result.plan["operations"] if op["kind"] == "heads"]
    assert any(".attn_downsample." in root for root in heads_cut)  # the query's rows went with k and v
    for attn in (m for m in result.model.modules() if isinstance(m, attentions)):
        assert attn.proj.ln.linear.in_features == attn.val_attn_dim == attn.num_heads * attn.val_dim
        assert attn.key_attn_dim == attn.num_heads * attn.key_dim
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures
    assert verification.measured["function_gap"] < 1e-5


def test_swin_v2_removes_whole_heads_with_their_biases_scales_and_position_rows_and_prunes_the_streams():
    from timm.models.swin_transformer_v2 import PatchMerging, WindowAttention

    small = {"img_size": 32, "embed_dim": 32, "depths": (1, 1), "num_heads": (2, 4), "window_size": 4}
    model = _model("swinv2_tiny_window8_256", num_classes=10, **small)
    # Biases and logit scales that differ by head (timm starts them at 0 and log 10), so a wrong head's entry
    # would show; and post-norm scales off timm's 0, which hides every attention and MLP from the output.
    with torch.no_grad():
        for attn in (m for m in model.modules() if isinstance(m, WindowAttention)):
            attn.q_bias.normal_(), attn.v_bias.normal_(), attn.logit_scale.uniform_(1.0, 3.0)
        for name, param in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")):
                param.normal_()
    result = prune_model(model, keep_macs=0.3)
    assert type(get_adapter(model)).__name__ == "SwinV2Adapter"

    def kept_rows(attn, heads):  # q_bias / v_bias head-major; one row of cpb_mlp's last layer a head
        head_dim = attn.proj.in_features // attn.num_heads
        channels = [h * head_dim + d for h in heads for d in range(head_dim)]
        return {"q_bias": channels, "v_bias": channels, "cpb_mlp.2.weight": heads}

    assert _heads_keep_their_rows(model, result, WindowAttention, kept_rows, "logit_scale") > 0
    pairs = zip(model.modules(), result.model.modules(), strict=True)
    for dense, pruned in ((d, p) for d, p in pairs if isinstance(d, WindowAttention)):
        width = pruned.num_heads * (dense.proj.in_features // dense.num_heads)  # head_dim unchanged
        assert (
            pruned.qkv.out_features == 3 * pruned.proj.in_features == 3 * width == 3 * pruned.k_bias.numel()
        )
    streams = [stage.blocks[0].norm1.weight.numel() for stage in result.model.layers]
    assert streams[0] < 32 and streams[1] < 64  # both stage streams prune
    merge = result.model.layers[1].downsample
    assert isinstance(merge, PatchMerging) and merge.reduction.in_features == 4 * streams[0]  # 4 neighbours
    verification = verify_pruned(model, result, export=False)
    assert verification.ok, verification.failures
    assert verification.measured["function_gap"] < 1e-5


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
