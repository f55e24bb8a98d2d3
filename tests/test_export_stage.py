"""The export stage (``rmtdeploy export`` / ``rmtdeploy.export``): a pruned folder or a dense model to a
verified ONNX file carrying what an app needs, parity on real images, and bad input as one line."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import rmtdeploy
from rmtdeploy.cli import main
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.exporting import deployment_metadata, read_metadata
from rmtdeploy.exporting.parity import compare
from rmtdeploy.models import ModelSource

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RESNET10 = ["--model", "resnet18", "--weights", "random", "--num-classes", "10"]


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    """resnet18 (random weights, a 10-class head like the digit sets), pruned to half its MACs."""
    out = tmp_path_factory.mktemp("runs") / "pruned"
    torch.set_num_threads(1)
    assert main(["prune", *RESNET10, "--keep-macs", "0.5", "--out", str(out)]) == 0
    return out


def test_a_pruned_folder_exports_verified_with_its_metadata_and_real_image_parity(
    tmp_path, pruned_dir, capsys
):
    out = tmp_path / "model.onnx"
    code = main(["export", "--pruned", str(pruned_dir), "--target", "cpu-ort", "--data", "digits",
                 "--parity-images", "40", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "parity on digits (40 images)" in printed and "parity on random" in printed

    meta = read_metadata(out)
    plan = json.loads((pruned_dir / "plan.json").read_text())
    assert meta["model"] == "resnet18" and meta["weights"] == "random" and meta["strategy"] == "hybrid"
    assert meta["keep_macs"] == pytest.approx(plan["macs"]["pruned"] / plan["macs"]["dense"], abs=1e-4)
    assert meta["input_size"] == [3, 224, 224] and meta["num_classes"] == 10
    assert (
        meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["interpolation"] == "bicubic"
    )  # timm resnet18.a1_in1k
    assert meta["version"] == rmtdeploy.__version__ and "labels" not in meta  # random head: no names
    random_parity, image_parity = meta["parity"]
    assert random_parity["inputs"] == "random" and image_parity["inputs"] == "digits"
    assert image_parity["images"] == 40 and image_parity["top1_agreement"] == 1.0
    assert image_parity["max_abs_diff"] < 1e-4 and image_parity["min_cosine"] > 0.9999

    # What the documented app snippet does: read the metadata from ORT itself, feed a batch of 2.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    custom = session.get_modelmeta().custom_metadata_map
    c, h, w = json.loads(custom["rmtdeploy.input_size"])
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((2, c, h, w), np.float32)})[0]
    assert logits.shape == (2, 10)


def test_a_dense_export_says_so_and_takes_labels(tmp_path):
    labels = [f"digit {i}" for i in range(10)]
    run = rmtdeploy.export(
        ModelSource("resnet18", "random", num_classes=10), tmp_path / "dense.onnx", labels=labels
    )
    meta = read_metadata(run.path)
    assert meta["strategy"] == "none" and meta["keep_macs"] == 1.0 and meta["labels"] == labels
    assert run.pruned_from is None and run.result.image_parity is None and run.result.verified


def test_fine_tune_labels_reach_the_metadata():
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    plan = {"strategy": {"name": "hybrid"}, "macs": {"dense": 100, "pruned": 50}, "budget": {"keep": 0.5},
            "finetune": [{"labels": ["cat", "dog", "owl"]}]}  # fmt: skip
    meta = deployment_metadata(model, model_name="resnet18", weights="checkpoint:x.pth", plan=plan)
    assert json.loads(meta["rmtdeploy.labels"]) == ["cat", "dog", "owl"]
    assert meta["rmtdeploy.finetuned"] == "true" and meta["rmtdeploy.keep_macs"] == "0.5"


class _Session:
    """An ONNX Runtime stand-in that returns the reference plus ``shift`` on one class of one image."""

    def __init__(self, model, shift):
        self.model, self.shift = model, shift

    def get_inputs(self):
        return [type("Input", (), {"name": "input"})()]

    def run(self, _, feeds):
        out = self.model(torch.from_numpy(feeds["input"])).detach().numpy().copy()
        out[0, 0] += self.shift
        return [out]


def test_parity_measures_agreement_and_fails_beyond_tolerance():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).eval()
    batches = [torch.randn(5, 3, 2, 2), torch.randn(3, 3, 2, 2)]
    close = compare(model, _Session(model, 1e-6), batches, inputs="test", atol=1e-3, rtol=1e-3)
    assert (
        close.images == 8
        and close.top1_agreement == 1.0
        and close.max_abs_diff == pytest.approx(1e-6, rel=0.1)
    )
    with pytest.raises(RmtdeployError, match="does not match PyTorch on test inputs"):
        compare(model, _Session(model, 10.0), batches, inputs="test", atol=1e-3, rtol=1e-3)
    loose = compare(model, _Session(model, 10.0), batches, inputs="test", atol=100, rtol=0)
    assert loose.top1_agreement == pytest.approx(
        6 / 8
    )  # the first image of each batch and loose.min_cosine < 0.99


def test_a_graph_that_drifts_on_images_is_not_written(tmp_path, monkeypatch):
    import rmtdeploy.exporting.graph as graph

    real = graph.compare

    def drift_on_images(model, session, batches, *, inputs, **tolerance):
        if inputs == "random":
            return real(model, session, batches, inputs=inputs, **tolerance)
        return real(model, _Session(model, 5.0), batches, inputs=inputs, **tolerance)

    monkeypatch.setattr(graph, "compare", drift_on_images)
    out = tmp_path / "m.onnx"
    with pytest.raises(RmtdeployError, match="does not match PyTorch on digits inputs"):
        rmtdeploy.export(
            ModelSource("resnet18", "random", num_classes=10), out, data="digits", parity_images=8
        )
    assert list(tmp_path.iterdir()) == []


# Each case: arguments after "export" (OUT = the output path, PRUNED = the pruned folder), a phrase of the
# one line. Nothing is written; an existing file stays as it was.
BAD_CASES = [
    (["--pruned", "/no/such/folder", "--out", "OUT"], "pruned-model directory not found"),
    (["--pruned", "PRUNED", "--target", "no-such-board", "--out", "OUT"], "unknown target 'no-such-board'"),
    (["--out", "OUT"], "give either --pruned DIR"),
    (["--pruned", "PRUNED", *RESNET10, "--out", "OUT"], "give either --pruned DIR"),
    (["--pruned", "PRUNED", "--weights", "random", "--out", "OUT"], "go with --model"),
    (["--model", "no_such_net", "--weights", "random", "--out", "OUT"], "unknown model 'no_such_net'"),
    (["--pruned", "PRUNED", "--data", "/no/such/images", "--out", "OUT"], "/no/such/images"),
    (["--pruned", "PRUNED", "--data", "digits", "--parity-images", "0", "--out", "OUT"], "--parity-images must be >= 1"),
    (["--pruned", "PRUNED", "--labels", "LABELS3", "--out", "OUT"], "3 labels given for a model with 10 classes"),
    (["--pruned", "PRUNED", "--labels", "/no/labels.txt", "--out", "OUT"], "cannot read labels file"),
    (["--pruned", "PRUNED", "--batch", "4", "--target", "jetson-orin-nano", "--out", "OUT"], "conflicts with target"),
    (["--model", "resnet18", "--weights", "random", "--data", "digits", "--out", "OUT"], "1000 classes but digits has 10"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "phrase"), BAD_CASES)
def test_bad_export_input_is_one_line_and_writes_nothing(tmp_path, pruned_dir, capsys, args, phrase):
    out = tmp_path / "model.onnx"
    (tmp_path / "labels3.txt").write_text("a\nb\nc\n")
    names = {"OUT": str(out), "PRUNED": str(pruned_dir), "LABELS3": str(tmp_path / "labels3.txt")}
    code = main(["export", *[names.get(a, a) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and phrase in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".model.onnx")]


def test_an_existing_file_needs_force_and_a_busy_path_is_refused(tmp_path, pruned_dir, capsys):
    from rmtdeploy.io import locked

    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier model")
    assert main(["export", "--pruned", str(pruned_dir), "--out", str(out)]) == 2
    assert (
        "already exists; pass --force" in capsys.readouterr().err and out.read_bytes() == b"an earlier model"
    )
    with locked(out):
        assert main(["export", "--pruned", str(pruned_dir), "--out", str(out), "--force"]) == 2
    assert "being written by another rmtdeploy run" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier model"
    (tmp_path / "folder.onnx").mkdir()
    assert main(["export", "--pruned", str(pruned_dir), "--out", str(tmp_path / "folder.onnx")]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_int8_is_a_qdq_graph_calibrated_on_real_images_and_checked_against_fp32(tmp_path, pruned_dir, capsys):
    import onnx

    out = tmp_path / "model.onnx"
    args = ["export", "--pruned", str(pruned_dir), "--data", "digits", "--int8", "--calibration-images", "16",
            "--parity-images", "32", "--target", "jetson", "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert (
        "INT8 Q/DQ, calibrated on 16 digits images" in printed and "top-1 on 32 digits val images" in printed
    )
    quantized = tmp_path / "model.int8.onnx"
    ops = [n.op_type for n in onnx.load(quantized).graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear") - 1
    meta = read_metadata(quantized)
    assert (
        meta["precision"] == "int8"
        and meta["model"] == "resnet18"
        and "digits, 16 images" in meta["int8_calibration"]
    )
    session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 3, 224, 224), np.float32)})[0].shape == (1, 10)
    # An existing INT8 file is someone's result too.
    assert main(args) == 2 and "model.onnx already exists" in capsys.readouterr().err
    out.unlink()
    assert (
        main(args) == 2 and "model.int8.onnx already exists" in capsys.readouterr().err and not out.exists()
    )


@pytest.mark.slow  # the INT8 path itself runs in the test above
def test_int8_without_data_calibrates_on_a_builtin_set_and_says_so(tmp_path):
    run = rmtdeploy.export(ModelSource("resnet18", "random", num_classes=10), tmp_path / "m.onnx", int8=True,
                           calibration_images=8)  # fmt: skip
    assert (
        run.int8["calibration"] == "mnist5k" and run.int8["default_calibration"] and "check" not in run.int8
    )
    assert run.int8["int8_ops"] == {"Conv": 20, "Gemm": 1} and "Add" in run.int8["float_ops"]
