"""Latency tables validated: predicted vs measured whole-graph latency, and MAC vs table allocation, ORT CPU.

For each family of the accuracy benchmark (``rmtdeploy.retention.FAMILIES``: the same reduced models at
32 px, random weights: time does not depend on the values), the latency table is measured on ONNX
Runtime CPU (:func:`rmtdeploy.benchmark.latency_table.measure_latency_table`: each unit narrowed alone at a few
widths and a few joint configurations, timed in small groups with the dense model). Then hybrid prunes the
model at each keep-macs with the MAC allocation (every unit the same ratio) and with the table's
allocation (the most importance per predicted ms, :mod:`rmtdeploy.pruning.table_allocation`), at equal
MACs. All of them and the dense model are exported and timed again, interleaved on one shared pool,
independently of the table: the table's prediction for each pruned model against its measured latency
(goal: within 10 %), and speedup ÷ MAC reduction of both allocations.

Timings are only worth keeping on an idle machine: the script prints the 1-minute load average at start
and warns when it is above 0.5.

    python benchmarks/latency_table.py                       # six families, writes results/latency_table.*
    python benchmarks/latency_table.py --quick               # one family, few runs, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rmtdeploy.benchmark import machine_conditions, measure_onnx_latency  # noqa: E402
from rmtdeploy.benchmark.latency_table import measure_latency_table  # noqa: E402
from rmtdeploy.exporting import export_for_timing  # noqa: E402
from rmtdeploy.io import atomic_write_json, atomic_write_text  # noqa: E402
from rmtdeploy.retention import FAMILIES  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GOAL = 0.10  # |predicted / measured - 1|
IDLE_LOAD = 0.5
ROUND_TO = 8


def dense_family_model(family: str, image_size: int):
    from rmtdeploy.finetuning.scratch import build_small_model

    member = FAMILIES[family]
    recipe = member.scratch_recipe("mnist5k", image_size, seed=0)
    return build_small_model(member.timm_name, recipe, 10).eval()


def run_family(family: str, args, tmp: Path) -> dict:
    from rmtdeploy.scores import get_strategy

    model = dense_family_model(family, args.image_size)
    example = torch.zeros(1, 3, args.image_size, args.image_size)
    started = time.perf_counter()
    table = measure_latency_table(model, example_inputs=example, round_to=ROUND_TO, points=args.points,
                                  threads=args.threads, runs=args.table_runs, warmup=5)  # fmt: skip
    table_s = time.perf_counter() - started
    table.save((args.tables_out or tmp) / f"{family}.latency_table.json")
    # The same table with MACs for times: its predictions must equal counted MACs (the structure, noise-free).
    mac_table = measure_latency_table(model, example_inputs=example, round_to=ROUND_TO, points=args.points,
                                      backend="macs")  # fmt: skip
    strategy = get_strategy("hybrid")
    pruned, points = {}, []
    for keep in args.keeps:
        for allocation, extra in (("macs", {}), ("table", {"latency_table": table})):
            result = strategy.prune(model, keep_macs=keep, round_to=ROUND_TO, example_inputs=example, **extra)
            label = f"{allocation}-{keep:g}"
            pruned[label] = result.model
            widths = table.widths_of(result.plan["operations"])
            structure = mac_table.predict(widths) / (result.pruned_macs / 1e6) - 1
            points.append({"label": label, "keep": keep, "allocation": allocation, "macs_kept": round(result.macs_kept, 4),
                           "predicted_ms": round(table.predict(widths), 4), "mac_prediction_error": round(structure, 5)})  # fmt: skip
    paths = {}
    for label, net in (("dense", model), *pruned.items()):
        paths[label] = str(tmp / f"{family}-{label}.onnx")
        export_for_timing(net.eval(), paths[label], example.shape[1:])
    report = measure_onnx_latency(paths, threads=args.threads, runs=args.runs, warmup=10,
                                  pairs=[("dense", label) for label in pruned], pilot=True)  # fmt: skip
    speedup = {s.candidate: s for s in report.speedups}
    dense_ms = report.models["dense"].median_ms
    for point in points:
        s = speedup[point["label"]]
        measured = dense_ms / s.median  # the dense median over the median per-round ratio
        point.update(measured_ms=round(measured, 4), error=round(point["predicted_ms"] / measured - 1, 4),
                     speedup=round(s.median, 3), speedup_p10=round(s.p10, 3), speedup_p90=round(s.p90, 3),
                     speedup_per_mac_cut=round(s.median * point["macs_kept"], 3))  # fmt: skip
    row = {
        "family": family, "timm_name": FAMILIES[family].timm_name, "kwargs": json.loads(json.dumps(FAMILIES[family].kwargs)),
        "dense_ms_measured": round(dense_ms, 4), "dense_ms_table": table.dense_ms,
        "dense_spread_ms": [round(report.models["dense"].p10_ms, 4), round(report.models["dense"].p90_ms, 4)],
        "units": len(table.units), "layer_grids": len(table.layers), "unmodelled_layers": table.measured["unmodelled_layers"],
        "scale": table.scale, "joint_fit_largest_error": table.calibration.get("largest_error"),
        "graphs_timed": table.measured.get("groups"),
        "table_s": round(table_s, 1), "points": points,
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: list[dict], conditions: dict) -> str:
    load = conditions["load_average_at_start"]
    lines = [
        "# Latency tables: predicted vs measured, and the table's allocation (ONNX Runtime CPU)", "",
        f"`{conditions['what']}` on {conditions['cpu']} ({conditions['cpu_count']} cores), ORT {conditions['onnxruntime']}, "
        f"{conditions['threads']} threads on one shared pool, batch 1; table: {conditions['points']} widths per unit, "
        f"{conditions['table_runs']} interleaved rounds; validation: {conditions['runs']} interleaved rounds after 10 warm-up, "
        f"independent of the table. Families of the accuracy benchmark at {conditions['image_size']} px, random weights, "
        f"hybrid, round_to {ROUND_TO}. Load average at start {load}; wall {conditions['wall_s'] / 60:.1f} min.", "",
        "Each cell: predicted / measured ms (error); the predicted latency *relative to dense* against the measured "
        "one (error: the table predicts a speedup); speedup over dense (p10–p90 per-round spread); speedup ÷ MAC "
        "reduction. The two dense times differ because they were measured in two runs of other graphs: the table's "
        "small groups and the validation's one; the relative error does not carry that difference.", "",
        "| family | dense ms measured / table | keep | MAC allocation | table allocation |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    misses, relative_misses = [], []
    for row in rows:
        by = {(p["keep"], p["allocation"]): p for p in row["points"]}
        for keep in sorted({p["keep"] for p in row["points"]}, reverse=True):
            cells = []
            for allocation in ("macs", "table"):
                p = by[(keep, allocation)]
                relative = p["predicted_ms"] / row["dense_ms_table"] * p["speedup"] - 1
                if abs(p["error"]) > GOAL:
                    misses.append(f"{row['family']} {allocation} keep {keep:g} ({p['error']:+.1%})")
                if abs(relative) > GOAL:
                    relative_misses.append(f"{row['family']} {allocation} keep {keep:g} ({relative:+.1%})")
                cells.append(f"{p['predicted_ms']:.3f} / {p['measured_ms']:.3f} ({p['error']:+.1%}); relative "
                             f"{p['predicted_ms'] / row['dense_ms_table']:.3f} / {1 / p['speedup']:.3f} ({relative:+.1%}); "
                             f"×{p['speedup']:.2f} (×{p['speedup_p10']:.2f}–{p['speedup_p90']:.2f}); "
                             f"{p['speedup_per_mac_cut']:.2f} at MACs {p['macs_kept']:.3f}")  # fmt: skip
            lines.append(f"| {row['family']} | {row['dense_ms_measured']:.3f} / {row['dense_ms_table']:.3f} | {keep:g} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    total = sum(len(r["points"]) for r in rows)
    lines += [
        "",
        f"Goal: every prediction within ±{GOAL:.0%} of the measured latency; met in {total - len(misses)} of {total}.",
    ]
    if misses:
        lines.append("Missed: " + "; ".join(misses) + ".")
    lines.append(f"Relative to dense (the speedup the table predicts): within ±{GOAL:.0%} in "
                 f"{total - len(relative_misses)} of {total}." + (" Missed: " + "; ".join(relative_misses) + "."
                                                                   if relative_misses else ""))  # fmt: skip
    worst = {r["family"]: max(abs(p["mac_prediction_error"]) for p in r["points"]) for r in rows}
    lines.append("Structure check (the same table with MACs for times; its prediction against the counted MACs), "
                 "largest error per family: " + ", ".join(f"{f} {e:.2%}" for f, e in worst.items()) + ". Not zero "
                 "where heads or the residual width are cut: torch-pruning's counter takes timm's attention projection "
                 "as square (heads·head_dim by heads·head_dim + 1), not heads·head_dim by the residual width.")  # fmt: skip
    lines.append(
        "Table measuring time per family: "
        + ", ".join(f"{r['family']} {r['table_s']:.0f} s" for r in rows)
        + "."
    )
    lines.append(
        "The joint fit (the scale on the units' summed savings, fitted on the table's own joint configurations; "
        "its largest error there, in-sample): "
        + ", ".join(f"{r['family']} ×{r['scale']:.2f} ({r['joint_fit_largest_error']:.0%})" for r in rows)
        + "."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--families", nargs="+", choices=list(FAMILIES), help="default: all six (--quick: vit)"
    )
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.5, 0.3])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--points", type=int, default=5, help="widths per unit in the table")
    parser.add_argument("--table-runs", type=int, default=100, help="interleaved rounds measuring the table")
    parser.add_argument("--runs", type=int, default=80, help="interleaved rounds of the validation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="one family (vit), few runs; writes nothing unless --out"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results folder (default {RESULTS}; none with --quick)"
    )
    parser.add_argument("--stem", default="latency_table")
    parser.add_argument("--tables-out", type=Path, default=None,
                        help="keep each family's measured table here (<family>.latency_table.json), e.g. for an "
                        "accuracy run with the table's allocation")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.families = args.families or ["vit"]
        args.points, args.table_runs, args.runs, args.keeps = 3, 5, 10, [0.5]
    args.families = args.families or list(FAMILIES)
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    load = os.getloadavg()
    print(f"load average at start (1 min): {load[0]:.2f}", flush=True)
    if load[0] > IDLE_LOAD:
        print(f"WARNING: the machine is busy (1-min load {load[0]:.2f} > {IDLE_LOAD}): these timings are NOT valid; "
              "rerun on an idle machine before keeping them", file=sys.stderr, flush=True)  # fmt: skip
    torch.set_num_threads(args.threads)
    if args.tables_out is not None:
        args.tables_out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="latency_table-") as tmp:
        rows = [run_family(family, args, Path(tmp)) for family in args.families]
    machine = machine_conditions()
    what = " ".join(["benchmarks/latency_table.py", *(sys.argv[1:] if argv is None else argv)])
    conditions = {"what": what, "cpu": machine["cpu_model"], "cpu_count": machine["cpu_count"], "threads": args.threads,
                  "runs": args.runs, "table_runs": args.table_runs, "points": args.points, "image_size": args.image_size,
                  "load_average_at_start": [round(v, 2) for v in load], "wall_s": round(time.perf_counter() - started, 1),
                  "onnxruntime": machine.get("onnxruntime_version"), "goal": GOAL}  # fmt: skip
    text = markdown(rows, conditions)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / f"{args.stem}.json", {"conditions": conditions, "results": rows})
        atomic_write_text(out / f"{args.stem}.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
