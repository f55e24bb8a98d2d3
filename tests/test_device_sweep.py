"""Device sweeps: a bundle's candidates at several keep ratios, timed together on the board, come back as a
measured curve that a latency budget picks its keep ratio from.

End to end here, with ONNX Runtime playing the board: the bundle's own ``build_engine.sh`` runs against a
stand-in trtexec, the bundle's own ``bench_on_device.py`` binds and times the engines through the TensorRT
stand-in (``tests/tensorrt_api/standin.py``, checked against the real bindings) whose executions run each
candidate's ONNX graph on ONNX Runtime, and the ``bench.json`` it writes is imported and picked from.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorrt_api import standin

import rmtdeploy
from rmtdeploy.benchmark.curve import DeviceCurve, pick_keep, read_curve
from rmtdeploy.bundle.stage import make_bundle
from rmtdeploy.cli import main
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.models import ModelSource
from rmtdeploy.preprocessing import InputConfig

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SWEEP = [0.3, 0.5, 0.7]
SIZE = 96  # small enough to time quickly, large enough that latency follows the MACs


def _dense() -> ModelSource:
    return ModelSource("resnet18", "random", num_classes=10, input=InputConfig(input_size=(3, SIZE, SIZE)))


def _curve(medians: dict[float, float], spread: float = 0.05) -> DeviceCurve:
    points = [{"label": "dense" if keep == 1.0 else f"keep-{keep:g}", "keep_macs": keep, "macs_kept": keep,
               "median_ms": ms, "p10_ms": ms * (1 - spread), "p90_ms": ms * (1 + spread), "speedup": medians[1.0] / ms,
               "speedup_p10": medians[1.0] / ms * 0.98, "speedup_p90": medians[1.0] / ms * 1.02}
              for keep, ms in sorted(medians.items())]  # fmt: skip
    return DeviceCurve("board.json", "Jetson Orin Nano", "jetson-orin-nano", 1_000_000, points)


# -- picking a keep ratio from a measured curve ----------------------------------------------------------
def test_the_pick_interpolates_between_the_two_measured_points_around_the_budget():
    curve = _curve({0.3: 2.0, 0.5: 3.0, 0.7: 4.0, 1.0: 6.0})
    pick = pick_keep(curve, 3.5)
    assert pick["keep_macs"] == 0.6 and pick["interpolated"] and pick["between"] == ["keep-0.5", "keep-0.7"]
    assert pick["judged_ms"] == pytest.approx(3.5) and pick["inversions"] == []
    rounded_down = pick_keep(curve, 3.333)  # 0.5666...: never rounded up past the budget
    assert rounded_down["keep_macs"] == 0.566 and rounded_down["judged_ms"] <= 3.333


def test_a_pick_on_a_measured_point_or_above_dense_needs_no_confirmation():
    curve = _curve({0.3: 2.0, 0.5: 3.0, 0.7: 4.0, 1.0: 6.0})
    exact = pick_keep(curve, 3.0)
    assert exact["keep_macs"] == 0.5 and not exact["interpolated"] and exact["between"] is None
    dense = pick_keep(curve, 7.0)
    assert dense["keep_macs"] == 1.0 and not dense["interpolated"]


def test_a_curve_that_is_not_monotone_is_named_and_the_pick_meets_the_budget_where_measured():
    # keep 0.5 ran slower than keep 0.7 (a GPU's kernel choice, or noise): the largest measured keep within the
    # budget (0.7) and the segment above it decide; the inversion is said, not smoothed away.
    curve = _curve({0.3: 2.0, 0.5: 3.6, 0.7: 3.2, 0.9: 5.0, 1.0: 6.0})
    pick = pick_keep(curve, 3.4)
    assert pick["inversions"] == ["keep 0.5 ran 3.600 ms, slower than keep 0.7 at 3.200 ms"]
    assert 0.7 < pick["keep_macs"] < 0.9 and pick["between"] == ["keep-0.7", "keep-0.9"]
    assert pick["judged_ms"] <= 3.4


def test_a_budget_below_the_fastest_point_names_the_closest():
    with pytest.raises(RmtdeployError, match=r"below the sweep's fastest point on Jetson Orin Nano: the closest "
                                             r"is keep 0.3 at 2.000 ms \(p10–p90 1.900–2.100\)"):  # fmt: skip
        pick_keep(_curve({0.3: 2.0, 0.5: 3.0, 1.0: 6.0}), 1.5)


def test_a_file_with_too_few_points_for_a_curve_is_one_clear_line(tmp_path):
    one = {"format": "rmtdeploy-bench", "models": {"dense": {"macs": 10}, "keep-0.5": {"keep_macs": 0.5, "macs": 5}},
           "conditions": {"interleave": True}, "samples_ms": {"dense": [2.0, 2.1], "keep-0.5": [1.1, 1.2]}}  # fmt: skip
    (tmp_path / "one.json").write_text(json.dumps(one))
    with pytest.raises(RmtdeployError, match=r"too few points for a measured curve: 1 swept model\(s\) \(keep "
                                             r"0.5\), at least 2 needed") as error:  # fmt: skip
        read_curve(tmp_path / "one.json")
    assert "\n" not in str(error.value)


# -- the protocol, end to end with ONNX Runtime playing the board ------------------------------------------
@pytest.fixture(scope="module")
def sweep_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    rmtdeploy.prune(_dense(), root / "pruned", keep_macs=0.5, strategy="hybrid", target="jetson")
    run = make_bundle(
        root / "pruned", root / "bundle", target="jetson-orin-nano", sweep=[0.7, 0.3, 0.5], model=_dense()
    )
    return root, run


def _fake_tensorrt_tools(folder: Path, version: str) -> dict[str, str]:
    """A trtexec that writes the ONNX file's name as the engine, and a `tensorrt` module for the version check."""
    trtexec = folder / "trtexec"
    trtexec.write_text('#!/usr/bin/env bash\nfor a in "$@"; do case "$a" in --onnx=*) onnx="${a#--onnx=}";; '
                       '--saveEngine=*) engine="${a#--saveEngine=}";; esac; done\nprintf %s "$onnx" > "$engine"\n'
                       'echo "$@" >> trtexec.log\n')  # fmt: skip
    trtexec.chmod(0o755)
    (folder / "tensorrt").mkdir()
    (folder / "tensorrt" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    return {**os.environ, "TRTEXEC": str(trtexec), "PYTHONPATH": str(folder)}


def _ort_runtime(bundle: Path) -> standin.Runtime:
    """TensorRT's runtime as the board would give it, each engine running its ONNX graph on ONNX Runtime."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    engines = {}
    for engine_file in bundle.glob("*.engine"):
        graph = engine_file.read_bytes()
        session = ort.InferenceSession(
            str(bundle / graph.decode()), options, providers=["CPUExecutionProvider"]
        )
        image = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE), dtype=np.float32)
        engine = standin.ICudaEngine(input_shape=(1, 3, SIZE, SIZE), classes=10)
        engine._work = lambda session=session, image=image: session.run(None, {"input": image})
        engines[graph] = engine
    return standin.Runtime(engines)


@pytest.fixture(scope="module")
def board_results(sweep_bundle, tmp_path_factory):
    """The bundle built by its own build_engine.sh and timed by its own bench_on_device.py, ONNX Runtime
    playing the board: the bench.json the board sends back."""
    root, _ = sweep_bundle
    bundle = root / "bundle"
    env = _fake_tensorrt_tools(tmp_path_factory.mktemp("tools"), "10.3.0")
    subprocess.run(["bash", str(bundle / "build_engine.sh")], check=True, env=env, capture_output=True)
    spec = importlib.util.spec_from_file_location("bench_on_device_sweep", bundle / "bench_on_device.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runtime, cudart, facts = _ort_runtime(bundle), standin.Cudart(), script.board_facts
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", standin.Module)
        patch.setattr(standin.Module, "Runtime", lambda logger: runtime)
        patch.setattr(script, "find_cudart", lambda: cudart)
        patch.setattr(script, "board_facts", lambda v: {**facts(v), "board": "ONNX Runtime playing a Jetson"})
        assert script.main(["--runs", "12", "--warmup", "2"]) == 0
    assert cudart._live == {} and cudart._streams == set()
    return bundle / "bench.json"


def test_a_sweep_is_built_timed_on_the_board_and_comes_back_as_a_measured_curve(
    sweep_bundle, board_results, tmp_path
):
    root, run = sweep_bundle
    bundle = root / "bundle"
    record = json.loads((bundle / "bundle.json").read_text())
    labels = ["keep-0.3", "keep-0.5", "keep-0.7"]
    assert record["sweep"] == SWEEP and [e[0] for e in record["engines"]] == ["dense", "pruned", *labels]
    for label, keep in zip(labels, SWEEP, strict=True):
        assert record["models"][label]["keep_macs"] == keep
        assert record["models"][label]["macs"] / record["models"]["dense"]["macs"] == pytest.approx(
            keep, abs=0.03
        )
    # The candidate at the pruned folder's own keep ratio is that model: same strategy, rules and spectra.
    assert record["models"]["keep-0.5"]["macs"] == record["models"]["pruned"]["macs"]
    # The bundle's build script built every engine (TensorRT 10 on an Orin Nano), its script timed them all.
    assert sorted(p.name for p in bundle.glob("*.engine")) == sorted(e[1] for e in record["engines"])
    assert (bundle / "keep-0.3.engine").read_text() == "keep-0.3.onnx"
    sent = json.loads(board_results.read_text())
    assert (
        list(sent["samples_ms"]) == ["dense", "pruned", *labels]
        and sent["conditions"]["target"] == "jetson-orin-nano"
    )

    # Back here: the curve, with its spread, in bench.json, bench.md and curve.png.
    assert main(["bench", "--import", str(board_results), "--out", str(tmp_path / "imported")]) == 0
    imported = json.loads((tmp_path / "imported" / "bench.json").read_text())
    curve = imported["curve"]
    assert [p["keep_macs"] for p in curve] == [*SWEEP, 1.0]
    assert all(
        p["p10_ms"] <= p["median_ms"] <= p["p90_ms"] and p["speedup_p10"] <= p["speedup_p90"] for p in curve
    )
    assert curve[0]["median_ms"] < curve[-1]["median_ms"]  # keep 0.3 is faster than dense
    assert "Measured curve" in (tmp_path / "imported" / "bench.md").read_text()
    assert (tmp_path / "imported" / "curve.png").stat().st_size > 1000

    # A budget between keep 0.3 and dense picks a keep ratio measured on the board.
    device = read_curve(board_results)
    assert device.device == "ONNX Runtime playing a Jetson"
    budget = (curve[0]["median_ms"] + curve[-1]["median_ms"]) / 2
    pick = pick_keep(device, budget)
    assert 0.3 <= pick["keep_macs"] < 1.0 and pick["judged_ms"] <= budget


def test_a_pick_from_a_device_curve_is_reported_as_measured_there_with_its_confirming_point():
    from rmtdeploy.pipeline.budget import budget_from_curve
    from rmtdeploy.report.budget import budget_blocks, budget_figure, budget_label

    said = []
    search = budget_from_curve(
        _curve({0.3: 2.0, 0.5: 3.6, 0.7: 3.2, 0.9: 5.0, 1.0: 6.0}), 3.4, status=said.append
    )
    budget = json.loads(json.dumps(search.to_dict()))  # as budget.json holds it
    assert budget["keep_macs"] == search.keep_macs and budget["reference"] is None
    assert (
        budget["how"].startswith("measured on Jetson Orin Nano")
        and "interpolated between the measured keep-0.7 and keep-0.9" in budget["how"]
    )
    assert "not monotone" in said[0] and "keep 0.5 ran 3.600 ms" in budget["how"]
    assert (
        budget_label({"latency_budget_ms": 3.4}, budget)
        == "latency budget 3.4 ms, measured on Jetson Orin Nano (its sweep)"
    )
    blocks = budget_blocks(budget, bundled=True)
    text = " ".join(str(b) for b in blocks)
    assert (
        "Latency budget: measured on Jetson Orin Nano" in text
        and "To confirm (one point between the measured keep-0.7 and keep-0.9)" in text
    )
    assert "estimate" not in text
    import matplotlib.pyplot as plt

    figure = budget_figure(budget)
    assert figure is not None and budget_figure({"budget_ms": 1.0, "trials": []}) is None
    plt.close(figure)


@pytest.mark.slow
def test_compress_picks_the_keep_ratio_from_the_device_curve_and_says_where_it_was_measured(
    board_results, tmp_path
):
    device = read_curve(board_results)
    dense_ms = device.points[-1]["median_ms"]
    budget = round((device.points[0]["median_ms"] + dense_ms) / 2, 4)
    expected = pick_keep(device, budget)
    out = tmp_path / "run"
    run = rmtdeploy.compress(
        out, model="resnet18", weights="random", num_classes=10, input={"size": SIZE}, target="jetson-orin-nano",
        latency_budget_ms=budget, device_results=str(board_results), finetune={"epochs": 0},
        export={"int8": False, "parity_images": 8}, bench={"runs": 3, "warmup": 1, "threads": 1},
    )  # fmt: skip
    search = json.loads((out / "budget.json").read_text())
    assert search["keep_macs"] == expected["keep_macs"] and search["measured"]["device"] == device.device
    assert search["how"].startswith(
        "measured on ONNX Runtime playing a Jetson: the bundle's sweep timed there"
    )
    assert run.stages["prune"].summary["macs"]["kept"] == pytest.approx(expected["keep_macs"], abs=0.03)
    report = (out / "report.md").read_text()
    assert (
        "Latency budget: measured on ONNX Runtime playing a Jetson" in report
        and "estimate" not in report.lower()
    )
    assert "report-plots/budget_curve.png" in report
    assert "met at keep-macs" in report.split("## Overview")[0]  # the headline says where: the board
    assert "measured on ONNX Runtime playing a Jetson" in report.split("## Overview")[0]
    # The run's bundle holds the pick: timed on the board, it is the confirming point.
    bundled = json.loads((out / "bundle" / "bundle.json").read_text())["models"]["pruned"]["macs"]
    assert bundled == run.stages["prune"].summary["macs"]["pruned"]
    assert ("To confirm (one point between the measured" in report) == expected["interpolated"]


def test_every_candidate_of_a_sweep_gets_a_build_line_for_each_tensorrt_version():
    from rmtdeploy.bundle.stage import build_script
    from rmtdeploy.targets import load_target

    graphs = {
        "shape": [1, 3, 224, 224],
        "static": True,
        "int8": True,
        "fp16": True,
        "sweep": ["keep-0.3", "keep-0.6"],
    }
    script = build_script(load_target("jetson-agx-orin"), graphs)
    eleven, ten = script.split('if [ "${TRT%%.*}" -ge 11 ]; then')[1].split("\nelse\n")
    for label in graphs["sweep"]:
        assert f"--onnx={label}.fp16.onnx --saveEngine={label}.engine" in eleven  # strongly typed: fp16 graph
        assert (
            f"--onnx={label}.onnx --saveEngine={label}.engine" in ten
            and "--int8" not in ten.split(label)[1].split("\n")[0]
        )
