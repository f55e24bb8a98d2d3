"""``rmtdeploy compress``: parse, call :func:`rmtdeploy.pipeline.compress`, print where the report is."""

from __future__ import annotations

import json
import sys

from rmtdeploy.cli import ui


def add_parser(commands) -> None:
    from rmtdeploy.pipeline import recipe

    parser = commands.add_parser(
        "compress",
        help="the whole pipeline: analyze, prune, fine-tune, export (+INT8), engine, bench, bundle, report",
        description="Compress a timm model for a target in one run folder: load → analyze → prune (a MAC "
        "fraction, or the keep ratio that meets --latency-budget measured here) → fine-tune with distillation "
        "when data is given → ONNX export with parity (+ INT8 when the target or --int8 asks) → TensorRT "
        "engine where TensorRT is installed → dense vs pruned latency → Jetson bundle for Jetson targets → "
        "report.md and report.html. A recipe (--recipe, or the shipped one for --model) sets every option; "
        "flags override it. --resume continues a run and skips finished stages whose inputs are unchanged. "
        "See docs/compress.md.",
    )
    parser.add_argument("--recipe", metavar="NAME|FILE",
                        help="a shipped recipe (" + ", ".join(recipe.list_recipes()) + ") or a YAML file; "
                        "default: the shipped recipe for --model, if any")  # fmt: skip
    parser.add_argument(
        "--model", help="alias (swin_t, vit_t, deit_s, convnext_a, hiera_t, resnet18, ...) or timm name"
    )
    parser.add_argument("--weights", choices=recipe.WEIGHTS,
                        help="pretrained: timm's hub (needs network); random: untrained, for structure and latency "
                        "only; trained: trained here from scratch on the recipe's built-in dataset (cached; the "
                        "offline default for a real accuracy); checkpoint: --checkpoint FILE")  # fmt: skip
    parser.add_argument("--checkpoint", metavar="PATH", help="timm/torch state dict or .safetensors")
    ui.add_own_model_arguments(
        parser.add_argument_group("your own model (with --checkpoint; see docs/compress.md)")
    )
    parser.add_argument(
        "--target", help="deployment target or alias (jetson, cpu-ort, gpu-fp16, ...); default jetson"
    )
    parser.add_argument(
        "--strategy",
        help="magnitude | rmt | hybrid | edge-budget | dynamic | data-rmt (default: the recipe's, else rmt for "
        "Hiera, data-rmt for Swin, ConvNeXt and ResNet with data, hybrid otherwise; data-rmt reads --data, or the "
        "training set with --weights trained)",
    )
    parser.add_argument(
        "--knob", action="append", default=[], metavar="NAME=VALUE", help="strategy knob (repeatable)"
    )
    _add_budget_arguments(parser)
    parser.add_argument("--data", metavar="NAME|DIR",
                        help="built-in dataset (mnist5k, digits, sign-digits, cifar10, wesnoth-units, ...) or ImageFolder: accuracy, BN recalibration, "
                        "fine-tuning, parity on real images, INT8 calibration (default with --weights trained: "
                        "the set it trains on)")  # fmt: skip
    parser.add_argument(
        "--epochs", type=int, metavar="N", help="fine-tune epochs (0: none; default from the recipe)"
    )
    parser.add_argument(
        "--int8", choices=("auto", "on", "off"), help="INT8 graph: auto (when the target is int8), on, off"
    )
    parser.add_argument("--runs", type=int, metavar="N", help="bench: interleaved timed rounds")
    parser.add_argument("--threads", type=int, metavar="N", help="bench and budget search: CPU threads")
    parser.add_argument("--out", required=True, metavar="DIR", help="the run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--force", action="store_true", help="replace the run in --out")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
    parser.set_defaults(handler=run)


def _add_budget_arguments(parser) -> None:
    """A MAC fraction or a latency budget (with an optional device to judge it by)."""
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--keep-macs", type=float, metavar="F", help="fraction of the MACs to keep (default 0.5)"
    )
    budget.add_argument("--latency-budget", type=float, dest="latency_budget_ms", metavar="MS",
                        help="instead of --keep-macs: the largest model whose median batch-1 latency on ONNX "
                        "Runtime CPU here is within MS milliseconds (searched and measured)")  # fmt: skip
    parser.add_argument("--latency-reference", metavar="FILE",
                        help="with --latency-budget: judge the budget by the device whose bench.json this is (the "
                        "bundle's on-device results): its dense latency ÷ each trial's speedup measured here, an "
                        "estimate to confirm on the device")  # fmt: skip
    parser.add_argument("--device-results", metavar="FILE",
                        help="with --latency-budget: pick the keep ratio from the device's measured curve, the "
                        "bench.json of a bundle made with --sweep and timed on the board (monotone interpolation "
                        "between measured points; the report says it was measured there). Nothing is timed here")  # fmt: skip
    parser.add_argument("--sweep", metavar="K,K,...",
                        help="Jetson targets: the bundle adds one candidate per keep ratio (e.g. 0.3,0.4,...,0.9), "
                        "pruned from the dense model, for the board to time as one curve (recipe: bundle.sweep)")  # fmt: skip
    parser.add_argument("--latency-table", metavar="FILE",
                        help="a latency table of the model measured on the target (docs/strategies.md#latency-tables): "
                        "widths keep the most importance per measured ms; with --latency-budget the table's "
                        "prediction meets the budget (no search)")  # fmt: skip
    parser.add_argument("--latency-aware", action="store_true", default=None,
                        help="experimental, off in every recipe: keep the allocation measured fastest on ONNX Runtime "
                        "CPU among MAC-only and up to six tilted ones (docs/strategies.md#latency-aware-allocation)")  # fmt: skip


def run(args) -> int:
    from rmtdeploy.pipeline import compress

    overrides = {
        "model": args.model, "weights": args.weights, "checkpoint": args.checkpoint, "target": args.target,
        "strategy": args.strategy, "keep_macs": args.keep_macs, "latency_budget_ms": args.latency_budget_ms,
        "latency_reference": args.latency_reference, "device_results": args.device_results,
        "bundle.sweep": ui.parse_sweep(args.sweep),
        "latency_aware": args.latency_aware, "latency_table": args.latency_table, "data": args.data, "finetune.epochs": args.epochs,
        "export.int8": {"on": True, "off": False}.get(args.int8, args.int8), "bench.runs": args.runs,
        "bench.threads": args.threads,
    }  # fmt: skip
    overrides.update(
        {"num_classes": args.num_classes, "model_kwargs": ui.parse_model_kwargs(args.model_kwargs)}
    )
    overrides.update({f"input.{key}": value for key, value in ui.input_settings(args).items()})
    if args.knob:
        overrides["knobs"] = ui.parse_knobs(args.knob)
    with ui.training_progress(enabled=not args.json) as reporter:
        result = compress(args.out, recipe=args.recipe, resume=args.resume, force=args.force, reporter=reporter,
                          command=["rmtdeploy", *sys.argv[1:]] if sys.argv[0].endswith("rmtdeploy") else None,
                          **overrides)  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    for record in result.stages.values():
        note = f" ({record.reason})" if record.reason else ""
        seconds = f" {record.seconds:.1f} s" if record.seconds is not None else ""
        print(f"{record.name:9s} {record.status}{seconds}{note}")
    print(f"report: {result.report}")
    return 0
