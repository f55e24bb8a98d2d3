"""`rmtdeploy analyze` end to end: files, labels, refusal to overwrite, one-line errors."""

from __future__ import annotations

import csv
import json

import pytest

from rmtdeploy.cli import main

REQUIRED_FIELDS = {"name", "shape", "gamma", "sigma2", "edge", "spikes", "ser", "alpha", "ks", "status"}


@pytest.mark.parametrize(
    "model",
    [
        "vit_tiny_patch16_224",
        # Full-size transformers at 224 px: the slowest cases of the suite; the small case of the matrix
        # (ViT, ConvNeXt, ResNet) runs every time, these in `make test-slow`.
        pytest.param("deit_tiny_distilled_patch16_224", marks=pytest.mark.slow),
        pytest.param("swin_tiny_patch4_window7_224", marks=pytest.mark.slow),
        "convnext_atto",
        pytest.param("hiera_tiny_224", marks=pytest.mark.slow),
        "resnet18",
    ],
)
def test_analyze_writes_labelled_records_for_every_family(tmp_path, model, capsys):
    out = tmp_path / "run"
    assert (
        main(["analyze", "--model", model, "--weights", "random", "--out", str(out), "--no-plots", "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    records = json.loads((out / "spectra.json").read_text())
    assert len(records) == summary["layers"] >= 10
    for record in records:
        assert REQUIRED_FIELDS <= record.keys()
        assert record["weights"] == "random" and record["model"] == model
    fitted = [r for r in records if r["status"] == "ok"]
    assert sum(r["spikes"] == 0 for r in fitted) >= 0.9 * len(fitted)  # random weights: a null model
    with (out / "spectra.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(records)


def test_analyze_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "analyze",
        "--model",
        "resnet18",
        "--weights",
        "random",
        "--out",
        str(out),
        "--no-plots",
        "--json",
    ]
    assert main(args) == 0
    before = (out / "spectra.json").read_text()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "spectra.json").read_text() == before
    assert main([*args, "--force"]) == 0
