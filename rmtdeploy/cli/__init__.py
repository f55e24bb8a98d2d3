"""The ``rmtdeploy`` command line: parse, call the stage, print. Nothing here that Python users lack.

One module per command (``rmtdeploy/cli/<command>.py``) with ``add_parser(commands)`` and
``run(args) -> exit code``; :mod:`rmtdeploy.cli.ui` holds what they share. A new command is one module
and one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
import os
import sys

from rmtdeploy import __version__
from rmtdeploy.cli.ui import OneLineErrorParser, flag
from rmtdeploy.errors import RmtdeployError

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
COMMANDS = ("compress", "analyze", "prune", "finetune", "export", "engine", "bench", "bundle", "report",
            "datasets")  # fmt: skip


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog="rmtdeploy",
        description="Random-Matrix-Theory guided structured pruning and deployment of timm vision models.",
    )
    parser.add_argument("--version", action="version", version=f"rmtdeploy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        importlib.import_module(f"rmtdeploy.cli.{command}").add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors and --help: argparse has printed; return its code
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except RmtdeployError as exc:
        print(f"rmtdeploy: error: {exc.render(flag)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # a stage that checkpoints says where its checkpoint is
        print(f"rmtdeploy: interrupted; {exc or 'nothing was written'}", file=sys.stderr)
        return EXIT_INTERRUPTED
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
