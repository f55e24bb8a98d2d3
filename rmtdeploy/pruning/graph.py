"""The shared removal mechanism: torch-pruning's DependencyGraph, told by an adapter what differs.

A *pruning unit* is one torch-pruning group (a set of coupled channels that must go together: a conv's
outputs, the next BatchNorm and the next conv's inputs, a whole residual stream, ...) or the heads of one
attention block. Units are found once on the dense model, scored once by an ``Importance``, and turned into
*operations* (root module name, pruning function name, channel indices) that replay the removal on any
fresh copy of the architecture: the trial copies while searching for a width budget, and the rebuilt model
in ``load_pruned``.

Scoring, channel grouping and the choice of the lowest-scored channels / heads follow torch-pruning's
``BasePruner`` (v1.6) exactly, so magnitude pruning here chooses what TP would; the widths are chosen by
``rmtdeploy.pruning.allocate``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from rmtdeploy.adapters.base import ArchitectureAdapter
from rmtdeploy.errors import RmtdeployError

# Modules that may root a group (torch-pruning's defaults for get_all_groups).
ROOT_MODULE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _prune_layernorm_in_order(self, layer: nn.Module, idxs) -> nn.Module:
    """torch-pruning's ``LayernormPruner.prune_out_channels`` (1.6), keeping the kept channels in order.

    Its own computes them as ``torch.tensor(list(set(...) - set(idxs)))`` then calls ``keep_idxs.sort()``,
    which on a tensor returns a sorted copy and leaves ``keep_idxs`` in the set's order. A set of ints
    iterates in order only while its table is wider than its largest element, so once three quarters or
    more of a LayerNorm's channels go (a set built anew, sized for the few kept), its γ and β are permuted
    against the layers that write and read those channels: the pruned model is wrong, silently (found on
    EfficientViT's head at keep-macs 0.3, 80 of 1280 channels kept; ViT's 192-wide stream at 48 or fewer)."""
    pruning_dim = self.pruning_dim
    if len(layer.normalized_shape) < -pruning_dim:
        return layer
    num_features = layer.normalized_shape[pruning_dim]
    keep_idxs = torch.tensor(sorted(set(range(num_features)) - {int(i) for i in idxs}), dtype=torch.long)
    if layer.elementwise_affine:
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep_idxs, pruning_dim)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep_idxs, pruning_dim)
    shape = list(layer.normalized_shape)
    shape[pruning_dim] = len(keep_idxs)
    layer.normalized_shape = tuple(shape)
    return layer


def _layernorm_pruning_in_order() -> None:
    """Put :func:`_prune_layernorm_in_order` in torch-pruning's LayerNorm pruner, in place: every graph's
    handlers, TP's own names (``tp.prune_layernorm_out_channels``, which its importances compare handlers
    with, and which adapters call) and TP's own pruners then use it."""
    function = tp.pruner.function
    function.LayernormPruner.prune_out_channels = _prune_layernorm_in_order
    function.LayernormPruner.prune_in_channels = _prune_layernorm_in_order
    pruner = function.PrunerBox[tp.ops.OPTYPE.LN]
    for namespace in (function, tp.pruner, tp):
        namespace.prune_layernorm_out_channels = pruner.prune_out_channels
        namespace.prune_layernorm_in_channels = pruner.prune_in_channels


_layernorm_pruning_in_order()

# torch-pruning maps a channel index through a flatten by expanding it ``stride``-fold; through some reshapes
# (LeViT's convolutional attention, timm's GlobalContext) the expansions compound until memory runs out (the
# coverage sweep's one process killed by the kernel). No mapping this large follows a real channel layout.
MAX_MAPPED_INDICES = 1 << 22


def _bounded_flatten_mapping() -> None:
    """Make torch-pruning's flatten index mapping refuse, with a clear error, to grow past the bound."""
    mapping = tp.dependency.index_mapping._FlattenIndexMapping
    expand = mapping.__call__

    def bounded(self, idxs):
        if not self.reverse and len(idxs) * self._stride > MAX_MAPPED_INDICES:
            raise RmtdeployError(
                f"the dependency graph's channel mapping through a reshape grows past {MAX_MAPPED_INDICES:,} "
                "indices: it cannot follow this model's reshapes (refused before it runs out of memory)"
            )
        return expand(self, idxs)

    mapping.__call__ = bounded


_bounded_flatten_mapping()

# timm's norms that compute statistics across channels in timm's own functions, with their channel dim.
TIMM_CHANNEL_STAT_NORMS = {"RmsNorm": -1, "SimpleNorm": -1, "RmsNorm2d": 1, "SimpleNorm2d": 1}


@functools.cache
def timm_channel_stat_norm_types() -> dict[type, int]:
    """The classes of :data:`TIMM_CHANNEL_STAT_NORMS` this timm has -> channel dim."""
    from timm import layers

    return {getattr(layers, n): dim for n, dim in TIMM_CHANNEL_STAT_NORMS.items() if hasattr(layers, n)}


class ChannelStatNormPruner(tp.pruner.function.BasePruningFunc):
    """timm's RMS and "simple" norms: TP does not know them and would prune their weight as a bare
    parameter, leaving ``normalized_shape`` at the dense width."""

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        keep = sorted(set(range(self.get_out_channels(layer))) - {int(i) for i in idxs})
        if isinstance(layer.weight, nn.Parameter):
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        layer.normalized_shape = (len(keep),)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.normalized_shape[0])

    get_in_channels = get_out_channels

    def silence(self, layer: nn.Module, idxs: list[int], outputs: bool) -> list[tuple[nn.Module, list[int]]]:
        """For ``rmtdeploy.pruning.exactness``: the statistics must skip the removed channels."""
        return [(layer, idxs)]


Operation = dict[str, Any]


@dataclass
class PruningUnit:
    """Channels (or attention heads) that are removed together, with one importance score per element."""

    root: str  # name of the module whose pruning function roots the group
    fn: str  # "prune_out_channels" or "prune_in_channels" of that module's pruner
    channels: int  # width of the root's pruned dimension
    channel_groups: int  # >1 when the dimension is split into equal groups that must shrink alike
    channel_scores: torch.Tensor  # one score per channel of one group (averaged over groups, as TP does)
    owners: tuple[str, ...]  # modules whose output channels this unit removes (for per-layer ratios)
    heads: int = 0  # >0: an attention unit; only whole heads are removed
    head_scores: torch.Tensor | None = None

    @property
    def width(self) -> int:
        """Prunable elements per channel group."""
        return self.channels // self.channel_groups

    @property
    def full(self) -> int:
        """Kept count when nothing is removed: heads for attention units, channels per group otherwise."""
        return self.heads if self.heads else self.width


def build_dependency_graph(
    model: nn.Module, adapter: ArchitectureAdapter, example_inputs: torch.Tensor
) -> tp.DependencyGraph:
    """Trace ``model`` (in eval mode, with autograd on, as TP requires) into a dependency graph."""
    was_training = model.training
    # TP follows autograd: frozen parameters would leave no graph behind, and nothing would be pruned.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.eval()
    try:
        for param in frozen:
            param.requires_grad_(True)
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_inputs,
                unwrapped_parameters=adapter.unwrapped_parameters(model),
                customized_pruners={
                    **{kind: ChannelStatNormPruner() for kind in timm_channel_stat_norm_types()},
                    **adapter.customized_pruners(model),
                },
                forward_fn=adapter.trace_forward,
            )
    finally:
        for param in frozen:
            param.requires_grad_(False)
        model.train(was_training)


def discover_units(
    graph: tp.DependencyGraph,
    model: nn.Module,
    adapter: ArchitectureAdapter,
    importance: tp.importance.Importance,
) -> list[PruningUnit]:
    """Every prunable group of ``model``, scored by ``importance``, in TP's (trace) order."""
    names = {module: name for name, module in model.named_modules()}
    heads_of = adapter.attention_heads(model)
    ignored = [sub for layer in adapter.ignored_layers(model) for sub in layer.modules()]
    units = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_MODULE_TYPES):
        qkv_layers = [
            dep.target.module
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in heads_of
        ]
        if qkv_layers:
            group = _reroot_attention_group(graph, group)
            if group is None:
                continue
        group = adapter.reroot_group(graph, group)
        if adapter.group_problem(graph, group, names) is not None:  # the adapter leaves it whole
            continue
        scores = importance(group)
        if scores is None:  # the importance declines to score this group: leave it whole
            continue
        scores = scores.detach().float().cpu()
        channel_groups = _channel_groups(graph, group, heads_of)
        root = group[0].dep
        owners = tuple(
            names[dep.target.module]
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names
        )
        unit = PruningUnit(
            root=names[root.target.module],
            fn=root.handler.__name__,
            channels=len(scores),
            channel_groups=channel_groups,
            channel_scores=scores.view(channel_groups, -1).mean(dim=0),
            owners=owners,
        )
        if qkv_layers:
            unit.heads = max(heads_of[qkv] for qkv in qkv_layers)
            unit.head_scores = scores.view(unit.heads, -1).mean(dim=1)
        units.append(unit)
    return units


def _reroot_attention_group(graph: tp.DependencyGraph, group):
    # As TP's BasePruner: root an attention group at the layer that reads the heads (attn.proj's inputs),
    # whose channels map one-to-one onto head x head_dim, instead of at the fused qkv output.
    downstream = None
    for dep, idxs in group:
        if isinstance(dep.target.module, ROOT_MODULE_TYPES) and graph.is_in_channel_pruning_fn(dep.handler):
            downstream = (dep, idxs)
    if downstream is None:
        return None
    dep, idxs = downstream
    return graph.get_pruning_group(dep.target.module, dep.handler, idxs)


def _channel_groups(graph: tp.DependencyGraph, group, heads_of: dict[nn.Module, int]) -> int:
    # As TP's BasePruner: heads split an attention dimension into equal groups; grouped convolutions and
    # GroupNorm split theirs (depthwise convolutions do not count: each channel is its own group).
    counts = [1]
    for dep, _ in group:
        module = dep.target.module
        if not isinstance(module, nn.Module):
            continue
        is_out = graph.is_out_channel_pruning_fn(dep.handler)
        if is_out and module in heads_of:
            counts.append(heads_of[module])
            continue
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is not None:
            counts.append(
                pruner.get_out_channel_groups(module) if is_out else pruner.get_in_channel_groups(module)
            )
    return max(counts)


def unit_operation(unit: PruningUnit, kept: int) -> Operation | None:
    """The operation that keeps ``kept`` of ``unit`` (heads or channels per group): the highest-scored ones."""
    if kept >= unit.full:
        return None
    if kept < 1:
        raise RmtdeployError(f"pruning would leave {unit.root} empty")
    operation: Operation = {"root": unit.root, "fn": unit.fn, "width": unit.channels}
    if unit.heads:
        head_dim = unit.channels // unit.heads
        pruned_heads = sorted(torch.argsort(unit.head_scores, stable=True)[: unit.heads - kept].tolist())
        pruned = [head * head_dim + i for head in pruned_heads for i in range(head_dim)]
        operation.update(
            kind="heads",
            heads=unit.heads,
            head_dim=head_dim,
            pruned_heads=pruned_heads,
            kept_heads=sorted(set(range(unit.heads)) - set(pruned_heads)),
        )
    else:
        pruned_per_group = sorted(
            torch.argsort(unit.channel_scores, stable=True)[: unit.width - kept].tolist()
        )
        pruned = [g * unit.width + i for g in range(unit.channel_groups) for i in pruned_per_group]
        operation["kind"] = "channels"
    operation["pruned"] = pruned
    operation["kept"] = sorted(set(range(unit.channels)) - set(pruned))
    return operation


def apply_operations(graph: tp.DependencyGraph, model: nn.Module, operations: list[Operation]) -> None:
    """Physically remove what ``operations`` name, through ``graph`` (built on ``model``)."""
    modules = dict(model.named_modules())
    for op in operations:
        module = modules.get(op["root"])
        pruner = None if module is None else graph.get_pruner_of_module(module)
        fn = getattr(pruner, op["fn"], None)
        if fn is None:
            raise RmtdeployError(
                f"pruning plan names {op['root']}.{op['fn']}, which this model does not have"
            )
        group = graph.get_pruning_group(module, fn, op["pruned"])
        if not graph.check_pruning_group(group):
            raise RmtdeployError(
                f"pruning {len(op['pruned'])} channels at {op['root']} would leave a layer empty"
            )
        try:
            group.prune()
        except (IndexError, RuntimeError) as exc:  # the graph mapped channels past a layer's width
            # (dla60_res2next's Res2Net splits: index 34 of 32), so it does not follow this model here
            raise RmtdeployError(
                f"the dependency graph maps the channels removed at {op['root']} past a layer's width "
                f"({str(exc).splitlines()[0][:120]}): it does not follow this model's structure there"
            ) from exc


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Linear and convolution, by module name."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            widths[name] = module.out_features
        elif isinstance(module, nn.modules.conv._ConvNd):
            widths[name] = module.out_channels
    return widths


def attention_heads_by_block(model: nn.Module, adapter: ArchitectureAdapter) -> dict[str, int]:
    """Heads per attention block (the module holding the fused qkv), by block name."""
    names = {module: name for name, module in model.named_modules()}
    return {
        names[qkv].rpartition(".")[0]: int(heads) for qkv, heads in adapter.attention_heads(model).items()
    }
