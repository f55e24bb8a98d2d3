"""The bundle stage: ``make_bundle(pruned_dir, out, target="jetson-orin-nano") -> BundleRun``.

The folder holds: ``model.onnx`` (the pruned model, the target's graph form and static shape, verified),
``dense.onnx`` (the dense architecture, random weights: the on-device speedup's baseline),
``model.int8.onnx`` when asked (Q/DQ, :mod:`rmtdeploy.exporting.int8`), ``model.fp16.onnx`` where the
target accepts TensorRT 11 (strongly typed: the precision must be in the graph), ``build_engine.sh``,
``bench_on_device.py``, ``bundle.json`` and ``README.md``, written as one unit.

A sweep adds ``keep-<ratio>.onnx`` per keep ratio: candidates pruned from the dense model (its real
weights: the strategy's scores, which choose the widths and so the latency, read them) with the pruned
folder's strategy, knobs and width rules, the spectra fitted once. The board times them all with dense in
one interleaved run: a measured curve (:mod:`rmtdeploy.benchmark.curve`) to choose a keep ratio from.

A latency table adds ``latency_table/``: the table's plan (``plan.json``) and its ONNX graphs
(:mod:`rmtdeploy.benchmark.latency_table_plan`), planned on the plan's dense architecture at the target's
channel multiple. ``build_engine.sh`` builds one engine per graph, ``bench_on_device.py --latency-table``
times them group by group, and ``rmtdeploy bench --import`` assembles ``latency_table.json``.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rmtdeploy.benchmark.curve import check_sweep  # re-exported: the compress recipe checks its sweep
from rmtdeploy.engine.versions import build_settings, trtexec_command
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import OutputFolder

BUNDLE_TARGET_PREFIX = "jetson-"
BUNDLE_FILES = (
    "model.onnx",
    "dense.onnx",
    "build_engine.sh",
    "bench_on_device.py",
    "bundle.json",
    "README.md",
)
INPUT_NAME = "input"
TABLE_DIR = "latency_table"  # the latency table's plan.json, graphs and (built on the board) engines


@dataclass
class BundleRun:
    directory: Path
    record: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def make_bundle(
    pruned: str | os.PathLike,
    out: str | os.PathLike,
    *,
    target: str,
    int8: bool = False,
    data: str | os.PathLike | None = None,
    calibration_images: int = 256,
    sweep: list[float] | None = None,
    model=None,
    latency_table: bool = False,
    force: bool = False,
    status=None,
) -> BundleRun:
    """Write the Jetson bundle of the pruned (or fine-tuned) folder ``pruned`` for ``target``.

    ``sweep``: keep ratios in (0, 1]; each becomes a candidate pruned from ``model`` (a model name,
    :class:`~rmtdeploy.models.ModelSource` or loaded model: the dense model ``pruned`` came from, checked by
    name and MACs against its plan) and is built and timed on the board beside the others.

    ``latency_table``: also plan the dense model's latency table (``latency_table/``), for the board to
    time; the plan's dense architecture is its source (timing does not depend on the weights)."""
    from rmtdeploy.targets import load_target

    profile = load_target(target)
    if not profile.name.startswith(BUNDLE_TARGET_PREFIX):
        raise RmtdeployError(
            f"a bundle is for Jetson targets (jetson-orin-nano, jetson-orin-nx, jetson-agx-orin, ...); "
            f"'{profile.name}' is built where it runs: rmtdeploy export / engine",
            param="target",
        )
    if not Path(pruned).is_dir():
        raise RmtdeployError(f"pruned-model directory not found: {pruned}", param="pruned")
    request = _check_sweep(sweep, model, Path(pruned))
    _check_latency_table(latency_table)
    say = status or (lambda text: None)
    with OutputFolder(out, BUNDLE_FILES, force=force, stage="bundle") as folder:
        graphs = _graphs(folder, Path(pruned), profile, int8, data, calibration_images, say)
        if request is not None:
            graphs["models"].update(_sweep(folder, graphs, profile, *request, say))
        if latency_table:
            graphs["table"] = _latency_table(folder, graphs, profile, say)
        record = _record(profile, graphs)
        folder.write_text("build_engine.sh", build_script(profile, graphs))
        folder.write_bytes(
            "bench_on_device.py",
            resources.files("rmtdeploy.bundle").joinpath("bench_on_device.py").read_bytes(),
        )
        folder.write_json("bundle.json", record)
        folder.write_text("README.md", readme(profile, record))
        os.chmod(folder.path("build_engine.sh"), 0o755)
        run = BundleRun(Path(out), record)
        run.files = folder.commit()
    return run


def _graphs(
    folder: OutputFolder, pruned: Path, profile, int8: bool, data, images: int, say
) -> dict[str, Any]:
    """Export pruned (+ INT8) and dense graphs into the staging folder; their facts for bundle.json."""
    from rmtdeploy.exporting import export_onnx
    from rmtdeploy.exporting.deployment import DEFAULT_PARITY_IMAGES, check_export, run_export
    from rmtdeploy.pruning.plan import load_dense_and_pruned

    say(f"exporting {pruned} for {profile.name}")
    request = check_export(pruned, folder.path("model.onnx"), profile.name, data, DEFAULT_PARITY_IMAGES, True,
                           lambda text: None, int8, images, "minmax")  # fmt: skip
    run = run_export(request, calibration_images=images, force=True)
    dense, _, plan = load_dense_and_pruned(pruned)
    say("exporting the dense architecture (the on-device baseline)")
    export_onnx(dense, folder.path("dense.onnx"), target=profile.name, overwrite=True)
    graphs = {
        "plan": plan,
        "sweep": [],
        "shape": [d if isinstance(d, int) else 1 for d in run.result.input_shape],
        "static": all(isinstance(d, int) for d in run.result.input_shape),
        "int8": run.int8 is not None,
        "fp16": False,
        "models": {
            "dense": {"macs": plan["macs"]["dense"], "params": plan["params"]["dense"],
                      "source": f"{plan['model']} (dense architecture, random weights)"},
            "pruned": {"macs": plan["macs"]["pruned"], "params": plan["params"]["pruned"], "source": str(pruned)},
        },
    }  # fmt: skip
    if run.int8 is not None:
        graphs["models"]["pruned-int8"] = {"macs": plan["macs"]["pruned"], "precision": "int8"}
    if profile.accepts_tensorrt_major(11) and profile.precision != "fp32":
        # TensorRT 11 is strongly typed: fp16 graphs, and INT8's Q/DQ graph with fp16 float parts.
        graphs["fp16"] = _fp16_copy(
            folder, ("model", "dense", "model.int8") if graphs["int8"] else ("model", "dense")
        )
    return graphs


def _check_sweep(sweep, model, pruned: Path):
    """``(keep ratios, dense source, strategy)`` for a sweep, checked before the work; None without one."""
    if sweep is None:
        if model is not None:
            raise RmtdeployError("{param} is the dense model a sweep's candidates are pruned from: give a sweep too",
                                 param="model")  # fmt: skip
        return None
    from rmtdeploy.models import model_source
    from rmtdeploy.pruning.plan import read_plan
    from rmtdeploy.scores import get_strategy

    ratios = check_sweep(sweep)
    if model is None:
        raise RmtdeployError(
            "a sweep prunes its candidates from the dense model, with its weights (the scores that choose the "
            f"widths read them): give {{param}}, the model {pruned} was pruned from",
            param="model",
        )
    source = model_source(model)
    plan = read_plan(pruned)
    if source.check() != plan["model"]:
        raise RmtdeployError(
            f"{{param}} names {source.check()}, but {pruned} was pruned from {plan['model']}: a sweep's candidates "
            "are pruned from the pruned folder's own dense model",
            param="model",
        )
    recorded = plan.get("strategy") or {}
    if not recorded.get("name"):
        raise RmtdeployError(f"{pruned}'s plan names no strategy to prune the sweep's candidates with")
    return ratios, source, get_strategy(recorded["name"], **(recorded.get("knobs") or {}))


def _sweep(folder: OutputFolder, graphs, profile, ratios, source, strategy, say) -> dict[str, dict[str, Any]]:
    """One candidate per keep ratio, pruned from the dense model as the plan was (strategy, knobs, width
    rules; the spectra fitted once), exported in the target's form; their facts for bundle.json."""
    from rmtdeploy.benchmark.allocation import fastest_allocation
    from rmtdeploy.benchmark.curve import sweep_label
    from rmtdeploy.exporting import export_onnx
    from rmtdeploy.scores.channel_spectra import reused_spectra

    plan = graphs["plan"]
    loaded = source.load()
    _check_dense(loaded, plan)
    options = {
        key: plan[key] for key in ("round_to", "min_channels", "prune_heads", "head_rounding") if key in plan
    }
    if plan.get("latency_allocation"):
        options["latency_weights"] = fastest_allocation
    models = {}
    with reused_spectra():
        for keep in ratios:
            label = sweep_label(keep)
            say(f"sweep: pruning {loaded.name} to keep {keep:g} of its MACs ({strategy.name})")
            result = strategy.prune(loaded.model, keep_macs=keep, model_name=loaded.name, **options)
            export_onnx(
                result.model.eval(), folder.path(f"{label}.onnx"), target=profile.name, overwrite=True
            )
            models[label] = {"keep_macs": keep, "macs": result.pruned_macs, "params": result.pruned_params,
                             "source": f"{loaded.name} pruned to keep {keep:g} ({strategy.name})"}  # fmt: skip
            graphs["sweep"].append(label)
    if graphs["fp16"]:
        _fp16_copy(folder, tuple(graphs["sweep"]))
    return models


def _check_latency_table(latency_table) -> None:
    # No dense model is asked for: the plan rebuilds the dense architecture, and timing does not depend on
    # the weights (a sweep needs them: its widths are chosen by scores that read them).
    if not isinstance(latency_table, bool):
        raise RmtdeployError(f"{{param}} must be true or false, got {latency_table!r}", param="latency_table")


def _latency_table(folder: OutputFolder, graphs, profile, say) -> dict[str, Any]:
    """The dense model's latency-table plan and its graphs in ``latency_table/`` (fp16 copies for TensorRT
    11), at the target's channel multiple; its facts for bundle.json."""
    import torch

    from rmtdeploy.benchmark.latency_table_plan import PLAN_FILE, plan_latency_table
    from rmtdeploy.pruning.plan import dense_architecture

    plan = graphs["plan"]
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the graphs' random weights: the same bundle gives the same bytes
        dense = dense_architecture(plan).eval()
    say(f"latency table: planning {plan['model']}'s graphs (channel multiple {profile.channel_multiple})")
    table = plan_latency_table(dense, folder.path(TABLE_DIR), model_name=plan["model"],
                               round_to=profile.channel_multiple, min_channels=plan.get("min_channels", 8),
                               status=say)  # fmt: skip
    folder.write_json(f"{TABLE_DIR}/{PLAN_FILE}", table.to_dict())
    labels = list(table.graphs)
    if graphs["fp16"]:
        _fp16_copy(folder, tuple(f"{TABLE_DIR}/{table.graphs[label][: -len('.onnx')]}" for label in labels))
    # Every graph is a whole model (each builds about as long as dense.engine).
    return {"plan_file": f"{TABLE_DIR}/{PLAN_FILE}", "graphs": len(labels), "model_graphs": len(labels),
            "groups": len(table.groups), "labels": labels, "precision": _float_precision(profile)}  # fmt: skip


def _float_precision(profile) -> str:
    """What a sweep's candidates and a latency table's graphs are built in: the target's float precision
    (fp16 on an INT8 target: their graphs carry no Q/DQ)."""
    return "fp16" if profile.precision == "int8" else profile.precision


def _check_dense(loaded, plan: dict[str, Any]) -> None:
    """The sweep's dense model must be the one the plan was pruned from: same name, same MACs."""
    from rmtdeploy.adapters import get_adapter
    from rmtdeploy.pruning.result import count_macs_params

    macs = count_macs_params(loaded.model, get_adapter(loaded.model).example_inputs(loaded.model))[0]
    if loaded.name != plan["model"] or abs(macs / plan["macs"]["dense"] - 1) > 0.01:
        raise RmtdeployError(
            f"the dense model given as {{param}} ({loaded.name}, {macs / 1e9:.3f} GMACs) is not the one the pruned folder was "
            f"pruned from ({plan['model']}, {plan['macs']['dense'] / 1e9:.3f} GMACs)",
            param="model",
        )


def _fp16_copy(folder: OutputFolder, stems: tuple[str, ...]) -> bool:
    """fp16 graphs (fp32 inputs and outputs kept) for TensorRT 11's strongly typed builds."""
    from rmtdeploy.exporting.fp16 import fp16_copy

    for stem in stems:
        fp16_copy(folder.path(f"{stem}.onnx"), folder.path(f"{stem}.fp16.onnx"))
    return True


def build_script(profile, graphs: dict[str, Any]) -> str:
    """``build_engine.sh``: refuses a TensorRT older than 10 or outside the target's range, then runs
    trtexec per graph, build only (``--skipInference``), for the board's TensorRT major version; then the
    latency table's engines, if the bundle has one (``--latency-table``: those only)."""
    table = graphs.get("table")
    lines = ["#!/usr/bin/env bash", f"# Builds the engines of this bundle for {profile.name} ({profile.description}).",
             "# Written by rmtdeploy bundle; layer info goes to <engine>.layers.json.", "set -euo pipefail",
             'cd "$(dirname "$0")"', *(_TABLE_ARGUMENT if table else ()), 'TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}',
             "TRT=$(python3 -c 'import tensorrt; print(tensorrt.__version__)')",
             'echo "TensorRT $TRT on $(tr -d "\\0" < /proc/device-tree/model 2>/dev/null || uname -m)"',
             'if [ "${TRT%%.*}" -lt 10 ]; then',
             '  echo "TensorRT $TRT is older than 10 (JetPack 6.0 shipped 8.6): these engines need TensorRT 10 or 11 '
             '(JetPack 6.1 or later)" >&2', "  exit 1", "fi",
             f"if ! python3 -c {shlex.quote(_range_test(profile))} \"$TRT\"; then",
             f'  echo "{profile.name} wants TensorRT {profile.tensorrt} (JetPack {profile.jetpack}); this board has $TRT" >&2',
             "  exit 1", "fi"]  # fmt: skip
    majors = ["11", "10"] if profile.accepts_tensorrt_major(11) else ["10"]
    if table:
        lines.append('if [ "$TABLE_ONLY" = 0 ]; then')
    for major in majors:
        if len(majors) > 1:
            lines.append('if [ "${TRT%%.*}" -ge 11 ]; then' if major == "11" else "else")
        for label, onnx, engine in _engine_list(graphs, strongly_typed=major == "11"):
            precision = "int8" if label == "pruned-int8" else _float_precision(profile)
            cmd = _trtexec(profile, major, precision, onnx, engine, graphs, qdq=label == "pruned-int8")
            cmd[-1] = f"--exportLayerInfo={engine}.layers.json"
            lines.append("  " + " ".join(c if c.startswith("$") else shlex.quote(c) for c in cmd))
    if len(majors) > 1:
        lines.append("fi")
    if table:
        lines += ["fi", *_table_lines(profile, graphs, majors)]
    next_step = "python3 bench_on_device.py" + (" --latency-table" if table else "")
    lines += [f'echo "engines built; next: {next_step}"', ""]
    return "\n".join(lines)


_TABLE_ARGUMENT = (
    "TABLE_ONLY=0",
    'if [ "${1:-}" = "--latency-table" ]; then TABLE_ONLY=1; fi  # only the latency table\'s engines',
)


def _trtexec(profile, major: str, precision: str, onnx: str, engine: str, graphs, qdq: bool) -> list[str]:
    settings = build_settings(f"{major}.0", precision, dla=profile.dla, qdq=qdq)
    cmd = trtexec_command(settings, onnx, engine, input_name=INPUT_NAME, shape=tuple(graphs["shape"]),
                          max_batch=profile.max_batch, opt_batch=profile.profile_opt_batch, static=graphs["static"],
                          workspace_mib=profile.workspace_mib, timing_cache="timing.cache")  # fmt: skip
    return ["$TRTEXEC", *cmd[1:]]


def _table_lines(profile, graphs: dict[str, Any], majors: list[str]) -> list[str]:
    """One engine per latency-table graph (static batch 1, the sweep's precision), skipping the built
    ones: written to ``<label>.engine.partial`` and renamed when done, so an interrupted build resumes."""
    table = graphs["table"]
    lines = [f"# The latency table: {table['graphs']} graphs in {TABLE_DIR}/ (see README.md).",
             "TABLE=(" + " ".join(shlex.quote(label) for label in table["labels"]) + ")", "n=0",
             'for label in "${TABLE[@]}"; do', "  n=$((n + 1))",
             f'  engine="{TABLE_DIR}/$label.engine"', '  [ -f "$engine" ] && continue',
             '  echo "latency table: engine $n of ${#TABLE[@]} ($label)"']  # fmt: skip
    static = {**graphs, "static": True}  # the table's graphs are exported at batch 1
    for major in majors:
        if len(majors) > 1:
            lines.append('if [ "${TRT%%.*}" -ge 11 ]; then' if major == "11" else "else")
        fp16 = major == "11" and graphs["fp16"]
        onnx = f"{TABLE_DIR}/$label{'.fp16' if fp16 else ''}.onnx"
        cmd = _trtexec(profile, major, table["precision"], onnx, "$engine.partial", static, qdq=False)
        cmd = [c for c in cmd if not c.startswith(("--exportLayerInfo", "--profilingVerbosity"))]
        lines.append("    " + " ".join(_shell_word(c) for c in cmd) + ' > "$engine.log" 2>&1 || '
                     '{ echo "trtexec failed on $label: see $engine.log" >&2; exit 1; }')  # fmt: skip
    if len(majors) > 1:
        lines.append("fi")
    lines += ['  mv "$engine.partial" "$engine" && rm -f "$engine.log"', "done"]
    return lines


def _shell_word(word: str) -> str:
    """A command word for bash: ``$TRTEXEC`` as it is, a flag's value holding ``$label`` or ``$engine``
    in double quotes (``--onnx="latency_table/$label.onnx"``), anything else quoted as needed."""
    if word == "$TRTEXEC":
        return word
    if "$" in word:
        flag, _, value = word.partition("=")
        return f'{flag}="{value}"'
    return shlex.quote(word)


def _range_test(profile) -> str:
    """A Python one-liner exiting 0 when the version in argv[1] meets the target's TensorRT range."""
    alternatives = " or ".join(
        "(" + " and ".join(f"v {op} {list((*want, 0, 0, 0)[:3])}" for op, want in clauses) + ")"
        for clauses in profile.tensorrt_alternatives()
    )
    return ("import re, sys; v = [int(p) for p in re.findall(r'\\d+', sys.argv[1])[:3]]; v += [0] * (3 - len(v)); "
            f"sys.exit(0 if {alternatives or 'True'} else 1)")  # fmt: skip


def _engine_list(graphs: dict[str, Any], strongly_typed: bool) -> list[tuple[str, str, str]]:
    """``(label, ONNX, engine)`` of every engine, in the order the board times them (dense first)."""
    fp16 = strongly_typed and graphs["fp16"]
    out = [("dense", "dense.fp16.onnx" if fp16 else "dense.onnx", "dense.engine"),
           ("pruned", "model.fp16.onnx" if fp16 else "model.onnx", "model.engine")]  # fmt: skip
    if graphs["int8"]:
        out.append(
            ("pruned-int8", "model.int8.fp16.onnx" if fp16 else "model.int8.onnx", "model.int8.engine")
        )
    # The sweep's candidates run in the target's float precision (_float_precision: no Q/DQ graph).
    out += [
        (label, f"{label}.fp16.onnx" if fp16 else f"{label}.onnx", f"{label}.engine")
        for label in graphs.get("sweep", ())  # build_script takes graphs without a sweep too
    ]
    return out


def _record(profile, graphs: dict[str, Any]) -> dict[str, Any]:
    from rmtdeploy import __version__

    return {"target": profile.name, "board": profile.description, "precision": profile.precision,
            "dla": profile.dla, "tensorrt": profile.tensorrt, "jetpack": profile.jetpack,
            "batch": graphs["shape"][0], "input_shape": graphs["shape"], "models": graphs["models"],
            "engines": [[label, engine] for label, _, engine in _engine_list(graphs, strongly_typed=False)],
            "sweep": [graphs["models"][label]["keep_macs"] for label in graphs["sweep"]],
            "int8": graphs["int8"], "fp16_onnx": graphs["fp16"], "rmtdeploy": __version__,
            **({"latency_table": {k: v for k, v in graphs["table"].items() if k != "labels"}}
               if graphs.get("table") else {})}  # fmt: skip


def readme(profile, record: dict[str, Any]) -> str:
    models = ", ".join(record["models"])
    sweep = record.get("sweep") or []
    curve = (f"""
The sweep (keep {", ".join(f"{k:g}" for k in sweep)}) is timed in the same interleaved run: `rmtdeploy bench
--import` draws the measured curve, and `rmtdeploy compress --latency-budget MS --device-results bench.json`
picks the keep ratio from it. Every engine is loaded at once: on an 8 GB board, sweep fewer ratios if
memory runs out.
""" if sweep else "")  # fmt: skip
    table = record.get("latency_table")
    table_text = (f"""
**Latency table** (`{TABLE_DIR}/`: {table["graphs"]} graphs in {table["groups"]} groups, {table["precision"]}, static
batch 1). `bash build_engine.sh` builds their engines after the others, one trtexec run each: each
takes about as long as `dense.engine`, so expect roughly {table["model_graphs"]} times the dense build. Interrupted, it resumes: a built engine
is skipped. `bash build_engine.sh --latency-table` builds only the table's. Then `python3 bench_on_device.py --runs 200 --latency-table`
times the usual engines and then the table's, group by group (one group in memory at a time), and puts
every sample in `bench.json`; `rmtdeploy bench --import bench.json --out results/` writes
`results/latency_table.json`, which `rmtdeploy prune --latency-table` and `compress --latency-table` read.
""" if table else "")  # fmt: skip
    return f"""# rmtdeploy bundle for {profile.name}

{profile.description}. Engines: {models}; input {record["input_shape"]} ({profile.precision}{", DLA" if profile.dla else ""}).

On the board (JetPack {profile.jetpack or "?"}, TensorRT {profile.tensorrt or "?"}):

    sudo nvpmodel -m 0 && sudo jetson_clocks     # optional: the highest power mode, clocks pinned (recorded)
    bash build_engine.sh                           # trtexec for this TensorRT (10: --fp16/--int8 flags; 11: strongly typed)
    python3 bench_on_device.py --runs 200          # every engine, interleaved; writes bench.json

Back on your machine:

    rmtdeploy bench --import bench.json --out results/

{curve}{table_text}
`model.onnx` carries what an app needs in its metadata (input size, mean/std, labels): see rmtdeploy's
docs/export.md. `bench_on_device.py` needs only Python and TensorRT (CUDA through ctypes).
"""
