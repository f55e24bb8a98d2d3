"""The engine stage: ``build_engine("model.onnx", out, target="jetson") -> EngineRun``.

Checks what it can before TensorRT is touched (the file, the target's backend, a Q/DQ graph in
TensorRT's form for INT8, an installed TensorRT 10+ the target accepts), then builds through
:mod:`rmtdeploy.engine.build` (on TensorRT 11 from a graph whose float parts are fp16) and writes
``model.engine`` and ``engine.json`` (settings, profile, per-layer precisions, fused attention) as one
unit. The timing cache lives in ``~/.cache/rmtdeploy/tensorrt`` keyed by TensorRT version and GPU.
Where TensorRT does not import, the stage stops with that reason and the alternative: the Jetson
bundle builds on the device (``rmtdeploy bundle``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmtdeploy.engine.target_build import (  # noqa: F401 (build_for_target, usable_tensorrt: bench's too)
    CACHE,
    build_for_target,
    check_tensorrt_qdq,
    graph_for_build,
    tensorrt_qdq_problem,
    usable_tensorrt,
)
from rmtdeploy.engine.versions import build_settings, installed_tensorrt  # noqa: F401 (compress asks it)
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import OutputFolder, check_output_dir

ENGINE_FILES = ("model.engine", "engine.json")


@dataclass
class EngineRun:
    directory: Path
    record: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def check_engine_request(onnx: str | os.PathLike, target) -> tuple[Any, bool, str]:
    """The target profile, whether the graph is Q/DQ, and the TensorRT version; or one clear error."""
    import onnx as onnx_lib

    from rmtdeploy.exporting.onnx_file import graph_precision
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
    qdq = graph_precision(path) == "int8"
    build_settings("10.0", profile.precision, dla=profile.dla, qdq=qdq)  # INT8 without Q/DQ fails here
    if qdq:
        check_tensorrt_qdq(path, graph)
    return profile, qdq, usable_tensorrt(profile, "build")


def build_engine(
    onnx: str | os.PathLike, out: str | os.PathLike, *, target: str, force: bool = False
) -> EngineRun:
    """Build ``onnx`` into a TensorRT engine for ``target`` in the folder ``out``."""
    check_output_dir(out, ENGINE_FILES, force=force, stage="engine")  # before TensorRT is even looked for
    profile, qdq, version = check_engine_request(onnx, target)
    with OutputFolder(out, ENGINE_FILES, force=force, stage="engine") as folder:
        serialized, record = build_for_target(Path(onnx), profile, version, qdq=qdq)
        folder.write_bytes("model.engine", serialized)
        folder.write_json("engine.json", record)
        run = EngineRun(Path(out), record)
        run.files = folder.commit()
    return run
