"""benchmarks/edge_coverage.py: a status re-run keeps a row's timing only for the same pruned model."""

from __future__ import annotations

import pytest
from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def edge_coverage():
    yield from load_benchmark_script("edge_coverage")


ROW = {"model": "m", "status": "ok", "input_size": [3, 224, 224], "dense_gmacs": 0.2, "macs_kept": 0.5,
       "params_kept": 0.6, "operations": 12, "heads": None, "speed": {"speedup": 1.4}}  # fmt: skip


def test_a_timing_is_kept_only_while_the_pruned_architecture_is_the_same(edge_coverage):
    same = {k: v for k, v in ROW.items() if k != "speed"}
    assert edge_coverage._same_architecture(ROW, same)
    assert not edge_coverage._same_architecture(ROW, {**same, "macs_kept": 0.49})  # other widths
    assert not edge_coverage._same_architecture(ROW, {**same, "heads": {"blocks.0.attn": {"dense": 3}}})
    assert not edge_coverage._same_architecture(ROW, {**same, "status": "refused"})
