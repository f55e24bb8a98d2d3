"""``rmtdeploy bundle``: parse, call :func:`rmtdeploy.bundle.stage.make_bundle`, print."""

from __future__ import annotations

import json

from rmtdeploy.cli import ui
from rmtdeploy.errors import RmtdeployError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bundle",
        help="a folder to copy onto a Jetson: ONNX graphs, engine build script, on-device benchmark",
        description="Write a Jetson bundle of a pruned or fine-tuned folder: model.onnx (and model.int8.onnx with "
        "--int8, model.fp16.onnx where the target accepts TensorRT 11), dense.onnx as the speed baseline, "
        "build_engine.sh (trtexec flags for the board's TensorRT 10 or 11, DLA when the target has it), "
        "bench_on_device.py (Python + TensorRT only; records nvpmodel, jetson_clocks, JetPack, TensorRT, board) "
        "and a README. Bring its bench.json back with rmtdeploy bench --import. --sweep adds one candidate per "
        "keep ratio, pruned from the dense model (--model with its weights) as the pruned folder was: the board "
        "times them all in one interleaved run, a measured curve that rmtdeploy compress --device-results picks "
        "a keep ratio from (docs/deploy.md). --latency-table adds the dense model's latency table (latency_table/): "
        "the board builds and times its graphs, bench --import writes latency_table.json for prune --latency-table.",
    )
    parser.add_argument(
        "--pruned", required=True, metavar="DIR", help="a folder written by rmtdeploy prune or finetune"
    )
    parser.add_argument("--target", required=True,
                        help="jetson-orin-nano | jetson-orin-nx | jetson-agx-orin | jetson-agx-orin-dla (jetson = jetson-orin-nano)")  # fmt: skip
    ui.add_output_arguments(parser)
    parser.add_argument("--int8", action="store_true", help="also an INT8 Q/DQ graph and engine")
    parser.add_argument("--data", metavar="DIR|NAME", help="images for parity and INT8 calibration")
    parser.add_argument(
        "--calibration-images", type=int, default=256, metavar="N", help="INT8 calibration images"
    )
    parser.add_argument("--sweep", metavar="K,K,...",
                        help="keep ratios in (0, 1], e.g. 0.3,0.4,0.5,0.6,0.7,0.8,0.9: one candidate each, pruned "
                        "from --model with the pruned folder's strategy, knobs and channel rules")  # fmt: skip
    parser.add_argument("--latency-table", action="store_true",
                        help="also the dense model's latency-table graphs (latency_table/: its plan and ONNX graphs, "
                        "at the target's channel multiple), for build_engine.sh to build and bench_on_device.py "
                        "--latency-table to time on the board; no --model needed (timing does not depend on the "
                        "weights)")  # fmt: skip
    ui.add_model_arguments(parser, required=False,
                           note=": with --sweep, the dense model the pruned folder came from, with its weights")  # fmt: skip
    parser.set_defaults(handler=run)


def run(args) -> int:
    from rmtdeploy.bundle.stage import make_bundle
    from rmtdeploy.targets import load_target

    profile = load_target(args.target)
    sweep = ui.parse_sweep(args.sweep)
    if args.model is None and (args.weights or args.checkpoint):
        raise RmtdeployError("{param} names the dense model a sweep is pruned from", param="model")
    dense = ui.model_source(args) if args.model is not None else None
    with ui.spinner(f"bundling for {profile.name}", enabled=not args.json) as status:
        result = make_bundle(args.pruned, args.out, target=args.target, int8=args.int8, data=args.data,
                             calibration_images=args.calibration_images, sweep=sweep, model=dense,
                             latency_table=args.latency_table, force=args.force, status=status)  # fmt: skip
    if args.json:
        print(json.dumps(result.record, indent=2))
        return 0
    console = ui.console()
    if args.target != profile.name:
        console.print(f"target '{args.target}' means {profile.name}: {profile.description}")
    console.print(f"wrote {', '.join(p.name for p in result.files)} to {args.out}")
    table = result.record.get("latency_table")
    if table:
        console.print(f"latency table: {table['graphs']} graphs in {table['groups']} groups ({table['precision']}) in "
                      "latency_table/; building their engines on the board takes a while (README.md)")  # fmt: skip
    timed = "python3 bench_on_device.py" + (" --latency-table" if table else "")
    console.print(f"on the board: bash build_engine.sh && {timed}; then rmtdeploy bench --import bench.json")
    return 0
