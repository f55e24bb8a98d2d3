"""The generic adapter: any timm model whose family has no adapter of its own, pruned where torch-pruning's
dependency graph traces it exactly, and accepted only once the pruned model passes verification.

A family adapter knows its layers; this one knows none, so it prunes conservatively and proves the result:

* **Groups it cannot prune exactly are left whole** (``group_problem``, with the reason): a group whose index
  mapping leaves a layer's range (a reshape or split the graph does not follow), a bare parameter that is
  not channel-like (an attention-bias table by position), a channel-multiplier convolution
  (``groups == in_channels != out_channels``: torch-pruning would slice its filters wrongly), a GroupNorm of
  several groups, and, for a model without a classifier, the channels of its output.
* **What torch-pruning gets right is used as is**: squeeze-excitation, depthwise convolutions (each channel
  its own group), grouped convolutions (every group shrinks alike), concatenations, layer scales and
  position embeddings. A gated MLP (timm's ``GluMlp``) is rooted at ``fc2``'s input (``reroot_group``) and
  its ``fc1`` loses a hidden channel's value and gate rows together (:class:`GatedLinearPruner`). timm's
  shared ``Attention`` (``timm.layers``, as in MobileViT v1) loses whole heads through its fused qkv.
* **Re-parameterisable blocks** (MobileOne, RepViT, FastViT's RepMixer, RepVGG) are pruned in their
  training form: every branch of a block adds into the same channels, so the branches lose the same
  channels; the widths a block fuses from are re-read from its branches, and the ONNX export is the fused
  form (``export_mode``), which ``rmtdeploy.coverage.verify_pruned`` checks against the training form.
* **Cached widths** the forward does not read (``num_features``, ``feature_info``, ``head_hidden_size``) are
  re-read off one forward pass; a module whose forward fails on the pruned widths refuses the model, with
  the layer named.

Every pruned model is checked before the prune stage accepts it (:attr:`needs_verification`).
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from timm.layers import Attention, BlurPool2d, CondConv2d, GlobalContext, MixedConv2d
from timm.layers.mlp import GluMlp
from torch import nn
from torch_pruning import ops as tp_ops
from torch_pruning.pruner import function as tp_function

from rmtdeploy.adapters._model_attributes import sync_model_widths
from rmtdeploy.adapters.base import ArchitectureAdapter, classifier_layers
from rmtdeploy.adapters.registry import register_fallback_adapter
from rmtdeploy.adapters.resnet import BLUR_POOL_REASON
from rmtdeploy.errors import RmtdeployError


class GatedLinearPruner(tp_function.BasePruningFunc):
    """``fc1`` of a gated MLP (timm's ``GluMlp``): output ``j`` and ``j + h`` are one hidden channel's value
    and gate, and go together, whichever half the graph maps a removal onto."""

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        return _plain_pruner(layer).prune_out_channels(layer, self.rows(layer, idxs))

    def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        return _plain_pruner(layer).prune_in_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        return _plain_pruner(layer).get_out_channels(layer)

    def get_in_channels(self, layer: nn.Module) -> int:
        return _plain_pruner(layer).get_in_channels(layer)

    def rows(self, layer: nn.Module, idxs: list[int]) -> list[int]:
        half = self.get_out_channels(layer) // 2
        hidden = sorted({int(i) % half for i in idxs})
        return hidden + [h + half for h in hidden]

    @torch.no_grad()
    def silence(self, layer: nn.Module, idxs: list[int], outputs: bool) -> None:
        """For ``rmtdeploy.pruning.exactness``: zero what a removal takes, without removing it."""
        if outputs:
            rows = self.rows(layer, idxs)
            layer.weight[rows] = 0
            if layer.bias is not None:
                layer.bias[rows] = 0
        else:
            layer.weight[:, idxs] = 0


class GatedLinear(nn.Linear):
    """``fc1`` of a gated MLP (value rows, then gate rows); an ``nn.Linear`` in every other respect."""


class GatedConv2d(nn.Conv2d):
    """``fc1`` of a convolutional gated MLP (value channels, then gate channels)."""


class GroupNormPruner(tp_function.BasePruningFunc):
    """torch-pruning's GroupNorm pruning for norms with or without an affine bias."""

    def prune_out_channels(self, layer: nn.GroupNorm, idxs: list[int]) -> nn.GroupNorm:
        keep = sorted(set(range(layer.num_channels)) - {int(i) for i in idxs})
        layer.num_channels = len(keep)
        for name in ("weight", "bias"):
            param = getattr(layer, name)
            if isinstance(param, nn.Parameter):
                setattr(layer, name, self._prune_parameter_and_grad(param, keep, 0))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.GroupNorm) -> int:
        return layer.num_channels

    get_in_channels = get_out_channels

    def get_in_channel_groups(self, layer: nn.GroupNorm) -> int:
        return layer.num_groups

    get_out_channel_groups = get_in_channel_groups


def _plain_pruner(layer: nn.Module) -> tp_function.BasePruningFunc:
    return tp_function.PrunerBox[tp_ops.OPTYPE.LINEAR if isinstance(layer, nn.Linear) else tp_ops.OPTYPE.CONV]


class OutputWidthProbe(nn.Parameter):
    """Zeros added to the output of a model without a classifier while the graph is traced: the group that
    holds it is the output's own channels, which must keep their width."""


# One probe per model (unwrapped_parameters and trace_forward are asked separately); weak: no leak.
_OUTPUT_PROBES: weakref.WeakKeyDictionary[nn.Module, OutputWidthProbe] = weakref.WeakKeyDictionary()


@register_fallback_adapter
class GenericAdapter(ArchitectureAdapter):
    family = "generic"
    needs_verification = True
    # Found by the coverage sweep (benchmarks/coverage_sweep.py): refused before any work.
    unsupported_layers = {
        CondConv2d: "conditionally parameterised convolutions (CondConv2d, the *_cc_* EfficientNets) keep "
        "every expert's kernel in one flat parameter the dependency graph cannot slice by channel (pruning "
        "tf_efficientnet_cc_b0_4e ran out of memory)",
        MixedConv2d: "mixed-kernel convolutions (MixedConv2d, MixNet) split their input by channel counts they "
        "cache, and the dependency graph does not map removed channels across the split",
        BlurPool2d: BLUR_POOL_REASON,
        GlobalContext: "global-context blocks (GlobalContext, the gc_* variants) pool channels through a "
        "reshape and matrix product whose index mapping the dependency graph expands without bound (pruning "
        "gc_efficientnetv2_rw_t ran out of memory)",
    }

    def customized_pruners(self, model: nn.Module) -> dict:
        # torch-pruning chooses pruning functions by class: a gated MLP's fc1 becomes a GatedLinear (the same
        # layer and forward) so that it gets its own. Done on every graph build, so replays see it too.
        for glu in model.modules():
            if isinstance(glu, GluMlp) and type(glu.fc1) in (nn.Linear, nn.Conv2d):
                glu.fc1.__class__ = GatedLinear if type(glu.fc1) is nn.Linear else GatedConv2d
        # torch-pruning's GroupNorm pruner assumes a bias (timm's *NoBias norms have none).
        no_bias = {
            type(m): GroupNormPruner()
            for m in model.modules()
            if isinstance(m, nn.GroupNorm) and m.bias is None
        }
        return {GatedLinear: GatedLinearPruner(), GatedConv2d: GatedLinearPruner(), **no_bias}

    def unwrapped_parameters(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        params = [(p, _pruning_dim(p)) for p in bare_parameters(model) if _pruning_dim(p) is not None]
        probe = self._output_probe(model)
        return params + ([(probe, 0)] if probe is not None else [])

    def trace_forward(self, model: nn.Module, example_inputs: Any) -> Any:
        output = super().trace_forward(model, example_inputs)
        probe = self._output_probe(model)
        return output if probe is None else output + probe

    def reroot_group(self, graph: Any, group: Any) -> Any:
        # A gated hidden layer (timm's GluMlp: fc1's 2h outputs chunked into value and gate, multiplied): rooted
        # at fc1 the group maps both halves onto fc2's h inputs, past their range. Rooted at fc2's inputs,
        # each hidden channel takes its value row and its gate row.
        if not any(isinstance(dep.target.module, tp_ops._SplitOp) for dep, _ in group):
            return group
        root_width = len(group[0].idxs)
        for dep, idxs in group:
            module = dep.target.module
            if not isinstance(module, (nn.Linear, nn.Conv2d)) or getattr(module, "groups", 1) != 1:
                continue
            if not graph.is_in_channel_pruning_fn(dep.handler):
                continue
            width = graph.get_pruner_of_module(module).get_in_channels(module)
            if width < root_width and root_width % width == 0 and any(int(i) >= width for i in idxs):
                return graph.get_pruning_group(module, dep.handler, list(range(width)))
        return group

    def group_problem(self, graph: Any, group: Any, names: dict[nn.Module, str]) -> str | None:
        for dep, idxs in group:
            module = dep.target.module
            name = names.get(module, type(module).__name__)
            if isinstance(module, OutputWidthProbe):
                return "the output of a model without a classifier keeps its width"
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
                depthwise = module.groups == module.in_channels == module.out_channels
                if not depthwise and module.groups in (module.in_channels, module.out_channels):
                    return (
                        f"{name}: grouped convolution with {module.groups} groups from {module.in_channels} "
                        f"to {module.out_channels} channels (a channel multiplier)"
                    )
            if isinstance(module, nn.GroupNorm) and 1 < module.num_groups < module.num_channels:
                return f"{name}: GroupNorm in {module.num_groups} groups would regroup the channels that stay"
            if isinstance(module, nn.Parameter):  # a bare parameter: its pruned dim, as the graph records it
                name = getattr(graph, "_param_to_name", {}).get(module, name)
                if not _channel_like(module, dep.target.pruning_dim):
                    return (
                        f"{name}: a table of shape {tuple(module.shape)} (e.g. attention biases by position)"
                    )
                width = module.shape[dep.target.pruning_dim]
            elif isinstance(module, nn.Module) and (pruner := graph.get_pruner_of_module(module)) is not None:
                outputs = graph.is_out_channel_pruning_fn(dep.handler)
                width = pruner.get_out_channels(module) if outputs else pruner.get_in_channels(module)
            else:
                continue
            if width is not None and any(not 0 <= int(i) < width for i in idxs):
                return (
                    f"{name}: the graph maps channels past its {width} (a reshape or split it cannot follow)"
                )
        return None

    @contextlib.contextmanager
    def export_mode(self, model: nn.Module, backend: str) -> Iterator[None]:
        # Re-parameterisable blocks export in their fused form (one convolution per block: the deployed
        # graph), built on copies; the model's own blocks are put back afterwards.
        swapped = [(parent, name, child) for parent, name, child in _outermost_fusable(model)]
        try:
            for parent, name, child in swapped:
                setattr(parent, name, fused_copy(child))
            yield
        finally:
            for parent, name, child in swapped:
                setattr(parent, name, child)

    def attention_heads(self, model: nn.Module) -> dict[nn.Module, int]:
        # timm's shared Attention (timm.layers), wherever a model uses it: heads go whole through its qkv.
        return {m.qkv: m.num_heads for m in model.modules() if type(m) is Attention}

    def repair(self, model: nn.Module) -> None:
        for attn in model.modules():
            if type(attn) is Attention:  # heads go whole: head_dim (and scale) stay, the count follows qkv
                attn.num_heads = attn.qkv.out_features // (3 * attn.head_dim)
                attn.attn_dim = attn.num_heads * attn.head_dim
        _sync_reparameterizable(model)
        # Read every cached width off one forward pass: the generic adapter knows no layer layout.
        widths = _traced_widths(model, self.example_inputs(model))
        stage_widths = [
            widths.get(info["module"], info["num_chs"]) for info in getattr(model, "feature_info", [])
        ]
        if "features" in widths:
            sync_model_widths(model, stage_widths, num_features=widths["features"])

    def _output_probe(self, model: nn.Module) -> OutputWidthProbe | None:
        if any(any(True for _ in layer.parameters()) for layer in classifier_layers(model)):
            return None  # the classifier is ignored: its input channels prune, its outputs stay
        width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
        probe = _OUTPUT_PROBES.get(model)
        if probe is None or probe.numel() != width:
            device = next(model.parameters()).device
            probe = _OUTPUT_PROBES[model] = OutputWidthProbe(torch.zeros(int(width), device=device))
        return probe


_FUSE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")  # timm's, as reparameterize_model calls them
# Widths a re-parameterisable block caches for building its fused convolution.
_BLOCK_WIDTHS = {"in_chs": "in_channels", "in_channels": "in_channels", "out_chs": "out_channels",
                 "dim": "out_channels", "groups": "groups"}  # fmt: skip


def fusable(module: nn.Module) -> bool:
    return any(hasattr(module, method) for method in _FUSE_METHODS)


def fused_copy(module: nn.Module) -> nn.Module:
    """A fused copy of a re-parameterisable block (timm's ``fuse`` / ``reparameterize`` / ``switch_to_deploy``)."""
    copied = copy.deepcopy(module).eval()
    if hasattr(copied, "fuse"):
        return copied.fuse()
    (copied.reparameterize if hasattr(copied, "reparameterize") else copied.switch_to_deploy)()
    return copied


def _outermost_fusable(module: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    for name, child in module.named_children():
        if fusable(child):
            yield module, name, child
        else:
            yield from _outermost_fusable(child)


def _sync_reparameterizable(model: nn.Module) -> None:
    """A re-parameterisable block builds its fused convolution from cached widths: re-read them from its
    first convolution (the branches share its shape)."""
    for module in model.modules():
        if module is model or not fusable(module):
            continue
        # The branch convolutions, not a squeeze-excitation or attention inside the block.
        convs = [
            m
            for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and not any(part in ("se", "attn") for part in name.split("."))
        ]
        if not convs:
            continue
        conv = max(convs, key=lambda c: c.kernel_size[0] * c.kernel_size[1])  # the first kxk branch
        for attribute, source in _BLOCK_WIDTHS.items():
            if isinstance(vars(module).get(attribute), int):
                setattr(module, attribute, int(getattr(conv, source)))


def bare_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters held by a module that is not a Conv, Linear or norm layer (layer scales, tokens, position
    embeddings, gates), which torch-pruning prunes as free tensors."""
    owned = {
        id(p)
        for module in model.modules()
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm,
                               nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Embedding))
        for p in module.parameters(recurse=False)
    }  # fmt: skip
    return [p for p in model.parameters() if id(p) not in owned]


def _channel_like(param: torch.Tensor, dim: int) -> bool:
    """A bare parameter whose pruned dim is surely channels: its only dim longer than 1 (a layer scale,
    ``(C,)`` or ``(C, 1, 1)``), or the last of ``(1, tokens, C)`` (position embeddings, class tokens). Tables
    such as attention biases ``(heads, positions)`` are not: the graph's guess of their dim is wrong."""
    long_dims = [i for i, size in enumerate(param.shape) if size > 1]
    if long_dims == [dim % param.dim()]:
        return True
    return param.dim() == 3 and param.shape[0] == 1 and dim % 3 == 2


def _pruning_dim(param: torch.Tensor) -> int | None:
    # torch-pruning's rule for bare parameters: the last dim longer than 1 carries the channels.
    dims = [i for i, size in enumerate(param.shape) if size > 1]
    return dims[-1] if dims else None


def _traced_widths(model: nn.Module, images: torch.Tensor) -> dict[str, int]:
    """Channel widths seen in one forward pass: every ``feature_info`` module's output and
    ``forward_features``' (key "features"); channels are dim 1 of a 4-D map, else the last dim.

    A layer whose forward fails on the pruned widths (a cached width nobody repaired, a reshape the graph
    did not follow) refuses the model here, with the layer named."""
    modules = dict(model.named_modules())
    widths: dict[str, int] = {}
    running: list[str] = []  # the modules whose forward has begun and not ended: the last one failed
    handles = [
        module.register_forward_pre_hook(lambda _m, _i, name=name: running.append(name))
        for name, module in modules.items()
        if name
    ]
    handles += [
        module.register_forward_hook(lambda _m, _i, _o: running.pop() and None)  # None: output unchanged
        for name, module in modules.items()
        if name
    ]
    for info in getattr(model, "feature_info", []):
        module = modules.get(info["module"])
        if module is not None:
            hook = _width_recorder(widths, info["module"])
            handles.append(module.register_forward_hook(lambda _m, _i, out, hook=hook: hook(out)))
    was_training = model.training
    try:
        with torch.no_grad():
            features = model.eval().forward_features(images.to(next(model.parameters()).device))
            model.forward_head(features)
        _width_recorder(widths, "features")(features)
    except RuntimeError as exc:
        where = running[-1] if running else type(model).__name__
        layer = type(modules.get(where, model)).__name__
        raise RmtdeployError(
            f"the pruned model's forward fails at {where} ({layer}): {str(exc).splitlines()[0][:200]}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return widths


def _width_recorder(widths: dict[str, int], key: str):
    def record(output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() >= 2:
            widths[key] = int(output.shape[1] if output.dim() == 4 else output.shape[-1])

    return record
