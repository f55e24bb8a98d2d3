"""A latency table timed on a board, brought back in its ``bench.json``.

``rmtdeploy bundle --latency-table`` writes the table's plan and graphs into the bundle
(:mod:`rmtdeploy.benchmark.latency_table_plan`); on the board ``bench_on_device.py --latency-table`` times
each plan group alone with TensorRT and adds a ``latency_table`` record to ``bench.json``: the plan itself,
how it was timed (precision, warm-up, rounds) and every group's samples. The board sends samples, not
statistics: here they become the timings record (per label the median and p10–p90 in ms; per round the
speedup to the group's reference) with the statistics every local run uses
(:class:`~rmtdeploy.benchmark.stats.LatencyStats`, :class:`~rmtdeploy.benchmark.stats.SpeedupStats`), and
:func:`~rmtdeploy.benchmark.latency_table.assemble_latency_table` makes the table, its ``measured`` record
holding the board's facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning.latency_table import LatencyTable

TABLE_KEY = "latency_table"  # the record's key in bench.json
TABLE_FILE = "latency_table.json"  # what bench --import writes beside bench.json
# The board's facts (bench_on_device.board_facts, in bench.json's conditions) the table keeps.
BOARD_FACTS = {"board": "device", "target": "target", "jetpack": "jetpack", "l4t_release": "l4t_release",
               "tensorrt_version": "tensorrt", "nvpmodel": "nvpmodel", "jetson_clocks": "jetson_clocks",
               "gpu_max_freq": "gpu_max_freq", "timer": "timer"}  # fmt: skip


# How the plan's and the assembly's own messages name what they refuse, here.
_SPELLED = {"latency_table_plan": "its", "latency_table_timings": "its timings"}


def board_latency_table(data: Mapping[str, Any], where: str) -> LatencyTable | None:
    """The latency table in ``data`` (a ``bench.json`` read from ``where``), or None when it holds none; a
    record that does not fit its own plan is refused in one line."""
    from rmtdeploy.benchmark.latency_table import assemble_latency_table
    from rmtdeploy.benchmark.latency_table_plan import TablePlan

    record = data.get(TABLE_KEY)
    if record is None:
        return None
    try:
        if not isinstance(record, Mapping):
            raise ValueError("it is not a mapping")
        plan = TablePlan.from_dict(record.get("plan"), "plan")
        timings = table_timings(plan.groups, record.get("groups"))
        measured = board_conditions(data.get("conditions") or {}, record, len(plan.groups))
        return assemble_latency_table(plan, timings, measured)
    except RmtdeployError as exc:
        said = exc.render(lambda name: _SPELLED.get(name, name))
        raise RmtdeployError(f"{where}: its latency table is not usable: {said}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:160]
        raise RmtdeployError(f"{where}: its latency table is not usable: {detail}") from exc


def table_timings(planned: list[dict[str, Any]], timed: Any) -> dict[str, Any]:
    """The timings record of the plan's groups (checked by
    :class:`~rmtdeploy.benchmark.latency_table_plan.TablePlan`: each holds its reference
    among its labels) from the board's samples (one record per group, in order)."""
    from rmtdeploy.benchmark.stats import LatencyStats, SpeedupStats

    if not isinstance(timed, list) or len(timed) != len(planned):
        count = len(timed) if isinstance(timed, list) else "no"
        raise ValueError(f"the plan has {len(planned)} group(s), the board timed {count}")
    records = []
    for i, (group, record) in enumerate(zip(planned, timed, strict=True)):
        labels, reference = list(group["labels"]), group["reference"]
        if list(record["labels"]) != labels or record.get("reference") != reference:
            raise ValueError(f"group {i + 1} was timed with other labels than the plan's")
        samples = _samples(record["samples_ms"], labels, i)
        ms = {
            label: _triple(*_stats(LatencyStats.from_samples(label, values)))
            for label, values in samples.items()
        }
        speedup = {}
        for label in labels:
            if label != reference:
                s = SpeedupStats.from_samples(
                    reference, label, samples[reference], samples[label], paired=True
                )
                speedup[label] = _triple(s.median, s.p10, s.p90)
        records.append({"labels": labels, "reference": reference, "ms": ms, "speedup": speedup})
    return {"groups": records}


def board_conditions(conditions: Mapping[str, Any], record: Mapping[str, Any], groups: int) -> dict[str, Any]:
    """The table's ``measured`` record: the board's facts and how its groups were timed."""
    facts = {name: conditions[key] for key, name in BOARD_FACTS.items() if conditions.get(key) is not None}
    return {
        "backend": "tensorrt", **facts, "precision": record.get("precision"), "batch": 1,
        "runs": int(record["runs"]), "warmup": int(record["warmup"]), "interleaved": True, "groups": groups,
        "unit_timing": "whole graph with one unit narrowed, its TensorRT engine timed in a small group with the "
                       "dense one: dense median / median per-round ratio (p10-p90 spread)",
        "interactions": "layers between two units: their MACs x the two units' mean in-graph ms per MAC",
    }  # fmt: skip


def _samples(given: Any, labels: list[str], index: int) -> dict[str, np.ndarray]:
    """Each label's samples: positive milliseconds, as many for every label (interleaved rounds)."""
    samples = {}
    for label in labels:
        values = given[label]
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)
        ):
            raise ValueError(f"group {index + 1}: the samples of {label} are not positive milliseconds")
        samples[label] = np.asarray(values, dtype=float)
    if len({s.size for s in samples.values()}) != 1:
        raise ValueError(f"group {index + 1}: its labels were timed a different number of rounds")
    return samples


def _stats(s) -> tuple[float, float, float]:
    return s.median_ms, s.p10_ms, s.p90_ms


def _triple(median: float, p10: float, p90: float) -> list[float]:
    return [round(float(median), 6), round(float(p10), 6), round(float(p90), 6)]
