"""EdgeNeXt: timm's ``EdgeNeXt`` (convolutional encoders, then split-depth transposed-attention blocks).

What differs from the generic path: the cross-covariance attention (``CrossCovarianceAttn``) attends across
channels, not tokens (a d x d softmax per head, with a per-head temperature), so its channels cannot be
thinned without changing what every kept channel attends to: its qkv group is left whole. The generic
adapter already leaves whole the streams that the split-depth blocks cut into fixed-width chunks; the
convolutional MLPs, the attention MLPs and the first stage's stream prune.
"""

from __future__ import annotations

from typing import Any

from timm.models.edgenext import CrossCovarianceAttn
from torch import nn

from rmtdeploy.adapters.generic import GenericAdapter
from rmtdeploy.adapters.registry import register_adapter


@register_adapter("edgenext")
class EdgeNeXtAdapter(GenericAdapter):
    family = "edgenext"

    def group_problem(self, graph: Any, group: Any, names: dict[nn.Module, str]) -> str | None:
        root = group[0].dep.target.module
        for module, name in names.items():
            if isinstance(module, CrossCovarianceAttn) and root is module.qkv:
                return f"{name}: cross-covariance attention mixes channels within each head"
        return super().group_problem(graph, group, names)
