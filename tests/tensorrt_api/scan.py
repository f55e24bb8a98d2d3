"""Read the committed TensorRT API surfaces and find every TensorRT name rmtdeploy's code uses (AST).

What counts as a use of TensorRT, in a file that imports ``tensorrt`` (under any alias):

* an attribute path on the module, whatever its alias: ``trt.BuilderFlag.FP16``, ``self.trt.Runtime``, or a
  function parameter bearing the alias's name (``load_engine(trt, ...)``) -> ``BuilderFlag.FP16``;
* a member used on a TensorRT object: objects are typed by a constructor (``trt.Builder(...)``), by the
  return type the bindings declare (``builder.create_builder_config()`` -> ``IBuilderConfig``), or, for a
  function's parameters, by name (:data:`PARAMETER_TYPES`); ``self.x`` takes the type it is assigned ->
  ``IBuilderConfig.set_timing_cache``;
* ``getattr(obj, "name")`` is a use of ``name``; ``getattr`` with a computed name on a TensorRT enum is a
  dynamic use, allowed only for the enums in :data:`DATA_CHECKED` (their names come from data the tests
  check per version).

A name that one version lacks is allowed only behind a **version branch**, and the one form recognised is
asking the library itself: inside ``if hasattr(<the same object>, "name"):`` (or its ``... if ... else``),
or as ``getattr(obj, "name", default)``. Comparing version numbers is not recognised: a wrong number is
exactly the bug this check exists for.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
API_VERSIONS = ("10.3.0", "11.4.0.106")  # bindings wheels: 10.3 is JetPack 6's, 11.4 the newest on PyPI
# trtexec's flags per TensorRT major, from NVIDIA/TensorRT's sources at each release tag (no 11.4 tag yet).
TRTEXEC_VERSIONS = {10: ("10.3.0",), 11: ("11.0", "11.1")}
PARAMETER_TYPES = {"runtime": "Runtime", "engine": "ICudaEngine", "context": "IExecutionContext",
                   "config": "IBuilderConfig", "builder": "Builder", "network": "INetworkDefinition"}  # fmt: skip
DATA_CHECKED = {
    "BuilderFlag"
}  # getattr(trt.BuilderFlag, flag): flags from build_settings, checked per version


@dataclass(frozen=True)
class Surface:
    version: str
    names: dict[str, tuple[str, str]]  # "IExecutionContext.set_input_shape" -> ("method", "bool")

    def has(self, path: str) -> bool:
        return path in self.names

    def kind(self, path: str) -> str:
        return self.names.get(path, ("", ""))[0]

    def returns(self, path: str) -> str:
        return self.names.get(path, ("", ""))[1]

    def type_of(self, path: str) -> str | None:
        """The class a method or property returns, when it is one the surface knows."""
        first = re.split(r"[ |\[]", self.returns(path).replace("nvinfer1::", ""))[0]
        return first if self.kind(first) in ("class", "enum") else None


@cache
def load_surface(version: str) -> Surface:
    names = {}
    for line in (HERE / f"tensorrt-{version}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            path, kind, *rest = line.split(" ", 2)
            names[path] = (kind, rest[0] if rest else "")
    return Surface(version, names)


@cache
def trtexec_flags(version: str) -> frozenset[str]:
    lines = (HERE / f"trtexec-{version}.txt").read_text().splitlines()
    return frozenset(line for line in lines if line.startswith("--"))


@dataclass
class Use:
    where: str  # file:line
    path: str  # "BuilderFlag.FP16", "IExecutionContext.set_input_shape", or "BuilderFlag.*" (dynamic)
    guarded: bool = False


@dataclass
class _Scope:
    types: dict[str, str] = field(default_factory=dict)


class _Finder(ast.NodeVisitor):
    def __init__(self, filename: str, aliases: set[str], surface: Surface):
        self.filename, self.aliases, self.surface = filename, aliases, surface
        self.uses: list[Use] = []
        self.scopes = [_Scope()]
        self.self_types: dict[str, str] = {}
        self.guards: list[str] = []

    # --- what an expression is
    def module_path(self, node) -> str | None:
        """``trt.A.B`` -> "A.B" ("" for the module itself); None when not rooted at the module."""
        parts = []
        while isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in self.aliases:
                return ".".join(reversed(parts))
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.aliases:
            return ".".join(reversed(parts))
        return None

    def type_of(self, node) -> str | None:
        if isinstance(node, ast.Name):
            return self.scopes[-1].types.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self.self_types.get(node.attr)
            owner = self.type_of(node.value)
            if owner:
                return self.surface.type_of(f"{owner}.{node.attr}")
            path = self.module_path(node)
            return path if path and self.surface.kind(path) in ("class", "enum") else None
        if isinstance(node, ast.Call):
            path = self.module_path(node.func)
            if path and self.surface.kind(path) == "class":
                return path  # a constructor
            if isinstance(node.func, ast.Attribute):
                owner = self.type_of(node.func.value)
                if owner:
                    return self.surface.type_of(f"{owner}.{node.func.attr}")
        return None

    def record(self, node, path: str) -> None:
        guarded = path in self.guards
        self.uses.append(Use(f"{self.filename}:{getattr(node, 'lineno', 0)}", path, guarded))

    # --- visitors
    def visit_Attribute(self, node):
        path = self.module_path(node)
        if path:
            self.record(node, path)
            return
        owner = self.type_of(node.value)
        if owner:
            self.record(node, f"{owner}.{node.attr}")
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
            owner = self.module_path(node.args[0])
            if owner is None:
                owner = self.type_of(node.args[0])
            if owner is not None:
                name = node.args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    path = f"{owner}.{name.value}" if owner else name.value
                    self.uses.append(
                        Use(
                            f"{self.filename}:{node.lineno}", path, len(node.args) == 3 or path in self.guards
                        )
                    )
                else:
                    self.uses.append(Use(f"{self.filename}:{node.lineno}", f"{owner}.*"))
                for arg in node.args[2:]:
                    self.visit(arg)
                return
        self.generic_visit(node)

    def visit_If(self, node):
        guard = self.hasattr_guard(node.test)
        self.visit(node.test)
        self.guards.append(guard or "")
        for child in node.body:
            self.visit(child)
        self.guards.pop()
        for child in node.orelse:
            self.visit(child)

    def visit_IfExp(self, node):
        guard = self.hasattr_guard(node.test)
        self.visit(node.test)
        self.guards.append(guard or "")
        self.visit(node.body)
        self.guards.pop()
        self.visit(node.orelse)

    def hasattr_guard(self, test) -> str | None:
        if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "hasattr":
            owner = self.module_path(test.args[0])
            owner = owner if owner is not None else self.type_of(test.args[0])
            name = test.args[1]
            if owner is not None and isinstance(name, ast.Constant):
                return f"{owner}.{name.value}" if owner else name.value
        return None

    def visit_FunctionDef(self, node):
        scope = _Scope(dict(self.scopes[-1].types))  # a nested function sees its parent's objects
        for arg in node.args.args + node.args.kwonlyargs:
            if arg.arg in PARAMETER_TYPES:
                scope.types[arg.arg] = PARAMETER_TYPES[arg.arg]
        self.scopes.append(scope)
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node):
        self.visit(node.value)
        pairs = []
        for target in node.targets:
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs += list(zip(target.elts, node.value.elts, strict=False))
            else:
                pairs.append((target, node.value))
        for target, value in pairs:
            kind = self.type_of(value)
            if isinstance(target, ast.Name) and kind:
                self.scopes[-1].types[target.id] = kind
            elif (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                if kind:
                    self.self_types[target.attr] = kind
            else:
                self.visit(target)


def tensorrt_aliases(tree: ast.AST) -> set[str]:
    """Names ``import tensorrt`` binds anywhere in the file (``trt``, ``tensorrt``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
    return found


def tensorrt_uses(source: str, filename: str, surface: Surface) -> list[Use]:
    tree = ast.parse(source)
    aliases = tensorrt_aliases(tree)
    if not aliases:
        return []
    finder = _Finder(filename, aliases, surface)
    for _ in range(2):  # twice: self.x types assigned in a later method are known on the second pass
        finder.uses = []
        finder.visit(tree)
    return finder.uses


def problems(files: dict[str, str], versions=API_VERSIONS) -> list[str]:
    """Every TensorRT name used in ``files`` (name -> source) that some version lacks, unguarded."""
    found = []
    for version in versions:
        surface = load_surface(version)
        for name, source in files.items():
            for use in tensorrt_uses(source, name, surface):
                if use.path.endswith(".*"):
                    if use.path[:-2] not in DATA_CHECKED:
                        found.append(
                            f"{use.where}: dynamic getattr on {use.path[:-2]} is not checked per version"
                        )
                elif not use.guarded and not surface.has(use.path):
                    found.append(f"{use.where}: {use.path} is not in TensorRT {version}")
    return sorted(set(found))


def flags_of(line: str) -> set[str]:
    """The ``--flag`` names of one trtexec command line."""
    return {token.split("=", 1)[0] for token in line.split() if token.startswith("--")}
