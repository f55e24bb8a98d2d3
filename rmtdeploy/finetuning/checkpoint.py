"""Resumable training state, written atomically beside the output folder.

``<out>.checkpoints/last.pt`` holds everything a resumed run needs to continue as if never stopped:
the student's weights (and, for a progressively pruned student, its plan), optimizer and scaler state,
the position (epoch, batch, step), every RNG's state, the best weights so far and the metrics. It is
written at every epoch end, every ``checkpoint_every`` steps and on Ctrl-C, by rank 0 only, through a
temporary file and a rename, so a kill mid-write leaves the previous checkpoint whole. A fingerprint of
what the run was started with (input weights, data, recipe, world size) guards ``--resume`` against
continuing a different run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import atomic_save

CHECKPOINT_FILE = "last.pt"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FORMAT = 1


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where ``out``'s resumable state lives: a visible sibling, ``<out>.checkpoints``."""
    out = Path(out)
    return out.parent / f"{out.name}.checkpoints"


class Checkpoints:
    """The checkpoint folder of one output folder."""

    def __init__(self, out: str | os.PathLike, *, writer: bool):
        self.directory = checkpoint_dir(out)
        self.writer = writer  # rank 0

    @property
    def path(self) -> Path:
        return self.directory / CHECKPOINT_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def check_start(self, *, resume: bool, force: bool) -> None:
        """A fresh start must not silently drop an interrupted run; a resume needs one."""
        if resume and not self.exists():
            raise RmtdeployError(
                f"{{param}}: no interrupted run to continue ({self.path} not found)", param="resume"
            )
        if not resume and self.exists() and not force:
            raise RmtdeployError(
                f"an interrupted run's checkpoint is at {self.path}: continue it with {{param}}, or start "
                "over with force",
                param="resume",
            )

    def save(self, state: dict[str, Any]) -> None:
        if not self.writer:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_save(self.path, lambda handle: torch.save({"format": CHECKPOINT_FORMAT, **state}, handle))

    def load(self, fingerprint: dict[str, Any]) -> dict[str, Any]:
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file
            raise RmtdeployError(
                f"cannot read checkpoint {self.path}: {str(exc).splitlines()[0][:160]}"
            ) from exc
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RmtdeployError(f"{self.path} is not a checkpoint this rmtdeploy writes")
        differs = [key for key in fingerprint if state["fingerprint"].get(key) != fingerprint[key]]
        if differs:
            raise RmtdeployError(
                f"checkpoint {self.path} belongs to another run ({', '.join(differs)} differ); start over with force"
            )
        return state

    def append_metrics(self, record: dict[str, Any]) -> None:
        """The live metrics log (``tail -f``); the output folder gets the whole file at the end."""
        if self.writer:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.directory / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """After a resume: the log as of the checkpoint (steps after it are run again)."""
        if self.writer:
            self.directory.mkdir(parents=True, exist_ok=True)
            text = "".join(json.dumps(r) + "\n" for r in records)
            (self.directory / METRICS_FILE).write_text(text, encoding="utf-8")

    def remove(self) -> None:
        if self.writer:
            shutil.rmtree(self.directory, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
