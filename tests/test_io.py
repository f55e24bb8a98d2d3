"""Outputs are written atomically, with ordinary permissions, and never clobbered without --force."""

from __future__ import annotations

import os
import stat

import pytest

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import OutputFolder, atomic_save, atomic_write_text, check_output_dir


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
    check_output_dir(out, ["plan.json"])
    assert not out.exists()
    with OutputFolder(out, ["plan.json"], force=False, stage="prune") as folder:
        folder.write_text("plan.json", "{}")
        folder.commit()
    with pytest.raises(RmtdeployError, match=r"allow overwriting \(force\)"):
        check_output_dir(out, ["plan.json"])
    assert check_output_dir(out, ["plan.json"], force=True) == out
