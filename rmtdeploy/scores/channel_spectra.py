"""Per-channel spectral quantities of every prunable layer, keyed by module name.

For a weight matrix W (rows = output channels) with k spikes above its MP edge, the signal part is
S = U_k Σ_k V_kᵀ. Output channel j carries ‖S_{j,:}‖² of it, input channel c carries ‖S_{:,c}‖² (summed over
kernel taps for a conv). Importances look these up by the module name torch-pruning's graph records, so
they serve deep copies of the analysed model too.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from rmtdeploy.adapters import get_adapter
from rmtdeploy.scores.norm_scales import norm_channel_scales
from rmtdeploy.spectra import (
    LayerSpectrum,
    SpectralFitConfig,
    WeightMatrix,
    analyze_model,
    channel_signal_energy,
    weight_matrices,
)
from rmtdeploy.spectra.analysis import STATUS_OK

# Asymptotic one-sample Kolmogorov–Smirnov critical value at the 99% level: D·√n above it rejects.
KS_CRITICAL_99 = 1.63


@dataclass
class ChannelSpectra:
    """Spectral view of one module's channels; ``fitted`` is False when no block of it had an MP fit."""

    fitted: bool
    row_signal: torch.Tensor  # [out] energy of the above-edge part per output channel
    row_energy: torch.Tensor  # [out] total energy per output channel
    col_signal: torch.Tensor  # [in] energy of the above-edge part per input channel
    col_energy: torch.Tensor  # [in]
    ser: float  # energy above the edge / total energy, over the whole module
    spikes: int
    signal_fraction: float  # spikes / min(M, N): share of directions that are signal
    alpha: float | None
    bulk_is_mp: bool  # every block's bulk passes a KS test against its MP fit (99% level)
    # Norm layers' rescaling of each channel in the network's function (``norm_scales``); ones if none.
    row_scale: torch.Tensor | None = None
    col_scale: torch.Tensor | None = None

    def rows(self, scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(signal, total) energy per output channel; ``scaled``: as the network sees them, each channel
        weighted by the square of the norm scale applied to its output (BatchNorm γ/σ, layer scale)."""
        return _scaled(self.row_signal, self.row_energy, self.row_scale if scaled else None)

    def cols(self, scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`rows` for input channels; ``scaled`` weights by a LayerNorm's γ before the layer."""
        return _scaled(self.col_signal, self.col_energy, self.col_scale if scaled else None)

    def row_ser(self) -> torch.Tensor:
        """Per-output-channel spectral energy ratio: above-edge share of the channel's own energy."""
        return self.row_signal / self.row_energy.clamp_min(1e-30)

    def col_ser(self) -> torch.Tensor:
        return self.col_signal / self.col_energy.clamp_min(1e-30)


def _scaled(signal: torch.Tensor, energy: torch.Tensor, scale: torch.Tensor | None):
    if scale is None:
        return signal, energy
    return signal * scale.pow(2), energy * scale.pow(2)


def channel_spectra_by_module(
    model: nn.Module, config: SpectralFitConfig | None = None, *, norm_scales: bool = False
) -> dict[str, ChannelSpectra]:
    """Analyse ``model`` once and return the channel view of every Linear/Conv2d, by module name.

    A fused qkv projection is fitted per q/k/v block; its output channels take their block's values.
    ``norm_scales``: also record how norm layers rescale each module's channels (one forward pass).
    Inside :func:`reused_spectra` a model's analysis is made once and handed out again.
    """
    if _reused is not None:
        key = (id(model), repr(config), norm_scales)
        if key not in _reused:
            _reused[key] = (model, _channel_spectra_by_module(model, config, norm_scales))
        return _reused[key][1]
    return _channel_spectra_by_module(model, config, norm_scales)


_reused: dict | None = None


@contextlib.contextmanager
def reused_spectra():
    """Within the block each model's spectra are fitted once: a search that prunes the same dense model
    at several budgets (``compress --latency-budget``) pays for one analysis. The model must not change
    inside the block (the cache holds it, so its id is not reused)."""
    global _reused
    outer = _reused
    _reused = {} if outer is None else outer
    try:
        yield
    finally:
        _reused = outer


def _channel_spectra_by_module(
    model: nn.Module, config: SpectralFitConfig | None, norm_scales: bool
) -> dict[str, ChannelSpectra]:
    scales = _norm_scales(model) if norm_scales else {}
    modules = dict(model.named_modules())
    parts: dict[str, list[tuple[WeightMatrix, LayerSpectrum]]] = {}
    for item, spectrum in zip(weight_matrices(model), analyze_model(model, config), strict=True):
        parts.setdefault(item.module_name, []).append((item, spectrum))
    return {
        name: _module_channel_spectra(modules[name].weight.detach().float(), blocks, scales.get(name, {}))
        for name, blocks in parts.items()
    }


class BlockTally:
    """A module's fit summed over its blocks (one, or q/k/v of a fused projection): which fitted, the energy
    above the edges, spikes, directions, α and whether every bulk passes its KS test. The weight view and
    the data view (:mod:`rmtdeploy.scores.data_spectra`) add their blocks here the same way."""

    def __init__(self) -> None:
        self.fitted, self.bulk_is_mp = False, True
        self.energy_above = self.total = 0.0
        self.spikes = self.directions = 0
        self.alphas: list[float] = []

    def add(self, spectrum: LayerSpectrum, energy: float) -> int:
        """Count one block (its fit and its total energy); returns its spikes (0 without a fit)."""
        ok = spectrum.status == STATUS_OK
        k = spectrum.spikes if ok else 0
        p = min(spectrum.shape)
        self.fitted |= ok
        self.total += energy
        self.energy_above += (spectrum.ser or 0.0) * energy
        self.spikes += k
        self.directions += p
        if spectrum.alpha is not None:
            self.alphas.append(spectrum.alpha)
        if ok:
            self.bulk_is_mp &= spectrum.ks <= KS_CRITICAL_99 / math.sqrt(p - k)
        return k

    def summary(self) -> dict:
        """The module-wide fields of :class:`ChannelSpectra`."""
        return {
            "fitted": self.fitted,
            "ser": self.energy_above / self.total if self.total > 0 else 0.0,
            "spikes": self.spikes,
            "signal_fraction": self.spikes / self.directions if self.directions else 0.0,
            "alpha": sum(self.alphas) / len(self.alphas) if self.alphas else None,
            "bulk_is_mp": self.bulk_is_mp,
        }


def _module_channel_spectra(
    weight: torch.Tensor, blocks: list[tuple[WeightMatrix, LayerSpectrum]], scales: dict[str, torch.Tensor]
) -> ChannelSpectra:
    """One module's channel view from the spectra of its blocks (one, or q/k/v of a fused projection)."""
    in_channels = weight.shape[1]
    taps = weight[0].numel() // in_channels  # kernel positions per input channel (1 for Linear)
    row_signal, row_energy = [], []
    col_signal = torch.zeros(in_channels)
    tally = BlockTally()
    for item, spectrum in blocks:
        k = tally.add(spectrum, float(item.matrix.double().pow(2).sum()))
        rows_signal, cols_signal = channel_signal_energy(item.matrix, k)
        row_signal.append(rows_signal)
        row_energy.append(item.matrix.pow(2).sum(1))
        col_signal += cols_signal.reshape(in_channels, taps).sum(1)
    return ChannelSpectra(
        row_signal=torch.cat(row_signal),
        row_energy=torch.cat(row_energy),
        col_signal=col_signal,
        col_energy=weight.reshape(weight.shape[0], in_channels, taps).pow(2).sum((0, 2)),
        **tally.summary(),
        row_scale=scales.get("rows"),
        col_scale=scales.get("cols"),
    )


def _norm_scales(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    device = next(model.parameters()).device
    return norm_channel_scales(model, get_adapter(model).example_inputs(model).to(device))
