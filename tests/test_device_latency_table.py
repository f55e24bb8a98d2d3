"""A latency table measured on the board: planned into the bundle, built and timed there with TensorRT,
assembled here by ``bench --import``, read by ``prune --latency-table``.

End to end with ONNX Runtime playing the board, as ``tests/test_device_sweep.py`` does for a sweep: the
bundle's own ``build_engine.sh`` against a stand-in trtexec (it writes the ONNX file's name as the engine),
the bundle's own ``bench_on_device.py`` through the TensorRT stand-in (``tests/tensorrt_api/standin.py``,
checked against the real bindings) whose executions run each graph on ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorrt_api import standin
from test_device_sweep import _fake_tensorrt_tools

import rmtdeploy
from rmtdeploy.bundle.stage import make_bundle
from rmtdeploy.cli import main
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import ModelSource
from rmtdeploy.preprocessing import InputConfig
from rmtdeploy.pruning.latency_table import load_latency_table

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SIZE = 64
MODEL = [
    "--model",
    "test_resnet",
    "--weights",
    "random",
    "--num-classes",
    "10",
    "--input-size",
    f"3,{SIZE},{SIZE}",
]


def _dense() -> ModelSource:
    return ModelSource("test_resnet", "random", num_classes=10, input=InputConfig(input_size=(3, SIZE, SIZE)))


@pytest.fixture(scope="module")
def table_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    rmtdeploy.prune(_dense(), root / "pruned", keep_macs=0.5, strategy="magnitude", target="jetson")
    make_bundle(root / "pruned", root / "bundle", target="jetson-orin-nano", latency_table=True)
    return root


class _Cudart(standin.Cudart):
    """The libcudart stand-in, also counting the most device buffers alive at once."""

    def __init__(self):
        super().__init__()
        self._peak = 0

    def cudaMalloc(self, pointer_ref, size) -> int:
        code = super().cudaMalloc(pointer_ref, size)
        self._peak = max(self._peak, len(self._live))
        return code


class _OrtRuntime(standin.Runtime):
    """TensorRT's runtime as the board gives it: each engine (the stand-in trtexec wrote its ONNX file's name)
    runs that graph on ONNX Runtime, at the graph's own input shape."""

    def __init__(self, bundle: Path):
        super().__init__({})
        self._bundle = bundle

    def deserialize_cuda_engine(self, serialized_engine) -> standin.ICudaEngine:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        graph = self._bundle / bytes(serialized_engine).decode()
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]
        image = np.random.default_rng(0).standard_normal(first.shape, dtype=np.float32)
        engine = standin.ICudaEngine(input_shape=tuple(first.shape), classes=10)
        engine._work = lambda: session.run(None, {first.name: image})
        return engine


def _trtexec_calls(bundle: Path) -> list[str]:
    log = bundle / "trtexec.log"
    return log.read_text().splitlines() if log.exists() else []


def _board(bundle: Path) -> _Cudart:
    """The bundle's own bench_on_device.py, run on 'the board' with --latency-table; its libcudart."""
    spec = importlib.util.spec_from_file_location("bench_on_device_table", bundle / "bench_on_device.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runtime, cudart, facts = _OrtRuntime(bundle), _Cudart(), script.board_facts
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", standin.Module)
        patch.setattr(standin.Module, "Runtime", lambda logger: runtime)
        patch.setattr(script, "find_cudart", lambda: cudart)
        patch.setattr(script, "board_facts", lambda v: {**facts(v), "board": "ONNX Runtime playing a Jetson"})
        assert script.main(["--runs", "5", "--warmup", "1", "--latency-table"]) == 0
    return cudart


def test_a_latency_table_is_planned_into_the_bundle_timed_on_the_board_and_read_by_prune(
    table_bundle, tmp_path, capsys
):
    bundle = table_bundle / "bundle"
    record = json.loads((bundle / "bundle.json").read_text())["latency_table"]
    plan = json.loads((bundle / "latency_table" / "plan.json").read_text())
    assert plan["model"] == "test_resnet" and plan["round_to"] == 8  # the Orin Nano's channel multiple
    models = {label for g in plan["groups"] for label in g["labels"]}
    assert record == {"plan_file": "latency_table/plan.json", "graphs": len(plan["graphs"]), "groups": len(plan["groups"]),
                      "model_graphs": len(models), "precision": "fp16"}  # fmt: skip
    assert models == {"dense", *(label for u in plan["units"].values() for label in u["labels"]),
                      *(j["label"] for j in plan["calibration"])}  # fmt: skip
    assert all((bundle / "latency_table" / graph).is_file() for graph in plan["graphs"].values())
    assert "latency_table/plan.json" in json.loads((bundle / "manifest.json").read_text())["files"]
    readme = " ".join((bundle / "README.md").read_text().split())
    assert (
        "python3 bench_on_device.py --runs 200 --latency-table" in readme
        and f"expect roughly {len(models)} times the dense build" in readme
    )

    # build_engine.sh builds every engine, the table's too; a rerun builds nothing; --latency-table builds
    # only the table's missing engine (an interrupted build resumes).
    (tmp_path / "tools").mkdir()
    env = _fake_tensorrt_tools(tmp_path / "tools", "10.3.0")
    subprocess.run(["bash", str(bundle / "build_engine.sh")], check=True, env=env, capture_output=True)
    built = _trtexec_calls(bundle)
    assert len(built) == 2 + len(plan["graphs"])  # dense, pruned, then the table's graphs
    table_calls = [c for c in built if "latency_table/" in c]
    # As the sweep's candidates (fp16 on the Orin Nano's TensorRT 10), at static batch 1.
    assert table_calls and all("--fp16" in c and "--minShapes" not in c for c in table_calls)
    assert (bundle / "latency_table" / "unit0-8.engine").read_text() == "latency_table/unit0-8.onnx"
    subprocess.run(["bash", str(bundle / "build_engine.sh")], check=True, env=env, capture_output=True)
    assert len(_trtexec_calls(bundle)) == len(built) + 2  # only dense and pruned again
    (bundle / "latency_table" / "joint0.engine").unlink()
    subprocess.run(["bash", str(bundle / "build_engine.sh"), "--latency-table"], check=True, env=env,
                   capture_output=True)  # fmt: skip
    assert _trtexec_calls(bundle)[len(built) + 2 :] == [c for c in built if "latency_table/joint0.onnx" in c]

    # On the board: the usual engines, then the table's group by group, never more than one group loaded.
    cudart = _board(bundle)
    largest = max(len(g["labels"]) for g in plan["groups"])
    assert cudart._peak == 2 * largest < 2 * len(plan["graphs"])  # an input and an output buffer per engine
    assert cudart._live == {} and cudart._streams == set()
    sent = json.loads((bundle / "bench.json").read_text())
    timed = sent["latency_table"]
    assert timed["plan"] == plan and timed["precision"] == "fp16" and timed["runs"] == 5
    assert [g["labels"] for g in timed["groups"]] == [g["labels"] for g in plan["groups"]]
    assert all(len(v) == 5 for g in timed["groups"] for v in g["samples_ms"].values())

    # Back here: bench --import assembles latency_table.json and says so.
    out = tmp_path / "imported"
    assert main(["bench", "--import", str(bundle / "bench.json"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert (
        f"latency table of test_resnet measured on ONNX Runtime playing a Jetson (TensorRT {standin.Module.__version__}"
        in said
    )
    assert f"rmtdeploy prune --latency-table {out / 'latency_table.json'}" in said
    table = load_latency_table(out / "latency_table.json")
    assert (
        table.measured["backend"] == "tensorrt"
        and table.measured["device"] == "ONNX Runtime playing a Jetson"
    )
    assert (
        table.measured["precision"] == "fp16" and table.measured["runs"] == 5 and table.measured["batch"] == 1
    )
    assert set(table.units) == set(plan["units"])
    # The statistics come from the board's samples: dense is the median of the groups' dense medians, a
    # narrowed graph's time the dense time over its median per-round speedup to its group's dense.
    groups = timed["groups"]
    dense = float(np.median([np.median(g["samples_ms"]["dense"]) for g in groups]))
    assert table.dense_ms == pytest.approx(dense, rel=1e-4)
    root, unit = next(iter(plan["units"].items()))
    label = unit["labels"][0]
    group = next(g for g in groups if label in g["labels"])
    ratio = np.median(np.asarray(group["samples_ms"]["dense"]) / np.asarray(group["samples_ms"][label]))
    assert table.units[root].ms[0] == pytest.approx(table.dense_ms / ratio, rel=1e-4)

    # prune reads it: the table's allocation for this model.
    pruned = tmp_path / "pruned"
    assert main(["prune", *MODEL, "--keep-macs", "0.6", "--latency-table", str(out / "latency_table.json"),
                 "--out", str(pruned)]) == 0  # fmt: skip
    allocation = json.loads((pruned / "plan.json").read_text())["latency_allocation"]
    assert allocation["chooser"] == "latency table" and allocation["dense_ms"] == table.dense_ms
    assert allocation["device"] == "ONNX Runtime playing a Jetson" and allocation["backend"] == "tensorrt"


def test_the_board_script_refuses_a_table_it_cannot_time_before_timing_anything(tmp_path, capsys):
    from rmtdeploy.bundle import bench_on_device as script

    with pytest.raises(SystemExit, match=r"this bundle has no latency table \(latency_table/plan.json\): make it "
                                         r"with rmtdeploy bundle --latency-table"):  # fmt: skip
        script.latency_table_request(tmp_path, asked=True)
    assert script.latency_table_request(tmp_path, asked=False) is None
    plan = {"graphs": {"dense": "dense.onnx", "layer0": "layer0.onnx"},
            "groups": [{"labels": ["dense", "layer0"], "reference": "dense"}]}  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "dense.engine").write_text("built")
    with pytest.raises(SystemExit, match=r"1 of the latency table's 2 engines are not built \(first: layer0.engine\): "
                                         r"bash build_engine.sh --latency-table builds them"):  # fmt: skip
        script.latency_table_request(tmp_path, asked=True)
    assert script.latency_table_request(tmp_path, asked=False) is None
    assert "add --latency-table to time it" in capsys.readouterr().err


def test_the_board_samples_become_per_label_medians_and_per_round_speedups_to_the_groups_reference():
    from rmtdeploy.benchmark.device_table import table_timings

    planned = [{"labels": ["dense", "a", "b"], "reference": "dense"}]
    timed = [{"labels": ["dense", "a", "b"], "reference": "dense",
              "samples_ms": {"a": [1.0, 2.0, 3.0], "b": [4.0, 4.0, 4.0], "dense": [8.0, 8.0, 9.0]}}]  # fmt: skip
    result = table_timings(planned, timed)["groups"]
    assert result[0]["ms"]["dense"][0] == 8.0 and result[0]["speedup"]["a"][0] == 4.0  # median of 8, 4, 3
    assert result[0]["speedup"]["b"] == [2.0, 2.0, 2.2] and set(result[0]["speedup"]) == {"a", "b"}
    timed[0]["samples_ms"]["b"] = [4.0, 4.0]
    with pytest.raises(ValueError, match="group 1: its labels were timed a different number of rounds"):
        table_timings(planned, timed)


@pytest.mark.parametrize("group", [{"labels": ["dense", "unit0-8"]}, {"labels": ["unit0-8"], "reference": "dense"},
                                   {"labels": ["dense", "unit0-8"], "reference": None}])  # fmt: skip
def test_a_plan_group_without_its_reference_among_its_labels_is_refused_here_and_on_the_board(
    group, tmp_path
):
    from rmtdeploy.benchmark.device_table import board_latency_table
    from rmtdeploy.benchmark.latency_table_plan import TablePlan
    from rmtdeploy.bundle import bench_on_device as script

    plan = {"format": "rmtdeploy-latency-table-plan", "version": 1,
            "graphs": {"dense": "dense.onnx", "unit0-8": "unit0-8.onnx"},
            "groups": [{"labels": ["dense"], "reference": "dense"}, group]}  # fmt: skip
    said = "group 2 has no reference graph among its labels"
    with pytest.raises(RmtdeployError, match=f"^latency_table_plan the plan: {said} \\(every group is timed"):
        TablePlan.from_dict(plan)
    with pytest.raises(
        RmtdeployError, match=f"^bench.json: its latency table is not usable: its plan: {said}"
    ):
        board_latency_table({"latency_table": {"plan": plan, "groups": []}}, "bench.json")
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    for name in ("dense", "unit0-8"):
        (tmp_path / f"{name}.engine").write_text("built")
    with pytest.raises(SystemExit, match="^bench_on_device: group 2 of the latency table's plan has no reference "
                                         "graph among its labels: make the bundle again"):  # fmt: skip
        script.latency_table_request(tmp_path, asked=True)


def test_a_bundle_latency_table_must_be_a_yes_or_no_and_compress_refuses_it_off_jetson(tmp_path):
    (tmp_path / "pruned").mkdir()
    with pytest.raises(RmtdeployError, match="latency_table must be true or false, got 'yes'"):
        make_bundle(tmp_path / "pruned", tmp_path / "b", target="jetson-orin-nano", latency_table="yes")
    with pytest.raises(RmtdeployError, match="bundle.latency_table must be true or false, got 1"):
        rmtdeploy.compress(tmp_path / "run", model="resnet18", weights="random", bundle={"latency_table": 1})
    with pytest.raises(RmtdeployError, match="bundle.latency_table adds a latency table to the Jetson bundle; target "
                                             "cpu-ort has none"):  # fmt: skip
        rmtdeploy.compress(tmp_path / "run", model="resnet18", weights="random", target="cpu-ort",
                           bundle={"latency_table": True})  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_bench_measures_the_same_table_here_on_onnx_runtime_and_prune_reads_it(
    table_bundle, tmp_path, capsys
):
    # The local path of the same three steps: the pruned folder's dense model planned, its groups timed on ONNX
    # Runtime CPU, assembled, written beside bench.json.
    out = tmp_path / "here"
    args = ["bench", "--pruned", str(table_bundle / "pruned"), "--latency-table", "--runs", "2", "--warmup", "1",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "measured here on ONNX Runtime CPU" in capsys.readouterr().out
    table = load_latency_table(out / "latency_table.json")
    board_plan = json.loads((table_bundle / "bundle" / "latency_table" / "plan.json").read_text())
    assert table.model == "test_resnet" and table.measured["backend"] == "onnxruntime-cpu"
    assert set(table.units) == set(board_plan["units"]) and table.scale > 0 and table.calibration["points"]
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", "test_resnet", "--weights", "random", "--num-classes", "10", "--input-size", "3",
                 str(SIZE), str(SIZE), "--keep-macs", "0.5", "--latency-table", str(out / "latency_table.json"),
                 "--out", str(pruned)]) == 0  # fmt: skip
    assert (
        json.loads((pruned / "plan.json").read_text())["latency_allocation"]["backend"] == "onnxruntime-cpu"
    )
