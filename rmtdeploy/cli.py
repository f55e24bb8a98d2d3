"""The ``rmtdeploy`` command line: parse, call the library, print. Nothing here that Python users lack."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from rmtdeploy import __version__
from rmtdeploy.errors import RmtdeployError

EXIT_USAGE = 2
EXIT_INTERNAL = 1


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
        help="pretrained: timm's hub (needs network); random: untrained, labelled so in every output; "
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
