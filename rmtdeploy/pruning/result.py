"""What a prune gives back, and the one way MACs and parameters are counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rmtdeploy.macs import count_ops


@dataclass
class PruneResult:
    """A physically pruned model, the plan that rebuilds it from timm, and its cost before and after."""

    model: nn.Module
    plan: dict[str, Any]  # JSON-able; see rmtdeploy.pruning.plan
    dense_macs: int
    pruned_macs: int
    dense_params: int
    pruned_params: int
    # Seconds spent per phase, for reports: "spectra_s" (spectral fits a strategy needs), "scores_s" (the
    # importance over every channel group). Not part of the plan: timings differ between identical runs.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def macs_kept(self) -> float:
        return self.pruned_macs / self.dense_macs

    @property
    def params_kept(self) -> float:
        return self.pruned_params / self.dense_params


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """MACs per sample and parameter count, by torch-pruning's counter (the budget's unit everywhere)."""
    macs, params = count_ops(model, example_inputs)
    return int(macs), int(params)
