"""Building a TensorRT engine with the TensorRT Python API (only where TensorRT imports).

The build follows :func:`~rmtdeploy.engine.versions.build_settings`: builder flags on TensorRT 10, a
strongly typed network on 11 (every 11 network is: no flag to set); an optimisation profile for a
dynamic batch, tuned for the target's opt batch; the timing cache read before and written after (a
rebuild on the same GPU and version then skips most kernel timing). A cache TensorRT refuses (made on
another GPU or version, or damaged) costs a warning and a fresh cache, never the build. After the build
the engine inspector gives every layer's precision and whether attention fused
(:mod:`rmtdeploy.engine.inspector`), so the report says what will actually run, not what was asked for.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from rmtdeploy.engine.inspector import layer_facts
from rmtdeploy.engine.versions import BuildSettings, profile_shapes
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
    opt_batch: int | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The serialized engine and its facts: the profile, the timing cache's fate and the inspector's
    layer facts (:func:`~rmtdeploy.engine.inspector.layer_facts`)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch on 10 and 11; 11 is strongly typed by itself
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RmtdeployError(f"TensorRT cannot parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    for flag in settings.builder_flags:  # names checked against each version's BuilderFlag in the tests
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    facts: dict[str, Any] = {"profile": None}
    if not static:
        shapes = profile_shapes(shape, max_batch, opt_batch)
        profile = builder.create_optimization_profile()
        profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
        facts["profile"] = shapes
    facts["timing_cache_status"] = use_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RmtdeployError(
            f"TensorRT could not build {onnx_path} as {settings.precision}"
            + (" on DLA (even with GPU fallback)" if settings.dla_core is not None else "")
            + ": see the TensorRT log above for the layer"
        )
    save_timing_cache(config, timing_cache)
    runtime = trt.Runtime(logger)
    if settings.dla_core is not None:
        runtime.DLA_core = settings.dla_core  # as trtexec does before deserialising a DLA engine
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise RmtdeployError(f"TensorRT built {onnx_path} but cannot load the engine it built")
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return bytes(serialized), {**facts, **layer_facts(json.loads(info), settings.tensorrt)}


def use_timing_cache(config, path: Path) -> str:
    """Give ``config`` the timing cache at ``path``: ``read``, ``new`` (none yet), or ``replaced`` when
    TensorRT refuses it (``set_timing_cache`` returns False for a cache from another GPU or version;
    a damaged file may not even deserialize): then a warning, and the build times its kernels afresh."""
    data = path.read_bytes() if path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # noqa: BLE001 (TensorRT raises its own types on a damaged blob)
            cache = None
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return "read"
        warnings.warn(
            f"TensorRT refused the timing cache {path} (another GPU or TensorRT version, or damaged): "
            "building without it; a new one replaces it",
            stacklevel=2,
        )
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        return "none (TensorRT refused an empty cache)"
    return "replaced" if data else "new"


def save_timing_cache(config, path: Path) -> None:
    """Write the build's timing cache over ``path`` in one step; failing to write costs a warning only
    (the engine is built)."""
    try:
        data = memoryview(config.get_timing_cache().serialize())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 (TensorRT or the file system; the engine is built either way)
        warnings.warn(f"could not save the timing cache {path}: {exc}", stacklevel=2)
