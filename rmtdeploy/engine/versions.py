"""TensorRT versions and what each asks of a build: builder flags (TensorRT 10) or precision in the ONNX
(TensorRT 11, strongly typed), the trtexec command line for a target, and the timing cache's name.

Pure functions of versions and target profiles, so they are tested where TensorRT is not installed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rmtdeploy.errors import RmtdeployError


def installed_tensorrt() -> str | None:
    """The importable TensorRT's version, or None (this machine, CI)."""
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 (ImportError, or a broken CUDA install failing at import)
        return None
    return str(getattr(tensorrt, "__version__", "0"))


def major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise RmtdeployError(f"cannot read TensorRT version '{version}'") from None


@dataclass(frozen=True)
class BuildSettings:
    """How one TensorRT version builds one target's engine."""

    tensorrt: str
    precision: str
    strongly_typed: bool  # TensorRT 11: the network's types come from the ONNX
    builder_flags: tuple[str, ...]  # trt.BuilderFlag names to set (TensorRT 10)
    onnx_precision: str  # what the ONNX must carry: "fp32", "fp16" (weights + compute) or "int8" (Q/DQ)
    dla_core: int | None


def build_settings(
    tensorrt_version: str, precision: str, *, dla: bool = False, qdq: bool = False
) -> BuildSettings:
    """TensorRT 10 keeps precision flags (FP16; INT8 with a Q/DQ graph or calibration; GPU_FALLBACK for
    DLA); TensorRT 11 removed them: strongly typed, so the ONNX must be fp16 or Q/DQ itself."""
    if precision not in ("fp32", "fp16", "int8"):
        raise RmtdeployError(f"precision must be fp32, fp16 or int8, got '{precision}'")
    if precision == "int8" and not qdq:
        raise RmtdeployError(
            "an INT8 engine needs a Q/DQ ONNX (rmtdeploy export --int8): implicit calibration is deprecated in "
            "TensorRT 10 and gone in 11"
        )
    if major(tensorrt_version) >= 11:
        return BuildSettings(tensorrt_version, precision, True, ("GPU_FALLBACK",) if dla else (),
                             "int8" if precision == "int8" else precision, 0 if dla else None)  # fmt: skip
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[
        precision
    ]  # int8 layers fall back to fp16
    if dla:
        flags = (*flags, "GPU_FALLBACK")
    return BuildSettings(tensorrt_version, precision, False, flags, "int8" if precision == "int8" else "fp32",
                         0 if dla else None)  # fmt: skip


def trtexec_command(
    settings: BuildSettings,
    onnx: str,
    engine: str,
    *,
    input_name: str,
    shape: tuple[int, ...],
    max_batch: int,
    static: bool,
    workspace_mib: int | None,
    timing_cache: str = "timing.cache",
) -> list[str]:
    """The trtexec command line that builds ``engine`` from ``onnx`` as :func:`build_settings` says."""
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", f"--timingCacheFile={timing_cache}"]
    if not static:
        c_h_w = "x".join(map(str, shape[1:]))
        cmd += [f"--minShapes={input_name}:1x{c_h_w}", f"--optShapes={input_name}:1x{c_h_w}",
                f"--maxShapes={input_name}:{max_batch}x{c_h_w}"]  # fmt: skip
    if settings.strongly_typed:
        cmd.append("--stronglyTyped")
    cmd += [f"--{flag.lower()}" for flag in settings.builder_flags if flag in ("FP16", "INT8")]
    if settings.dla_core is not None:
        cmd += [f"--useDLACore={settings.dla_core}", "--allowGPUFallback"]
    if workspace_mib:
        cmd.append(f"--memPoolSize=workspace:{workspace_mib}M")
    cmd += ["--profilingVerbosity=detailed", "--exportLayerInfo=layers.json"]
    return cmd


def timing_cache_name(tensorrt_version: str, gpu: str, target: str) -> str:
    """Timing caches are valid for one TensorRT version on one GPU: the name says both."""
    key = hashlib.sha256(f"{tensorrt_version}|{gpu}".encode()).hexdigest()[:10]
    return f"{target}-trt{tensorrt_version}-{key}.cache"
