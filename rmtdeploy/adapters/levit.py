"""LeViT: timm's ``Levit`` / ``LevitDistilled`` (convolutional stem, attention with per-head key, key and
value splits and position-bias tables, BatchNorm-ed linear layers, two classifiers when distilled).

What differs from the generic path: an ``Attention`` interleaves each head's q, k and v rows in its ``qkv``
(``view(B, N, heads, -1).split([key_dim, key_dim, val_dim])``), an ``AttentionDownsample`` each head's k and
v rows in its ``kv`` and its query rows head by head in ``q``, each projection with a BatchNorm over its rows,
and both add a per-head bias table indexed by position (``attention_biases``). Heads are removed whole
through ``_head_rows`` (a head's rows of every projection and their BatchNorm entries, its table row and its
columns of ``proj``), and ``num_heads`` / ``key_attn_dim`` / ``val_attn_dim`` (the reshapes' widths) follow.
The streams between blocks, the MLPs and the stem prune as the generic adapter traces them; the graph is
traced with the query's token subsampling written as a gather (the same function), which it follows.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.levit import Attention, AttentionDownsample, Downsample
from torch import nn

from rmtdeploy.adapters._attention import AttentionLayout, forwards_replaced
from rmtdeploy.adapters._head_rows import HeadRows, HeadRowsAdapter
from rmtdeploy.adapters.registry import register_adapter


@register_adapter("levit")
class LevitAdapter(HeadRowsAdapter):
    family = "levit"

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if isinstance(module, (Attention, AttentionDownsample)) and module.use_conv:
            return (
                "the convolutional form (levit_conv_*): its attention's 4-D reshapes make the dependency "
                "graph's index mapping grow without bound; the linear form (levit_*, the same weights) prunes"
            )
        return super().unsupported_reason(module)

    def attention_layouts(self, model: nn.Module) -> list[AttentionLayout]:
        return [
            AttentionLayout(
                attn, self.head_rows(attn)[0].layers[0], attn.proj.ln.linear, attn.num_heads, attn.val_dim
            )
            for attn in model.modules()
            if isinstance(attn, (Attention, AttentionDownsample))
        ]

    def head_rows(self, attention: nn.Module) -> list[HeadRows]:
        key_dim, val_dim = attention.key_dim, attention.val_dim
        if isinstance(attention, Attention):
            return [_rows_of(attention.qkv, 2 * key_dim + val_dim)]
        # The query's rows are read through the subsampling: the attention reads the Sequential's output.
        return [
            _rows_of(attention.kv, key_dim + val_dim),
            _rows_of(attention.q.ln, key_dim, source=attention.q),
        ]

    def head_tables(self, attention: nn.Module) -> list[str]:
        return ["attention_biases"]  # (heads, positions)

    def set_head_count(self, attention: nn.Module, heads: int) -> None:
        attention.num_heads = heads  # key_dim, val_dim and scale stay: heads go whole
        attention.key_attn_dim = heads * attention.key_dim
        attention.val_attn_dim = heads * attention.val_dim

    def trace_forward(self, model: nn.Module, example_inputs: Any) -> Any:
        # The token subsampling before a downsampling attention's query is a 4-D view, a strided slice and
        # a reshape, which the graph does not follow (the query would keep its input width); the same
        # subsampling as one gather over tokens keeps channels on their axis.
        subsamples = [m for m in model.modules() if isinstance(m, Downsample) and m.pool is None]
        with forwards_replaced(subsamples, _subsample_by_gather):
            return super().trace_forward(model, example_inputs)


def _rows_of(linear_norm: nn.Module, per_head: int, source: nn.Module | None = None) -> HeadRows:
    """A ``LinearNorm``'s rows (the Linear and its BatchNorm); the attention reads its output."""
    return HeadRows((linear_norm.linear, linear_norm.bn), per_head, source=source or linear_norm)


def _subsample_by_gather(module: Downsample, x: torch.Tensor) -> torch.Tensor:
    """``Downsample.forward`` (no pooling) as one gather of the kept tokens: the same output."""
    rows, cols = module.resolution
    keep = torch.arange(rows * cols, device=x.device).view(rows, cols)[:: module.stride, :: module.stride]
    return x[:, keep.flatten()]
