"""The bundle stage: ``make_bundle(pruned_dir, out, target="jetson-orin-nano") -> BundleRun``.

The folder holds: ``model.onnx`` (the pruned model, the target's graph form and static shape, verified),
``dense.onnx`` (the dense architecture, random weights: the on-device speedup's baseline),
``model.int8.onnx`` when asked (Q/DQ, :mod:`rmtdeploy.exporting.int8`), ``model.fp16.onnx`` where the
target accepts TensorRT 11 (strongly typed: the precision must be in the graph), ``build_engine.sh``,
``bench_on_device.py``, ``bundle.json`` and ``README.md``, written as one unit.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

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
    force: bool = False,
    status=None,
) -> BundleRun:
    """Write the Jetson bundle of the pruned (or fine-tuned) folder ``pruned`` for ``target``."""
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
    say = status or (lambda text: None)
    with OutputFolder(out, BUNDLE_FILES, force=force, stage="bundle") as folder:
        graphs = _graphs(folder, Path(pruned), profile, int8, data, calibration_images, say)
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
    from rmtdeploy.benchmark.stage import load_dense_and_pruned
    from rmtdeploy.exporting import export_onnx
    from rmtdeploy.exporting.stage import export

    say(f"exporting {pruned} for {profile.name}")
    run = export(pruned, folder.path("model.onnx"), target=profile.name, data=data, int8=int8,
                 calibration_images=images, force=True)  # fmt: skip
    dense, _, plan = load_dense_and_pruned(pruned)
    say("exporting the dense architecture (the on-device baseline)")
    export_onnx(dense, folder.path("dense.onnx"), target=profile.name, overwrite=True)
    graphs = {
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
    if (
        profile.precision == "fp16"
        and not profile.accepts_tensorrt("10.99")
        or profile.accepts_tensorrt("11.0")
    ):
        graphs["fp16"] = _fp16_copy(folder, ("model", "dense"))
    return graphs


def _fp16_copy(folder: OutputFolder, stems: tuple[str, ...]) -> bool:
    """fp16 graphs (fp32 inputs and outputs kept) for TensorRT 11's strongly typed builds."""
    from rmtdeploy.exporting.graph import fp16_copy

    for stem in stems:
        fp16_copy(folder.path(f"{stem}.onnx"), folder.path(f"{stem}.fp16.onnx"))
    return True


def build_script(profile, graphs: dict[str, Any]) -> str:
    """``build_engine.sh``: picks the TensorRT major version on the board, then trtexec per graph."""
    lines = ["#!/usr/bin/env bash", f"# Builds the engines of this bundle for {profile.name} ({profile.description}).",
             "# Written by rmtdeploy bundle; layer info goes to <engine>.layers.json.", "set -euo pipefail",
             'cd "$(dirname "$0")"', 'TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}',
             "TRT=$(python3 -c 'import tensorrt; print(tensorrt.__version__)')",
             'echo "TensorRT $TRT on $(tr -d "\\0" < /proc/device-tree/model 2>/dev/null || uname -m)"',
             'if [ "${TRT%%.*}" -ge 11 ]; then']  # fmt: skip
    for major in ("11", "10"):
        if major == "10":
            lines.append("else")
        if major == "11" and not profile.accepts_tensorrt("11.0"):
            lines += [f'  echo "{profile.name} wants TensorRT {profile.tensorrt} (JetPack {profile.jetpack}); this board has $TRT" >&2',
                      "  exit 1"]  # fmt: skip
            continue
        for label, onnx, engine in _engine_list(graphs, strongly_typed=major == "11"):
            precision = (
                "int8"
                if label == "pruned-int8"
                else profile.precision
                if profile.precision != "int8"
                else "fp16"
            )
            settings = build_settings(f"{major}.0", precision, dla=profile.dla, qdq=label == "pruned-int8")
            cmd = trtexec_command(settings, onnx, engine, input_name=INPUT_NAME, shape=tuple(graphs["shape"]),
                                  max_batch=profile.max_batch, static=graphs["static"],
                                  workspace_mib=profile.workspace_mib, timing_cache="timing.cache")  # fmt: skip
            cmd = ["$TRTEXEC", *cmd[1:]]
            cmd[-1] = f"--exportLayerInfo={engine}.layers.json"
            lines.append("  " + " ".join(c if c.startswith("$") else shlex.quote(c) for c in cmd))
    lines += ["fi", 'echo "engines built; next: python3 bench_on_device.py"', ""]
    return "\n".join(lines)


def _engine_list(graphs: dict[str, Any], strongly_typed: bool) -> list[tuple[str, str, str]]:
    fp16 = strongly_typed and graphs["fp16"]
    out = [("dense", "dense.fp16.onnx" if fp16 else "dense.onnx", "dense.engine"),
           ("pruned", "model.fp16.onnx" if fp16 else "model.onnx", "model.engine")]  # fmt: skip
    if graphs["int8"]:
        out.append(("pruned-int8", "model.int8.onnx", "model.int8.engine"))
    return out


def _record(profile, graphs: dict[str, Any]) -> dict[str, Any]:
    from rmtdeploy import __version__

    return {"target": profile.name, "board": profile.description, "precision": profile.precision,
            "dla": profile.dla, "tensorrt": profile.tensorrt, "jetpack": profile.jetpack,
            "batch": graphs["shape"][0], "input_shape": graphs["shape"], "models": graphs["models"],
            "int8": graphs["int8"], "fp16_onnx": graphs["fp16"], "rmtdeploy": __version__}  # fmt: skip


def readme(profile, record: dict[str, Any]) -> str:
    models = ", ".join(record["models"])
    return f"""# rmtdeploy bundle for {profile.name}

{profile.description}. Engines: {models}; input {record["input_shape"]} ({profile.precision}{", DLA" if profile.dla else ""}).

On the board (JetPack {profile.jetpack or "?"}, TensorRT {profile.tensorrt or "?"}):

    sudo nvpmodel -m 0 && sudo jetson_clocks     # optional: the highest power mode, clocks pinned (recorded)
    bash build_engine.sh                           # trtexec for this TensorRT (10: --fp16/--int8 flags; 11: strongly typed)
    python3 bench_on_device.py --runs 200          # dense vs pruned interleaved; writes bench.json

Back on your machine:

    rmtdeploy bench --import bench.json --out results/

`model.onnx` carries what an app needs in its metadata (input size, mean/std, labels): see rmtdeploy's
docs/export.md. `bench_on_device.py` needs only Python and TensorRT (CUDA through ctypes).
"""
