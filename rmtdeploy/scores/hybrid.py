"""``hybrid`` — magnitude × spectral energy ratio, after the Hybrid Magnitude→SER protocol.

score(c) = magnitude(c) × (ε + SER(c))^w, with SER(c) the share of channel c's energy above its layer's
MP edge (averaged over the group) and the spectral weight w ramping with pruning depth d = 1 − keep:
w = 0 for d ≤ ``magnitude_until`` (pure magnitude: light pruning removes noise-sized weights well), rising
linearly to 1 at d = ``spectral_from``. Per-layer ratios are uniform, as for magnitude.
Pick it for deep cuts (keep ≤ 0.6), where magnitude starts to remove signal-carrying channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rmtdeploy.scores.base import PrunerSettings, SpectralGroupImportance, Strategy
from rmtdeploy.scores.channel_spectra import ChannelSpectra, channel_spectra_by_module
from rmtdeploy.scores.registry import register_strategy


class MagnitudeTimesSerImportance(SpectralGroupImportance):
    def __init__(self, channel_spectra: dict[str, ChannelSpectra], weight: float, epsilon: float):
        super().__init__(channel_spectra)
        self.weight, self.epsilon = weight, epsilon
        self.normalizer = "mean"  # the magnitude factor is exactly the magnitude strategy's score

    def channel_values(self, spectra: ChannelSpectra, outputs: bool) -> torch.Tensor:
        return spectra.row_ser() if outputs else spectra.col_ser()

    def __call__(self, group):
        magnitude = self.fallback(group)
        if magnitude is None or self.weight == 0:
            return magnitude
        ser = self.spectral_scores(group)
        if ser is None:
            return magnitude
        return magnitude * (self.epsilon + ser).pow(self.weight)


@register_strategy("hybrid")
@dataclass
class HybridStrategy(Strategy):
    magnitude_until: float = 0.2  # pruning depth up to which the score is pure magnitude
    spectral_from: float = 0.5  # depth from which the SER term has full weight
    epsilon: float = 0.05  # keeps magnitude ordering among channels with no above-edge energy

    def check_knobs(self) -> None:
        self.require(0 <= self.magnitude_until < 1, "magnitude_until", "a pruning depth in [0, 1)")
        self.require(
            self.magnitude_until <= self.spectral_from <= 1,
            "spectral_from",
            f"a pruning depth in [magnitude_until={self.magnitude_until}, 1]",
        )
        self.require(self.epsilon >= 0, "epsilon", "must be >= 0")

    def spectral_weight(self, keep: float) -> float:
        depth = 1.0 - keep
        if depth <= self.magnitude_until:
            return 0.0
        return min(1.0, (depth - self.magnitude_until) / max(self.spectral_from - self.magnitude_until, 1e-9))

    def settings(self, model: nn.Module, keep: float) -> PrunerSettings:
        weight = self.spectral_weight(keep)
        spectra = channel_spectra_by_module(model) if weight > 0 else {}
        return PrunerSettings(importance=MagnitudeTimesSerImportance(spectra, weight, self.epsilon))
