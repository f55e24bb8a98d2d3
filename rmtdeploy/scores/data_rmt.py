"""``data-rmt`` — classic RMT on the weights as the calibration data sees them (W·Σ½) and, by default, as
the loss reads them (Γ½·W·Σ½), not on W alone.

Random Matrix Theory applies to what a layer does to its inputs. With Σ the second moment of a layer's
inputs over the calibration images, M = W·Σ½ has M Mᵀ = E[y yᵀ], the layer's output energy per
direction. Its MP fit (the same fit ``analyze`` makes of weights) finds the spikes, the directions the data
drives and the layer carries, and the bulk, what the data does not use (:mod:`.data_spectra`). A channel
scores the energy it carries in the spikes, as ``rmt`` scores weight signal energy: an output channel its
share of the output's spike energy (weighted by the BatchNorm / layer-scale factor after it), an input
channel the energy its inputs put into the consumer's spike directions. Group mean over layers, each layer
normalised by its mean channel energy; uniform ratio per layer.

It needs calibration images (``prune --calibration``, the same 256 images by default that BatchNorm
recalibration and torch-pruning's Taylor / Hessian use); without them it is refused before the model loads.
Scoring costs one forward pass over them plus an eigendecomposition per layer input (docs/strategies.md
gives the times beside Taylor's and Hessian's).

By default (``fisher=sampled``) the fit is of Γ½·W·Σ½: the weights as the data drives them and the loss
reads them, Γ the second moment of the cross-entropy gradient at the layer's outputs (one more backward
pass over the images), on labels drawn from the model's own predictions, so unlabelled images do;
``fisher=labels`` takes the batches' labels, ``fisher=off`` fits W·Σ½ alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from rmtdeploy.scores.base import PrunerSettings, Strategy
from rmtdeploy.scores.data_spectra import DataSpectraConfig, data_channel_spectra_by_module
from rmtdeploy.scores.registry import register_strategy
from rmtdeploy.scores.rmt import SignalEnergyImportance, check_signal_knobs
from rmtdeploy.spectra import SpectralFitConfig


@register_strategy("data-rmt")
@dataclass
class DataRmtStrategy(Strategy):
    reads_calibration: ClassVar[bool] = True

    tie_break: float = 1e-3  # weight of a channel's total energy beside its spike energy
    tracy_widom_level: float = 0.99
    rank_tolerance: float = 1e-6  # input directions below this share of the top one count as unused
    # Judge inputs by their covariance (fluctuations), not their second moment: far better on ViT (mnist5k),
    # mixed elsewhere (docs/strategies.md).
    centred: bool = True
    # Weigh the spectra by the loss (Γ½·W·Σ½, Γ the K-FAC output factor of the cross-entropy's Fisher):
    # "labels" on the calibration images' labels, "sampled" on labels drawn from the model's predictions
    # (no labels needed), "off" the data view alone (W·Σ½). "sampled" is ahead of "off" on average at keep
    # 0.3 and 0.5 on mnist5k and CIFAR-10 (docs/strategies.md, "Weighed by the loss").
    fisher: Literal["off", "labels", "sampled"] = "sampled"

    @property
    def reads_labels(self) -> bool:  # type: ignore[override]
        return self.fisher == "labels"

    def check_knobs(self) -> None:
        check_signal_knobs(self)
        self.require(0 <= self.rank_tolerance < 1, "rank_tolerance", "a fraction of the top energy in [0, 1)")

    def settings(self, model: nn.Module, keep: float, calibration_batches=None) -> PrunerSettings:
        spectra = data_channel_spectra_by_module(
            model,
            calibration_batches,
            SpectralFitConfig(tracy_widom_level=self.tracy_widom_level),
            DataSpectraConfig(rank_tolerance=self.rank_tolerance, centred=self.centred, fisher=self.fisher),
        )
        return PrunerSettings(importance=SignalEnergyImportance(spectra, self.tie_break, scaled=True))
