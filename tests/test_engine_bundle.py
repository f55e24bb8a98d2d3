"""TensorRT's pure parts (versions, flags, trtexec lines, timing caches, the fused-attention check), the
engine stage's checks before TensorRT, the prune-time attention warning / --strict, and the Jetson
bundle. The TensorRT build itself runs only where TensorRT imports."""

from __future__ import annotations

import importlib.util
import json
import py_compile
import subprocess

import pytest
import timm
import torch

import rmtdeploy
from rmtdeploy.cli import main
from rmtdeploy.engine import (
    attention_fusion_problems,
    build_settings,
    fused_attention_problem,
    installed_tensorrt,
    timing_cache_name,
    trtexec_command,
)
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import LoadedModel, ModelSource

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_tensorrt_10_takes_precision_flags_and_11_is_strongly_typed():
    ten = build_settings("10.3.0", "fp16")
    assert ten.builder_flags == ("FP16",) and not ten.strongly_typed and ten.onnx_precision == "fp32"
    eleven = build_settings("11.0.1", "fp16")
    assert eleven.strongly_typed and eleven.builder_flags == () and eleven.onnx_precision == "fp16"
    assert build_settings("10.3", "int8", qdq=True).builder_flags == ("INT8", "FP16")
    dla = build_settings("10.3", "int8", qdq=True, dla=True)
    assert dla.dla_core == 0 and "GPU_FALLBACK" in dla.builder_flags
    with pytest.raises(RmtdeployError, match="needs a Q/DQ ONNX"):
        build_settings("10.3", "int8")


def test_trtexec_lines_follow_the_settings_and_the_shape():
    dynamic = trtexec_command(build_settings("10.3", "fp16"), "m.onnx", "m.engine", input_name="input",
                              shape=(1, 3, 224, 224), max_batch=32, static=False, workspace_mib=4096)  # fmt: skip
    assert (
        "--fp16" in dynamic
        and "--maxShapes=input:32x3x224x224" in dynamic
        and "--memPoolSize=workspace:4096M" in dynamic
    )
    static = trtexec_command(build_settings("11.0", "fp16", dla=True), "m.onnx", "m.engine", input_name="input",
                             shape=(1, 3, 224, 224), max_batch=1, static=True, workspace_mib=None)  # fmt: skip
    assert "--stronglyTyped" in static and "--fp16" not in static and "--useDLACore=0" in static
    assert not any(c.startswith("--minShapes") for c in static)
    assert timing_cache_name("10.3", "Orin", "jetson-orin-nano") != timing_cache_name(
        "10.4", "Orin", "jetson-orin-nano"
    )


@pytest.mark.parametrize(
    ("head_dim", "precision", "fuses"),
    [(64, "fp16", True), (48, "fp16", True), (12, "fp16", False), (264, "fp16", False), (36, "fp16", False),
     (64, "int8", True), (32, "int8", True), (48, "int8", False), (96, "int8", False)],
)  # fmt: skip
def test_fused_attention_head_sizes(head_dim, precision, fuses):
    assert (fused_attention_problem(head_dim, precision) is None) == fuses


def _small_vit(num_heads: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=96,
                              num_heads=num_heads, num_classes=10)  # fmt: skip
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}
    return model


def test_attention_problems_name_the_head_size():
    assert attention_fusion_problems(_small_vit(3), "int8") == []  # head_dim 32
    (problem,) = attention_fusion_problems(_small_vit(2), "int8")  # head_dim 48
    assert "2 attention block(s) with head_dim 48" in problem


def test_prune_warns_for_tensorrt_targets_and_refuses_under_strict(tmp_path):
    loaded = LoadedModel(_small_vit(2), "vit_tiny_patch16_224", "vit", "random")
    run = rmtdeploy.prune(loaded, tmp_path / "warned", keep_macs=0.7, strategy="magnitude", target="gpu-int8")
    report = json.loads((tmp_path / "warned" / "report.json").read_text())
    assert run.attention_problems and report["attention_fusion_problems"] == run.attention_problems
    with pytest.raises(RmtdeployError, match="head_dim 48.*strict refuses"):
        rmtdeploy.prune(loaded, tmp_path / "strict", keep_macs=0.7, strategy="magnitude", target="gpu-int8",
                        strict=True)  # fmt: skip
    assert not (tmp_path / "strict").exists()
    fp16 = rmtdeploy.prune(loaded, tmp_path / "fp16", keep_macs=0.7, strategy="magnitude", target="gpu-fp16")
    assert fp16.attention_problems == []  # 48 is a multiple of 8 in 16-256


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pruned"
    rmtdeploy.prune(ModelSource("resnet18", "random", num_classes=10), out, keep_macs=0.5, strategy="magnitude",
                    target="jetson")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, pruned_dir):
    root = tmp_path_factory.mktemp("onnx")
    rmtdeploy.export(pruned_dir, root / "m.onnx", int8=True, calibration_images=8)
    return root / "m.onnx", root / "m.int8.onnx"


ENGINE_CASES = [
    (["--onnx", "/no/model.onnx", "--target", "jetson"], "ONNX model not found"),
    (["--onnx", "FP32", "--target", "cpu"], "runs on onnxruntime: there is no engine to build"),
    (["--onnx", "FP32", "--target", "gpu-int8"], "needs a Q/DQ ONNX"),
    (["--onnx", "FP32", "--target", "no-board"], "unknown target 'no-board'"),
]


@pytest.mark.parametrize(("args", "phrase"), ENGINE_CASES)
def test_engine_requests_are_checked_before_tensorrt(tmp_path, onnx_files, capsys, args, phrase):
    names = {"FP32": str(onnx_files[0])}
    assert main(["engine", *[names.get(a, a) for a in args], "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and phrase in err, err
    assert not (tmp_path / "e").exists()


@pytest.mark.skipif(
    installed_tensorrt() is not None, reason="TensorRT is installed here: the build test runs"
)
def test_without_tensorrt_the_engine_stage_says_so_and_what_to_do(tmp_path, onnx_files, capsys):
    assert (
        main(["engine", "--onnx", str(onnx_files[1]), "--target", "gpu-int8", "--out", str(tmp_path / "e")])
        == 2
    )
    err = capsys.readouterr().err
    assert "TensorRT is not installed here" in err and "rmtdeploy bundle" in err


@pytest.mark.skipif(installed_tensorrt() is None, reason="TensorRT does not import here (no GPU build stack)")
def test_a_tensorrt_engine_builds_and_reports_its_layers(tmp_path, onnx_files):
    from rmtdeploy.engine.stage import build_engine

    run = build_engine(onnx_files[0], tmp_path / "e", target="gpu-fp16")
    assert (tmp_path / "e" / "model.engine").stat().st_size > 0 and run.record["layers"] > 0


@pytest.mark.skipif(installed_tensorrt() is None, reason="TensorRT does not import here (no GPU build stack)")
def test_tensorrt_engines_are_timed_by_rmtdeploy_bench(tmp_path, pruned_dir, onnx_files):
    run = rmtdeploy.bench(pruned_dir, tmp_path / "b", backend="tensorrt", target="gpu-fp16", runs=5, warmup=2)
    data = run.to_dict()
    assert data["conditions"]["backend"] == "tensorrt" and data["conditions"]["tensorrt_version"]
    assert data["models"]["pruned"]["engine"]["onnx_precision_built"] in ("fp16", "fp32")
    assert all(len(v) == 5 for v in data["samples_ms"].values())


def test_an_fp16_copy_is_fp16_inside_and_still_runs(tmp_path, onnx_files):
    import numpy as np
    import onnxruntime as ort

    from rmtdeploy.exporting.graph import fp16_copy, graph_precision

    fp32, int8 = onnx_files
    half = fp16_copy(fp32, tmp_path / "m.fp16.onnx")
    assert (graph_precision(fp32), graph_precision(half), graph_precision(int8)) == ("fp32", "fp16", "int8")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    a, b = (ort.InferenceSession(str(p)).run(None, {"input": x})[0] for p in (fp32, half))
    assert (
        b.dtype == np.float32
        and np.argmax(a) == np.argmax(b)
        and np.abs(a - b).max() < 0.05 * np.abs(a).max()
    )


@pytest.mark.parametrize(("version", "built"), [("10.3.0", "fp32"), ("11.0.0", "fp16")])
def test_tensorrt_11_builds_an_fp16_target_from_an_fp16_graph(
    tmp_path, onnx_files, monkeypatch, version, built
):
    # TensorRT 11 is strongly typed: handing it the fp32 graph would build an fp32 engine for an fp16 target.
    from rmtdeploy.engine import build as engine_build
    from rmtdeploy.engine import stage as engine_stage
    from rmtdeploy.exporting.graph import graph_precision
    from rmtdeploy.targets import load_target

    seen = {}

    def fake_build(source, settings, **kwargs):
        seen["precision"], seen["typed"] = graph_precision(source), settings.strongly_typed
        return b"engine", {"layers": 1, "precisions": {}, "fused_attention_layers": 0}

    monkeypatch.setattr(engine_build, "build_serialized", fake_build)
    monkeypatch.setattr(engine_stage, "CACHE", tmp_path / "cache")
    data, record = engine_stage.build_for_target(onnx_files[0], load_target("gpu-fp16"), version, qdq=False)
    assert data == b"engine" and seen["precision"] == built == record["onnx_precision_built"]
    assert seen["typed"] == (version.startswith("11"))


def test_engines_bind_their_dynamic_batch_and_size_outputs_from_the_context(tmp_path):
    """The on-device binding logic (shared by the Jetson script and `bench --backend tensorrt`), against a
    stand-in for TensorRT's API: inputs get the batch, buffers are sized from the bound shapes."""
    from types import SimpleNamespace

    import numpy as np

    from rmtdeploy.bundle import bench_on_device as on_device

    assert on_device.bound_shape((-1, 3, 224, 224), 8) == [8, 3, 224, 224]
    assert on_device.bound_shape((4, 3, -1, -1), 8) == [4, 3, 1, 1]
    io = {"input": ((-1, 3, 32, 32), "INPUT"), "logits": ((-1, 10), "OUTPUT")}

    class Context:
        shapes, addresses, runs = {}, {}, []

        def set_input_shape(self, name, shape):
            self.shapes[name] = list(shape)
            self.shapes["logits"] = [shape[0], 10]

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream):
            self.runs.append(stream)

    context = Context()
    engine = SimpleNamespace(num_io_tensors=2, get_tensor_name=lambda i: list(io)[i],
                             get_tensor_shape=lambda n: io[n][0], get_tensor_mode=lambda n: io[n][1],
                             get_tensor_dtype=lambda n: "float32", create_execution_context=lambda: context)  # fmt: skip
    trt = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="INPUT"), volume=lambda s: int(np.prod(s)),
                          nptype=lambda dtype: np.float32)  # fmt: skip
    runtime = SimpleNamespace(deserialize_cuda_engine=lambda data: engine if data == b"ok" else None)
    allocated, uploaded, synced = [], [], []
    cuda = SimpleNamespace(stream=SimpleNamespace(value=7), malloc=lambda n: allocated.append(n) or len(allocated),
                           upload=lambda address, data: uploaded.append((address, len(data))),
                           synchronize=lambda: synced.append(True))  # fmt: skip
    call = on_device.load_engine(trt, runtime, cuda, b"ok", batch=4)
    assert context.shapes["input"] == [4, 3, 32, 32] and allocated == [4 * 3 * 32 * 32 * 4, 4 * 10 * 4]
    assert uploaded == [(1, 4 * 3 * 32 * 32 * 4)] and context.addresses == {"input": 1, "logits": 2}
    call()
    assert context.runs == [7] and synced == [True]
    (tmp_path / "bad.engine").write_bytes(b"garbage")
    with pytest.raises(on_device.DeviceBenchError, match="TensorRT cannot load .*bad.engine"):
        on_device.load_engine(trt, runtime, cuda, tmp_path / "bad.engine")


def test_a_jetson_bundle_holds_graphs_build_script_and_on_device_benchmark(tmp_path, pruned_dir, capsys):
    out = tmp_path / "bundle"
    assert main(["bundle", "--pruned", str(pruned_dir), "--target", "jetson-agx-orin", "--int8",
                 "--calibration-images", "8", "--out", str(out)]) == 0  # fmt: skip
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "dense.onnx", "model.int8.onnx", "model.fp16.onnx", "dense.fp16.onnx", "build_engine.sh",
            "bench_on_device.py", "bundle.json", "README.md", "manifest.json"} <= names  # fmt: skip
    script = (out / "build_engine.sh").read_text()
    assert "--stronglyTyped" in script and "--fp16" in script and "model.int8.engine" in script
    subprocess.run(["bash", "-n", str(out / "build_engine.sh")], check=True)
    py_compile.compile(str(out / "bench_on_device.py"), doraise=True)
    record = json.loads((out / "bundle.json").read_text())
    assert record["target"] == "jetson-agx-orin" and record["batch"] == 8 and set(record["models"]) == {
        "dense", "pruned", "pruned-int8"}  # fmt: skip

    # What the board sends back is read by `rmtdeploy bench --import`.
    spec = importlib.util.spec_from_file_location("bench_on_device", out / "bench_on_device.py")
    on_device = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(on_device)
    ticks = iter(range(1000))
    calls = {label: (lambda: next(ticks)) for label in ("dense", "pruned")}
    samples = on_device.interleaved(calls, warmup=1, runs=5)
    samples = {label: [v + 1.0 for v in values] for label, values in samples.items()}
    result = on_device.results(samples, record, 1, 5, {"board": "NVIDIA Jetson AGX Orin", "nvpmodel": "MAXN"})
    (tmp_path / "bench.json").write_text(json.dumps(result))
    assert main(["bench", "--import", str(tmp_path / "bench.json"), "--out", str(tmp_path / "imported")]) == 0
    imported = json.loads((tmp_path / "imported" / "bench.json").read_text())
    assert imported["efficiency"][0]["mac_reduction"] > 1 and imported["conditions"]["nvpmodel"] == "MAXN"


def test_a_bundle_is_for_jetson_targets(tmp_path, pruned_dir, capsys):
    assert (
        main(["bundle", "--pruned", str(pruned_dir), "--target", "gpu-fp16", "--out", str(tmp_path / "b")])
        == 2
    )
    assert "a bundle is for Jetson targets" in capsys.readouterr().err and not (tmp_path / "b").exists()
