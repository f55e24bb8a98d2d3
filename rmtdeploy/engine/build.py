"""Building a TensorRT engine with the TensorRT Python API (only where TensorRT imports).

The build follows :func:`~rmtdeploy.engine.versions.build_settings`: builder flags on TensorRT 10, a
strongly typed network on 11; an optimisation profile for a dynamic batch; the timing cache read before
and written after (a rebuild on the same GPU and version then skips most kernel timing). After the
build the engine inspector gives every layer's precision and whether attention fused, so the report
says what will actually run, not what was asked for.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rmtdeploy.engine.versions import BuildSettings
from rmtdeploy.errors import RmtdeployError


def build_serialized(
    onnx_path: Path,
    settings: BuildSettings,
    *,
    shape: tuple[int, ...],
    max_batch: int,
    static: bool,
    workspace_mib: int | None,
    timing_cache: Path,
) -> tuple[bytes, dict[str, Any]]:
    """The serialized engine and its layer facts (:func:`layer_facts`)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RmtdeployError(f"TensorRT cannot parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    for flag in settings.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not static:
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        profile.set_shape(name, (1, *shape[1:]), (1, *shape[1:]), (max_batch, *shape[1:]))
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RmtdeployError(
            f"TensorRT could not build {onnx_path} as {settings.precision}"
            + (" on DLA (even with GPU fallback)" if settings.dla_core is not None else "")
            + ": see the TensorRT log above for the layer"
        )
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return bytes(serialized), layer_facts(json.loads(info))


def layer_facts(info: dict[str, Any]) -> dict[str, Any]:
    """From the engine inspector's JSON: layers per output precision, and the fused attention layers."""
    precisions: Counter[str] = Counter()
    attention = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # inspector without detailed verbosity: names only
            precisions["unknown"] += 1
            continue
        outputs = layer.get("Outputs") or [{}]
        fmt = str(outputs[0].get("Format/Datatype", "unknown"))
        kind = "int8" if "Int8" in fmt else "fp16" if "Half" in fmt else "fp32" if "Float" in fmt else "other"
        precisions[kind] += 1
        text = f"{layer.get('LayerType', '')} {layer.get('Name', '')} {layer.get('TacticName', '')}".lower()
        if "mha" in text or "attention" in text or "fmha" in text:
            attention.append(layer.get("Name", "?"))
    return {"layers": sum(precisions.values()), "precisions": dict(precisions),
            "fused_attention_layers": len(attention), "attention_examples": attention[:5]}  # fmt: skip
