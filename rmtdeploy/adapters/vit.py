"""ViT and DeiT (plain and distilled): timm's ``VisionTransformer`` and ``VisionTransformerDistilled``.

What differs from a CNN: heads are pruned whole through the fused ``attn.qkv``; the embedding width is
carried by bare parameters (position embedding, class / distillation / register tokens, layer-scale
gammas); and timm's ``Attention`` caches ``num_heads``, ``head_dim``, ``attn_dim`` and ``scale``.
"""

from __future__ import annotations

from timm.layers import Attention, AttentionPoolLatent, HybridEmbed, LayerScale
from timm.models.vision_transformer import DiffAttention, DiffParallelScalingBlock, ParallelScalingBlock
from torch import nn

from rmtdeploy.adapters._model_attributes import PatchEmbedSizeMixin, sync_model_widths
from rmtdeploy.adapters.base import ArchitectureAdapter
from rmtdeploy.adapters.registry import register_adapter

# Bare parameters of VisionTransformer(Distilled) shaped (1, tokens, embed_dim): the embedding width is dim 2.
_TOKEN_PARAMETERS = ("pos_embed", "cls_token", "reg_token", "dist_token")


@register_adapter("vit", "deit")
class VisionTransformerAdapter(PatchEmbedSizeMixin, ArchitectureAdapter):
    family = "vit"
    # Variants timm builds on the same VisionTransformer class whose layers the graph cannot follow.
    unsupported_layers = {
        HybridEmbed: "hybrid ViT: a CNN backbone (HybridEmbed) replaces the patch embedding, and the adapter "
        "knows only the plain patch embedding",
        AttentionPoolLatent: "attention pooling head (global_pool='map', e.g. SigLIP): its latent query "
        "and per-head reshapes are not tracked",
        ParallelScalingBlock: "parallel-scaling blocks (the *_xp variants) fuse qkv and the MLP into one "
        "projection, whose heads the adapter cannot find",
        DiffParallelScalingBlock: "parallel-scaling blocks with differential attention (the vit_dp* variants) "
        "fuse qkv and the MLP into one projection, whose heads the adapter cannot find",
        DiffAttention: "differential attention (the vit_d*wee/little variants): each head subtracts a paired "
        "attention map and normalises over the head's channels, which the adapter does not follow",
    }

    def attention_heads(self, model: nn.Module) -> dict[nn.Module, int]:
        return {m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)}

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        params = [
            (param, 2)
            for name in _TOKEN_PARAMETERS
            if isinstance(param := getattr(model, name, None), nn.Parameter)
        ]
        params += [(m.gamma, 0) for m in model.modules() if isinstance(m, LayerScale)]
        return params

    def repair(self, model: nn.Module) -> None:
        for attn in model.modules():
            if isinstance(attn, Attention):
                # Heads are removed whole, so head_dim (and with it scale and q/k norms) is unchanged.
                qkv_width = attn.qkv.out_features
                if qkv_width % (3 * attn.head_dim):
                    raise AssertionError(f"qkv width {qkv_width} is not 3 x whole heads of {attn.head_dim}")
                attn.num_heads = qkv_width // (3 * attn.head_dim)
                attn.attn_dim = attn.num_heads * attn.head_dim
                attn.scale = attn.head_dim**-0.5
        embed_dim = model.patch_embed.proj.out_channels
        model.embed_dim = model.head_hidden_size = embed_dim  # timm's ViT has no pre-logits layer
        sync_model_widths(
            model, [embed_dim] * len(getattr(model, "feature_info", [])), num_features=embed_dim
        )
