"""The run folder of ``rmtdeploy compress``: one folder, one manifest, stages that resume.

Each stage writes its own output (a sub-folder written as one unit by its stage function, or one file)
and is recorded in ``manifest.json`` with a fingerprint of everything it read (its settings and the
fingerprints of the stages it builds on), its status, timing, summary and the hashes of what it wrote.
``--resume`` reuses a finished stage whose fingerprint is unchanged and whose outputs still hash as
recorded, and runs the rest. The folder is locked for the run; a folder that holds a run is replaced
only with ``force``, and a folder holding anything else is never touched.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import atomic_write_json, file_sha256, foreign_folder_error, locked, visible_entries

RUN_MANIFEST = "manifest.json"
RUN_FORMAT = "rmtdeploy-run"
RUN_VERSION = 1
# Statuses a stage can end with; "reused" is a finished stage --resume did not redo.
DONE, REUSED, NOT_RUN, FAILED, RUNNING = "done", "reused", "not-run", "failed", "running"


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts: a stage's settings and the fingerprints it builds on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def output_hashes(root: Path, outputs: list[str]) -> dict[str, str]:
    """sha256 of each output (a file; for a folder, its manifest.json, which hashes its files)."""
    hashes = {}
    for name in outputs:
        path = root / name
        if path.is_dir():
            path = path / "manifest.json"
        if path.is_file():
            hashes[name] = file_sha256(path)
    return hashes


@dataclass
class StageRecord:
    name: str
    status: str
    fingerprint: str | None = None
    seconds: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why a stage did not run, or how it failed

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RunFolder:
    """The run folder, locked while open (a context manager); stages go through :meth:`stage`."""

    def __init__(self, out: str | os.PathLike, *, resume: bool, force: bool, header: dict[str, Any]):
        self.root = Path(out)
        self.resume, self.force, self.header = resume, force, header
        self.previous: dict[str, dict[str, Any]] = {}
        self.stages: dict[str, StageRecord] = {}
        self.started = _now()
        self.created = False
        self._lock = contextlib.ExitStack()

    # -- opening -----------------------------------------------------------------------------------
    def check(self) -> None:
        """Before any work: the folder is new, empty, a run to resume, or a run to replace with force."""
        root = self.root
        entries = visible_entries(root)  # the rule every stage's folder follows (rmtdeploy.io)
        manifest = self._read_manifest()
        if manifest is None and entries:
            raise foreign_folder_error(root, entries, "run")
        if manifest is not None and not (self.resume or self.force):
            raise RmtdeployError(
                f"{root} already holds a run; continue it with {{param}} or start over with --force",
                param="resume",
            )
        if self.resume and self.force:
            raise RmtdeployError(
                "give --resume (continue a run) or {param} (start over), not both", param="force"
            )

    def __enter__(self) -> RunFolder:
        self.check()
        self.created = not self.root.exists() or not any(self.root.iterdir())
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RmtdeployError(
                f"cannot create the output folder {self.root}: {exc.strerror or exc}", param="out"
            ) from exc
        if not os.access(self.root, os.W_OK):
            raise RmtdeployError(f"cannot write into {self.root}: permission denied", param="out")
        self._lock.enter_context(locked(self.root))
        manifest = self._read_manifest()
        if manifest is not None and self.force:
            for path in self.root.iterdir():  # a run folder holds only what runs wrote
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif manifest is not None:
            self.previous = {s["name"]: s for s in manifest.get("stages", [])}
        self.save()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.created and not self._produced_anything():
            # Failed before anything worth resuming (bad weights, data that does not fit): leave no run
            # folder behind, so the corrected command needs no --force.
            self._lock.close()
            shutil.rmtree(self.root, ignore_errors=True)
            return
        try:
            for record in self.stages.values():
                if record.status == RUNNING:
                    record.status = FAILED
                    record.reason = "interrupted" if exc_type is KeyboardInterrupt else _one_line(exc)
            self.save(finished=exc_type is None)
        finally:
            self._lock.close()

    def _produced_anything(self) -> bool:
        """A stage other than loading finished: the run folder is worth resuming."""
        return any(r.status in (DONE, REUSED) and r.outputs for r in self.stages.values())

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.root / RUN_MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == RUN_FORMAT else None

    # -- stages ------------------------------------------------------------------------------------
    def stage(
        self,
        name: str,
        settings: Any,
        upstream: tuple[str, ...],
        outputs: list[str],
        run: Callable[[bool], dict[str, Any]],
        *,
        status: Callable[[str], None] | None = None,
        always: bool = False,
    ) -> StageRecord:
        """Run stage ``name`` (``run(force) -> summary``) unless --resume finds it finished with the same
        fingerprint and unchanged outputs (``always``: run it anyway); record it either way."""
        key = self.fingerprint(name, settings, upstream)
        before = self.previous.get(name)
        if (
            self.resume
            and not always
            and before is not None
            and before.get("status") in (DONE, REUSED)
            and before.get("fingerprint") == key
            and output_hashes(self.root, outputs) == before.get("outputs")
        ):
            record = StageRecord(
                name, REUSED, key, before.get("seconds"), before["outputs"], before.get("summary", {})
            )
            self.stages[name] = record
            if status:
                status(f"{name}: reused from the earlier run (same inputs, outputs unchanged)")
            self.save()
            return record
        record = StageRecord(name, RUNNING, key)
        self.stages[name] = record
        self.save()
        started = time.perf_counter()
        summary = run(True)  # the stage owns its sub-folder inside our locked run folder
        record.seconds = round(time.perf_counter() - started, 2)
        record.summary = summary
        record.outputs = output_hashes(self.root, outputs)
        record.status = DONE
        self.save()
        return record

    def fingerprint(self, name: str, settings: Any, upstream: tuple[str, ...]) -> str:
        """Stage ``name``'s fingerprint: its settings and those of the stages it reads."""
        return fingerprint(name, settings, [self.stages[u].fingerprint for u in upstream if u in self.stages])

    def interrupted_with_same_inputs(self, name: str, settings: Any, upstream: tuple[str, ...]) -> bool:
        """Resuming a run whose stage ``name`` stopped midway with these very inputs (so a checkpoint the
        stage left can be continued)."""
        before = self.previous.get(name) or {}
        return (
            self.resume
            and before.get("status") in (FAILED, RUNNING)
            and before.get("fingerprint") == self.fingerprint(name, settings, upstream)
        )

    def skip(self, name: str, reason: str) -> StageRecord:
        """Record a stage that does not run here and why (the report shows the reason)."""
        record = StageRecord(name, NOT_RUN, reason=reason)
        self.stages[name] = record
        self.save()
        return record

    def save(self, finished: bool = False) -> None:
        manifest = {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            **self.header,
            "started": self.started,
            "finished": _now() if finished else None,
            "stages": [record.to_dict() for record in self.stages.values()],
        }
        atomic_write_json(self.root / RUN_MANIFEST, manifest)


def read_run(directory: str | os.PathLike) -> dict[str, Any]:
    """A run folder's manifest, or a clear error when ``directory`` holds no run."""
    root = Path(directory)
    if not root.is_dir():
        raise RmtdeployError(f"run folder not found: {root}")
    path = root / RUN_MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise RmtdeployError(f"{root} holds no rmtdeploy compress run (no valid {RUN_MANIFEST})")
    return data


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "failed"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


__all__ = ["RunFolder", "StageRecord", "fingerprint", "read_run"]
