"""``rmtdeploy bench``: parse, call :func:`rmtdeploy.benchmark.stage.bench` (or ``import_results``), print."""

from __future__ import annotations

import json

from rmtdeploy.cli import ui
from rmtdeploy.errors import RmtdeployError


def add_parser(commands) -> None:
    from rmtdeploy.benchmark import stage

    parser = commands.add_parser(
        "bench",
        help="time dense vs pruned (and INT8) interleaved; JSON, Markdown and a plot",
        description="Time the dense architecture of a pruned folder's plan against the pruned model (and an INT8 "
        "ONNX file), interleaved round by round so their ratio holds on a noisy machine: warm-up, many rounds, "
        "median, p10-p90, p99, throughput, the speedup's spread and speedup ÷ MAC reduction. Writes bench.json, "
        "bench.md and bench.png to --out. --import renders a bench.json measured elsewhere (the Jetson "
        "bundle's on-device script) into the same tables; a bundle's sweep comes back as a measured curve "
        "(latency and speedup against the keep ratio, curve.png), a bundle's latency table timed on the board as "
        "latency_table.json for prune/compress --latency-table. See docs/benchmarks.md.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pruned", metavar="DIR", help="a folder written by rmtdeploy prune or finetune")
    source.add_argument(
        "--import", dest="import_file", metavar="FILE", help="a bench.json measured elsewhere"
    )
    ui.add_output_arguments(parser)
    parser.add_argument(
        "--int8", metavar="FILE", help="an INT8 ONNX file of the pruned model, timed beside it"
    )
    parser.add_argument(
        "--backend",
        default="onnxruntime",
        help=f"{' | '.join(stage.BENCH_BACKENDS)} (default onnxruntime, CPU; tensorrt where TensorRT and a "
        "CUDA GPU are present)",
    )
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="images per inference (default 1)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: every core)")
    parser.add_argument("--runs", type=int, default=stage.DEFAULT_RUNS, metavar="N",
                        help=f"interleaved timed rounds (default {stage.DEFAULT_RUNS})")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=stage.DEFAULT_WARMUP, metavar="N",
                        help=f"untimed rounds first (default {stage.DEFAULT_WARMUP})")  # fmt: skip
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="PyTorch backends: where to run"
    )
    parser.add_argument("--precision", choices=("fp32", "fp16"),
                        help="PyTorch on CUDA: fp16 (default fp32); TensorRT: instead of the target's")  # fmt: skip
    parser.add_argument("--target", metavar="T",
                        help=f"--backend tensorrt: the target whose engine build is timed (default "
                        f"{stage.DEFAULT_TENSORRT_TARGET}); the engines are built here, on this GPU")  # fmt: skip
    parser.add_argument("--compile-mode", metavar="MODE",
                        help="torch-compile: default | reduce-overhead (CUDA graphs) | max-autotune")  # fmt: skip
    parser.add_argument("--latency-table", action="store_true",
                        help="--backend onnxruntime: also measure the dense model's latency table here (each unit "
                        "narrowed alone, joint configurations; minutes) into latency_table.json, for prune/compress "
                        "--latency-table; docs/strategies.md#latency-tables")  # fmt: skip
    parser.set_defaults(handler=run)


def run(args) -> int:
    from rmtdeploy.benchmark.stage import bench, import_results

    if args.import_file is not None:
        extra = [
            f
            for f in ("int8", "threads", "compile_mode", "target", "precision", "latency_table")
            if getattr(args, f) not in (None, False)
        ]
        if extra:
            raise RmtdeployError(
                f"{ui.flag(extra[0])} measures; --import only renders results measured elsewhere"
            )
        result = import_results(args.import_file, args.out, force=args.force)
    else:
        with ui.spinner("benchmarking", enabled=not args.json) as status:
            result = bench(args.pruned, args.out, int8=args.int8, backend=args.backend, batch=args.batch,
                           threads=args.threads, runs=args.runs, warmup=args.warmup, device=args.device,
                           compile_mode=args.compile_mode, precision=args.precision, target=args.target,
                           latency_table=args.latency_table, force=args.force,
                           status=status)  # fmt: skip
    data = result.to_dict()
    table = result.latency_table
    if args.json:
        shown = {k: v for k, v in data.items() if k != "samples_ms"}
        if table is not None:
            shown["latency_table"] = {"file": str(result.directory / "latency_table.json"), **table.summary()}
        print(json.dumps(shown, indent=2))
        return 0
    console = ui.console()
    for label, stats in data["latency"].items():
        console.print(f"{label:12s} median {stats['median_ms']:.3f} ms (p10–p90 {stats['p10_ms']:.3f}–"
                      f"{stats['p90_ms']:.3f}, p99 {stats['p99_ms']:.3f})")  # fmt: skip
    for row, s in zip(data["efficiency"], data["speedups"], strict=True):
        eff = (
            f", {row['efficiency']:.2f} of the MAC reduction ×{row['mac_reduction']:.2f}"
            if row["efficiency"]
            else ""
        )
        console.print(
            f"{s['baseline']} → {s['candidate']}: ×{s['median']:.3f} (p10–p90 ×{s['p10']:.3f}–×{s['p90']:.3f}){eff}"
        )
    if data.get("curve"):
        console.print("measured curve, keep ratio: median ms, speedup over dense — " + "; ".join(
            f"{p['keep_macs']:g}: {p['median_ms']:.3f} ms ×{p['speedup']:.2f}" for p in data["curve"]))  # fmt: skip
    if table is not None:
        path = result.directory / "latency_table.json"
        m = table.measured
        where = (f"here on ONNX Runtime CPU ({m.get('cpu')}, {m.get('threads')} threads)" if m.get("backend") == "onnxruntime-cpu"
                 else f"on {m.get('device') or m.get('target') or 'the board'} (TensorRT {m.get('tensorrt', '?')}, "
                      f"{m.get('precision') or '?'})")  # fmt: skip
        console.print(f"latency table of {table.model} measured {where}: {len(table.units)} units, {len(table.layers)} layer "
                      f"grids, dense {table.dense_ms:.3f} ms, joint fit ×{table.scale:.2f}; use it: rmtdeploy prune "
                      f"--latency-table {path}", soft_wrap=True)  # fmt: skip
    console.print(f"wrote {', '.join(p.name for p in result.files)} to {args.out}")
    return 0
