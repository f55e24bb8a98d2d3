"""Pictures of the spectra: empirical densities with the fitted MP law, and a by-depth summary."""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on build machines or boards
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rmtdeploy.io import atomic_save  # noqa: E402
from rmtdeploy.spectra.analysis import STATUS_OK, LayerSpectrum  # noqa: E402
from rmtdeploy.spectra.marchenko_pastur import mp_pdf, mp_support  # noqa: E402

MAX_PANELS_PER_FILE = 36
_BLOCKS_PER_STAGE = 4  # isotropic models (ViT, Hiera) have no stages: group blocks in fours


def stage_of(layer_name: str) -> str:
    """Plot group of a layer: the model's stage where it has them, else a run of blocks."""
    if match := re.match(r"^(stages|layers)\.(\d+)", layer_name):
        return f"{match.group(1)}.{match.group(2)}"
    if match := re.match(r"^(layer\d+)", layer_name):
        return match.group(1)
    if match := re.match(r"^blocks\.(\d+)", layer_name):
        first = int(match.group(1)) // _BLOCKS_PER_STAGE * _BLOCKS_PER_STAGE
        return f"blocks.{first}-{first + _BLOCKS_PER_STAGE - 1}"
    return "stem_and_head"


def plot_spectral_densities(spectra: list[LayerSpectrum], out_dir: Path, title: str) -> list[Path]:
    """One grid per stage: histogram of λ = s²/n per layer, MP density and the spike threshold overlaid."""
    groups: OrderedDict[str, list[LayerSpectrum]] = OrderedDict()
    for spectrum in spectra:
        if spectrum.singular_values is not None and spectrum.status == STATUS_OK:
            groups.setdefault(stage_of(spectrum.name), []).append(spectrum)
    written = []
    for stage, members in groups.items():
        for part in range(0, len(members), MAX_PANELS_PER_FILE):
            chunk = members[part : part + MAX_PANELS_PER_FILE]
            suffix = f"_part{part // MAX_PANELS_PER_FILE + 1}" if len(members) > MAX_PANELS_PER_FILE else ""
            path = out_dir / f"esd_{stage.replace('.', '_')}{suffix}.png"
            _density_grid(chunk, path, f"{title} — {stage}")
            written.append(path)
    return written


def _density_grid(spectra: list[LayerSpectrum], path: Path, title: str) -> None:
    cols = min(6, len(spectra))
    rows = math.ceil(len(spectra) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for axis, spectrum in zip(axes.flat, spectra, strict=False):
        n = max(spectrum.shape)
        eigenvalues = spectrum.singular_values**2 / n
        threshold = spectrum.spike_threshold**2 / n
        bulk_top = max(spectrum.lambda_plus, threshold) * 1.15
        bulk = eigenvalues[eigenvalues <= bulk_top]
        axis.hist(bulk, bins=60, density=True, color="#7a9cc6", alpha=0.8, label="ESD")
        lo, hi = mp_support(spectrum.gamma, spectrum.sigma2)
        grid = np.linspace(lo, hi, 400)
        # The histogram is normalised over the bulk only; scale the MP density to the same share.
        share = bulk.size / eigenvalues.size
        axis.plot(
            grid,
            mp_pdf(grid, spectrum.gamma, spectrum.sigma2) / share,
            color="#c0392b",
            lw=1.2,
            label="MP fit",
        )
        axis.axvline(threshold, color="black", ls="--", lw=0.8, label="edge (TW)")
        axis.set_title(
            f"{spectrum.name}\nspikes={spectrum.spikes} SER={spectrum.ser:.2f} KS={spectrum.ks:.3f}",
            fontsize=7,
        )
        axis.tick_params(labelsize=6)
        outside = spectrum.spikes - int((bulk > threshold).sum())
        if outside > 0:
            axis.text(0.98, 0.9, f"+{outside} beyond view", transform=axis.transAxes, ha="right", fontsize=6)
    for axis in list(axes.flat)[len(spectra) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def plot_summary(spectra: list[LayerSpectrum], path: Path, title: str) -> Path:
    """SER, power-law α and spike count of every fitted layer against its depth (module order)."""
    fitted = [s for s in spectra if s.status == STATUS_OK]
    depth = np.arange(len(fitted))
    fig, axes = plt.subplots(3, 1, figsize=(max(8, len(fitted) * 0.08), 7.5), sharex=True)
    series = [
        ("SER (energy above edge)", [s.ser for s in fitted], "#2e86c1"),
        ("power-law α", [np.nan if s.alpha is None else s.alpha for s in fitted], "#8e44ad"),
        ("spikes (signal rank)", [s.spikes for s in fitted], "#d35400"),
    ]
    for axis, (label, values, colour) in zip(axes, series, strict=True):
        axis.plot(depth, values, marker="o", ms=2.5, lw=0.8, color=colour)
        axis.set_ylabel(label, fontsize=8)
        axis.grid(alpha=0.3)
    axes[1].axhspan(2, 6, color="#27ae60", alpha=0.08, label="α 2–6: well-trained range (WeightWatcher)")
    axes[1].legend(fontsize=7, loc="upper right")
    stage_names = [stage_of(s.name) for s in fitted]
    starts = [i for i, name in enumerate(stage_names) if i == 0 or name != stage_names[i - 1]]
    for axis in axes:
        for start in starts[1:]:
            axis.axvline(start - 0.5, color="grey", lw=0.5, ls=":")
    axes[-1].set_xticks(starts, [stage_names[i] for i in starts], rotation=45, ha="right", fontsize=7)
    axes[-1].set_xlabel("layer (module order)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
