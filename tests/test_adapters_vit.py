"""ViT / DeiT adapter: heads, bare token parameters, layer scale and non-default image sizes."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import Attention

from rmtdeploy.adapters import get_adapter
from rmtdeploy.pruning import load_pruned, prune_model, save_pruned

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_every_attention_offers_its_heads_through_qkv():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    heads = get_adapter(model).attention_heads(model)
    assert heads == {block.attn.qkv: 3 for block in model.blocks}


def test_distilled_deit_tokens_follow_the_embedding_width():
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).eval()
    params = get_adapter(model).unwrapped_parameters(model)
    assert {id(p): d for p, d in params} == {
        id(model.pos_embed): 2,
        id(model.cls_token): 2,
        id(model.dist_token): 2,
    }
    result = prune_model(model, keep_macs=0.5)
    width = result.model.patch_embed.proj.out_channels
    assert width < 192 and result.model.embed_dim == result.model.num_features == width
    for token in (result.model.pos_embed, result.model.cls_token, result.model.dist_token):
        assert token.shape[-1] == width
    assert result.model.head.in_features == result.model.head_dist.in_features == width
    assert result.model.head.out_features == result.model.head_dist.out_features == 1000


def test_layer_scale_gammas_keep_the_values_of_the_kept_channels():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, init_values=1e-5, depth=2).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.ls1.gamma.uniform_()
    result = prune_model(model, keep_macs=0.5, model_name="vit_tiny_patch16_224")
    embed = next(op for op in result.plan["operations"] if op["kind"] == "channels" and op["width"] == 192)
    kept = torch.tensor(embed["kept"])
    assert torch.equal(result.model.blocks[1].ls1.gamma, model.blocks[1].ls1.gamma[kept])


def test_non_default_image_size_is_rebuilt_from_the_plan(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96).eval()
    adapter = get_adapter(model)
    assert adapter.create_kwargs(model) == {"num_classes": 1000, "img_size": [96, 96]}
    assert adapter.example_inputs(model).shape == (1, 3, 96, 96)
    result = prune_model(model, keep_macs=0.5)
    save_pruned(tmp_path, result)
    loaded = load_pruned(tmp_path).model
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded(images), result.model(images))
    assert [m.num_heads for m in loaded.modules() if isinstance(m, Attention)] == [
        m.num_heads for m in result.model.modules() if isinstance(m, Attention)
    ]
