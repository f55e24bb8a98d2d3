"""The benchmark stage as one library call: ``bench(pruned_dir, out) -> BenchRun``.

Dense and pruned (and an INT8 graph when given) are timed interleaved on one backend with the
protocol of :mod:`rmtdeploy.benchmark.protocol`, and written as one unit to ``out``: ``bench.json``
(every sample, the conditions, the statistics), ``bench.md`` and ``bench.png``
(:mod:`rmtdeploy.report.latency`). The dense model is the plan's architecture rebuilt with random
weights: latency does not depend on the values, and the dense checkpoint need not be at hand.

Results measured elsewhere (the Jetson bundle's on-device script writes the same ``bench.json``
format) come in with :func:`import_results` and land in the same tables; a bundle's sweep (candidates at
several keep ratios) comes back as a measured curve, tabled in ``bench.md`` and drawn in ``curve.png``, and
a bundle's latency table timed on the board as ``latency_table.json`` (:mod:`rmtdeploy.benchmark.device_table`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmtdeploy.benchmark.results import (
    BENCH_FORMAT,
    BENCH_VERSION,
    efficiency,
    read_results,
    report_from_samples,
)
from rmtdeploy.benchmark.stats import LatencyReport
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import OutputFolder

BENCH_FILES = ("bench.json", "bench.md", "bench.png")
CURVE_PLOT = "curve.png"  # beside them when the results hold a sweep (latency and speedup vs keep ratio)
BENCH_BACKENDS = ("onnxruntime", "torch", "torch-compile", "tensorrt")
DEFAULT_TENSORRT_TARGET = "gpu-fp16"
DEFAULT_RUNS = 100
DEFAULT_WARMUP = 10

Status = Callable[[str], None]


@dataclass
class BenchRun:
    """A finished benchmark: the report, what each timed model is, and the folder that holds them."""

    directory: Path
    report: LatencyReport
    models: dict[str, dict[str, Any]]  # label -> source, MACs and parameters where known
    files: list[Path] = field(default_factory=list)
    latency_table: Any = None  # LatencyTable: a board's timed latency table, imported (latency_table.json)

    def to_dict(self) -> dict[str, Any]:
        """``bench.json``: the format the on-device script writes too."""
        from rmtdeploy.benchmark.curve import curve_points

        report = self.report.to_dict(include_samples=True)
        curve = curve_points(self.report, self.models)  # a sweep's candidates, by keep ratio
        return {
            "format": BENCH_FORMAT,
            "version": BENCH_VERSION,
            "models": self.models,
            "latency": report["models"],
            "speedups": report["speedups"],
            "efficiency": efficiency(self.report, self.models),
            **({"curve": curve} if curve else {}),
            "conditions": report["conditions"],
            "samples_ms": report["samples_ms"],
        }


def bench(
    pruned: str | os.PathLike,
    out: str | os.PathLike,
    *,
    int8: str | os.PathLike | None = None,
    backend: str = "onnxruntime",
    batch: int = 1,
    threads: int | None = None,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    device: str = "cpu",
    compile_mode: str | None = None,
    precision: str | None = None,
    target: str | None = None,
    latency_table: bool = False,
    force: bool = False,
    status: Status | None = None,
) -> BenchRun:
    """Time the dense architecture of ``pruned``'s plan against the pruned model (and ``int8``, an ONNX
    file, with ONNX Runtime), interleaved, and write the report to ``out``.

    ``backend``: ``onnxruntime`` (CPU, both exported here through :func:`rmtdeploy.exporting.export_onnx`,
    one shared thread pool), ``torch`` (eager) or ``torch-compile`` (``compile_mode``, default
    ``"default"``; ``"reduce-overhead"`` for CUDA graphs) or ``tensorrt`` (engines built here for
    ``target``, default gpu-fp16, through :func:`rmtdeploy.engine.stage.build_for_target`, timed on the
    GPU; ``int8`` is then a Q/DQ graph built as an INT8 engine). ``device``/``precision`` apply to the
    PyTorch backends (precision default fp32); for TensorRT ``precision`` overrides the target's.
    ``threads`` defaults to the machine's cores. ``latency_table`` (ONNX Runtime only) also measures the
    dense model's latency table here, at the plan's width rules, into ``latency_table.json``
    (:func:`rmtdeploy.benchmark.latency_table.measure_latency_table`; on a board: the bundle's).
    """
    from rmtdeploy.pruning.plan import load_dense_and_pruned

    say = status or (lambda text: None)
    threads = threads or os.cpu_count() or 1
    engine_target = _check_request(
        pruned, int8, backend, batch, threads, runs, warmup, device, precision, target
    )
    if latency_table not in (True, False):
        raise RmtdeployError(f"{{param}} must be true or false, got {latency_table!r}", param="latency_table")
    if latency_table and backend != "onnxruntime":
        raise RmtdeployError("{param} is measured here with onnxruntime; a board's comes from its bundle "
                             "(bundle with a latency table, then bench --import)", param="latency_table")  # fmt: skip
    with OutputFolder(out, BENCH_FILES, force=force, stage="bench") as folder:
        say("loading the models")
        dense, pruned_model, plan = load_dense_and_pruned(Path(pruned))
        models = _model_facts(plan, Path(pruned), int8)
        say(f"timing {', '.join(models)} on {backend} ({runs} interleaved rounds)")
        if backend == "onnxruntime":
            report = _time_onnx(dense, pruned_model, int8, batch, threads, runs, warmup)
        elif backend == "tensorrt":
            report = _time_tensorrt(
                dense, pruned_model, int8, models, engine_target, precision, batch, runs, warmup, say
            )
        else:
            from rmtdeploy.benchmark.latency import measure_torch_latency

            report = measure_torch_latency(
                {"dense": dense, "pruned": pruned_model}, batch=batch, threads=threads, warmup=warmup,
                runs=runs, input_shape=tuple(plan["input_size"]), device=device, precision=precision or "fp32",
                compile_mode=compile_mode or ("default" if backend == "torch-compile" else None),
            )  # fmt: skip
        run = BenchRun(Path(out), report, models)
        _write(folder, run)
        if latency_table:
            run.latency_table = _measure_table(dense, plan, threads, runs, warmup, say)
            from rmtdeploy.benchmark.device_table import TABLE_FILE

            folder.write_json(TABLE_FILE, run.latency_table.to_dict())
        run.files = folder.commit()
    return run


def _measure_table(dense, plan, threads: int, runs: int, warmup: int, say):
    """The dense model's latency table on ONNX Runtime CPU, at the plan's input size and width rules."""
    import torch

    from rmtdeploy.benchmark.latency_table import measure_latency_table

    say(f"measuring {plan['model']}'s latency table on onnxruntime ({runs} rounds per group)")
    return measure_latency_table(
        dense, model_name=plan["model"], example_inputs=torch.zeros(1, *plan["input_size"]),
        round_to=plan.get("round_to", 8), min_channels=plan.get("min_channels", 8), threads=threads, runs=runs,
        warmup=warmup, status=say,
    )  # fmt: skip


def import_results(results: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> BenchRun:
    """A ``bench.json`` measured elsewhere (the Jetson bundle's on-device script, another machine):
    checked, its statistics recomputed from its samples, and written to ``out`` as this stage does. A
    latency table timed on the board with it is assembled into ``out/latency_table.json``."""
    from rmtdeploy.benchmark.device_table import TABLE_FILE, board_latency_table

    data = read_results(results)
    table = board_latency_table(data, str(results))
    with OutputFolder(out, BENCH_FILES, force=force, stage="bench") as folder:
        report = report_from_samples(data)
        run = BenchRun(Path(out), report, data.get("models") or {label: {} for label in report.models})
        _write(folder, run)
        if table is not None:
            folder.write_json(TABLE_FILE, table.to_dict())
            run.latency_table = table
        run.files = folder.commit()
    return run


def _check_request(pruned, int8, backend, batch, threads, runs, warmup, device, precision, target):
    """Everything that can be refused before a model loads; the TensorRT target profile, or None."""
    from rmtdeploy.benchmark.protocol import check_counts
    from rmtdeploy.pruning.plan import read_plan

    if backend not in BENCH_BACKENDS:
        raise RmtdeployError(
            f"{{param}} must be one of {', '.join(BENCH_BACKENDS)}, got '{backend}'", param="backend"
        )
    check_counts({"dense": None}, batch, threads, warmup, runs)
    if not Path(pruned).is_dir():
        raise RmtdeployError(f"pruned-model directory not found: {pruned}", param="pruned")
    read_plan(pruned)
    if int8 is not None:
        if backend not in ("onnxruntime", "tensorrt"):
            raise RmtdeployError(
                "an INT8 ONNX file is timed with --backend onnxruntime or tensorrt", param="int8"
            )
        if not Path(int8).is_file():
            raise RmtdeployError(f"INT8 ONNX file not found: {int8}", param="int8")
        check_int8_graph(int8)
    if target is not None and backend != "tensorrt":
        raise RmtdeployError(
            "--target chooses the TensorRT build: it goes with --backend tensorrt", param="target"
        )
    if backend == "onnxruntime" and (device != "cpu" or precision not in (None, "fp32")):
        raise RmtdeployError(
            "--device and --precision apply to the PyTorch and TensorRT backends; ONNX Runtime here is CPU fp32"
        )
    if backend == "tensorrt":
        return check_tensorrt_bench(device, precision, target or DEFAULT_TENSORRT_TARGET)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RmtdeployError("--device cuda asked for, but torch sees no CUDA GPU here", param="device")
    return None


def check_tensorrt_bench(device, precision, target):
    """``(target profile, TensorRT version)`` for a TensorRT timing, or the one line that says why not."""
    from rmtdeploy.engine.target_build import usable_tensorrt
    from rmtdeploy.targets import load_target

    profile = load_target(target)
    if profile.backend != "tensorrt":
        raise RmtdeployError(f"target {profile.name} runs on {profile.backend}, not TensorRT", param="target")
    if precision not in (None, "fp32", "fp16"):
        raise RmtdeployError(
            "--precision for TensorRT is fp32 or fp16 (INT8 comes from an --int8 Q/DQ graph)"
        )
    if device != "cpu":
        raise RmtdeployError("--device is for the PyTorch backends; TensorRT runs on the GPU")
    version = usable_tensorrt(profile, "time")
    import torch

    if not torch.cuda.is_available():
        raise RmtdeployError("TensorRT imports, but torch sees no CUDA GPU here")
    return profile, version


def check_int8_graph(int8: str | os.PathLike) -> None:
    """Refuse a graph given as the INT8 model that is not one (no Q/DQ nodes): timed, it would be labelled
    pruned-int8 while running fp32 (or fp16), on every backend."""
    from rmtdeploy.exporting.onnx_file import graph_precision

    try:
        precision = graph_precision(int8)
    except Exception as exc:  # onnx's own parse errors
        raise RmtdeployError(
            f"cannot read {int8} as ONNX: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}",
            param="int8",
        ) from exc
    if precision != "int8":
        raise RmtdeployError(
            f"{int8} has no Q/DQ nodes (a plain {precision} graph), so it is not an INT8 model; {{param}} "
            "takes the Q/DQ graph export writes when asked for INT8 (model.int8.onnx)",
            param="int8",
        )


def _model_facts(plan: dict[str, Any], pruned: Path, int8) -> dict[str, dict[str, Any]]:
    facts = {
        "dense": {"source": f"{plan['model']} (the plan's dense architecture, random weights)",
                  "macs": plan["macs"]["dense"], "params": plan["params"]["dense"]},
        "pruned": {"source": str(pruned), "macs": plan["macs"]["pruned"], "params": plan["params"]["pruned"],
                   "strategy": (plan.get("strategy") or {}).get("name")},
    }  # fmt: skip
    if int8 is not None:
        facts["pruned-int8"] = {"source": str(int8), "macs": plan["macs"]["pruned"], "precision": "int8"}
    return facts


def _time_onnx(dense, pruned_model, int8, batch: int, threads: int, runs: int, warmup: int) -> LatencyReport:
    from rmtdeploy.benchmark.latency import measure_onnx_latency
    from rmtdeploy.exporting import export_onnx

    with tempfile.TemporaryDirectory(prefix="rmtdeploy-bench-") as tmp:
        paths = {}
        for label, model in (("dense", dense), ("pruned", pruned_model)):
            paths[label] = str(Path(tmp) / f"{label}.onnx")
            export_onnx(model, paths[label], backend="onnxruntime", dynamic_batch=True)
        if int8 is not None:
            paths["pruned-int8"] = str(int8)
        return measure_onnx_latency(paths, batch=batch, threads=threads, warmup=warmup, runs=runs)


def _time_tensorrt(dense, pruned_model, int8, models, engine_target, precision, batch, runs, warmup, say):
    """Export dense and pruned in the target's form, build their engines (and ``int8``'s) and time them."""
    from rmtdeploy.benchmark.latency import measure_tensorrt_latency
    from rmtdeploy.engine.target_build import build_for_target
    from rmtdeploy.exporting import export_onnx

    profile, version = engine_target
    precision = precision or profile.precision
    engines = {}
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-bench-") as tmp:
        for label, model in (("dense", dense), ("pruned", pruned_model)):
            graph = Path(tmp) / f"{label}.onnx"
            export_onnx(model, graph, target=profile.name, overwrite=True)
            say(f"building the {label} engine ({profile.name}, TensorRT {version})")
            engines[label], record = build_for_target(graph, profile, version, qdq=False, precision=precision)
            models[label]["engine"] = _engine_facts(record)
        if int8 is not None:
            say(f"building the INT8 engine ({profile.name}, TensorRT {version})")
            engines["pruned-int8"], record = build_for_target(
                Path(int8), profile, version, qdq=True, precision="int8"
            )
            models["pruned-int8"]["engine"] = _engine_facts(record)
    return measure_tensorrt_latency(engines, batch=batch, warmup=warmup, runs=runs, precision=precision)


def _engine_facts(record: dict[str, Any]) -> dict[str, Any]:
    """What the report keeps of an engine build: precision built, layer precisions, fused attention."""
    keep = ("onnx_precision_built", "layers", "precisions", "fused_attention_layers", "gpu")
    return {**{k: record[k] for k in keep if k in record}, "tensorrt": record["settings"]["tensorrt"],
            "builder_flags": list(record["settings"]["builder_flags"]), "strongly_typed": record["settings"]["strongly_typed"]}  # fmt: skip


def _write(folder: OutputFolder, run: BenchRun) -> None:
    from rmtdeploy.report.latency import plot_curve, plot_latency, render_latency_markdown

    data = run.to_dict()
    folder.write_json("bench.json", data)
    folder.write_text("bench.md", render_latency_markdown(data))
    plot_latency(data, folder.path("bench.png"))
    if data.get("curve"):
        plot_curve(data, folder.path(CURVE_PLOT))
