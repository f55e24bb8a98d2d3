"""Machine conditions: the one /proc/cpuinfo reader, on x86 and Arm dumps, and who relies on it."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from types import SimpleNamespace

from rmtdeploy import machine, targets

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse4_2 avx512f avx fma avx2 avx512_vnni hypervisor

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: a second core that must not be read
flags\t\t: fpu
"""

ARM = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes asimddp
CPU implementer\t: 0x41

processor\t: 1
BogoMIPS\t: 62.50
Features\t: fp

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_x86_model_and_flags_come_from_the_first_processor():
    assert machine.cpu_model(X86) == "AMD EPYC 9R14 96-Core Processor"
    assert machine.cpu_flags(X86) == {
        "fpu",
        "sse4_2",
        "avx512f",
        "avx",
        "fma",
        "avx2",
        "avx512_vnni",
        "hypervisor",
    }


def test_arm_features_and_the_machine_wide_model_line():
    fields = machine.read_cpuinfo(ARM)
    assert fields["features"] == "fp asimd evtstrm aes asimddp"  # processor 0's, not processor 1's
    assert machine.cpu_model(ARM) == "Raspberry Pi 4 Model B Rev 1.4"
    assert machine.cpu_flags(ARM) == {"fp", "asimd", "evtstrm", "aes", "asimddp"}


def test_simd_flags_keep_only_vector_extensions_in_a_fixed_order():
    assert machine.simd_flags(X86) == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni"]
    assert machine.simd_flags(ARM) == ["asimd", "asimddp"]


def test_unreadable_cpuinfo_falls_back_to_what_platform_knows():
    assert machine.read_cpuinfo("") == {}
    assert machine.cpu_flags("") == set()
    fallback = platform.processor() or platform.machine() or "unknown"
    assert machine.cpu_model("") == fallback
    assert machine.cpu_model("processor\t: 0\nmodel\t\t: 17\n") == fallback  # x86's model number is no name


def test_machine_conditions_read_the_given_dump():
    facts = machine.machine_conditions(X86)
    assert facts["cpu_model"] == "AMD EPYC 9R14 96-Core Processor"
    assert facts["cpu_simd_flags"][:2] == ["sse4_2", "avx"]
    assert facts["cpu_count"] == os.cpu_count()
    assert facts["python"] == platform.python_version()
    assert "numpy_version" in facts


def test_library_versions_prefer_the_imported_module_and_never_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", SimpleNamespace(__version__="9.9.9+test"))
    monkeypatch.delitem(sys.modules, "torch")
    versions = machine.library_versions()
    assert versions["onnxruntime"] == "9.9.9+test"
    assert versions["torch"] == metadata.version("torch")  # from the metadata: not imported
    assert set(versions) >= {"rmtdeploy", "timm", "torch-pruning", "onnx", "numpy"}  # the run manifest's list
    assert "torch" not in sys.modules


def test_loadavg_is_none_where_the_os_has_none(monkeypatch):
    monkeypatch.delattr(os, "getloadavg")
    assert machine.loadavg() is None


def test_target_channel_multiple_reads_flags_through_conditions(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86, encoding="utf-8")
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    multiple, why = targets.host_cpu_channel_multiple()
    assert multiple == 16 and "avx512f" in why
    cpuinfo.write_text(X86.replace(" avx512f", "").replace(" avx512_vnni", ""), encoding="utf-8")
    assert targets.host_cpu_channel_multiple()[0] == 8
