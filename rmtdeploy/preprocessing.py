"""What a model is fed: its input size and preprocessing, as timm's data config keys.

A model fine-tuned by its user was trained at its own size with its own normalisation. Those facts come
from the command line, a recipe's ``input:`` section, or a timm config saved beside the checkpoint
(:mod:`rmtdeploy.checkpoints`), and are written into the model's ``pretrained_cfg``: every stage reads
them from there through timm's ``resolve_data_config`` (data transforms, export's static H×W, parity, the
bench's input, the ONNX metadata an app reads), and a pruning plan carries them on (``data_config``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from rmtdeploy.errors import RmtdeployError

# timm's resize filters (``timm.data.transforms.str_to_interp_mode``).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# The keys of timm's data config this module carries, in the order reports show them.
DATA_CONFIG_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")


_SIZE_KEYS = ("size", "input_size", "img_size")  # one input size, by any of its names


@dataclass(frozen=True)
class InputConfig:
    """Any subset of timm's data config; ``None`` means "the model's own". ``source`` says where the given
    values came from (reports say it)."""

    input_size: tuple[int, int, int] | None = None  # (C, H, W)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    source: str = "the model's default"

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | None, source: str) -> InputConfig:
        """From ``size``/``input_size``/``img_size`` (an int, [H, W] or [C, H, W]), ``mean``, ``std``,
        ``interpolation``, ``crop_pct``; unset and null keys stay the model's own."""
        values = {k: v for k, v in (values or {}).items() if v is not None and v != ""}  # timm: "" is unset
        sizes = {key: values.pop(key) for key in _SIZE_KEYS if key in values}
        parsed = {key: parse_input_size(value, source) for key, value in sizes.items()}
        if len(set(parsed.values())) > 1:
            shown = ", ".join(f"{key} {value!r}" for key, value in sizes.items())
            raise RmtdeployError(
                f"{source}: the input size is given twice and the two differ ({shown}); give one"
            )
        size = next(iter(sizes.values()), None)
        unknown = sorted(set(values) - set(DATA_CONFIG_KEYS))
        if unknown:
            allowed = ", ".join(("size", *DATA_CONFIG_KEYS[1:]))
            raise RmtdeployError(f"{source}: unknown input key(s) {', '.join(unknown)}; allowed: {allowed}")
        given = {
            "input_size": parse_input_size(size, source) if size is not None else None,
            "mean": _channel_values("mean", values.get("mean"), source),
            "std": _channel_values("std", values.get("std"), source),
            "interpolation": values.get("interpolation"),
            "crop_pct": values.get("crop_pct"),
        }
        return cls(
            **given, source=source if any(v is not None for v in given.values()) else cls.source
        ).check()

    def check(self) -> InputConfig:
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise RmtdeployError(
                f"{{param}} must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}",
                param="interpolation",
            )
        if self.crop_pct is not None and not (_number(self.crop_pct) and 0 < self.crop_pct <= 1):
            raise RmtdeployError(
                f"{{param}} must be a fraction in (0, 1], got {self.crop_pct!r}", param="crop_pct"
            )
        if self.std is not None and any(v <= 0 for v in self.std):
            raise RmtdeployError(f"{{param}} must be > 0 per channel, got {list(self.std)}", param="std")
        channels = self.input_size[0] if self.input_size else None
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and channels is not None and len(values) not in (1, channels):
                raise RmtdeployError(
                    f"{{param}} has {len(values)} values for {channels} input channels", param=name
                )
        return self

    @property
    def given(self) -> dict[str, Any]:
        """The values set here (lists, as JSON and timm take them)."""
        out = {}
        for key in DATA_CONFIG_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def over(self, base: InputConfig) -> InputConfig:
        """These values where set, ``base``'s elsewhere; the source names both when both gave some."""
        merged = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}
        for key, value in merged.items():
            if value is None:
                merged[key] = getattr(base, key)
        sources = [c.source for c in (self, base) if c.given]
        return replace(self, **merged, source=" over ".join(sources) or InputConfig.source).check()

    def apply(self, model) -> None:
        """Write the given values into ``model.pretrained_cfg`` (where timm's data config reads them)."""
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        for key, value in self.given.items():
            cfg[key] = tuple(value) if isinstance(value, list) else value
        channels = cfg.get("input_size", (3,))[0]
        for key in ("mean", "std"):  # one value given for every channel
            if key in self.given and len(cfg[key]) == 1:
                cfg[key] = tuple(cfg[key]) * channels
        if self.input_size is not None:
            cfg.pop("test_input_size", None)  # a size from the user wins over timm's test-time hint
        model.pretrained_cfg = cfg


def parse_input_size(value: Any, source: str = "input size") -> tuple[int, int, int]:
    """``224``, ``"224"``, ``"160x192"``, ``[160, 192]`` or ``[3, 160, 192]`` -> (C, H, W) (3 channels
    unless given)."""
    parts: list[Any]
    if isinstance(value, str):
        parts = [p for p in value.lower().replace("×", "x").replace(",", "x").split("x") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        numbers = [int(p) if not isinstance(p, bool) and float(p) == int(float(p)) else None for p in parts]
    except (TypeError, ValueError):
        numbers = [None]
    if None in numbers or len(numbers) not in (1, 2, 3) or any(n < 1 for n in numbers):
        raise RmtdeployError(
            f"{{param}} must be N, HxW or CxHxW in pixels, got {value!r} ({source})", param="input_size"
        )
    if len(numbers) == 1:
        numbers = numbers * 2
    chans, height, width = numbers if len(numbers) == 3 else (3, *numbers)
    return int(chans), int(height), int(width)


def model_data_config(model) -> dict[str, Any]:
    """The model's resolved data config (timm's), as plain JSON values, in :data:`DATA_CONFIG_KEYS`."""
    import timm.data

    config = timm.data.resolve_data_config({}, model=model)
    return {
        "input_size": [int(v) for v in config["input_size"]],
        "mean": [round(float(v), 6) for v in config["mean"]],
        "std": [round(float(v), 6) for v in config["std"]],
        "interpolation": str(config.get("interpolation", "bilinear")),
        "crop_pct": float(config.get("crop_pct", 1.0)),
    }


def _channel_values(name: str, value: Any, source: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(_number(v) for v in values):
        raise RmtdeployError(
            f"{{param}} must be one number per channel, got {value!r} ({source})", param=name
        )
    return tuple(float(v) for v in values)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
