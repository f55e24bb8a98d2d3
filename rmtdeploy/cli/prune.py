"""``rmtdeploy prune``: parse, call :func:`rmtdeploy.pruning.stage.prune`, print."""

from __future__ import annotations

import json

from rmtdeploy.cli import ui


def add_parser(commands) -> None:
    from rmtdeploy.pruning import stage

    parser = commands.add_parser(
        "prune",
        help="structured pruning: remove channels and whole heads to a MAC or parameter budget",
        description="Score channels and attention heads with a strategy, remove the weakest physically, and "
        "write model.safetensors + plan.json (rebuild with rmtdeploy.load_pruned) and report.json to --out.",
    )
    ui.add_model_arguments(parser)
    ui.add_output_arguments(parser)
    parser.add_argument(
        "--strategy",
        help=f"{' | '.join(stage.strategy_names())} (default: {stage.DEFAULT_STRATEGY}, the best data-free one in "
        "the accuracy benchmark; rmt for Hiera; with --calibration, data-rmt for the Swin, ConvNeXt and ResNet "
        "families, where it led; data-rmt needs --calibration); see docs/strategies.md",
    )
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--keep-macs", type=float, metavar="F", help="fraction of dense MACs to keep, in (0, 1]"
    )
    budget.add_argument(
        "--keep-params", type=float, metavar="F", help="fraction of dense parameters to keep, in (0, 1]"
    )
    budget.add_argument(
        "--latency-budget-ms",
        type=float,
        metavar="MS",
        help="with --latency-table: the widest model the table predicts within MS milliseconds",
    )
    parser.add_argument(
        "--target",
        default=stage.DEFAULT_TARGET,
        help=f"deployment target profile (recipes/targets): sets the channel multiple (default: "
        f"{stage.DEFAULT_TARGET})",
    )
    parser.add_argument("--round-to", type=int, metavar="N", help="channel multiple; overrides the target's")
    parser.add_argument(
        "--min-channels", type=int, default=8, metavar="N", help="per-layer floor of kept channels"
    )
    parser.add_argument(
        "--head-rounding",
        choices=stage.HEAD_ROUNDINGS,
        default=stage.HEAD_ROUNDINGS[0],
        help="a block loses a head only when its ratio asks for a whole one (floor, default), or at any "
        "ratio > 0 as torch-pruning does (ceil); see docs/strategies.md",
    )
    parser.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy knob, repeatable (e.g. --knob steps=3 for dynamic); see docs/strategies.md",
    )
    _add_deployment_arguments(parser, stage)
    _add_calibration_arguments(parser, stage)
    parser.set_defaults(handler=run)


def _add_deployment_arguments(parser, stage) -> None:
    parser.add_argument(
        "--latency-table",
        metavar="FILE",
        help="a latency table of this model measured on the target (JSON: here with "
        "rmtdeploy.benchmark.latency_table, or on the board): widths keep the most importance per measured "
        "millisecond at the budget; docs/strategies.md#latency-tables",
    )
    parser.add_argument(
        "--latency-table-trust",
        type=float,
        metavar="T",
        help="with --latency-table: each unit keeps between T x and 1/T x the width the strategy's own "
        f"allocation gives it (default {stage.DEFAULT_TABLE_TRUST:g}; 0: anywhere down to the floors; 1: the "
        "strategy's widths)",
    )
    parser.add_argument(
        "--latency-aware",
        action="store_true",
        help="experimental: meet the budget with the MAC-only allocation and up to six tilted ones, time them on ONNX "
        "Runtime CPU here and keep the fastest at equal MACs; measured x1.00-1.05 faster than MAC-only (5%% in 2 "
        "of 6 families): docs/strategies.md#latency-aware-allocation",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="TensorRT targets: refuse a plan whose attention head sizes TensorRT's fused attention cannot take "
        "(by default a warning in the summary and report.json)",
    )


def _add_calibration_arguments(parser, stage) -> None:
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help="ImageFolder directory: recalibrate BatchNorm statistics of the pruned model on it",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=stage.DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help=f"images used (default {stage.DEFAULT_CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--finetune-steps",
        type=int,
        metavar="N",
        help="strategies that fine-tune between pruning steps (dynamic): AdamW steps of label-free "
        "distillation from the dense model after each step, on the --calibration images (default: "
        f"{stage.SHORT_DISTILL_STEPS} with --calibration; 0: none)",
    )


def run(args) -> int:
    from rmtdeploy.pruning.stage import prune

    with ui.spinner(f"pruning {args.model}" + (f" with {args.strategy}" if args.strategy else ""),
                    enabled=not args.json) as status:  # fmt: skip
        run = prune(
            ui.model_source(args),
            args.out,
            keep_macs=args.keep_macs,
            keep_params=args.keep_params,
            strategy=args.strategy,
            knobs=ui.parse_knobs(args.knob),
            target=args.target,
            round_to=args.round_to,
            min_channels=args.min_channels,
            head_rounding=args.head_rounding,
            calibration=args.calibration,
            calibration_images=args.calibration_images,
            finetune_steps=args.finetune_steps,
            latency_aware=args.latency_aware,
            latency_table=args.latency_table,
            latency_budget_ms=args.latency_budget_ms,
            latency_table_trust=args.latency_table_trust,
            strict=args.strict,
            force=args.force,
            status=status,
        )
    report = run.to_dict()
    if args.json:
        keys = ("model", "weights", "strategy", "target", "macs", "params")
        print(json.dumps({key: report[key] for key in keys}, indent=2))
    else:
        _print_summary(report, args.out)
    return 0


def _print_summary(report: dict, out: str) -> None:
    from rich.table import Table

    console = ui.console()
    changed = [layer for layer in report["layers"] if layer["pruned_width"] != layer["dense_width"]]
    table = Table(
        title=f"{report['model']} — {report['strategy']['name']} — widths of {len(changed)} pruned layers"
    )
    for column in ("layer", "dense", "pruned", "kept"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in changed:
        table.add_row(
            layer["name"],
            str(layer["dense_width"]),
            str(layer["pruned_width"]),
            f"{layer['kept_fraction']:.0%}",
        )
    for block in report["heads"]:
        if block["pruned_heads"] != block["dense_heads"]:
            table.add_row(
                f"{block['name']} (heads)",
                str(block["dense_heads"]),
                str(block["pruned_heads"]),
                f"{block['kept_fraction']:.0%}",
            )
    console.print(table)
    macs, params = report["macs"], report["params"]
    console.print(
        f"MACs {macs['dense'] / 1e9:.3f} G → {macs['pruned'] / 1e9:.3f} G ({macs['kept']:.1%} kept); "
        f"params {params['dense'] / 1e6:.2f} M → {params['pruned'] / 1e6:.2f} M ({params['kept']:.1%} kept); "
        f"channel multiple {report['round_to']} ({report['target']}); weights: {report['weights']}"
    )
    _print_distillation(console, report)
    for problem in report["attention_fusion_problems"]:
        console.print(f"[yellow]TensorRT attention: {problem}[/yellow]")
    if report["weights"] == "random":
        console.print(
            "[yellow]random weights: the scores rank noise; prune a trained checkpoint for a real model[/yellow]"
        )
    console.print(f"wrote model.safetensors, plan.json, report.json to {out}")


def _print_distillation(console, report: dict) -> None:
    distilled = [step for step in report["strategy"].get("steps", []) if "finetune" in step]
    if distilled:
        losses = ", ".join(
            f"{s['finetune']['loss_before']:.4g} → {s['finetune']['loss_after']:.4g}" for s in distilled
        )
        console.print(
            f"distilled from the dense model after each step ({report['finetune_steps']} AdamW steps), "
            f"KD loss before → after: {losses}"
        )
