"""TensorRT versions and what each asks of a build: builder flags (TensorRT 10) or precision in the ONNX
(TensorRT 11, strongly typed), the optimisation profile, the trtexec command line for a target, and the
timing cache's name.

Pure functions of versions and target profiles, so they are tested where TensorRT is not installed.
TensorRT older than 10 is refused (JetPack 6.0 shipped 8.6: its API and trtexec flags differ).
Every ``trt.`` name and trtexec flag used here is checked against the real bindings and trtexec
sources of each version (``tests/test_tensorrt_api.py``).
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


MIN_MAJOR = 10


def major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise RmtdeployError(f"cannot read TensorRT version '{version}'") from None


def check_supported(version: str) -> int:
    """The major version of ``version``, or one line refusing a TensorRT older than 10."""
    found = major(version)
    if found < MIN_MAJOR:
        raise RmtdeployError(
            f"TensorRT {version} is older than {MIN_MAJOR}: rmtdeploy builds with TensorRT 10 or 11 "
            "(JetPack 6.0 shipped 8.6; JetPack 6.1 and later ship 10.3)"
        )
    return found


@dataclass(frozen=True)
class BuildSettings:
    """How one TensorRT version builds one target's engine."""

    tensorrt: str
    precision: str
    strongly_typed: bool  # TensorRT 11: the network's types come from the ONNX
    builder_flags: tuple[str, ...]  # trt.BuilderFlag names to set (TensorRT 10)
    onnx_precision: str  # what the ONNX must carry: "fp32", "fp16" (weights + compute) or "int8" (Q/DQ)
    dla_core: int | None
    # The precision of the graph's float parts (outside Q/DQ) the build wants: TensorRT 11 runs them as
    # typed, so an fp16 or int8 target needs them fp16; TensorRT 10's flags choose by themselves.
    float_parts: str = "fp32"


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
    if check_supported(tensorrt_version) >= 11:
        return BuildSettings(tensorrt_version, precision, True, ("GPU_FALLBACK",) if dla else (),
                             "int8" if precision == "int8" else precision, 0 if dla else None,
                             "fp32" if precision == "fp32" else "fp16")  # fmt: skip
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[
        precision
    ]  # int8 layers fall back to fp16
    if dla:
        flags = (*flags, "GPU_FALLBACK")
    return BuildSettings(tensorrt_version, precision, False, flags, "int8" if precision == "int8" else "fp32",
                         0 if dla else None)  # fmt: skip


def profile_shapes(
    shape: tuple[int, ...], max_batch: int, opt_batch: int | None = None
) -> dict[str, list[int]]:
    """The dynamic-batch optimisation profile: min batch 1, opt ``opt_batch`` (default ``max_batch``: the
    targets say opt = max; TensorRT picks its kernels for the opt shape), max ``max_batch``."""
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise RmtdeployError(f"the profile's opt batch {opt} must lie in 1-{max_batch}")
    rest = list(shape[1:])
    return {"min": [1, *rest], "opt": [opt, *rest], "max": [max_batch, *rest]}


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
    opt_batch: int | None = None,
    timing_cache: str = "timing.cache",
    build_only: bool = True,
) -> list[str]:
    """The trtexec command line that builds ``engine`` from ``onnx`` as :func:`build_settings` says;
    ``build_only`` adds ``--skipInference`` (the timing is bench_on_device's; layer info is still written).
    TensorRT 11 is strongly typed by itself (its ``--stronglyTyped`` is a deprecated no-op: not passed)."""
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", f"--timingCacheFile={timing_cache}"]
    if not static:
        shapes = {k: "x".join(map(str, v)) for k, v in profile_shapes(shape, max_batch, opt_batch).items()}
        cmd += [f"--minShapes={input_name}:{shapes['min']}", f"--optShapes={input_name}:{shapes['opt']}",
                f"--maxShapes={input_name}:{shapes['max']}"]  # fmt: skip
    cmd += [f"--{flag.lower()}" for flag in settings.builder_flags if flag in ("FP16", "INT8")]
    if settings.dla_core is not None:
        cmd += [f"--useDLACore={settings.dla_core}", "--allowGPUFallback"]
    if workspace_mib:
        cmd.append(f"--memPoolSize=workspace:{workspace_mib}M")
    if build_only:
        cmd.append("--skipInference")
    cmd += ["--profilingVerbosity=detailed", "--exportLayerInfo=layers.json"]
    return cmd


def timing_cache_name(tensorrt_version: str, gpu: str, target: str) -> str:
    """Timing caches are valid for one TensorRT version on one GPU: the name says both."""
    key = hashlib.sha256(f"{tensorrt_version}|{gpu}".encode()).hexdigest()[:10]
    return f"{target}-trt{tensorrt_version}-{key}.cache"
