"""The built-in datasets as a user manages them: which are here (:func:`list_datasets`), and fetching the
file a set reads once (:func:`fetch_dataset`), like installing a package. ``rmtdeploy datasets`` calls
these; nothing is decoded to answer either.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmtdeploy.data.builtin import BuiltinDataset, dataset_names, get_dataset
from rmtdeploy.data.fetch import DatasetFile, check_sha256, fetch, locate
from rmtdeploy.errors import RmtdeployError


@dataclass(frozen=True)
class DatasetStatus:
    """One built-in set: what it is, and whether its images are on this machine."""

    name: str
    description: str
    classes: int
    native_size: tuple[int, int]
    channels: int
    source: str
    present: bool
    where: str  # the package folder or file the images are read from, or how to get them

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "classes": self.classes,
                "native_size": list(self.native_size), "channels": self.channels, "source": self.source,
                "present": self.present, "where": self.where}  # fmt: skip


@dataclass(frozen=True)
class FetchRun:
    """A fetched file: where it is, its checksum, and whether this call downloaded it."""

    dataset: str
    path: Path
    sha256: str
    bytes: int
    downloaded: bool

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "path": str(self.path), "sha256": self.sha256, "bytes": self.bytes,
                "downloaded": self.downloaded}  # fmt: skip


def list_datasets() -> list[DatasetStatus]:
    """Every built-in set, and whether its images are here (a package installed, a file fetched); the
    checksum of a fetched file is checked when a set is read, not here."""
    return [_status(get_dataset(name)) for name in dataset_names()]


def _status(dataset: BuiltinDataset) -> DatasetStatus:
    if dataset.download is not None:
        try:
            path = locate(dataset.download)
        except RmtdeployError as exc:  # an environment variable naming a missing file
            present, where = False, str(exc)
        else:
            present = path is not None
            where = str(path) if present else f"not fetched (rmtdeploy datasets fetch {dataset.name})"
    else:
        spec = importlib.util.find_spec(dataset.package) if dataset.package else None
        present = spec is not None
        folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
        where = folder or (f"package {dataset.package}" if present else f"install {dataset.source}")
    return DatasetStatus(dataset.name, dataset.description, dataset.num_classes, dataset.native_size,
                         dataset.native_channels, dataset.source, present, where)  # fmt: skip


def fetch_dataset(
    name: str, *, progress: Callable[[int], Callable[[int], object] | None] | None = None
) -> FetchRun:
    """Fetch the file built-in set ``name`` reads into ``$RMTDEPLOY_CACHE/datasets`` (a plain HTTPS GET,
    kept only when its sha256 matches); a copy already there, or named by the file's environment variable,
    is checked and kept. ``progress(total_bytes)`` returns ``advance(bytes)``."""
    file = fetched_file(name)
    if os.environ.get(file.env):  # the user's copy: checked where it is, never copied or downloaded
        path, downloaded = locate(file), False
        check_sha256(path, file)
    else:
        path, downloaded = fetch(file, progress=progress)
    return FetchRun(name, path, file.sha256, file.size, downloaded)


def fetched_file(name: str) -> DatasetFile:
    """The file built-in set ``name`` is fetched as; one line when ``name`` is unknown or needs no fetch."""
    dataset = get_dataset(name)
    if dataset.download is None:
        fetched = [n for n in dataset_names() if get_dataset(n).download is not None]
        raise RmtdeployError(
            f"built-in dataset '{name}' ships inside the package {dataset.package or dataset.source}: nothing to fetch "
            f"(fetched sets: {', '.join(fetched)})"
        )
    return dataset.download
