"""``rmtdeploy analyze``: parse, call :func:`rmtdeploy.spectra.outputs.analyze`, print."""

from __future__ import annotations

import json

from rmtdeploy.cli import ui


def add_parser(commands) -> None:
    from rmtdeploy.spectra.outputs import SIGMA_METHODS

    parser = commands.add_parser(
        "analyze",
        help="Marchenko–Pastur analysis of every prunable weight matrix",
        description="Fit the Marchenko–Pastur bulk of every Linear/Conv weight, count the spikes above its "
        "edge, and write spectra.json, spectra.csv and density plots to --out.",
    )
    ui.add_model_arguments(parser)
    ui.add_output_arguments(parser)
    parser.add_argument(
        "--sigma-method",
        choices=SIGMA_METHODS,
        default=SIGMA_METHODS[0],
        help="noise-level estimator: BEMA quantile matching (default) or Gavish–Donoho median",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG pictures")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from rmtdeploy.spectra.outputs import analyze, spectra_table

    with ui.progress_bar(f"analysing {args.model}", enabled=not args.json) as progress:
        analysis = analyze(
            ui.model_source(args),
            args.out,
            force=args.force,
            sigma_method=args.sigma_method,
            plots=not args.no_plots,
            progress=progress,
        )
    summary = analysis.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    console = ui.console()
    title = f"{analysis.model_name} — {analysis.weights} weights — Marchenko–Pastur fit ({args.sigma_method})"
    if analysis.weights == "random":
        title += " [RANDOM WEIGHTS: a null model, not a trained one]"
    console.print(spectra_table(analysis.spectra, title))
    share, ser = summary["spike_free_fraction"], summary["mean_ser"]
    console.print(
        f"{summary['fitted']} of {summary['layers']} matrices fitted; "
        f"spike-free: {'–' if share is None else f'{share:.0%}'}; "
        f"mean SER: {'–' if ser is None else format(ser, '.3f')}; statuses: {summary['statuses']}"
    )
    console.print(f"wrote {len(analysis.files)} files to {args.out}")
    return 0
