"""Benchmark: wall time of a whole prune — spectral analysis + scoring + plan search + physical removal.

Goal (issue 3): ≤ 30 s per model at keep-macs 0.5 on a 2-core CPU. Random weights (the cost does not
depend on the values). Writes results/prune_time.{json,md}.

    python benchmarks/prune_time.py [--models swin_t vit_s convnext_t resnet50] [--strategies rmt magnitude]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _results import machine_conditions, write_results

from rmtdeploy.models import load_model
from rmtdeploy.scores import get_strategy

GOAL_SECONDS = 30.0
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["swin_t", "vit_s", "convnext_t", "resnet50"])
    parser.add_argument("--strategies", nargs="+", default=["rmt", "magnitude", "hybrid", "edge-budget"])
    parser.add_argument("--keep-macs", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = []
    for name in args.models:
        loaded = load_model(name, weights="random")
        for strategy_name in args.strategies:
            times, kept = [], None
            for _ in range(args.runs):
                start = time.perf_counter()
                result = get_strategy(strategy_name).prune(loaded.model, keep_macs=args.keep_macs)
                times.append(time.perf_counter() - start)
                kept = result.macs_kept
            row = {
                "model": loaded.name,
                "strategy": strategy_name,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "runs": args.runs,
                "macs_kept": round(kept, 4),
                "meets_goal": statistics.median(times) <= GOAL_SECONDS,
            }
            rows.append(row)
            print(
                f"{loaded.name:30s} {strategy_name:12s} median {row['median_s']:6.1f}s "
                f"(min {row['min_s']:.1f}, max {row['max_s']:.1f})  MACs kept {kept:.3f}",
                flush=True,
            )

    conditions = machine_conditions(
        f"get_strategy(S).prune(model, keep_macs={args.keep_macs}) on random weights, round_to 8",
        GOAL_SECONDS,
    )
    table = [
        "| model | strategy | median s | min s | max s | MACs kept | goal met |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['strategy']} | {r['median_s']:.1f} | {r['min_s']:.1f} | {r['max_s']:.1f} | "
            f"{r['macs_kept']:.3f} | {'yes' if r['meets_goal'] else 'NO'} |"
        )
    write_results(
        args.out,
        "prune_time",
        conditions,
        rows,
        "Prune time (analysis + scores + plan search + removal)",
        table,
        f"{args.runs} runs each",
    )


if __name__ == "__main__":
    main()
