"""What one export runs with: the caller's arguments, then the target's values, then the defaults, and the
model's own input size (its adapter's example input, else timm's ``pretrained_cfg``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.targets import BACKENDS, TargetProfile, load_target

EXPORTERS = ("torchscript", "dynamo")
MIN_OPSET = 17
DYNAMO_MIN_OPSET = 18
DEFAULT_ATOL = 1e-3  # timm's onnx_validate compares to 3 decimals
DEFAULT_RTOL = 1e-3
_DEFAULTS = {"batch": 1, "dynamic_batch": True, "opset": MIN_OPSET, "backend": "onnxruntime"}


@dataclass(frozen=True)
class ExportSettings:
    """Everything one export runs with, after the target and the model filled in what was left unset."""

    input_shape: tuple[int, ...]
    input_shape_from: str
    batch: int
    dynamic_batch: bool
    opset: int
    backend: str
    target: str | None
    exporter: str
    simplify: str | None  # a SIMPLIFIERS name, or None
    verify: bool
    atol: float
    rtol: float
    input_name: str
    output_name: str
    metadata: dict[str, str] = field(default_factory=dict)
    images: Iterable[torch.Tensor] | None = None
    images_name: str = "images"

    @property
    def trace_batch(self) -> int:
        # torch.export specialises size-1 dims, and a batch-1 trace may bake the batch into Reshapes.
        return max(self.batch, 2) if self.dynamic_batch else self.batch

    @property
    def verify_batches(self) -> tuple[int, ...]:
        return tuple(sorted({self.batch, 3})) if self.dynamic_batch else (self.batch,)


def resolve_shape_and_runtime(
    model: nn.Module,
    target: TargetProfile | str | None,
    input_shape: Sequence[int] | None,
    batch: int | None,
    dynamic_batch: bool | None,
    opset: int | None,
    backend: str | None,
) -> dict[str, Any]:
    """Input shape, batch, opset and backend: explicit arguments, then the target's, then the defaults."""
    given = {"batch": batch, "dynamic_batch": dynamic_batch, "opset": opset, "backend": backend}
    profile = None
    if target is not None:
        profile = target if isinstance(target, TargetProfile) else load_target(target)
        chosen = _target_settings(profile, given)
    else:
        chosen = {key: _DEFAULTS[key] if value is None else value for key, value in given.items()}
    if input_shape is not None:
        shape, shape_from = tuple(int(d) for d in input_shape), "argument"
    else:
        shape, shape_from = _model_input_shape(model), "model"
    chosen["batch"] = int(chosen["batch"])
    return {
        **chosen,
        "input_shape": shape,
        "input_shape_from": shape_from,
        "target": None if profile is None else profile.name,
    }


def _target_settings(profile: TargetProfile, given: dict[str, Any]) -> dict[str, Any]:
    """The target's batch, dynamic batch, opset and backend; an explicit argument must agree with it."""
    dynamic = not profile.static_shapes
    wanted = {
        "batch": 1 if dynamic else profile.max_batch,
        "dynamic_batch": dynamic,
        "opset": profile.opset,
        "backend": profile.backend,
    }
    why = {
        "batch": f"a dynamic batch up to max_batch {profile.max_batch}"
        if dynamic
        else f"static_shapes with max_batch {profile.max_batch}: batch {profile.max_batch}",
        "dynamic_batch": f"static_shapes: {str(profile.static_shapes).lower()}",
        "opset": f"opset {profile.opset}",
        "backend": f"backend {profile.backend}",
    }
    conflicts = [
        f"{key}={value!r} conflicts with target '{profile.name}' ({why[key]})"
        for key, value in given.items()
        if value is not None
        and value != wanted[key]
        and not (key == "batch" and dynamic and value <= profile.max_batch)
    ]
    if conflicts:
        raise RmtdeployError(
            "; ".join(conflicts) + f" [{profile.source}]. Leave these arguments unset to take the "
            "target's values, or export without a target"
        )
    return {key: wanted[key] if value is None else value for key, value in given.items()}


def _model_input_shape(model: nn.Module) -> tuple[int, ...]:
    """(C, H, W) the model was built for: its adapter's example input, else timm's pretrained_cfg."""
    from rmtdeploy.adapters import find_adapter

    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" not in cfg:
        raise RmtdeployError(
            f"cannot tell the input size of this {type(model).__name__} (no timm pretrained_cfg "
            "'input_size'); pass input_shape=(C, H, W)"
        )
    adapter = find_adapter(model)
    # The adapter knows sizes the config does not (a ViT created with img_size=32 keeps cfg's 224).
    shape = adapter.example_inputs(model).shape[1:] if adapter is not None else cfg["input_size"]
    return tuple(int(d) for d in shape)


def check_export_arguments(
    input_shape: Sequence[int] | None,
    batch: int | None,
    opset: int | None,
    exporter: str,
    backend: str | None,
) -> None:
    """The caller's own values, before any target is read (``None`` = left to the target or default)."""
    if exporter not in EXPORTERS:
        raise RmtdeployError(f"exporter must be one of {', '.join(EXPORTERS)}, got '{exporter}'")
    if backend is not None and backend not in BACKENDS:
        raise RmtdeployError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if opset is not None and opset < MIN_OPSET:
        raise RmtdeployError(f"opset {opset} is too old: use >= {MIN_OPSET} so LayerNorm exports as one op")
    if input_shape is not None and (len(input_shape) != 3 or any(int(d) < 1 for d in input_shape)):
        raise RmtdeployError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    if batch is not None and batch < 1:
        raise RmtdeployError(f"batch must be >= 1, got {batch}")
