"""Outputs are written atomically, with ordinary permissions, into a folder that is new, empty or the
stage's own, and never clobbered without force."""

from __future__ import annotations

import os
import stat

import pytest

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import (
    OutputFolder,
    atomic_save,
    atomic_write_text,
    check_output_dir,
    file_sha256,
    verify_output_folder,
)


def test_atomic_writes_leave_no_temporary_files_and_use_the_umask_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_save(tmp_path / "b.bin", lambda tmp: open(tmp, "wb").write(b"x"))
    finally:
        os.umask(mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")

    def broken(tmp):
        open(tmp, "wb").write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_existing_outputs_need_force_and_checking_creates_nothing(tmp_path):
    out = tmp_path / "run"
    check_output_dir(out, ["plan.json"], stage="prune")
    assert not out.exists()
    with OutputFolder(out, ["plan.json"], force=False, stage="prune") as folder:
        folder.write_text("plan.json", "{}")
        folder.commit()
    with pytest.raises(RmtdeployError, match=r"allow overwriting \(force\)"):
        check_output_dir(out, ["plan.json"], stage="prune")
    assert check_output_dir(out, ["plan.json"], force=True, stage="prune") == out


def _written_by(stage: str, out, files: dict[str, str]) -> None:
    with OutputFolder(out, list(files), force=False, stage=stage) as folder:
        for name, text in files.items():
            folder.write_text(name, text)
        folder.commit()


def test_one_rule_for_every_output_folder_new_empty_or_this_stages_own(tmp_path):
    """New, empty (dot files aside) or written by this stage (force replaces it); anything else is refused
    with one line naming the folder and what it holds, force or not, and left as it was."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"a file browser's")
    for out in (tmp_path / "new", empty):
        assert check_output_dir(out, ["bench.json"], stage="bench") == out

    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("notes.txt", "photo.png", "plan.json", "todo.md"):
        (mine / name).write_text("the user's own")
    for force in (False, True):
        with pytest.raises(RmtdeployError) as refused:
            check_output_dir(mine, ["plan.json"], force=force, stage="prune")
        assert str(refused.value) == (
            f"{mine} holds files that are not an rmtdeploy output (notes.txt, photo.png, plan.json and 1 more); "
            "force replaces only an rmtdeploy output, never files of your own: choose another output folder"
        )
        with (
            pytest.raises(RmtdeployError, match="not an rmtdeploy output"),
            OutputFolder(mine, ["plan.json"], force=force, stage="prune"),
        ):
            pass
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "photo.png", "plan.json", "todo.md"]
    assert all((mine / name).read_text() == "the user's own" for name in ("notes.txt", "plan.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine"]  # no lock, no staging left

    pruned = tmp_path / "pruned"
    _written_by("prune", pruned, {"plan.json": "{}"})
    for force in (False, True):  # another stage's output: force replaces only what this stage wrote
        with pytest.raises(RmtdeployError, match=f"{pruned} holds the output of the prune stage "
                           r"\(manifest.json, plan.json\); force replaces only a folder the bench stage wrote"):  # fmt: skip
            check_output_dir(pruned, ["bench.json"], force=force, stage="bench")
    assert check_output_dir(pruned, ["plan.json"], force=True, stage="prune") == pruned

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RmtdeployError, match="out .*/a_file exists and is not a directory"):
        check_output_dir(tmp_path / "a_file", ["plan.json"], force=True, stage="prune")


def test_a_replace_that_stopped_half_way_is_still_this_stages_folder(tmp_path):
    """The old manifest is moved aside, not deleted, while a run replaces files in place: readers refuse
    the folder, but the stage still knows it as its own, so force cleans it up, stale files included."""
    out = tmp_path / "run"
    _written_by("analyze", out, {"spectra.json": "old", "old-plot.png": "old"})
    (out / "notes.txt").write_text("the user's")
    (out / "manifest.json").rename(out / ".manifest.replaced.json")  # where a crash would leave it
    (out / "spectra.json").write_text("half new")
    with pytest.raises(RmtdeployError, match="no manifest.json"):
        verify_output_folder(out, "analyze")
    with pytest.raises(RmtdeployError, match=r"already holds spectra.json; allow overwriting \(force\)"):
        check_output_dir(out, ["spectra.json"], stage="analyze")
    with pytest.raises(RmtdeployError, match="holds the output of the analyze stage"):
        check_output_dir(out, ["bench.json"], force=True, stage="bench")  # only the stage that wrote it
    with OutputFolder(out, ["spectra.json"], force=True, stage="analyze") as folder:
        folder.write_text("spectra.json", "new")
        folder.commit()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt", "spectra.json"]
    assert verify_output_folder(out, "analyze")["files"] == {
        "spectra.json": file_sha256(out / "spectra.json")
    }


def test_a_stage_folder_with_a_sub_folder_is_hashed_verified_and_replaced_file_by_file(tmp_path):
    """A bundle's latency_table/ sub-folder: its files are in the manifest by relative path (a changed one is
    refused), a forced rerun replaces them and drops the ones it no longer writes, and a file the user (or
    the board) added there stays."""
    out = tmp_path / "bundle"
    with OutputFolder(out, ["bundle.json"], force=False, stage="bundle") as folder:
        folder.write_text("bundle.json", "{}")
        folder.path("table").mkdir()
        for name in ("plan.json", "a.onnx", "b.onnx"):
            folder.write_text(f"table/{name}", name)
        files = folder.commit()
    assert [p.name for p in files] == ["bundle.json", "table"]
    listed = verify_output_folder(out, "bundle")["files"]
    assert sorted(listed) == ["bundle.json", "table/a.onnx", "table/b.onnx", "table/plan.json"]
    (out / "table" / "a.engine").write_text("built on the board")
    (out / "table" / "b.onnx").write_text("changed")
    with pytest.raises(RmtdeployError, match=r"table/b.onnx changed after its run wrote it"):
        verify_output_folder(out, "bundle")

    with OutputFolder(out, ["bundle.json"], force=True, stage="bundle") as folder:
        folder.write_text("bundle.json", "{}")
        folder.path("table").mkdir()
        folder.write_text("table/plan.json", "new plan")
        folder.write_text("table/c.onnx", "c")
        folder.commit()
    assert sorted(p.name for p in (out / "table").iterdir()) == ["a.engine", "c.onnx", "plan.json"]
    assert (out / "table" / "plan.json").read_text() == "new plan"
    listed = sorted(verify_output_folder(out, "bundle")["files"])
    assert listed == ["bundle.json", "table/c.onnx", "table/plan.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging folder left

    with OutputFolder(out, ["bundle.json"], force=True, stage="bundle") as folder:
        folder.write_text("bundle.json", "{}")
        folder.commit()  # no table this time: its files go, the folder stays for the user's engine
    assert sorted(p.name for p in (out / "table").iterdir()) == ["a.engine"]
    (out / "table" / "a.engine").unlink()
    with OutputFolder(out, ["bundle.json"], force=True, stage="bundle") as folder:
        folder.write_text("bundle.json", "{}")
        folder.path("table").mkdir()
        folder.write_text("table/plan.json", "p")
        folder.commit()
    with OutputFolder(out, ["bundle.json"], force=True, stage="bundle") as folder:
        folder.write_text("bundle.json", "{}")
        folder.commit()
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "manifest.json"]  # emptied: removed
