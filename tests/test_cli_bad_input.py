"""Bad and edge inputs through the real CLI: exit 2, one clear line, nothing written, nothing lost.

Every stage's command joins this matrix. A case is (command line, a phrase the one line must hold); each
runs in-process through ``rmtdeploy.cli.main`` (the subprocess path is pinned once, below), with
``--out`` pointing at a folder that must not appear and a neighbouring earlier result that must stay
byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_usage_error, run_rmtdeploy

import rmtdeploy
from rmtdeploy.cli import main

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RANDOM_RESNET = ["--model", "resnet18", "--weights", "random"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs the cases refer to by name: checkpoints, image folders, a plain file."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "empty.pth").write_bytes(b"")
    (root / "text.pth").write_text("not a checkpoint")
    torch.save({"epoch": 3}, root / "no_tensors.pth")
    (root / "a_file").write_text("x")
    import timm

    with torch.device("meta"):  # only the shapes matter: the head's width is what is checked
        head = timm.create_model("resnet18", num_classes=14).fc
    torch.save(
        {"fc.weight": torch.zeros(head.weight.shape), "fc.bias": torch.zeros(14)}, root / "r18_14cls.pth"
    )
    (root / "empty_folder").mkdir()
    samples = {"dense": [2.0, 2.1, 2.2], "pruned": [1.0, 1.1, 1.2]}
    (root / "bench.json").write_text(json.dumps({"format": "rmtdeploy-bench", "samples_ms": samples}))
    (root / "no_images" / "cat").mkdir(parents=True)
    broken = root / "broken_images" / "cat"
    broken.mkdir(parents=True)
    _png(broken / "good.png")
    (broken / "zz_not_an_image.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    truncated = root / "truncated_images" / "cat"
    truncated.mkdir(parents=True)
    _png(truncated / "whole.png")
    data = _png(truncated / "zz_cut.png").read_bytes()
    (truncated / "zz_cut.png").write_bytes(data[: len(data) // 2])
    return root


def _png(path: Path) -> Path:
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(40, 40, 3, generator=generator) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


ANALYZE_CASES = [
    (["--model", "nosuchnet", "--weights", "random"], "unknown model 'nosuchnet'"),
    (["--model", "swin_tt", "--weights", "random"], "Did you mean swin_t"),
    (["--model", "resnt18", "--weights", "random"], "Did you mean resnet18"),
    (["--model", "resnet_18", "--weights", "random"], "resnet18"),
    (["--model", "resnet18", "--checkpoint", "{inputs}/missing.pth"], "checkpoint not found"),
    (["--model", "resnet18", "--checkpoint", "{inputs}/empty.pth"], "is empty"),
    (["--model", "resnet18", "--checkpoint", "{inputs}/text.pth"], "cannot read checkpoint"),
    (["--model", "resnet18", "--checkpoint", "{inputs}/no_tensors.pth"], "does not hold a state dict"),
    (["--model", "resnet18", "--checkpoint", "{inputs}/a_file"], "cannot read checkpoint"),
    ([*RANDOM_RESNET, "--checkpoint", "{inputs}/text.pth"], "--weights 'random' conflicts with a checkpoint"),
    (["--model", "resnet18", "--weights", "checkpoint"], "needs a checkpoint file (--checkpoint)"),
    ([*RANDOM_RESNET, "--num-classes", "-3"], "--num-classes must be a positive integer"),
    ([*RANDOM_RESNET, "--num-classes", "0"], "--num-classes must be a positive integer"),
    ([*RANDOM_RESNET, "--num-classes", "x"], "invalid int value"),
    ([*RANDOM_RESNET, "--sigma-method", "mean"], "invalid choice: 'mean'"),
    (["--weights", "random"], "the following arguments are required: --model"),
    (["--model", "resnet18", "--checkpoint", "{inputs}/r18_14cls.pth", "--num-classes", "10"],
     "--num-classes 10 disagrees with the checkpoint's head fc.weight (14 classes)"),
    (["--model", "vit_t", "--weights", "random", "--input-size", "100"],
     "cuts its input into 16×16 patches: --input-size 100×100 is not a multiple"),
    (["--model", "vit_t", "--weights", "random", "--input-size", "3", "64", "64", "1"], "--input-size must be N, HxW or CxHxW"),
    ([*RANDOM_RESNET, "--interpolation", "cubic"], "invalid choice: 'cubic'"),
    ([*RANDOM_RESNET, "--std", "0", "1", "1"], "--std must be > 0 per channel"),
    ([*RANDOM_RESNET, "--model-kwargs", "depth"], "--model-kwargs expects KEY=VALUE"),
]  # fmt: skip

PRUNE_CASES = [
    ([*RANDOM_RESNET], "one of the arguments --keep-macs --keep-params --latency-budget-ms is required"),
    ([*RANDOM_RESNET, "--keep-macs", "0"], "--keep-macs must lie in (0, 1]"),
    ([*RANDOM_RESNET, "--keep-macs", "1.2"], "--keep-macs must lie in (0, 1]"),
    ([*RANDOM_RESNET, "--keep-params", "-1"], "--keep-params must lie in (0, 1]"),
    ([*RANDOM_RESNET, "--keep-macs", "nan"], "--keep-macs must lie in (0, 1]"),
    ([*RANDOM_RESNET, "--keep-macs", "half"], "invalid float value"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--keep-params", "0.5"], "not allowed with"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "lottery"], "unknown strategy 'lottery'"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--target", "mars"], "unknown target 'mars'"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--target", "{inputs}/no.yaml"], "target file not found"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--knob", "steps"], "--knob expects KEY=VALUE"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "dynamic", "--knob", "steps=abc"], "steps"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "dynamic", "--knob", "steps=0"], "steps"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "dynamic", "--knob", "history=1"], "no knob history"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "dynamic", "--knob", "then=dynamic"], "then"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "magnitude", "--knob", "p=abc"], "p"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "rmt", "--knob", "tracy_widom_level=2"], "tracy_widom_level"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "rmt", "--knob", "allocation=greedy"], "allocation"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "hybrid", "--knob", "colour=red"], "no knob colour"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "data-rmt"], "strategy 'data-rmt' scores channels from calibration images: give --calibration"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "data-rmt", "--knob", "rank_tolerance=2"], "rank_tolerance"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "data-rmt", "--knob", "centred=maybe"], "centred"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "data-rmt", "--knob", "fisher=hessian"], "fisher"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "data-rmt", "--knob", "fisher=labels", "--calibration", "{inputs}/broken_images"], "--calibration gives images without them"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--round-to", "0"], "--round-to must be a positive integer"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--round-to", "-8"], "--round-to must be a positive integer"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--min-channels", "0"], "--min-channels must be a positive integer"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--head-rounding", "round"], "invalid choice: 'round'"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--finetune-steps", "2"], "--finetune-steps applies to strategies"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "dynamic", "--finetune-steps", "-1"], "must be an integer >= 0"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--strategy", "dynamic", "--finetune-steps", "2"], "needs calibration images"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--calibration", "{inputs}/missing"], "data directory not found"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--calibration", "{inputs}/a_file"], "is a file"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--calibration", "{inputs}/empty_folder"], "holds no class folders"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--calibration", "{inputs}/no_images"], "holds no images"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--calibration", "{inputs}/broken_images"], "zz_not_an_image.png"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--calibration", "{inputs}/truncated_images"], "zz_cut.png"),
    ([*RANDOM_RESNET, "--keep-macs", "0.5", "--calibration", "{inputs}/broken_images", "--calibration-images", "0"], "--calibration-images must be a positive integer"),
    ([*RANDOM_RESNET, "--keep-macs", "0.001"], "cannot reach keep_macs=0.001"),
    (["--model", "skresnet18", "--weights", "random", "--keep-macs", "0.5"], "skresnet18"),
    (["--model", "vit_small_r26_s32_224", "--weights", "random", "--keep-macs", "0.5"], "hybrid"),
]  # fmt: skip

OUT_CASES = [
    ("{inputs}/a_file", "exists and is not a directory"),
    ("{inputs}/a_file/sub", "cannot create the output folder"),
    ("/proc/rmtdeploy-test/out", "cannot create the output folder"),
]


def _expand(args: list[str], inputs: Path) -> list[str]:
    return [arg.replace("{inputs}", str(inputs)) for arg in args]


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def earlier_result(tmp_path):
    """A folder holding an earlier run's output, beside where each case writes: it must stay as it was."""
    folder = tmp_path / "earlier"
    folder.mkdir()
    (folder / "report.json").write_text('{"kept": true}\n')
    return folder


def _assert_refused(capsys, code: int, phrase: str, out: Path, earlier: Path, before: dict) -> None:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and phrase in lines[0], err
    assert "internal error" not in err and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no staging, no lock
    assert _snapshot(earlier) == before


@pytest.mark.parametrize(("args", "phrase"), ANALYZE_CASES)
def test_bad_analyze_input(tmp_path, files, earlier_result, capsys, args, phrase):
    out, before = tmp_path / "out", _snapshot(earlier_result)
    code = main(["analyze", *_expand(args, files), "--no-plots", "--out", str(out)])
    _assert_refused(capsys, code, phrase, out, earlier_result, before)


@pytest.mark.parametrize(("args", "phrase"), PRUNE_CASES)
def test_bad_prune_input(tmp_path, files, earlier_result, capsys, args, phrase):
    out, before = tmp_path / "out", _snapshot(earlier_result)
    code = main(["prune", *_expand(args, files), "--out", str(out)])
    _assert_refused(capsys, code, phrase, out, earlier_result, before)


@pytest.mark.parametrize(("out", "phrase"), OUT_CASES)
def test_unusable_output_folder_is_found_before_the_model_loads(files, capsys, monkeypatch, out, phrase):
    import rmtdeploy.models

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(rmtdeploy.models, "load_model", never)
    code = main(["prune", *RANDOM_RESNET, "--keep-macs", "0.5", "--out", _expand([out], files)[0]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and phrase in err, err


def test_a_bad_run_with_force_leaves_the_earlier_result_whole(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["prune", *RANDOM_RESNET, "--strategy", "magnitude", "--keep-macs", "0.7", "--out", str(out)])
        == 0
    )
    before = _snapshot(out)
    args = ["prune", *RANDOM_RESNET, "--keep-macs", "0.001", "--force", "--out", str(out)]
    assert main(args) == 2  # fails after the model loaded: the budget cannot be met
    assert _snapshot(out) == before
    assert "cannot reach" in capsys.readouterr().err
    rmtdeploy.load_pruned(out)


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, capsys):
    from rmtdeploy.io import OutputFolder

    out = tmp_path / "busy"
    with OutputFolder(out, ("plan.json",), force=False, stage="prune"):
        code = main(["prune", *RANDOM_RESNET, "--keep-macs", "0.5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "is being written by another rmtdeploy run" in err, err
    assert not out.exists()


def test_existing_outputs_need_force(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["prune", *RANDOM_RESNET, "--strategy", "magnitude", "--keep-macs", "0.7", "--out", str(out)]
    assert main(args) == 0
    before = _snapshot(out)
    assert main(args) == 2
    assert "allow overwriting (--force)" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_the_installed_entry_point_prints_one_line_too(tmp_path):
    result = run_rmtdeploy("prune", *RANDOM_RESNET, "--keep-macs", "2", "--out", str(tmp_path / "o"))
    assert_one_line_usage_error(result, "--keep-macs must lie in (0, 1]")


LOAD_CASES = [
    ("missing", "pruned-model directory not found"),
    ("no_plan", "no plan.json"),
    ("plan_without_key", "lacks the field(s) operations"),
    ("truncated_weights", "model.safetensors changed after its run wrote it"),
    ("weights_of_another_run", "weights from another run"),
    ("interrupted", "did not finish"),
]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    args = ["prune", *RANDOM_RESNET, "--strategy", "magnitude", "--keep-macs", "0.7", "--out", str(out)]
    assert main(args) == 0
    return out


def _break(kind: str, run: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    if kind == "no_plan":
        (run / "plan.json").unlink()
    elif kind == "plan_without_key":
        plan = json.loads((run / "plan.json").read_text())
        del plan["operations"]
        (run / "plan.json").write_text(json.dumps(plan))
    elif kind == "truncated_weights":
        data = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "weights_of_another_run":
        # Equal shapes, other values: what a copy from another run of the same plan looks like.
        state = load_file(str(run / "model.safetensors"))
        state["fc.bias"] = state["fc.bias"] + 1
        save_file(state, str(run / "model.safetensors"))
        manifest = json.loads((run / "manifest.json").read_text())  # even with the manifest made to agree
        manifest["files"]["model.safetensors"] = hashlib.sha256(
            (run / "model.safetensors").read_bytes()
        ).hexdigest()
        (run / "manifest.json").write_text(json.dumps(manifest))
    elif kind == "interrupted":
        (run / "manifest.json").unlink()
    elif kind == "missing":
        shutil.rmtree(run)


@pytest.mark.parametrize(("kind", "phrase"), LOAD_CASES)
def test_load_pruned_names_what_is_wrong(tmp_path, pruned_run, kind, phrase):
    import shutil

    from rmtdeploy.errors import RmtdeployError

    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    _break(kind, run)
    with pytest.raises(RmtdeployError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        rmtdeploy.load_pruned(run)


# -- output folders: one rule for every stage (rmtdeploy.io.check_output_dir) ----------------------------

# Each command that writes a folder, with inputs good enough that only --out is wrong.
STAGE_COMMANDS = [
    ("analyze", ["analyze", *RANDOM_RESNET, "--no-plots"]),
    ("prune", ["prune", *RANDOM_RESNET, "--keep-macs", "0.5"]),
    ("finetune", ["finetune", "--pruned", "{pruned}", "--data", "digits", "--epochs", "1"]),
    ("bench", ["bench", "--pruned", "{pruned}", "--runs", "3", "--warmup", "1", "--threads", "1"]),
    ("bench", ["bench", "--import", "{inputs}/bench.json"]),
    ("bundle", ["bundle", "--pruned", "{pruned}", "--target", "jetson-orin-nano"]),
    ("engine", ["engine", "--onnx", "{inputs}/a_file", "--target", "gpu-fp16"]),
]
STAGE_IDS = ["analyze", "prune", "finetune", "bench", "bench-import", "bundle", "engine"]


def _stage_args(args: list[str], inputs: Path, pruned: Path) -> list[str]:
    return [arg.replace("{pruned}", str(pruned)) for arg in _expand(args, inputs)]


@pytest.fixture
def models_never_load(monkeypatch):
    import rmtdeploy.models
    import rmtdeploy.pruning.plan

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(rmtdeploy.models, "load_model", never)
    monkeypatch.setattr(rmtdeploy.pruning.plan, "load_pruned", never)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize(("stage", "args"), STAGE_COMMANDS, ids=STAGE_IDS)
def test_a_folder_of_the_users_own_files_is_refused_by_every_stage(
    tmp_path, files, pruned_run, models_never_load, capsys, stage, args, force
):
    """Until this rule, bundle, finetune and prune wrote their outputs in among the user's files (exit 0)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own\n")
    code = main([*_stage_args(args, files, pruned_run), *(["--force"] if force else []), "--out", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert (
        f"{out} holds files that are not an rmtdeploy output (notes.txt); --force replaces only an rmtdeploy "
        "output, never files of your own: choose another output folder" in lines[0]
    ), err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (
        out / "notes.txt"
    ).read_text() == "the user's own\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging, no lock, no checkpoints


@pytest.mark.parametrize(
    ("stage", "args"),
    [c for c in STAGE_COMMANDS if c[0] != "prune"],
    ids=[i for i in STAGE_IDS if i != "prune"],
)
def test_force_never_replaces_another_stages_output(
    tmp_path, files, pruned_run, models_never_load, capsys, stage, args
):
    """``bench --pruned P --out P --force`` used to delete the pruned model it had just timed."""
    import shutil

    out = tmp_path / "pruned"
    shutil.copytree(pruned_run, out)
    before = _snapshot(out)
    code = main([*_stage_args(args, files, pruned_run), "--force", "--out", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert (
        f"{out} holds the output of the prune stage (manifest.json, model.safetensors, plan.json and 1 more); "
        f"--force replaces only a folder the {stage} stage wrote: choose another output folder" in lines[0]
    ), err
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


# -- device sweeps: the bundle's sweep and a budget picked from a device's measured curve -----------------------
def _curve_file(path: Path, dense_macs: int, target: str = "jetson-orin-nano") -> str:
    """A device's bench.json holding a sweep: dense at 6 ms, keep 0.3/0.5/0.7 at 2/3/4 ms."""
    medians = {"dense": 6.0, "keep-0.3": 2.0, "keep-0.5": 3.0, "keep-0.7": 4.0}
    models = {"dense": {"macs": dense_macs}, **{label: {"keep_macs": float(label[5:]), "macs": int(dense_macs * float(label[5:]))}
                                                for label in medians if label != "dense"}}  # fmt: skip
    path.write_text(json.dumps({
        "format": "rmtdeploy-bench", "models": models, "samples_ms": {k: [0.95 * v, v, 1.05 * v] for k, v in medians.items()},
        "conditions": {"backend": "tensorrt", "interleave": True, "board": "NVIDIA Jetson Orin Nano", "target": target},
    }))  # fmt: skip
    return str(path)


def _board_table_file(path: Path, plan, groups) -> str:
    """A board's bench.json carrying a latency table's record (bench_on_device.py --latency-table)."""
    path.write_text(json.dumps({
        "format": "rmtdeploy-bench", "samples_ms": {"dense": [2.0, 2.1], "pruned": [1.0, 1.1]},
        "conditions": {"backend": "tensorrt", "interleave": True},
        "latency_table": {"plan": plan, "precision": "fp16", "runs": 2, "warmup": 1, "groups": groups},
    }))  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def device_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    plan = {"format": "rmtdeploy-latency-table-plan", "version": 1, "graphs": {"dense": "dense.onnx"},
            "groups": [{"labels": ["dense"], "reference": "dense"}]}  # fmt: skip
    return {"curve": _curve_file(root / "curve.json", 1_800_000_000),
            "other_model": _curve_file(root / "other.json", 123_000_000),
            "agx": _curve_file(root / "agx.json", 1_800_000_000, target="jetson-agx-orin"),
            "table_untimed": _board_table_file(root / "untimed.json", plan, []),
            "table_no_plan": _board_table_file(root / "no_plan.json", {"format": "rmtdeploy-bench"}, []),
            "table_no_reference": _board_table_file(root / "no_reference.json", {**plan, "groups": [{"labels": ["dense"]}]}, []),
            "table_bad_samples": _board_table_file(root / "bad_samples.json", plan, [
                {"labels": ["dense"], "reference": "dense", "samples_ms": {"dense": [1.0, -2.0]}}])}  # fmt: skip


SWEEP_BUNDLE = ["bundle", "--pruned", "{pruned}", "--target", "jetson"]
# --json: no progress lines (a case refused after the model loaded still prints one line only)
DEVICE_BUDGET = ["compress", "--json", *RANDOM_RESNET, "--target", "jetson", "--latency-budget"]
DEVICE_CASES = [
    ([*SWEEP_BUNDLE, "--sweep", "0.3,1.5", *RANDOM_RESNET], "--sweep ratios must lie in (0, 1], got 1.5"),
    ([*SWEEP_BUNDLE, "--sweep", "0,0.5", *RANDOM_RESNET], "--sweep ratios must lie in (0, 1], got 0.0"),
    ([*SWEEP_BUNDLE, "--sweep", "0.3,half", *RANDOM_RESNET], "--sweep takes comma-separated keep ratios"),
    ([*SWEEP_BUNDLE, "--sweep", "0.5,0.5", *RANDOM_RESNET], "--sweep names a keep ratio twice"),
    ([*SWEEP_BUNDLE, "--sweep", "0.3,0.5"], "a sweep prunes its candidates from the dense model"),
    ([*SWEEP_BUNDLE, *RANDOM_RESNET], "--model is the dense model a sweep's candidates are pruned from"),
    ([*SWEEP_BUNDLE, "--sweep", "0.5", "--model", "resnet34", "--weights", "random"],
     "--model names resnet34, but {pruned} was pruned from resnet18"),
    (["compress", *RANDOM_RESNET, "--sweep", "0.3,1.5"], "bundle.sweep ratios must lie in (0, 1], got 1.5"),
    (["compress", *RANDOM_RESNET, "--target", "cpu-ort", "--sweep", "0.5"], "bundle.sweep adds candidates to the Jetson bundle"),
    (["compress", *RANDOM_RESNET, "--device-results", "{curve}"], "device_results picks the keep ratio for a latency budget"),
    ([*DEVICE_BUDGET, "5", "--device-results", "{other_model}"],
     "was measured on a dense model of 0.123 GMACs; resnet18 here has 1.8"),
    ([*DEVICE_BUDGET, "1.5", "--device-results", "{curve}"],
     "below the sweep's fastest point on NVIDIA Jetson Orin Nano: the closest is keep 0.3 at 2.000 ms"),
    ([*DEVICE_BUDGET, "5", "--device-results", "{inputs}/bench.json"], "too few points for a measured curve"),
    ([*DEVICE_BUDGET, "5", "--device-results", "{agx}"], "was measured for target jetson-agx-orin"),
    ([*DEVICE_BUDGET, "5", "--device-results", "{curve}", "--latency-reference", "{curve}"], "give one device file"),
    (["bench", "--pruned", "{pruned}", "--backend", "torch", "--latency-table"],
     "--latency-table is measured here with onnxruntime; a board's comes from its bundle"),
    (["bench", "--import", "{inputs}/bench.json", "--latency-table"], "--latency-table measures; --import only renders"),
    (["bench", "--import", "{table_untimed}"], "untimed.json: its latency table is not usable: the plan has 1 group(s), the board timed 0"),
    (["bench", "--import", "{table_no_plan}"],
     "its latency table is not usable: its plan is not a latency-table plan (rmtdeploy-latency-table-plan version 1)"),
    (["bench", "--import", "{table_no_reference}"],
     "its latency table is not usable: its plan: group 1 has no reference graph among its labels"),
    (["bench", "--import", "{table_bad_samples}"],
     "its latency table is not usable: group 1: the samples of dense are not positive milliseconds"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "phrase"), DEVICE_CASES)
def test_bad_sweep_and_device_curve_input(tmp_path, files, pruned_run, device_files, earlier_result, capsys, args,
                                          phrase):  # fmt: skip
    out, before = tmp_path / "out", _snapshot(earlier_result)
    args = [a.format(**device_files) if a.startswith("{") and a[1:-1] in device_files else a for a in args]
    code = main([*_stage_args(args, files, pruned_run), "--out", str(out)])
    _assert_refused(capsys, code, phrase.replace("{pruned}", str(pruned_run)), out, earlier_result, before)


def _table_file(path: Path, model, model_name: str) -> str:
    """A latency table's JSON naming ``model``'s layers (no units: the checks before the work read the layers)."""
    from rmtdeploy.pruning.graph import layer_widths

    path.write_text(json.dumps({
        "format": "rmtdeploy-latency-table", "version": 1, "model": model_name, "input_size": [3, 224, 224],
        "round_to": 8, "dense": {"ms": 5.0, "macs": 1}, "measured": {}, "layer_widths": layer_widths(model),
        "units": {}, "layers": {},
    }))  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def table_files(tmp_path_factory):
    import timm

    root = tmp_path_factory.mktemp("tables")
    with torch.device("meta"):  # only the widths matter
        other, narrow = timm.create_model("resnet34"), timm.create_model("resnet18", num_classes=10)
    (root / "broken.json").write_text("{not json")
    return {"other_table": _table_file(root / "resnet34.json", other, "resnet34"),
            "narrow_table": _table_file(root / "resnet18_10.json", narrow, "resnet18"),
            "broken_table": str(root / "broken.json")}  # fmt: skip


PRUNE_HALF = ["prune", *RANDOM_RESNET, "--keep-macs", "0.5"]
LATENCY_TABLE_CASES = [
    ([*PRUNE_HALF, "--latency-table", "{inputs}/missing.json"], "--latency-table not found"),
    ([*PRUNE_HALF, "--latency-table", "{broken_table}"], "is not JSON"),
    ([*PRUNE_HALF, "--latency-table", "{inputs}/bench.json"], "is not a usable latency table: its format is not"),
    ([*PRUNE_HALF, "--latency-table", "{other_table}"],
     "--latency-table was measured on another model (resnet34): it names layer layer1.2.conv1, which resnet18 does not have"),
    ([*PRUNE_HALF, "--latency-table", "{narrow_table}"],
     "--latency-table was measured on another model (resnet18): dense widths differ, fc is 10 wide there and 1000 in resnet18"),
    (["prune", *RANDOM_RESNET, "--latency-budget-ms", "5"], "--latency-budget-ms is met by a latency table's prediction"),
    ([*PRUNE_HALF, "--latency-table-trust", "0.5"], "--latency-table-trust bounds a latency table's allocation"),
    ([*PRUNE_HALF, "--latency-table", "{narrow_table}", "--latency-table-trust", "2"], "--latency-table-trust must lie in [0, 1]"),
    (["prune", *RANDOM_RESNET, "--latency-budget-ms", "-5", "--latency-table", "{narrow_table}"], "--latency-budget-ms must be a time in ms > 0"),
    ([*PRUNE_HALF, "--latency-budget-ms", "5", "--latency-table", "{narrow_table}"], "not allowed with argument"),
    ([*PRUNE_HALF, "--latency-table", "{narrow_table}", "--latency-aware"], "--latency-table and latency-aware allocation"),
    ([*PRUNE_HALF, "--latency-table", "{narrow_table}", "--strategy", "dynamic"], "--latency-table describes the dense model"),
    (["compress", "--json", *RANDOM_RESNET, "--latency-table", "{other_table}"], "was measured on another model (resnet34)"),
    (["compress", *RANDOM_RESNET, "--latency-table", "{narrow_table}", "--latency-aware"], "--latency-table and latency-aware"),
    (["compress", *RANDOM_RESNET, "--latency-table", "{inputs}/missing.json"], "--latency-table not found"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "phrase"), LATENCY_TABLE_CASES)
def test_bad_latency_table_input(tmp_path, files, table_files, earlier_result, capsys, args, phrase):
    out, before = tmp_path / "out", _snapshot(earlier_result)
    args = [a.format(**table_files) if a[1:-1] in table_files else a for a in _expand(args, files)]
    code = main([*args, "--out", str(out)])
    _assert_refused(capsys, code, phrase, out, earlier_result, before)
