"""EdgeNeXt: timm's ``EdgeNeXt`` (convolutional encoders, then split-depth transposed-attention blocks).

What differs from the generic path: the cross-covariance attention (``CrossCovarianceAttn``) attends across
channels, not tokens (a head_dim x head_dim softmax per head, scaled by a per-head ``temperature``), so a head
cannot be thinned, only removed whole. Its fused ``qkv`` stacks q | k | v as ViT's does, but reads them through
a permute that the dependency graph maps onto other rows; heads go through ``_head_rows`` (a head's q, k and v
rows, its temperature and its columns of ``proj`` together), ``num_heads`` follows, and a pruned attention
reshapes to its own width (timm reshapes to the block's). The generic adapter already leaves whole the streams
that the split-depth blocks cut into fixed-width chunks; the convolutional MLPs, the attention MLPs and the
first stage's stream prune.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.edgenext import CrossCovarianceAttn
from torch import nn

from rmtdeploy.adapters._attention import AttentionLayout
from rmtdeploy.adapters._head_rows import HeadRows, HeadRowsAdapter
from rmtdeploy.adapters.registry import register_adapter


class PrunedCrossCovarianceAttn(CrossCovarianceAttn):
    """timm's ``CrossCovarianceAttn`` whose output width is its heads', not its input's (else the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.permute(0, 3, 1, 2).reshape(batch, tokens, self.proj.in_features)
        return self.proj_drop(self.proj(x))


@register_adapter("edgenext")
class EdgeNeXtAdapter(HeadRowsAdapter):
    family = "edgenext"

    def attention_layouts(self, model: nn.Module) -> list[AttentionLayout]:
        return [
            AttentionLayout(attn, attn.qkv, attn.proj, attn.num_heads, _head_dim(attn))
            for attn in model.modules()
            if isinstance(attn, CrossCovarianceAttn)
        ]

    def head_rows(self, attention: nn.Module) -> list[HeadRows]:
        return [HeadRows((attention.qkv,), per_head=_head_dim(attention), segments=3)]  # q | k | v

    def head_tables(self, attention: nn.Module) -> list[str]:
        return ["temperature"]  # (heads, 1, 1)

    def set_head_count(self, attention: nn.Module, heads: int) -> None:
        attention.num_heads = heads
        if (
            heads * _head_dim(attention) != attention.qkv.in_features
            and type(attention) is CrossCovarianceAttn
        ):
            attention.__class__ = PrunedCrossCovarianceAttn


def _head_dim(attn: CrossCovarianceAttn) -> int:
    return attn.qkv.out_features // (3 * attn.num_heads)
