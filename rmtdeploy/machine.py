"""The machine a number was measured on: CPU, load and library versions, read one way for everyone.

This module is the project's only reader of ``/proc/cpuinfo``: latency reports, the target profiles'
channel multiple (:func:`rmtdeploy.targets.host_cpu_channel_multiple`) and the scripts under
``benchmarks/`` all take their machine facts from here. Every reader accepts the file's text instead,
so a dump from another machine (or a test's) reads the same way.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

# The vector extensions CPU kernels dispatch on (x86 and Arm names): the few flags, out of about a
# hundred, that explain why one machine runs a graph faster than another.
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimdhp",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)

# The libraries that shape a result (the run manifest lists them all): name -> (module, distributions that
# may provide it). Latency reports name the ones timing depends on (:data:`TIMING_LIBRARIES`).
LIBRARIES = {
    "rmtdeploy": ("rmtdeploy", ("rmtdeploy",)),
    "torch": ("torch", ("torch",)),
    "torchvision": ("torchvision", ("torchvision",)),
    "timm": ("timm", ("timm",)),
    "torch-pruning": ("torch_pruning", ("torch-pruning",)),
    "onnx": ("onnx", ("onnx",)),
    "onnxruntime": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    "onnxslim": ("onnxslim", ("onnxslim",)),
    "numpy": ("numpy", ("numpy",)),
}
TIMING_LIBRARIES = ("numpy", "torch", "onnxruntime")


def read_cpuinfo(text: str | None = None) -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo``, keys lower-case; ``{}`` where unreadable.

    ``text`` stands in for the file. A block without a ``processor`` line holds machine-wide fields
    (Arm kernels print ``Hardware`` and ``Model`` once, after the processors): those are kept too.
    """
    blocks = [_fields(block) for block in (_cpuinfo_text() if text is None else text).split("\n\n")]
    blocks = [block for block in blocks if block]
    if not blocks:
        return {}
    first = dict(blocks[0])
    for block in blocks[1:]:
        if "processor" not in block:
            for key, value in block.items():
                first.setdefault(key, value)
    return first


def cpu_model(text: str | None = None) -> str:
    """The CPU's marketing name (``model name`` in ``/proc/cpuinfo``), else what ``platform`` knows."""
    fields = read_cpuinfo(text)
    for key in ("model name", "model", "hardware"):
        # x86's ``model`` is a number (the model within the family), not a name.
        if fields.get(key) and not fields[key].isdigit():
            return fields[key]
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags(text: str | None = None) -> set[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where they cannot be read."""
    fields = read_cpuinfo(text)
    return set((fields.get("flags") or fields.get("features") or "").split())


def simd_flags(text: str | None = None) -> list[str]:
    """The vector extensions among :func:`cpu_flags`, in :data:`SIMD_FLAGS` order."""
    flags = cpu_flags(text)
    return [flag for flag in SIMD_FLAGS if flag in flags]


def loadavg() -> list[float] | None:
    """1/5/15-minute load average: how many processes shared the cores. ``None`` where unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def library_versions(names: tuple[str, ...] = tuple(LIBRARIES)) -> dict[str, str]:
    """Name -> version of the :data:`LIBRARIES` in ``names`` that are installed.

    A library this process has imported reports its own ``__version__`` (with the build tag, e.g.
    ``+cpu``); one it has not is looked up in the installed metadata rather than imported, since
    importing torch only to name its version would cost seconds.
    """
    versions = {name: _version(*LIBRARIES[name]) for name in names}
    return {name: version for name, version in versions.items() if version is not None}


def machine_conditions(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model and vector extensions, logical CPUs, platform, Python and library versions.

    The load average is not part of it: it changes during a run, so callers take it when they need
    it (:func:`loadavg`), e.g. before and after timing.
    """
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    return {
        "cpu_model": cpu_model(text),
        "cpu_simd_flags": simd_flags(text),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_governor": cpu_governor(),
        **{f"{name}_version": version for name, version in library_versions(TIMING_LIBRARIES).items()},
    }


def cpu_governor() -> str | None:
    """cpufreq's scaling governor of CPU 0 (``performance``, ``powersave``, ...), where Linux shows it."""
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip() or None
    except OSError:
        return None


def _version(module_name: str, distributions: tuple[str, ...]) -> str | None:
    module = sys.modules.get(module_name)
    if getattr(module, "__version__", None):
        return str(module.__version__)
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _cpuinfo_text() -> str:
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
