"""TensorRT's pure parts (versions, flags, trtexec lines, timing caches, the fused-attention check), the
engine stage's checks before TensorRT, the prune-time attention warning / --strict, and the Jetson
bundle. The TensorRT build itself runs only where TensorRT imports."""

from __future__ import annotations

import importlib.util
import json
import py_compile
import subprocess
import sys

import onnx
import pytest
import timm
import torch
from tensorrt_api import standin

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
    assert {"--fp16", "--minShapes=input:1x3x224x224", "--maxShapes=input:32x3x224x224",
            "--memPoolSize=workspace:4096M", "--skipInference"} <= set(dynamic)  # fmt: skip
    # TensorRT tunes kernels for the opt shape: the targets say opt = max (was 1).
    assert "--optShapes=input:32x3x224x224" in dynamic
    tuned = trtexec_command(build_settings("10.3", "fp16"), "m.onnx", "m.engine", input_name="input",
                            shape=(1, 3, 224, 224), max_batch=32, opt_batch=8, static=False, workspace_mib=None)  # fmt: skip
    assert "--optShapes=input:8x3x224x224" in tuned
    static = trtexec_command(build_settings("11.0", "fp16", dla=True), "m.onnx", "m.engine", input_name="input",
                             shape=(1, 3, 224, 224), max_batch=1, static=True, workspace_mib=None)  # fmt: skip
    # 11 is strongly typed by itself; its --stronglyTyped is a deprecated no-op, --fp16 is gone.
    assert "--stronglyTyped" not in static and "--fp16" not in static and "--useDLACore=0" in static
    assert not any(c.startswith("--minShapes") for c in static)
    assert timing_cache_name("10.3", "Orin", "jetson-orin-nano") != timing_cache_name(
        "10.4", "Orin", "jetson-orin-nano"
    )


def test_tensorrt_older_than_10_is_refused_with_one_line():
    from rmtdeploy.engine.versions import profile_shapes

    with pytest.raises(RmtdeployError, match=r"TensorRT 8.6.2 is older than 10: .*JetPack 6.0 shipped 8.6"):
        build_settings("8.6.2", "fp16")
    assert profile_shapes((1, 3, 8, 8), 32) == {
        "min": [1, 3, 8, 8],
        "opt": [32, 3, 8, 8],
        "max": [32, 3, 8, 8],
    }
    with pytest.raises(RmtdeployError, match="opt batch 64 must lie in 1-32"):
        profile_shapes((1, 3, 8, 8), 32, 64)


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
    """fp32, INT8 in ONNX Runtime's form (uint8 activations, int32 biases: no target given) and INT8 in
    TensorRT's form (symmetric int8, float biases)."""
    from rmtdeploy.data import builtin_loader
    from rmtdeploy.exporting.int8 import quantize_int8

    root = tmp_path_factory.mktemp("onnx")
    rmtdeploy.export(pruned_dir, root / "m.onnx", int8=True, calibration_images=8)
    images = (
        x.numpy() for x, _ in builtin_loader("mnist5k", "train", image_size=224, batch_size=4, max_images=4)
    )
    quantize_int8(
        root / "m.onnx", root / "m.trt-int8.onnx", images, calibration="mnist5k", backend="tensorrt"
    )
    return root / "m.onnx", root / "m.int8.onnx", root / "m.trt-int8.onnx"


ENGINE_CASES = [
    (["--onnx", "/no/model.onnx", "--target", "jetson"], "ONNX model not found"),
    (["--onnx", "FP32", "--target", "cpu"], "runs on onnxruntime: there is no engine to build"),
    (["--onnx", "FP32", "--target", "gpu-int8"], "needs a Q/DQ ONNX"),
    (["--onnx", "FP32", "--target", "no-board"], "unknown target 'no-board'"),
    (
        ["--onnx", "INT8_ORT", "--target", "gpu-int8"],
        "in ONNX Runtime's form (int32 biases behind DequantizeLinear, "
        "uint8 zero points); TensorRT takes symmetric int8",
    ),
]


@pytest.mark.parametrize(("args", "phrase"), ENGINE_CASES)
def test_engine_requests_are_checked_before_tensorrt(tmp_path, onnx_files, capsys, args, phrase):
    names = {"FP32": str(onnx_files[0]), "INT8_ORT": str(onnx_files[1])}
    assert main(["engine", *[names.get(a, a) for a in args], "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and phrase in err, err
    assert not (tmp_path / "e").exists()


@pytest.mark.skipif(
    installed_tensorrt() is not None, reason="TensorRT is installed here: the build test runs"
)
def test_without_tensorrt_the_engine_stage_says_so_and_what_to_do(tmp_path, onnx_files, capsys):
    assert (
        main(["engine", "--onnx", str(onnx_files[2]), "--target", "gpu-int8", "--out", str(tmp_path / "e")])
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

    from rmtdeploy.exporting.fp16 import fp16_copy
    from rmtdeploy.exporting.onnx_file import graph_precision

    fp32, int8, _ = onnx_files
    half = fp16_copy(fp32, tmp_path / "m.fp16.onnx")
    assert (graph_precision(fp32), graph_precision(half), graph_precision(int8)) == ("fp32", "fp16", "int8")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    a, b = (ort.InferenceSession(str(p)).run(None, {"input": x})[0] for p in (fp32, half))
    assert (
        b.dtype == np.float32
        and np.argmax(a) == np.argmax(b)
        and np.abs(a - b).max() < 0.05 * np.abs(a).max()
    )


@pytest.mark.parametrize(
    ("version", "target", "graph", "built"),
    [("10.3.0", "gpu-fp16", 0, "fp32"), ("11.0.0", "gpu-fp16", 0, "fp16"),
     ("10.3.0", "gpu-int8", 2, "int8"), ("11.4.1", "gpu-int8", 2, "int8+fp16")],
)  # fmt: skip
def test_tensorrt_11_builds_from_graphs_whose_float_parts_are_fp16(
    tmp_path, onnx_files, monkeypatch, version, target, graph, built
):
    # TensorRT 11 is strongly typed: an fp32 graph builds an fp32 engine for an fp16 target, and a Q/DQ
    # graph's float parts run fp32 (10 runs them fp16 through its FP16 flag): both get fp16 float parts.
    from rmtdeploy.engine import build as engine_build
    from rmtdeploy.engine import target_build
    from rmtdeploy.exporting.onnx_file import float_precision, graph_precision
    from rmtdeploy.targets import load_target

    seen = {}

    def fake_build(source, settings, **kwargs):
        seen["graph"] = (graph_precision(source), float_precision(source))
        seen["typed"], seen["opt"] = settings.strongly_typed, kwargs["opt_batch"]
        return b"engine", {"layers": 1, "precisions": {}, "fused_attention_layers": 0}

    monkeypatch.setattr(engine_build, "build_serialized", fake_build)
    monkeypatch.setattr(target_build, "CACHE", tmp_path / "cache")
    profile = load_target(target)
    data, record = target_build.build_for_target(onnx_files[graph], profile, version, qdq=graph == 2)
    assert data == b"engine" and record["onnx_precision_built"] == built
    assert seen["graph"] == {"fp32": ("fp32", "fp32"), "fp16": ("fp16", "fp16"), "int8": ("int8", "fp32"),
                             "int8+fp16": ("int8", "fp16")}[built]  # fmt: skip
    assert seen["typed"] == (version.startswith("11")) and seen["opt"] == profile.max_batch == 32


@pytest.fixture
def on_device():
    """The on-device binding code (shared by the Jetson script and `bench --backend tensorrt`) on a CUDA
    runtime stand-in that counts live allocations and streams."""
    from rmtdeploy.bundle import bench_on_device

    return bench_on_device


def _engine_runtime(**engine):
    return standin.Runtime({b"ok": standin.ICudaEngine(**engine)})


def test_engines_bind_their_dynamic_batch_and_free_every_buffer_and_the_stream(on_device):
    cudart = standin.Cudart()
    with on_device.Cuda(cudart) as cuda:
        call = on_device.load_engine(standin.Module, _engine_runtime(), cuda, b"ok", batch=4)
        context = call.context
        assert context.get_tensor_shape("input") == (4, 3, 32, 32)
        assert sorted(cudart._live.values()) == [
            4 * 10 * 4,
            4 * 3 * 32 * 32 * 4,
        ]  # sized from the bound shapes
        assert cudart._copies == [(call.buffers[0], 4 * 3 * 32 * 32 * 4)]  # the input got random values
        call()
        assert context._runs == [cuda.stream.value]
    assert cudart._live == {} and cudart._streams == set()  # cudaFree for each buffer, cudaStreamDestroy


def test_a_batch_outside_the_profile_is_one_line_and_frees_what_it_took(on_device):
    # Before: set_input_shape's False was ignored, the shape stayed -1 and cudaMalloc failed with error 2.
    cudart = standin.Cudart()
    with on_device.Cuda(cudart) as cuda:
        with pytest.raises(
            on_device.DeviceBenchError, match="batch 64 is outside the profile of the engine: 1–32"
        ):
            on_device.load_engine(standin.Module, _engine_runtime(), cuda, b"ok", batch=64)
        assert cudart._live == {}
        with pytest.raises(on_device.DeviceBenchError, match="takes batch 8 only .*asked for batch 1"):
            on_device.load_engine(standin.Module, _engine_runtime(input_shape=(8, 3, 32, 32)), cuda, b"ok")


def test_a_refused_buffer_or_a_failed_execute_is_never_timed(on_device, monkeypatch):
    cudart = standin.Cudart()
    with on_device.Cuda(cudart) as cuda:
        call = on_device.load_engine(standin.Module, _engine_runtime(), cuda, b"ok", batch=2)
        call.context._fail_execute = True
        samples = {}
        with pytest.raises(
            on_device.DeviceBenchError, match="could not run the engine .execute_async_v3 failed"
        ):
            samples = on_device.interleaved({"pruned": call}, warmup=0, runs=3)
        assert samples == {}
        monkeypatch.setattr(standin.IExecutionContext, "set_tensor_address", lambda self, name, memory: False)
        with pytest.raises(on_device.DeviceBenchError, match="refused the device buffer of tensor 'input'"):
            on_device.load_engine(standin.Module, _engine_runtime(), cuda, b"ok", batch=2)
        call.close()
        assert cudart._live == {}


def test_libcudart_is_found_by_every_soname_and_folder_and_the_error_lists_them(on_device, tmp_path):
    wheel = tmp_path / "site-packages" / "nvidia" / "cu13" / "lib"
    wheel.mkdir(parents=True)
    (wheel / "libcudart.so.13").write_bytes(b"")
    tried = []

    def loader(name):
        tried.append(name)
        if name == str(wheel / "libcudart.so.13"):
            return "cuda 13 runtime"
        raise OSError(name)

    environ = {"CUDA_HOME": str(tmp_path / "cuda")}
    found = on_device.find_cudart(loader, environ, [str(tmp_path / "site-packages")], loaded=[])
    assert found == "cuda 13 runtime" and tried[:4] == ["libcudart.so.13", "libcudart.so.12", "libcudart.so",
                                                         "libcudart.so.11.0"]  # fmt: skip
    candidates = on_device.cudart_candidates(environ, [], loaded=["/opt/torch/lib/libcudart.so.13"])
    assert candidates[0] == "/opt/torch/lib/libcudart.so.13"  # the one torch already loaded comes first
    assert {str(tmp_path / "cuda" / "lib64" / "libcudart.so.12"), "/usr/local/cuda/targets/aarch64-linux/lib/libcudart.so.13",
            "/usr/lib/aarch64-linux-gnu/libcudart.so.12"} <= set(candidates)  # fmt: skip
    with pytest.raises(on_device.DeviceBenchError) as error:
        on_device.find_cudart(loader, environ, [], loaded=[])
    message = str(error.value)
    assert (
        "libcudart.so.13" in message and str(tmp_path / "cuda" / "lib64") in message and "\n" not in message
    )


def test_tensorrt_runner_frees_its_engines_when_the_timing_ends(on_device, monkeypatch):
    from rmtdeploy.benchmark.runners import tensorrt as runner_module
    from rmtdeploy.engine import versions

    cudart = standin.Cudart()
    monkeypatch.setitem(sys.modules, "tensorrt", standin.Module)
    monkeypatch.setattr(versions, "installed_tensorrt", lambda: "10.3.0")
    monkeypatch.setattr(on_device, "find_cudart", lambda: cudart)
    monkeypatch.setattr(standin.Module, "Runtime", lambda logger: _engine_runtime())
    runner = runner_module.TensorRTRunner(batch=2)
    with runner:
        call = runner.bind("pruned", b"ok")
        call()
        assert len(cudart._live) == 2
        runner.bound[0].context._fail_execute = True
        with pytest.raises(RmtdeployError, match="could not run"):
            call()
    assert cudart._live == {} and cudart._streams == set()


def test_the_device_script_sets_the_dla_core_before_loading_dla_engines(tmp_path, monkeypatch):
    import shutil

    from rmtdeploy.bundle import bench_on_device as shipped

    shutil.copy(shipped.__file__, tmp_path / "bench_on_device.py")
    for engine in ("dense.engine", "model.engine"):
        (tmp_path / engine).write_bytes(b"ok")
    (tmp_path / "bundle.json").write_text(json.dumps({"dla": True, "batch": 1, "target": "jetson-agx-orin-dla",
                                                      "models": {"dense": {}, "pruned": {}}}))  # fmt: skip
    runtime = standin.Runtime({b"ok": standin.ICudaEngine(input_shape=(1, 3, 32, 32))})
    monkeypatch.setitem(sys.modules, "tensorrt", standin.Module)
    monkeypatch.setattr(standin.Module, "Runtime", lambda logger: runtime)
    spec = importlib.util.spec_from_file_location("bench_on_device_copy", tmp_path / "bench_on_device.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cudart = standin.Cudart()
    monkeypatch.setattr(script, "find_cudart", lambda: cudart)
    monkeypatch.setattr(script, "board_facts", lambda version: {"tensorrt_version": version})
    assert script.main(["--runs", "3", "--warmup", "1"]) == 0
    assert runtime._dla_cores_seen == [0, 0]  # as trtexec --useDLACore=0 does (was: never set)
    assert cudart._live == {} and json.loads((tmp_path / "bench.json").read_text())["samples_ms"]["pruned"]


def test_a_timing_cache_from_another_gpu_or_damaged_costs_a_warning_not_the_build(tmp_path):
    # Before: set_timing_cache's False was ignored; get_timing_cache() then gave None and serialize() crashed
    # after a successful build.
    from rmtdeploy.engine.build import save_timing_cache, use_timing_cache

    cache = tmp_path / "t.cache"
    config = standin.IBuilderConfig(this_gpu=b"gpu-A")
    assert use_timing_cache(config, cache) == "new"
    save_timing_cache(config, cache)
    assert cache.read_bytes() == b"fresh cache"
    cache.write_bytes(b"gpu-A timings")
    assert use_timing_cache(standin.IBuilderConfig(this_gpu=b"gpu-A"), cache) == "read"
    for other in (b"gpu-B timings", b"garbage"):
        cache.write_bytes(other)
        config = standin.IBuilderConfig(this_gpu=b"gpu-A")
        with pytest.warns(UserWarning, match="TensorRT refused the timing cache"):
            assert use_timing_cache(config, cache) == "replaced"
        save_timing_cache(config, cache)
        assert cache.read_bytes() == b"fresh cache"
    with pytest.warns(UserWarning, match="could not save the timing cache"):
        save_timing_cache(config, tmp_path / "missing" / "t.cache")


def test_a_jetson_bundle_holds_graphs_build_script_and_on_device_benchmark(tmp_path, pruned_dir, capsys):
    out = tmp_path / "bundle"
    assert main(["bundle", "--pruned", str(pruned_dir), "--target", "jetson-agx-orin", "--int8",
                 "--calibration-images", "8", "--out", str(out)]) == 0  # fmt: skip
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "dense.onnx", "model.int8.onnx", "model.fp16.onnx", "dense.fp16.onnx", "build_engine.sh",
            "bench_on_device.py", "bundle.json", "README.md", "manifest.json"} <= names  # fmt: skip
    script = (out / "build_engine.sh").read_text()
    # Build-only lines; 11 gets the fp16 graphs (INT8 too: its float parts fp16), 10 the flags.
    eleven, ten = script.split('if [ "${TRT%%.*}" -ge 11 ]; then')[1].split("\nelse\n")
    assert "model.int8.fp16.onnx" in eleven and "--fp16" not in eleven and "--stronglyTyped" not in script
    assert "--fp16" in ten and "--int8" in ten and script.count("--skipInference") == 6
    assert "is older than 10 (JetPack 6.0 shipped 8.6)" in script
    subprocess.run(["bash", "-n", str(out / "build_engine.sh")], check=True)
    from rmtdeploy.engine.target_build import tensorrt_qdq_problem
    from rmtdeploy.exporting.onnx_file import float_precision

    for graph in ("model.int8.onnx", "model.int8.fp16.onnx"):  # TensorRT's form: symmetric, float biases
        assert tensorrt_qdq_problem(onnx.load(str(out / graph)).graph) is None
    assert float_precision(out / "model.int8.fp16.onnx") == "fp16"
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
