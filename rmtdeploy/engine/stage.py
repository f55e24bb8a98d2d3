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
    version = installed_tensorrt()
    if version is None:
        raise RmtdeployError(
            "TensorRT is not installed here (import tensorrt failed): build on the GPU machine with "
            "`pip install rmtdeploy[tensorrt]`, or on the device with the script of `rmtdeploy bundle`"
        )
    if not profile.accepts_tensorrt(version):
        raise RmtdeployError(
            f"target {profile.name} wants TensorRT {profile.tensorrt}; this machine has {version}"
        )
    return profile, qdq, version


def build_engine(
    onnx: str | os.PathLike, out: str | os.PathLike, *, target: str, force: bool = False
) -> EngineRun:
    """Build ``onnx`` into a TensorRT engine for ``target`` in the folder ``out``."""
    from rmtdeploy.engine.build import build_serialized

    profile, qdq, version = check_engine_request(onnx, target)
    settings = build_settings(version, profile.precision, dla=profile.dla, qdq=qdq)
    shape, static = _input_shape(Path(onnx))
    with OutputFolder(out, ENGINE_FILES, force=force, stage="engine") as folder:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown GPU"
        CACHE.mkdir(parents=True, exist_ok=True)
        cache = CACHE / timing_cache_name(version, gpu, profile.name)
        serialized, facts = build_serialized(Path(onnx), settings, shape=shape, max_batch=profile.max_batch,
                                             static=static, workspace_mib=profile.workspace_mib, timing_cache=cache)  # fmt: skip
        record = {"onnx": str(onnx), "target": profile.name, "gpu": gpu, "settings": settings.__dict__,
                  "timing_cache": str(cache), **facts}  # fmt: skip
        folder.write_bytes("model.engine", serialized)
        folder.write_json("engine.json", record)
        run = EngineRun(Path(out), record)
        run.files = folder.commit()
    return run


def _input_shape(path: Path) -> tuple[tuple[int, ...], bool]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
    return shape, all(d.dim_value > 0 for d in dims)
