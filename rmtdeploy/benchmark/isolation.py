"""Run one benchmark function in a fresh, short-lived Python process.

ONNX Runtime sizes its process-wide (shared) thread pool once per process, and from then on refuses
every session that asks for threads of its own. Timing on that pool therefore happens in a child
process, so the pool cannot leak into the caller and the next measurement may choose another size.
Why the shared pool is worth it: docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmtdeploy.errors import RmtdeployError

_CHILD_CODE = (
    "import sys; from rmtdeploy.benchmark.isolation import child_main; child_main(sys.argv[1], sys.argv[2])"
)


def in_child_process(fn: Callable[..., dict], **kwargs: Any) -> dict:
    """``fn(**kwargs)`` in a fresh Python process; arguments and result travel as JSON.

    ``fn`` must be a module-level function of ``rmtdeploy`` taking and returning plain data. A plain
    subprocess (not multiprocessing's spawn, which re-imports the caller's ``__main__`` and with it
    torch) keeps the start-up short. An error in the child is raised here as :class:`RmtdeployError`.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        request = {"function": f"{fn.__module__}:{fn.__qualname__}", "kwargs": kwargs}
        spec_path.write_text(json.dumps(request), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, str(spec_path), str(result_path)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if not result_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RmtdeployError(f"benchmark child process failed (exit {proc.returncode}): {tail[0][:300]}")
        result = json.loads(result_path.read_text(encoding="utf-8"))
    if "error" in result:
        raise RmtdeployError(result["error"])
    return result["result"]


def child_main(spec_path: str, result_path: str) -> None:
    """Entry point of :func:`in_child_process`'s process: run the named function, write JSON back."""
    request = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    try:
        out: dict[str, Any] = {"result": _resolve(request["function"])(**request["kwargs"])}
    except RmtdeployError as exc:
        out = {"error": str(exc)}
    except Exception as exc:  # report anything else as one line too; the parent raises it
        out = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    Path(result_path).write_text(json.dumps(out), encoding="utf-8")


def _resolve(name: str) -> Callable[..., dict]:
    module_name, _, function_name = name.partition(":")
    if module_name.split(".")[0] != "rmtdeploy" or not function_name.isidentifier():
        raise RmtdeployError(f"the benchmark child runs rmtdeploy functions only, not '{name}'")
    return getattr(importlib.import_module(module_name), function_name)
