"""MetaFormer (CAFormer, ConvFormer, PoolFormer v2, IdentityFormer, RandFormer): timm's ``MetaFormer``.

What differs from the generic path: the attention of CAFormer's last stages is removed in whole heads (its
fused ``qkv`` has ViT's layout), and two cached values must follow the pruned layers: ``Scale.shape`` (the
layer / residual scale's view shape) and ``Attention.num_heads`` / ``attention_dim``. timm's attention also
reshapes its output to the block's input width, which holds only while heads and width agree; a pruned
attention gets a forward that reshapes to its own heads (:class:`PrunedAttention`, same weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.metaformer import Attention, Scale
from torch import nn

from rmtdeploy.adapters.generic import GenericAdapter
from rmtdeploy.adapters.registry import register_adapter


class PrunedAttention(Attention):
    """timm's MetaFormer ``Attention`` whose output width is its heads', not its input's (else the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, self.attention_dim)))


@register_adapter("metaformer")
class MetaFormerAdapter(GenericAdapter):
    family = "metaformer"

    def attention_heads(self, model: nn.Module) -> dict[nn.Module, int]:
        return {m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)}

    def repair(self, model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, Scale):
                module.shape = (module.scale.numel(), *module.shape[1:])
            elif isinstance(module, Attention):
                # Heads go whole: head_dim (and scale) stay; the count follows qkv.
                module.num_heads = module.qkv.out_features // (3 * module.head_dim)
                module.attention_dim = module.num_heads * module.head_dim
                if module.attention_dim != module.proj.out_features:
                    module.__class__ = PrunedAttention
        super().repair(model)
