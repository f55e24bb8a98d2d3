"""What every benchmark records beside its numbers: how and where they were measured."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from rmtdeploy.io import atomic_write_json, atomic_write_text


def machine_conditions(what: str, goal_s: float) -> dict:
    return {
        "what": what,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_at_end": os.getloadavg(),
        "goal_s": goal_s,
    }


def write_results(
    out: Path, stem: str, conditions: dict, rows: list[dict], title: str, table: list[str], runs: str
) -> None:
    """``out/stem.json`` (conditions + rows) and ``out/stem.md`` (a header saying how, then ``table``)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", {"conditions": conditions, "results": rows})
    header = (
        f"`{conditions['what']}`; torch {conditions['torch']}, {conditions['threads']} threads, "
        f"{conditions['cpu_count']} cores ({conditions['cpu']}), load average at end "
        f"{conditions['load_average_at_end'][0]:.1f}; {runs}; goal ≤ {conditions['goal_s']:.0f} s."
    )
    atomic_write_text(out / f"{stem}.md", "\n".join([f"# {title}", "", header, "", *table]) + "\n")
