"""Hiera (timm ``hiera.py``): mask-unit attention with q-pooling, and stage transitions whose block projects
the residual stream to the next width (``HieraBlock.proj``) before max-pooling it over the q stride."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from timm.layers import LayerScale
from timm.models.hiera import Hiera, HieraBlock, MaskUnitAttention
from torch import nn

from rmtdeploy.adapters._attention import (
    AttentionLayout,
    HeadProbingAdapter,
    attention_scores_for_onnx,
    attribute_set,
    forwards_replaced,
)
from rmtdeploy.adapters._model_attributes import image_kwargs, layer_norm_width, sync_model_widths
from rmtdeploy.adapters.registry import register_adapter


@register_adapter("hiera")
class HieraAdapter(HeadProbingAdapter):
    """Heads go whole (tracked by the head-layout probe); the graph is traced through global attention."""

    family = "hiera"

    def example_inputs(self, model: nn.Module, batch: int = 1) -> torch.Tensor:
        # The position embedding fixes the token grid: the image size is the one the model was built for.
        if not isinstance(model, Hiera):
            return super().example_inputs(model, batch)
        return torch.randn(batch, model.patch_embed.proj.in_channels, *_image_size(model))

    def create_kwargs(self, model: nn.Module) -> dict[str, Any]:
        kwargs = super().create_kwargs(model)
        if isinstance(model, Hiera):
            kwargs.update(image_kwargs(model, _image_size(model), model.patch_embed.proj.in_channels))
        return kwargs

    def attention_layouts(self, model: nn.Module) -> list[AttentionLayout]:
        return [
            AttentionLayout(attn, attn.qkv, attn.proj, attn.heads, attn.head_dim)
            for attn in model.modules()
            if isinstance(attn, MaskUnitAttention)
        ]

    def apply_head_change(self, attention: nn.Module, kept_heads: list[int], head_dim: int) -> None:
        attention.heads = len(kept_heads)
        attention.head_dim = head_dim
        # dim_out is the attention width the output reshape uses (heads * head_dim), not the residual width.
        attention.dim_out = len(kept_heads) * head_dim
        attention.scale = head_dim**-0.5  # must equal SDPA's default q.size(-1) ** -0.5

    @contextmanager
    def tracing_mode(self, model: nn.Module) -> Iterator[None]:
        # Mask-unit attention runs its matmuls on 5-D tensors (B, heads, windows, tokens, head_dim); TP 1.6.1
        # reads every 5-D expand as grouped-query attention and divides by zero mapping its indices. The
        # global path has the same channel wiring (same qkv split, heads, q-pooling, proj) on 4-D tensors,
        # and the graph only records channel wiring, so the trace takes that path.
        with ExitStack() as stack:
            for attn in self._attentions(model):
                if attn.use_mask_unit_attn:
                    stack.enter_context(attribute_set(attn, "use_mask_unit_attn", False))
            yield

    @contextmanager
    def export_mode(self, model: nn.Module, backend: str) -> Iterator[None]:
        # kᵀ as timm writes it makes ONNX Runtime transpose k element by element in every attention call, a
        # sizeable share of the model (see attention_scores_for_onnx; measurements: docs/adapters.md).
        # TensorRT gets timm's form, which its attention fusion knows.
        with ExitStack() as stack:
            stack.enter_context(_window_pos_embed_as_constant(model))
            if backend == "onnxruntime":
                stack.enter_context(forwards_replaced(self._attentions(model), mask_unit_attention_for_onnx))
            yield

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        extra: list[tuple[nn.Parameter, int]] = []
        if isinstance(model, Hiera):
            # (1, tokens, C) embeddings carry channels last; the abs-win ones are (1, C, H, W).
            for name, channel_dim in (
                ("pos_embed", 1 if model.pos_embed_win is not None else 2),
                ("pos_embed_win", 1),
                ("pos_embed_spatial", 2),
                ("pos_embed_temporal", 2),
            ):
                param = getattr(model, name, None)
                if param is not None:
                    extra.append((param, channel_dim))
        extra += [(m.gamma, 0) for m in model.modules() if isinstance(m, LayerScale)]
        return super().unwrapped_parameters(model) + extra

    def repair(self, model: nn.Module) -> None:
        self.check_head_layouts(model)
        for attn in self._attentions(model):
            attn.dim = attn.qkv.in_features
            attn.dim_out = attn.heads * attn.head_dim  # attention width, read by the output reshape
            attn.scale = attn.head_dim**-0.5
        for block in model.modules():
            if isinstance(block, HieraBlock):
                block.dim = layer_norm_width(block.norm1)
                block.dim_out = layer_norm_width(block.norm2)
        if isinstance(model, Hiera):
            stage_widths = [model.blocks[end].dim_out for end in model.stage_ends]
            sync_model_widths(model, stage_widths, num_features=stage_widths[-1])

    @staticmethod
    def _attentions(model: nn.Module) -> list[MaskUnitAttention]:
        return [m for m in model.modules() if isinstance(m, MaskUnitAttention)]


def mask_unit_attention_for_onnx(attn: MaskUnitAttention, x: torch.Tensor) -> torch.Tensor:
    """``MaskUnitAttention.forward`` (either path, non-fused math) with ONNX-friendly scores."""
    batch, tokens, _ = x.shape
    heads, head_dim = attn.heads, attn.head_dim
    if attn.use_mask_unit_attn:
        windows = tokens // (attn.q_stride * attn.window_size)
        qkv = attn.qkv(x).reshape(batch, -1, windows, 3, heads, head_dim).permute(3, 0, 4, 2, 1, 5)
        q, k, v = qkv.unbind(0)  # (batch, heads, windows, tokens per window, head_dim)
        if attn.q_stride > 1:
            q = q.view(batch, heads, windows, attn.q_stride, -1, head_dim).amax(dim=3)
    else:
        q, k, v = attn.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if attn.q_stride > 1:
            q = q.view(batch, heads, attn.q_stride, -1, head_dim).amax(dim=2)
    weights = attention_scores_for_onnx(q, k, attn.scale).softmax(dim=-1)
    out = (weights @ v).transpose(1, 3 if attn.use_mask_unit_attn else 2).reshape(batch, -1, attn.dim_out)
    return attn.proj(out)


def _image_size(model: Hiera) -> list[int]:
    return [
        tokens * stride for tokens, stride in zip(model.tokens_spatial_shape, model.patch_stride, strict=True)
    ]


@contextmanager
def _window_pos_embed_as_constant(model: nn.Module) -> Iterator[None]:
    """The abs-win models (``hiera_*_abswin``) interpolate their position embedding, antialiased bicubic, on
    every forward: an operator ONNX (opset 17) cannot export. At the export's fixed input size it is a
    constant, so the export adds it computed."""
    if not isinstance(model, Hiera) or model.pos_embed_win is None:
        yield
        return
    with torch.no_grad():
        pos_embed = model._pos_embed(torch.zeros(1, 1, 1))  # broadcast: the (1, tokens, C) embedding itself
    model._pos_embed = lambda x: x + pos_embed
    try:
        yield
    finally:
        del model._pos_embed
