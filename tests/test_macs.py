"""The one MAC counter (``rmtdeploy.macs.count_ops``): layers are counted however a model calls them."""

from __future__ import annotations

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

from rmtdeploy.macs import count_ops

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class _SubLinear(nn.Linear):
    """A layer subclass (as the adapters' gated and head-row linears): torch-pruning picks hooks by exact type."""


def test_a_layer_subclass_counts_as_its_layer():
    x = torch.randn(1, 10, 32)
    plain, sub = nn.Linear(32, 64), _SubLinear(32, 64)
    assert tp.utils.count_ops_and_params(sub, x)[0] == 0  # what the counter alone sees
    assert count_ops(sub, x)[0] == count_ops(plain, x)[0] == 10 * 32 * 64 + 64


def test_a_qkv_weight_multiplied_with_f_linear_is_counted_as_the_layer_call():
    # timm's Eva adds its separate q/v biases by F.linear on qkv.weight: the module hooks never see the qkv
    # matmul. qkv_bias_separate=True makes the same model call the layer, then add the bias.
    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", img_size=56).eval()
    x = torch.randn(1, 3, 56, 56)
    functional, _, layers, _ = count_ops(model, x, layer_wise=True)
    _, _, hooks_only, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    attentions = [m for m in model.modules() if hasattr(m, "qkv_bias_separate")]
    dim, tokens = model.embed_dim, (56 // 14) ** 2 + 1
    for attention in attentions:
        assert hooks_only[attention.qkv] == 0  # a quarter of the blocks' MACs, unseen by the hooks
        # torch-pruning's linear formula: the bias counts once per call
        assert layers[attention.qkv] == tokens * dim * 3 * dim + 3 * dim
        attention.qkv_bias_separate = True
    called = count_ops(model, x)[0]
    assert functional == called + len(attentions) * 3 * dim


def test_a_timm_attention_counts_its_output_projection_by_its_own_shape():
    # torch-pruning counts timm's Attention whole, with the projection square in the qkv width: a cut stream
    # (proj with fewer outputs) was counted as dense, and a model so pruned landed under its MAC target.
    from timm.models.vision_transformer import Attention

    attention = Attention(64, num_heads=4).eval()
    tokens = torch.randn(1, 10, 64)
    dense = count_ops(attention, tokens)[0]
    assert dense == tp.utils.count_ops_and_params(attention, tokens)[0]  # unchanged where it was right
    attention.proj = nn.Linear(64, 32)
    assert dense - count_ops(attention, tokens)[0] == 10 * (64 - 32) * (64 + 1)
