"""Building for a target profile: the TensorRT version a target accepts here, the graph each TensorRT
version gets (an fp16 copy where TensorRT 11's strong typing needs fp16 float parts; a Q/DQ graph only in
the form TensorRT's parser takes) and the build with its record. Used by the engine stage and by
``rmtdeploy bench --backend tensorrt``; TensorRT itself is only imported in :mod:`rmtdeploy.engine.build`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rmtdeploy.engine.versions import build_settings, check_supported, installed_tensorrt, timing_cache_name
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import cache_folder

CACHE = cache_folder("tensorrt")


def check_tensorrt_qdq(path: Path, graph) -> None:
    """One line when the Q/DQ graph at ``path`` is not in the form TensorRT's parser takes."""
    problem = tensorrt_qdq_problem(graph)
    if problem:
        raise RmtdeployError(
            f"{path.name} is a Q/DQ graph in ONNX Runtime's form ({problem}); TensorRT takes symmetric int8 "
            "with float biases only: quantize it for a TensorRT target",
            param="onnx",
        )


def tensorrt_qdq_problem(graph) -> str | None:
    """What in a Q/DQ graph TensorRT's ONNX parser refuses, or None: uint8 data or zero points, zero
    points other than 0 (asymmetric), an int32 bias behind DequantizeLinear (onnx-tensorrt's Q/DQ
    importer; "only activation types allowed as input to this layer")."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    found = set()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        point = inits.get(node.input[2]) if len(node.input) > 2 else None
        if point is not None and point.data_type == TensorProto.UINT8:
            found.add("uint8 zero points")
        elif point is not None and np.any(numpy_helper.to_array(point) != 0):
            found.add("zero points other than 0")
        data = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if data is not None and data.data_type == TensorProto.UINT8:
            found.add("uint8 weights")
        if data is not None and data.data_type == TensorProto.INT32:
            found.add("int32 biases behind DequantizeLinear")
    return ", ".join(sorted(found)) or None


def usable_tensorrt(profile, doing: str) -> str:
    """The installed TensorRT's version if ``profile`` accepts it; else the one line that says why not
    and where to ``doing`` (build, time) instead."""
    version = installed_tensorrt()
    if version is None:
        raise RmtdeployError(
            f"TensorRT is not installed here (import tensorrt failed): {doing} on a GPU machine with "
            "`pip install rmtdeploy[tensorrt]`, or on a Jetson with the script of `rmtdeploy bundle`"
        )
    check_supported(version)
    if not profile.accepts_tensorrt(version):
        raise RmtdeployError(
            f"target {profile.name} wants TensorRT {profile.tensorrt}; this machine has {version}"
        )
    return version


def build_for_target(
    onnx: Path, profile, version: str, *, qdq: bool, precision: str | None = None
) -> tuple[bytes, dict[str, Any]]:
    """The serialized engine of ``onnx`` for ``profile`` (at ``precision``, default the profile's) and its
    record: settings, GPU, timing cache, the graph precision built and the inspector's layer facts.

    TensorRT 11 builds strongly typed networks: an fp16 target's fp32 graph is converted to fp16 first
    (inputs and outputs stay fp32), else the engine would silently run fp32; an INT8 target's Q/DQ graph
    gets fp16 float parts (TensorRT 10 runs them in fp16 through its FP16 flag; 11 as typed)."""
    import torch

    from rmtdeploy.engine.build import build_serialized

    settings = build_settings(version, precision or profile.precision, dla=profile.dla, qdq=qdq)
    shape, static = _input_shape(onnx)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown GPU"
    CACHE.mkdir(parents=True, exist_ok=True)
    cache = CACHE / timing_cache_name(version, gpu, profile.name)
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-engine-") as tmp:
        source, built = graph_for_build(onnx, settings, Path(tmp))
        serialized, facts = build_serialized(source, settings, shape=shape, max_batch=profile.max_batch,
                                             opt_batch=profile.profile_opt_batch, static=static,
                                             workspace_mib=profile.workspace_mib, timing_cache=cache)  # fmt: skip
    record = {"onnx": str(onnx), "onnx_precision_built": built, "target": profile.name, "gpu": gpu,
              "settings": settings.__dict__, "timing_cache": str(cache), **facts}  # fmt: skip
    return serialized, record


def graph_for_build(onnx: Path, settings, folder: Path) -> tuple[Path, str]:
    """The graph TensorRT gets for ``settings`` and its precision (``fp32``, ``fp16``, ``int8`` with fp32
    float parts, ``int8+fp16``): an fp16 copy in ``folder`` where the build needs fp16 float parts."""
    import onnx as onnx_lib

    from rmtdeploy.exporting.fp16 import fp16_copy
    from rmtdeploy.exporting.onnx_file import float_precision, graph_precision

    precision, floats = graph_precision(onnx), float_precision(onnx)
    if precision == "int8":  # also for callers that skipped check_engine_request (bench --backend tensorrt)
        check_tensorrt_qdq(onnx, onnx_lib.load(str(onnx), load_external_data=False).graph)
    wants_fp16 = settings.onnx_precision == "fp16" or settings.float_parts == "fp16"
    if wants_fp16 and floats == "fp32" and precision in ("fp32", "int8"):
        onnx, floats = fp16_copy(onnx, folder / f"{onnx.stem}.fp16.onnx"), "fp16"
    if precision == "int8":
        return onnx, "int8+fp16" if floats == "fp16" else "int8"
    return onnx, floats


def _input_shape(path: Path) -> tuple[tuple[int, ...], bool]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
    return shape, all(d.dim_value > 0 for d in dims)
