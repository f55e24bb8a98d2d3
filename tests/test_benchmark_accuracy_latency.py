"""benchmarks/accuracy_latency.py's reading of the plane: the table's top-1 at hybrid's measured latency, from
its two measured points, and the goal it feeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "accuracy_latency.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("accuracy_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(criterion, ms, top1, seed=0):
    return {"family": "vit", "keep": 0.5, "seed": seed, "criterion": criterion, "measured_ms": ms,
            "top1_distilled": top1, "macs_kept": 0.5, "speedup_per_mac_cut": 0.8}  # fmt: skip


def test_the_tables_top1_is_read_between_its_two_points_or_refused_when_both_are_slower(script):
    hybrid = _point("hybrid", 1.0, 80.0)
    bracket = [_point("hybrid-table", 1.2, 84.0), _point("hybrid-table-macs", 0.8, 78.0)]
    assert script._table_at(hybrid, bracket) == (pytest.approx(81.0), "bracketed")
    faster = [_point("hybrid-table", 0.9, 79.0), _point("hybrid-table-macs", 0.7, 75.0)]
    assert script._table_at(hybrid, faster) == (79.0, "both faster")
    assert script._table_at(hybrid, [_point("t", 1.1, 90.0), _point("t", 1.3, 95.0)]) == (None, "both slower")


def test_a_family_meets_the_goal_only_when_every_seed_reaches_hybrids_latency(script):
    points = [_point("hybrid", 1.0, 80.0, 0), _point("hybrid-table", 1.2, 84.0, 0), _point("hybrid-table-macs", 0.8, 78.0, 0),
              _point("hybrid", 1.0, 80.0, 1), _point("hybrid-table", 1.1, 90.0, 1), _point("hybrid-table-macs", 1.05, 90.0, 1)]  # fmt: skip
    (row,) = script.goals(points, ["vit"], [0.5])
    assert (
        row["gap"] == pytest.approx(1.0)
        and not row["met"]
        and row["how"] == {0: "bracketed", 1: "both slower"}
    )
    (row,) = script.goals(points[:3], ["vit"], [0.5])
    assert row["met"] and row["better"] and row["top1_table_at_latency"] == pytest.approx(81.0)
