"""``compress(out, recipe=..., **overrides) -> CompressRun``: the whole pipeline into one run folder.

load → (dense accuracy) → analyze → (latency budget search) → prune → fine-tune → export (+ INT8) →
engine → bench → bundle → report. Each step is the stage's own library call writing into the run
folder (``analysis/``, ``pruned/``, ``finetuned/``, ``model.onnx``, ``engine/``, ``bench/``,
``bundle/``, ``report.md``/``report.html``); :class:`~rmtdeploy.pipeline.run_folder.RunFolder` records
them in ``manifest.json`` and lets ``resume`` skip what is finished and unchanged. A stage that cannot
run here (no data, no TensorRT, not a Jetson target) is recorded with the reason, never filled in.
"""

from __future__ import annotations

import errno
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmtdeploy.bundle.stage import BUNDLE_TARGET_PREFIX
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.finetuning.stage import Reporter
from rmtdeploy.machine import cpu_model, library_versions
from rmtdeploy.pipeline.recipe import CompressRecipe, resolve_recipe
from rmtdeploy.pipeline.run_folder import RunFolder, StageRecord, fingerprint
from rmtdeploy.pipeline.steps import Checked, CompressSteps, tensorrt_bench_target


@dataclass
class CompressRun:
    """A finished run: its folder, the resolved recipe and what each stage did."""

    directory: Path
    recipe: CompressRecipe
    stages: dict[str, StageRecord] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.directory / "report.html"

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "recipe": self.recipe.to_dict(),
            "stages": [record.to_dict() for record in self.stages.values()],
            "report": {"markdown": str(self.directory / "report.md"), "html": str(self.report)},
        }


def compress(
    out: str | os.PathLike,
    *,
    recipe: str | os.PathLike | dict[str, Any] | CompressRecipe | None = None,
    resume: bool = False,
    force: bool = False,
    reporter: Reporter | None = None,
    command: list[str] | None = None,
    **overrides: Any,
) -> CompressRun:
    """Compress a model into the run folder ``out``.

    ``recipe``: a shipped recipe's name, a YAML path, a mapping or a :class:`CompressRecipe`; without one,
    the shipped recipe for ``model`` when there is one. ``overrides`` are recipe keys (``model``,
    ``weights``, ``checkpoint``, ``num_classes``, ``model_kwargs``, ``target``, ``strategy``, ``knobs``,
    ``keep_macs``, ``latency_budget_ms``, ``latency_reference``, ``device_results``, ``latency_aware``,
    ``data``) or a section's fields
    (``finetune={"epochs": 1}``, ``input={"size": 160, "mean": [0.5] * 3}``, ``bundle={"sweep": [0.3, 0.5]}``).
    ``resume``
    continues a run in ``out`` (with its own ``recipe.yaml`` when no recipe is given), reusing its finished
    stages whose inputs are unchanged; ``force``
    replaces a run there. ``reporter`` receives status lines and the fine-tune's progress.
    """
    reporter = reporter or Reporter()
    if resume and recipe is None and (Path(out) / "recipe.yaml").is_file():
        recipe = Path(out) / "recipe.yaml"  # the run's own resolved recipe; flags still override it
    checked = _check(recipe, overrides)
    header = {
        "command": command,
        "recipe": checked.recipe.to_dict(),
        "versions": library_versions(),
        "python": sys.version.split()[0],
        "machine": _machine(),
        "seeds": {
            "finetune": checked.recipe.finetune.get("seed", 0),
            "train": checked.recipe.train.get("seed", 0),
        },
    }
    try:
        with RunFolder(out, resume=resume, force=force, header=header) as folder:
            run = CompressRun(Path(out), checked.recipe, folder.stages)
            _write_recipe(folder.root, checked.recipe)
            CompressSteps(folder, checked, reporter).run()
    except KeyboardInterrupt as exc:
        raise KeyboardInterrupt(
            f"the finished stages are kept in {out}; continue with rmtdeploy compress --resume --out {out}"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RmtdeployError(
                f"the disk is full while writing into {out}: free some space and continue with --resume "
                "(finished stages are kept)"
            ) from exc
        raise
    reporter.status(f"report: {run.report}")
    return run


def _check(recipe, overrides: dict[str, Any]) -> Checked:
    """The recipe resolved and every setting checked that needs no model (target, strategy, data)."""
    from rmtdeploy.pruning.stage import DEFAULT_STRATEGY, get_strategy, open_data
    from rmtdeploy.targets import load_target

    if isinstance(recipe, CompressRecipe):
        resolved = resolve_recipe({k: v for k, v in recipe.to_dict().items() if k != "source"}, overrides)
    else:
        resolved = resolve_recipe(
            recipe if recipe is not None else _recipe_for(overrides.get("model")), overrides
        )
    target = load_target(resolved.target)
    if resolved.weights == "trained" and resolved.data is None:
        # The model learns this set (its train section was checked with the recipe); it is also the data it
        # is measured on.
        resolved.data = resolved.scratch_recipe().dataset
    strategy = get_strategy(resolved.strategy or DEFAULT_STRATEGY, **resolved.knobs)
    source = None
    if resolved.weights != "trained":
        # A checkpoint is read now, once: a corrupt file, a class count its head disagrees with or a config
        # beside it naming another model is refused before the run starts.
        source = resolved.model_source().resolve()
        source.check_architecture()
    strategy.check_calibration(resolved.data is not None, "data")
    strategy.check_labels(labelled=False, param="data")
    data = open_data(resolved.data) if resolved.data is not None else None
    if data is not None and source is not None and source.expected_classes() != data.num_classes:
        raise RmtdeployError(
            f"the model predicts {source.expected_classes()} classes but data {data.name} has {data.num_classes} "
            f"(the model's count from {source.classes_from}): give data with the model's classes, or {{param}} "
            "for a checkpoint trained on this data",
            param="checkpoint",
        )
    reference = curve = None
    if resolved.latency_reference is not None:
        from rmtdeploy.pipeline.budget import read_reference

        reference = read_reference(resolved.latency_reference)
    if resolved.device_results is not None:  # a measured sweep: read, and the budget checked against it, now
        from rmtdeploy.pipeline.budget import read_device_curve

        curve = read_device_curve(resolved.device_results, resolved.latency_budget_ms, target)
    if resolved.bundle["sweep"] and not target.name.startswith(BUNDLE_TARGET_PREFIX):
        raise RmtdeployError(
            f"bundle.sweep adds candidates to the Jetson bundle; target {target.name} has none"
        )
    if resolved.bundle["latency_table"] and not target.name.startswith(BUNDLE_TARGET_PREFIX):
        raise RmtdeployError(
            f"bundle.latency_table adds a latency table to the Jetson bundle; target {target.name} has none"
        )
    # A TensorRT bench is refused now where TensorRT cannot time, not after a fine-tune.
    if resolved.bench["backend"] == "tensorrt":
        from rmtdeploy.benchmark.stage import check_tensorrt_bench

        check_tensorrt_bench("cpu", None, tensorrt_bench_target(target))
    return Checked(resolved, target, strategy, data, target.channel_multiple, reference, source, curve)


def _recipe_for(model: str | None) -> str | None:
    """The shipped recipe for ``model`` (its alias or timm name), if one exists."""
    if model is None:
        return None
    from rmtdeploy.models import MODEL_ALIASES
    from rmtdeploy.pipeline.recipe import read_recipe, recipe_files

    full = MODEL_ALIASES.get(model, model)
    for name in sorted(recipe_files()):
        named = read_recipe(name)[0].get("model")
        if named is not None and MODEL_ALIASES.get(named, named) == full:
            return name
    return None


def _write_recipe(root: Path, recipe: CompressRecipe) -> None:
    """The resolved recipe, re-runnable as ``--recipe RUN/recipe.yaml``."""
    import yaml

    from rmtdeploy.io import atomic_write_text

    data = {k: v for k, v in recipe.to_dict().items() if k != "source" and v not in (None, {}, "")}
    header = f"# resolved by rmtdeploy compress from {recipe.source} and the command line\n"
    atomic_write_text(root / "recipe.yaml", header + yaml.safe_dump(data, sort_keys=False))


def _machine() -> dict[str, Any]:

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}


__all__ = ["CompressRun", "compress", "fingerprint"]
