"""rmtdeploy's TensorRT-facing code against TensorRT's real API, here where TensorRT cannot run.

The names come from the bindings wheels of TensorRT 10.3 and 11.4 and from trtexec's sources at each
release tag (``tests/tensorrt_api/``: the data, and ``extract_surface.py`` that made it). Every ``trt.``
name the code uses and every trtexec flag it writes must exist in each version it is used with, or sit
behind a ``hasattr`` branch (``tests/tensorrt_api/scan.py`` says what counts). A rename or removal in a
future TensorRT then fails here, after its surface is added, not on a board. The test stand-in
(``tests/tensorrt_api/standin.py``) is held to the same names and return types.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from tensorrt_api import standin
from tensorrt_api.scan import (
    API_VERSIONS,
    TRTEXEC_VERSIONS,
    flags_of,
    load_surface,
    problems,
    tensorrt_aliases,
    tensorrt_uses,
    trtexec_flags,
)

from rmtdeploy.engine.versions import build_settings, trtexec_command
from rmtdeploy.targets import list_targets, load_target

PACKAGE = Path(__file__).resolve().parent.parent / "rmtdeploy"
TEN, ELEVEN = (load_surface(v) for v in API_VERSIONS)


def _tensorrt_files() -> dict[str, str]:
    """Every rmtdeploy module that imports tensorrt, by any alias."""
    sources = {str(p.relative_to(PACKAGE.parent)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}
    return {name: src for name, src in sources.items() if tensorrt_aliases(ast.parse(src))}


def test_the_surfaces_are_the_wheels_and_know_what_changed_from_10_3_to_11_4():
    for version in API_VERSIONS:
        header = (
            (Path(__file__).parent / "tensorrt_api" / f"tensorrt-{version}.txt").read_text().splitlines()[:4]
        )
        assert f"TensorRT {version} Python API surface, from tensorrt_cu1" in header[0]
        checked, total = (
            int(n) for n in header[3].split("cross-check: ")[1].split(" names")[0].split(" of ")
        )
        assert checked == total > 2000  # every name read from the module is a literal string of the wheel
    for gone in ("NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
                 "BuilderFlag.FP16", "BuilderFlag.INT8"):  # fmt: skip
        assert TEN.has(gone) and not ELEVEN.has(gone), gone
    for kept in ("IExecutionContext.execute_async_v3", "IExecutionContext.set_input_shape",
                 "IExecutionContext.set_tensor_address", "IBuilderConfig.set_timing_cache"):  # fmt: skip
        assert TEN.returns(kept) == ELEVEN.returns(kept) == "bool", kept
    assert not TEN.has("IExecutionContext.execute_async_v2")  # removed in 10.0
    assert ELEVEN.type_of("Runtime.deserialize_cuda_engine") == "ICudaEngine"


def test_trtexec_flags_follow_the_releases():
    ten, *elevens = (trtexec_flags(v) for v in (*TRTEXEC_VERSIONS[10], *TRTEXEC_VERSIONS[11]))
    assert {"--fp16", "--int8", "--best"} <= ten and not any({"--fp16", "--best"} & e for e in elevens)
    assert all(
        {"--skipInference", "--useDLACore", "--allowGPUFallback", "--exportLayerInfo"} <= f
        for f in (ten, *elevens)
    )
    assert not any("--workspace" in f or "--buildOnly" in f for f in (ten, *elevens))  # gone before 10


def test_rmtdeploy_uses_only_tensorrt_names_every_version_has():
    files = _tensorrt_files()
    assert {"rmtdeploy/engine/build.py", "rmtdeploy/bundle/bench_on_device.py",
            "rmtdeploy/benchmark/runners/tensorrt.py"} <= set(files)  # fmt: skip
    used = {u.path for name, src in files.items() for u in tensorrt_uses(src, name, TEN)}
    # Not vacuous: the typed calls are seen, not only the module's attributes.
    assert {"IExecutionContext.execute_async_v3", "IBuilderConfig.set_timing_cache", "Runtime.DLA_core",
            "ICudaEngine.get_tensor_profile_shape", "BuilderFlag.*"} <= used  # fmt: skip
    assert problems(files) == []


PLANTED = """
import tensorrt as trt

def build(builder, flags):
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)                         # gone in 11
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    if hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)                     # asked first: allowed
    config.set_flag(getattr(trt.BuilderFlag, "STRICT_TYPES", 0))  # with a default: allowed
    config.set_flag(getattr(trt.TacticSource, flags[0]))          # dynamic, not data-checked
    return network.get_input(0).named                              # typo on a typed object

def run(context, trt_stream):
    context.execute_async_v2([], trt_stream)                       # gone in 10
"""


def test_the_scan_catches_planted_names():
    found = problems({"planted.py": PLANTED})
    assert found == [
        "planted.py:11: dynamic getattr on TacticSource is not checked per version",
        "planted.py:12: ITensor.named is not in TensorRT 10.3.0",
        "planted.py:12: ITensor.named is not in TensorRT 11.4.0.106",
        "planted.py:15: IExecutionContext.execute_async_v2 is not in TensorRT 10.3.0",
        "planted.py:15: IExecutionContext.execute_async_v2 is not in TensorRT 11.4.0.106",
        "planted.py:6: BuilderFlag.FP16 is not in TensorRT 11.4.0.106",
        "planted.py:7: NetworkDefinitionCreationFlag.EXPLICIT_BATCH is not in TensorRT 11.4.0.106",
    ]


@pytest.mark.parametrize("version", API_VERSIONS)
def test_builder_flags_named_by_build_settings_exist_in_that_version(version):
    # build.py sets getattr(trt.BuilderFlag, flag) for each flag build_settings names: checked here as data.
    flags = load_surface(version)
    for precision in ("fp32", "fp16", "int8"):
        for dla in (False, True):
            settings = build_settings(version, precision, dla=dla, qdq=True)
            assert all(flags.has(f"BuilderFlag.{f}") for f in settings.builder_flags), (precision, dla)


def _script_lines_by_major(script: str) -> dict[int, list[str]]:
    """trtexec lines of a build_engine.sh under the branch that runs them: TensorRT 11 or 10."""
    lines, major = {10: [], 11: []}, 10
    for line in script.splitlines():
        if line.startswith('if [ "${TRT%%.*}" -ge 11 ]'):
            major = 11
        elif line == "else":
            major = 10
        elif "$TRTEXEC" in line:
            lines[major].append(line)
    return lines


def test_every_trtexec_flag_rmtdeploy_writes_exists_in_that_version():
    from rmtdeploy.bundle.stage import build_script

    emitted = {10: [], 11: []}
    for name in list_targets():
        profile = load_target(name)
        if profile.backend != "tensorrt":
            continue
        for static in (True, False):
            for int8 in (True, False):
                graphs = {
                    "shape": [profile.max_batch, 3, 224, 224],
                    "static": static,
                    "int8": int8,
                    "fp16": True,
                    # a latency table's engines too (bundle --latency-table): the sweep's precision, batch 1
                    "table": {"graphs": 2, "groups": 1, "labels": ["dense", "unit0-8"],
                              "precision": "fp16" if profile.precision == "int8" else profile.precision},
                }  # fmt: skip
                for major, lines in _script_lines_by_major(build_script(profile, graphs)).items():
                    emitted[major] += lines
                for major in (10, 11):
                    settings = build_settings(f"{major}.0", profile.precision, dla=profile.dla, qdq=True)
                    emitted[major].append(" ".join(trtexec_command(settings, "m.onnx", "m.engine", input_name="input",
                                                   shape=(1, 3, 224, 224), max_batch=profile.max_batch, static=static,
                                                   workspace_mib=profile.workspace_mib)))  # fmt: skip
    assert emitted[10] and emitted[11]
    for major, lines in emitted.items():
        for version in TRTEXEC_VERSIONS[major]:
            unknown = {flag for line in lines for flag in flags_of(line)} - trtexec_flags(version)
            assert not unknown, f"trtexec {version} has no {sorted(unknown)}"
    assert flags_of("trtexec --fp16 --workspace=64") - trtexec_flags("11.1") == {"--fp16", "--workspace"}


STANDIN_CLASSES = (standin.DataType, standin.TensorIOMode, standin.ICudaEngine, standin.IExecutionContext,
                   standin.Runtime, standin.ITimingCache, standin.IBuilderConfig, standin.Logger)  # fmt: skip
# What a stand-in may return where the bindings declare a type (pybind11's list/tuple/bytes-like objects).
RETURNS = {"bool": "bool", "int": "int", "str": "str", "Dims": "tuple", "list[Dims]": "list", "List[Dims]": "list",
           "IHostMemory": "bytes", "ITimingCache": "ITimingCache", "DataType": "DataType",
           "TensorIOMode": "TensorIOMode", "ICudaEngine": "ICudaEngine", "IExecutionContext": "IExecutionContext"}  # fmt: skip


@pytest.mark.parametrize("surface", [TEN, ELEVEN], ids=API_VERSIONS)
def test_the_standin_has_only_real_names_and_returns_real_types(surface):
    for cls in STANDIN_CLASSES:
        name = cls.__name__
        assert surface.kind(name) in ("class", "enum"), name
        public = {m for m in dir(cls) if not m.startswith("_")}
        public |= {m for m in getattr(cls, "__members__", {})}
        if not issubclass(cls, standin.enum.Enum):
            public |= {k for k in vars(_instance(cls)) if not k.startswith("_")}
        missing = sorted(m for m in public if not surface.has(f"{name}.{m}"))
        assert not missing, f"stand-in {name} has names TensorRT {surface.version} lacks: {missing}"
        for member, function in inspect.getmembers(cls, inspect.isfunction):
            declared = inspect.signature(function).return_annotation
            real = surface.returns(f"{name}.{member}").split(" | ")[0]
            if not member.startswith("_") and declared is not inspect.Signature.empty:
                assert RETURNS.get(real) == declared, f"{name}.{member} returns {declared}; TensorRT: {real}"
    assert all(surface.has(n) for n in standin.MODULE_NAMES)


def _instance(cls):
    engine = standin.ICudaEngine()
    return {standin.IExecutionContext: lambda: standin.IExecutionContext(engine),
            standin.ITimingCache: lambda: standin.ITimingCache(b"")}.get(cls, cls)()  # fmt: skip


def test_the_standin_behaves_as_the_real_calls_do():
    context = standin.ICudaEngine().create_execution_context()
    assert context.set_input_shape("input", (64, 3, 32, 32)) is False  # above the profile's max 32
    assert list(context.get_tensor_shape("input")) == [-1, 3, 32, 32]  # unset: still -1
    assert context.execute_async_v3(1) is False  # nothing bound
    assert context.set_input_shape("input", (4, 3, 32, 32)) is True
    assert context.set_tensor_address("input", 0) is False and context.set_tensor_address("input", 8) is True
    assert isinstance(standin.ICudaEngine().get_tensor_dtype("input"), standin.DataType)
