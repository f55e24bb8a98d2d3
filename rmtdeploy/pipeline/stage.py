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

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.finetuning.trainer import Reporter
from rmtdeploy.pipeline.recipe import CompressRecipe, resolve_recipe
from rmtdeploy.pipeline.run_folder import RunFolder, StageRecord, fingerprint

EVAL_IMAGES = 2000  # dense top-1 is measured on (at most) this many validation images


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


@dataclass(frozen=True)
class _Checked:
    """What the run needs, checked before any model is loaded."""

    recipe: CompressRecipe
    target: Any  # TargetProfile
    strategy: Any  # Strategy
    data: Any  # DataSource or None
    round_to: int
    reference: dict[str, Any] | None = None  # device results a latency budget is judged against


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
    ``weights``, ``checkpoint``, ``target``, ``strategy``, ``knobs``, ``keep_macs``, ``latency_budget_ms``,
    ``latency_aware``, ``data``) or a section's fields (``finetune={"epochs": 1}``). ``resume``
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
        "versions": _versions(),
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
            _Pipeline(folder, checked, reporter).run()
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


def _check(recipe, overrides: dict[str, Any]) -> _Checked:
    """The recipe resolved and every setting checked that needs no model (target, strategy, data)."""
    from rmtdeploy.data import open_data
    from rmtdeploy.models import ModelSource
    from rmtdeploy.scores import get_strategy
    from rmtdeploy.targets import load_target

    if isinstance(recipe, CompressRecipe):
        resolved = resolve_recipe({k: v for k, v in recipe.to_dict().items() if k != "source"}, overrides)
    else:
        resolved = resolve_recipe(
            recipe if recipe is not None else _recipe_for(overrides.get("model")), overrides
        )
    target = load_target(resolved.target)
    strategy = get_strategy(resolved.strategy, **resolved.knobs)
    if resolved.weights == "trained":  # its train section was checked with the recipe
        if resolved.data is None:  # the model learns this set; it is also the data it is measured on
            resolved.data = resolved.scratch_recipe().dataset
    else:
        source = ModelSource(resolved.model, resolved.weights, resolved.checkpoint)
        source.check()
        if source.source == "checkpoint":  # a corrupt file is refused now, not after the run has started
            from rmtdeploy.models import read_state_dict

            read_state_dict(resolved.checkpoint)
    data = open_data(resolved.data) if resolved.data is not None else None
    reference = None
    if resolved.latency_reference is not None:
        from rmtdeploy.pipeline.budget import read_reference

        reference = read_reference(resolved.latency_reference)
    # A TensorRT bench is refused now where TensorRT cannot time, not after a fine-tune.
    if resolved.bench["backend"] == "tensorrt":
        from rmtdeploy.benchmark.stage import check_tensorrt_bench

        check_tensorrt_bench(None, "cpu", None, _tensorrt_bench_target(target))
    return _Checked(resolved, target, strategy, data, target.channel_multiple, reference)


def _tensorrt_bench_target(target) -> str:
    """The run's target when it builds TensorRT engines, else the bench stage's default GPU target."""
    from rmtdeploy.benchmark.stage import DEFAULT_TENSORRT_TARGET

    return target.name if target.backend == "tensorrt" else DEFAULT_TENSORRT_TARGET


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


class _Pipeline:
    def __init__(self, folder: RunFolder, checked: _Checked, reporter: Reporter):
        self.folder, self.checked, self.reporter = folder, checked, reporter
        self.recipe = checked.recipe
        self.root = folder.root
        self.loaded = None
        self.final = self.root / "pruned"  # the folder later stages read: pruned, or finetuned
        self.keep_macs = self.recipe.budget.get("keep_macs")

    def say(self, text: str) -> None:
        self.reporter.status(text)

    def run(self) -> None:
        self.load()
        self.evaluate_dense()
        self.analyze()
        self.budget()
        self.prune()
        self.finetune()
        self.export()
        self.engine()
        self.bench()
        self.bundle()
        self.report()

    # -- stages ------------------------------------------------------------------------------------
    def load(self) -> None:
        recipe = self.recipe
        source = recipe.weights or ("checkpoint" if recipe.checkpoint else "pretrained")
        self.say(f"loading {recipe.model} ({source} weights)")
        settings = {"model": recipe.model, "weights": recipe.weights, "checkpoint": recipe.checkpoint,
                    "checkpoint_sha256": _sha(recipe.checkpoint), "train": recipe.train if recipe.weights == "trained" else None}  # fmt: skip

        def run(force: bool) -> dict[str, Any]:
            self.loaded, summary = _load_model(recipe, self.say)
            return summary

        # Always run: every later stage may need the model in memory (trained weights load from cache).
        self.folder.stage("load", settings, (), [], run, status=self.say, always=True)
        data = self.checked.data
        classes = getattr(self.loaded.model, "num_classes", None)
        if data is not None and classes is not None and classes != data.num_classes:
            raise RmtdeployError(
                f"the model predicts {classes} classes but data {data.name} has {data.num_classes}: give data "
                "with the model's classes, or a checkpoint trained on this data"
            )

    def evaluate_dense(self) -> None:
        data = self.checked.data
        if data is None:
            self.folder.skip("evaluate", "no data given: accuracy is not measured")
            return

        def run(force: bool) -> dict[str, Any]:
            from torch.utils.data import DataLoader, Subset

            from rmtdeploy.finetuning import evaluate_top1

            val = data.dataset("val", self.loaded.model)
            if len(val) > EVAL_IMAGES:
                val = Subset(val, range(EVAL_IMAGES))
            self.say(f"measuring the dense model's top-1 on {len(val)} {data.name} val images")
            return {"dense_top1": round(evaluate_top1(self.loaded.model, DataLoader(val, batch_size=64)), 2),
                    "images": len(val), "data": data.name}  # fmt: skip

        self.folder.stage("evaluate", {"data": data.name}, ("load",), [], run, status=self.say)

    def analyze(self) -> None:
        def run(force: bool) -> dict[str, Any]:
            from rmtdeploy.spectra.outputs import analyze

            self.say("fitting Marchenko–Pastur spectra to every weight matrix")
            return analyze(self.loaded, self.root / "analysis", force=force).summary()

        self.folder.stage("analyze", {}, ("load",), ["analysis"], run, status=self.say)

    def budget(self) -> None:
        budget_ms = self.recipe.latency_budget_ms
        if budget_ms is None:
            self.folder.skip("budget", f"budget given as keep-macs {self.keep_macs}")
            return
        reference = self.checked.reference
        settings = {"budget_ms": budget_ms, "strategy": self.recipe.strategy, "knobs": self.recipe.knobs,
                    "latency_aware": self.recipe.latency_aware, "threads": self.recipe.bench["threads"],
                    "reference": _sha(reference["file"]) if reference else None,
                    "runs": self.recipe.bench["runs"], "warmup": self.recipe.bench["warmup"]}  # fmt: skip

        def run(force: bool) -> dict[str, Any]:
            from rmtdeploy.io import atomic_write_json
            from rmtdeploy.pipeline.budget import search_keep_for_latency

            search = search_keep_for_latency(
                self.loaded, budget_ms=budget_ms, strategy=self.checked.strategy, round_to=self.checked.round_to,
                latency_aware=self.recipe.latency_aware, threads=self.recipe.bench["threads"], reference=reference,
                runs=self.recipe.bench["runs"], warmup=self.recipe.bench["warmup"], status=self.say,
            )  # fmt: skip
            atomic_write_json(self.root / "budget.json", search.to_dict())
            return search.to_dict()

        record = self.folder.stage("budget", settings, ("load",), ["budget.json"], run, status=self.say)
        self.keep_macs = record.summary["keep_macs"]

    def prune(self) -> None:
        recipe, data = self.recipe, self.checked.data
        settings = {"keep_macs": self.keep_macs, "strategy": recipe.strategy, "knobs": recipe.knobs,
                    "target": self.checked.target.name, "latency_aware": recipe.latency_aware,
                    "calibration": data.name if data else None}  # fmt: skip

        def run(force: bool) -> dict[str, Any]:
            import rmtdeploy

            pruned = rmtdeploy.prune(
                self.loaded, self.root / "pruned", keep_macs=self.keep_macs, strategy=recipe.strategy,
                knobs=recipe.knobs, target=recipe.target, calibration=data, latency_aware=recipe.latency_aware,
                force=force, status=self.say,
            )  # fmt: skip
            return pruned.to_dict()

        self.folder.stage("prune", settings, ("load", "budget"), ["pruned"], run, status=self.say)

    def finetune(self) -> None:
        recipe, data = self.recipe, self.checked.data
        if data is None or recipe.finetune_epochs == 0:
            why = "no data given" if data is None else "finetune.epochs is 0"
            self.folder.skip("finetune", f"{why}: the pruned model is not fine-tuned")
            return
        settings = {"recipe": recipe.finetune_recipe().to_dict(), "data": data.name}
        # Killed mid-training with the same inputs: continue from the fine-tune stage's own checkpoint.
        from rmtdeploy.finetuning.checkpoint import Checkpoints

        continue_training = self.folder.interrupted_with_same_inputs("finetune", settings, ("prune",)) and (
            Checkpoints(self.root / "finetuned", writer=False).exists()
        )

        def run(force: bool) -> dict[str, Any]:
            import rmtdeploy

            if continue_training:
                self.say("continuing the interrupted fine-tune from its checkpoint")
            tuned = rmtdeploy.finetune(
                self.root / "pruned", data, self.root / "finetuned", recipe=recipe.finetune_recipe(),
                teacher=self.loaded, resume=continue_training, force=force, reporter=self.reporter,
            )  # fmt: skip
            return tuned.to_dict()

        self.folder.stage("finetune", settings, ("prune",), ["finetuned"], run, status=self.say)
        self.final = self.root / "finetuned"

    def export(self) -> None:
        recipe, data, target = self.recipe, self.checked.data, self.checked.target
        self.int8 = recipe.int8_enabled(target.precision)
        outputs = ["model.onnx", *(["model.int8.onnx"] if self.int8 else [])]
        settings = {"target": target.name, "int8": self.int8, "data": data.name if data else None,
                    "parity_images": recipe.export["parity_images"],
                    "calibration_images": recipe.export["calibration_images"]}  # fmt: skip

        def run(force: bool) -> dict[str, Any]:
            import rmtdeploy

            exported = rmtdeploy.export(
                self.final, self.root / "model.onnx", target=target.name, data=data, int8=self.int8,
                parity_images=recipe.export["parity_images"], calibration_images=recipe.export["calibration_images"],
                force=force, status=self.say,
            )  # fmt: skip
            return exported.to_dict()

        self.folder.stage("export", settings, ("prune", "finetune"), outputs, run, status=self.say)

    def engine(self) -> None:
        target = self.checked.target
        if target.backend != "tensorrt":
            self.folder.skip("engine", f"target {target.name} runs the ONNX with {target.backend}: no engine")
            return
        from rmtdeploy.engine.versions import installed_tensorrt

        if installed_tensorrt() is None:
            self.folder.skip(
                "engine", "TensorRT is not installed here: build it on the device (bundle/build_engine.sh)"
            )
            return
        onnx = self.root / ("model.int8.onnx" if self.int8 else "model.onnx")

        def run(force: bool) -> dict[str, Any]:
            from rmtdeploy.engine.stage import build_engine

            return build_engine(onnx, self.root / "engine", target=target.name, force=force).record

        self.folder.stage("engine", {"target": target.name, "onnx": onnx.name}, ("export",), ["engine"], run,
                          status=self.say)  # fmt: skip

    def bench(self) -> None:
        options = dict(self.recipe.bench)
        target = self.checked.target
        # The INT8 graph is in the target's form: ORT's U8S8 for ONNX Runtime, TensorRT's S8S8 for TensorRT.
        int8_backend = "tensorrt" if target.backend == "tensorrt" else "onnxruntime"
        int8 = (
            self.root / "model.int8.onnx"
            if self.int8 and options["backend"] in ("onnxruntime", int8_backend)
            else None
        )
        if options["backend"] == "tensorrt":
            options["target"] = _tensorrt_bench_target(target)

        def run(force: bool) -> dict[str, Any]:
            import rmtdeploy

            self.say(
                f"timing dense vs pruned on {options['backend']} (batch {options['batch']}, {options['runs']} rounds)"
            )
            timed = rmtdeploy.bench(self.final, self.root / "bench", int8=int8, force=force, status=self.say,
                                    **options).to_dict()  # fmt: skip
            return {k: v for k, v in timed.items() if k != "samples_ms"}  # the samples stay in bench.json

        self.folder.stage("bench", {**options, "int8": bool(int8)}, ("prune", "finetune", "export"), ["bench"], run,
                          status=self.say)  # fmt: skip

    def bundle(self) -> None:
        target, data = self.checked.target, self.checked.data
        from rmtdeploy.bundle.stage import BUNDLE_TARGET_PREFIX

        if not target.name.startswith(BUNDLE_TARGET_PREFIX):
            self.folder.skip("bundle", f"target {target.name} is not a Jetson board: no on-device bundle")
            return

        def run(force: bool) -> dict[str, Any]:
            from rmtdeploy.bundle.stage import make_bundle

            made = make_bundle(self.final, self.root / "bundle", target=target.name, int8=self.int8,
                               data=data, force=force, status=self.say)  # fmt: skip
            return dict(made.record)

        self.folder.stage("bundle", {"target": target.name, "int8": self.int8}, ("prune", "finetune"), ["bundle"],
                          run, status=self.say)  # fmt: skip

    def report(self) -> None:
        def run(force: bool) -> dict[str, Any]:
            from rmtdeploy.report.run import write_report

            self.folder.save()
            return write_report(self.root)

        # Always rendered: it reflects this run's manifest.
        self.folder.stage("report", {}, (), ["report.md", "report.html"], run, status=self.say, always=True)


def _load_model(recipe: CompressRecipe, say) -> tuple[Any, dict[str, Any]]:
    from rmtdeploy.adapters import get_adapter
    from rmtdeploy.models import ModelSource

    if recipe.weights == "trained":
        from rmtdeploy.finetuning.scratch import trained_model

        scratch = recipe.scratch_recipe()
        say(
            f"training {recipe.model} on {scratch.dataset} from scratch ({scratch.epochs} epochs; cached afterwards)"
        )
        loaded, record, path = trained_model(
            recipe.model,
            scratch,
            on_epoch=lambda e, n, top1: say(f"training epoch {e}/{n}: val top-1 {top1:.1f}%"),
        )
        if record.get("cached"):
            say(f"trained weights from the cache: {path}")
        summary = {"training": record, "trained_weights": str(path)}
    else:
        loaded = ModelSource(recipe.model, recipe.weights, recipe.checkpoint).load()
        summary = {}
    model = loaded.model
    return loaded, {
        "model": loaded.name,
        "family": loaded.family,
        "weights": loaded.weights,
        "params": sum(p.numel() for p in model.parameters()),
        "input_size": list((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))),
        "num_classes": getattr(model, "num_classes", None),
        "create_kwargs": get_adapter(model).create_kwargs(model),
        **summary,
    }


def _write_recipe(root: Path, recipe: CompressRecipe) -> None:
    """The resolved recipe, re-runnable as ``--recipe RUN/recipe.yaml``."""
    import yaml

    from rmtdeploy.io import atomic_write_text

    data = {k: v for k, v in recipe.to_dict().items() if k != "source" and v not in (None, {}, "")}
    header = f"# resolved by rmtdeploy compress from {recipe.source} and the command line\n"
    atomic_write_text(root / "recipe.yaml", header + yaml.safe_dump(data, sort_keys=False))


def _sha(path: str | None) -> str | None:
    from rmtdeploy.io import file_sha256

    return file_sha256(path) if path and Path(path).is_file() else None


_VERSIONED = (
    "rmtdeploy",
    "torch",
    "torchvision",
    "timm",
    "torch-pruning",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "numpy",
)


def _versions() -> dict[str, str]:
    """The versions of what shapes the results, from the installed metadata (nothing imported)."""
    from importlib import metadata

    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _machine() -> dict[str, Any]:
    from rmtdeploy.benchmark.conditions import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}


__all__ = ["CompressRun", "compress", "fingerprint"]
