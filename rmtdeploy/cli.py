"""The ``rmtdeploy`` command line: parse, call the library, print. Nothing here that Python users lack."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys

from rmtdeploy import __version__
from rmtdeploy.errors import RmtdeployError

EXIT_USAGE = 2
EXIT_INTERNAL = 1
# `prune --strategy dynamic --calibration DIR` distils this many steps after each pruning step unless told
# otherwise: two passes over the default 512 calibration images in batches of 32. Short: it repairs, not trains.
SHORT_DISTILL_STEPS = 32


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        required=True,
        help="alias (swin_t, vit_s, deit_s, convnext_t, hiera_t, resnet50, ...) or any timm name",
    )
    group.add_argument(
        "--weights",
        choices=("pretrained", "random", "checkpoint"),
        default="pretrained",
        help="pretrained: timm's hub (needs network); random: untrained (seeded: the same model every run), "
        "labelled so in every output; "
        "checkpoint: a local file given with --checkpoint (default: pretrained)",
    )
    group.add_argument("--checkpoint", metavar="PATH", help="timm/torch state dict or .safetensors to load")
    group.add_argument(
        "--num-classes", type=int, help="classifier width when the checkpoint has its own head"
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--force", action="store_true", help="overwrite outputs already in --out")
    parser.add_argument(
        "--json", action="store_true", help="print a machine-readable summary instead of tables"
    )


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before its error; users get the one line that says what
    is wrong (``--help`` still shows the usage). Sub-command parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from rmtdeploy.pruning.prune import HEAD_ROUNDINGS

    parser = _OneLineErrorParser(
        prog="rmtdeploy",
        description="Random-Matrix-Theory guided structured pruning and deployment of timm vision models.",
    )
    parser.add_argument("--version", action="version", version=f"rmtdeploy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = commands.add_parser(
        "analyze",
        help="Marchenko–Pastur analysis of every prunable weight matrix",
        description="Fit the Marchenko–Pastur bulk of every Linear/Conv weight, count the spikes above its "
        "edge, and write spectra.json, spectra.csv and density plots to --out.",
    )
    _add_model_arguments(analyze)
    _add_output_arguments(analyze)
    analyze.add_argument(
        "--sigma-method",
        choices=("bema", "median"),
        default="bema",
        help="noise-level estimator: BEMA quantile matching (default) or Gavish–Donoho median",
    )
    analyze.add_argument("--no-plots", action="store_true", help="skip the PNG pictures")
    analyze.set_defaults(handler=_run_analyze)

    prune = commands.add_parser(
        "prune",
        help="structured pruning: remove channels and whole heads to a MAC or parameter budget",
        description="Score channels and attention heads with a strategy, remove the weakest physically, and "
        "write model.safetensors + plan.json (rebuild with rmtdeploy.load_pruned) and report.json to --out.",
    )
    _add_model_arguments(prune)
    _add_output_arguments(prune)
    prune.add_argument(
        "--strategy",
        default="hybrid",
        help="magnitude | rmt | hybrid | edge-budget | dynamic (default: hybrid, the best of them in the "
        "accuracy benchmark); see docs/strategies.md",
    )
    budget = prune.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--keep-macs", type=float, metavar="F", help="fraction of dense MACs to keep, in (0, 1]"
    )
    budget.add_argument(
        "--keep-params", type=float, metavar="F", help="fraction of dense parameters to keep, in (0, 1]"
    )
    prune.add_argument(
        "--target",
        default="jetson",
        help="deployment target profile (recipes/targets): sets the channel multiple (default: jetson)",
    )
    prune.add_argument("--round-to", type=int, metavar="N", help="channel multiple; overrides the target's")
    prune.add_argument(
        "--min-channels", type=int, default=8, metavar="N", help="per-layer floor of kept channels"
    )
    prune.add_argument(
        "--head-rounding",
        choices=HEAD_ROUNDINGS,
        default=HEAD_ROUNDINGS[0],
        help="a block loses a head only when its ratio asks for a whole one (floor, default), or at any "
        "ratio > 0 as torch-pruning does (ceil); see docs/strategies.md",
    )
    prune.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy knob, repeatable (e.g. --knob steps=3 for dynamic); see docs/strategies.md",
    )
    prune.add_argument(
        "--calibration",
        metavar="DIR",
        help="ImageFolder directory: recalibrate BatchNorm statistics of the pruned model on it",
    )
    prune.add_argument(
        "--calibration-images", type=int, default=512, metavar="N", help="images used (default 512)"
    )
    prune.add_argument(
        "--finetune-steps",
        type=int,
        metavar="N",
        help="dynamic only: AdamW steps of label-free distillation from the dense model after each pruning "
        f"step, on the --calibration images (default: {SHORT_DISTILL_STEPS} with --calibration; 0: none)",
    )
    prune.set_defaults(handler=_run_prune)
    return parser


def _load(args):
    from rmtdeploy.models import load_model

    if args.weights == "checkpoint" and not args.checkpoint:
        raise RmtdeployError("--weights checkpoint needs --checkpoint PATH")
    return load_model(
        args.model, weights=args.weights, checkpoint=args.checkpoint, num_classes=args.num_classes
    )


@contextlib.contextmanager
def _progress_bar(description: str, enabled: bool):
    """Yields ``start(total) -> advance(n)``; a rich bar on a terminal-like stderr, nothing otherwise."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:

        def start(total: int):
            task = bar.add_task(description, total=total)
            return lambda n=1: bar.advance(task, n)

        yield start


def _run_analyze(args) -> int:
    from rmtdeploy.spectra import SpectralFitConfig
    from rmtdeploy.spectra.outputs import run_analysis, spectra_table

    loaded = _load(args)
    config = SpectralFitConfig(method=args.sigma_method)
    with _progress_bar(f"analysing {loaded.name}", enabled=not args.json) as progress:
        result = run_analysis(
            loaded, args.out, force=args.force, config=config, plots=not args.no_plots, progress=progress
        )
    summary = {
        "model": loaded.name,
        "weights": loaded.weights,
        **result.summary(),
        "files": [str(f) for f in result.files],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    console = _console()
    title = f"{loaded.name} — {loaded.weights} weights — Marchenko–Pastur fit ({args.sigma_method})"
    if loaded.is_random:
        title += " [RANDOM WEIGHTS: a null model, not a trained one]"
    console.print(spectra_table(result.spectra, title))
    share = summary["spike_free_fraction"]
    console.print(
        f"{summary['fitted']} of {summary['layers']} matrices fitted; "
        f"spike-free: {'–' if share is None else f'{share:.0%}'}; "
        f"mean SER: {'–' if summary['mean_ser'] is None else format(summary['mean_ser'], '.3f')}; "
        f"statuses: {summary['statuses']}"
    )
    console.print(f"wrote {len(result.files)} files to {args.out}")
    return 0


def _parse_knobs(pairs: list[str]) -> dict:
    knobs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RmtdeployError(f"--knob expects KEY=VALUE, got '{pair}'")
        knobs[key.replace("-", "_")] = _knob_value(value)
    return knobs


def _knob_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _run_prune(args) -> int:
    from rmtdeploy.io import atomic_write_json, check_output_dir
    from rmtdeploy.pruning import layer_report, save_pruned
    from rmtdeploy.pruning.plan import PLAN_FILE, WEIGHTS_FILE
    from rmtdeploy.scores import get_strategy
    from rmtdeploy.targets import load_target

    keep = args.keep_macs if args.keep_macs is not None else args.keep_params
    if not 0 < keep <= 1:
        raise RmtdeployError(
            f"--keep-{'macs' if args.keep_macs is not None else 'params'} must lie in (0, 1], got {keep}"
        )
    strategy = get_strategy(args.strategy, **_parse_knobs(args.knob))
    finetune_steps = _finetune_steps(args, strategy.name)
    target = load_target(args.target)
    round_to = args.round_to or target.channel_multiple
    check_output_dir(
        args.out, (WEIGHTS_FILE, PLAN_FILE, "report.json"), force=args.force
    )  # fail before the work
    loaded = _load(args)
    calibration = None
    if args.calibration:
        from rmtdeploy.data import image_folder_loader, input_batches

        loader = image_folder_loader(args.calibration, loaded.model, max_images=args.calibration_images)
        calibration = list(input_batches(loader))
    description = f"pruning {loaded.name} with {strategy.name}"
    with _spinner(description, enabled=not args.json) as status:
        hooks = {}
        if finetune_steps:
            hooks["finetune"] = _distillation_hook(
                loaded.model, calibration, finetune_steps, status, description, strategy.steps
            )
        result = strategy.prune(
            loaded.model,
            keep_macs=args.keep_macs,
            keep_params=args.keep_params,
            round_to=round_to,
            min_channels=args.min_channels,
            head_rounding=args.head_rounding,
            calibration_batches=calibration,
            model_name=loaded.name,
            **hooks,
        )
    result.plan.update(
        {
            "weights": loaded.weights,
            "target": target.name,
            "calibrated": calibration is not None,
            "finetune_steps": finetune_steps,
        }
    )
    save_pruned(args.out, result, force=True)
    report = {
        "model": loaded.name,
        "weights": loaded.weights,
        "strategy": result.plan["strategy"],
        "target": target.name,
        "round_to": round_to,
        "round_to_from": "--round-to" if args.round_to else f"target: {target.channel_multiple_from}",
        "head_rounding": args.head_rounding,
        "finetune_steps": finetune_steps,
        "macs": {
            "dense": result.dense_macs,
            "pruned": result.pruned_macs,
            "kept": round(result.macs_kept, 4),
        },
        "params": {
            "dense": result.dense_params,
            "pruned": result.pruned_params,
            "kept": round(result.params_kept, 4),
        },
        "counted_by": "torch_pruning.utils.count_ops_and_params, batch 1, input "
        + "x".join(map(str, result.plan["input_size"])),
        **layer_report(result.plan),
    }
    atomic_write_json(f"{args.out}/report.json", report)
    if args.json:
        print(
            json.dumps(
                {k: report[k] for k in ("model", "weights", "strategy", "target", "macs", "params")}, indent=2
            )
        )
        return 0
    _print_prune_summary(report, loaded, args.out)
    return 0


def _finetune_steps(args, strategy: str) -> int:
    """``--finetune-steps``, checked before any work; unset, a short distillation for dynamic with data."""
    steps = args.finetune_steps
    if steps is None:
        return SHORT_DISTILL_STEPS if strategy == "dynamic" and args.calibration else 0
    if steps < 0:
        raise RmtdeployError(f"--finetune-steps must be >= 0, got {steps}")
    if steps and strategy != "dynamic":
        raise RmtdeployError(
            "--finetune-steps applies to --strategy dynamic only; the fine-tune stage for other strategies "
            "comes later"
        )
    if steps and not args.calibration:
        raise RmtdeployError("--finetune-steps needs --calibration DIR: the images to distil on")
    return steps


def _distillation_hook(teacher, batches, steps: int, status, description: str, pruning_steps: int):
    """The dynamic strategy's ``finetune``: distil from ``teacher``, counting in the spinner.

    The teacher is the dense model itself, not a copy: pruning works on copies (``prune_model`` leaves its
    input untouched)."""
    from rmtdeploy.finetune import distill

    rounds = itertools.count(1)

    def finetune(student):
        label = f"{description}: distilling after pruning step {next(rounds)}/{pruning_steps},"
        record = distill(student, teacher, batches, steps=steps, progress=_status_counter(status, label))
        if status is not None:
            status.update(description)
        return record

    return finetune


def _status_counter(status, label: str):
    """``start(total) -> advance(n)`` that counts in the spinner's text (no bar can run inside a spinner)."""
    if status is None:
        return None

    def start(total: int):
        done = 0
        status.update(f"{label} step 0/{total}")

        def advance(n: int = 1):
            nonlocal done
            done += n
            status.update(f"{label} step {done}/{total}")

        return advance

    return start


def _print_prune_summary(report: dict, loaded, out: str) -> None:
    from rich.table import Table

    console = _console()
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
        f"channel multiple {report['round_to']} ({report['target']}); weights: {loaded.weights}"
    )
    distilled = [step for step in report["strategy"].get("steps", []) if "finetune" in step]
    if distilled:
        losses = ", ".join(
            f"{s['finetune']['loss_before']:.4g} → {s['finetune']['loss_after']:.4g}" for s in distilled
        )
        console.print(
            f"distilled from the dense model after each step ({report['finetune_steps']} AdamW steps), "
            f"KD loss before → after: {losses}"
        )
    if loaded.is_random:
        console.print(
            "[yellow]random weights: the scores rank noise; prune a trained checkpoint for a real model[/yellow]"
        )
    console.print(f"wrote model.safetensors, plan.json, report.json to {out}")


@contextlib.contextmanager
def _spinner(description: str, enabled: bool):
    """Yields rich's ``Status`` (``.update(text)``) on stderr, or None when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console

    with Console(stderr=True).status(description) as status:
        yield status


def _console():
    from rich.console import Console

    # Piped output (logs, CI) gets a wide table instead of rich's 80-column default with truncated cells.
    return Console() if sys.stdout.isatty() else Console(width=200)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except RmtdeployError as exc:
        print(f"rmtdeploy: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("rmtdeploy: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line by default, the traceback on request
        if os.environ.get("RMTDEPLOY_DEBUG"):
            raise
        print(
            f"rmtdeploy: internal error: {type(exc).__name__}: {exc} (set RMTDEPLOY_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
