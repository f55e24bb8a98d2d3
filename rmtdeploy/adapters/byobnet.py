"""ByobNet (timm's "bring your own blocks" nets: MobileViT v2, MobileOne, RepVGG, GERNet, ...).

Everything but MobileViT v2's separable self-attention is the generic adapter's. ``LinearSelfAttention``
projects to ``1 + 2d`` channels, split into one context-score row, ``d`` keys and ``d`` values; key ``c`` and
value ``c`` meet only each other and ``out_proj``'s input ``c``. Its ``qkv_proj`` becomes a
:class:`KeyValueConv` (the same layer and forward) so that removing inner channel ``c`` takes rows ``1 + c``
and ``1 + d + c`` and never the score row, and the inner channels are pruned as one group rooted at
``out_proj``'s input. ``embed_dim`` (the split size) follows the pruned width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models.mobilevit import LinearSelfAttention
from torch import nn
from torch_pruning.pruner import function as tp_function

from rmtdeploy.adapters._attention import forwards_replaced
from rmtdeploy.adapters.generic import GenericAdapter
from rmtdeploy.adapters.registry import register_adapter


class KeyValueConv(nn.Conv2d):
    """``qkv_proj`` of MobileViT v2's attention: one score row, then ``d`` key rows, then ``d`` value rows."""


class KeyValuePruner(tp_function.BasePruningFunc):
    """Removes inner channels of a :class:`KeyValueConv`: each index names a key or value row, and the
    channel's key and value rows go together; the score row stays."""

    _conv = tp_function.PrunerBox[tp_function.ops.OPTYPE.CONV]

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        return self._conv.prune_out_channels(layer, self.rows(layer, idxs))

    def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        return self._conv.prune_in_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels

    @staticmethod
    def rows(layer: nn.Module, idxs: list[int]) -> list[int]:
        inner = (layer.out_channels - 1) // 2
        channels = sorted({(int(i) - 1) % inner for i in idxs if int(i) >= 1})
        return [1 + c for c in channels] + [1 + inner + c for c in channels]

    @torch.no_grad()
    def silence(self, layer: nn.Module, idxs: list[int], outputs: bool) -> None:
        """For ``rmtdeploy.pruning.exactness``: zero what a removal takes, without removing it."""
        if not outputs:
            layer.weight[:, idxs] = 0
            return
        rows = self.rows(layer, idxs)
        layer.weight[rows] = 0
        if layer.bias is not None:
            layer.bias[rows] = 0


@register_adapter("byobnet", "mobilevit")
class ByobNetAdapter(GenericAdapter):
    family = "byobnet"

    def customized_pruners(self, model: nn.Module) -> dict:
        for attn in _attentions(model):
            attn.qkv_proj.__class__ = KeyValueConv  # the pruning function is chosen by class
        return {**super().customized_pruners(model), KeyValueConv: KeyValuePruner()}

    def trace_forward(self, model: nn.Module, example_inputs: Any) -> Any:
        with forwards_replaced(_attentions(model), _self_attention_couplings):
            return super().trace_forward(model, example_inputs)

    def reroot_group(self, graph: Any, group: Any) -> Any:
        # Rooted at qkv_proj, the group holds the score row and both halves; rooted at out_proj's input it
        # holds the d inner channels, each mapped onto its key and value rows by KeyValuePruner.
        root = group[0].dep.target.module
        for attn in _attentions_of_graph(graph):
            if root is attn.qkv_proj:
                out_proj = attn.out_proj
                prune_in = graph.get_pruner_of_module(out_proj).prune_in_channels
                return graph.get_pruning_group(out_proj, prune_in, list(range(out_proj.in_channels)))
        return super().reroot_group(graph, group)

    def repair(self, model: nn.Module) -> None:
        for attn in _attentions(model):
            attn.embed_dim = attn.out_proj.in_channels
        super().repair(model)


def _self_attention_couplings(attn: LinearSelfAttention, x: torch.Tensor, x_prev=None) -> torch.Tensor:
    """What the graph traces for a ``LinearSelfAttention``: its channel couplings, not its values.

    Key ``c`` and value ``c`` feed ``out_proj``'s input ``c``; the one score row is never pruned. timm's
    forward broadcasts the score row over every key and sums over tokens before expanding back, which the
    graph reads as couplings across channels. Tracing ``value * key`` keeps exactly the real couplings; the
    exactness check (``rmtdeploy.coverage.verify_pruned``) runs the real forward."""
    qkv, inner = attn.qkv_proj(x), attn.embed_dim
    return attn.out_proj(F.relu(qkv[:, 1 + inner :]) * qkv[:, 1 : 1 + inner])  # slices: the graph maps them


def _attentions(model: nn.Module) -> list[LinearSelfAttention]:
    return [m for m in model.modules() if isinstance(m, LinearSelfAttention)]


def _attentions_of_graph(graph: Any) -> list[LinearSelfAttention]:
    return _attentions(graph.model)
