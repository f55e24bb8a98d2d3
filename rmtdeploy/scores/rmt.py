"""``rmt`` — classic RMT: a channel is worth the signal energy it carries above the MP edge.

For each layer, the MP fit gives the spikes (k singular values above the Tracy–Widom-corrected edge);
channel c scores ‖(U_k Σ_k V_kᵀ)_c‖² / mean channel energy of the layer, averaged over the layers of its
group, plus ``tie_break`` × its normalised magnitude so that channels of an all-bulk layer are still
ordered. With ``norm_scales`` (default) each channel's energies are weighted by the square of the norm
scale the network applies to it (BatchNorm γ/σ after a conv, LayerNorm γ before a Linear, layer scale).

``allocation``: "uniform" — every layer keeps the same fraction, the spectrum picks which channels;
"global" — one ranking across layers, so all-bulk layers score ≈ 0 and lose the most; "auto" (default) —
global for the families in :data:`GLOBAL_ALLOCATION_FAMILIES`, uniform for the rest. The accuracy
benchmark showed "global" collapsing CNNs (early convolutions are small matrices that look like bulk, yet
everything downstream reads them) and Swin, and losing to uniform on ViT/DeiT after distillation, while on
Hiera it is the best criterion of all: it keeps the residual streams wide and takes the MLP hidden widths
(docs/strategies.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rmtdeploy.models import model_family
from rmtdeploy.scores.base import PrunerSettings, SpectralGroupImportance, Strategy
from rmtdeploy.scores.channel_spectra import ChannelSpectra, channel_spectra_by_module
from rmtdeploy.scores.registry import register_strategy
from rmtdeploy.spectra import SpectralFitConfig

Allocation = Literal["auto", "uniform", "global"]
# Where allocation="auto" ranks across layers: the families where "global" measured ahead of "uniform" at
# both keeps, before and after the short distillation, on mnist5k (on CIFAR-10, where Hiera reaches 38 %:
# ahead right after pruning, and after it at keep 0.5; docs/strategies.md, "No strategy is a trap").
GLOBAL_ALLOCATION_FAMILIES = frozenset({"hiera"})
Score = Literal["signal", "flow"]


class SignalEnergyImportance(SpectralGroupImportance):
    def __init__(self, channel_spectra: dict[str, ChannelSpectra], tie_break: float, scaled: bool = False):
        super().__init__(channel_spectra)
        self.tie_break, self.scaled = tie_break, scaled

    def channel_values(self, spectra: ChannelSpectra, outputs: bool) -> torch.Tensor:
        signal, energy = spectra.rows(self.scaled) if outputs else spectra.cols(self.scaled)
        return (signal + self.tie_break * energy) / energy.mean().clamp_min(1e-30)

    def fallback(self, group):
        magnitude = super().fallback(group)
        return None if magnitude is None else self.tie_break * magnitude


class SignalFlowImportance(SignalEnergyImportance):
    """What a channel delivers: the power its producers put into it × how much of its consumers' learned
    (above-edge) map reads it. A first-order estimate of the channel's contribution: the consumer's output
    moves by W_next[:, c]·x_c when c goes, x_c's size set by the producer row (and the norm scales), and
    only the signal part of W_next is what training put there."""

    # A group no fitted layer votes in scores by plain magnitude (not scaled by tie_break as in "signal").
    fallback = SpectralGroupImportance.fallback

    @torch.no_grad()
    def __call__(self, group):
        produced: tuple[list, list] = ([], [])
        consumed: tuple[list, list] = ([], [])
        for spectra, outputs, idxs, root_idxs in self.fitted_layers(group):
            if outputs:
                _, energy = spectra.rows(self.scaled)
                values, into = energy / energy.mean().clamp_min(1e-30), produced
            else:
                values, into = self.channel_values(spectra, outputs=False), consumed
            into[0].append(values[idxs])
            into[1].append(root_idxs)
        if not produced[0] and not consumed[0]:
            return self.fallback(group)
        power = self.mean_over_layers(*produced, group) if produced[0] else None
        reading = self.mean_over_layers(*consumed, group) if consumed[0] else None
        if power is None:
            return reading
        return power if reading is None else power * reading


def check_signal_knobs(strategy: Strategy) -> None:
    """The range checks of the signal-energy knobs (``tie_break``, ``tracy_widom_level``) rmt shares."""
    strategy.require(strategy.tie_break >= 0, "tie_break", "must be >= 0")
    strategy.require(
        0 < strategy.tracy_widom_level < 1,
        "tracy_widom_level",
        "a quantile, must lie strictly between 0 and 1",
    )


@register_strategy("rmt")
@dataclass
class RmtStrategy(Strategy):
    tie_break: float = 1e-3  # weight of magnitude among channels with equal (e.g. zero) signal
    tracy_widom_level: float = 0.99
    # "uniform": same keep per layer; "global": one ranking across layers; "auto": global for the families
    # of GLOBAL_ALLOCATION_FAMILIES, else uniform
    allocation: Allocation = "auto"
    norm_scales: bool = True  # weight channels by the norm scales the network applies to them
    # "signal": the channel's own above-edge energy; "flow": producer power × consumer signal
    score: Score = "signal"

    def check_knobs(self) -> None:
        check_signal_knobs(self)

    def settings(self, model: nn.Module, keep: float) -> PrunerSettings:
        spectra = channel_spectra_by_module(
            model, SpectralFitConfig(tracy_widom_level=self.tracy_widom_level), norm_scales=self.norm_scales
        )
        kind = SignalEnergyImportance if self.score == "signal" else SignalFlowImportance
        return PrunerSettings(
            importance=kind(spectra, self.tie_break, scaled=self.norm_scales),
            global_pruning=self.ranks_across_layers(model),
        )

    def ranks_across_layers(self, model: nn.Module) -> bool:
        return self.allocation_for(model) == "global"

    def allocation_for(self, model: nn.Module) -> str:
        """``allocation`` with "auto" resolved for ``model``'s family."""
        if self.allocation != "auto":
            return self.allocation
        return "global" if model_family(model) in GLOBAL_ALLOCATION_FAMILIES else "uniform"
