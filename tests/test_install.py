"""Packaging: a wheel carries the whole package and the target recipes, and works without the checkout.

The wheel is built from a copy of the sources (so no ``build/`` folder is left in, or read from, the
checkout), without build isolation or an index: the venv's setuptools builds it, offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGING_FILES = ("pyproject.toml", "README.md")
SOURCE_FOLDERS = ("rmtdeploy", "recipes")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")

# Run from an unrelated folder, with only the installed copy on the path and no recipes override.
PROBE = """
import json, rmtdeploy
from rmtdeploy import targets
names = targets.list_targets()
print(json.dumps({
    "package": rmtdeploy.__file__,
    "recipes": str(targets.recipes_dir()),
    "targets": names,
    "sources": [targets.load_target(name).source for name in names],
    "jetson": targets.load_target("jetson").name,
}))
"""


def _pip(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in PACKAGING_FILES:
        shutil.copy2(REPO / name, source / name)
    for name in SOURCE_FOLDERS:
        shutil.copytree(REPO / name, source / name, ignore=SKIP)
    _pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-w",
        str(work / "dist"),
        ".",
        cwd=source,
    )
    (built,) = (work / "dist").glob("rmtdeploy-*.whl")
    return built


def _shipped_recipes() -> list[str]:
    return sorted(
        p.relative_to(REPO / "recipes").as_posix()
        for p in (REPO / "recipes").rglob("*")
        if p.suffix in (".yaml", ".yml")
    )


def test_wheel_carries_every_module_and_every_recipe_yaml(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = _shipped_recipes()
    assert any(r.startswith("targets/") for r in recipes)
    missing = [r for r in recipes if f"rmtdeploy/recipes/{r}" not in names]
    assert not missing, f"recipe YAMLs missing from the wheel: {missing}"
    # The package list is written out in pyproject.toml: a new subpackage must not be left out of the wheel.
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "rmtdeploy").rglob("*.py"))
    missing = [m for m in modules if m not in names]
    assert not missing, f"modules missing from the wheel: {missing}"


def test_installed_wheel_loads_every_target_from_any_directory(wheel, tmp_path):
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RMTDEPLOY_RECIPES", "PYTHONPATH")}
    # PYTHONPATH comes before site-packages, and the editable install's finder runs after the path.
    env["PYTHONPATH"] = str(site)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)

    assert Path(found["package"]).is_relative_to(site), found["package"]
    assert Path(found["recipes"]).is_relative_to(site), found["recipes"]
    shipped = [r for r in _shipped_recipes() if r.startswith("targets/")]
    assert found["targets"] == sorted(Path(r).stem for r in shipped)
    assert all(Path(source).is_relative_to(site) for source in found["sources"])
    assert found["jetson"] == "jetson-orin-nano"
