"""What ``rmtdeploy analyze`` leaves behind: spectra.json, spectra.csv, pictures, and a console table."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from rmtdeploy.io import atomic_write_json, atomic_write_text, prepare_output_dir
from rmtdeploy.models import LoadedModel
from rmtdeploy.spectra.analysis import (
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
class AnalysisResult:
    spectra: list[LayerSpectrum]
    records: list[dict]
    files: list[Path]

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


def run_analysis(
    loaded: LoadedModel,
    out_dir: str | Path,
    *,
    force: bool = False,
    config: SpectralFitConfig | None = None,
    plots: bool = True,
    progress=None,
) -> AnalysisResult:
    """Analyse ``loaded.model`` and write spectra.json, spectra.csv and the pictures into ``out_dir``.

    ``progress(total)`` may return a callable advanced once per analysed matrix (a progress bar).
    """
    out = prepare_output_dir(out_dir, ANALYSIS_FILES, force=force)
    advance = progress(len(weight_matrices(loaded.model))) if progress else None
    spectra = analyze_model(loaded.model, config, advance)
    records = spectra_records(spectra, loaded)
    files = [out / "spectra.json", out / "spectra.csv"]
    atomic_write_json(files[0], records)
    atomic_write_text(files[1], records_to_csv(records))
    if plots:
        from rmtdeploy.spectra.plots import plot_spectral_densities, plot_summary

        title = f"{loaded.name} ({loaded.weights} weights)"
        files.append(plot_summary(spectra, out / "summary.png", title))
        files.extend(plot_spectral_densities(spectra, out, title))
    return AnalysisResult(spectra=spectra, records=records, files=files)


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
