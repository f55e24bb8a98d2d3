"""The stages of ``compress`` in order, each the stage's own library call recorded in the run folder.

:class:`CompressSteps` runs load → (dense accuracy) → analyze → (latency budget search) → prune →
fine-tune → export (+ INT8) → engine → bench → bundle → report for a run that
:func:`rmtdeploy.pipeline.stage.compress` has checked (:class:`Checked`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.finetuning.stage import Reporter
from rmtdeploy.pipeline.recipe import CompressRecipe
from rmtdeploy.pipeline.run_folder import RunFolder

EVAL_IMAGES = 2000  # dense top-1 is measured on (at most) this many validation images


@dataclass(frozen=True)
class Checked:
    """What the run needs, checked before any model is loaded."""

    recipe: CompressRecipe
    target: Any  # TargetProfile
    strategy: Any  # Strategy
    data: Any  # DataSource or None
    round_to: int
    reference: dict[str, Any] | None = None  # device results a latency budget is judged against
    source: Any = None  # ResolvedSource (checkpoint read once), or None for weights: trained
    curve: Any = None  # DeviceCurve: a device's measured sweep the keep ratio is picked from


class CompressSteps:
    def __init__(self, folder: RunFolder, checked: Checked, reporter: Reporter):
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
                    "checkpoint_sha256": _sha(recipe.checkpoint), "train": recipe.train if recipe.weights == "trained" else None,
                    "num_classes": recipe.num_classes, "model_kwargs": recipe.model_kwargs, "input": recipe.input,
                    "saved_config": _sha(self.checked.source.saved_config) if self.checked.source else None}  # fmt: skip

        def run(force: bool) -> dict[str, Any]:
            self.loaded, summary = _load_model(recipe, self.checked.source, self.say)
            return summary

        # Always run: every later stage may need the model in memory (trained weights load from cache).
        self.folder.stage("load", settings, (), [], run, status=self.say, always=True)
        self._check_device_model()
        data = self.checked.data
        classes = getattr(self.loaded.model, "num_classes", None)
        if data is not None and classes is not None and classes != data.num_classes:
            raise RmtdeployError(
                f"the model predicts {classes} classes but data {data.name} has {data.num_classes}: give data "
                "with the model's classes, or a checkpoint trained on this data"
            )

    def _check_device_model(self) -> None:
        """Device results of another model are refused before any work (nothing written yet)."""
        from rmtdeploy.pipeline.budget import check_device_model

        device = self.checked.curve.to_dict() if self.checked.curve is not None else self.checked.reference
        if device is not None:
            check_device_model(device, self.loaded)
        if self.recipe.latency_table is not None:
            from rmtdeploy.pruning.stage import read_latency_table

            read_latency_table(self.recipe.latency_table, self.loaded)

    def evaluate_dense(self) -> None:
        data = self.checked.data
        if data is None:
            self.folder.skip("evaluate", "no data given: accuracy is not measured")
            return

        def run(force: bool) -> dict[str, Any]:
            from torch.utils.data import DataLoader, Subset

            from rmtdeploy.finetuning.stage import evaluate_top1

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
        if self.checked.curve is not None:
            self._budget_from_curve(budget_ms)
            return
        if self.recipe.latency_table is not None:
            self.folder.skip("budget", f"the latency table's prediction meets {budget_ms:g} ms while pruning")
            self.keep_macs = None
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
                self.loaded, budget_ms=budget_ms, strategy=self._strategy(), round_to=self.checked.round_to,
                latency_aware=self.recipe.latency_aware, threads=self.recipe.bench["threads"], reference=reference,
                runs=self.recipe.bench["runs"], warmup=self.recipe.bench["warmup"], calibration=self.checked.data,
                status=self.say,
            )  # fmt: skip
            atomic_write_json(self.root / "budget.json", search.to_dict())
            return search.to_dict()

        record = self.folder.stage("budget", settings, ("load",), ["budget.json"], run, status=self.say)
        self.keep_macs = record.summary["keep_macs"]

    def _budget_from_curve(self, budget_ms: float) -> None:
        """The keep ratio picked from the device's measured sweep: nothing is timed here."""
        curve = self.checked.curve
        settings = {"budget_ms": budget_ms, "device_results": _sha(curve.file)}

        def run(force: bool) -> dict[str, Any]:
            from rmtdeploy.io import atomic_write_json
            from rmtdeploy.pipeline.budget import budget_from_curve

            search = budget_from_curve(curve, budget_ms, status=self.say)
            atomic_write_json(self.root / "budget.json", search.to_dict())
            return search.to_dict()

        record = self.folder.stage("budget", settings, ("load",), ["budget.json"], run, status=self.say)
        self.keep_macs = record.summary["keep_macs"]

    def _strategy(self):
        """The checked strategy, or with none in the recipe the one the prune stage picks for this model."""
        from rmtdeploy.pruning.stage import family_default, get_strategy

        recipe, checked = self.recipe, self.checked
        if recipe.strategy is not None:
            return checked.strategy
        name = family_default(self.loaded, checked.data is not None, recipe.knobs,
                              chooses_widths=bool(recipe.latency_aware or recipe.latency_table))  # fmt: skip
        return checked.strategy if name == checked.strategy.name else get_strategy(name)

    def prune(self) -> None:
        recipe, data = self.recipe, self.checked.data
        table = {"latency_table": recipe.latency_table,
                 "latency_budget_ms": recipe.latency_budget_ms if self.keep_macs is None else None}  # fmt: skip
        settings = {"keep_macs": self.keep_macs, "strategy": recipe.strategy, "knobs": recipe.knobs,
                    "latency_table": _sha(recipe.latency_table), "latency_budget_ms": table["latency_budget_ms"],
                    "target": self.checked.target.name, "latency_aware": recipe.latency_aware,
                    "calibration": data.name if data else None}  # fmt: skip

        def run(force: bool) -> dict[str, Any]:
            import rmtdeploy

            pruned = rmtdeploy.prune(
                self.loaded, self.root / "pruned", keep_macs=self.keep_macs, strategy=recipe.strategy,
                knobs=recipe.knobs, target=recipe.target, calibration=data, latency_aware=recipe.latency_aware,
                **table, force=force, status=self.say,
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
        from rmtdeploy.finetuning.stage import Checkpoints

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
        from rmtdeploy.engine.stage import installed_tensorrt

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
            options["target"] = tensorrt_bench_target(target)

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

        sweep, table = self.recipe.bundle["sweep"], self.recipe.bundle["latency_table"]

        def run(force: bool) -> dict[str, Any]:
            from rmtdeploy.bundle.stage import make_bundle

            # A sweep's candidates are pruned from the dense model in memory (its weights choose their widths).
            made = make_bundle(self.final, self.root / "bundle", target=target.name, int8=self.int8, data=data,
                               sweep=sweep, model=self.loaded if sweep else None, latency_table=table, force=force,
                               status=self.say)  # fmt: skip
            return dict(made.record)

        upstream = ("load", "prune", "finetune") if sweep else ("prune", "finetune")
        options = {"target": target.name, "int8": self.int8, "sweep": sweep}
        if table:  # only then: a run made before latency tables keeps its fingerprint
            options["latency_table"] = True
        self.folder.stage("bundle", options, upstream, ["bundle"], run, status=self.say)

    def report(self) -> None:
        def run(force: bool) -> dict[str, Any]:
            from rmtdeploy.pipeline.run_folder import read_run
            from rmtdeploy.report.run import write_report

            self.folder.save()
            return write_report(self.root, read_run(self.root))

        # Always rendered: it reflects this run's manifest.
        self.folder.stage("report", {}, (), ["report.md", "report.html"], run, status=self.say, always=True)


def _load_model(recipe: CompressRecipe, source, say) -> tuple[Any, dict[str, Any]]:
    from rmtdeploy.preprocessing import model_data_config
    from rmtdeploy.pruning.stage import get_adapter

    if recipe.weights == "trained":
        from rmtdeploy.finetuning.stage import trained_model

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
        loaded = source.load()
        summary = {"labels": list(loaded.labels) if loaded.labels else None, **loaded.facts}
    model = loaded.model
    preprocessing = model_data_config(model)
    return loaded, {
        "model": loaded.name,
        "family": loaded.family,
        "weights": loaded.weights,
        "params": sum(p.numel() for p in model.parameters()),
        "input_size": list(get_adapter(model).example_inputs(model).shape[1:]),
        "preprocessing": {k: v for k, v in preprocessing.items() if k != "input_size"},
        "num_classes": getattr(model, "num_classes", None),
        "create_kwargs": get_adapter(model).create_kwargs(model),
        **summary,
    }


def tensorrt_bench_target(target) -> str:
    """The run's target when it builds TensorRT engines, else the bench stage's default GPU target."""
    from rmtdeploy.benchmark.stage import DEFAULT_TENSORRT_TARGET

    return target.name if target.backend == "tensorrt" else DEFAULT_TENSORRT_TARGET


def _sha(path: str | None) -> str | None:
    from rmtdeploy.io import file_sha256

    return file_sha256(path) if path and Path(path).is_file() else None
