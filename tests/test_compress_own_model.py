"""A user's own fine-tuned timm model through ``compress`` and the stages that take a model: its class
count from the checkpoint's head, its input size and preprocessing from timm's config beside it (or flags,
or the recipe), carried into every output; disagreements are one line before any work."""

from __future__ import annotations

import json

import pytest
import torch
from own_model import CLASS_NAMES, IMAGE_SIZE, MEAN, STD, train_own_checkpoint, write_digits_folder

import rmtdeploy
from rmtdeploy.cli import main
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.exporting.metadata import read_metadata
from rmtdeploy.models import ModelSource
from rmtdeploy.preprocessing import InputConfig, parse_input_size

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """(the ImageFolder of 7 named digit classes, a ResNet-18 checkpoint trained on it at 40×40)."""
    root = tmp_path_factory.mktemp("own")
    folder = write_digits_folder(root / "photos")
    return folder, train_own_checkpoint(folder, root / "train")


def test_the_users_command_runs_end_to_end_with_the_models_classes_size_and_labels(own, tmp_path, capsys):
    folder, checkpoint = own
    out = tmp_path / "run"
    code = main(["compress", "--model", "resnet18", "--weights", "checkpoint", "--checkpoint", str(checkpoint),
                 "--data", str(folder), "--target", "jetson", "--out", str(out), "--epochs", "1", "--int8", "off",
                 "--runs", "3", "--threads", "1", "--json"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    run = json.loads(capsys.readouterr().out)
    status = {stage["name"]: stage["status"] for stage in run["stages"]}
    assert all(
        status[s] == "done" for s in ("load", "evaluate", "prune", "finetune", "export", "bench", "bundle")
    )
    labels = sorted(CLASS_NAMES)  # ImageFolder order: the class folders sorted
    for onnx in (out / "model.onnx", out / "bundle" / "model.onnx"):
        meta = read_metadata(onnx)
        assert meta["input_size"] == [3, IMAGE_SIZE, IMAGE_SIZE] and meta["num_classes"] == len(CLASS_NAMES)
        assert meta["mean"] == list(MEAN) and meta["std"] == list(STD) and meta["labels"] == labels
    plan = json.loads((out / "finetuned" / "plan.json").read_text())
    assert plan["input_size"] == [3, IMAGE_SIZE, IMAGE_SIZE] and plan["data_config"]["mean"] == list(MEAN)
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert f"{IMAGE_SIZE}" in json.dumps(bench.get("input_shape") or bench.get("conditions", {}))
    report = (out / "report.md").read_text()
    assert f"3×{IMAGE_SIZE}×{IMAGE_SIZE}" in report and "config.json" in report
    assert "7 (from the checkpoint's head fc.weight)" in report and ", ".join(labels) in report


def test_the_class_count_comes_from_the_checkpoints_head_and_a_disagreement_is_one_line(own):
    _, checkpoint = own
    resolved = ModelSource("resnet18", checkpoint=checkpoint).resolve()
    assert (
        resolved.num_classes == len(CLASS_NAMES)
        and resolved.classes_from == "the checkpoint's head fc.weight"
    )
    assert resolved.input.input_size == (3, IMAGE_SIZE, IMAGE_SIZE) and resolved.input.mean == MEAN
    with pytest.raises(RmtdeployError, match="num_classes 14 disagrees with the checkpoint's head fc.weight"):
        ModelSource("resnet18", checkpoint=checkpoint, num_classes=14).resolve()
    with pytest.raises(RmtdeployError, match="says the checkpoint is a resnet18, not resnet34"):
        ModelSource("resnet34", checkpoint=checkpoint).resolve()


def test_given_values_win_over_the_saved_config_and_reach_the_model(own):
    _, checkpoint = own
    given = InputConfig.from_mapping({"size": "48", "interpolation": "bilinear"}, "the command line")
    loaded = ModelSource("resnet18", checkpoint=checkpoint, input=given).load()
    cfg = loaded.model.pretrained_cfg
    assert cfg["input_size"] == (3, 48, 48) and cfg["interpolation"] == "bilinear" and cfg["mean"] == MEAN
    assert loaded.facts["input_from"].startswith("the command line over ")


def test_an_input_size_given_twice_must_agree():
    same = InputConfig.from_mapping({"img_size": 224, "input_size": [3, 224, 224]}, "args.yaml")
    assert same.input_size == (3, 224, 224)
    with pytest.raises(RmtdeployError, match=r"args.yaml: the input size is given twice and the two differ "
                                             r"\(input_size \[3, 160, 160\], img_size 224\); give one"):  # fmt: skip
        InputConfig.from_mapping({"input_size": [3, 160, 160], "img_size": 224}, "args.yaml")


def test_timm_train_args_yaml_beside_a_checkpoint_is_read(tmp_path):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=64, depth=2)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "checkpoint-3.pth.tar")
    (tmp_path / "args.yaml").write_text(
        "model: vit_tiny_patch16_224\nnum_classes: 3\nimg_size: 64\ninput_size: null\nmean: [0.5, 0.5, 0.5]\n"
        "std: null\ncrop_pct: 0.8\ninterpolation: ''\nmodel_kwargs: {depth: 2}\n"
    )
    loaded = ModelSource("vit_t", checkpoint=tmp_path / "checkpoint-3.pth.tar").load()
    assert loaded.model.patch_embed.img_size == (64, 64) and len(loaded.model.blocks) == 2
    assert (
        loaded.model.pretrained_cfg["input_size"] == (3, 64, 64)
        and loaded.model.pretrained_cfg["crop_pct"] == 0.8
    )
    assert loaded.model.num_classes == 3


def test_a_checkpoint_trained_at_another_size_is_named_not_resampled(tmp_path):
    import timm

    torch.save(
        timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=160).state_dict(),
        tmp_path / "v.pth",
    )
    with pytest.raises(RmtdeployError, match="pos_embed follows the input size"):
        ModelSource("vit_t", checkpoint=tmp_path / "v.pth").load()
    given = InputConfig.from_mapping({"size": 160}, "flags")
    assert ModelSource(
        "vit_t", checkpoint=tmp_path / "v.pth", input=given
    ).load().model.patch_embed.img_size == (160, 160)


def test_the_stages_that_take_a_model_carry_its_size_and_preprocessing(own, tmp_path):
    _, checkpoint = own
    source = ModelSource("resnet18", checkpoint=checkpoint)
    pruned = rmtdeploy.prune(source, tmp_path / "pruned", keep_macs=0.5)
    plan = json.loads((tmp_path / "pruned" / "plan.json").read_text())
    assert plan["input_size"] == [3, IMAGE_SIZE, IMAGE_SIZE] and plan["data_config"]["std"] == list(STD)
    assert pruned.result.model.num_classes == len(CLASS_NAMES)
    for what, name in ((tmp_path / "pruned", "pruned.onnx"), (source, "dense.onnx")):
        rmtdeploy.export(what, tmp_path / name)
        meta = read_metadata(tmp_path / name)
        assert meta["input_size"] == [3, IMAGE_SIZE, IMAGE_SIZE] and meta["mean"] == list(MEAN), name


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (224, (3, 224, 224)),
        ("160x192", (3, 160, 192)),
        ([1, 28, 28], (1, 28, 28)),
        (["3", "64", "64"], (3, 64, 64)),
    ],
)
def test_input_sizes_parse_as_timm_writes_them(value, expected):
    assert parse_input_size(value) == expected


def test_bad_own_model_input_is_one_line_before_any_work(own, tmp_path, capsys):
    folder, checkpoint = own
    cases = [
        (["--model", "resnet18", "--checkpoint", str(checkpoint), "--num-classes", "14"],
         "--num-classes 14 disagrees with the checkpoint's head fc.weight (7 classes)"),
        (["--model", "resnet18", "--checkpoint", str(checkpoint), "--data", "digits"],
         "the model predicts 7 classes but data digits has 10"),
        (["--model", "resnet18", "--weights", "random", "--num-classes", "3", "--data", str(folder)],
         "the model predicts 3 classes but data"),
        (["--model", "vit_t", "--weights", "random", "--input-size", "100"],
         "cuts its input into 16×16 patches: --input-size 100×100 is not a multiple"),
        (["--model", "resnet18", "--weights", "random", "--input-size", "0"], "--input-size must be N, HxW or CxHxW"),
        (["--model", "resnet18", "--weights", "random", "--crop-pct", "1.5"], "--crop-pct must be a fraction"),
        (["--model", "resnet18", "--weights", "trained", "--input-size", "64"], "weights 'trained' builds its own"),
        (["--model", "resnet18", "--weights", "random", "--model-kwargs", "no_such_kwarg=1"],
         "cannot build resnet18 with {'no_such_kwarg': 1} (--model-kwargs)"),
    ]  # fmt: skip
    for args, phrase in cases:
        out = tmp_path / "run"
        assert main(["compress", *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and phrase in err[-1], (args, err)
        assert not out.exists()


def test_the_library_call_takes_the_same_settings_and_refuses_the_same_way(own, tmp_path):
    folder, checkpoint = own
    out = tmp_path / "run"
    with pytest.raises(RmtdeployError, match="num_classes 3 disagrees"):
        rmtdeploy.compress(out, model="resnet18", checkpoint=str(checkpoint), num_classes=3, data=str(folder))
    with pytest.raises(RmtdeployError, match="input_size 100×100 is not a multiple"):
        rmtdeploy.compress(out, model="vit_t", weights="random", input={"size": 100})
    assert not out.exists()
