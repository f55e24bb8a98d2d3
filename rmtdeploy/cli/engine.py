"""``rmtdeploy engine``: parse, call :func:`rmtdeploy.engine.stage.build_engine`, print."""

from __future__ import annotations

import json

from rmtdeploy.cli import ui


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "engine",
        help="build a TensorRT engine for a target (where TensorRT is installed)",
        description="Build the ONNX file into a TensorRT engine for --target: builder flags on TensorRT 10, a "
        "strongly typed network on 11 (the precision must then be in the ONNX: an INT8 target needs "
        "rmtdeploy export --int8), timing cache reused, every layer's precision and the fused attention "
        "reported in engine.json. Without TensorRT, use rmtdeploy bundle to build on the device.",
    )
    parser.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file (rmtdeploy export)")
    parser.add_argument(
        "--target", required=True, help="a TensorRT target profile (recipes/targets) or alias"
    )
    ui.add_output_arguments(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from rmtdeploy.engine.stage import build_engine

    with ui.spinner("building the TensorRT engine", enabled=not args.json):
        result = build_engine(args.onnx, args.out, target=args.target, force=args.force)
    record = result.record
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    console = ui.console()
    console.print(f"built {args.out}/model.engine for {record['target']} on {record['gpu']}: {record['layers']} layers, "
                  f"precisions {record['precisions']}, {record['fused_attention_layers']} fused attention layers")  # fmt: skip
    return 0
