"""Deployment targets (``jetson-orin-nano``, ``gpu-fp16``, ``cpu-ort``, ...) as validated data.

Each target is one YAML file ``recipes/targets/<name>.yaml``; this module is the only place that
reads or checks them, and the rest of the code asks a :class:`TargetProfile` instead of hard-coding
device facts (channel multiples, TensorRT versions, DLA limits).

Where the recipes live
    1. ``$RMTDEPLOY_RECIPES`` when set: a folder holding ``targets/`` (for installed copies of the
       package, or a site's own profiles).
    2. Otherwise ``recipes/`` at the root of the source checkout this module sits in (``rmtdeploy/..``),
       which also covers ``pip install -e .``.
    A regular (non-editable) install does not carry ``recipes/``; set ``RMTDEPLOY_RECIPES`` to a
    checkout's ``recipes`` folder, or pass a YAML path to :func:`load_target` directly.

A target file holds exactly the fields of :class:`TargetProfile` (unknown keys are errors, so a typo
cannot silently fall back to a default); ``aliases`` gives extra names (``jetson`` ->
``jetson-orin-nano``). An onnxruntime target may say ``channel_multiple: auto``: the channel block of
the CPU it is loaded on (:func:`host_cpu_channel_multiple`), recorded in ``channel_multiple_from``.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from rmtdeploy.errors import RmtdeployError

RECIPES_ENV = "RMTDEPLOY_RECIPES"
BACKENDS = ("tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")
# Precisions each backend builds here: ORT's CPU provider runs fp32 (and int8 through quantised graphs).
_BACKEND_PRECISIONS = {"tensorrt": ("fp32", "fp16", "int8"), "onnxruntime": ("fp32", "int8")}
_VERSION_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)\s*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
AUTO = "auto"
# ONNX Runtime's CPU kernels (MLAS) block NCHWc convolutions by the SIMD width in floats: 16 with AVX-512,
# 8 with AVX2. A conv whose channels are not a multiple of the block falls back to the plain kernel
# behind Reorder nodes (resnet50 at 50% MACs ran 1.11-1.14x slower with 8 than 16 on an AVX-512 EPYC).
_AVX512_MULTIPLE, _DEFAULT_CPU_MULTIPLE = 16, 8


@dataclass(frozen=True)
class TargetProfile:
    """One deployment target. Field comments say what each stage uses it for."""

    name: str
    description: str
    backend: str  # "tensorrt" or "onnxruntime"
    precision: str  # "fp32", "fp16" or "int8": what the engine computes in
    channel_multiple: int  # pruning rounds kept widths to this (torch-pruning's round_to)
    dla: bool = False  # build for a Jetson DLA core (fp16/int8, static shapes, GPU fallback)
    static_shapes: bool = True  # export and build for exactly one batch and resolution
    max_batch: int = 1  # largest batch the engine / benchmark is built for
    workspace_mib: int | None = None  # TensorRT builder memory pool (trtexec --memPoolSize=workspace:N)
    opset: int = 17  # ONNX opset for the export (>= 17: LayerNorm is one op)
    tensorrt: str | None = None  # accepted TensorRT versions, e.g. ">=10.3,<11"; None for other backends
    jetpack: str | None = None  # JetPack release line the TensorRT expectation comes from
    threads: int | None = None  # CPU threads for onnxruntime targets; None = runtime default
    aliases: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    source: str = ""  # the YAML file it was read from
    channel_multiple_from: str = "profile"  # or how ``auto`` was resolved

    def accepts_tensorrt(self, version: str) -> bool:
        """Whether a TensorRT ``version`` (e.g. "10.3.0") meets this target's ``tensorrt`` range."""
        if self.tensorrt is None:
            return self.backend != "tensorrt"
        have = _version_tuple(version)
        return all(_compare(have, op, _version_tuple(v)) for op, v in _parse_spec(self.tensorrt))

    def precision_in_onnx(self, tensorrt_version: str) -> bool:
        """True when the ONNX itself must carry the precision (fp16 weights, int8 Q/DQ).

        TensorRT 11 removed ``--fp16``/``--int8`` and the matching builder flags: networks are strongly
        typed, so an fp16/int8 engine needs an fp16/Q-DQ ONNX. TensorRT 10 still takes the flags.
        """
        if self.backend != "tensorrt" or self.precision == "fp32":
            return False
        return _version_tuple(tensorrt_version)[0] >= 11

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def recipes_dir() -> Path:
    """The recipes folder: ``$RMTDEPLOY_RECIPES`` if set, else ``recipes/`` of this source checkout."""
    env = os.environ.get(RECIPES_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path / "targets").is_dir():
            raise RmtdeployError(f"${RECIPES_ENV}={env} has no targets/ folder")
        return path
    path = Path(__file__).resolve().parent.parent / "recipes"
    if not (path / "targets").is_dir():
        raise RmtdeployError(
            f"no recipes/targets folder next to the package ({path}); set ${RECIPES_ENV} to a recipes "
            "folder (e.g. a source checkout's recipes/) or pass a target YAML path"
        )
    return path


def list_targets() -> list[str]:
    """Names of the shipped targets (file stems of ``recipes/targets/*.yaml``), sorted."""
    return sorted(p.stem for p in _target_files())


def target_aliases() -> dict[str, str]:
    """Alias -> target name, from the ``aliases`` field of every shipped target."""
    aliases: dict[str, str] = {}
    for path in _target_files():
        data = _read_yaml(path)
        for alias in data.get("aliases") or ():
            alias = str(alias)
            if alias in aliases and aliases[alias] != path.stem:
                raise RmtdeployError(
                    f"target alias '{alias}' is claimed by both {aliases[alias]} and {path.stem}"
                )
            aliases[alias] = path.stem
    return aliases


def load_target(name_or_path: str | os.PathLike) -> TargetProfile:
    """Load and validate a target by name, alias (``jetson``) or YAML path."""
    text = str(name_or_path)
    # Only something that looks like a file is a path: a stray file named "jetson" in the cwd is not.
    if text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise RmtdeployError(f"target file not found: {path}")
        return _profile_from_file(path, expected_name=None)
    names = list_targets()
    name = target_aliases().get(text, text)
    if name not in names:
        aliases = ", ".join(f"{a} -> {t}" for a, t in sorted(target_aliases().items()))
        raise RmtdeployError(
            f"unknown target '{text}'. Known targets: {', '.join(names)}"
            + (f" (aliases: {aliases})" if aliases else "")
            + "; or pass a target YAML path"
        )
    return _profile_from_file(recipes_dir() / "targets" / f"{name}.yaml", expected_name=name)


def host_cpu_channel_multiple(cpu_flags: set[str] | None = None) -> tuple[int, str]:
    """Channel multiple for ONNX Runtime on this CPU, and why: 16 with AVX-512, else 8.

    ``cpu_flags`` overrides what ``/proc/cpuinfo`` says (for tests). Where the flags cannot be read
    (not Linux, not x86-64) the answer is 8, which suits AVX2 and Arm NEON alike.
    """
    if cpu_flags is None:
        cpu_flags = _host_cpu_flags()
    if "avx512f" in cpu_flags:
        return _AVX512_MULTIPLE, "auto, host CPU has avx512f: ONNX Runtime blocks convolutions by 16"
    if cpu_flags:
        return _DEFAULT_CPU_MULTIPLE, "auto, host CPU has no avx512f: ONNX Runtime blocks by 8"
    return _DEFAULT_CPU_MULTIPLE, f"auto, CPU flags unreadable on {platform.machine() or 'this machine'}: 8"


# --------------------------------------------------------------------------------------------- internals


def _host_cpu_flags() -> set[str]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _target_files() -> list[Path]:
    folder = recipes_dir() / "targets"
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RmtdeployError(f"target file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise RmtdeployError(f"cannot read target file {path}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise RmtdeployError(f"target file {path} must hold a mapping of fields, not {type(data).__name__}")
    return data


def _profile_from_file(path: Path, expected_name: str | None) -> TargetProfile:
    data = _read_yaml(path)
    where = f"target {path.name}"
    known = {f.name for f in fields(TargetProfile)} - {"source", "channel_multiple_from"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RmtdeployError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    for required in ("name", "description", "backend", "precision", "channel_multiple"):
        if data.get(required) is None:
            raise RmtdeployError(f"{where}: missing required field '{required}'")

    name = _typed(data, "name", str, where)
    if not _NAME.match(name):
        raise RmtdeployError(f"{where}: name '{name}' must be lower-case letters, digits, '-', '_' or '.'")
    if expected_name is not None and name != expected_name:
        raise RmtdeployError(f"{where}: name '{name}' differs from the file name '{expected_name}'")
    backend = _choice(data, "backend", BACKENDS, where)
    precision = _choice(data, "precision", PRECISIONS, where)
    if precision not in _BACKEND_PRECISIONS[backend]:
        raise RmtdeployError(
            f"{where}: precision '{precision}' is not available with backend '{backend}' "
            f"(use {', '.join(_BACKEND_PRECISIONS[backend])})"
        )
    multiple_from = "profile"
    if data["channel_multiple"] == AUTO:
        if backend != "onnxruntime":
            raise RmtdeployError(
                f"{where}: channel_multiple 'auto' reads the host CPU, so it only applies to backend "
                "onnxruntime; give a number for a device target"
            )
        multiple, multiple_from = host_cpu_channel_multiple()
    else:
        multiple = _typed(data, "channel_multiple", int, where)
    if multiple < 1 or multiple > 128 or multiple & (multiple - 1):
        raise RmtdeployError(
            f"{where}: channel_multiple must be a power of two from 1 to 128, got {multiple}"
        )

    dla = _typed(data, "dla", bool, where, default=False)
    static_shapes = _typed(data, "static_shapes", bool, where, default=True)
    if dla:
        # DLA facts: TensorRT only, fp16/int8 only, static shapes only.
        if backend != "tensorrt" or precision == "fp32":
            raise RmtdeployError(f"{where}: dla needs backend tensorrt with precision fp16 or int8")
        if not static_shapes:
            raise RmtdeployError(f"{where}: dla supports static shapes only (set static_shapes: true)")
    max_batch = _positive(data, "max_batch", where, default=1)
    workspace = _positive(data, "workspace_mib", where, default=None)
    opset = _typed(data, "opset", int, where, default=17)
    if opset < 17:
        raise RmtdeployError(f"{where}: opset must be >= 17 (LayerNorm as one op), got {opset}")
    threads = _positive(data, "threads", where, default=None)

    tensorrt = data.get("tensorrt")
    if backend == "tensorrt":
        if tensorrt is None:
            raise RmtdeployError(
                f"{where}: backend tensorrt needs a 'tensorrt' version range such as '>=10.3'"
            )
        tensorrt = str(tensorrt)
        try:
            _parse_spec(tensorrt)
        except ValueError as exc:
            raise RmtdeployError(f"{where}: tensorrt {exc}") from exc
    elif tensorrt is not None:
        raise RmtdeployError(f"{where}: 'tensorrt' only applies to backend tensorrt")

    jetpack = data.get("jetpack")
    return TargetProfile(
        name=name,
        description=_typed(data, "description", str, where),
        backend=backend,
        precision=precision,
        channel_multiple=multiple,
        channel_multiple_from=multiple_from,
        dla=dla,
        static_shapes=static_shapes,
        max_batch=max_batch,
        workspace_mib=workspace,
        opset=opset,
        tensorrt=tensorrt,
        jetpack=None if jetpack is None else str(jetpack),
        threads=threads,
        aliases=_str_tuple(data, "aliases", where),
        notes=_str_tuple(data, "notes", where),
        source=str(path),
    )


def _typed(data: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = data.get(key, default)
    if value is None:
        return default
    # bool is a subclass of int in Python: reject `channel_multiple: true` explicitly.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RmtdeployError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def _positive(data: dict[str, Any], key: str, where: str, default: int | None) -> int | None:
    value = _typed(data, key, int, where, default=default)
    if value is not None and value < 1:
        raise RmtdeployError(f"{where}: '{key}' must be >= 1, got {value}")
    return value


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> str:
    value = data.get(key)
    if value not in allowed:
        raise RmtdeployError(f"{where}: '{key}' must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _str_tuple(data: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RmtdeployError(f"{where}: '{key}' must be a list of strings")
    return tuple(value)


def _parse_spec(spec: str) -> list[tuple[str, str]]:
    """'>=10.3,<11' -> [('>=', '10.3'), ('<', '11')]; ValueError on anything else."""
    clauses = []
    for part in spec.split(","):
        match = _VERSION_CLAUSE.match(part)
        if not match:
            raise ValueError(f"version range '{spec}' is not like '>=10.3,<11'")
        clauses.append((match.group(1), match.group(2)))
    return clauses


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", str(version).split("+")[0])
    if not parts:
        raise RmtdeployError(f"cannot read a version number from '{version}'")
    return tuple(int(p) for p in parts[:3])


def _compare(have: tuple[int, ...], op: str, want: tuple[int, ...]) -> bool:
    # Pad to equal length so 10.3 == 10.3.0.
    width = max(len(have), len(want))
    a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
    return {
        ">=": a >= b,
        "<=": a <= b,
        "==": a == b,
        "!=": a != b,
        ">": a > b,
        "<": a < b,
    }[op]
