"""What a prune gives back, and the one way MACs and parameters are counted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn


@dataclass
class PruneResult:
    """A physically pruned model, the plan that rebuilds it from timm, and its cost before and after."""

    model: nn.Module
    plan: dict[str, Any]  # JSON-able; see rmtdeploy.pruning.plan
    dense_macs: int
    pruned_macs: int
    dense_params: int
    pruned_params: int

    @property
    def macs_kept(self) -> float:
        return self.pruned_macs / self.dense_macs

    @property
    def params_kept(self) -> float:
        return self.pruned_params / self.dense_params


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """MACs per sample and parameter count, by torch-pruning's counter (the budget's unit everywhere)."""
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)
