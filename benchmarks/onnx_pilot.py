"""A/A check of the pilot: a model timed against its own copy on ONNX Runtime CPU, with and without the pilot.

Two sessions of the same ``.onnx`` file, interleaved on one shared pool: any "speedup" of the second over
the first is an offset of the protocol, not of the models. Early A/A runs here saw the first session
created run 1–5 % slower; ``measure_onnx_latency(..., pilot=True)`` creates a dropped copy of the first
model first (the latency table's groups run so). This measures both, ``--repeats`` times each,
alternating, for a few of the accuracy benchmark's models at 32 px (random weights: time does not depend
on the values).

Timings are only worth keeping on an idle machine: the script prints the load average and writes it down.

    python benchmarks/onnx_pilot.py                # writes results/onnx_pilot.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._results import machine_conditions, write_results  # noqa: E402
from benchmarks.latency_table import dense_family_model  # noqa: E402
from rmtdeploy import machine  # noqa: E402
from rmtdeploy.benchmark import measure_onnx_latency  # noqa: E402
from rmtdeploy.exporting import export_for_timing  # noqa: E402
from rmtdeploy.retention import FAMILIES  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["resnet", "hiera", "vit"], choices=list(FAMILIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average at start: {machine.loadavg()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            torch.manual_seed(0)
            model = dense_family_model(family, 32)
            path = str(Path(tmp) / f"{family}.onnx")
            export_for_timing(model, path, (3, 32, 32))
            ratios: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeats):
                for pilot in (False, True):
                    report = measure_onnx_latency({"first": path, "second": path}, threads=args.threads,
                                                  runs=args.runs, warmup=10, pilot=pilot)  # fmt: skip
                    ratios[pilot].append(report.speedups[0].median)  # > 1: the first session ran slower
            rows.append({"family": family, "without_pilot": ratios[False], "with_pilot": ratios[True]})
            print(family, {k: [round(r, 3) for r in v] for k, v in ratios.items()})
    table = [
        "Each cell: the median of per-round ratios first ÷ second (> 1: the session created first ran slower), "
        f"one per repeat; {args.runs} interleaved rounds after 10 warm-up, batch 1, {args.threads} threads on "
        "one shared pool, the same `.onnx` file for both.",
        "",
        "| family | without the pilot | with the pilot |",
        "|---|---|---|",
        *(f"| {r['family']} | {_cell(r['without_pilot'])} | {_cell(r['with_pilot'])} |" for r in rows),
    ]
    conditions = machine_conditions("benchmarks/onnx_pilot.py", 0)
    write_results(args.out, "onnx_pilot", conditions, rows, "A/A: a model against its own copy, ONNX Runtime CPU",
                  table, f"{args.repeats} repeats × {args.runs} rounds")  # fmt: skip


def _cell(values: list[float]) -> str:
    return f"{' / '.join(f'{v:.3f}' for v in values)} (median {statistics.median(values):.3f})"


if __name__ == "__main__":
    main()
