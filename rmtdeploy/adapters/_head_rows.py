"""Whole heads of attentions whose input projections the dependency graph maps onto the wrong rows.

timm splits some fused projections into heads in layouts torch-pruning's (TP) index mapping does not follow:
TinyViT and LeViT interleave each head's q, k and v rows (``qkv(x).view(B, N, heads, -1).split([key_dim,
key_dim, val_dim], dim=3)``: head ``h`` owns one block of rows), and EdgeNeXt's cross-covariance attention
stacks q | k | v as ViT does but reads them through a permute that TP maps onto other rows (and back onto yet
others, so even ``proj``'s columns would be cut wrongly). The output projection's input columns are head-major
(``head * head_dim + d``) in all of them, and TP maps those right when nothing else reaches them.

So the graph is traced with the projections' outputs cut off from the attention (:meth:`trace_forward`): the
attention reads them detached, and only a zero-valued tie carries the first projection's rows into ``proj``'s
input, slice for slice (row ``i`` to column ``i``, a mapping TP follows both ways). The heads' unit is then
``proj``'s input columns, rooted there as for ViT, with a ``HeadLayoutProbe`` (``_attention.py``) that
reports which heads stay; the adapter cuts every head's rows itself, by the layout it knows (:class:`HeadRows`),
with the BatchNorm over them, the tables held by head (attention biases, temperatures; hidden from the graph)
and the cached sizes. The projections keep their input columns in the graph (the stream's channels), under a
pruning function that ignores the row indices the tie gives them (:class:`HeadRowsPruner`).

The exactness check needs nothing more: a removed head is silenced at ``proj``'s input, the only place its
output is read, and the pruned model must then match the dense model with those columns zeroed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch_pruning.pruner import function as tp_function

from rmtdeploy.adapters._attention import (
    HeadLayoutProbe,
    HeadProbingAdapter,
    parameters_hidden_from_autograd,
)
from rmtdeploy.adapters.generic import GenericAdapter
from rmtdeploy.errors import RmtdeployError


@dataclass(frozen=True)
class HeadRows:
    """A projection (and the BatchNorm over its outputs) whose rows belong to heads: ``segments`` stacked
    blocks (q | k | v as in ViT's fused qkv: 3; one block of interleaved rows: 1), each head-major with
    ``per_head`` rows a head. ``source`` is the module whose output the attention reads (default: the
    projection)."""

    layers: tuple[nn.Module, ...]
    per_head: int
    segments: int = 1
    source: nn.Module | None = None

    def heads(self) -> int:
        """The head count the rows hold."""
        return _rows(self.layers[0]) // (self.segments * self.per_head)

    def rows_of(self, heads: list[int]) -> list[int]:
        block = self.heads() * self.per_head
        return [
            s * block + h * self.per_head + r
            for s in range(self.segments)
            for h in heads
            for r in range(self.per_head)
        ]


class HeadRowsLinear(nn.Linear):
    """A projection whose rows go by head (see :class:`HeadRows`); an ``nn.Linear`` in every other respect."""


class HeadRowsBatchNorm1d(nn.BatchNorm1d):
    """The BatchNorm over a :class:`HeadRowsLinear`'s rows (LeViT); a ``BatchNorm1d`` otherwise."""


class HeadRowsPruner(tp_function.BasePruningFunc):
    """The rows of a head-rows layer are cut by head when the probe reports the kept heads; the indices TP
    gives them are ignored. A Linear's input columns (the stream's channels) prune as usual."""

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        if isinstance(layer, nn.Linear):
            return tp_function.prune_linear_in_channels(layer, idxs)
        return layer  # a BatchNorm's inputs are its rows

    def get_out_channels(self, layer: nn.Module) -> int:
        return _rows(layer)

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_features if isinstance(layer, nn.Linear) else layer.num_features

    @torch.no_grad()
    def silence(self, layer: nn.Module, idxs: list[int], outputs: bool) -> None:
        """For ``rmtdeploy.pruning.exactness``: a removed head needs no masking here (it is masked at
        ``proj``'s input); a Linear's input columns are zeroed as any Linear's."""
        if not outputs and isinstance(layer, nn.Linear):
            layer.weight[:, idxs] = 0


class HeadRowsNormPruner(HeadRowsPruner):
    """A BatchNorm's inputs are its outputs: one function, so that TP follows it from the tie to the rows."""

    prune_in_channels = HeadRowsPruner.prune_out_channels


_HEAD_ROW_CLASSES = {nn.Linear: HeadRowsLinear, nn.BatchNorm1d: HeadRowsBatchNorm1d}


class HeadRowsAdapter(HeadProbingAdapter, GenericAdapter):
    """Base of the adapters, built on the generic one, whose attentions hold heads as described above.

    Subclasses say where the attentions are (:meth:`attention_layouts`: ``qkv`` is the first head-rows
    Linear, holding at least ``proj.in_features`` rows; ``proj`` the Linear that reads the heads; ``head_dim``
    its columns a head), which layers hold head rows, that first one first (:meth:`head_rows`), which
    parameters are tables by head, heads first (:meth:`head_tables`), and what a head count means for the
    cached sizes (:meth:`set_head_count`).
    """

    def head_rows(self, attention: nn.Module) -> list[HeadRows]:
        raise NotImplementedError

    def head_tables(self, attention: nn.Module) -> list[str]:
        return []

    def set_head_count(self, attention: nn.Module, heads: int) -> None:
        raise NotImplementedError

    def apply_head_change(self, attention: nn.Module, kept_heads: list[int], head_dim: int) -> None:
        (layout,) = self.attention_layouts(attention)  # the attention's own layout, before the change
        if head_dim != layout.head_dim:
            raise RmtdeployError(
                f"{type(attention).__name__}: heads are removed whole only (head_dim {layout.head_dim} -> "
                f"{head_dim}); prune them through the adapter's head units"
            )
        for rows in self.head_rows(attention):
            removed = rows.rows_of(sorted(set(range(rows.heads())) - set(kept_heads)))
            for layer in rows.layers:
                if isinstance(layer, nn.Linear):
                    tp_function.prune_linear_out_channels(layer, removed)
                else:
                    tp_function.prune_batchnorm_out_channels(layer, removed)
        for name in self.head_tables(attention):
            table = getattr(attention, name)
            sliced = nn.Parameter(table.data[kept_heads].clone(), requires_grad=table.requires_grad)
            if table.grad is not None:
                sliced.grad = table.grad[kept_heads].clone()
            setattr(attention, name, sliced)
        _clear_bias_cache(attention)
        self.set_head_count(attention, len(kept_heads))

    def customized_pruners(self, model: nn.Module) -> dict:
        # TP picks pruning functions by class: the head-rows layers become their subclasses (same layers and
        # forward), on every graph build, so replays see them too.
        for layout in self.attention_layouts(model):
            for rows in self.head_rows(layout.attention):
                for layer in rows.layers:
                    layer.__class__ = _HEAD_ROW_CLASSES.get(type(layer), type(layer))
        return {
            **GenericAdapter.customized_pruners(self, model),
            **super().customized_pruners(model),
            HeadRowsLinear: HeadRowsPruner(),
            HeadRowsBatchNorm1d: HeadRowsNormPruner(),
        }

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        return super().unwrapped_parameters(model) + GenericAdapter.unwrapped_parameters(self, model)

    def trace_forward(self, model: nn.Module, example_inputs: Any) -> Any:
        """The traced forward with every head-rows output cut off from its attention: the first one tied to
        ``proj``'s input row for column, the others returned as extra outputs (so that their input columns
        stay in the graph, and their rows in no group but their own, which :meth:`group_problem` leaves whole).
        """
        untied: list[torch.Tensor] = []
        with ExitStack() as stack:
            for layout in self.attention_layouts(model):
                tied: list[torch.Tensor] = []
                for position, rows in enumerate(self.head_rows(layout.attention)):
                    kept = tied if position == 0 else untied
                    source = rows.source if rows.source is not None else rows.layers[0]
                    stack.enter_context(_output_detached(source, kept))
                stack.enter_context(_tied_to_input(layout.proj, tied))
            output = super().trace_forward(model, example_inputs)
        return (output, *untied) if untied else output

    @contextmanager
    def tracing_mode(self, model: nn.Module) -> Iterator[None]:
        # A table would be coupled to channels; hidden, it is no graph node, and apply_head_change slices it
        # by head instead. A bias cache filled before (timm's eval path) would still reach it: cleared.
        attentions = [layout.attention for layout in self.attention_layouts(model)]
        tables = [getattr(attn, name) for attn in attentions for name in self.head_tables(attn)]
        with ExitStack() as stack:
            stack.callback(lambda: [_clear_bias_cache(attn) for attn in attentions])
            for attn in attentions:
                _clear_bias_cache(attn)
            stack.enter_context(parameters_hidden_from_autograd(tables))
            yield

    def group_problem(self, graph: Any, group: Any, names: dict[nn.Module, str]) -> str | None:
        rows_cut = [
            dep.target.module
            for dep, _ in group
            if isinstance(dep.target.module, (HeadRowsLinear, HeadRowsBatchNorm1d))
            and graph.is_out_channel_pruning_fn(dep.handler)
        ]
        if rows_cut and not any(isinstance(dep.target.module, HeadLayoutProbe) for dep, _ in group):
            name = names.get(rows_cut[0], type(rows_cut[0]).__name__)
            return f"{name}: its rows go with the attention's heads"
        return super().group_problem(graph, group, names)

    def repair(self, model: nn.Module) -> None:
        for layout in self.attention_layouts(model):
            attn = layout.attention
            heads = layout.proj.in_features // layout.head_dim
            counts = {rows.heads() for rows in self.head_rows(attn)}
            counts |= {getattr(attn, name).shape[0] for name in self.head_tables(attn)}
            if layout.proj.in_features % layout.head_dim or counts != {heads}:
                raise RmtdeployError(
                    f"{type(attn).__name__}: proj reads {layout.proj.in_features} channels of heads of "
                    f"{layout.head_dim}, but its projections and tables hold {sorted(counts)} heads; the model "
                    "was pruned without the adapter's trace_forward, so the removed heads are unknown"
                )
            self.set_head_count(attn, heads)
        GenericAdapter.repair(self, model)


@contextmanager
def _output_detached(module: nn.Module, kept: list[torch.Tensor]) -> Iterator[None]:
    def detach(_module, _args, output):
        kept.append(output)
        return output.detach()

    handle = module.register_forward_hook(detach)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _tied_to_input(proj: nn.Linear, tied: list[torch.Tensor]) -> Iterator[None]:
    """Adds zero to ``proj``'s input, computed from the first ``in_features`` rows of the tied output: the
    graph couples row ``i`` to column ``i`` (a slice, then a mean over tokens that keeps channels)."""

    def tie(_module, args):
        rows = tied.pop()[..., : proj.in_features]
        if rows.dim() > 2:  # (batch, tokens..., rows): one value a row, for any token count
            rows = rows.mean(dim=tuple(range(1, rows.dim() - 1)), keepdim=True)
        return (args[0] + (rows - rows.detach()), *args[1:])

    handle = proj.register_forward_pre_hook(tie)
    try:
        yield
    finally:
        handle.remove()


def _rows(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.num_features


def _clear_bias_cache(attention: nn.Module) -> None:
    # timm's TinyViT and LeViT attentions cache their bias table gathered by position, per device (eval).
    if isinstance(getattr(attention, "attention_bias_cache", None), dict):
        attention.attention_bias_cache = {}
