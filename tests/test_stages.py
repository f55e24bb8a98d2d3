"""Stages as library calls: one call writes what the CLI writes, as one unit, the same bytes every run."""

from __future__ import annotations

import hashlib
import json

import pytest

import rmtdeploy
from rmtdeploy.cli import main
from rmtdeploy.models import ModelSource

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RANDOM_RESNET = ModelSource("resnet18", weights="random")
PRUNE_ARGS = "prune --model resnet18 --weights random --strategy magnitude --keep-macs 0.6".split()


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_prune_is_one_call_that_writes_the_same_bytes_as_the_cli(tmp_path, capsys):
    run = rmtdeploy.prune(RANDOM_RESNET, tmp_path / "library", keep_macs=0.6, strategy="magnitude")
    assert main([*PRUNE_ARGS, "--out", str(tmp_path / "cli"), "--json"]) == 0
    capsys.readouterr()
    names = ["manifest.json", "model.safetensors", "plan.json", "report.json"]
    assert sorted(p.name for p in run.files + [tmp_path / "library" / "manifest.json"]) == names
    # Identical runs write identical files: users compare runs by checksum.
    assert _digests(tmp_path / "library") == _digests(tmp_path / "cli")
    assert json.loads((tmp_path / "library" / "report.json").read_text()) == run.to_dict()
    assert run.to_dict()["macs"]["pruned"] == run.result.pruned_macs
    rebuilt = rmtdeploy.load_pruned(tmp_path / "library")
    assert (
        rebuilt.plan["weights_sha256"]
        == hashlib.sha256((tmp_path / "library" / "model.safetensors").read_bytes()).hexdigest()
    )
    assert rebuilt.plan["operations"] == run.plan["operations"]


def test_analyze_is_one_call_and_identical_runs_write_identical_files(tmp_path):
    first = rmtdeploy.analyze(RANDOM_RESNET, tmp_path / "a")
    second = rmtdeploy.analyze(RANDOM_RESNET, tmp_path / "b")
    assert first.to_dict()["layers"] == len(json.loads((tmp_path / "a" / "spectra.json").read_text()))
    pictures = {f.name for f in first.files if f.suffix == ".png"}
    assert {"summary.png", "esd_layer1.png", "esd_layer4.png", "esd_stem_and_head.png"} <= pictures
    assert all(f.stat().st_size > 10_000 for f in first.files if f.suffix == ".png")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert [f.name for f in first.files] == [f.name for f in second.files]


def test_an_interrupted_run_leaves_the_earlier_result_and_no_debris(tmp_path, monkeypatch):
    import rmtdeploy.pruning.stage as stage

    out = tmp_path / "run"
    rmtdeploy.prune(RANDOM_RESNET, out, keep_macs=0.8, strategy="magnitude")
    before = _digests(out)

    def interrupted(folder, result):
        folder.write_bytes("model.safetensors", b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "write_pruned", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rmtdeploy.prune(RANDOM_RESNET, out, keep_macs=0.6, strategy="magnitude", force=True)
    assert _digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder, no lock file left
    monkeypatch.undo()
    rerun = rmtdeploy.prune(RANDOM_RESNET, out, keep_macs=0.6, strategy="magnitude", force=True)
    assert rmtdeploy.load_pruned(out).pruned_macs == rerun.result.pruned_macs


def test_force_into_a_folder_with_other_files_keeps_them_and_drops_the_old_runs_files(tmp_path):
    from rmtdeploy.io import OutputFolder

    out = tmp_path / "run"
    with OutputFolder(out, ("old.txt",), force=False, stage="prune") as folder:
        folder.write_text("old.txt", "from an earlier run\n")
        folder.commit()
    (out / "notes.md").write_text("the user's own file\n")
    rmtdeploy.prune(RANDOM_RESNET, out, keep_macs=0.8, strategy="magnitude", force=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "model.safetensors", "notes.md", "plan.json", "report.json",
    ]  # fmt: skip
    rmtdeploy.load_pruned(out)


def test_library_errors_name_arguments_and_the_cli_names_flags(tmp_path):
    from rmtdeploy.errors import RmtdeployError

    with pytest.raises(RmtdeployError) as error:
        rmtdeploy.prune(RANDOM_RESNET, tmp_path / "o", keep_macs=0.5, finetune_steps=-1, strategy="dynamic")
    assert str(error.value).startswith("finetune_steps must be") and "--" not in str(error.value)
    assert error.value.render(lambda p: "--" + p.replace("_", "-")).startswith("--finetune-steps must be")
    assert not (tmp_path / "o").exists()
