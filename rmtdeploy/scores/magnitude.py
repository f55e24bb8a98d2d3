"""``magnitude`` — the classic baseline: group L2 (or L1) weight magnitude, exactly torch-pruning's.

Score of channel c in a group: mean over the group's layers of ‖w_c‖_p^p (rows of the producing
layers, columns of the consuming ones, norm-layer scales), normalised by the group mean. Every layer
keeps the same fraction of its channels. Pick it as the reference every other strategy must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch_pruning as tp
from torch import nn

from rmtdeploy.scores.base import PrunerSettings, Strategy
from rmtdeploy.scores.registry import register_strategy


@register_strategy("magnitude")
@dataclass
class MagnitudeStrategy(Strategy):
    p: int = 2  # 2: group L2 magnitude (TP default); 1: L1

    def check_knobs(self) -> None:
        self.require(self.p >= 1, "p", "the norm's power must be an integer >= 1 (1: L1, 2: L2)")

    def settings(self, model: nn.Module, keep: float) -> PrunerSettings:
        # The very class torch-pruning ships, so comparisons against the baseline are fair.
        return PrunerSettings(importance=tp.importance.GroupMagnitudeImportance(p=self.p))
