#!/usr/bin/env python3
"""Extract the Python API surface of a TensorRT version from its bindings wheel, and the flags its
trtexec parses from TensorRT's own sources, as committed data.

    pip download --no-deps -d /tmp/trtwheels tensorrt-cu12-bindings==10.3.0 tensorrt-cu13-bindings==11.4.0.106
    python tests/tensorrt_api/extract_surface.py /tmp/trtwheels/tensorrt_cu1*_bindings-*.whl
    git -C TensorRT show v11.0:samples/common/sampleOptions.cpp > /tmp/sampleOptions-11.0.cpp   # (per tag)
    python tests/tensorrt_api/extract_surface.py --trtexec 11.0=/tmp/sampleOptions-11.0.cpp

The wheel (~1.3 MB, on PyPI) holds ``tensorrt_bindings/tensorrt.so`` (the pybind11 module: every class,
method, property and enum member of that version) and ``__init__.py`` (``volume``, ``nptype``, the
``Logger`` severities). The module needs ``libnvinfer.so.N``, ``libnvonnxparser.so.N`` and
``libnvinfer_plugin.so.N``, which are not on PyPI's reachable side; it imports only nine functions from
them (``createInferRuntime_INTERNAL``, ``getPluginRegistry``, ...), none of which runs at import. So
this script compiles stand-in libraries that export those symbols (each returns 0; ``cc`` is needed),
imports the wheel's own module against them in a subprocess, and walks it: names *with their owner*
(``IExecutionContext.set_input_shape``), kinds, and the return types from pybind11's signatures
(``-> bool``). A plain ``strings`` scan of the .so finds the same names but cannot say which class owns
which method; it is kept as a cross-check: every name read from the module must also be a literal
string in ``tensorrt.so`` or ``__init__.py`` (the header records the count), so nothing in the data
comes from anywhere but the wheel.

Output: ``tensorrt-<version>.txt`` beside this script, one name per line::

    IExecutionContext.set_input_shape method -> bool
    IExecutionContext.name property -> str
    DataType.HALF member
    volume function

trtexec is not in the wheel. Its flags are the ``"--name"`` literals of the option parsers in
``samples/common/sampleOptions.cpp`` (NVIDIA/TensorRT at a release tag), without
``SafeBuilderOptions::parse`` (the safety builder's own parser: TensorRT 11 keeps ``--int8`` only
there, while trtexec itself refuses it). Output: ``trtexec-<version>.txt``, one flag per line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "tensorrt_bindings"

# Runs inside the subprocess that imports the wheel's module; prints JSON [[path, kind, type], ...].
WALK = r"""
import inspect, json, re, sys
import tensorrt_bindings as trt

PREFIX = re.compile(r"\btensorrt_bindings\.tensorrt\.|\btensorrt_bindings\.")

def returns(doc, name=""):
    types = []
    for line in (doc or "").splitlines():
        m = re.match(r"^\s*(?:\d+\.\s+)?" + re.escape(name) + r"\(.*\)\s*->\s*(.+?)\s*$", line)
        if m and PREFIX.sub("", m.group(1)) not in types:
            types.append(PREFIX.sub("", m.group(1)))
    return " | ".join(types)

rows, seen = [], set()

def add(path, kind, kind_type=""):
    if path not in seen:
        seen.add(path)
        rows.append([path, kind, kind_type])

def walk_class(prefix, cls):
    add(prefix, "enum" if hasattr(cls, "__members__") else "class")
    for member in getattr(cls, "__members__", {}):
        add(f"{prefix}.{member}", "member")
    for name in dir(cls):
        if name.startswith("_"):
            continue
        try:
            attr = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        value = getattr(cls, name)
        path = f"{prefix}.{name}"
        if isinstance(attr, property):
            add(path, "property", returns(attr.fget.__doc__) if attr.fget else "")
        elif isinstance(attr, staticmethod) or type(attr).__name__ == "builtin_function_or_method":
            add(path, "staticmethod", returns(value.__doc__, name))
        elif isinstance(value, type) and value.__module__.startswith("tensorrt"):
            walk_class(path, value)
        elif callable(value) and type(attr).__name__ in ("instancemethod", "function"):
            add(path, "method", returns(value.__doc__, name))
        elif type(value).__module__.startswith("tensorrt"):
            add(path, "member" if hasattr(type(value), "__members__") else "value", type(value).__name__)

for name in sorted(dir(trt)):
    if name.startswith("_"):
        continue
    value = getattr(trt, name)
    if isinstance(value, type):
        if value.__module__.startswith("tensorrt"):
            walk_class(name, value)
    elif type(value).__module__.startswith("tensorrt"):
        add(name, "value", type(value).__name__)
    elif callable(value) and getattr(value, "__module__", "").startswith("tensorrt"):
        add(name, "function", returns(value.__doc__, name))
add("__version__", "value", "str")
print(json.dumps({"version": trt.__version__, "rows": rows}))
"""


def undefined_tensorrt_symbols(so: Path) -> list[str]:
    """The functions tensorrt.so takes from TensorRT's own libraries: undefined, unversioned (glibc and
    libstdc++ symbols carry @VERSION), not Python's and not libdl's."""
    out = subprocess.run(
        ["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True, check=True
    )
    names = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U" and "@" not in parts[1]:
            name = parts[1]
            if not name.startswith(("Py", "_Py")) and name not in ("dlopen", "dlsym", "dlclose", "dlerror"):
                names.append(name)
    return names


def needed_tensorrt_libraries(so: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    return [m for m in re.findall(r"\[(lib[^\]]+)\]", out) if m.startswith(("libnvinfer", "libnvonnxparser"))]


def stand_in_libraries(so: Path, folder: Path) -> None:
    symbols = undefined_tensorrt_symbols(so)
    source = folder / "stand_in.c"
    source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in symbols))
    for library in needed_tensorrt_libraries(so):
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(folder / library), str(source)], check=True)


def is_literal(name: str, so_bytes: bytes, init_text: str) -> bool:
    """``name`` is a C string in the .so (the linker merges a string into the tail of a longer one:
    ``RELU`` lives inside ``LEAKY_RELU``, so a NUL-terminated suffix counts) or a word of __init__.py."""
    return name.encode() + b"\0" in so_bytes or re.search(rf"\b{re.escape(name)}\b", init_text) is not None


def extract(wheel: Path) -> tuple[str, list[list[str]], str]:
    tag = wheel.name.split("-")[2]  # cp311
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if tag != here:
        raise SystemExit(
            f"{wheel.name} is built for {tag}; run this script with that Python (this is {here})"
        )
    with tempfile.TemporaryDirectory(prefix="trt-surface-") as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(root / "wheel")
        so = root / "wheel" / PACKAGE / "tensorrt.so"
        (root / "libs").mkdir()
        stand_in_libraries(so, root / "libs")
        env = {**os.environ, "LD_LIBRARY_PATH": str(root / "libs"), "PYTHONPATH": str(root / "wheel")}
        done = subprocess.run([sys.executable, "-c", WALK], env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(
                f"importing {wheel.name} against stand-in libraries failed:\n{done.stderr[-2000:]}"
            )
        data = json.loads(done.stdout)
        so_bytes, init_text = so.read_bytes(), (root / "wheel" / PACKAGE / "__init__.py").read_text()
    rows = data["rows"]
    missing = [p for p, _, _ in rows if not is_literal(p.rsplit(".", 1)[-1], so_bytes, init_text)]
    check = f"{len(rows) - len(missing)} of {len(rows)} names are literal strings in tensorrt.so/__init__.py"
    if missing:
        check += f"; not found: {', '.join(missing[:10])}"
    return data["version"], rows, check


def trtexec_flags(source: str) -> list[str]:
    """The flags trtexec parses: ``"--name"`` literals outside ``SafeBuilderOptions::parse``."""
    safe = re.search(r"^\S[^\n]*SafeBuilderOptions::parse\(.*?^}", source, re.M | re.S)
    if safe:
        source = source[: safe.start()] + source[safe.end() :]
    return sorted(set(re.findall(r'"(--[A-Za-z][A-Za-z0-9]*)', source)))


def write_trtexec(version: str, source_file: Path, out_dir: Path) -> None:
    source = source_file.read_text()
    digest = hashlib.sha256(source.encode()).hexdigest()
    flags = trtexec_flags(source)
    out = out_dir / f"trtexec-{version}.txt"
    header = [
        f"# trtexec {version} flags: the option parsers of NVIDIA/TensorRT v{version} samples/common/sampleOptions.cpp"
        f" (sha256 {digest})",
        f"# made by: git show v{version}:samples/common/sampleOptions.cpp > {source_file}",
        f"#          python tests/tensorrt_api/extract_surface.py --trtexec {version}={source_file}",
    ]
    out.write_text("\n".join(header + flags) + "\n")
    print(f"{out}: {len(flags)} flags")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wheels", nargs="*", type=Path)
    parser.add_argument("--trtexec", action="append", default=[], metavar="VERSION=sampleOptions.cpp")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for item in args.trtexec:
        version, _, source = item.partition("=")
        write_trtexec(version, Path(source), args.out_dir)
    for wheel in args.wheels:
        version, rows, check = extract(wheel)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        out = args.out_dir / f"tensorrt-{version}.txt"
        header = [
            f"# TensorRT {version} Python API surface, from {wheel.name} (sha256 {digest})",
            f"# made by: pip download --no-deps -d /tmp/trtwheels {wheel.name.split('-')[0].replace('_', '-')}=={wheel.name.split('-')[1]}",
            f"#          python{sysconfig.get_python_version()} tests/tensorrt_api/extract_surface.py /tmp/trtwheels/{wheel.name}",
            f"# cross-check: {check}",
            "# columns: name, kind (class enum member method staticmethod property value function), type",
        ]
        lines = [" ".join(part for part in row if part) for row in sorted(rows)]
        out.write_text("\n".join(header + lines) + "\n")
        print(f"{out}: {len(rows)} names; {check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
