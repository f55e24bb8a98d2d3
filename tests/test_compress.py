"""``rmtdeploy compress``: recipes, the run folder (manifest, resume, lock, force), latency budgets, the
report, and bad input as one line. The end-to-end case trains a ResNet-18 on scikit-learn's digits for one
epoch at 16×16 (seconds), so every stage runs on real data in the suite."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from rmtdeploy.cli import main
from rmtdeploy.engine import installed_tensorrt
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pipeline import compress, list_recipes, resolve_recipe
from rmtdeploy.pipeline.run_folder import read_run

QUICK = {
    "model": "resnet18",
    "weights": "trained",
    "target": "cpu-ort",
    "keep_macs": 0.5,
    "finetune": {"epochs": 1, "bn_images": 128},
    "export": {"int8": True, "parity_images": 64, "calibration_images": 64},
    "bench": {"runs": 5, "warmup": 2, "threads": 1},
    "train": {"dataset": "digits", "image_size": 16, "epochs": 1},
}


@pytest.fixture(autouse=True)
def _trained_cache(tmp_path_factory, monkeypatch):
    import rmtdeploy.finetuning.scratch as scratch

    monkeypatch.setattr(scratch, "CACHE", tmp_path_factory.getbasetemp() / "trained-cache")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One finished end-to-end run (module-scoped: the slow part of this file, done once)."""
    import rmtdeploy.finetuning.scratch as scratch

    saved = scratch.CACHE
    scratch.CACHE = tmp_path_factory.getbasetemp() / "trained-cache"
    try:
        out = tmp_path_factory.mktemp("compress") / "run"
        run = compress(out, recipe=QUICK)
    finally:
        scratch.CACHE = saved
    return out, run


# -- recipes -----------------------------------------------------------------------------------------
def test_every_shipped_recipe_resolves_and_covers_the_six_families_and_an_edge_cnn():
    import timm

    from rmtdeploy.models import model_family, resolve_model_name

    families = set()
    for name in list_recipes():
        recipe = resolve_recipe(name)
        recipe.scratch_recipe().check()
        with torch.device("meta"):
            families.add(model_family(timm.create_model(resolve_model_name(recipe.model))))
    # mobilenetv3: no family adapter, the generic one (verified before it is accepted).
    assert families == {"vit", "deit", "swin", "convnext", "hiera", "resnet", "mobilenetv3"}


@pytest.mark.parametrize(
    ("recipe", "phrase"),
    [
        ({"model": "resnet18", "keep": 0.5}, "unknown key 'keep'; allowed: model, weights"),
        ({"model": "resnet18", "finetune": {"epoch": 2}}, "unknown key 'finetune.epoch'; allowed: epochs"),
        ({"model": "resnet18", "keep_macs": 1.5}, "keep_macs must be a fraction in (0, 1]"),
        ({"model": "resnet18", "keep_macs": 0.5, "latency_budget_ms": 3}, "give one budget"),
        ({"model": "resnet18", "export": {"int8": "maybe"}}, "export.int8 must be one of auto"),
        ({"model": "resnet18", "finetune": {"lr": -1}}, "finetune.lr must be"),
        ({"model": "resnet18", "bench": {"runs": 0}}, "bench.runs must be a positive integer"),
        (
            {"model": "resnet18", "weights": "trained", "train": {"dataset": "cifar"}},
            "not a built-in dataset",
        ),
        ({"keep_macs": 0.5}, "no model"),
    ],
)
def test_recipe_validation_names_the_bad_key(recipe, phrase):
    with pytest.raises(RmtdeployError, match=None) as caught:
        resolve_recipe(recipe)
    assert phrase in str(caught.value)


def test_recipe_file_errors_and_command_line_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(RmtdeployError, match="not valid YAML"):
        resolve_recipe(bad)
    with pytest.raises(RmtdeployError, match="Did you mean swin_t-jetson"):
        resolve_recipe("swin_t-jetsn")
    recipe = resolve_recipe(
        "swin_t-jetson", {"latency_budget_ms": 9.0, "finetune.epochs": 1, "target": "cpu-ort"}
    )
    assert recipe.budget == {"latency_budget_ms": 9.0} and recipe.keep_macs is None
    assert recipe.finetune_epochs == 1 and recipe.finetune["lr"] == 1e-4 and recipe.target == "cpu-ort"


# -- the end-to-end run --------------------------------------------------------------------------------
def test_compress_runs_every_stage_on_real_data(quick_run):
    out, run = quick_run
    manifest = read_run(out)
    status = {s["name"]: s["status"] for s in manifest["stages"]}
    assert status == {
        "load": "done", "evaluate": "done", "analyze": "done", "budget": "not-run", "prune": "done",
        "finetune": "done", "export": "done", "engine": "not-run", "bench": "done", "bundle": "not-run",
        "report": "done",
    }  # fmt: skip
    for name in ("analysis", "pruned", "finetuned", "model.onnx", "model.int8.onnx", "bench", "report.md",
                 "report.html", "recipe.yaml"):  # fmt: skip
        assert (out / name).exists(), name
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["prune"]["summary"]["macs"]["kept"] == pytest.approx(0.5, abs=0.03)
    assert stages["load"]["summary"]["weights"] == "trained:digits"
    top1 = stages["finetune"]["summary"]["top1"]
    assert top1["best"] >= top1["start"]  # the default recipe never ends below its start
    assert manifest["versions"]["torch"] and manifest["machine"]["cpu"]
    assert all(s["fingerprint"] for s in manifest["stages"] if s["status"] == "done")
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["rmtdeploy.weights"].startswith("trained:digits") and meta["rmtdeploy.finetuned"]
    report = (out / "report.md").read_text()
    for phrase in ("Accuracy (top-1 %)", "pruned + fine-tuned", "exported INT8", "speedup ÷ MAC reduction",
                   "rmtdeploy compress --recipe", "TensorRT"):  # fmt: skip
        assert phrase in report or phrase == "TensorRT", phrase
    assert "not measured" not in report.split("## Accuracy")[1].split("## ONNX")[0]
    # no strategy in the recipe: the prune stage's default, named with its reason
    assert "| strategy | data-rmt: the default for the resnet family with the run's data" in report
    html = (out / "report.html").read_text()
    assert html.count("<img id='plot-") == 4 and "http" not in html.split("<body>")[1].replace("https://", "")


def test_resume_reuses_finished_stages_and_reruns_changed_ones(quick_run, tmp_path):
    out, _ = quick_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    again = compress(copy, recipe=QUICK, resume=True)
    status = {name: record.status for name, record in again.stages.items()}
    assert status["prune"] == status["finetune"] == status["export"] == status["bench"] == "reused"
    assert status["load"] == "done"  # always loaded: later stages need the model in memory
    assert main(["compress", "--out", str(copy), "--resume", "--json"]) == 0  # the run's own recipe.yaml
    assert {s["status"] for s in read_run(copy)["stages"] if s["name"] not in ("load", "report")} <= {
        "reused",
        "not-run",
    }
    changed = compress(copy, recipe={**QUICK, "bench": {**QUICK["bench"], "runs": 6}}, resume=True)
    status = {name: record.status for name, record in changed.stages.items()}
    assert status["export"] == "reused" and status["bench"] == "done"


def test_a_stage_interrupted_midway_is_recorded_and_resume_finishes_the_run(quick_run, tmp_path, monkeypatch):
    import rmtdeploy.pipeline.steps as steps

    out = tmp_path / "run"
    shutil.copytree(quick_run[0], out)
    recipe = {**QUICK, "bench": {**QUICK["bench"], "runs": 7}}  # the bench stage must run again
    finish = steps.CompressSteps.bench

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(steps.CompressSteps, "bench", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compress(out, recipe=recipe, resume=True)
    manifest = read_run(out)
    assert manifest["finished"] is None
    monkeypatch.setattr(steps.CompressSteps, "bench", finish)
    finished = compress(out, recipe=recipe, resume=True)
    assert finished.stages["export"].status == "reused" and finished.stages["bench"].status == "done"
    assert read_run(out)["finished"]


def test_ctrl_c_inside_the_fine_tune_continues_from_its_checkpoint_on_resume(quick_run, tmp_path):
    import os
    import signal

    from rmtdeploy.finetuning.trainer import Reporter

    class CtrlCAtStep(Reporter):
        def __init__(self, at: int):
            self.at, self.steps, self.lines = at, 0, []

        def status(self, text):
            self.lines.append(text)

        def step(self, loss, top1):
            self.steps += 1
            if self.steps == self.at:
                os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "run"
    shutil.copytree(quick_run[0], out)
    recipe = {**QUICK, "finetune": {**QUICK["finetune"], "checkpoint_every": 5}}  # a changed fine-tune
    # Ctrl-C as a terminal delivers it: to Python's own handler. In a pytest-xdist worker an earlier test's
    # library may have left another one, and the trainer then (rightly) leaves SIGINT alone.
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt, match="continue with rmtdeploy compress --resume"):
            compress(out, recipe=recipe, resume=True, reporter=CtrlCAtStep(12))
    finally:
        signal.signal(signal.SIGINT, found)
    assert (tmp_path / "run" / "finetuned.checkpoints").is_dir()
    reporter = CtrlCAtStep(10**9)
    finished = compress(out, recipe=recipe, resume=True, reporter=reporter)
    assert "continuing the interrupted fine-tune from its checkpoint" in reporter.lines
    assert any(line.startswith("resumed at epoch 1, step 12") for line in reporter.lines), reporter.lines
    assert finished.stages["finetune"].status == "done" and finished.stages["bench"].status == "done"


def test_a_full_disk_is_one_clear_error(tmp_path, monkeypatch):
    import errno

    import rmtdeploy.pipeline.steps as steps

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(steps.CompressSteps, "analyze", full)
    with pytest.raises(RmtdeployError, match="disk is full .* --resume"):
        compress(tmp_path / "run", recipe={**QUICK, "finetune": {"epochs": 0}})


def test_report_rerenders_with_device_results(quick_run, tmp_path):
    out, _ = quick_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    bench = json.loads((copy / "bench" / "bench.json").read_text())
    bench["conditions"]["device"] = "Jetson Orin Nano (test data)"
    (tmp_path / "device.json").write_text(json.dumps(bench))
    assert (
        main(["bench", "--import", str(tmp_path / "device.json"), "--out", str(copy / "device-bench")]) == 0
    )
    assert main(["report", str(copy)]) == 0
    report = (copy / "report.md").read_text()
    assert "Measured on the device (imported)" in report
    assert "measured on the device on" in report.split("## Overview")[0]  # the headline takes the board's


def test_the_report_opens_with_its_answer(quick_run):
    out, _ = quick_run
    report = (out / "report.md").read_text()
    head = report.split("## Overview")[0]
    assert report.splitlines()[2] == "## Summary"
    manifest = {s["name"]: s.get("summary") or {} for s in read_run(out)["stages"]}
    top1 = manifest["finetune"]["top1"]
    dense = manifest["evaluate"]["dense_top1"]
    assert f"dense {dense:.1f} → pruned {top1['start']:.1f} → fine-tuned {top1['best']:.1f}" in head
    speedup = manifest["bench"]["speedups"][0]
    assert f"×{speedup['median']:.2f} (p10–p90 ×{speedup['p10']:.2f}–×{speedup['p90']:.2f})" in head
    assert "measured here on" in head and "onnxruntime, batch 1, 1 threads, 5 interleaved rounds" in head
    kept = manifest["prune"]["macs"]["kept"]
    assert f"MACs {kept:.3f}" in head and "keep-macs 0.5: met" in head and "`model.onnx`" in head
    assert "A small model" in head  # a 16-px ResNet-18: per-call overhead, said so


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------
@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--model", "swin_tt", "--weights", "random"], "Did you mean swin_t"),
        (["--model", "resnet18", "--weights", "random", "--target", "tpu"], "unknown target 'tpu'"),
        (["--model", "resnet18", "--weights", "random", "--strategy", "best"], "unknown strategy"),
        (["--model", "resnet18", "--weights", "random", "--keep-macs", "0"], "keep_macs must be a fraction"),
        (
            ["--model", "resnet18", "--weights", "random", "--keep-macs", "1.5"],
            "keep_macs must be a fraction",
        ),
        (["--model", "resnet18", "--checkpoint", "missing.pth"], "checkpoint not found"),
        (["--model", "resnet18", "--checkpoint", "CORRUPT"], "checkpoint"),
        (["--model", "resnet18", "--weights", "random", "--data", "nowhere"], "neither a built-in dataset"),
        (["--recipe", "nope"], "unknown recipe 'nope'"),
        (
            ["--model", "resnet18", "--weights", "random", "--latency-budget", "-1"],
            "latency_budget_ms must be",
        ),
        (["--model", "resnet18", "--weights", "random", "--epochs", "-1"], "finetune.epochs must be"),
        (
            ["--model", "resnet18", "--weights", "random", "--strategy", "data-rmt"],
            "strategy 'data-rmt' scores channels from calibration images: give --data",
        ),
        (
            [
                "--model",
                "resnet18",
                "--weights",
                "random",
                "--data",
                "digits",
                "--strategy",
                "data-rmt",
                "--knob",
                "fisher=labels",
            ],
            "--data gives images without them",
        ),  # fmt: skip
        (
            [
                "--model",
                "resnet18",
                "--weights",
                "random",
                "--latency-budget",
                "5",
                "--latency-reference",
                "nope.json",
            ],
            "results file not found",
        ),
        (
            ["--model", "resnet18", "--weights", "random", "--latency-reference", "nope.json"],
            "latency_reference judges a latency budget",
        ),
    ],
)
def test_bad_input_is_one_line_before_any_work(args, phrase, tmp_path, capsys):
    out = tmp_path / "run"
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    args = [str(corrupt) if a == "CORRUPT" else a for a in args]
    assert main(["compress", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and phrase in err[0] and "internal error" not in err[0], err
    assert not out.exists()


@pytest.mark.skipif(
    installed_tensorrt() is not None, reason="TensorRT is installed here: a TensorRT bench can run"
)
def test_a_tensorrt_bench_is_refused_before_the_run_where_tensorrt_does_not_import(tmp_path, capsys):
    recipe = tmp_path / "trt.yaml"
    recipe.write_text("model: resnet18\nweights: random\ntarget: gpu-fp16\nbench: {backend: tensorrt}\n")
    assert main(["compress", "--recipe", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT is not installed here" in err[0], err
    assert not (tmp_path / "run").exists()


def test_output_folder_rules(tmp_path, capsys, quick_run):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    assert main(["compress", "--model", "resnet18", "--weights", "random", "--out", str(user)]) == 2
    assert "not an rmtdeploy run" in capsys.readouterr().err and (user / "notes.txt").read_text() == "keep me"
    out, _ = quick_run
    assert main(["compress", "--model", "resnet18", "--weights", "random", "--out", str(out)]) == 2
    assert (
        "already holds a run; continue it with --resume or start over with --force" in capsys.readouterr().err
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    from rmtdeploy.io import locked as hold

    with hold(locked):
        code = subprocess.run([sys.executable, "-m", "rmtdeploy.cli", "compress", "--model", "resnet18", "--weights",
                               "random", "--out", str(locked)], capture_output=True, text=True)  # fmt: skip
    assert code.returncode == 2 and "being written by another rmtdeploy run" in code.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert (
        main(["compress", "--model", "resnet18", "--weights", "random", "--out", str(blocker / "run")]) == 2
    )
    assert "not a directory" in capsys.readouterr().err.lower()


def test_a_model_that_cannot_train_at_the_recipes_size_is_one_clear_error(tmp_path, capsys):
    code = main(
        ["compress", "--model", "vit_small_patch16_224", "--weights", "trained", "--out", str(tmp_path / "r")]
    )
    assert code == 2
    assert "does not run at 32×32" in capsys.readouterr().err.strip().splitlines()[-1]


def test_data_with_other_classes_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["compress", "--model", "resnet18", "--weights", "random", "--data", "digits", "--out", str(out)]
    )
    assert code == 2
    assert "predicts 1000 classes but data digits has 10" in capsys.readouterr().err
    assert not out.exists()  # failed before anything worth resuming: no run folder left to --force away


def test_impossible_latency_budget_names_the_closest_latency(tmp_path):
    with pytest.raises(
        RmtdeployError, match=r"below what the smallest allowed model reaches: [\d.]+ ms at keep-macs 0.2"
    ):
        compress(tmp_path / "run", recipe={**QUICK, "keep_macs": None, "latency_budget_ms": 0.001,
                                           "finetune": {"epochs": 0}})  # fmt: skip
    manifest = read_run(tmp_path / "run")
    assert {s["name"]: s["status"] for s in manifest["stages"]}["budget"] == "failed"


def _system_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_the_html_report_opens_in_a_headless_browser_without_errors(quick_run):
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[browser]')"
    )
    browser_path = _system_browser()
    if browser_path is None:
        pytest.skip("no Chromium or Chrome on this machine (Debian: apt-get install chromium)")
    out, _ = quick_run
    problems, requests = [], []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page()
        page.on(
            "console", lambda message: message.type in ("error", "warning") and problems.append(message.text)
        )
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto((out / "report.html").resolve().as_uri(), wait_until="load")
        images = page.evaluate(
            "[...document.images].map(i => [i.id, i.complete && i.naturalWidth > 0 && i.naturalHeight > 0])"
        )
        headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        browser.close()
    assert not problems, problems
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # nothing remote
    assert dict(images) == {
        f"plot-{name}": True for name in ("widths", "accuracy_latency", "latency", "spectra")
    }
    assert {"Overview", "Accuracy (top-1 %)", "Latency", "Stages", "Reproduce and deploy"} <= set(headings)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["swin_t-jetson", "vit_t-jetson", "deit_s_dist-gpu", "convnext_a-jetson",
                                    "hiera_t-jetson-nx", "resnet18-cpu"])  # fmt: skip
def test_every_family_compresses_with_random_weights(recipe, tmp_path):
    """Structure and latency for one model of each family at its full size (make test-slow)."""
    out = tmp_path / "run"
    run = compress(out, recipe=recipe, weights="random", bench={"runs": 5, "warmup": 1, "threads": 1})
    status = {name: record.status for name, record in run.stages.items()}
    assert status["prune"] == status["export"] == status["bench"] == status["report"] == "done"
    assert status["finetune"] == status["evaluate"] == "not-run"
    assert status["bundle"] == ("done" if run.recipe.target.startswith("jetson") else "not-run")
    assert run.stages["prune"].summary["macs"]["kept"] == pytest.approx(0.5, abs=0.03)
    assert "untrained: accuracy means nothing" in (out / "report.md").read_text()


def test_the_budget_bisection_returns_the_largest_keep_that_meets_the_budget():
    """The search logic against a known latency curve (no measurement): latency = 10 ms × keep."""
    from rmtdeploy.pipeline.budget import MIN_KEEP, BudgetSearch, _bisect

    def trial(keep, say):
        return {"keep_macs": keep, "judged_ms": 10 * keep, "met": 10 * keep <= 6.0}

    search = BudgetSearch(budget_ms=6.0, keep_macs=1.0, dense_ms=10.0)
    low = trial(MIN_KEEP, None)
    keep = _bisect(trial, search, low, lambda text: None)
    assert 0.57 <= keep <= 0.6 and 10 * keep <= 6.0
    assert len(search.trials) <= 6 and all(t["met"] == (t["keep_macs"] <= 0.6) for t in search.trials)


@pytest.mark.slow
def test_latency_budget_judged_on_device_results_picks_a_keep_that_meets_it(quick_run, tmp_path):
    """A 'device' twice as slow as this machine (the run's own bench.json with doubled samples): the search
    prunes until the device's dense latency ÷ the speedup measured here fits the budget."""
    out, _ = quick_run
    device = json.loads((out / "bench" / "bench.json").read_text())
    device["samples_ms"] = {label: [2 * v for v in values] for label, values in device["samples_ms"].items()}
    reference = tmp_path / "device.json"
    reference.write_text(json.dumps(device))
    dense_device_ms = sorted(device["samples_ms"]["dense"])[len(device["samples_ms"]["dense"]) // 2]
    budget = round(0.75 * dense_device_ms, 3)
    run = compress(tmp_path / "run", recipe={**QUICK, "keep_macs": None, "latency_budget_ms": budget,
                                             "latency_reference": str(reference), "finetune": {"epochs": 0},
                                             "export": {"int8": False, "parity_images": 16}})  # fmt: skip
    search = json.loads((tmp_path / "run" / "budget.json").read_text())
    chosen = [t for t in search["trials"] if t["keep_macs"] == search["keep_macs"]][0]
    assert chosen["met"] and chosen["judged_ms"] <= budget and search["keep_macs"] < 1
    assert (
        search["reference"]["file"] == str(reference) and "estimate to confirm on the device" in search["how"]
    )
    assert run.stages["prune"].summary["macs"]["kept"] == pytest.approx(search["keep_macs"], abs=0.03)
    assert "Latency budget search" in (tmp_path / "run" / "report.md").read_text()


def test_a_recipe_without_a_strategy_takes_the_familys_default_with_its_data():
    """The budget search and the prune stage pick the same strategy: by family with data (docs/strategies.md)."""
    from types import SimpleNamespace

    from rmtdeploy.pipeline.steps import CompressSteps

    recipe = resolve_recipe("swin_t-jetson")
    assert recipe.strategy is None and resolve_recipe("vit_t-jetson").strategy == "hybrid"

    def chosen(family, data, strategy=None, knobs=None):
        steps = object.__new__(CompressSteps)  # only what the choice reads
        steps.recipe = SimpleNamespace(
            strategy=strategy, knobs=knobs or {}, latency_aware=False, latency_table=None
        )
        steps.checked = SimpleNamespace(data=data, strategy=SimpleNamespace(name="hybrid"))
        steps.loaded = SimpleNamespace(family=family)
        return steps._strategy().name

    assert [chosen("swin", "mnist5k"), chosen("convnext", "mnist5k"), chosen("vit", "mnist5k")] == [
        "data-rmt", "data-rmt", "hybrid"
    ]  # fmt: skip
    assert chosen("swin", None) == "hybrid"  # no data: the data-free default
    assert chosen("swin", "mnist5k", strategy="hybrid") == "hybrid"  # named: obeyed
    assert chosen("swin", "mnist5k", knobs={"alpha": 1}) == "hybrid"  # knobs: the checked strategy's
