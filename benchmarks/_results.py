"""What every benchmark records beside its numbers: how and where they were measured."""

from __future__ import annotations

from pathlib import Path

import torch

from rmtdeploy import machine
from rmtdeploy.io import atomic_write_json, atomic_write_text


def machine_conditions(what: str, goal_s: float) -> dict:
    """``what`` was measured against ``goal_s``, on this machine (:mod:`rmtdeploy.machine`).

    ``cpu`` is the CPU's model name; the rest of the machine's facts (vector extensions, platform,
    Python and library versions) follow the keys the result tables read.
    """
    facts = machine.machine_conditions()
    facts.pop("torch_version", None)  # as "torch", with the build tag of the torch imported here
    return {
        "what": what,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": facts.pop("cpu_count"),
        "cpu": facts.pop("cpu_model"),
        "load_average_at_end": machine.loadavg(),
        "goal_s": goal_s,
        **facts,
    }


def write_results(
    out: Path, stem: str, conditions: dict, rows: list[dict], title: str, table: list[str], runs: str
) -> None:
    """``out/stem.json`` (conditions + rows) and ``out/stem.md`` (a header saying how, then ``table``)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", {"conditions": conditions, "results": rows})
    load = conditions["load_average_at_end"]
    header = (
        f"`{conditions['what']}`; torch {conditions['torch']}, {conditions['threads']} thread(s), "
        f"{conditions['cpu_count']} cores ({conditions['cpu']}), load average at end "
        f"{f'{load[0]:.1f}' if load else 'unknown'}; {runs}"
        + (f"; goal ≤ {conditions['goal_s']:.0f} s." if conditions.get("goal_s") else ".")  # 0: no time goal
    )
    atomic_write_text(out / f"{stem}.md", "\n".join([f"# {title}", "", header, "", *table]) + "\n")
