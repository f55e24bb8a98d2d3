"""The accuracy-retention benchmark's quick mode: every criterion prunes real data to the budget, and the
table, the goal check and the plot are written (the full run is `make bench-accuracy`). About 45 s: it runs in
`make test-slow`; the library it drives (rmtdeploy.retention: training, criteria, evaluation, the table) runs in
every suite through tests/test_retention.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parents[1] / "benchmarks" / "accuracy_retention.py"
CRITERIA = [
    "magnitude",
    "rmt",
    "hybrid",
    "edge-budget",
    "dynamic",
    "tp-l1",
    "tp-taylor",
    "tp-hessian",
    "tp-random",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy")
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--workers",
            "1",
            "--out",
            str(out),
            "--cache",
            str(out / "cache"),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return out


def test_every_criterion_reaches_the_budget_on_both_families(quick_run):
    results = json.loads((quick_run / "accuracy_retention.json").read_text())
    points = results["points"]
    assert {(p["family"], p["criterion"]) for p in points} == {
        (family, criterion) for family in ("resnet", "vit") for criterion in CRITERIA
    }
    for point in points:
        assert abs(point["macs_kept"] / point["keep"] - 1) <= 0.03, point
        assert 0 <= point["top1_pruned"] <= 100 and 0 <= point["top1_distilled"] <= 100
        assert point["kd_loss_after"] < point["kd_loss_before"], point  # the distillation did train
        assert point["scoring_s"] > 0
    assert results["conditions"]["settings"]["dataset"] == "digits"
    assert all(record["top1_eval"] > 10 for records in results["dense"].values() for record in records)


def test_summary_table_goal_check_and_plot_are_written(quick_run):
    results = json.loads((quick_run / "accuracy_retention.json").read_text())
    goal = results["summary"]["goals"]["resnet"]
    assert goal["best_spectral"] in ("rmt", "hybrid", "edge-budget", "dynamic")
    assert set(goal["gap_pruned_vs_l2"]) == {"0.5"}
    markdown = (quick_run / "accuracy_retention.md").read_text()
    assert "| magnitude (= TP group L2) |" in markdown and "## Goal status per family" in markdown
    assert (quick_run / "accuracy_retention.png").stat().st_size > 10_000
