"""TinyViT: timm's ``TinyVit`` (MBConv stage, then window-attention stages with a convolution between the
attention and the MLP).

What differs from the generic path: the attention (``tiny_vit.Attention``) interleaves each head's q, k and v
rows in its fused ``qkv`` (``view(B, N, heads, -1).split([key_dim, key_dim, val_dim])``) and adds a
per-head bias table indexed by position (``attention_biases``); heads are removed whole through
``_head_rows`` (the rows, the table's row and ``proj``'s columns of a head go together) and ``num_heads`` /
``out_dim`` (the output reshape's width) follow. Everything else is the generic adapter's.
"""

from __future__ import annotations

from timm.models.tiny_vit import Attention
from torch import nn

from rmtdeploy.adapters._attention import AttentionLayout
from rmtdeploy.adapters._head_rows import HeadRows, HeadRowsAdapter
from rmtdeploy.adapters.registry import register_adapter


@register_adapter("tiny_vit")
class TinyVitAdapter(HeadRowsAdapter):
    family = "tiny_vit"

    def attention_layouts(self, model: nn.Module) -> list[AttentionLayout]:
        return [
            AttentionLayout(attn, attn.qkv, attn.proj, attn.num_heads, attn.val_dim)
            for attn in model.modules()
            if isinstance(attn, Attention)
        ]

    def head_rows(self, attention: nn.Module) -> list[HeadRows]:
        return [HeadRows((attention.qkv,), per_head=2 * attention.key_dim + attention.val_dim)]

    def head_tables(self, attention: nn.Module) -> list[str]:
        return ["attention_biases"]  # (heads, positions)

    def set_head_count(self, attention: nn.Module, heads: int) -> None:
        attention.num_heads = heads
        attention.out_dim = heads * attention.val_dim  # key_dim, val_dim and scale stay: heads go whole
