"""Output handling shared by every stage: a stage's folder is written as one unit, under a lock.

:class:`OutputFolder` is how a stage writes: it checks the destination before any work (one rule for
every stage, :func:`check_output_dir`: new, empty, or written by this stage and replaced only with
``force``; never a folder of the user's own files), holds a lock on it for the run, lets the stage write
into a private sibling folder, and swaps the result in at the end with a ``manifest.json`` written last
(file name -> sha256). A reader (:func:`verify_output_folder`) refuses a folder without a manifest, a
run that was interrupted, or a file changed after the run wrote it. Single files outside a stage folder
(benchmark results) use the atomic writers below.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rmtdeploy.errors import RmtdeployError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "rmtdeploy-output"
MANIFEST_VERSION = 1
_STAGING_INFIX = ".partial-"
# While a run replaces an earlier one in place, the old manifest waits under this name: readers find no
# manifest (and refuse), while the stage that wrote the folder still knows it as its own.
_REPLACED_MANIFEST = ".manifest.replaced.json"


def check_output_dir(
    out: str | os.PathLike, produces: Iterable[str], force: bool = False, *, stage: str
) -> Path:
    """Refuse, before any work, an output folder ``stage`` may not write: the one rule of every stage.

    ``out`` may be new, empty (dot files aside) or a folder this stage wrote (its manifest says so);
    ``force`` replaces the files that folder's manifest lists and leaves any other file in it alone.
    Anything else is refused, ``force`` or not: a file, a folder of the user's own files, another stage's
    output. So a stage never deletes or mixes into what it did not write."""
    out = Path(out)
    entries = visible_entries(out)
    if not entries:
        return out
    written_by = _manifest_stage(out)
    if written_by is None:
        raise foreign_folder_error(out, entries, "output")
    if written_by != stage:
        raise RmtdeployError(
            f"{out} holds the output of the {written_by} stage ({_listing(entries)}); {{param}} replaces only "
            f"a folder the {stage} stage wrote: choose another output folder",
            param="force",
        )
    existing = [name for name in (*produces, MANIFEST_FILE) if (out / name).exists()]
    if not force:
        raise RmtdeployError(
            f"{out} already holds {', '.join(existing[:3])}; allow overwriting ({{param}}) or choose "
            "another output folder",
            param="force",
        )
    return out


def visible_entries(out: str | os.PathLike) -> list[str]:
    """The sorted names in the folder ``out`` that decide whether it is empty (dot files aside: a file
    browser's or an editor's); ``[]`` where it does not exist. A path that is a file is refused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RmtdeployError(f"{{param}} {out} exists and is not a directory", param="out")
    if not out.exists():
        return []
    try:
        return sorted(path.name for path in out.iterdir() if not path.name.startswith("."))
    except OSError as exc:
        raise RmtdeployError(
            f"cannot read the output folder {out}: {exc.strerror or exc}", param="out"
        ) from exc


def foreign_folder_error(out: str | os.PathLike, entries: list[str], kind: str) -> RmtdeployError:
    """The refusal of a folder holding files rmtdeploy did not write (``kind``: output, run)."""
    return RmtdeployError(
        f"{out} holds files that are not an rmtdeploy {kind} ({_listing(entries)}); {{param}} replaces only "
        f"an rmtdeploy {kind}, never files of your own: choose another output folder",
        param="force",
    )


def _listing(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _manifest_stage(directory: Path) -> str | None:
    """The stage that wrote ``directory`` by its manifest, or None (no manifest, or not one of ours)."""
    stage = (_own_manifest(directory) or {}).get("stage")
    return stage if isinstance(stage, str) else None


class OutputFolder:
    """A stage's output folder, written as one unit. Use as a context manager around the whole run::

        with OutputFolder(out, ("plan.json", ...), force=force, stage="prune") as folder:  # checked, locked
            ...work...
            folder.write_bytes("plan.json", data)   # into a private staging folder
            folder.commit()                         # swapped in, manifest.json last

    Leaving the block without ``commit`` (an error, Ctrl-C) discards the staging folder and leaves
    whatever ``out`` held untouched. A second run into the same folder gets a clear error while the
    first holds the lock.
    """

    def __init__(self, out: str | os.PathLike, produces: Iterable[str], *, force: bool, stage: str):
        self.out = Path(out)
        self.produces = tuple(produces)
        self.force = force
        self.stage = stage
        self._lock: _FolderLock | None = None
        self._staging: Path | None = None
        self.committed = False

    def __enter__(self) -> OutputFolder:
        check_output_dir(self.out, self.produces, self.force, stage=self.stage)
        _make_dirs(self.out.parent)
        self._lock = _FolderLock(self.out)
        self._lock.acquire()
        # Staging folders of runs that died are ours to clear: nobody else can hold this folder's lock.
        for stale in self.out.parent.glob(f".{self.out.name}{_STAGING_INFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self._staging is not None and self._staging.exists():
                shutil.rmtree(self._staging, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.release()

    @property
    def staging(self) -> Path:
        """The private folder files are written into until :meth:`commit`."""
        if self._staging is None:
            self._staging = Path(
                tempfile.mkdtemp(prefix=f".{self.out.name}{_STAGING_INFIX}", dir=self.out.parent)
            )
        return self._staging

    def path(self, name: str) -> Path:
        """Where to write ``name`` (for libraries that want a file name: safetensors, matplotlib)."""
        return self.staging / name

    def write_bytes(self, name: str, data: bytes) -> None:
        self.path(name).write_bytes(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json_text(obj))

    def commit(self) -> list[Path]:
        """Swap the staged files into ``out``, manifest last; returns the files' final paths."""
        staging = self.staging
        top = sorted(p.name for p in staging.iterdir())
        missing = [name for name in self.produces if name not in top]
        if missing:
            raise RuntimeError(f"stage {self.stage} did not write {', '.join(missing)}")
        # A stage may write sub-folders (a bundle's latency_table/): the manifest lists their files by
        # relative path, so every file is hashed, verified and replaced one by one like the others.
        names = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        for path in staging.rglob("*"):
            os.chmod(path, 0o777 & ~_umask() if path.is_dir() else _umask_mode())
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "stage": self.stage,
            "files": {name: file_sha256(staging / name) for name in names},
        }
        self.write_json(MANIFEST_FILE, manifest)
        os.chmod(staging, 0o777 & ~_umask())
        if not self.out.exists() or not any(self.out.iterdir()):
            os.replace(staging, self.out)  # one rename: the folder appears whole
        else:
            self._replace_files(names)
        self._staging = None
        self.committed = True
        return [self.out / name for name in top]  # the top-level entries: files and sub-folders

    def _replace_files(self, names: list[str]) -> None:
        # ``out`` holds an earlier run of this stage (perhaps with files the user added, which stay): replace
        # ours one by one. The old manifest goes first, so a crash in between leaves a folder readers refuse,
        # never a mix they trust, and one this stage still recognises as its own.
        previous = _manifest_files(self.out)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.out / MANIFEST_FILE, self.out / _REPLACED_MANIFEST)
        for name in previous:
            if name not in names:
                (self.out / name).unlink(missing_ok=True)
                _remove_empty_parents(self.out, name)
        for name in names:
            (self.out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / name, self.out / name)
        os.replace(self.staging / MANIFEST_FILE, self.out / MANIFEST_FILE)
        (self.out / _REPLACED_MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(self.staging)  # only the emptied sub-folders are left in it


def verify_output_folder(directory: str | os.PathLike, stage: str | tuple[str, ...]) -> dict[str, Any]:
    """The folder's manifest, after checking that its run finished and no file changed since.

    ``stage``: the stage (or stages) whose output the caller reads."""
    directory = Path(directory)
    stages = (stage,) if isinstance(stage, str) else tuple(stage)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise RmtdeployError(
            f"{directory} has no {MANIFEST_FILE}: the run that wrote it did not finish (or an older "
            f"rmtdeploy wrote it); run the {stages[0]} stage again"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        written_by = manifest["stage"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RmtdeployError(f"{path} is not a readable rmtdeploy manifest ({type(exc).__name__})") from exc
    if written_by not in stages:
        raise RmtdeployError(
            f"{directory} holds the output of the {written_by} stage, not of {' or '.join(stages)}"
        )
    for name, digest in files.items():
        file = directory / name
        if not file.is_file():
            raise RmtdeployError(f"{file} is missing: {directory} is incomplete")
        if file_sha256(file) != digest:
            raise RmtdeployError(
                f"{file} changed after its run wrote it (sha256 differs from {MANIFEST_FILE}); run the "
                f"{stages[0]} stage again"
            )
    return manifest


def cache_folder(name: str) -> Path:
    """rmtdeploy's cache for ``name`` (trained models, TensorRT engines, datasets): ``$RMTDEPLOY_CACHE/name``,
    default ``~/.cache/rmtdeploy/name``; the variable is read when called."""
    return Path(os.environ.get("RMTDEPLOY_CACHE", Path.home() / ".cache" / "rmtdeploy")) / name


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def _manifest_files(directory: Path) -> list[str]:
    """The files the folder's manifest lists (sub-folders' by relative path), never one outside it."""
    files = (_own_manifest(directory) or {}).get("files")
    if not isinstance(files, dict):
        return []
    return [name for name in files if _inside(name) and name != MANIFEST_FILE]


def _inside(name: str) -> bool:
    parts = name.split("/")
    return not name.startswith("/") and "\\" not in name and all(p not in ("", ".", "..") for p in parts)


def _remove_empty_parents(out: Path, name: str) -> None:
    """After ``out/name`` went: its sub-folders that are now empty (never ``out`` itself)."""
    parent = (out / name).parent
    while parent != out:
        try:
            parent.rmdir()  # only when empty: a file the user added keeps its folder
        except OSError:
            return
        parent = parent.parent


def _own_manifest(directory: Path) -> dict[str, Any] | None:
    """The folder's output manifest (or the one a replacing run left when it stopped); None if neither."""
    for name in (MANIFEST_FILE, _REPLACED_MANIFEST):
        try:
            manifest = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT:
            return manifest
    return None


def _make_dirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RmtdeployError(
            f"cannot create the output folder {path}: {exc.strerror or exc}", param="out"
        ) from exc


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """Hold the lock a stage holds on its output (a folder or a single file such as ``model.onnx``):
    a second run writing the same path gets a clear error instead of a race."""
    lock = _FolderLock(Path(path))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


class _FolderLock:
    """An exclusive ``flock`` on ``.<name>.lock`` beside the folder (or file), released when the process
    ends."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out.parent / f".{out.name}.lock"
        self._handle = None

    def acquire(self) -> None:
        import fcntl

        while True:
            try:
                handle = open(self.path, "a+")  # noqa: SIM115 (held open for the run)
            except OSError as exc:
                raise RmtdeployError(
                    f"cannot write into {self.out.parent}: {exc.strerror or exc}", param="out"
                ) from exc
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "?"
                handle.close()
                raise RmtdeployError(
                    f"{self.out} is being written by another rmtdeploy run (pid {owner}); wait for it to "
                    "finish or choose another output folder"
                ) from None
            # The previous holder may have unlinked the file between our open and our lock: retry then.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._handle.close()
        self._handle = None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_mode() -> int:
    # mkstemp creates 0600 files; a finished output should get the mode a plain open() would give it.
    return 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside ``path`` then rename: readers never see a half-written file."""
    atomic_save(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json_text(obj))


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
