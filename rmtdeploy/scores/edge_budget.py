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

No layer is starved. One factor over ratios that differ twentyfold pushed the noisiest layers to the
pruner's floor (8 channels, one head) at deep cuts, yet in a model trained from scratch the bulk is the
random start its spikes grew on, and later layers still read it. Each layer keeps at least

    floor_l = max(spike_margin · k_l / rows_l,  uniform_floor · √keep)      (a fraction of its channels)

* the spike floor: the k_l signal directions need at least k_l output channels to survive, with a margin
  because a magnitude pick of rows does not span them exactly;
* the uniform floor: at a budget ``keep`` (MACs or parameters, both ∝ in × out channels) the uniform
  allocation keeps about √keep of every layer, and no layer keeps less than ``uniform_floor`` times that.

Read as a structured spectral edge reallocation: every layer is over-pruned to its floor, and the budget
left above the floors goes back by the spectral ratios (the least noise-like layers first). A unit of
coupled channels (a residual stream, an MLP's hidden channels, an attention block's heads) takes the
largest floor of the layers that write it, rounded up to the channel multiple or a whole head; the floors
yield, all together, only to a budget they alone would make unreachable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch_pruning as tp
from torch import nn

from rmtdeploy.scores.base import PrunerSettings, Strategy
from rmtdeploy.scores.channel_spectra import ChannelSpectra, channel_spectra_by_module, reused_spectra
from rmtdeploy.scores.registry import register_strategy

# A floor on every ratio: even a layer made of pure signal can lose a little, which keeps the search's
# single factor able to reach deep targets. Base ratios are relative weights the pruner scales; the
# ceiling keeps them inside the (0, 1) range it accepts.
_MIN_BASE_RATIO = 0.05
_MAX_BASE_RATIO = 0.9


def layer_keep_floor(
    spectra: ChannelSpectra, keep: float, spike_margin: float, uniform_floor: float
) -> float:
    """The fraction of a layer's output channels that stays whatever its ratio: see the module docstring."""
    spike_floor = spike_margin * spectra.spikes / max(1, len(spectra.row_signal))
    return min(1.0, max(spike_floor, uniform_floor * math.sqrt(keep)))


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
    spike_margin: float = 2.0  # a layer keeps at least this many channels per spike of its fit
    uniform_floor: float = 0.85  # ... and at least this share of the uniform allocation's √keep

    def check_knobs(self) -> None:
        self.require(self.alpha_trained > 0, "alpha_trained", "a power-law exponent, must be > 0")
        self.require(self.alpha_span > 0, "alpha_span", "must be > 0")
        self.require(0 <= self.tail_weight <= 1, "tail_weight", "a weight in [0, 1]")
        self.require(self.spike_margin >= 0, "spike_margin", "channels per spike, must be >= 0")
        self.require(0 <= self.uniform_floor < 1, "uniform_floor", "a share of the uniform keep in [0, 1)")

    def base_ratios(self, model: nn.Module) -> dict[str, float]:
        return {
            name: layer_base_ratio(s, self.alpha_trained, self.alpha_span, self.tail_weight)
            for name, s in channel_spectra_by_module(model).items()
            if s.fitted
        }

    def keep_floors(self, model: nn.Module, keep: float) -> dict[str, float]:
        """Per fitted layer, the fraction of its output channels it keeps at least (budget ``keep``)."""
        return {
            name: layer_keep_floor(s, keep, self.spike_margin, self.uniform_floor)
            for name, s in channel_spectra_by_module(model).items()
            if s.fitted
        }

    def settings(self, model: nn.Module, keep: float) -> PrunerSettings:
        modules = dict(model.named_modules())
        with reused_spectra():  # one fit serves the ratios and the floors
            ratios = {modules[name]: ratio for name, ratio in self.base_ratios(model).items()}
            floors = {modules[name]: share for name, share in self.keep_floors(model, keep).items()}
        return PrunerSettings(
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio_dict=ratios,
            min_keep_dict=floors,
        )
