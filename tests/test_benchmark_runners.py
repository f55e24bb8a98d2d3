"""Runners: the interface the protocol drives, the ONNX Runtime CPU session, and the child process."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from rmtdeploy.benchmark import OrtCpuRunner, Runner, cpu_session
from rmtdeploy.benchmark.isolation import child_main, in_child_process
from rmtdeploy.benchmark.protocol import protocol_conditions, run_rounds
from rmtdeploy.benchmark.runners.onnxruntime_cpu import time_onnx_models
from rmtdeploy.errors import RmtdeployError


class RecordingRunner(Runner):
    """A runner that runs nothing and writes down what the protocol asked of it, in order."""

    backend = "recording"
    device = "nowhere"

    def __init__(self, fail_on: str | None = None):
        self.events: list[str] = []
        self.fail_on = fail_on

    def __enter__(self) -> RecordingRunner:
        self.events.append("enter")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.events.append("exit")

    def bind(self, label, model):
        if label == self.fail_on:
            raise RmtdeployError(f"cannot bind {label}")
        self.events.append(f"bind {label}")
        return lambda: self.events.append(f"run {label}")

    def conditions(self):
        return {"bound": [e for e in self.events if e.startswith("bind")]}


@pytest.fixture(scope="module")
def relu_onnx(tmp_path_factory):
    """A one-node graph (Relu) with a dynamic batch and fixed 3x4x4 images: built, not exported."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("runners") / "relu.onnx"
    onnx.save(model, str(path))
    return path


def test_run_rounds_binds_inside_the_runner_context_then_interleaves():
    runner = RecordingRunner()
    samples, added = run_rounds(runner, {"a": object(), "b": object()}, warmup=1, runs=2, interleave=True)
    assert runner.events == [
        "enter",
        "bind a",
        "bind b",
        "run a",  # warm-up round
        "run b",
        "run a",  # round 0 starts at a
        "run b",
        "run b",  # round 1 starts at b
        "run a",
        "exit",
    ]
    assert {label: len(times) for label, times in samples.items()} == {"a": 2, "b": 2}
    assert added == {"bound": ["bind a", "bind b"]}


def test_run_rounds_restores_the_runner_state_when_a_model_fails():
    runner = RecordingRunner(fail_on="b")
    with pytest.raises(RmtdeployError, match="cannot bind b"):
        run_rounds(runner, {"a": 1, "b": 2}, warmup=0, runs=1, interleave=True)
    assert runner.events == ["enter", "bind a", "exit"]


def test_protocol_conditions_name_the_runner_and_the_settings():
    c = protocol_conditions(RecordingRunner, batch=2, threads=3, warmup=0, runs=4, interleave=False)
    assert (c["backend"], c["device"], c["batch"], c["threads"], c["runs"]) == (
        "recording",
        "nowhere",
        2,
        3,
        4,
    )
    assert c["interleave"] is False and "perf_counter" in c["timer"]
    assert {"cpu_model", "cpu_count", "platform", "python"} <= set(c)


def test_cpu_session_sizes_its_own_pool_and_optimises_fully(relu_onnx):
    sess = cpu_session(relu_onnx, threads=1)
    opts = sess.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert sess.get_providers() == ["CPUExecutionProvider"]


def test_cpu_session_refuses_missing_and_broken_files(tmp_path):
    with pytest.raises(RmtdeployError, match="not found"):
        cpu_session(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    with pytest.raises(RmtdeployError, match="cannot load"):
        cpu_session(broken)


def test_ort_runner_fills_dynamic_dims_and_reports_its_sessions(relu_onnx):
    runner = OrtCpuRunner(threads=1, batch=2)
    run = runner.bind("relu", relu_onnx)
    (out,) = run()
    assert out.shape == (2, 3, 4, 4) and float(out.min()) >= 0.0  # it ran the graph on a batch of 2
    c = runner.conditions()
    assert c["input_shapes"] == {"relu": [2, 3, 4, 4]} and c["intra_op_threads"] == {"relu": 1}
    assert c["providers"] == {"relu": ["CPUExecutionProvider"]} and c["thread_pool"] == "per-session"
    assert runner.end_profiling() == {}  # no profile_dir, no traces


def test_child_runs_rmtdeploy_functions_only(tmp_path):
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"function": "os:system", "kwargs": {"command": "true"}}), encoding="utf-8")
    child_main(str(spec), str(result))
    assert "rmtdeploy functions only" in json.loads(result.read_text(encoding="utf-8"))["error"]


def test_child_process_errors_come_back_as_user_errors(tmp_path):
    with pytest.raises(RmtdeployError, match="ONNX model not found"):
        in_child_process(
            time_onnx_models,
            models={"m": str(tmp_path / "missing.onnx")},
            threads=1,
            batch=1,
            input_shape=None,
            warmup=0,
            runs=1,
            interleave=True,
            seed=0,
            thread_pool="per-session",
            allow_spinning=False,
        )
