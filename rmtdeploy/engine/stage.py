"""The engine stage: ``build_engine("model.onnx", out, target="jetson") -> EngineRun``.

Checks what it can before TensorRT is touched (the file, the target's backend, a Q/DQ graph for INT8,
an installed TensorRT the target accepts), then builds through :mod:`rmtdeploy.engine.build` and
writes ``model.engine`` and ``engine.json`` (settings, per-layer precisions, fused attention) as one
unit. The timing cache lives in ``~/.cache/rmtdeploy/tensorrt`` keyed by TensorRT version and GPU.
Where TensorRT does not import, the stage stops with that reason and the alternative: the Jetson
bundle builds on the device (``rmtdeploy bundle``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmtdeploy.engine.versions import build_settings, installed_tensorrt, timing_cache_name
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import OutputFolder

ENGINE_FILES = ("model.engine", "engine.json")
CACHE = Path(os.environ.get("RMTDEPLOY_CACHE", Path.home() / ".cache" / "rmtdeploy")) / "tensorrt"


@dataclass
class EngineRun:
    directory: Path
    record: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def check_engine_request(onnx: str | os.PathLike, target) -> tuple[Any, bool, str]:
    """The target profile, whether the graph is Q/DQ, and the TensorRT version; or one clear error."""
    import onnx as onnx_lib

    from rmtdeploy.targets import load_target

    path = Path(onnx)
    if not path.is_file():
        raise RmtdeployError(f"ONNX model not found: {path}", param="onnx")
    profile = load_target(target)
    if profile.backend != "tensorrt":
        raise RmtdeployError(
            f"target {profile.name} runs on {profile.backend}: there is no engine to build; its ONNX "
            "(rmtdeploy export) is what it deploys"
        )
    try:
        graph = onnx_lib.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise RmtdeployError(f"cannot read {path} as ONNX: {str(exc).splitlines()[0][:160]}") from exc
    qdq = any(n.op_type == "QuantizeLinear" for n in graph.node)
    build_settings("10.0", profile.precision, dla=profile.dla, qdq=qdq)  # INT8 without Q/DQ fails here
    return profile, qdq, usable_tensorrt(profile, "build")


def usable_tensorrt(profile, doing: str) -> str:
    """The installed TensorRT's version if ``profile`` accepts it; else the one line that says why not
    and where to ``doing`` (build, time) instead."""
    version = installed_tensorrt()
    if version is None:
        raise RmtdeployError(
            f"TensorRT is not installed here (import tensorrt failed): {doing} on a GPU machine with "
            "`pip install rmtdeploy[tensorrt]`, or on a Jetson with the script of `rmtdeploy bundle`"
        )
    if not profile.accepts_tensorrt(version):
        raise RmtdeployError(
            f"target {profile.name} wants TensorRT {profile.tensorrt}; this machine has {version}"
        )
    return version


def build_engine(
    onnx: str | os.PathLike, out: str | os.PathLike, *, target: str, force: bool = False
) -> EngineRun:
    """Build ``onnx`` into a TensorRT engine for ``target`` in the folder ``out``."""
    profile, qdq, version = check_engine_request(onnx, target)
    with OutputFolder(out, ENGINE_FILES, force=force, stage="engine") as folder:
        serialized, record = build_for_target(Path(onnx), profile, version, qdq=qdq)
        folder.write_bytes("model.engine", serialized)
        folder.write_json("engine.json", record)
        run = EngineRun(Path(out), record)
        run.files = folder.commit()
    return run


def build_for_target(
    onnx: Path, profile, version: str, *, qdq: bool, precision: str | None = None
) -> tuple[bytes, dict[str, Any]]:
    """The serialized engine of ``onnx`` for ``profile`` (at ``precision``, default the profile's) and its
    record: settings, GPU, timing cache, the graph precision built and the inspector's layer facts.

    TensorRT 11 builds strongly typed networks: an fp16 target's fp32 graph is converted to fp16 first
    (inputs and outputs stay fp32), else the engine would silently run fp32."""
    import torch

    from rmtdeploy.engine.build import build_serialized
    from rmtdeploy.exporting.graph import fp16_copy, graph_precision

    settings = build_settings(version, precision or profile.precision, dla=profile.dla, qdq=qdq)
    shape, static = _input_shape(onnx)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown GPU"
    CACHE.mkdir(parents=True, exist_ok=True)
    cache = CACHE / timing_cache_name(version, gpu, profile.name)
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-engine-") as tmp:
        source, built = onnx, graph_precision(onnx)
        if settings.onnx_precision == "fp16" and built == "fp32":
            source, built = fp16_copy(onnx, Path(tmp) / f"{onnx.stem}.fp16.onnx"), "fp16"
        serialized, facts = build_serialized(source, settings, shape=shape, max_batch=profile.max_batch,
                                             static=static, workspace_mib=profile.workspace_mib, timing_cache=cache)  # fmt: skip
    record = {"onnx": str(onnx), "onnx_precision_built": built, "target": profile.name, "gpu": gpu,
              "settings": settings.__dict__, "timing_cache": str(cache), **facts}  # fmt: skip
    return serialized, record


def _input_shape(path: Path) -> tuple[tuple[int, ...], bool]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
    return shape, all(d.dim_value > 0 for d in dims)
