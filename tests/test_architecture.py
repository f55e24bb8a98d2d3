"""The shape of the package: no import circles, short functions, a light top-level import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rmtdeploy"
MAX_FUNCTION_LINES = 60  # body lines, docstring excluded; longer needs "Long:" and a reason in the docstring


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """rmtdeploy modules imported when ``module`` is imported (function-level imports run later)."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("rmtdeploy")}


def _import_graph() -> dict[str, set[str]]:
    sources = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = _module_level_imports(tree, module, path.name == "__init__.py")
        graph[module] = {name for name in imported if name in sources and name != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_module_level_import_graph_has_no_circle():
    graph = _import_graph()
    assert len(graph) > 30 and graph["rmtdeploy.pruning.prune"]  # the graph was really read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def _long_functions() -> list[str]:
    long = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            docstring = ast.get_docstring(node) or ""
            first = node.body[1] if docstring and len(node.body) > 1 else node.body[0]
            body_lines = node.end_lineno - first.lineno + 1
            signature_lines = node.body[0].lineno - node.lineno
            if signature_lines + body_lines > MAX_FUNCTION_LINES and "Long:" not in docstring:
                long.append(
                    f"{path.relative_to(PACKAGE.parent)}::{node.name} ({signature_lines + body_lines})"
                )
    return long


def test_no_function_is_longer_than_sixty_lines_without_saying_why():
    assert _long_functions() == []


def test_importing_the_package_loads_no_heavy_library():
    code = "import sys, rmtdeploy; print(sorted(m for m in ('torch', 'timm', 'onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
