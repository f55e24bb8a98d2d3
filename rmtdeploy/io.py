"""Output handling shared by every stage: atomic writes and never clobbering without ``--force``."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from rmtdeploy.errors import RmtdeployError


def check_output_dir(out: str | os.PathLike, produces: Iterable[str], force: bool = False) -> Path:
    """Refuse (before any work is done) when a file this stage writes already exists in ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RmtdeployError(f"--out {out} exists and is not a directory")
    existing = [name for name in produces if (out / name).exists()]
    if existing and not force:
        raise RmtdeployError(
            f"{out} already holds {', '.join(existing[:3])}; pass --force to overwrite or choose another --out"
        )
    return out


def prepare_output_dir(out: str | os.PathLike, produces: Iterable[str], force: bool = False) -> Path:
    """:func:`check_output_dir`, then create ``out``."""
    out = check_output_dir(out, produces, force)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _umask_mode() -> int:
    # mkstemp creates 0600 files; a finished output should get the mode a plain open() would give it.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside ``path`` then rename: readers never see a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_save(path: str | os.PathLike, save_fn) -> None:
    """Atomic write for libraries that want a filename (matplotlib, safetensors, onnx)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        save_fn(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
