"""Compression recipes: what ``rmtdeploy compress`` does to a model, as YAML data.

A recipe names the model and target, the strategy and its budget (a MAC fraction or a latency budget),
how to fine-tune, export and benchmark, and, for the embedded default, how to train the dense model from
scratch on a built-in dataset. Shipped recipes live in ``recipes/compress/*.yaml`` (installed as package
data); ``--recipe`` takes a shipped name or a YAML path; command-line flags override it. Every key is
checked: an unknown one is named with the keys allowed where it stood.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rmtdeploy.benchmark.stage import BENCH_BACKENDS
from rmtdeploy.bundle.stage import check_sweep
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.finetuning.stage import FinetuneRecipe, ScratchRecipe
from rmtdeploy.models import ModelSource
from rmtdeploy.preprocessing import InputConfig

DEFAULT_KEEP_MACS = 0.5
DEFAULT_TARGET = "jetson"
WEIGHTS = ("pretrained", "random", "trained", "checkpoint")
INT8_CHOICES = ("auto", True, False)  # auto: when the target's precision is int8

EXPORT_DEFAULTS: dict[str, Any] = {"int8": "auto", "parity_images": 256, "calibration_images": 256}
BENCH_DEFAULTS: dict[str, Any] = {
    "backend": "onnxruntime",
    "batch": 1,
    "threads": None,
    "runs": 50,
    "warmup": 10,
}
# sweep: keep ratios the Jetson bundle adds as candidates, timed together on the board (a measured curve);
# latency_table: the bundle adds the dense model's latency-table graphs, for the board to time.
BUNDLE_DEFAULTS: dict[str, Any] = {"sweep": None, "latency_table": False}


@dataclass
class CompressRecipe:
    """A resolved recipe: every value known, nothing left to a later default."""

    model: str | None = None
    weights: str | None = None  # None: checkpoint when one is given, else pretrained
    checkpoint: str | None = None
    num_classes: int | None = None  # None: the checkpoint's head says it (or timm's default)
    model_kwargs: dict[str, Any] = field(
        default_factory=dict
    )  # timm create kwargs (not for weights: trained)
    input: dict[str, Any] = field(default_factory=dict)  # size, mean, std, interpolation, crop_pct
    target: str = DEFAULT_TARGET
    strategy: str | None = None  # None: the prune stage's default (by family, with data; docs/strategies.md)
    knobs: dict[str, Any] = field(default_factory=dict)
    keep_macs: float | None = None  # None with no latency budget: DEFAULT_KEEP_MACS
    latency_budget_ms: float | None = None
    latency_reference: str | None = None  # a device's bench.json: judge the budget by that device's latency
    device_results: str | None = None  # a device's measured sweep (bench.json): pick the keep ratio from it
    latency_aware: bool = False
    latency_table: str | None = None  # a latency table measured on the target: the table's allocation
    data: str | None = None  # built-in dataset name or ImageFolder: BN recalibration, fine-tune, parity, INT8
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneRecipe fields; epochs 0: no fine-tune
    export: dict[str, Any] = field(default_factory=lambda: dict(EXPORT_DEFAULTS))
    bench: dict[str, Any] = field(default_factory=lambda: dict(BENCH_DEFAULTS))
    bundle: dict[str, Any] = field(default_factory=lambda: dict(BUNDLE_DEFAULTS))
    train: dict[str, Any] = field(default_factory=dict)  # ScratchRecipe fields, for weights: trained
    description: str = ""
    source: str = "defaults"  # where the recipe came from (name or path), for the report

    # -- typed views -------------------------------------------------------------------------------
    @property
    def budget(self) -> dict[str, float]:
        if self.latency_budget_ms is not None:
            return {"latency_budget_ms": self.latency_budget_ms}
        return {"keep_macs": self.keep_macs if self.keep_macs is not None else DEFAULT_KEEP_MACS}

    def finetune_recipe(self) -> FinetuneRecipe:
        fields = {k: v for k, v in self.finetune.items() if k != "epochs" or v}
        return FinetuneRecipe(**fields).check()

    @property
    def finetune_epochs(self) -> int:
        return int(self.finetune.get("epochs", FinetuneRecipe().epochs))

    def scratch_recipe(self) -> ScratchRecipe:
        return ScratchRecipe(**self.train)

    def input_config(self) -> InputConfig:
        """The ``input`` section as an :class:`InputConfig` (values not given stay the model's own)."""
        return InputConfig.from_mapping(self.input, f"recipe {self.source} and the command line")

    def model_source(self) -> ModelSource:
        """The dense model, for every weight source but ``trained`` (see :meth:`scratch_recipe`)."""
        return ModelSource(self.model, self.weights, self.checkpoint, self.num_classes,
                           dict(self.model_kwargs), self.input_config())  # fmt: skip

    def int8_enabled(self, target_precision: str) -> bool:
        choice = self.export["int8"]
        return choice is True or (choice == "auto" and target_precision == "int8")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> CompressRecipe:
        """Every rule that needs no model: raise naming the key and what it takes."""
        if not self.model:
            raise RmtdeployError("no model: give {param} or a recipe that names one", param="model")
        _choice("weights", self.weights, WEIGHTS, allow_none=True)
        if self.weights == "trained":
            self.scratch_recipe().check()
            given = [k for k in ("num_classes", "model_kwargs", "input") if getattr(self, k)]
            if given:
                raise RmtdeployError(
                    f"{', '.join(given)} describe(s) a model brought by the user; weights 'trained' builds its own "
                    "from train.model_kwargs and train.image_size"
                )
        else:
            if not isinstance(self.model_kwargs, dict):
                raise RmtdeployError(
                    f"model_kwargs must be a mapping of timm create kwargs, got {self.model_kwargs!r}"
                )
            self.model_source().check()
        budget_given = [k for k in ("keep_macs", "latency_budget_ms") if getattr(self, k) is not None]
        if len(budget_given) == 2:
            raise RmtdeployError("give one budget: keep_macs or latency_budget_ms, not both")
        if self.keep_macs is not None and not (_number(self.keep_macs) and 0 < self.keep_macs <= 1):
            raise RmtdeployError(f"keep_macs must be a fraction in (0, 1], got {self.keep_macs!r}")
        if self.latency_budget_ms is not None and not (
            _number(self.latency_budget_ms) and self.latency_budget_ms > 0
        ):
            raise RmtdeployError(
                f"latency_budget_ms must be a time in ms > 0, got {self.latency_budget_ms!r}"
            )
        if self.latency_reference is not None and self.latency_budget_ms is None:
            raise RmtdeployError("latency_reference judges a latency budget: give latency_budget_ms too")
        self._check_device_inputs()
        self._check_latency_table()
        searched = (
            self.latency_budget_ms is not None and self.device_results is None and self.latency_table is None
        )
        if searched and self.bench["backend"] != "onnxruntime":
            raise RmtdeployError(
                "a latency budget is searched on ONNX Runtime CPU: bench.backend onnxruntime"
            )
        _choice("export.int8", self.export["int8"], INT8_CHOICES)
        _choice("bench.backend", self.bench["backend"], BENCH_BACKENDS)
        for key in ("parity_images", "calibration_images"):
            _positive_int(f"export.{key}", self.export[key])
        for key in ("batch", "runs"):
            _positive_int(f"bench.{key}", self.bench[key])
        if self.bench["threads"] is not None:
            _positive_int("bench.threads", self.bench["threads"])
        if not (isinstance(self.bench["warmup"], int) and self.bench["warmup"] >= 0):
            raise RmtdeployError(f"bench.warmup must be an integer >= 0, got {self.bench['warmup']!r}")
        epochs = self.finetune.get("epochs", 3)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise RmtdeployError(f"finetune.epochs must be an integer >= 0 (0: no fine-tune), got {epochs!r}")
        if self.finetune_epochs > 0:
            try:
                self.finetune_recipe()
            except RmtdeployError as exc:
                raise RmtdeployError(f"finetune.{exc.render()}") from exc
        return self

    def _check_latency_table(self) -> None:
        """A latency table chooses the widths (and meets a latency budget by its prediction)."""
        if self.latency_table is None:
            return
        from rmtdeploy.pruning.stage import read_latency_table

        read_latency_table(self.latency_table)
        if self.latency_aware:
            raise RmtdeployError(
                "{param} and latency-aware allocation each choose the widths: give one", param="latency_table"
            )
        if self.device_results is not None or self.latency_reference is not None:
            raise RmtdeployError(
                "{param} meets the latency budget by its own prediction: give no device_results or latency_reference",
                param="latency_table",
            )

    def _check_device_inputs(self) -> None:
        """The device's measured sweep (device_results) and the bundle's sweep of keep ratios."""
        if self.device_results is not None and self.latency_budget_ms is None:
            raise RmtdeployError(
                "device_results picks the keep ratio for a latency budget: give latency_budget_ms too"
            )
        if self.device_results is not None and self.latency_reference is not None:
            raise RmtdeployError(
                "give one device file: device_results (a measured sweep) or latency_reference (a dense latency, "
                "an estimate), not both"
            )
        if self.bundle["sweep"] is not None:
            try:
                self.bundle["sweep"] = check_sweep(self.bundle["sweep"])
            except RmtdeployError as exc:
                raise RmtdeployError(exc.render(lambda param: "bundle.sweep")) from exc
        if not isinstance(self.bundle["latency_table"], bool):
            raise RmtdeployError(
                f"bundle.latency_table must be true or false, got {self.bundle['latency_table']!r}"
            )


_SECTIONS: dict[str, tuple[str, ...]] = {
    "finetune": tuple(f.name for f in dataclasses.fields(FinetuneRecipe)),
    "export": tuple(EXPORT_DEFAULTS),
    "bench": tuple(BENCH_DEFAULTS),
    "bundle": tuple(BUNDLE_DEFAULTS),
    "train": tuple(f.name for f in dataclasses.fields(ScratchRecipe)),
    "input": ("size", "mean", "std", "interpolation", "crop_pct"),
}
_TOP_KEYS = tuple(f.name for f in dataclasses.fields(CompressRecipe) if f.name != "source")


def recipe_files() -> dict[str, Any]:
    """Shipped recipe name -> file (``recipes/compress/*.yaml``)."""
    from rmtdeploy.targets import recipes_dir

    folder = recipes_dir().joinpath("compress")
    if not folder.is_dir():
        return {}
    return {
        entry.name.rsplit(".", 1)[0]: entry
        for entry in folder.iterdir()
        if entry.name.endswith((".yaml", ".yml"))
    }


def list_recipes() -> list[str]:
    return sorted(recipe_files())


def read_recipe(name_or_path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The raw mapping of a shipped recipe (by name) or a YAML file, and where it came from."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise RmtdeployError(f"recipe file not found: {path}")
        raw, where = path.read_text(encoding="utf-8"), str(path)
    else:
        files = recipe_files()
        if text not in files:
            import difflib

            close = difflib.get_close_matches(text, files, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise RmtdeployError(
                f"unknown recipe '{text}'.{hint} Shipped recipes: {', '.join(sorted(files))}; or a YAML path"
            )
        raw, where = files[text].read_text(encoding="utf-8"), text
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise RmtdeployError(f"recipe {where} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RmtdeployError(f"recipe {where} must be a mapping of keys, got {type(data).__name__}")
    return data, where


def resolve_recipe(
    recipe: str | os.PathLike | dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> CompressRecipe:
    """Defaults, then the recipe (name, path or mapping), then ``overrides`` (flat keys, or
    ``section.key`` for a section's field; ``None`` values are not overrides); checked."""
    data, where = ({}, "defaults") if recipe is None else (
        (dict(recipe), "mapping") if isinstance(recipe, dict) else read_recipe(recipe)
    )  # fmt: skip
    _check_keys(data, where)
    resolved = CompressRecipe(source=where)
    _apply(resolved, data)
    nested: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        if name:
            nested.setdefault(section, {})[name] = value
        elif key in _SECTIONS and isinstance(value, dict):  # finetune={"epochs": 1}
            nested.setdefault(key, {}).update(value)
        else:
            nested[key] = value
    _check_keys(nested, "the command line")
    if "keep_macs" in nested:  # a budget on the command line replaces the recipe's, of either kind
        resolved.latency_budget_ms = None
    if "latency_budget_ms" in nested:
        resolved.keep_macs = None
    _apply(resolved, nested)
    return resolved.check()


def _apply(recipe: CompressRecipe, data: dict[str, Any]) -> None:
    for key, value in data.items():
        if key in _SECTIONS:
            getattr(recipe, key).update(value or {})
        else:
            setattr(recipe, key, value)


def _check_keys(data: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        if key not in _TOP_KEYS:
            raise RmtdeployError(f"recipe {where}: unknown key '{key}'; allowed: {', '.join(_TOP_KEYS)}")
        if key in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise RmtdeployError(
                    f"recipe {where}: '{key}' must be a mapping of {', '.join(_SECTIONS[key])}"
                )
            for name in value:
                if name not in _SECTIONS[key]:
                    raise RmtdeployError(
                        f"recipe {where}: unknown key '{key}.{name}'; allowed: {', '.join(_SECTIONS[key])}"
                    )
        if key == "knobs" and not isinstance(value, dict):
            raise RmtdeployError(f"recipe {where}: 'knobs' must be a mapping of knob: value")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RmtdeployError(f"{key} must be a positive integer, got {value!r}")


def _choice(key: str, value: Any, allowed: tuple[str, ...], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not any(value is choice or (isinstance(choice, str) and value == choice) for choice in allowed):
        raise RmtdeployError(
            f"{key} must be one of {', '.join(str(a).lower() for a in allowed)}, got {value!r}"
        )
