"""Stage 1 — spectra: Marchenko–Pastur fits of every prunable weight matrix."""

from rmtdeploy.spectra.analysis import (
    LayerSpectrum,
    SpectralFitConfig,
    WeightMatrix,
    analyze_matrix,
    analyze_model,
    channel_signal_energy,
    weight_matrices,
)

__all__ = [
    "LayerSpectrum",
    "SpectralFitConfig",
    "WeightMatrix",
    "analyze_matrix",
    "analyze_model",
    "channel_signal_energy",
    "weight_matrices",
]
