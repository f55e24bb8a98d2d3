"""Eva (EVA-02, DINOv3, PE and the other ViTs on timm's ``Eva`` class, rotary position embeddings).

What differs from the generic path:

* Attention heads are removed whole through the fused ``qkv``: the rotary embedding rotates channel pairs
  inside each head, so a head keeps its head_dim (a thinned head would no longer rotate as trained).
* The graph is traced without the rotary embedding (it slices and re-concatenates tokens around each head,
  which the graph maps onto the wrong channels) and with the qkv biases added after the layer
  (``qkv_bias_separate``: with fused biases timm calls ``F.linear`` on ``qkv.weight`` and the layer never runs
  as a module). Both are the same function; the exactness check runs the real one.
* The query and value biases are bare parameters concatenated around a zero key-bias buffer; the graph maps
  them wrongly, so they are hidden from it and sliced by head when a ``HeadLayoutProbe`` reports which heads
  stay (as Swin's bias tables are); the key-bias buffer follows.

The gated MLP (``GluMlp``) and everything else are the generic adapter's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat, maybe_add_mask, resolve_self_attn_mask
from timm.models.eva import EvaAttention
from torch import nn

from rmtdeploy.adapters._attention import (
    AttentionLayout,
    HeadProbingAdapter,
    attribute_set,
    keep_head_channels,
    qkv_biases_added_after_the_layer,
    qkv_with_biases,
)
from rmtdeploy.adapters._model_attributes import PatchEmbedSizeMixin
from rmtdeploy.adapters.generic import GenericAdapter
from rmtdeploy.adapters.registry import register_adapter


class PrunedEvaAttention(EvaAttention):
    """timm's ``EvaAttention`` whose output width is its heads' (timm reshapes to the block's input width,
    which holds only while the two agree); otherwise the same computation, fused-qkv form."""

    def forward(self, x, rope=None, attn_mask=None, is_causal: bool = False):
        batch, tokens, _ = x.shape
        qkv = qkv_with_biases(self, x)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat(
                [q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2
            ).type_as(v)
            k = torch.cat(
                [k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2
            ).type_as(v)
        if self.fused_attn:
            dropout = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(tokens, attn, attn_mask, is_causal=is_causal))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(batch, tokens, -1))
        return self.proj_drop(self.proj(x))


@register_adapter("eva")
class EvaAdapter(PatchEmbedSizeMixin, HeadProbingAdapter, GenericAdapter):
    family = "eva"

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if isinstance(module, EvaAttention) and module.qkv is None:
            return (
                "separate q/k/v projections (qkv_fused=False): the adapter removes heads through a fused qkv"
            )
        if isinstance(module, EvaAttention) and getattr(module, "gate", None) is not None:
            return "gated attention: its per-channel gate projection is not tracked"
        return super().unsupported_reason(module)

    def attention_layouts(self, model: nn.Module) -> list[AttentionLayout]:
        return [
            AttentionLayout(attn, attn.qkv, attn.proj, attn.num_heads, attn.head_dim)
            for attn in model.modules()
            if isinstance(attn, EvaAttention)
        ]

    def apply_head_change(self, attention: nn.Module, kept_heads: list[int], head_dim: int) -> None:
        keep_head_channels(attention, ("q_bias", "k_bias", "v_bias"), kept_heads, head_dim)
        attention.num_heads = len(kept_heads)

    @contextmanager
    def tracing_mode(self, model: nn.Module) -> Iterator[None]:
        with ExitStack() as stack:
            if getattr(model, "rope", None) is not None:
                stack.enter_context(attribute_set(model, "rope", None))
            attentions = [m for m in model.modules() if isinstance(m, EvaAttention)]
            stack.enter_context(qkv_biases_added_after_the_layer(attentions))
            yield

    def customized_pruners(self, model: nn.Module) -> dict:
        return {**GenericAdapter.customized_pruners(self, model), **super().customized_pruners(model)}

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        return super().unwrapped_parameters(model) + GenericAdapter.unwrapped_parameters(self, model)

    def repair(self, model: nn.Module) -> None:
        self.check_head_layouts(model)
        for attn in model.modules():
            if isinstance(attn, EvaAttention) and attn.num_heads * attn.head_dim != attn.proj.out_features:
                attn.__class__ = PrunedEvaAttention
        GenericAdapter.repair(self, model)
