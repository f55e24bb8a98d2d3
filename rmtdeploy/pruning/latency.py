"""Latency-aware allocation: measured cost per component steers which components shrink.

A MAC budget treats every MAC alike, but a backend does not: on ONNX Runtime's CPU kernels an attention
sub-block spends time on softmax and on q·kᵀ / attn·v products the MAC count of its Linear layers does
not see, an early high-resolution stage moves more memory per MAC than a late one, and so on. Removing
a fraction r of a component removes about r of its time and r of its MACs, so at an equal MAC budget
the model is faster when components with a high time per MAC are cut harder.

:func:`component_cost_weights` profiles the dense model once on the target backend (ONNX Runtime CPU,
per-node kernel times grouped by component) and divides by the component's MACs: weight 1.0 is the
model's average time per MAC. :func:`weighted_ratios` multiplies each pruning unit's base ratio by its
component's weight (clipped, to a power ``strength``) before the usual factor search meets the budget.
Components are a top-level block with its attention apart (``blocks.3.attn`` and ``blocks.3``;
``layer2.0``; Swin's and ConvNeXt's stages), the same key for ONNX node names and PyTorch module names.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError

WEIGHT_CLIP = (0.5, 2.0)  # a component is cut at most twice as hard (or half as hard) as average


def onnx_node_component(node_name: str) -> str:
    """``/blocks/blocks.3/attn/qkv/MatMul`` -> ``blocks.3.attn``; ``/blocks/blocks.3/mlp/fc1/MatMul`` ->
    ``blocks.3``; ``/layer2/layer2.0/conv1/Conv`` -> ``layer2.0``."""
    from rmtdeploy.benchmark.profile import onnx_node_scope

    scope = onnx_node_scope(node_name)
    if scope.startswith("("):
        return scope
    return _with_attention(scope, node_name.split("/")[1:-1])


def module_component(model: nn.Module, module_name: str) -> str:
    """The same key for a PyTorch module name."""
    from rmtdeploy.benchmark.profile import module_scope

    scope = module_scope(model, module_name)
    return _with_attention(scope, module_name[len(scope) :].split("."))


def _with_attention(scope: str, path: Sequence[str]) -> str:
    # Attention apart from the rest of its block: its softmax and q·kᵀ / attn·v products make its time per
    # MAC differ from the MLP's. Finer keys do not survive ONNX Runtime's fusions (a fused Conv+BN+ReLU
    # node carries the activation's name), so the rest of a block is one component.
    return f"{scope}.attn" if any(part.startswith("attn") for part in path) else scope


def component_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs per component."""
    from rmtdeploy.report.diagnostics import macs_by_key

    return macs_by_key(model, example, lambda name: module_component(model, name))


def component_cost_weights(
    model: nn.Module, example: torch.Tensor, *, threads: int = 2, runs: int = 20
) -> dict[str, float]:
    """Each component's time per MAC on ONNX Runtime CPU relative to the model's (1.0 = average)."""
    from rmtdeploy.benchmark.profile import group_profile_events, profile_traces
    from rmtdeploy.exporting import export_onnx

    macs = component_macs(model, example)
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-latency-") as tmp:
        path = Path(tmp) / "dense.onnx"
        export_onnx(
            model, path, backend="onnxruntime", dynamic_batch=False, input_shape=tuple(example.shape[1:])
        )
        events, warmup = profile_traces({"dense": path}, threads=threads, runs=runs)
    ms = group_profile_events(events["dense"], onnx_node_component, warmup, runs)
    timed = {k: v for k, v in ms.items() if macs.get(k)}
    if not timed:
        raise RmtdeployError("the profile matched no component of the model: cannot weigh latency")
    average = sum(timed.values()) / sum(macs[k] for k in timed)
    return {k: round((v / macs[k]) / average, 4) for k, v in sorted(timed.items())}


def weighted_ratios(
    model: nn.Module,
    owners: Sequence[Sequence[str]],
    base_ratios: Sequence[float],
    weights: Mapping[str, float],
    strength: float = 1.0,
) -> list[float]:
    """Each unit's base ratio times its component's clipped weight to the power ``strength`` (units of
    unweighed components, and units left whole, keep theirs)."""
    low, high = WEIGHT_CLIP
    out = []
    for names, base in zip(owners, base_ratios, strict=True):
        found = [weights[c] for c in (module_component(model, n) for n in names) if c in weights]
        weight = sum(found) / len(found) if found else 1.0
        out.append(base * min(max(weight, low), high) ** strength)
    return out
