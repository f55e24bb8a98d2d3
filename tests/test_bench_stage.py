"""The benchmark stage (``rmtdeploy bench`` / ``rmtdeploy.bench``): dense vs pruned (and INT8) timed
interleaved, written as one unit, results from elsewhere imported into the same tables, bad input as
one line. Timings are never asserted, only their bookkeeping."""

from __future__ import annotations

import json

import pytest
import torch

import rmtdeploy
from rmtdeploy.cli import main
from rmtdeploy.engine import installed_tensorrt

pytestmark = pytest.mark.usefixtures("single_torch_thread")

QUICK = ["--runs", "3", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pruned"
    torch.set_num_threads(1)
    args = ["prune", "--model", "resnet18", "--weights", "random", "--keep-macs", "0.5", "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def measured(tmp_path_factory, pruned_dir):
    """One ORT run with the pruned model's Q/DQ graph as the INT8 slot."""
    root = tmp_path_factory.mktemp("bench")
    rmtdeploy.export(pruned_dir, root / "pruned.onnx", int8=True, calibration_images=8)
    run = rmtdeploy.bench(
        pruned_dir, root / "out", int8=root / "pruned.int8.onnx", runs=3, warmup=1, threads=1
    )
    return run, root


def test_onnx_runtime_bench_writes_every_number_with_how_it_was_measured(measured, pruned_dir):
    run, root = measured
    assert sorted(p.name for p in run.files) == ["bench.json", "bench.md", "bench.png"]
    data = json.loads((root / "out" / "bench.json").read_text())
    assert data["format"] == "rmtdeploy-bench" and list(data["latency"]) == ["dense", "pruned", "pruned-int8"]
    assert all(len(v) == 3 for v in data["samples_ms"].values())
    c = data["conditions"]
    assert c["backend"] == "onnxruntime" and c["threads"] == 1 and c["batch"] == 1 and c["interleave"]
    assert c["thread_pool"] == "shared" and c["cpu_model"] and "onnxruntime_version" in c
    plan = json.loads((pruned_dir / "plan.json").read_text())
    dense_to_pruned = data["efficiency"][0]
    assert dense_to_pruned["mac_reduction"] == pytest.approx(plan["macs"]["dense"] / plan["macs"]["pruned"])
    assert dense_to_pruned["efficiency"] == pytest.approx(
        dense_to_pruned["speedup"] / dense_to_pruned["mac_reduction"]
    )
    stats = data["latency"]["pruned"]
    assert stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    markdown = (root / "out" / "bench.md").read_text()
    assert (
        "speedup ÷ MAC reduction" in markdown
        and "AMD" in markdown
        or "Intel" in markdown
        or "Measured on" in markdown
    )
    assert (root / "out" / "bench.png").stat().st_size > 5000


def test_pytorch_eager_bench_runs_the_same_protocol(tmp_path, pruned_dir, capsys):
    assert (
        main(
            ["bench", "--pruned", str(pruned_dir), "--backend", "torch", *QUICK, "--out", str(tmp_path / "b")]
        )
        == 0
    )
    assert "dense → pruned" in capsys.readouterr().out
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert data["conditions"]["backend"] == "torch" and data["conditions"]["precision"] == "fp32"


def test_results_from_elsewhere_are_recomputed_from_their_samples(measured, tmp_path):
    _, root = measured
    data = json.loads((root / "out" / "bench.json").read_text())
    data["conditions"] = {**data["conditions"], "board": "NVIDIA Jetson Orin Nano", "backend": "tensorrt"}
    data["latency"]["pruned"]["median_ms"] = 0.001  # a number in the file is never trusted
    (tmp_path / "device.json").write_text(json.dumps(data))
    assert (
        main(["bench", "--import", str(tmp_path / "device.json"), "--out", str(tmp_path / "imported")]) == 0
    )
    again = json.loads((tmp_path / "imported" / "bench.json").read_text())
    original = json.loads((root / "out" / "bench.json").read_text())
    assert again["latency"]["pruned"] == original["latency"]["pruned"]
    assert again["conditions"]["board"] == "NVIDIA Jetson Orin Nano"
    assert "tensorrt" in (tmp_path / "imported" / "bench.md").read_text()


BAD_CASES = [
    (["--pruned", "/no/such/dir"], "pruned-model directory not found"),
    (["--pruned", "PRUNED", "--backend", "tvm"], "--backend must be one of onnxruntime, torch, torch-compile, tensorrt"),
    (["--pruned", "PRUNED", "--backend", "torch", "--int8", "PRUNED"], "INT8 ONNX file is timed with --backend onnxruntime or tensorrt"),
    (["--pruned", "PRUNED", "--target", "gpu-fp16"], "--target chooses the TensorRT build"),
    (["--pruned", "PRUNED", "--backend", "tensorrt", "--target", "cpu-ort"], "runs on onnxruntime, not TensorRT"),
    (["--pruned", "PRUNED", "--backend", "tensorrt", "--target", "no-gpu"], "unknown target 'no-gpu'"),
    (["--pruned", "PRUNED", "--backend", "tensorrt", "--int8", "FP32ONNX"], "has no Q/DQ nodes"),
    (["--pruned", "PRUNED", "--int8", "FP32ONNX"], "fp32.onnx has no Q/DQ nodes (a plain fp32 graph), so it is not an INT8 model; --int8 takes"),
    (["--pruned", "PRUNED", "--int8", "NOTJSON"], "not.json as ONNX"),
    (["--import", "NOSAMPLES", "--target", "gpu-fp16"], "--import only renders"),
    (["--pruned", "PRUNED", "--int8", "/no/int8.onnx"], "INT8 ONNX file not found"),
    (["--pruned", "PRUNED", "--runs", "0"], "runs must be >= 1"),
    (["--pruned", "PRUNED", "--device", "cuda", "--backend", "torch"], "no CUDA GPU"),
    (["--pruned", "PRUNED", "--precision", "fp16"], "apply to the PyTorch and TensorRT backends"),
    (["--import", "/no/results.json"], "results file not found"),
    (["--import", "NOTJSON"], "cannot read"),
    (["--import", "OTHERJSON"], "is not an rmtdeploy benchmark result"),
    (["--import", "NOSAMPLES"], "no usable samples_ms"),
    (["--import", "NOSAMPLES", "--int8", "x.onnx"], "--import only renders"),
    (["--pruned", "PRUNED", "--import", "NOSAMPLES"], "not allowed with argument"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "phrase"), BAD_CASES)
def test_bad_bench_input_is_one_line_and_writes_nothing(
    tmp_path, pruned_dir, capsys, monkeypatch, args, phrase
):
    import rmtdeploy.pruning.plan

    def never(*args, **kwargs):
        raise AssertionError("the models were loaded before the input was checked")

    monkeypatch.setattr(rmtdeploy.pruning.plan, "load_dense_and_pruned", never)
    (tmp_path / "not.json").write_text("{")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    (tmp_path / "nosamples.json").write_text('{"format": "rmtdeploy-bench", "samples_ms": {"dense": []}}')
    from onnx import TensorProto, helper, save

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value],
                                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])),
         str(tmp_path / "fp32.onnx"))  # fmt: skip
    names = {"PRUNED": str(pruned_dir), "NOTJSON": str(tmp_path / "not.json"), "FP32ONNX": str(tmp_path / "fp32.onnx"),
             "OTHERJSON": str(tmp_path / "other.json"), "NOSAMPLES": str(tmp_path / "nosamples.json")}  # fmt: skip
    out = tmp_path / "out"
    code = main(["bench", *[names.get(a, a) for a in args], "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and phrase in err, err
    assert not out.exists()


@pytest.mark.skipif(
    installed_tensorrt() is not None, reason="TensorRT is installed here: its timing test runs"
)
def test_without_tensorrt_bench_says_so_before_loading_anything(tmp_path, pruned_dir, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--pruned", str(pruned_dir), "--backend", "tensorrt", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        len(err.strip().splitlines()) == 1
        and "TensorRT is not installed here" in err
        and "rmtdeploy bundle" in err
    )
    assert not out.exists()


def test_an_existing_result_needs_force(measured, pruned_dir, capsys):
    _, root = measured
    before = (root / "out" / "bench.json").read_bytes()
    assert main(["bench", "--pruned", str(pruned_dir), *QUICK, "--out", str(root / "out")]) == 2
    assert "--force" in capsys.readouterr().err and (root / "out" / "bench.json").read_bytes() == before


def test_pytorch_runner_refuses_what_it_cannot_time_here():
    from rmtdeploy.benchmark import TorchRunner
    from rmtdeploy.errors import RmtdeployError

    with pytest.raises(RmtdeployError, match="fp16 PyTorch timing needs --device cuda"):
        TorchRunner(threads=1, precision="fp16")
    with pytest.raises(RmtdeployError, match="cuda_graph replays eager CUDA kernels"):
        TorchRunner(threads=1, cuda_graph=True)
