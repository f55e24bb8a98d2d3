"""Swin Transformer (timm ``swin_transformer.py``): window attention with a per-head relative-position bias
table, and patch merging that concatenates four spatial neighbours before its norm and reduction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformerBlock,
    SwinTransformerStage,
    WindowAttention,
)
from torch import nn

from rmtdeploy.adapters._attention import (
    AttentionLayout,
    HeadProbingAdapter,
    attention_scores_for_onnx,
    forwards_replaced,
    parameters_hidden_from_autograd,
)
from rmtdeploy.adapters._model_attributes import PatchEmbedSizeMixin, layer_norm_width, sync_model_widths
from rmtdeploy.adapters.registry import register_adapter
from rmtdeploy.errors import RmtdeployError

_NEIGHBOURS = 4  # PatchMerging stacks the 2x2 neighbourhood of every output token along channels


class PatchMergingPruner(tp.pruner.function.BasePruningFunc):
    """Prunes a PatchMerging through its own channels instead of the 4x-wide concatenation TP would see.

    timm flattens the neighbourhood as ``(w_offset, h_offset, C)``: input channel ``c`` sits at
    ``c + k * C`` for ``k`` in 0..3 in both the norm and the reduction's input. The mapping depends only
    on the indices and the current width, so replaying a plan on a fresh model cuts the same columns.
    """

    def prune_out_channels(self, layer: PatchMerging, idxs: list[int]) -> PatchMerging:
        tp.pruner.function.prune_linear_out_channels(layer.reduction, idxs)
        layer.out_dim = layer.reduction.out_features
        return layer

    def prune_in_channels(self, layer: PatchMerging, idxs: list[int]) -> PatchMerging:
        stacked = self._stacked(layer, idxs)
        tp.pruner.function.prune_layernorm_out_channels(layer.norm, stacked)
        tp.pruner.function.prune_linear_in_channels(layer.reduction, stacked)
        layer.dim = self.get_in_channels(layer)
        return layer

    def silence(
        self, layer: PatchMerging, idxs: list[int], outputs: bool
    ) -> list[tuple[nn.Module, list[int]]]:
        """For ``rmtdeploy.pruning.exactness``: zero what a removal takes; the norm's statistics over the
        stacked neighbourhood must skip the removed channel in all four places."""
        if outputs:
            layer.reduction.weight[idxs] = 0
            if layer.reduction.bias is not None:
                layer.reduction.bias[idxs] = 0
            return []
        stacked = self._stacked(layer, idxs)
        layer.reduction.weight[:, stacked] = 0
        return [(layer.norm, stacked)]

    def _stacked(self, layer: PatchMerging, idxs: list[int]) -> list[int]:
        dim = self.get_in_channels(layer)
        return [k * dim + i for k in range(_NEIGHBOURS) for i in idxs]

    def get_out_channels(self, layer: PatchMerging) -> int:
        return layer.reduction.out_features

    def get_in_channels(self, layer: PatchMerging) -> int:
        return layer.reduction.in_features // _NEIGHBOURS


@register_adapter("swin")
class SwinAdapter(PatchEmbedSizeMixin, HeadProbingAdapter):
    """Heads go whole with their bias-table columns; PatchMerging gets its own pruning function."""

    family = "swin"

    def create_kwargs(self, model: nn.Module) -> dict[str, Any]:
        kwargs = super().create_kwargs(model)
        # Window sizes shape the bias tables; a model built with non-default windows must be rebuilt with
        # them, and timm's per-stage form reproduces the default ones exactly, so they are always recorded.
        kwargs["window_size"] = [list(stage.blocks[0].window_size) for stage in model.layers]
        return kwargs

    def attention_layouts(self, model: nn.Module) -> list[AttentionLayout]:
        return [
            AttentionLayout(attn, attn.qkv, attn.proj, attn.num_heads, _cached_head_dim(attn))
            for attn in model.modules()
            if isinstance(attn, WindowAttention)
        ]

    def apply_head_change(self, attention: nn.Module, kept_heads: list[int], head_dim: int) -> None:
        table = attention.relative_position_bias_table  # ((2*Wh-1)*(2*Ww-1), num_heads): one column per head
        sliced = nn.Parameter(table.data[:, kept_heads].clone(), requires_grad=table.requires_grad)
        if table.grad is not None:
            sliced.grad = table.grad[:, kept_heads].clone()
        attention.relative_position_bias_table = sliced
        attention.num_heads = len(kept_heads)
        # Fused SDPA scales by q.size(-1) ** -0.5; the explicit path must match it exactly.
        attention.scale = head_dim**-0.5

    @contextmanager
    def tracing_mode(self, model: nn.Module) -> Iterator[None]:
        # TP would couple the bias table to q/k *channels* (one index per head_dim slot) and cut the wrong
        # columns; hidden from autograd it is no graph node, and apply_head_change slices it by head instead.
        with parameters_hidden_from_autograd(_bias_tables(model)):
            yield

    def customized_pruners(self, model: nn.Module) -> dict:
        return {**super().customized_pruners(model), PatchMerging: PatchMergingPruner()}

    def export_mode(self, model: nn.Module, backend: str):
        # kᵀ as timm writes it makes ONNX Runtime transpose k element by element in every window attention
        # (see attention_scores_for_onnx; measurements: docs/adapters.md). TensorRT gets timm's form, which
        # its attention fusion knows.
        if backend != "onnxruntime":
            return super().export_mode(model, backend)
        attentions = [m for m in model.modules() if isinstance(m, WindowAttention)]
        return forwards_replaced(attentions, window_attention_for_onnx)

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        # Bias tables are listed (head axis 1) only so TP does not warn about them: they are hidden while it
        # traces and never reach its graph.
        return super().unwrapped_parameters(model) + [(table, 1) for table in _bias_tables(model)]

    def repair(self, model: nn.Module) -> None:
        for attn in (m for m in model.modules() if isinstance(m, WindowAttention)):
            columns = attn.relative_position_bias_table.shape[1]
            if columns != attn.num_heads:
                raise RmtdeployError(
                    f"WindowAttention has {attn.num_heads} heads but its bias table {columns} columns; "
                    "the model was pruned without SwinAdapter.trace_forward"
                )
        self.check_head_layouts(model)
        for layout in self.attention_layouts(model):
            layout.attention.dim = layout.qkv.in_features
            layout.attention.scale = layout.head_dim**-0.5
        for module in model.modules():
            if isinstance(module, SwinTransformerBlock):
                module.dim = layer_norm_width(module.norm1)
            elif isinstance(module, PatchMerging):
                module.dim = module.reduction.in_features // _NEIGHBOURS
                module.out_dim = module.reduction.out_features
        stage_widths = []
        for stage in model.layers:
            stage.dim = (
                stage.downsample.dim if isinstance(stage.downsample, PatchMerging) else stage.blocks[0].dim
            )
            stage_widths.append(_stage_out_width(stage))
        model.embed_dim = model.patch_embed.proj.out_channels
        sync_model_widths(model, stage_widths, num_features=stage_widths[-1])


def window_attention_for_onnx(
    attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``WindowAttention.forward`` (non-fused math, eval) with ONNX-friendly scores."""
    windows_batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(windows_batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    scores = attention_scores_for_onnx(q, k, attn.scale) + attn._get_rel_pos_bias()
    if mask is not None:  # shifted windows: (windows, tokens, tokens) of 0 / -inf
        windows = mask.shape[0]
        scores = scores.view(-1, windows, attn.num_heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
        scores = scores.view(-1, attn.num_heads, tokens, tokens)
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(windows_batch, tokens, -1)
    return attn.proj(out)


def _cached_head_dim(attn: WindowAttention) -> int:
    # timm keeps head_dim only as scale = head_dim ** -0.5 (apply_head_change keeps it in step).
    return round(attn.scale**-2)


def _bias_tables(model: nn.Module) -> list[nn.Parameter]:
    return [m.relative_position_bias_table for m in model.modules() if isinstance(m, WindowAttention)]


def _stage_out_width(stage: SwinTransformerStage) -> int:
    last_block = stage.blocks[-1]
    return layer_norm_width(last_block.norm2)
