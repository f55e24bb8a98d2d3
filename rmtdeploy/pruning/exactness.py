"""Is a pruning exact? The pruned model must compute what the dense model computes with the removed channels
masked out.

Running, reloading and exporting prove that a pruned model is well formed, not that it is right: a
squeeze-excitation gate, a grouped convolution or a concatenation whose channels torch-pruning mapped wrongly
still runs, on the wrong channels. The masked reference makes "right" checkable on any architecture. On a copy
of the dense model, every removed channel is silenced wherever it is read: the input columns of every Conv and
Linear that reads it are zeroed (for a grouped convolution, within its group), the rows of every layer that
writes it and its norm's affine entries are zeroed, bare parameters (layer scales, tokens) are zeroed on it, and
layer norms compute their statistics over the kept channels only (``F.layer_norm`` / one-group
``F.group_norm`` are wrapped for that forward; timm's RMS and simple norms run narrowed to the kept slice).
An adapter's own pruning function says how its layer is silenced (``silence``, which may name norms inside
it). Each removal the plan makes is found again through the same dependency graph, from the plan's own
operations (indices renumbered through earlier removals of the same unit, so progressive plans replay too).

What the reference cannot mirror is said, not guessed: a layer of a type it does not know (a family
adapter's own pruning function) makes the check inapplicable, with the layer named. Operations that
normalise across channels in other ways (a softmax over channels, a rotary embedding that pairs channels
within a head) are not masked: pruning them *inside* a head is not exact, and the check says so by failing.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_pruning.pruner import function as tp_function

from rmtdeploy.adapters.base import ArchitectureAdapter
from rmtdeploy.pruning.graph import ChannelStatNormPruner, timm_channel_stat_norm_types

_CONV_OUT = (tp_function.prune_conv_out_channels, tp_function.prune_depthwise_conv_out_channels)
_CONV_IN = (tp_function.prune_conv_in_channels, tp_function.prune_depthwise_conv_in_channels)


class NotApplicable(Exception):
    """The reference cannot mirror a removal (the layer is named in the message)."""


@dataclass
class MaskedReference:
    """The dense model with the removed channels silenced, and the norms whose statistics skip them."""

    model: nn.Module
    # id(norm weight) -> kept channel indices; id(norm) for timm's RMS/simple norms, which may have no weight
    norm_kept: dict[int, torch.Tensor]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-logit features, logits), as ``rmtdeploy.coverage.features_and_logits``."""
        with _masked_norms(self.norm_kept), _masked_timm_norms(self.model, self.norm_kept):
            tokens = self.model.forward_features(images)
            return self.model.forward_head(tokens, pre_logits=True), self.model.forward_head(tokens)


def masked_reference(
    dense: nn.Module, adapter: ArchitectureAdapter, operations: list[dict[str, Any]], example_inputs
) -> MaskedReference:
    """The reference for a plan's ``operations`` on ``dense`` (left untouched). Raises :class:`NotApplicable`."""
    from rmtdeploy.pruning.graph import build_dependency_graph

    model = copy.deepcopy(dense).eval()
    graph = build_dependency_graph(model, adapter, example_inputs)
    modules = dict(model.named_modules())
    names = {id(module): name for name, module in modules.items()}
    alive: dict[tuple[str, str], list[int]] = {}  # a unit's channels still there, in dense numbering
    norm_kept: dict[int, set[int]] = {}
    norm_width: dict[int, int] = {}
    for op in operations:
        key = (op["root"], op["fn"])
        channels = alive.setdefault(key, list(range(op["width"])))
        removed = [channels[i] for i in op["pruned"]]
        gone = set(removed)
        alive[key] = [c for c in channels if c not in gone]
        module = modules[op["root"]]
        group = graph.get_pruning_group(
            module, getattr(graph.get_pruner_of_module(module), op["fn"]), removed
        )
        for dep, idxs in group:
            _silence(dep, [int(i) for i in idxs], names, norm_kept, norm_width)
    kept = {
        key: torch.tensor(sorted(set(range(norm_width[key])) - removed)) for key, removed in norm_kept.items()
    }
    return MaskedReference(model, kept)


@torch.no_grad()
def _silence(
    dep, idxs: list[int], names: dict[int, str], norm_kept: dict[int, set[int]], norm_width: dict[int, int]
) -> None:
    layer, fn = dep.target.module, dep.handler
    name = names.get(id(layer), type(layer).__name__)
    owner = getattr(fn, "__self__", None)  # an adapter's own pruning function may say how to silence
    if hasattr(owner, "silence"):
        # It may name norms inside the layer whose statistics must skip channels (a merge's 4x-wide norm).
        for norm, norm_idxs in owner.silence(layer, idxs, outputs=fn.__name__ == "prune_out_channels") or ():
            _silence_norm(norm, norm_idxs, f"{name}.{_child_name(layer, norm)}", norm_kept, norm_width)
    elif isinstance(layer, nn.Parameter):
        layer.data.index_fill_(dep.target.pruning_dim, torch.tensor(idxs, device=layer.device), 0.0)
    elif isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed:
        if fn in _CONV_OUT or (fn in _CONV_IN and layer.groups == layer.in_channels == layer.out_channels):
            _zero_rows(layer, idxs)
        elif fn in _CONV_IN:
            per_group_in, per_group_out = (
                layer.in_channels // layer.groups,
                layer.out_channels // layer.groups,
            )
            for c in idxs:
                group = c // per_group_in
                layer.weight[group * per_group_out : (group + 1) * per_group_out, c % per_group_in] = 0
        else:
            raise NotApplicable(f"{name}: {fn.__name__}")
    elif isinstance(layer, nn.Linear):
        if fn == tp_function.prune_linear_out_channels:
            _zero_rows(layer, idxs)
        elif fn == tp_function.prune_linear_in_channels:
            layer.weight[:, idxs] = 0
        else:
            raise NotApplicable(f"{name}: {fn.__name__}")
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        if layer.affine:
            layer.weight[idxs] = 0
            layer.bias[idxs] = 0
    elif isinstance(layer, (nn.LayerNorm, nn.GroupNorm)):
        _silence_norm(layer, idxs, name, norm_kept, norm_width)
    elif isinstance(layer, nn.Module) and any(True for _ in layer.parameters()):
        raise NotApplicable(f"{name}: {type(layer).__name__} is pruned by its own function")
    # Anything else (elementwise ops, concatenations, reshapes, parameter-free modules) holds no weights.


@torch.no_grad()
def _silence_norm(
    layer: nn.Module, idxs: list[int], name: str, norm_kept: dict[int, set[int]], norm_width: dict[int, int]
) -> None:
    """Zero a norm's affine entries on ``idxs`` and have its statistics skip them (:func:`_masked_norms` by
    the norm's weight, :func:`_masked_timm_norms` by the norm itself)."""
    if type(layer) in timm_channel_stat_norm_types():
        if layer.weight is not None:
            layer.weight[idxs] = 0
        norm_kept.setdefault(id(layer), set()).update(idxs)
        norm_width[id(layer)] = int(layer.normalized_shape[0])
        return
    if isinstance(layer, nn.GroupNorm) and layer.num_groups != 1:
        raise NotApplicable(f"{name}: GroupNorm in {layer.num_groups} groups")
    if isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) != 1:
        raise NotApplicable(f"{name}: LayerNorm over {len(layer.normalized_shape)} dims")
    if not isinstance(layer, (nn.LayerNorm, nn.GroupNorm)) or layer.weight is None:
        raise NotApplicable(f"{name}: not a LayerNorm or one-group GroupNorm with affine weights")
    layer.weight[idxs] = 0
    if layer.bias is not None:
        layer.bias[idxs] = 0
    norm_kept.setdefault(id(layer.weight), set()).update(idxs)
    norm_width[id(layer.weight)] = layer.weight.numel()


def _child_name(parent: nn.Module, child: nn.Module) -> str:
    return next((name for name, module in parent.named_modules() if module is child), type(child).__name__)


def _zero_rows(layer: nn.Module, idxs: list[int]) -> None:
    layer.weight[idxs] = 0
    if layer.bias is not None:
        layer.bias[idxs] = 0


@contextlib.contextmanager
def _masked_norms(norm_kept: dict[int, torch.Tensor]) -> Iterator[None]:
    """``F.layer_norm`` and one-group ``F.group_norm`` over the kept channels only, for the listed norms."""
    layer_norm, group_norm = F.layer_norm, F.group_norm

    def masked_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        kept = norm_kept.get(id(weight)) if weight is not None else None
        if kept is None:
            return layer_norm(x, normalized_shape, weight, bias, eps)
        out = torch.zeros_like(x)
        part = layer_norm(x[..., kept], (len(kept),), weight[kept], None if bias is None else bias[kept], eps)
        out[..., kept] = part
        return out

    def masked_group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
        kept = norm_kept.get(id(weight)) if weight is not None else None
        if kept is None or num_groups != 1:
            return group_norm(x, num_groups, weight, bias, eps)
        out = torch.zeros_like(x)
        out[:, kept] = group_norm(x[:, kept], 1, weight[kept], None if bias is None else bias[kept], eps)
        return out

    F.layer_norm, F.group_norm = masked_layer_norm, masked_group_norm
    try:
        yield
    finally:
        F.layer_norm, F.group_norm = layer_norm, group_norm


@contextlib.contextmanager
def _masked_timm_norms(model: nn.Module, norm_kept: dict[int, torch.Tensor]) -> Iterator[None]:
    """The listed timm RMS/simple norms compute over the kept channels only: a copy narrowed to them runs on
    the kept slice, and the removed channels stay zero."""
    channel_dims = timm_channel_stat_norm_types()
    replaced = []
    for norm in model.modules():
        kept = norm_kept.get(id(norm))
        if kept is None or type(norm) not in channel_dims:
            continue
        narrow, pruner = copy.deepcopy(norm), ChannelStatNormPruner()
        pruner.prune_out_channels(
            narrow, sorted(set(range(pruner.get_out_channels(norm))) - set(kept.tolist()))
        )

        def forward(x, narrow=narrow, kept=kept, dim=channel_dims[norm.__class__]):
            return torch.zeros_like(x).index_copy_(dim, kept, narrow(x.index_select(dim, kept)))

        replaced.append(norm)
        norm.forward = forward
    try:
        yield
    finally:
        for norm in replaced:
            del norm.forward
