"""The run report of ``rmtdeploy compress``: ``report.md`` and a self-contained ``report.html``.

Everything shown is read from the run folder (``manifest.json`` and the stages' own outputs); a number a
stage did not measure is written "not measured" with the reason, never filled in. The HTML carries its
plots inline (PNG data URIs) and no script or remote resource, so it opens offline. ``rmtdeploy report
RUN_DIR`` re-renders both, e.g. after ``rmtdeploy bench --import`` put on-device results in
``RUN_DIR/device-bench``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from rmtdeploy.io import atomic_write_bytes, atomic_write_text
from rmtdeploy.report.budget import budget_blocks, budget_figure, budget_label
from rmtdeploy.report.headline import headline_blocks, strategy_label
from rmtdeploy.report.latency import CURVE_COLUMNS, curve_rows, how_measured, speedup_rows
from rmtdeploy.report.render import NOT_MEASURED, PLOTS_DIR, png_bytes, render_html, render_markdown

DEVICE_BENCH = "device-bench"
CURVE_PLOT = "curve.png"  # the bench stage's plot of a sweep's measured curve


def write_report(directory: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Render the run in ``directory`` (its ``manifest``, as :func:`rmtdeploy.pipeline.run_folder.read_run`
    reads it) into report.md, report.html and their plots; returns a summary."""
    root = Path(directory)
    run = _Run(root, manifest)
    blocks = run.blocks()
    plots = run.plots()
    (root / PLOTS_DIR).mkdir(exist_ok=True)
    for name, png in plots.items():
        atomic_write_bytes(root / PLOTS_DIR / f"{name}.png", png)
    atomic_write_text(root / "report.md", render_markdown(blocks, plots))
    atomic_write_text(root / "report.html", render_html(blocks, plots, title=run.title))
    return {"plots": sorted(plots), "not_measured": run.not_measured}


# -- reading the run ---------------------------------------------------------------------------------
class _Run:
    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root, self.manifest = root, manifest
        self.stages = {s["name"]: s for s in manifest.get("stages", [])}
        self.recipe = manifest.get("recipe", {})
        self.not_measured: list[str] = []

    def strategy_ran(self) -> str | None:
        """The strategy the prune stage ran (a recipe may name none and take the family's default)."""
        pruned = self.summary("prune") or {}
        return (pruned.get("strategy") or {}).get("name") or self.recipe.get("strategy")

    def summary(self, stage: str) -> dict[str, Any] | None:
        record = self.stages.get(stage)
        if record and record.get("status") in ("done", "reused"):
            return record.get("summary") or {}
        return None

    def reason(self, stage: str) -> str:
        record = self.stages.get(stage)
        if record is None:
            return "stage not reached"
        return record.get("reason") or record.get("status", "")

    def read_json(self, relative: str) -> Any:
        path = self.root / relative
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    @property
    def title(self) -> str:
        load = self.summary("load") or {}
        return (
            f"rmtdeploy compress: {load.get('model', self.recipe.get('model'))} → {self.recipe.get('target')}"
        )

    def missing(self, what: str, why: str) -> str:
        self.not_measured.append(what)
        return f"{NOT_MEASURED} ({why})"

    # -- sections ----------------------------------------------------------------------------------
    def blocks(self) -> list[tuple]:
        out: list[tuple] = [("h1", self.title)]
        out += headline_blocks(self)
        out += self._overview()
        out += self._structure()
        out += self._accuracy()
        out += self._export()
        out += self._latency()
        out += self._stages()
        out += self._commands()
        return out

    def _overview(self) -> list[tuple]:
        load = self.summary("load") or {}
        r = self.recipe
        budget_data = self.summary("budget")
        budget = budget_label(r, budget_data)
        weights = load.get("weights", r.get("weights"))
        rows = [
            ["model", f"{load.get('model', r.get('model'))} ({load.get('family', '?')} family)"],
            [
                "weights",
                str(weights) + (" — untrained: accuracy means nothing" if weights == "random" else ""),
            ],
            ["input", "×".join(map(str, load.get("input_size", []))) or "?"],
            ["preprocessing", _preprocessing(load)],
            ["classes", _classes(load)],
            [
                "built with",
                ", ".join(f"{k}={v}" for k, v in (load.get("create_kwargs") or {}).items())
                or "timm's defaults",
            ],
            ["target", str(r.get("target"))],
            ["strategy", strategy_label(self)],
            ["budget", budget],
            ["recipe", f"{r.get('source')} (resolved copy: recipe.yaml)"],
            ["data", str(r.get("data") or "none")],
            [
                "machine",
                f"{self.manifest.get('machine', {}).get('cpu')}, {self.manifest.get('machine', {}).get('cores')} cores",
            ],
            [
                "run",
                f"started {self.manifest.get('started')}; stages took "
                f"{sum(s.get('seconds') or 0 for s in self.manifest.get('stages', [])):.0f} s",
            ],
        ]
        training = load.get("training")
        if training:
            rows.append(["dense training", f"{training['dataset']}, {training['recipe']['epochs']} epochs, val top-1 "
                         f"{training['top1']:.1f}%, {training['train_s']:.0f} s" + (" (from the cache)" if training.get("cached") else "")])  # fmt: skip
        bundled = self.summary("bundle") is not None
        return [("h2", "Overview"), ("table", ["", ""], rows), *budget_blocks(budget_data, bundled)]

    def _structure(self) -> list[tuple]:
        report = self.read_json("pruned/report.json")
        if not report:
            return [("h2", "Structure"), ("p", self.missing("structure", self.reason("prune")))]
        m, p = report["macs"], report["params"]
        rows = [["MACs", f"{m['dense'] / 1e9:.3f} G", f"{m['pruned'] / 1e9:.3f} G", f"{m['kept']:.3f}"],
                ["parameters", f"{p['dense'] / 1e6:.2f} M", f"{p['pruned'] / 1e6:.2f} M", f"{p['kept']:.3f}"]]  # fmt: skip
        stages = _stage_widths(report["layers"])
        width_rows = [[name, str(d), str(q), f"{q / d:.2f}"] for name, (d, q) in stages.items()]
        head_rows = [
            [h["name"], str(h["dense_heads"]), str(h["pruned_heads"])] for h in report.get("heads", [])
        ]
        blocks = [("h2", "Structure: dense vs pruned"), ("p", f"Counted by {report.get('counted_by')}."),
                  ("table", ["", "dense", "pruned", "kept"], rows),
                  ("h3", "Widths per stage (summed output channels of the pruned layers)"),
                  ("table", ["stage", "dense", "pruned", "kept"], width_rows), ("img", "widths", "Width per layer, dense vs pruned")]  # fmt: skip
        if head_rows:
            blocks += [
                ("h3", "Attention heads per block"),
                ("table", ["block", "dense", "pruned"], head_rows),
            ]
        if report.get("attention_fusion_problems"):
            blocks += [
                ("p", "TensorRT fused attention warnings: " + "; ".join(report["attention_fusion_problems"]))
            ]
        return blocks

    def _accuracy(self) -> list[tuple]:
        evaluate, tune, export = self.summary("evaluate"), self.summary("finetune"), self.summary("export")
        if evaluate is None:
            return [("h2", "Accuracy"), ("p", self.missing("accuracy", self.reason("evaluate")))]
        top1 = (tune or {}).get("top1", {})
        check = ((export or {}).get("int8") or {}).get("check") or {}
        rows = [
            [
                "dense",
                f"{evaluate['dense_top1']:.2f}",
                f"{evaluate['images']} val images of {evaluate['data']}",
            ]
        ]
        if top1:
            rows += [["pruned (as pruned)", f"{top1['as_given']:.2f}", "fine-tune stage's val split"],
                     ["pruned + BatchNorm recalibration", f"{top1['start']:.2f}", "before training"],
                     ["pruned + fine-tuned", f"{top1['best']:.2f}", f"best of {len(top1.get('epochs', []))} epochs "
                      f"(epoch {top1.get('best_epoch')}; per epoch {', '.join(f'{v:.1f}' for v in top1.get('epochs', []))})"]]  # fmt: skip
        else:
            rows.append(
                ["pruned + fine-tuned", self.missing("fine-tuned accuracy", self.reason("finetune")), ""]
            )
        if check:
            rows += [["exported ONNX (fp32)", f"{check['top1_fp32']:.2f}", f"{check['images']} images, ONNX Runtime"],
                     ["exported INT8", f"{check['top1_int8']:.2f}", f"{check['images']} images, ONNX Runtime"]]  # fmt: skip
        else:
            rows.append(["INT8", self.missing("INT8 accuracy", "no INT8 graph with data in this run"), ""])
        return [("h2", "Accuracy (top-1 %)"), ("table", ["model", "top-1", "measured on"], rows),
                ("img", "accuracy_latency", "Accuracy vs latency")]  # fmt: skip

    def _export(self) -> list[tuple]:
        export = self.summary("export")
        if export is None:
            return [("h2", "ONNX export"), ("p", self.missing("export", self.reason("export")))]
        e = export.get("export", {})
        batch = (e.get("input_shape") or ["?"])[0]
        lines = [f"`model.onnx`: opset {e.get('opset', '?')}, batch {'dynamic' if isinstance(batch, str) else batch}, "
                 f"{e.get('num_nodes', '?')} nodes after {e.get('simplify_note') or 'no simplifier'}, for "
                 f"{e.get('backend', '?')}; exported and verified in {export.get('wall_s', 0):.1f} s."]  # fmt: skip
        int8 = export.get("int8")
        if int8:
            kept = ", ".join(f"{op} {n}" for op, n in (int8.get("float_ops") or {}).items()) or "none"
            lines.append(f"`model.int8.onnx`: Q/DQ INT8 ({int8.get('activations')} activations, per-channel weights), "
                         f"calibrated on {int8.get('calibration_images')} {int8.get('calibration')} images "
                         f"({int8.get('method')}); ops left in float: {kept}.")  # fmt: skip
        lines += [f"Warning: {w}" for w in e.get("warnings") or []]
        lines.append(_app_inputs(export.get("metadata") or {}))
        rows = [[p["inputs"], str(p["images"]), f"{p['max_abs_diff']:.2e}", f"{p['min_cosine']:.6f}",
                 f"{100 * p['top1_agreement']:.1f}%", f"atol {p['atol']:g}, rtol {p['rtol']:g}"]
                for p in e.get("parity", [])]  # fmt: skip
        return [
            ("h2", "ONNX export and parity (ONNX Runtime vs PyTorch)"),
            *[("p", text) for text in lines],
            (
                "table",
                ["inputs", "images", "max abs diff", "min cosine", "top-1 agreement", "tolerance"],
                rows,
            ),
        ]

    def _latency(self) -> list[tuple]:
        blocks: list[tuple] = [("h2", "Latency")]
        for folder, title in (
            ("bench", "Measured here"),
            (DEVICE_BENCH, "Measured on the device (imported)"),
        ):
            data = self.read_json(f"{folder}/bench.json")
            if data is None:
                if folder == "bench":
                    blocks.append(("p", self.missing("latency", self.reason("bench"))))
                continue
            blocks += [("h3", title), ("p", how_measured(data.get("conditions", {}))),
                       ("table", ["model", "median ms", "p10–p90 ms", "p99 ms", "images/s"], _latency_rows(data)),
                       ("table", ["pair", "speedup", "p10–p90", "MAC reduction", "speedup ÷ MAC reduction"],
                        speedup_rows(data))]  # fmt: skip
            if data.get("curve"):  # a sweep: the curve against the keep ratio
                blocks += [("table", CURVE_COLUMNS, curve_rows(data["curve"])),
                           ("img", f"curve_{folder}", f"{title}: latency and speedup against the keep ratio")]  # fmt: skip
        blocks.append(("img", "latency", "Latency, dense vs pruned"))
        return blocks

    def _stages(self) -> list[tuple]:
        rows = [[s["name"], s["status"], "" if s.get("seconds") is None else f"{s['seconds']:.1f}", s.get("reason") or ""]
                for s in self.manifest.get("stages", []) if s["name"] != "report"]  # fmt: skip
        return [
            ("h2", "Stages"),
            ("table", ["stage", "status", "seconds", "note"], rows),
            ("img", "spectra", "Spectra summary"),
        ]

    def _commands(self) -> list[tuple]:
        command = self.manifest.get("command")
        root = shlex.quote(str(self.root))
        repro = f"rmtdeploy compress --recipe {root}/recipe.yaml --out {root}-again"
        lines = [("h2", "Reproduce and deploy"), ("p", "This run:"),
                 ("pre", " ".join(shlex.quote(c) for c in command) if command else "(library call)"),
                 ("p", "The same run from its resolved recipe:"), ("pre", repro)]  # fmt: skip
        target = str(self.recipe.get("target"))
        bundle = self.stages.get("bundle", {})
        if bundle.get("status") in ("done", "reused"):
            lines += [("p", "On the Jetson (TensorRT and Python 3 only), then back here:"),
                      ("pre", f"scp -r {root}/bundle jetson:rmtdeploy-bundle\n"
                              "ssh jetson 'cd rmtdeploy-bundle && bash build_engine.sh && python3 bench_on_device.py --runs 200'\n"
                              f"scp jetson:rmtdeploy-bundle/bench.json device-bench.json\n"
                              f"rmtdeploy bench --import device-bench.json --out {root}/{DEVICE_BENCH}\n"
                              f"rmtdeploy report {root}")]  # fmt: skip
        elif target.startswith("gpu"):
            lines += [
                ("p", "On a GPU machine with TensorRT:"),
                ("pre", f"rmtdeploy engine --onnx {root}/model.onnx --target {target} --out {root}/engine"),
            ]
        else:
            lines += [("p", "In an app (ONNX Runtime): the input size, mean/std and labels are in the ONNX metadata."),
                      ("pre", f"python -c \"import onnxruntime as ort; s = ort.InferenceSession('{self.root}/model.onnx'); "
                              "print(s.get_modelmeta().custom_metadata_map)\"")]  # fmt: skip
        return lines

    # -- plots -------------------------------------------------------------------------------------
    def plots(self) -> dict[str, bytes]:
        import matplotlib

        matplotlib.use("Agg")
        out = {}
        for name, draw in (("spectra", self._plot_spectra), ("widths", self._plot_widths),
                           ("accuracy_latency", self._plot_accuracy_latency),
                           ("budget_curve", lambda: budget_figure(self.summary("budget")))):  # fmt: skip
            figure = draw()
            if figure is not None:
                out[name] = png_bytes(figure)
        for folder in ("bench", DEVICE_BENCH):  # a sweep's curve, drawn by the bench stage
            if (self.root / folder / CURVE_PLOT).is_file():
                out[f"curve_{folder}"] = (self.root / folder / CURVE_PLOT).read_bytes()
        bench_plot = self.root / "bench" / "bench.png"  # drawn by the bench stage from the same bench.json
        if bench_plot.is_file():
            out["latency"] = bench_plot.read_bytes()
        return out

    def _plot_spectra(self):
        import matplotlib.pyplot as plt

        records = [r for r in (self.read_json("analysis/spectra.json") or []) if r.get("status") == "ok"]
        if not records:
            return None
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
        left.bar(range(len(records)), [r["spikes"] for r in records], color="#4c72b0")
        left.set(
            title="spikes above the MP edge per matrix", xlabel="matrix (network order)", ylabel="spikes"
        )
        right.plot([r["ser"] for r in records], ".", color="#dd8452")
        right.set(
            title="spectral energy ratio (signal share)",
            xlabel="matrix (network order)",
            ylabel="SER",
            ylim=(0, 1),
        )
        fig.tight_layout()
        return fig

    def _plot_widths(self):
        import matplotlib.pyplot as plt

        report = self.read_json("pruned/report.json")
        if not report or not report.get("layers"):
            return None
        layers = report["layers"]
        fig, ax = plt.subplots(figsize=(10, 3.2))
        x = range(len(layers))
        ax.bar(x, [layer["dense_width"] for layer in layers], color="#c8c8c8", label="dense")
        ax.bar(x, [layer["pruned_width"] for layer in layers], color="#4c72b0", label="pruned")
        ax.set(title="output channels per pruned layer", xlabel="layer (network order)", ylabel="channels")
        ax.legend()
        fig.tight_layout()
        return fig

    def _plot_accuracy_latency(self):
        import matplotlib.pyplot as plt

        points = self._accuracy_latency_points()
        fig, ax = plt.subplots(figsize=(6, 3.6))
        if not points:
            ax.text(0.5, 0.5, "accuracy or latency not measured in this run", ha="center", va="center")
            ax.set_axis_off()
            return fig
        for label, ms, top1 in points:
            ax.plot(ms, top1, "o")
            ax.annotate(label, (ms, top1), textcoords="offset points", xytext=(5, 5))
        ax.set(xlabel="median latency, ms (bench stage)", ylabel="top-1 %", title="accuracy vs latency")
        fig.tight_layout()
        return fig

    def _accuracy_latency_points(self) -> list[tuple[str, float, float]]:
        bench = self.read_json("bench/bench.json")
        evaluate, tune = self.summary("evaluate"), self.summary("finetune")
        export = self.summary("export") or {}
        if bench is None or evaluate is None:
            return []
        latency = {label: stats["median_ms"] for label, stats in bench["latency"].items()}
        points = []
        if "dense" in latency:
            points.append(("dense", latency["dense"], evaluate["dense_top1"]))
        pruned_top1 = (tune or {}).get("top1", {}).get("best")
        if "pruned" in latency and pruned_top1 is not None:
            points.append(("pruned + fine-tuned", latency["pruned"], pruned_top1))
        check = (export.get("int8") or {}).get("check") or {}
        if "int8" in latency and check:
            points.append(("INT8", latency["int8"], check["top1_int8"]))
        return points


def _stage_widths(layers: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Layer widths summed per top-level stage (the module path's first two parts)."""
    stages: dict[str, tuple[int, int]] = {}
    for layer in layers:
        parts = layer["name"].split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 else parts[0]
        dense, pruned = stages.get(key, (0, 0))
        stages[key] = (dense + layer["dense_width"], pruned + layer["pruned_width"])
    return stages


def _latency_rows(data: dict[str, Any]) -> list[list[str]]:
    batch = int(data.get("conditions", {}).get("batch") or 1)
    return [[label, f"{s['median_ms']:.3f}", f"{s['p10_ms']:.3f}–{s['p90_ms']:.3f}", f"{s['p99_ms']:.3f}",
             f"{batch * 1000 / s['median_ms']:.1f}"] for label, s in data["latency"].items()]  # fmt: skip


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _preprocessing(load: dict) -> str:
    """mean/std, filter and crop the model takes, and where they came from (flags, recipe, saved config)."""
    pre = load.get("preprocessing")
    if not pre:
        return "timm's defaults for the model"
    text = f"mean {pre['mean']}, std {pre['std']}, {pre['interpolation']} resize, crop {pre['crop_pct']:g}"
    return text + (f" (from {load['input_from']})" if load.get("input_from") else "")


def _classes(load: dict) -> str:
    labels = load.get("labels") or []
    shown = ", ".join(labels[:12]) + (f", … ({len(labels)} in all)" if len(labels) > 12 else "")
    text = f"{load.get('num_classes', '?')}" + (
        f" (from {load['classes_from']})" if load.get("classes_from") else ""
    )
    return text + (f": {shown}" if labels else "")


def _app_inputs(metadata: dict[str, str]) -> str:
    """What the exported file tells an app to feed it (its ONNX metadata), in one line."""
    import json

    def value(key: str):
        text = metadata.get(f"rmtdeploy.{key}")
        try:
            return json.loads(text) if text is not None else None
        except ValueError:
            return text

    labels = value("labels") or []
    named = ", ".join(labels[:12]) + (", …" if len(labels) > 12 else "") if labels else "no class names"
    size = "×".join(map(str, value("input_size") or [])) or "?"
    return (
        f"An app reads from its metadata: input {size}, mean {value('mean')}, std {value('std')}, "
        f"{value('interpolation')} resize, crop {value('crop_pct')}; {value('num_classes')} classes ({named})."
    )
