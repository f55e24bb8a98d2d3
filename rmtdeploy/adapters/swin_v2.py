"""Swin Transformer V2 (timm ``swin_transformer_v2.py``): cosine window attention with a per-head logit scale
and a continuous position bias (a small MLP whose last layer has one output a head), q and v biases around a
zero k-bias buffer, post-norm blocks, and patch merging that reduces before its norm.

What differs from the generic path:

* **Heads go whole** through ``_head_rows``: a head's q, k and v rows of ``qkv`` (stacked q | k | v, as in
  ViT), its ``logit_scale``, its row of ``cpb_mlp``'s last layer and its columns of ``proj`` go together; its
  q/v bias entries (and the k-bias buffer's) are cut with them (``keep_head_channels``, as for Eva), and the
  graph is traced with the biases added after ``qkv`` (``qkv_bias_separate``). ``num_heads`` follows, and a
  pruned attention reshapes to its own width (timm reshapes to the block's).
* **The position-bias MLP is left whole** but for its head rows: it maps fixed window coordinates to a table
  (a constant for a given window), so its hidden units are not the model's channels.
* **The stage streams prune**: patch merging stacks each 2x2 neighbourhood along channels (``k * C + c``), a
  reshape the graph maps onto the wrong columns of ``reduction``. While the graph is traced the reduction
  reads that stack detached, plus a zero tie that concatenates the merge's input channels four times (a
  concatenation the graph follows), so channel ``c`` of a stream takes columns ``k * C + c``; ``reduction``'s
  rows and the norm after it prune as the next stage's stream.

``swinv2_cr_*`` (timm's ``swin_transformer_v2_cr.py``, another family) keeps the generic adapter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import PatchMerging, SwinTransformerV2Block, WindowAttention
from torch import nn

from rmtdeploy.adapters._attention import (
    AttentionLayout,
    keep_head_channels,
    qkv_biases_added_after_the_layer,
    qkv_with_biases,
)
from rmtdeploy.adapters._head_rows import HeadRows, HeadRowsAdapter
from rmtdeploy.adapters._model_attributes import PatchEmbedSizeMixin, layer_norm_width
from rmtdeploy.adapters.registry import register_adapter

_NEIGHBOURS = 4  # PatchMerging stacks the 2x2 neighbourhood of every output token along channels


class PrunedWindowAttention(WindowAttention):
    """timm's SwinV2 ``WindowAttention`` whose output width is its heads' (timm reshapes to its input width,
    which holds only while the two agree); otherwise the same computation."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        windows_batch, tokens, _ = x.shape
        qkv = qkv_with_biases(self, x)
        q, k, v = qkv.reshape(windows_batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        area = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index.view(-1)].view(area, area, -1).permute(2, 0, 1)
        attn = attn + 16 * torch.sigmoid(bias.contiguous()).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(-1, windows, self.num_heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, tokens, tokens)
        x = self.attn_drop(self.softmax(attn)) @ v
        x = x.transpose(1, 2).reshape(windows_batch, tokens, self.proj.in_features)
        return self.proj_drop(self.proj(x))


@register_adapter("swin_transformer_v2")
class SwinV2Adapter(PatchEmbedSizeMixin, HeadRowsAdapter):
    family = "swin_transformer_v2"

    def attention_layouts(self, model: nn.Module) -> list[AttentionLayout]:
        return [
            AttentionLayout(attn, attn.qkv, attn.proj, attn.num_heads, _head_dim(attn))
            for attn in _attentions(model)
        ]

    def head_rows(self, attention: nn.Module) -> list[HeadRows]:
        return [
            HeadRows((attention.qkv,), per_head=_head_dim(attention), segments=3),  # q | k | v
            HeadRows((attention.cpb_mlp[-1],), per_head=1),  # the position-bias table's column of a head
        ]

    def head_tables(self, attention: nn.Module) -> list[str]:
        return ["logit_scale"]  # (heads, 1, 1)

    def apply_head_change(self, attention: nn.Module, kept_heads: list[int], head_dim: int) -> None:
        super().apply_head_change(attention, kept_heads, head_dim)
        keep_head_channels(attention, ("q_bias", "k_bias", "v_bias"), kept_heads, head_dim)

    def set_head_count(self, attention: nn.Module, heads: int) -> None:
        attention.num_heads = heads
        if heads * _head_dim(attention) != attention.qkv.in_features and type(attention) is WindowAttention:
            attention.__class__ = PrunedWindowAttention

    @contextmanager
    def tracing_mode(self, model: nn.Module) -> Iterator[None]:
        attentions = _attentions(model)
        with ExitStack() as stack:
            stack.enter_context(super().tracing_mode(model))
            stack.enter_context(qkv_biases_added_after_the_layer(attentions))
            for merge in (m for m in model.modules() if isinstance(m, PatchMerging)):
                stack.enter_context(_neighbourhood_tied(merge))
            yield

    def group_problem(self, graph: Any, group: Any, names: dict[nn.Module, str]) -> str | None:
        position_mlps = {layer for attn in _attentions(graph.model) for layer in attn.cpb_mlp}
        for dep, _ in group:
            if dep.target.module in position_mlps:
                name = names.get(dep.target.module, "cpb_mlp")
                return (
                    f"{name}: the position-bias MLP maps fixed window coordinates, not the model's channels"
                )
        return super().group_problem(graph, group, names)

    def repair(self, model: nn.Module) -> None:
        super().repair(model)  # head counts checked and set, then the generic widths
        for module in model.modules():
            if isinstance(module, WindowAttention):
                module.dim = module.qkv.in_features
            elif isinstance(module, SwinTransformerV2Block):
                module.dim, module.num_heads = layer_norm_width(module.norm1), module.attn.num_heads
            elif isinstance(module, PatchMerging):
                module.dim = module.reduction.in_features // _NEIGHBOURS
                module.out_dim = module.reduction.out_features
        for stage in model.layers:
            stage.dim = (
                stage.downsample.dim if isinstance(stage.downsample, PatchMerging) else stage.blocks[0].dim
            )
        model.embed_dim = model.patch_embed.proj.out_channels


@contextmanager
def _neighbourhood_tied(merge: PatchMerging) -> Iterator[None]:
    """``merge.reduction`` reads the stacked neighbourhood detached, plus zero computed from the merge's input
    concatenated four times along channels (dim 1 of a (batch, C) mean, which the graph maps by offset): input
    channel ``c`` is tied to columns ``k * C + c``, the stack's layout."""
    inputs: list[torch.Tensor] = []

    def keep_input(_module, args):
        inputs.append(args[0])

    def tie(_module, args):
        per_channel = inputs.pop().mean(dim=(1, 2))  # (batch, C) of the (batch, H, W, C) map
        copies = torch.cat([per_channel] * _NEIGHBOURS, dim=1)
        zero = (copies - copies.detach()).unsqueeze(1).unsqueeze(1)
        return (args[0].detach() + zero, *args[1:])

    handles = [merge.register_forward_pre_hook(keep_input), merge.reduction.register_forward_pre_hook(tie)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _attentions(model: nn.Module) -> list[WindowAttention]:
    return [m for m in model.modules() if isinstance(m, WindowAttention)]


def _head_dim(attn: WindowAttention) -> int:
    return attn.qkv.out_features // (3 * attn.num_heads)
