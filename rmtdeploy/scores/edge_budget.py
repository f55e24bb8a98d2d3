"""``edge-budget`` — spectral edge budget: how much each layer keeps comes from its spectrum.

For every prunable layer l (its MP fit: SER_l, spikes k_l of p_l directions, power-law α_l):

    signal_l = max(SER_l, k_l / p_l)                 share of the layer that is above-edge structure
    tail_l   = clip((α_l − α_trained) / α_span, 0, 1)  0 for a heavy (well-trained) tail, 1 for random-like
    ratio_l  = (1 − signal_l) · (1 − tail_weight + tail_weight · tail_l)

α is only trusted where the spectrum departs from pure noise (spikes, or a bulk that fails a 99% KS test
against its MP fit): a power law fitted to an MP bulk is meaningless and scatters between ~4 and ~17, so
such layers count as random-like (tail_l = 1).

ratio_l is the layer's base pruning ratio; the shared pruner scales all of them by one factor found by
search so the global MAC (or parameter) target is met exactly. Within a layer, channels are ranked by
magnitude. Pick it when layers differ a lot in spectral health (e.g. after fine-tuning on a new task).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch_pruning as tp
from torch import nn

from rmtdeploy.scores.base import PrunerSettings, Strategy
from rmtdeploy.scores.channel_spectra import ChannelSpectra, channel_spectra_by_module
from rmtdeploy.scores.registry import register_strategy

# A floor on every ratio: even a layer made of pure signal can lose a little, which keeps the search's
# single factor able to reach deep targets. Base ratios are relative weights the pruner scales; the
# ceiling keeps them inside the (0, 1) range it accepts.
_MIN_BASE_RATIO = 0.05
_MAX_BASE_RATIO = 0.9


def layer_base_ratio(
    spectra: ChannelSpectra, alpha_trained: float, alpha_span: float, tail_weight: float
) -> float:
    signal = max(spectra.ser, spectra.signal_fraction)
    noise_like = spectra.spikes == 0 and spectra.bulk_is_mp
    if spectra.alpha is None or noise_like:
        tail = 1.0
    else:
        tail = min(1.0, max(0.0, (spectra.alpha - alpha_trained) / alpha_span))
    ratio = (1.0 - signal) * (1.0 - tail_weight + tail_weight * tail)
    return _MAX_BASE_RATIO * max(_MIN_BASE_RATIO, ratio)


@register_strategy("edge-budget")
@dataclass
class EdgeBudgetStrategy(Strategy):
    alpha_trained: float = 2.0  # α at or below which a layer counts as fully trained (WeightWatcher)
    alpha_span: float = 4.0  # α_trained + span (= 6) and above: no heavy tail, random-like
    tail_weight: float = 0.5  # how much the α term modulates the budget

    def check_knobs(self) -> None:
        self.require(self.alpha_trained > 0, "alpha_trained", "a power-law exponent, must be > 0")
        self.require(self.alpha_span > 0, "alpha_span", "must be > 0")
        self.require(0 <= self.tail_weight <= 1, "tail_weight", "a weight in [0, 1]")

    def base_ratios(self, model: nn.Module) -> dict[str, float]:
        spectra = channel_spectra_by_module(model)
        return {
            name: layer_base_ratio(s, self.alpha_trained, self.alpha_span, self.tail_weight)
            for name, s in spectra.items()
            if s.fitted
        }

    def settings(self, model: nn.Module, keep: float) -> PrunerSettings:
        modules = dict(model.named_modules())
        ratios = {modules[name]: ratio for name, ratio in self.base_ratios(model).items()}
        return PrunerSettings(
            importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio_dict=ratios
        )
