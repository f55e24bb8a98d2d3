"""The shape of the package: floors that run one way, no import circles, no module over 450 lines, short
functions, a light top-level import."""

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


# -- the floors ------------------------------------------------------------------------------------------
# Where every module lives, lowest floor first. A module may import its own unit and the units its floor
# allows (ALLOWED); function-level imports count too: a lazy import is a dependency all the same.
GROUND = frozenset({
    "rmtdeploy", "rmtdeploy.errors", "rmtdeploy.io", "rmtdeploy.machine", "rmtdeploy.macs",
    "rmtdeploy.onnx_session", "rmtdeploy.preprocessing", "rmtdeploy.checkpoints", "rmtdeploy.models",
    "rmtdeploy.targets",
})  # fmt: skip
# Mechanisms in order: each may import the ground floor and the mechanisms before it.
MECHANISMS = ("adapters", "data", "spectra", "pruning", "scores", "finetuning", "exporting", "engine", "bundle",
              "benchmark", "report", "coverage", "retention")  # fmt: skip
# The stages: thin layers that may use any mechanism and hold none (a package's stage module); one stage
# does not call another (what two stages share is a mechanism).
STAGES = frozenset({
    "rmtdeploy.spectra.outputs", "rmtdeploy.pruning.stage", "rmtdeploy.pipeline.budget",
    "rmtdeploy.finetuning.stage", "rmtdeploy.exporting.stage", "rmtdeploy.engine.stage",
    "rmtdeploy.benchmark.stage", "rmtdeploy.bundle.stage", "rmtdeploy.report.run", "rmtdeploy.data.stage",
})  # fmt: skip
ALLOWED: dict[str, frozenset[str]] = {
    "ground": frozenset({"ground"}),
    **{name: frozenset({"ground", *MECHANISMS[:i]}) for i, name in enumerate(MECHANISMS)},
    "stage": frozenset({"ground", *MECHANISMS}),
    "pipeline": frozenset({"ground", "stage"}),  # the pipeline uses stages only
    "cli": frozenset({"ground", "stage", "pipeline"}),  # the CLI uses stages and the pipeline only
}


def _unit(module: str) -> str:
    if module in GROUND:
        return "ground"
    if module in STAGES:
        return "stage"
    name = module.split(".")[1]
    return name if name in (*MECHANISMS, "pipeline", "cli") else f"unplaced:{module}"


def _all_imports(tree: ast.Module, sources: set[str]) -> set[str]:
    """Every rmtdeploy module ``tree`` imports, at any depth: ``from a import b`` is ``a.b`` when that is
    a module (``from rmtdeploy.pruning import stage`` uses the stage, not the package), else ``a``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = {f"{node.module}.{alias.name}" for alias in node.names} & sources
            found |= modules if len(modules) == len(node.names) else modules | {node.module}
    return {name for name in found if name in sources}


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported in sorted(graph.items()):
        unit = _unit(module)
        for name in sorted(imported):
            other = _unit(name)
            if other not in ALLOWED.get(unit, ()) and (other != unit or unit == "stage"):
                wrong.append(f"{module} ({unit}) imports {name} ({other})")
    return wrong


def _full_import_graph() -> dict[str, set[str]]:
    sources = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        module: _all_imports(ast.parse(path.read_text(encoding="utf-8")), set(sources)) - {module}
        for module, path in sources.items()
    }


def test_every_module_sits_on_a_floor_and_imports_only_what_its_floor_allows():
    graph = _full_import_graph()
    assert graph["rmtdeploy.pipeline.steps"] and graph["rmtdeploy.pruning.prune"]  # the graph was really read
    assert [m for m in graph if _unit(m).startswith("unplaced")] == []
    assert _upward_imports(graph) == []


def test_a_planted_upward_import_fails_the_floors():
    graph = _full_import_graph()
    planted = dict(graph)
    planted["rmtdeploy.pruning.prune"] = graph["rmtdeploy.pruning.prune"] | {"rmtdeploy.benchmark.latency"}
    planted["rmtdeploy.pipeline.stage"] = graph["rmtdeploy.pipeline.stage"] | {"rmtdeploy.scores.registry"}
    planted["rmtdeploy.bundle.stage"] = graph["rmtdeploy.bundle.stage"] | {"rmtdeploy.exporting.stage"}
    assert (
        set(_upward_imports(planted)) - set(_upward_imports(graph))
        == {
            "rmtdeploy.pipeline.stage (pipeline) imports rmtdeploy.scores.registry (scores)",
            "rmtdeploy.pruning.prune (pruning) imports rmtdeploy.benchmark.latency (benchmark)",
            "rmtdeploy.bundle.stage (stage) imports rmtdeploy.exporting.stage (stage)",  # one stage calling another
        }
    )


MAX_MODULE_LINES = 450


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}  # fmt: skip
    assert long == {}
