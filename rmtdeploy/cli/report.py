"""``rmtdeploy report``: re-render a compress run's report.md and report.html."""

from __future__ import annotations


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="re-render a compress run's report (e.g. after importing on-device results)",
        description="Render RUN_DIR/report.md and the self-contained RUN_DIR/report.html from the run's "
        "manifest and stage outputs. Results measured on a device come in first with `rmtdeploy bench --import "
        "FILE --out RUN_DIR/device-bench`.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by rmtdeploy compress")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from rmtdeploy.io import locked
    from rmtdeploy.pipeline.run_folder import read_run
    from rmtdeploy.report.run import write_report

    read_run(args.run_dir)  # a folder holding no run is one line before the lock
    with locked(args.run_dir):
        write_report(args.run_dir, read_run(args.run_dir))
    print(f"report: {args.run_dir}/report.html")
    return 0
