"""The analyze stage as one library call: ``analyze(model, out) -> Analysis``.

It writes spectra.json, spectra.csv and pictures into ``out`` as one unit (see
:class:`rmtdeploy.io.OutputFolder`); ``rmtdeploy analyze`` is a thin shell over it and prints
:func:`spectra_table`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import OutputFolder
from rmtdeploy.models import LoadedModel, ModelSource, model_source
from rmtdeploy.spectra.analysis import (
    SIGMA_METHODS,
    STATUS_OK,
    LayerSpectrum,
    SpectralFitConfig,
    analyze_model,
    weight_matrices,
)

ANALYSIS_FILES = ("spectra.json", "spectra.csv", "summary.png")
CSV_COLUMNS = (
    "model", "weights", "name", "module", "block", "kind", "shape", "status", "gamma", "sigma2",
    "sigma2_median", "lambda_plus", "edge", "spike_threshold", "spikes", "ser", "alpha", "alpha_xmin",
    "ks", "stable_rank", "effective_rank", "spectral_norm", "message",
)  # fmt: skip


@dataclass
class Analysis:
    """A finished analyze stage: per-layer spectra and the files written. ``to_dict()`` is the summary
    a caller prints or stores (spectra.json holds the per-layer records)."""

    model_name: str
    weights: str
    spectra: list[LayerSpectrum]
    records: list[dict]
    files: list[Path]

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "weights": self.weights,
            **self.summary(),
            "files": [str(f) for f in self.files],
        }

    def summary(self) -> dict:
        """Counts a person reads first: how many layers fitted, how spiky, how much signal."""
        fitted = [s for s in self.spectra if s.status == STATUS_OK]
        statuses: dict[str, int] = {}
        for spectrum in self.spectra:
            statuses[spectrum.status] = statuses.get(spectrum.status, 0) + 1
        return {
            "layers": len(self.spectra),
            "fitted": len(fitted),
            "statuses": statuses,
            "spike_free_fraction": (sum(s.spikes == 0 for s in fitted) / len(fitted)) if fitted else None,
            "mean_ser": (sum(s.ser for s in fitted) / len(fitted)) if fitted else None,
        }


def spectra_records(spectra: list[LayerSpectrum], loaded: LoadedModel) -> list[dict]:
    """Per-layer records, each labelled with the model and where its weights came from."""
    return [{"model": loaded.name, "weights": loaded.weights, **s.record()} for s in spectra]


def records_to_csv(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({**record, "shape": "x".join(map(str, record["shape"]))})
    return buffer.getvalue()


def analyze(
    model: str | ModelSource | LoadedModel,
    out: str | os.PathLike,
    *,
    force: bool = False,
    sigma_method: str = "bema",
    plots: bool = True,
    progress=None,
) -> Analysis:
    """Fit every prunable weight matrix of ``model`` (a name, a :class:`ModelSource` or a loaded model)
    and write spectra.json, spectra.csv and (with ``plots``) the pictures into ``out`` as one unit.

    ``sigma_method``: the noise-level estimator, ``"bema"`` or ``"median"``. ``progress(total)`` may
    return a callable advanced once per analysed matrix (a progress bar).
    """
    if sigma_method not in SIGMA_METHODS:
        raise RmtdeployError(
            f"{{param}} must be one of {', '.join(SIGMA_METHODS)}, got '{sigma_method}'", param="sigma_method"
        )
    source = model_source(model)
    source.check()
    with OutputFolder(out, ANALYSIS_FILES[:2], force=force, stage="analyze") as folder:
        loaded = source.load()
        advance = progress(len(weight_matrices(loaded.model))) if progress else None
        spectra = analyze_model(loaded.model, SpectralFitConfig(method=sigma_method), advance)
        records = spectra_records(spectra, loaded)
        folder.write_json("spectra.json", records)
        folder.write_text("spectra.csv", records_to_csv(records))
        if plots:
            from rmtdeploy.spectra.plots import plot_spectral_densities, plot_summary

            title = f"{loaded.name} ({loaded.weights} weights)"
            plot_summary(spectra, folder.path("summary.png"), title)
            plot_spectral_densities(spectra, folder.staging, title)
        files = folder.commit()
    return Analysis(loaded.name, loaded.weights, spectra, records, files)


def spectra_table(spectra: list[LayerSpectrum], title: str) -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column, justify in (
        ("layer", "left"), ("shape", "right"), ("γ", "right"), ("σ²", "right"), ("edge σ₊", "right"),
        ("spikes", "right"), ("SER", "right"), ("α", "right"), ("KS", "right"), ("status", "left"),
    ):  # fmt: skip
        table.add_column(column, justify=justify, no_wrap=column == "layer")
    for s in spectra:
        fitted = s.status == STATUS_OK
        table.add_row(
            s.name,
            f"{s.shape[0]}×{s.shape[1]}",
            _fmt(s.gamma, ".3f"),
            _fmt(s.sigma2, ".2e"),
            _fmt(s.edge, ".3f"),
            str(s.spikes) if s.spikes is not None else "–",
            _fmt(s.ser, ".3f"),
            _fmt(s.alpha, ".2f"),
            _fmt(s.ks, ".3f"),
            "ok" if fitted else f"[yellow]{s.status}[/yellow]",
        )
    return table


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)
