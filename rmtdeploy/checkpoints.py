"""A user's checkpoint: its state dict, what its head says, and the timm config saved beside it.

The common case is a timm model fine-tuned on the user's own classes, at the user's own size. The
checkpoint's classifier gives the class count; a config saved beside it gives the rest:

* ``config.json`` in timm's hub layout (``timm.models.save_for_hf`` / ``push_to_hf_hub``): ``architecture``,
  ``num_classes``, ``label_names``, ``model_args`` and a ``pretrained_cfg`` with the input size and
  preprocessing;
* ``args.yaml``, written by timm's ``train.py`` into its output folder beside ``model_best.pth.tar``:
  ``model``, ``num_classes``, ``input_size``/``img_size``, ``mean``, ``std``, ``crop_pct``,
  ``interpolation``, ``model_kwargs``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.preprocessing import InputConfig

SAVED_CONFIG_FILES = ("config.json", "args.yaml")
# State-dict keys whose shape follows the input size: a mismatch there means another training size.
_SIZE_KEYS = (
    "pos_embed",
    "relative_position_bias_table",
    "relative_position_index",
    "pos_embed_window",
    "absolute_pos_embed",
)


@dataclass(frozen=True)
class SavedConfig:
    """What a timm config beside a checkpoint says (every field optional)."""

    path: Path
    architecture: str | None = None
    num_classes: int | None = None
    labels: tuple[str, ...] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input: InputConfig = InputConfig()


def read_saved_config(checkpoint: str | os.PathLike) -> SavedConfig | None:
    """The first of :data:`SAVED_CONFIG_FILES` beside ``checkpoint``, read; None when there is none."""
    folder = Path(checkpoint).parent
    for name in SAVED_CONFIG_FILES:
        path = folder / name
        if path.is_file():
            return _read_hub_config(path) if name.endswith(".json") else _read_train_args(path)
    return None


def _read_hub_config(path: Path) -> SavedConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RmtdeployError(f"cannot read {path}: {str(exc).splitlines()[0][:160]}") from exc
    if not isinstance(data, dict):
        raise RmtdeployError(f"{path} is not a timm config (a JSON mapping)")
    cfg = data.get("pretrained_cfg", data)  # timm's legacy single-dict layout has the keys at the top
    labels = data.get("label_names", cfg.get("label_names") if isinstance(cfg, dict) else None)
    if isinstance(labels, dict):  # {index: name} with gaps: keep index order
        labels = [labels[k] for k in sorted(labels, key=int)]
    return SavedConfig(
        path=path,
        architecture=data.get("architecture"),
        num_classes=_classes(data.get("num_classes", cfg.get("num_classes")), path),
        labels=tuple(str(v) for v in labels) if labels else None,
        model_kwargs=_mapping(data.get("model_args"), "model_args", path),
        input=InputConfig.from_mapping(
            {k: cfg.get(k) for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}, str(path)
        ),
    )


def _read_train_args(path: Path) -> SavedConfig:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RmtdeployError(f"cannot read {path}: {str(exc).splitlines()[0][:160]}") from exc
    if not isinstance(data, dict):
        raise RmtdeployError(f"{path} is not timm train.py's args.yaml (a YAML mapping)")
    size = data.get("input_size") or data.get("img_size")
    return SavedConfig(
        path=path,
        architecture=data.get("model"),
        num_classes=_classes(data.get("num_classes"), path),
        model_kwargs=_mapping(data.get("model_kwargs"), "model_kwargs", path),
        input=InputConfig.from_mapping(
            {"size": size, **{k: data.get(k) for k in ("mean", "std", "interpolation", "crop_pct")}},
            str(path),
        ),
    )


def _classes(value: Any, path: Path) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RmtdeployError(f"{path}: num_classes must be an integer >= 0, got {value!r}")
    return value or None  # 0: a headless model; the checkpoint decides


def _mapping(value: Any, key: str, path: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RmtdeployError(f"{path}: {key} must be a mapping, got {type(value).__name__}")
    return dict(value)


def head_classes(model_name: str, state: dict[str, torch.Tensor]) -> tuple[int, str] | None:
    """(classes, key) of the checkpoint's classifier, found by timm's ``pretrained_cfg['classifier']``
    for ``model_name``; None for a headless checkpoint or an architecture timm names no classifier for."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    classifier = getattr(cfg, "classifier", None) if cfg is not None else None
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier] if classifier else []
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0]), f"{name}.weight"
    return None


def check_checkpoint_file(path: Path) -> None:
    if not path.is_file():
        raise RmtdeployError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise RmtdeployError(f"checkpoint {path} is empty")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file, unwrapping common training wrappers (timm's
    train.py checkpoints hold their ``argparse.Namespace`` of arguments too: allowed, nothing else is)."""
    path = Path(path)
    check_checkpoint_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RmtdeployError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from exc
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RmtdeployError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def state_dict_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """One-line description of missing / unexpected / wrongly shaped keys, or None when they match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None


def load_checkpoint_strict(
    model: nn.Module, path: str | os.PathLike, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Load a checkpoint (``state``: already read from ``path``) into ``model``; any key or shape mismatch
    is an error, not a silent partial load."""
    state = read_state_dict(path) if state is None else state
    problem = state_dict_mismatch(model, state)
    own = model.state_dict()
    resized = [k for k in own if k in state and state[k].shape != own[k].shape and k.endswith(_SIZE_KEYS)]
    if problem and not resized:
        # Checkpoints in an upstream layout (original repos) are converted by timm's per-family filter.
        module = __import__(type(model).__module__, fromlist=["checkpoint_filter_fn"])
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                converted = filter_fn(state, model)
                if state_dict_mismatch(model, converted) is None:
                    state, problem = converted, None
            except Exception:
                pass
    if problem:
        # Position tables follow the input size the model was trained at; timm's filter would resample them
        # silently, and the model would then run at a size it was not trained for.
        if resized:
            problem += (
                f"; {resized[0]} follows the input size: was it trained at another one? give it ({{param}})"
            )
        raise RmtdeployError(
            f"checkpoint {path} does not fit {type(model).__name__}: {problem}",
            param="input_size" if resized else None,
        )
    model.load_state_dict(state, strict=True)
