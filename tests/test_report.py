"""Report stage: speedup diagnostics, the dense-vs-pruned summary and its Markdown, on given numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from torch import nn

from rmtdeploy.benchmark import LatencyReport
from rmtdeploy.benchmark.protocol import measure
from rmtdeploy.report import (
    block_breakdown,
    onnx_op_counts,
    render_speedup_markdown,
    speedup_summary,
    structure_diagnostics,
)

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"
needs_stored_results = pytest.mark.skipif(
    not (RESULTS / "prune_speedup.json").is_file(), reason="no stored speedup results"
)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)


def _pass(dense_ms: list[float], pruned_ms: list[float]) -> LatencyReport:
    samples = {"dense": np.asarray(dense_ms), "pruned": np.asarray(pruned_ms)}
    return measure(
        list(samples), lambda: samples, pairs=None, interleave=True, conditions={"interleave": True}
    )


def test_structure_diagnostics_count_widths_off_the_multiple_and_head_shapes():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 12, 1), nn.Linear(12, 10), _Attention(32, 4))
    st = structure_diagnostics(model, 8)
    # The image's 3 input channels do not count; 12 and 10 do. The attention's qkv is 32 -> 96.
    assert st["layers"] == 4
    assert st["widths_not_multiple_of_8"] == 2 and st["examples"] == ["1 16->12", "2 12->10"]
    assert st["attention_heads_x_head_dim"] == {"4x8": 1}


def test_block_breakdown_sets_each_blocks_speedup_against_its_mac_reduction():
    macs = {"dense": {"blocks.0": 2_000_000_000, "head": 1_000_000}, "pruned": {"blocks.0": 1_000_000_000}}
    ms = {"dense": {"blocks.0": 3.0, "(unscoped)": 1.0}, "pruned": {"blocks.0": 2.0, "(unscoped)": 1.0}}
    rows = {row["block"]: row for row in block_breakdown(macs, ms)}
    assert [row["block"] for row in block_breakdown(macs, ms)] == ["blocks.0", "(unscoped)", "head"]
    block = rows["blocks.0"]
    assert (block["share_of_dense_time"], block["speedup"], block["mac_reduction"]) == (0.75, 1.5, 2.0)
    assert (block["dense_gmacs_per_s"], block["pruned_gmacs_per_s"]) == (666.67, 500.0)
    assert rows["(unscoped)"]["mac_reduction"] is None  # layout and fused ops: time without MACs
    assert rows["head"]["speedup"] is None and rows["head"]["share_of_dense_time"] == 0.0


def test_onnx_op_counts_count_nodes_and_layout_ops(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2])
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Relu", ["t"], ["r"]),
        helper.make_node("Transpose", ["r"], ["u"], perm=[0, 1, 2]),
        helper.make_node("Sigmoid", ["u"], ["y"]),
    ]
    path = tmp_path / "layout.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y])), str(path))
    assert onnx_op_counts(path) == {"nodes": 4, "Transpose": 2}


def test_speedup_summary_heads_with_the_quietest_pass():
    busy = _pass([20.0, 22.0, 24.0, 26.0], [10.0, 10.0, 12.0, 13.0])
    quiet = _pass([10.0, 10.0, 12.0, 40.0], [5.0, 4.0, 6.0, 20.0])  # ratios 2, 2.5, 2, 2
    row = speedup_summary([busy, quiet], 2.5, efficiency_target=0.85, quiet_fraction=0.5)
    assert [p["headline"] for p in row["passes"]] == [False, True]
    assert (row["dense_ms"], row["pruned_ms"], row["speedup_median"]) == (11.0, 5.5, 2.0)
    assert row["efficiency"] == 0.8 and row["meets_target"] is False
    # The quietest half of the headline's rounds: rounds 0 and 1 (sums 15 and 14), ratios 2 and 2.5.
    assert (row["quiet_rounds"], row["quiet_speedup_median"]) == (2, 2.25)


@needs_stored_results
def test_render_marks_misses_and_errors_and_tables_the_missing_blocks():
    report = json.loads((RESULTS / "prune_speedup.json").read_text(encoding="utf-8"))
    families = report["families"]
    families[0]["meets_target"] = False
    families.append({"model": "broken_net", "status": "error", "error": "ValueError: a|b"})
    text = render_speedup_markdown(report, efficiency_target=0.85, quiet_fraction=0.25)
    lines = text.splitlines()
    assert lines[0] == "# Pruning speedup (ONNX Runtime CPU)"
    header = next(line for line in lines if line.startswith("| model |"))
    row = next(line for line in lines if line.startswith(f"| {families[0]['model']} |"))
    assert row.count("|") == header.count("|") and "**no**" in row
    assert "| broken_net | error: ValueError: a/b |" in text  # a "|" in the error must not split the cell
    assert f"### {families[0]['model']}: per block" in text  # only the family below target gets a table


@needs_stored_results
def test_stored_speedup_results_render_to_the_stored_markdown():
    report = json.loads((RESULTS / "prune_speedup.json").read_text(encoding="utf-8"))
    text = render_speedup_markdown(report, efficiency_target=0.85, quiet_fraction=0.25)
    assert text == (RESULTS / "prune_speedup.md").read_text(encoding="utf-8")
