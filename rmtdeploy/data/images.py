"""Checking an ImageFolder's files before any work: every problem named by its file, in seconds.

A bad file found mid-epoch costs the user a crashed run hours in; so before a stage loads a model it
walks the folder once: empty class folders, empty files, files PIL cannot identify, JPEG / PNG files cut
short (their end marker missing), and greyscale files in a set of colour images (a model with 3 input
channels would silently get a replicated grey image; ``convert_grey`` allows that knowingly). Headers
and trailers only, read on a thread pool: ImageNet's 1.28 M files take minutes, not an epoch of decoding.
A file that passes this and still breaks when decoded is skipped by the loader, counted and reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rmtdeploy.errors import RmtdeployError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_TRAILER_BYTES = 1024  # JPEG encoders may write padding after the end-of-image marker


@dataclass(frozen=True)
class FolderListing:
    """An ImageFolder's classes (sorted folder names, as torchvision numbers them) and its files."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]  # (path, class index), sorted


def list_image_folder(root: Path) -> FolderListing:
    """``root/<class>/<image>`` with every class folder holding at least one image, or a clear error."""
    if not root.exists():
        raise RmtdeployError(f"data directory not found: {root}")
    if not root.is_dir():
        raise RmtdeployError(
            f"data path {root} is a file; give an ImageFolder directory (root/<class>/<image>)"
        )
    classes = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise RmtdeployError(f"{root} holds no class folders: an ImageFolder is root/<class>/<image>")
    samples = []
    for index, name in enumerate(classes):
        files = sorted(
            str(path)
            for path in (root / name).rglob("*")
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        )
        if not files:
            raise RmtdeployError(
                f"class folder {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        samples.extend((path, index) for path in files)
    return FolderListing(root, tuple(classes), tuple(samples))


def check_image_files(
    paths: list[str],
    *,
    convert_grey: bool = False,
    workers: int = 8,
    progress: Callable[[int], Callable[..., object] | None] | None = None,
) -> None:
    """Raise :class:`RmtdeployError` naming the first bad file of ``paths`` (in order)."""
    advance = progress(len(paths)) if progress is not None else None
    modes: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for path, (problem, mode) in zip(paths, pool.map(_inspect, paths, chunksize=64), strict=True):
            if problem is not None:
                raise RmtdeployError(f"bad image {path}: {problem}")
            modes[path] = mode
            if advance is not None:
                advance(1)
    if convert_grey:
        return
    colour = next((p for p, m in modes.items() if m not in GREY_MODES), None)
    grey = next((p for p, m in modes.items() if m in GREY_MODES), None)
    if colour is not None and grey is not None:
        raise RmtdeployError(
            f"bad image {grey}: greyscale ({modes[grey]}) in a set of colour images (e.g. {colour}); "
            "convert it to RGB, or allow it with {param} (its grey channel is replicated)",
            param="convert_grey",
        )


def _inspect(path: str) -> tuple[str | None, str | None]:
    """(problem, PIL mode) of one file, from its header and its last bytes."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
        if size == 0:
            return "the file is empty", None
        with Image.open(path) as image:
            mode, kind = image.mode, image.format
        with open(path, "rb") as handle:
            handle.seek(max(0, size - _TRAILER_BYTES))
            tail = handle.read()
    except UnidentifiedImageError:
        return "not an image PIL can read", None
    except (OSError, SyntaxError, ValueError) as exc:
        return (str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__), None
    if kind == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)", mode
    if kind == "PNG" and b"IEND" not in tail[-32:]:
        return "truncated PNG (no IEND chunk)", mode
    return None, mode
