"""``rmt`` — classic RMT: a channel is worth the signal energy it carries above the MP edge.

For each layer, the MP fit gives the spikes (k singular values above the Tracy–Widom-corrected edge);
channel c scores ‖(U_k Σ_k V_kᵀ)_c‖² / mean channel energy of the layer, averaged over the layers of its
group, plus ``tie_break`` × its normalised magnitude so that channels of an all-bulk layer are still
ordered. Ranking is global: layers whose spectrum is all bulk score ~0 everywhere and lose the most.
Pick it for trained models whose layers differ in how much signal they hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rmtdeploy.scores.base import PrunerSettings, SpectralGroupImportance, Strategy, register_strategy
from rmtdeploy.scores.channel_spectra import ChannelSpectra, channel_spectra_by_module
from rmtdeploy.spectra import SpectralFitConfig


class SignalEnergyImportance(SpectralGroupImportance):
    def __init__(self, channel_spectra: dict[str, ChannelSpectra], tie_break: float):
        super().__init__(channel_spectra)
        self.tie_break = tie_break

    def channel_values(self, spectra: ChannelSpectra, outputs: bool) -> torch.Tensor:
        if outputs:
            signal, energy = spectra.row_score(), spectra.row_energy
        else:
            signal, energy = spectra.col_score(), spectra.col_energy
        return signal + self.tie_break * energy / energy.mean().clamp_min(1e-30)

    def fallback(self, group):
        magnitude = super().fallback(group)
        return None if magnitude is None else self.tie_break * magnitude


@register_strategy("rmt")
@dataclass
class RmtStrategy(Strategy):
    tie_break: float = 1e-3  # weight of magnitude among channels with equal (e.g. zero) signal
    tracy_widom_level: float = 0.99

    def settings(self, model: nn.Module, keep: float) -> PrunerSettings:
        spectra = channel_spectra_by_module(
            model, SpectralFitConfig(tracy_widom_level=self.tracy_widom_level)
        )
        return PrunerSettings(importance=SignalEnergyImportance(spectra, self.tie_break), global_pruning=True)
