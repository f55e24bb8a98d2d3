"""benchmarks/coverage_sweep.py: every model gets a row, whatever its process does, and the table says how
much of the sweep has run."""

from __future__ import annotations

import pytest
from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def sweep():
    yield from load_benchmark_script("coverage_sweep")


def test_a_model_that_does_not_finish_in_time_is_a_broken_row(sweep):
    row = sweep.run_one("resnet18", timeout_s=0.5)
    assert row["status"] == "broken" and row["reason"] == "did not finish in 0 s"


def test_the_models_own_process_hands_back_its_row(sweep):
    row = sweep.run_one("no_such_model_anywhere", timeout_s=120)
    assert row["model"] == "no_such_model_anywhere" and row["status"] == "refused"
    assert "no_such_model_anywhere" in row["reason"]


def test_gmacs_are_counted_on_the_meta_device_as_matmuls_and_convolutions(sweep):
    assert sweep.candidate_gmacs("resnet18") == pytest.approx(1.82, abs=0.01)  # timm's published 1.8 GMACs


def test_the_table_counts_each_family_and_what_is_still_to_run(sweep):
    candidates = {
        "max_gmacs": 10.0,
        "under": {"a": 1.0, "b": 2.0, "c": 3.0},
        "over": {"d": 20.0},
        "uncounted": {},
    }
    conditions = {"families": ["f", "g"], "module_of": {"a": "f", "b": "f", "c": "g"}, "strategy": "hybrid"}
    rows = [{"model": "a", "status": "ok"}, {"model": "b", "status": "refused", "reason": "no adapter | x"}]
    text = "\n".join(sweep.markdown(rows, candidates, conditions))
    assert "**2 of 3 candidates run: 1 ok, 1 refused, 0 broken.**" in text
    assert "| f | 2 | 1 | 1 | 0 | 0 |" in text and "| g | 0 | 0 | 0 | 0 | 1 |" in text
    assert "| b | 2.0 | refused | no adapter / x |" in text


def test_a_candidate_the_listing_could_not_count_is_counted_again_on_the_next_run(sweep):
    candidates = {"max_gmacs": 1.0, "under": {}, "over": {}, "uncounted": {"resnet18": "an old failure"}}
    conditions = {"module_of": {}}
    sweep._recount(candidates, conditions)
    assert candidates == {"max_gmacs": 1.0, "under": {}, "over": {"resnet18": pytest.approx(1.82, abs=0.01)},
                          "uncounted": {}}  # fmt: skip
    assert conditions["module_of"] == {"resnet18": "resnet"}
