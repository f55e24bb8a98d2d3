"""`rmtdeploy prune` end to end: files that rebuild the model, report, errors before any work."""

from __future__ import annotations

import json

import pytest
import torch
from cli_checks import assert_one_line_usage_error, run_rmtdeploy

import rmtdeploy
from rmtdeploy.cli import main


def test_prune_writes_a_model_that_load_pruned_rebuilds(tmp_path, capsys):
    out = tmp_path / "r18"
    args = ["prune", "--model", "resnet18", "--weights", "random", "--strategy", "rmt", "--keep-macs", "0.6"]
    assert main([*args, "--target", "gpu-int8", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["weights"] == "random" and summary["strategy"]["name"] == "rmt"
    assert abs(summary["macs"]["kept"] - 0.6) <= 0.03 * 0.6
    report = json.loads((out / "report.json").read_text())
    assert report["round_to"] == 16  # int8 target: channel multiple 16
    changed = [layer for layer in report["layers"] if layer["pruned_width"] != layer["dense_width"]]
    assert changed and all(layer["pruned_width"] % 16 == 0 for layer in changed)
    rebuilt = rmtdeploy.load_pruned(out)
    assert rebuilt.pruned_macs == summary["macs"]["pruned"]
    with torch.no_grad():
        assert rebuilt.model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_prune_refuses_to_overwrite_and_knobs_reach_the_strategy(tmp_path, capsys):
    out = tmp_path / "dyn"
    args = [
        "prune",
        "--model",
        "resnet18",
        "--weights",
        "random",
        "--strategy",
        "dynamic",
        "--keep-macs",
        "0.7",
    ]
    assert main([*args, "--knob", "steps=2", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["strategy"]["knobs"]["steps"] == 2
    before = (out / "plan.json").read_bytes()
    assert main([*args, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "plan.json").read_bytes() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strategy", "lottery", "--keep-macs", "0.5"], "unknown strategy 'lottery'"),
        (["--keep-macs", "0"], "must lie in (0, 1]"),
        (["--keep-macs", "1.2"], "must lie in (0, 1]"),
        (["--keep-params", "-1"], "must lie in (0, 1]"),
        (["--keep-macs", "0.5", "--target", "mars"], "unknown target 'mars'"),
        (["--keep-macs", "0.5", "--knob", "steps"], "KEY=VALUE"),
        (["--keep-macs", "0.001"], "cannot reach keep_macs=0.001"),
    ],
)
def test_bad_prune_input_is_one_line_exit_2_and_writes_nothing(tmp_path, extra, message):
    out = tmp_path / "o"
    result = run_rmtdeploy("prune", "--model", "resnet18", "--weights", "random", *extra, "--out", str(out))
    assert_one_line_usage_error(result, message)
    assert not out.exists()


def test_calibration_folder_recalibrates_batchnorm_statistics(tmp_path, capsys):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(4):
            pixels = (torch.rand(40, 48, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    common = [
        "prune",
        "--model",
        "resnet18",
        "--weights",
        "random",
        "--strategy",
        "magnitude",
        "--keep-macs",
        "0.6",
    ]
    assert main([*common, "--out", str(tmp_path / "plain"), "--json"]) == 0
    calibration = ["--calibration", str(tmp_path / "images"), "--calibration-images", "6"]
    assert main([*common, *calibration, "--out", str(tmp_path / "calibrated"), "--json"]) == 0
    capsys.readouterr()
    plain, calibrated = (
        rmtdeploy.load_pruned(tmp_path / "plain"),
        rmtdeploy.load_pruned(tmp_path / "calibrated"),
    )
    assert calibrated.plan["calibrated"] is True and plain.plan["calibrated"] is False
    assert calibrated.plan["operations"] == plain.plan["operations"]  # same channels, new statistics only
    # A fresh timm BatchNorm has mean 0 / var 1; statistics measured on real inputs are neither.
    assert torch.equal(plain.model.bn1.running_mean, torch.zeros_like(plain.model.bn1.running_mean))
    assert not torch.allclose(calibrated.model.bn1.running_mean, plain.model.bn1.running_mean)


def test_calibration_folder_that_is_not_an_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_rmtdeploy(
        "prune", "--model", "resnet18", "--weights", "random", "--keep-macs", "0.6",
        "--calibration", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert_one_line_usage_error(result, "is not an ImageFolder")
    assert not (tmp_path / "o").exists()
