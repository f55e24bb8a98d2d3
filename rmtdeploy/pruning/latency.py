"""Latency-aware allocation: at the same MAC budget, the allocation that runs fastest on the target backend.

A MAC budget treats every MAC alike, but a backend does not: an early high-resolution stage moves more
memory per MAC than a late one, attention spends time on softmax and reshapes its Linear layers' MACs do
not count, and which of these costs more differs between CPUs (the same MAC-only ConvNeXt-atto widths
keep 0.88 of proportional speedup on an AVX-512 EPYC, 0.81 on an AVX2 one:
benchmarks/results/deploy_speedup*.md). A first version weighed each
component by its time per MAC in a profile of the dense model; it measured no faster (×0.97–1.03) and
cost accuracy, because a dense profile's average cost is not what removing MACs there saves, and fused
kernels (GELU, LayerNorm) carry no scope to credit. So the allocation is now chosen by measuring the
candidates themselves, whole, on the backend:

* :func:`tilted_weights`: the MAC-only allocation and a few tilted ones: each unit's base ratio times
  ``tilt`` in one part of the model and ÷ ``tilt`` in the other, for three splits: the first half of
  the components in model order against the second, attention against the rest, and shared widths (a
  stage's residual channels) against each block's own. The budget search then meets the same MACs for
  each.
* a chooser times them: :func:`rmtdeploy.benchmark.allocation.fastest_allocation` exports the
  candidates in ONNX Runtime's form and times them interleaved on one shared pool; the fastest at equal
  MACs wins if it beats MAC-only by at least ``MIN_GAIN`` (below that, the difference is within a short
  run's noise and MAC-only stays). Pruning takes the chooser as ``latency_weights`` (it measures nothing
  itself: timing lies on a floor above it).

Components are a top-level block with its attention apart (``blocks.3.attn`` and ``blocks.3``;
``layer2.0``; Swin's and ConvNeXt's stages). Explicit ``{component: weight}`` maps still scale the base
ratios (:func:`weighted_ratios`), for experiments and for the benchmarks' extremes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

WEIGHT_CLIP = (0.5, 2.0)  # a component is cut at most twice as hard (or half as hard) as average
TILT = 1.5  # the measured candidates' tilt: 2 bought more speed in the headroom runs, and cost more accuracy
MIN_GAIN = 1.02  # a tilted allocation must beat MAC-only by this at equal MACs to be chosen
SHARED, OWN = "(shared width)", "(own width)"  # weight keys by unit kind, not by component
# ({label: (pruned model, MACs)}, example input, baseline label) -> (the label chosen, its record).
AllocationChooser = Callable[
    [Mapping[str, tuple[nn.Module, int]], torch.Tensor, str], tuple[str, dict[str, Any]]
]


def module_component(model: nn.Module, module_name: str) -> str:
    """The same key for a PyTorch module name."""
    from rmtdeploy.macs import module_scope

    scope = module_scope(model, module_name)
    return _with_attention(scope, module_name[len(scope) :].split("."))


def _with_attention(scope: str, path: Sequence[str]) -> str:
    # Attention apart from the rest of its block: its softmax and q·kᵀ / attn·v products make its time per
    # MAC differ from the MLP's. Finer keys do not survive ONNX Runtime's fusions (a fused Conv+BN+ReLU
    # node carries the activation's name), so the rest of a block is one component.
    return f"{scope}.attn" if any(part.startswith("attn") for part in path) else scope


def component_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs per component."""
    from rmtdeploy.macs import macs_by_key

    return macs_by_key(model, example, lambda name: module_component(model, name))


def weighted_ratios(
    model: nn.Module,
    owners: Sequence[Sequence[str]],
    base_ratios: Sequence[float],
    weights: Mapping[str, float],
    strength: float = 1.0,
) -> list[float]:
    """Each unit's base ratio times its component's clipped weight to the power ``strength`` (units of
    unweighed components, and units left whole, keep theirs). A map with :data:`SHARED` and :data:`OWN`
    weighs by kind instead: a unit whose channels several components share (a stage's residual width)
    against one inside a single component (an MLP's hidden width, a block's heads)."""
    low, high = WEIGHT_CLIP
    out = []
    for names, base in zip(owners, base_ratios, strict=True):
        if SHARED in weights:
            found = [weights[SHARED] if shares_width(model, names) else weights[OWN]]
        else:
            found = [weights[c] for c in (module_component(model, n) for n in names) if c in weights]
        weight = sum(found) / len(found) if found else 1.0
        out.append(base * min(max(weight, low), high) ** strength)
    return out


def shares_width(model: nn.Module, owners: Sequence[str]) -> bool:
    """Whether a unit's channels are shared by several components (a stage's residual width), not owned
    by one (an MLP's hidden width, a block's heads)."""
    return len({module_component(model, n) for n in owners}) > 1


def tilted_weights(
    model: nn.Module, example: torch.Tensor, tilt: float = TILT, owners: Sequence[Sequence[str]] = ()
) -> dict[str, dict[str, float]]:
    """Candidate weight maps: the first half of the components (in model order) cut ``tilt`` times harder
    and the rest ``tilt`` times softer, and the reverse; the same for attention against the rest where
    the model has attention; and for shared widths (a stage's residual channels, which every block's
    depthwise conv, norm and residual add carry) against each block's own, where ``owners`` (the pruning
    units' owner modules) has both kinds."""
    components = list(component_macs(model, example))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    components.sort(key=lambda c: order.get(c.removesuffix(".attn"), len(order)))
    first = set(components[: len(components) // 2])
    attention = {c for c in components if c.endswith(".attn")}
    splits = {"front": first, "back": set(components) - first}
    if attention:
        splits.update({"attention": attention, "non-attention": set(components) - attention})
    candidates = {f"{name}-first": {c: tilt if c in part else 1 / tilt for c in components}
                  for name, part in splits.items()}  # fmt: skip
    if {shares_width(model, names) for names in owners} == {True, False}:
        candidates.update(width_kind_weights(tilt))
    return candidates


def width_kind_weights(tilt: float = TILT) -> dict[str, dict[str, float]]:
    """The two candidates that weigh by unit kind: shared widths cut ``tilt`` times harder, or own ones."""
    return {"shared-first": {SHARED: tilt, OWN: 1 / tilt}, "own-first": {SHARED: 1 / tilt, OWN: tilt}}
