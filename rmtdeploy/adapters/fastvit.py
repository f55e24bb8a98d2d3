"""FastViT (timm ``fastvit.py``: FastViT-T/SA/MA and MobileCLIP's MCI image towers).

What differs from the generic path: the attention stages (SA/MA/MCI models; the T models have none) lose
whole heads through the fused ``qkv``, which has ViT's layout. timm's ``Attention`` caches ``num_heads`` and
reshapes its heads' output to the block's input width, which holds only while heads and width agree; a
pruned attention gets a forward that reshapes to its own heads (:class:`PrunedAttention`, same weights).
The re-parameterisable blocks (RepMixer, MobileOne stems, RepCPE) are the generic adapter's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.fastvit import Attention
from torch import nn

from rmtdeploy.adapters.generic import GenericAdapter
from rmtdeploy.adapters.registry import register_adapter


class PrunedAttention(Attention):
    """timm's FastViT ``Attention`` whose heads' width is its own, not its input's (else the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        tokens = height * width
        x = x.flatten(2).transpose(-2, -1)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        x = self.proj_drop(
            self.proj(x.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))
        )
        return x.transpose(-2, -1).reshape(batch, -1, height, width)


@register_adapter("fastvit")
class FastVitAdapter(GenericAdapter):
    family = "fastvit"

    def attention_heads(self, model: nn.Module) -> dict[nn.Module, int]:
        return {**super().attention_heads(model), **{
            m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)
        }}  # fmt: skip

    def repair(self, model: nn.Module) -> None:
        for attn in model.modules():
            if isinstance(
                attn, Attention
            ):  # heads go whole: head_dim (and scale) stay, the count follows qkv
                attn.num_heads = attn.qkv.out_features // (3 * attn.head_dim)
                if attn.num_heads * attn.head_dim != attn.proj.out_features:
                    attn.__class__ = PrunedAttention
        super().repair(model)
