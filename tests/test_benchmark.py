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
    SpeedupStats,
    _timed_rounds,
    measure_onnx_latency,
    measure_torch_latency,
    module_scope,
    onnx_node_scope,
    profile_onnx_ops,
)
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.export import export_onnx

SHAPE = (3, 32, 32)


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
    for stats in report.models.values():
        assert stats.runs == 5
        assert 0 < stats.min_ms <= stats.p10_ms <= stats.median_ms <= stats.p90_ms
        assert stats.iqr_ms >= 0
    # By default the first model is every other model's baseline.
    assert [(s.baseline, s.candidate) for s in report.speedups] == [("small", "large")]
    assert report.speedups[0].pairs == 5 and report.speedups[0].paired

    c = report.conditions
    for key in ("backend", "providers", "batch", "threads", "runs", "warmup", "interleave", "cpu_model"):
        assert key in c, key
    assert c["backend"] == "onnxruntime" and c["batch"] == 1 and c["threads"] == 1 and c["runs"] == 5
    assert c["onnxruntime_version"] == ort.__version__
    assert c["providers"]["small"] == ["CPUExecutionProvider"]
    assert c["intra_op_threads"] == {"small": 1, "large": 1}
    assert c["input_shapes"]["large"] == [1, 3, 32, 32]
    assert c["thread_pool"] == "shared" and c["allow_spinning"] is True


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


def test_much_larger_model_is_slower_per_round(onnx_models):
    # ~100x the MACs: a ratio above 1 holds on any machine, however loaded (generous on purpose).
    report = measure_onnx_latency(onnx_models, warmup=2, runs=15, threads=1)
    assert report.speedup("large", "small").median > 1.0


def test_speedup_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    base = np.array([10.0, 20.0, 30.0])
    cand = np.array([5.0, 5.0, 30.0])  # ratios 2, 4, 1 -> median 2; median(base)/median(cand) = 4
    stats = SpeedupStats.from_samples("dense", "pruned", base, cand, paired=True)
    assert stats.median == pytest.approx(2.0)
    assert stats.p10 <= stats.median <= stats.p90 and stats.pairs == 3


def test_interleaved_rounds_rotate_which_model_goes_first():
    calls: list[str] = []
    runners = {label: (lambda label=label: calls.append(label)) for label in "abc"}
    times = _timed_rounds(runners, warmup=0, runs=3, interleave=True)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(t) == 3 for t in times.values())


def test_non_interleaved_runs_each_model_as_one_block():
    calls: list[str] = []
    runners = {label: (lambda label=label: calls.append(label)) for label in "ab"}
    _timed_rounds(runners, warmup=1, runs=2, interleave=False)
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
    assert report.conditions["backend"] == "torch" and report.models["large"].runs == 3
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
