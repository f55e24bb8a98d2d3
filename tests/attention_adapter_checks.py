"""Checks shared by the Swin and Hiera adapter tests (both track heads with the head-layout probe)."""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from rmtdeploy.adapters._attention import HeadProbingAdapter

ATOL = 1e-5


def features_and_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features (what comparisons use: timm zero-initialises some classifiers, e.g. Hiera's)
    and logits, from one forward pass."""
    with torch.no_grad():
        model.eval()
        tokens = model.forward_features(images)
        return model.forward_head(tokens, pre_logits=True), model.forward_head(tokens)


def features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return features_and_logits(model, images)[0]


def outputs_by_attention_path(model: nn.Module, adapter: HeadProbingAdapter, images: torch.Tensor):
    """(explicit softmax attention, fused SDPA) features of the same model."""
    results = []
    for fused in (False, True):
        for layout in adapter.attention_layouts(model):
            layout.attention.fused_attn = fused
        results.append(features(model, images))
    return results


def build_graph(model: nn.Module, adapter: HeadProbingAdapter, images: torch.Tensor) -> tp.DependencyGraph:
    """A dependency graph built the way the adapter contract asks (its hooks plus trace_forward)."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model.eval(),
            example_inputs=images[:1],
            unwrapped_parameters=adapter.unwrapped_parameters(model),
            customized_pruners=adapter.customized_pruners(model),
            forward_fn=adapter.trace_forward,
        )


def remove_head_and_zeroed_reference(
    model: nn.Module, adapter: HeadProbingAdapter, attention_index: int, head: int, images: torch.Tensor
) -> nn.Module:
    """Remove one head of one attention through the graph (as a replayed plan does) and return a copy of
    the dense model in which that head's contribution to proj is zeroed instead: both must compute the same.
    """
    reference = copy.deepcopy(model)
    layout = adapter.attention_layouts(model)[attention_index]
    head_channels = list(range(head * layout.head_dim, (head + 1) * layout.head_dim))
    with torch.no_grad():
        adapter.attention_layouts(reference)[attention_index].proj.weight[:, head_channels] = 0
    graph = build_graph(model, adapter, images)
    graph.get_pruning_group(layout.proj, tp.pruner.function.prune_linear_in_channels, head_channels).prune()
    adapter.repair(model)
    return reference


def prune_with_metapruner(
    model: nn.Module,
    adapter: HeadProbingAdapter,
    images: torch.Tensor,
    ratio: float,
    *,
    prune_head_dims: bool,
) -> None:
    """torch-pruning's own BasePruner fed by the adapter hooks (the route outside rmtdeploy.pruning)."""
    pruner = tp.pruner.MetaPruner(
        model.eval(),
        images[:1],
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=adapter.ignored_layers(model),
        num_heads=adapter.attention_heads(model),
        prune_num_heads=True,
        head_pruning_ratio=ratio,
        prune_head_dims=prune_head_dims,
        out_channel_groups={},  # TP's default dict is shared between pruner instances
        customized_pruners=adapter.customized_pruners(model),
        unwrapped_parameters=adapter.unwrapped_parameters(model),
        round_to=8,
        forward_fn=adapter.trace_forward,
    )
    pruner.step()
    adapter.repair(model)


def head_layouts(model: nn.Module, adapter: HeadProbingAdapter) -> list[tuple[int, int]]:
    """(num_heads, head_dim) of every attention, in model order."""
    return [(layout.num_heads, layout.head_dim) for layout in adapter.attention_layouts(model)]


def assert_heads_whole(pruned: nn.Module, dense: nn.Module, adapter: HeadProbingAdapter) -> None:
    """Some heads went, every attention kept its head_dim, and qkv / proj hold exactly num_heads heads."""
    pruned_heads, dense_heads = head_layouts(pruned, adapter), head_layouts(dense, adapter)
    assert [head_dim for _, head_dim in pruned_heads] == [head_dim for _, head_dim in dense_heads]
    assert sum(heads for heads, _ in pruned_heads) < sum(heads for heads, _ in dense_heads)
    for layout in adapter.attention_layouts(pruned):
        assert layout.num_heads >= 1
        assert layout.qkv.out_features == 3 * layout.num_heads * layout.head_dim
        assert layout.proj.in_features == layout.num_heads * layout.head_dim
