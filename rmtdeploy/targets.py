"""Deployment targets (``jetson-orin-nano``, ``gpu-fp16``, ``cpu-ort``, ...) as validated data.

Each target is one YAML file ``recipes/targets/<name>.yaml``; this module is the only place that
reads or checks them, and the rest of the code asks a :class:`TargetProfile` instead of hard-coding
device facts (channel multiples, TensorRT versions, DLA limits).

Where the recipes live
    The repository keeps them in its top-level ``recipes/`` folder, which the packaging installs as the
    package ``rmtdeploy.recipes``: wheels and editable installs alike carry the YAMLs, read through
    ``importlib.resources``, so any install works from any working directory.
    ``$RMTDEPLOY_RECIPES``, when set, replaces them: a folder holding ``targets/`` (a site's own
    profiles). A single profile can also be loaded by its YAML path (:func:`load_target`).

A target file holds exactly the fields of :class:`TargetProfile` (unknown keys are errors, so a typo
cannot silently fall back to a default); ``aliases`` gives extra names (``jetson`` ->
``jetson-orin-nano``). An onnxruntime target may say ``channel_multiple: auto``: the channel block of
the CPU it is loaded on (:func:`host_cpu_channel_multiple`), recorded in ``channel_multiple_from``.
"""

from __future__ import annotations

import importlib.resources
import os
import platform
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

from rmtdeploy.errors import RmtdeployError

RECIPES_ENV = "RMTDEPLOY_RECIPES"
RECIPES_PACKAGE = "rmtdeploy.recipes"  # the repository's recipes/ folder, installed (see pyproject.toml)
_TARGET_SUFFIXES = (".yaml", ".yml")
BACKENDS = ("tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")
# Precisions each backend builds here: ORT's CPU provider runs fp32 (and int8 through quantised graphs).
_BACKEND_PRECISIONS = {"tensorrt": ("fp32", "fp16", "int8"), "onnxruntime": ("fp32", "int8")}
_VERSION_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)\s*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
AUTO = "auto"
# ONNX Runtime's CPU kernels (MLAS) block NCHWc convolutions by the SIMD width in floats: 16 with AVX-512,
# 8 with AVX2. A conv whose channels are not a multiple of the block falls back to the plain kernel
# behind Reorder nodes, measurably slower (benchmarks/results/prune_speedup.md).
_AVX512_MULTIPLE, _DEFAULT_CPU_MULTIPLE = 16, 8


@dataclass(frozen=True)
class TargetProfile:
    """One deployment target. Field comments say which stage reads each field.

    Stages today: prune (``channel_multiple``) and export (``backend``, ``static_shapes``, ``max_batch``,
    ``opset``; see :func:`rmtdeploy.exporting.export_onnx`). The engine stage (TensorRT build, coming)
    reads ``precision``, ``dla``, ``workspace_mib``, ``tensorrt`` and ``jetpack``; the benchmark stage
    reads ``threads`` once it takes a target (coming; today it takes ``threads=`` directly).
    """

    name: str
    description: str
    # export: the family adapter's export forms for this runtime; engine (coming): which builder runs.
    backend: str  # "tensorrt" or "onnxruntime"
    # engine (coming): builder flags, or an fp16 / Q-DQ ONNX from TensorRT 11 (precision_in_onnx).
    precision: str  # "fp32", "fp16" or "int8": what the engine computes in
    channel_multiple: int  # prune: kept widths are rounded to this (torch-pruning's round_to)
    dla: bool = False  # engine (coming): build for a Jetson DLA core (fp16/int8, static, GPU fallback)
    # export + engine: one input shape (batch max_batch, the model's H/W), else a dynamic batch dim.
    static_shapes: bool = True
    # export: the static batch, or the bound on an explicit batch; engine/benchmark (coming): largest batch.
    max_batch: int = 1
    # engine: the dynamic-batch profile's opt batch (TensorRT picks kernels for it); None = max_batch.
    opt_batch: int | None = None
    workspace_mib: int | None = None  # engine (coming): builder memory pool (--memPoolSize=workspace:N)
    opset: int = 17  # export: ONNX opset (>= 17: LayerNorm is one op)
    # engine: accepted TensorRT versions (accepts_tensorrt), e.g. ">=10.3,<11"; alternatives joined by
    # "||" (">=10.3,<11 || >=11.4.1"); None for other backends.
    tensorrt: str | None = None
    jetpack: str | None = None  # engine/report (coming): JetPack line the TensorRT range comes from
    threads: int | None = None  # benchmark (coming): CPU threads for onnxruntime; None = runtime default
    aliases: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    source: str = ""  # the YAML file it was read from
    channel_multiple_from: str = "profile"  # or how ``auto`` was resolved

    def accepts_tensorrt(self, version: str) -> bool:
        """Whether a TensorRT ``version`` (e.g. "10.3.0") meets this target's ``tensorrt`` range."""
        if self.tensorrt is None:
            return self.backend != "tensorrt"
        have = _version_tuple(version)
        return any(
            all(_compare(have, op, _version_tuple(v)) for op, v in clauses)
            for clauses in _parse_alternatives(self.tensorrt)
        )

    def accepts_tensorrt_major(self, major: int) -> bool:
        """Whether some TensorRT ``major``.x meets the range (">=10.3,<11 || >=11.4.1" admits 11): tries
        ``major``.0 and each bound the range names within that major, and just above it."""
        bounds = [
            (*v, 0, 0)[:3] for clauses in self.tensorrt_alternatives() for _, v in clauses if v[0] == major
        ]
        tries = [(major, 0, 0), *bounds, *((a, b, c + 1) for a, b, c in bounds)]
        return any(self.accepts_tensorrt(".".join(map(str, version))) for version in tries)

    def tensorrt_alternatives(self) -> list[list[tuple[str, tuple[int, ...]]]]:
        """The ``tensorrt`` range as alternatives of (operator, version) clauses, for checks written
        elsewhere (the bundle's build script); empty for other backends."""
        if self.tensorrt is None:
            return []
        return [
            [(op, _version_tuple(v)) for op, v in clauses] for clauses in _parse_alternatives(self.tensorrt)
        ]

    @property
    def profile_opt_batch(self) -> int:
        """The batch a dynamic-batch engine is tuned for: ``opt_batch``, else ``max_batch``."""
        return self.opt_batch or self.max_batch

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


def recipes_dir() -> Traversable:
    """The recipes folder: ``$RMTDEPLOY_RECIPES`` if set, else the installed ``rmtdeploy.recipes``.

    A :class:`~importlib.resources.abc.Traversable` (a :class:`~pathlib.Path` when it is on disk).
    """
    env = os.environ.get(RECIPES_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path / "targets").is_dir():
            raise RmtdeployError(f"${RECIPES_ENV}={env} has no targets/ folder")
        return path
    try:
        folder = importlib.resources.files(RECIPES_PACKAGE)
    except ModuleNotFoundError as exc:
        raise RmtdeployError(
            f"the recipes package {RECIPES_PACKAGE} is not installed (a source tree on sys.path rather "
            f"than `pip install`?); install the package, set ${RECIPES_ENV} to a recipes folder, or "
            "pass a target YAML path"
        ) from exc
    if not folder.joinpath("targets").is_dir():
        raise RmtdeployError(f"the installed {RECIPES_PACKAGE} has no targets/ folder ({folder})")
    return folder


def list_targets() -> list[str]:
    """Names of the shipped targets (file stems of ``recipes/targets/*.yaml``), sorted."""
    return sorted(_target_files())


def target_aliases() -> dict[str, str]:
    """Alias -> target name, from the ``aliases`` field of every shipped target."""
    aliases: dict[str, str] = {}
    for name, file in _target_files().items():
        data = _read_yaml(file)
        for alias in data.get("aliases") or ():
            alias = str(alias)
            if alias in aliases and aliases[alias] != name:
                raise RmtdeployError(f"target alias '{alias}' is claimed by both {aliases[alias]} and {name}")
            aliases[alias] = name
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
    files = _target_files()
    aliases = target_aliases()
    name = aliases.get(text, text)
    if name not in files:
        known = ", ".join(f"{a} -> {t}" for a, t in sorted(aliases.items()))
        raise RmtdeployError(
            f"unknown target '{text}'. Known targets: {', '.join(sorted(files))}"
            + (f" (aliases: {known})" if known else "")
            + "; or pass a target YAML path"
        )
    return _profile_from_file(files[name], expected_name=name)


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
    from rmtdeploy.machine import cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    return cpu_flags()


def _target_files() -> dict[str, Traversable]:
    """Target name (file stem) -> its YAML file in the recipes folder's ``targets/``."""
    files: dict[str, Traversable] = {}
    for file in recipes_dir().joinpath("targets").iterdir():
        stem, suffix = os.path.splitext(file.name)
        if suffix not in _TARGET_SUFFIXES or not file.is_file():
            continue
        if stem in files:
            raise RmtdeployError(f"target '{stem}' has two files: {files[stem].name} and {file.name}")
        files[stem] = file
    return files


def _read_yaml(path: Path | Traversable) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RmtdeployError(f"target file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise RmtdeployError(f"cannot read target file {path}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise RmtdeployError(f"target file {path} must hold a mapping of fields, not {type(data).__name__}")
    return data


def _profile_from_file(path: Path | Traversable, expected_name: str | None) -> TargetProfile:
    data = _read_yaml(path)
    where = f"target {path.name}"
    _check_field_names(data, where)
    name = _checked_name(data, where, expected_name)
    backend, precision = _backend_and_precision(data, where)
    multiple, multiple_from = _channel_multiple(data, backend, where)
    dla, static_shapes = _dla_and_shapes(data, backend, precision, where)
    opset = _typed(data, "opset", int, where, default=17)
    if opset < 17:
        raise RmtdeployError(f"{where}: opset must be >= 17 (LayerNorm as one op), got {opset}")
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
        max_batch=_positive(data, "max_batch", where, default=1),
        opt_batch=_opt_batch(data, where),
        workspace_mib=_positive(data, "workspace_mib", where, default=None),
        opset=opset,
        tensorrt=_tensorrt_range(data, backend, where),
        jetpack=None if jetpack is None else str(jetpack),
        threads=_positive(data, "threads", where, default=None),
        aliases=_str_tuple(data, "aliases", where),
        notes=_str_tuple(data, "notes", where),
        source=str(path),
    )


def _check_field_names(data: dict[str, Any], where: str) -> None:
    """Unknown keys are errors (a typo must not fall back to a default); required ones must be set."""
    known = {f.name for f in fields(TargetProfile)} - {"source", "channel_multiple_from"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RmtdeployError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    for required in ("name", "description", "backend", "precision", "channel_multiple"):
        if data.get(required) is None:
            raise RmtdeployError(f"{where}: missing required field '{required}'")


def _checked_name(data: dict[str, Any], where: str, expected_name: str | None) -> str:
    name = _typed(data, "name", str, where)
    if not _NAME.match(name):
        raise RmtdeployError(f"{where}: name '{name}' must be lower-case letters, digits, '-', '_' or '.'")
    if expected_name is not None and name != expected_name:
        raise RmtdeployError(f"{where}: name '{name}' differs from the file name '{expected_name}'")
    return name


def _backend_and_precision(data: dict[str, Any], where: str) -> tuple[str, str]:
    backend = _choice(data, "backend", BACKENDS, where)
    precision = _choice(data, "precision", PRECISIONS, where)
    if precision not in _BACKEND_PRECISIONS[backend]:
        raise RmtdeployError(
            f"{where}: precision '{precision}' is not available with backend '{backend}' "
            f"(use {', '.join(_BACKEND_PRECISIONS[backend])})"
        )
    return backend, precision


def _channel_multiple(data: dict[str, Any], backend: str, where: str) -> tuple[int, str]:
    """The multiple and where it came from: the profile's number, or ``auto`` resolved on this CPU."""
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
    return multiple, multiple_from


def _dla_and_shapes(data: dict[str, Any], backend: str, precision: str, where: str) -> tuple[bool, bool]:
    dla = _typed(data, "dla", bool, where, default=False)
    static_shapes = _typed(data, "static_shapes", bool, where, default=True)
    if dla:
        # DLA facts: TensorRT only, fp16/int8 only, static shapes only.
        if backend != "tensorrt" or precision == "fp32":
            raise RmtdeployError(f"{where}: dla needs backend tensorrt with precision fp16 or int8")
        if not static_shapes:
            raise RmtdeployError(f"{where}: dla supports static shapes only (set static_shapes: true)")
    return dla, static_shapes


def _tensorrt_range(data: dict[str, Any], backend: str, where: str) -> str | None:
    tensorrt = data.get("tensorrt")
    if backend != "tensorrt":
        if tensorrt is not None:
            raise RmtdeployError(f"{where}: 'tensorrt' only applies to backend tensorrt")
        return None
    if tensorrt is None:
        raise RmtdeployError(f"{where}: backend tensorrt needs a 'tensorrt' version range such as '>=10.3'")
    try:
        _parse_alternatives(str(tensorrt))
    except ValueError as exc:
        raise RmtdeployError(f"{where}: tensorrt {exc}") from exc
    return str(tensorrt)


def _opt_batch(data: dict[str, Any], where: str) -> int | None:
    opt = _positive(data, "opt_batch", where, default=None)
    max_batch = _positive(data, "max_batch", where, default=1)
    if opt is not None and opt > max_batch:
        raise RmtdeployError(f"{where}: opt_batch {opt} exceeds max_batch {max_batch}")
    return opt


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


def _parse_alternatives(spec: str) -> list[list[tuple[str, str]]]:
    """'>=10.3,<11 || >=11.4.1' -> one clause list per alternative (any may hold)."""
    return [_parse_spec(part) for part in spec.split("||")]


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
