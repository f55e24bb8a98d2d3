"""``rmtdeploy export``: parse, call :func:`rmtdeploy.exporting.stage.export`, print."""

from __future__ import annotations

import json
from pathlib import Path

from rmtdeploy.cli import ui
from rmtdeploy.errors import RmtdeployError


def add_parser(commands) -> None:
    from rmtdeploy.exporting import stage

    parser = commands.add_parser(
        "export",
        help="a verified ONNX file with the metadata an app needs",
        description="Export a pruned or fine-tuned folder (--pruned) or a dense model (--model) to ONNX: opset and "
        "batch from the target, simplified, compared with PyTorch on random inputs and on --data images, "
        "with model, weights, strategy, keep ratio, input size, mean/std, interpolation and labels in its "
        "metadata. The file appears only once it is verified. See docs/export.md.",
    )
    parser.add_argument(
        "--pruned", metavar="DIR", type=Path, help="a folder written by rmtdeploy prune or finetune"
    )
    ui.add_model_arguments(parser, required=False, note=" (a dense export; or give --pruned)")
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="the ONNX file to write, e.g. model.onnx"
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
    parser.add_argument(
        "--target",
        help="target profile (recipes/targets, or an alias such as jetson): opset, static or dynamic batch, and "
        "the backend's graph form (default: opset 17, dynamic batch, ONNX Runtime form)",
    )
    parser.add_argument(
        "--data",
        metavar="DIR|NAME",
        help="also check parity on real images: a built-in dataset (rmtdeploy datasets list) or an ImageFolder",
    )
    parser.add_argument(
        "--parity-images",
        type=int,
        default=stage.DEFAULT_PARITY_IMAGES,
        metavar="N",
        help=f"validation images compared with --data (default {stage.DEFAULT_PARITY_IMAGES})",
    )
    parser.add_argument(
        "--batch", type=int, metavar="N", help="batch to trace and check (default: the target's)"
    )
    parser.add_argument("--labels", metavar="FILE", help="class names, one per line, for the metadata")
    parser.add_argument("--no-simplify", action="store_true", help="keep the graph as the exporter wrote it")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write <out stem>.int8.onnx: Q/DQ static INT8 (per-channel weights, symmetric) for ONNX Runtime "
        "and TensorRT, calibrated on --data training images (built-in mnist5k when no --data is given)",
    )
    parser.add_argument("--calibration-images", type=int, default=stage.DEFAULT_CALIBRATION_IMAGES, metavar="N",
                        help=f"images to calibrate INT8 ranges on (default {stage.DEFAULT_CALIBRATION_IMAGES})")  # fmt: skip
    parser.add_argument("--calibration-method", default="minmax", choices=("minmax", "percentile", "entropy"),
                        help="how INT8 ranges are set from the calibration activations (default minmax)")  # fmt: skip
    parser.add_argument("--atol", type=float, default=stage.DEFAULT_ATOL, help="parity tolerance (absolute)")
    parser.add_argument("--rtol", type=float, default=stage.DEFAULT_RTOL, help="parity tolerance (relative)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from rmtdeploy.exporting.stage import export

    if (args.pruned is None) == (args.model is None):
        raise RmtdeployError("give either --pruned DIR (a pruned or fine-tuned folder) or --model NAME")
    if args.pruned is not None and (args.weights or args.checkpoint or args.num_classes):
        raise RmtdeployError(
            "--weights, --checkpoint and --num-classes go with --model; --pruned holds its own"
        )
    what = args.pruned if args.pruned is not None else ui.model_source(args)
    with ui.spinner(f"exporting {args.pruned or args.model}", enabled=not args.json) as status:
        run_ = export(
            what,
            args.out,
            target=args.target,
            data=args.data,
            parity_images=args.parity_images,
            labels=_read_labels(args.labels),
            batch=args.batch,
            simplify=not args.no_simplify,
            atol=args.atol,
            rtol=args.rtol,
            int8=args.int8,
            calibration_images=args.calibration_images,
            calibration_method=args.calibration_method,
            force=args.force,
            status=status,
        )
    if args.json:
        print(json.dumps(run_.to_dict(), indent=2))
        return 0
    result = run_.result
    console = ui.console()
    console.print(
        f"wrote {result.path} ({result.file_bytes / 1e6:.1f} MB, {result.num_nodes} nodes, opset {result.opset}, "
        f"input {list(result.input_shape)}, {result.backend} form, {result.simplify_note}) in {run_.wall_s:.1f} s"
    )
    for parity in result.parity:
        console.print(f"parity on {parity.summary()}")
    meta = run_.metadata
    console.print(
        f"metadata: {meta['rmtdeploy.model']}, weights {meta['rmtdeploy.weights']}, strategy "
        f"{meta['rmtdeploy.strategy']}, MACs kept {meta['rmtdeploy.keep_macs']}, mean {meta['rmtdeploy.mean']}, "
        f"std {meta['rmtdeploy.std']}, {meta['rmtdeploy.interpolation']}, "
        f"{'labels' if 'rmtdeploy.labels' in meta else 'no labels'} for {meta['rmtdeploy.num_classes']} classes"
    )
    if run_.int8 is not None:
        _print_int8(console, run_.int8)
    for warning in result.warnings:
        console.print(f"[yellow]{warning}[/yellow]")
    return 0


def _read_labels(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise RmtdeployError(f"cannot read labels file {path}: {exc.strerror or exc}") from exc
    if not names:
        raise RmtdeployError(f"labels file {path} is empty")
    return names


def _print_int8(console, int8: dict) -> None:
    ops = ", ".join(f"{n} {op}" for op, n in int8["int8_ops"].items())
    floats = ", ".join(f"{n} {op}" for op, n in int8["float_ops"].items()) or "none"
    console.print(
        f"wrote {int8['path']} ({int8['file_bytes'] / 1e6:.1f} MB, INT8 Q/DQ, calibrated on {int8['calibration_images']} "
        f"{int8['calibration']} images, {int8['method']}); int8: {ops}; kept in float: {floats}"
    )
    if int8["default_calibration"]:
        console.print(
            "[yellow]calibrated on a built-in set: give --data with your own images for real ranges[/yellow]"
        )
    check = int8.get("check")
    if check:
        console.print(
            f"top-1 on {check['images']} {check['data']} val images: fp32 {check['top1_fp32']:.2f}%, INT8 "
            f"{check['top1_int8']:.2f}% (same class for {check['agreement']:.1f}% of images)"
        )
