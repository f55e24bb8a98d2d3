"""`rmtdeploy prune` end to end: files that rebuild the model, report, errors before any work."""

from __future__ import annotations

import json

import pytest
import torch

import rmtdeploy
from rmtdeploy.cli import build_parser, main
from rmtdeploy.scores import get_strategy
from rmtdeploy.scores.request import SHORT_DISTILL_STEPS, default_strategy, finetune_steps_for


def test_prune_writes_a_model_that_load_pruned_rebuilds(tmp_path, capsys):
    out = tmp_path / "r18"
    args = ["prune", "--model", "resnet18", "--weights", "random", "--strategy", "rmt", "--keep-macs", "0.6"]
    assert main([*args, "--target", "gpu-int8", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["weights"] == "random" and summary["strategy"]["name"] == "rmt"
    assert abs(summary["macs"]["kept"] - 0.6) <= 0.03 * 0.6
    report = json.loads((out / "report.json").read_text())
    assert report["round_to"] == 16  # int8 target: channel multiple 16
    assert report["head_rounding"] == "floor"
    assert report["round_to_from"] == "target: profile"
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
    assert "(--force)" in capsys.readouterr().err
    assert (out / "plan.json").read_bytes() == before


@pytest.fixture
def image_folder(tmp_path):
    """An ImageFolder of 2 classes × 4 seeded random 40×48 PNGs."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(4):
            pixels = (torch.rand(40, 48, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    return tmp_path / "images"


def test_calibration_folder_recalibrates_batchnorm_statistics(tmp_path, image_folder, capsys):
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
    calibration = ["--calibration", str(image_folder), "--calibration-images", "6"]
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


@pytest.mark.usefixtures("single_torch_thread")
def test_dynamic_with_calibration_distils_between_steps_and_saves_the_distilled_model(
    tmp_path, image_folder, capsys
):
    from rmtdeploy.data import image_folder_loader, input_batches
    from rmtdeploy.finetuning import kd_loss
    from rmtdeploy.models import load_model

    out = tmp_path / "distilled"
    # A light cut stays with magnitude scoring (no spectral fits) and 4 images keep the distillation short.
    args = [
        "prune", "--model", "resnet18", "--weights", "random", "--strategy", "dynamic", "--keep-macs", "0.85",
        "--knob", "steps=2", "--calibration", str(image_folder), "--calibration-images", "4",
        "--finetune-steps", "2", "--out", str(out), "--json",
    ]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert report["finetune_steps"] == plan["finetune_steps"] == 2
    for document in (summary, report, plan):
        records = [step["finetune"] for step in document["strategy"]["steps"]]
        assert [(r["steps"], r["images"], r["batches"]) for r in records] == [(2, 4, 1), (2, 4, 1)]
        assert all(r["loss_before"] > 0 for r in records)
    # The saved weights are the distilled ones and replay: on the calibration images, the rebuilt model's KD
    # loss to the dense teacher is the one recorded after the last fine-tune.
    rebuilt = rmtdeploy.load_pruned(out).model
    teacher = load_model("resnet18", weights="random").model
    (images,) = input_batches(image_folder_loader(image_folder, teacher, max_images=4))
    with torch.no_grad():
        loss = kd_loss(rebuilt(images), teacher(images), records[-1]["temperature"]).item()
    assert loss == pytest.approx(records[-1]["loss_after"], rel=1e-4)


@pytest.mark.parametrize(
    "strategy, steps, have_images, expected",
    [
        ("dynamic", None, True, SHORT_DISTILL_STEPS),
        ("dynamic", 0, True, 0),
        ("dynamic", None, False, 0),
        ("rmt", None, True, 0),
        ("rmt", 0, False, 0),
    ],
)
def test_a_strategy_that_takes_a_finetune_hook_distils_by_default_with_images(
    strategy, steps, have_images, expected
):
    assert finetune_steps_for(steps, get_strategy(strategy), have_images=have_images) == expected


def test_default_strategy_and_head_rounding_follow_the_accuracy_benchmark():
    # docs/strategies.md: hybrid without data; with it, data-rmt where it led on the three tasks (ConvNeXt on
    # all three, Swin and ResNet on two of three); rmt for Hiera either way; floor head rounding kept ViT heads.
    args = build_parser().parse_args(["prune", "--model", "m", "--keep-macs", "0.5", "--out", "o"])
    assert (args.strategy, args.head_rounding) == (None, "floor")
    assert {f: default_strategy(f, have_data=False) for f in ("swin", "convnext", "resnet", "hiera")} == {
        "swin": "hybrid", "convnext": "hybrid", "resnet": "hybrid", "hiera": "rmt"}  # fmt: skip
    assert default_strategy("hiera", have_data=False, knobs={"epsilon": 0.1}) == "hybrid"  # knobs: hybrid's
    with_data = {
        f: default_strategy(f, have_data=True)
        for f in ("vit", "deit", "swin", "convnext", "hiera", "resnet", "mobilenetv3")
    }
    assert with_data == {"vit": "hybrid", "deit": "hybrid", "swin": "data-rmt", "convnext": "data-rmt",
                         "hiera": "rmt", "resnet": "data-rmt", "mobilenetv3": "hybrid"}  # fmt: skip


def test_where_the_widths_are_chosen_per_unit_hieras_default_is_hybrid_and_rmt_asked_for_is_refused(
    tmp_path, capsys
):
    # rmt ranks Hiera's channels across layers (allocation=auto); a latency table or the latency-aware tilts
    # choose each unit's width, which that ranking leaves no room for.
    import timm

    from rmtdeploy.pruning.stage import family_default

    hiera = timm.create_model("hiera_tiny_224", embed_dim=48, num_heads=1, img_size=64, num_classes=10)
    loaded = type("Loaded", (), {"family": "hiera", "model": hiera})()
    assert family_default(loaded, False, {}) == "rmt"
    assert family_default(loaded, False, {}, chooses_widths=True) == "hybrid"
    assert family_default(loaded, True, {}, chooses_widths=True) == "hybrid"
    args = ["prune", "--model", "hiera_tiny_224", "--weights", "random", "--strategy", "rmt", "--keep-macs",
            "0.5", "--latency-aware", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ranks the hiera family's channels across layers" in err, err
    assert "--latency-aware chooses each unit's width: add --knob allocation=uniform" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("single_torch_thread")
def test_with_calibration_images_and_no_strategy_the_familys_default_runs_and_says_so(
    tmp_path, image_folder, capsys
):
    common = ["prune", "--model", "convnext_atto", "--weights", "random", "--keep-macs", "0.6", "--json",
              "--calibration", str(image_folder), "--calibration-images", "8"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "auto")]) == 0
    assert json.loads(capsys.readouterr().out)["strategy"]["name"] == "data-rmt"
    assert main([*common, "--strategy", "hybrid", "--out", str(tmp_path / "asked")]) == 0  # asked for: kept
    assert json.loads(capsys.readouterr().out)["strategy"]["name"] == "hybrid"
    assert main([*common[:-4], "--out", str(tmp_path / "no-data")]) == 0  # no images: the data-free default
    assert json.loads(capsys.readouterr().out)["strategy"]["name"] == "hybrid"
