"""Benchmark stage: report structure, interleaving protocol and per-round ratios (no wall-clock limits)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from rmtdeploy.benchmark import (
    LatencyReport,
    LatencyStats,
    SpeedupStats,
    measure_onnx_latency,
    measure_torch_latency,
    module_scope,
    onnx_node_scope,
    profile_onnx_ops,
)
from rmtdeploy.benchmark.latency import PILOT
from rmtdeploy.benchmark.profile import group_profile
from rmtdeploy.benchmark.protocol import measure, timed_rounds
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.exporting import export_onnx

SHAPE = (3, 32, 32)
MACHINE_KEYS = ("cpu_model", "cpu_simd_flags", "cpu_count", "platform", "python", "numpy_version")


def _cnn(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 4),
    )


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    """A small and a ~100x larger (in MACs) CNN, dynamic batch."""
    folder = tmp_path_factory.mktemp("bench")
    paths = {}
    for label, width in (("small", 8), ("large", 96)):
        paths[label] = export_onnx(
            _cnn(width), folder / f"{label}.onnx", input_shape=SHAPE, verify=False
        ).path
    return paths


def test_report_has_stats_speedups_and_conditions(onnx_models):
    report = measure_onnx_latency(onnx_models, warmup=1, runs=5, threads=1)

    assert list(report.models) == ["small", "large"]
    for label, stats in report.models.items():
        samples = report.samples_ms[label]
        assert stats.runs == len(samples) == 5
        # The summary is of the samples the report keeps, not of some other list.
        assert stats.median_ms == pytest.approx(float(np.median(samples)))
        assert stats.min_ms == pytest.approx(min(samples))
    # By default the first model is every other model's baseline.
    assert [(s.baseline, s.candidate) for s in report.speedups] == [("small", "large")]
    assert report.speedups[0].pairs == 5 and report.speedups[0].paired

    c = report.conditions
    for key in ("backend", "providers", "batch", "threads", "runs", "warmup", "interleave", *MACHINE_KEYS):
        assert key in c, key
    for key in ("started_unix", "wall_s", "loadavg_before", "loadavg_after"):
        assert key in c, key
    assert c["device"] == "cpu" and c["interleave"] is True
    assert c["backend"] == "onnxruntime" and c["batch"] == 1 and c["threads"] == 1 and c["runs"] == 5
    assert c["onnxruntime_version"] == ort.__version__
    assert c["providers"]["small"] == ["CPUExecutionProvider"]
    assert c["intra_op_threads"] == {"small": 1, "large": 1}
    assert c["input_shapes"]["large"] == [1, 3, 32, 32]
    assert c["thread_pool"] == "shared" and c["allow_spinning"] is True
    assert "pilot" not in c
    # Asked for, a copy of the first model goes first and is dropped (the latency table's groups run so).
    piloted = measure_onnx_latency(onnx_models, warmup=0, runs=2, threads=1, pilot=True)
    assert piloted.conditions["pilot"] == "a copy of 'small' created and timed first, then dropped"
    assert list(piloted.models) == ["small", "large"] and PILOT not in json.dumps(piloted.to_dict())
    with pytest.raises(RmtdeployError, match="is the pilot's label"):
        measure_onnx_latency({PILOT: onnx_models["small"]}, runs=1)


def test_shared_pool_does_not_leak_into_the_calling_process(onnx_models):
    # ORT refuses per-session threads once a process owns the shared pool: the pool must stay in the child,
    # and a second call may pick another size.
    measure_onnx_latency(onnx_models, warmup=0, runs=2, threads=2)
    measure_onnx_latency(onnx_models, warmup=0, runs=2, threads=1)
    sess = ort.InferenceSession(str(onnx_models["small"]), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((1, *SHAPE), np.float32)})[0].shape == (1, 4)


def test_per_session_pools_run_in_process_without_spinning(onnx_models):
    report = measure_onnx_latency(onnx_models, warmup=0, runs=3, threads=1, thread_pool="per-session")
    c = report.conditions
    assert c["thread_pool"] == "per-session" and c["allow_spinning"] is False
    assert c["intra_op_threads"] == {"small": 1, "large": 1}
    with pytest.raises(RmtdeployError, match="thread_pool must be one of"):
        measure_onnx_latency(onnx_models, runs=1, thread_pool="global")


def test_report_is_json_serialisable_with_samples(onnx_models):
    report = measure_onnx_latency(onnx_models, warmup=0, runs=3, batch=2)
    data = json.loads(json.dumps(report.to_dict(include_samples=True)))
    assert data["conditions"]["batch"] == 2
    assert len(data["samples_ms"]["large"]) == 3
    assert set(data["models"]) == {"small", "large"}


def test_explicit_pairs_and_speedup_lookup(onnx_models):
    report = measure_onnx_latency(onnx_models, warmup=1, runs=6, pairs=[("large", "small")])
    assert [(s.baseline, s.candidate) for s in report.speedups] == [("large", "small")]
    again = report.speedup("large", "small")
    assert again.median == pytest.approx(report.speedups[0].median)


def test_measure_pairs_samples_round_by_round_against_the_first_model():
    samples = {
        "dense": np.array([10.0, 20.0, 30.0, 40.0]),
        "pruned": np.array([5.0, 5.0, 30.0, 10.0]),  # ratios 2, 4, 1, 4
        "other": np.array([10.0, 10.0, 10.0, 10.0]),  # ratios 1, 2, 3, 4
    }
    conditions = {"interleave": True}
    report = measure(list(samples), lambda: samples, pairs=None, interleave=True, conditions=conditions)

    assert [(s.baseline, s.candidate) for s in report.speedups] == [("dense", "pruned"), ("dense", "other")]
    assert [s.median for s in report.speedups] == pytest.approx([3.0, 2.5])
    assert report.samples_ms["pruned"] == [5.0, 5.0, 30.0, 10.0]
    assert report.models["other"].runs == 4 and report.models["dense"].median_ms == pytest.approx(25.0)
    # The caller's conditions are completed in place with when and under what load it ran.
    assert {"started_unix", "wall_s", "loadavg_before", "loadavg_after"} <= set(conditions)


def test_latency_stats_are_the_samples_percentiles():
    stats = LatencyStats.from_samples("m", np.array([4.0, 1.0, 3.0, 2.0, 10.0, 5.0, 6.0, 7.0, 8.0, 9.0]))
    # numpy's linear percentiles of 1..10: p10 1.9, p25 3.25, p50 5.5, p75 7.75, p90 9.1.
    assert (stats.p10_ms, stats.median_ms, stats.p90_ms) == pytest.approx((1.9, 5.5, 9.1))
    assert stats.iqr_ms == pytest.approx(4.5)
    assert (stats.mean_ms, stats.min_ms, stats.runs) == (5.5, 1.0, 10)


def test_speedup_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    base = np.array([10.0, 20.0, 30.0])
    cand = np.array([5.0, 5.0, 30.0])  # ratios 2, 4, 1 -> median 2; median(base)/median(cand) = 4
    stats = SpeedupStats.from_samples("dense", "pruned", base, cand, paired=True)
    assert stats.median == pytest.approx(2.0)
    assert (stats.p10, stats.p90) == pytest.approx((1.2, 3.6)) and stats.pairs == 3


def test_interleaved_rounds_rotate_which_model_goes_first():
    calls: list[str] = []
    runners = {label: (lambda label=label: calls.append(label)) for label in "abc"}
    times = timed_rounds(runners, warmup=0, runs=3, interleave=True)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(t) == 3 for t in times.values())


def test_non_interleaved_runs_each_model_as_one_block():
    calls: list[str] = []
    runners = {label: (lambda label=label: calls.append(label)) for label in "ab"}
    timed_rounds(runners, warmup=1, runs=2, interleave=False)
    assert calls == ["a", "b", "a", "a", "b", "b"]  # warm-up round, then blocks


def test_accepts_ready_sessions(onnx_models):
    sess = ort.InferenceSession(str(onnx_models["small"]), providers=["CPUExecutionProvider"])
    report = measure_onnx_latency({"mine": sess}, warmup=0, runs=2)
    assert report.models["mine"].runs == 2 and report.speedups == []
    assert report.conditions["thread_pool"] == "caller's sessions"
    # A session cannot travel to the shared pool's child process: mixing it with paths is refused there.
    with pytest.raises(RmtdeployError, match="needs .onnx paths"):
        measure_onnx_latency({"mine": sess, "large": onnx_models["large"]}, runs=1)
    mixed = measure_onnx_latency(
        {"mine": sess, "large": onnx_models["large"]}, runs=2, thread_pool="per-session"
    )
    assert set(mixed.models) == {"mine", "large"}


def test_static_batch_mismatch_is_a_user_error(tmp_path):
    path = export_onnx(
        _cnn(8), tmp_path / "static.onnx", input_shape=SHAPE, dynamic_batch=False, verify=False
    ).path
    with pytest.raises(RmtdeployError, match="static batch of 1"):
        measure_onnx_latency({"m": path}, batch=4, runs=1)


@pytest.mark.parametrize(
    ("models", "kwargs", "message"),
    [
        ({}, {}, "no models"),
        ({"m": "/nonexistent/model.onnx"}, {}, "not found"),
        (None, {"runs": 0}, "must be >= 1"),
        (None, {"pairs": [("small", "nope")]}, "unknown model 'nope'"),
    ],
)
def test_bad_requests_are_user_errors(onnx_models, models, kwargs, message):
    with pytest.raises(RmtdeployError, match=message):
        measure_onnx_latency(onnx_models if models is None else models, **{"runs": 1, "warmup": 0, **kwargs})


def test_speedup_lookup_of_unmeasured_label_is_a_user_error():
    report = LatencyReport(models={}, speedups=[], conditions={}, samples_ms={"a": [1.0]})
    with pytest.raises(RmtdeployError, match="no latency samples for 'b'"):
        report.speedup("a", "b")


def test_torch_latency_restores_threads_and_training_mode():
    small, large = _cnn(8).train(), _cnn(32).eval()
    threads = torch.get_num_threads()
    report = measure_torch_latency(
        {"small": small, "large": large}, warmup=0, runs=3, threads=1, input_shape=SHAPE
    )
    c = report.conditions
    assert c["backend"] == "torch" and c["device"] == "cpu" and report.models["large"].runs == 3
    assert c["torch_version"] == torch.__version__ and c["input_shapes"]["small"] == [1, *SHAPE]
    assert all(key in c for key in MACHINE_KEYS)
    assert torch.get_num_threads() == threads
    assert small.training and not large.training


def test_profile_reports_time_per_op_type_for_each_model(onnx_models):
    profile = profile_onnx_ops(onnx_models, warmup=1, runs=2, threads=1)
    assert set(profile) == {"small", "large"}
    ops = profile["large"]
    assert ops and all(ms >= 0 for ms in ops.values())
    assert any("Conv" in op for op in ops)  # ORT may fuse Conv+Relu into FusedConv
    assert list(ops.values()) == sorted(ops.values(), reverse=True)


def test_profile_by_scope_uses_the_exported_module_names(onnx_models):
    profile = profile_onnx_ops({"large": onnx_models["large"]}, group_by="scope", warmup=0, runs=2, threads=1)
    # nn.Sequential children are named "0", "1", ...: the exporter scopes nodes as "/2/Conv" (ORT's
    # fusions may rename some, e.g. Conv+Relu, which then count as "(unscoped)").
    assert any(scope.isdigit() for scope in profile["large"])
    with pytest.raises(RmtdeployError, match="group_by"):
        profile_onnx_ops(onnx_models, group_by="layer")


@pytest.mark.parametrize(
    ("node", "scope"),
    [
        ("/blocks/blocks.1/attn/qkv/MatMul", "blocks.1"),
        ("/layer2/layer2.2/conv1/Conv", "layer2.2"),
        ("/layers/layers.0/blocks/blocks.1/Slice_1", "layers.0"),
        ("/blocks.3/mlp/fc1/MatMul_output_0", "blocks.3"),
        ("/patch_embed/proj/Conv", "patch_embed"),
        ("/Add", "(top)"),
        ("Gelu_token_92", "(unscoped)"),
    ],
)
def test_onnx_node_scope(node, scope):
    assert onnx_node_scope(node) == scope


def test_module_scope_matches_onnx_scope_for_containers():
    model = nn.Module()
    model.layer1 = nn.Sequential(nn.Conv2d(3, 3, 1))
    model.blocks = nn.ModuleList([nn.Linear(2, 2)])
    model.head = nn.Linear(2, 2)
    assert module_scope(model, "layer1.0") == "layer1.0"
    assert module_scope(model, "blocks.0") == "blocks.0"
    assert module_scope(model, "head") == "head"


def test_quietest_rounds_keep_the_least_disturbed_pairs():
    report = LatencyReport(
        models={},
        speedups=[],
        conditions={"interleave": True},
        samples_ms={"dense": [10.0, 100.0, 12.0, 90.0], "pruned": [5.0, 20.0, 6.0, 30.0]},
    )
    assert report.speedup("dense", "pruned").median == pytest.approx(2.5)  # ratios 2, 5, 2, 3
    quiet = report.speedup("dense", "pruned", quietest=0.5)  # rounds 0 and 2 have the smallest sums
    assert quiet.median == pytest.approx(2.0) and quiet.pairs == 2
    with pytest.raises(RmtdeployError, match="quietest"):
        report.speedup("dense", "pruned", quietest=0.0)


def _kernel(node: str, op: str, dur_us: float) -> dict:
    return {"cat": "Node", "name": f"{node}_kernel_time", "dur": dur_us, "args": {"op_name": op}}


def test_profile_grouping_drops_warm_up_and_keeps_the_fastest_whole_run():
    runs_us = [(1000, 1000, 1000), (300, 200, 50), (250, 400, 40)]  # one warm-up run, then two timed
    events = [{"cat": "Session", "name": "model_run", "dur": 9999}]
    for first, second, add in runs_us:
        events += [
            _kernel("/layer1/layer1.0/conv/Conv", "Conv", first),
            {"cat": "Node", "name": "/layer1/layer1.0/conv/Conv_fence_before", "dur": 7},
            _kernel("/layer1/layer1.1/conv/Conv", "Conv", second),
            _kernel("/Add", "Add", add),
        ]
    by_op = group_profile(events, "op_type", warmup=1, runs=2)
    # Conv per run: 500 then 650 us; the fastest run, not the sum of per-node minima (450).
    assert by_op == pytest.approx({"Conv": 0.5, "Add": 0.04})
    assert list(by_op) == ["Conv", "Add"]
    by_scope = group_profile(events, "scope", warmup=1, runs=2)
    assert by_scope == pytest.approx({"layer1.0": 0.25, "layer1.1": 0.2, "(top)": 0.04})
