"""Deployment targets: every shipped YAML loads, and bad ones fail with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rmtdeploy import targets
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.targets import (
    BACKENDS,
    PRECISIONS,
    host_cpu_channel_multiple,
    list_targets,
    load_target,
    recipes_dir,
    target_aliases,
)

REPO = Path(__file__).resolve().parent.parent
REQUIRED = {"jetson-orin-nano", "jetson-agx-orin", "gpu-fp16", "gpu-int8", "cpu-ort"}

VALID = {
    "name": "my-board",
    "description": "a test board",
    "backend": "tensorrt",
    "precision": "fp16",
    "channel_multiple": 8,
    "tensorrt": ">=10.3",
}


def _write(tmp_path, **fields):
    path = tmp_path / "my-board.yaml"
    path.write_text(yaml.safe_dump({**VALID, **fields}))
    return path


def test_required_targets_ship():
    assert REQUIRED <= set(list_targets())


@pytest.mark.parametrize("name", list_targets())
def test_every_shipped_target_loads_and_is_consistent(name):
    target = load_target(name)
    assert target.name == name
    assert target.backend in BACKENDS and target.precision in PRECISIONS
    assert target.channel_multiple >= 8 and target.channel_multiple & (target.channel_multiple - 1) == 0
    assert target.opset >= 17 and target.max_batch >= 1 and target.description
    assert (target.tensorrt is not None) == (target.backend == "tensorrt")
    assert target.source.endswith(f"{name}.yaml")


def test_jetson_alias_means_orin_nano_on_tensorrt_10():
    target = load_target("jetson")
    assert target.name == "jetson-orin-nano"
    assert target_aliases()["jetson"] == "jetson-orin-nano"
    # JetPack 6.x ships TensorRT 10.3; TensorRT 11 is not available there.
    assert target.accepts_tensorrt("10.3.0") and not target.accepts_tensorrt("11.4.1")
    assert not target.accepts_tensorrt("8.6.2")


def test_precision_moves_into_the_onnx_from_tensorrt_11():
    gpu = load_target("gpu-fp16")
    assert not gpu.precision_in_onnx("10.13.0")
    assert gpu.precision_in_onnx("11.0.0")
    assert not load_target("cpu-ort").precision_in_onnx("11.0.0")


def test_the_dla_target_says_dla_is_absent_from_tensorrt_11_0_to_11_4_0():
    # NVIDIA's TensorRT 11.4.1 release notes: DLA is back in 11.4.1, on AGX Orin with JetPack >= 7.2.2.
    dla = load_target("jetson-agx-orin-dla")
    accepted = {
        v: dla.accepts_tensorrt(v) for v in ("8.6.2", "10.3.0", "10.7.0", "11.0.0", "11.4.0", "11.4.1")
    }
    assert accepted == {"8.6.2": False, "10.3.0": True, "10.7.0": True, "11.0.0": False, "11.4.0": False,
                        "11.4.1": True}  # fmt: skip
    assert dla.accepts_tensorrt_major(11) and not load_target("jetson-orin-nano").accepts_tensorrt_major(11)
    assert [[(op, v) for op, v in clauses] for clauses in dla.tensorrt_alternatives()] == [
        [(">=", (10, 3)), ("<", (11,))], [(">=", (11, 4, 1))]]  # fmt: skip


def test_the_profile_is_tuned_for_the_targets_opt_batch(tmp_path):
    assert load_target("gpu-datacenter").profile_opt_batch == 128  # opt = max unless the target says
    assert load_target(_write(tmp_path, max_batch=32, opt_batch=8)).profile_opt_batch == 8


def test_int8_and_dla_targets_use_wider_channel_multiples():
    assert load_target("gpu-int8").channel_multiple >= 16
    dla = [target for target in map(load_target, list_targets()) if target.dla]
    assert [t.name for t in dla] == ["jetson-agx-orin-dla"]  # the check below must have something to check
    assert all(t.precision in ("fp16", "int8") and t.static_shapes and t.channel_multiple >= 16 for t in dla)


@pytest.mark.parametrize(
    ("flags", "multiple"),
    [({"fma", "avx2", "avx512f", "avx512bw"}, 16), ({"fma", "avx2"}, 8), (set(), 8)],
)
def test_auto_channel_multiple_follows_the_cpu_simd_block(flags, multiple):
    found, why = host_cpu_channel_multiple(flags)
    assert found == multiple and why.startswith("auto, ")


def test_cpu_target_resolves_auto_on_the_host(monkeypatch):
    monkeypatch.setattr(targets, "_host_cpu_flags", lambda: {"avx2", "avx512f"})
    cpu = load_target("cpu-ort")
    assert cpu.channel_multiple == 16 and "avx512f" in cpu.channel_multiple_from
    monkeypatch.setattr(targets, "_host_cpu_flags", lambda: {"avx2"})
    assert load_target("cpu-ort").channel_multiple == 8
    assert load_target("gpu-fp16").channel_multiple_from == "profile"


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(RmtdeployError) as info:
        load_target("jetson-nanoo")
    message = str(info.value)
    assert "unknown target 'jetson-nanoo'" in message
    assert all(name in message for name in REQUIRED) and "jetson -> jetson-orin-nano" in message


def test_loads_a_yaml_path(tmp_path):
    target = load_target(_write(tmp_path))
    assert target.name == "my-board" and target.dla is False and target.max_batch == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"precision": "fp8"}, "'precision' must be one of"),
        ({"backend": "tvm"}, "'backend' must be one of"),
        ({"channel_multiple": 12}, "power of two"),
        ({"channel_multiple": True}, "'channel_multiple' must be int"),
        ({"channel_multiple": "auto"}, "only applies to backend onnxruntime"),
        ({"channel_multiple": "sixteen"}, "'channel_multiple' must be int"),
        ({"max_batch": 0}, "'max_batch' must be >= 1"),
        ({"round_to": 8}, "unknown field"),
        ({"dla": True, "precision": "fp32"}, "dla needs"),
        ({"dla": True, "static_shapes": False}, "static shapes only"),
        ({"tensorrt": "ten"}, "version range"),
        ({"tensorrt": None}, "needs a 'tensorrt' version range"),
        ({"backend": "onnxruntime", "precision": "fp16", "tensorrt": None}, "not available with backend"),
        ({"backend": "onnxruntime", "precision": "fp32"}, "only applies to backend tensorrt"),
        ({"opset": 13}, "opset must be >= 17"),
        ({"max_batch": 8, "opt_batch": 16}, "opt_batch 16 exceeds max_batch 8"),
        ({"tensorrt": ">=10.3 || 11"}, "version range"),
        ({"description": None}, "missing required field 'description'"),
    ],
)
def test_invalid_fields_are_named_in_the_error(tmp_path, fields, message):
    with pytest.raises(RmtdeployError, match=message):
        load_target(_write(tmp_path, **fields))


def test_non_mapping_and_broken_yaml_are_user_errors(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RmtdeployError, match="mapping"):
        load_target(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RmtdeployError, match="not valid YAML"):
        load_target(tmp_path / "bad.yaml")
    with pytest.raises(RmtdeployError, match="not found"):
        load_target(tmp_path / "missing.yaml")


def test_shipped_recipes_are_read_from_the_installed_package(monkeypatch):
    monkeypatch.delenv("RMTDEPLOY_RECIPES", raising=False)
    folder = recipes_dir()
    assert {Path(f.name).stem for f in folder.joinpath("targets").iterdir()} >= REQUIRED
    # The editable install maps the package onto the repository's top-level recipes/ (one copy only).
    assert Path(str(folder)).resolve() == REPO / "recipes"


def test_env_var_points_at_another_recipes_folder(tmp_path, monkeypatch):
    (tmp_path / "targets").mkdir()
    shipped = recipes_dir().joinpath("targets", "cpu-ort.yaml").read_text(encoding="utf-8")
    (tmp_path / "targets" / "cpu-ort.yml").write_text(shipped, encoding="utf-8")
    monkeypatch.setenv("RMTDEPLOY_RECIPES", str(tmp_path))
    assert list_targets() == ["cpu-ort"]
    assert load_target("cpu").name == "cpu-ort"  # a .yml file is found by name as well
    (tmp_path / "targets" / "cpu-ort.yaml").write_text(shipped, encoding="utf-8")
    with pytest.raises(RmtdeployError, match="two files"):
        list_targets()


def test_env_var_without_targets_folder_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RMTDEPLOY_RECIPES", str(tmp_path))
    with pytest.raises(RmtdeployError, match="no targets/ folder"):
        list_targets()


def test_file_name_must_match_the_name_field(tmp_path, monkeypatch):
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "other.yaml").write_text(yaml.safe_dump(VALID))
    monkeypatch.setenv("RMTDEPLOY_RECIPES", str(tmp_path))
    with pytest.raises(RmtdeployError, match="differs from the file name"):
        load_target("other")
