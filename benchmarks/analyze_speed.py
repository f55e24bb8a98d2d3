"""Benchmark: time to analyse a whole model's spectra (goal: ≤ 5 s per model on a 2-core CPU).

Measures `analyze_model` (matrix extraction, batched singular values, MP fits, spikes, SER, α) on
randomly initialised weights — the cost does not depend on the weight values. Model construction and
plotting are excluded; the pictures are timed separately. Writes results/analyze_speed.{json,md}.

    python benchmarks/analyze_speed.py [--models swin_t vit_s convnext_t resnet50] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _results import machine_conditions, write_results

from rmtdeploy.models import load_model
from rmtdeploy.spectra import analyze_model
from rmtdeploy.spectra.plots import plot_spectral_densities, plot_summary

GOAL_SECONDS = 5.0
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["swin_t", "vit_s", "convnext_t", "resnet50"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = []
    for name in args.models:
        loaded = load_model(name, weights="random")
        analyze_model(loaded.model)  # warm-up: first call loads LAPACK kernels
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            spectra = analyze_model(loaded.model)
            times.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            plot_summary(spectra, Path(tmp) / "summary.png", name)
            plot_spectral_densities(spectra, Path(tmp), name)
            plot_seconds = time.perf_counter() - start
        row = {
            "model": loaded.name,
            "matrices": len(spectra),
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "runs": args.runs,
            "plots_s": plot_seconds,
            "meets_goal": statistics.median(times) <= GOAL_SECONDS,
        }
        rows.append(row)
        print(
            f"{loaded.name:32s} {len(spectra):4d} matrices  median {row['median_s']:.2f}s "
            f"(min {row['min_s']:.2f}, max {row['max_s']:.2f})  plots {plot_seconds:.1f}s"
        )

    conditions = machine_conditions(
        "rmtdeploy.spectra.analyze_model on random weights (model build and plots excluded)", GOAL_SECONDS
    )
    table = [
        "| model | matrices | median s | min s | max s | plots s | goal met |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['matrices']} | {r['median_s']:.2f} | {r['min_s']:.2f} | "
            f"{r['max_s']:.2f} | {r['plots_s']:.1f} | {'yes' if r['meets_goal'] else 'NO'} |"
        )
    write_results(
        args.out,
        "analyze_speed",
        conditions,
        rows,
        "Spectral analysis speed",
        table,
        f"{args.runs} timed runs after one warm-up",
    )


if __name__ == "__main__":
    main()
