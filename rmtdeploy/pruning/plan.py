"""The pruning plan (plain JSON), and saving / rebuilding a pruned model from it.

A pruned model is stored as ``plan.json`` + ``model.safetensors``: no pickles. ``load_pruned`` builds the dense
architecture with timm (random init), replays the plan's operations through the dependency graph with the
same adapter, repairs cached attributes, then loads the weights strictly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import timm
import torch
import torch_pruning as tp
from safetensors.torch import load_file, save_file
from torch import nn

from rmtdeploy.adapters.base import get_adapter
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import atomic_save, atomic_write_text, prepare_output_dir
from rmtdeploy.models import model_family, state_dict_mismatch
from rmtdeploy.pruning.graph import apply_operations, build_dependency_graph
from rmtdeploy.pruning.result import PruneResult

PLAN_FORMAT = "rmtdeploy-pruning-plan"
PLAN_VERSION = 1
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"


def save_pruned(directory: str | os.PathLike, result: PruneResult, *, force: bool = False) -> Path:
    """Write ``model.safetensors`` and ``plan.json`` into ``directory`` (each atomically); returns the dir."""
    out = prepare_output_dir(directory, (WEIGHTS_FILE, PLAN_FILE), force=force)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in result.model.state_dict().items()}
    metadata = {"format": "pt", "plan_format": PLAN_FORMAT, "model": str(result.plan["model"])}
    atomic_save(out / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata=metadata))
    atomic_write_text(out / PLAN_FILE, plan_to_json(result.plan))
    return out


def plan_to_json(plan: dict[str, Any]) -> str:
    """Indented JSON with every list of numbers on one line (channel indices would take a line each)."""
    text = json.dumps(plan, indent=2, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


_NUMBER_LIST = re.compile(r"\[\s+([-\d.,\s]+?)\s+\]")


def read_plan(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / PLAN_FILE
    if not path.is_file():
        raise RmtdeployError(f"no {PLAN_FILE} in {directory}: not a pruned-model directory")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RmtdeployError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise RmtdeployError(f"{path} is not an rmtdeploy pruning plan")
    if plan.get("version") != PLAN_VERSION:
        raise RmtdeployError(
            f"{path} has plan version {plan.get('version')}; this rmtdeploy reads {PLAN_VERSION}"
        )
    return plan


def load_pruned(directory: str | os.PathLike) -> PruneResult:
    """Rebuild the pruned model saved by ``save_pruned`` (eval mode) with its plan and costs."""
    plan = read_plan(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise RmtdeployError(f"no {WEIGHTS_FILE} in {directory}")
    model = rebuild_pruned_architecture(plan)
    state = load_file(str(weights))
    problem = state_dict_mismatch(model, state)
    if problem:
        raise RmtdeployError(f"{weights} does not fit the architecture in its plan: {problem}")
    model.load_state_dict(state, strict=True)
    return PruneResult(
        model=model,
        plan=plan,
        dense_macs=plan["macs"]["dense"],
        pruned_macs=plan["macs"]["pruned"],
        dense_params=plan["params"]["dense"],
        pruned_params=plan["params"]["pruned"],
    )


def rebuild_pruned_architecture(plan: dict[str, Any]) -> nn.Module:
    """timm's dense architecture (random init) with the plan's removals replayed: the pruned shapes."""
    try:
        model = timm.create_model(plan["model"], pretrained=False, **plan["create_kwargs"])
    except Exception as exc:  # unknown name or kwargs from another timm version
        raise RmtdeployError(
            f"cannot build '{plan['model']}' with timm: {str(exc).splitlines()[0][:200]}"
        ) from exc
    model.eval()
    if model_family(model) != plan["family"]:
        raise RmtdeployError(
            f"plan is for family '{plan['family']}' but timm built a '{model_family(model)}' model"
        )
    adapter = get_adapter(model)
    if plan["operations"]:
        example_inputs = torch.zeros(1, *plan["input_size"])
        graph = build_dependency_graph(model, adapter, example_inputs)
        apply_operations(graph, model, plan["operations"])
    adapter.repair(model)
    return model


def build_plan(
    *,
    model_name: str,
    family: str,
    create_kwargs: dict[str, Any],
    input_size: list[int],
    settings: dict[str, Any],
    operations: list[dict[str, Any]],
    dense_widths: dict[str, int],
    pruned_widths: dict[str, int],
    dense_heads: dict[str, int],
    pruned_heads: dict[str, int],
    macs: tuple[int, int],
    params: tuple[int, int],
) -> dict[str, Any]:
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "model": model_name,
        "family": family,
        "create_kwargs": create_kwargs,
        "input_size": input_size,
        **settings,
        "operations": operations,
        "widths": {"dense": dense_widths, "pruned": pruned_widths},
        "heads": {
            name: {"dense": heads, "pruned": pruned_heads[name]} for name, heads in dense_heads.items()
        },
        "macs": {"dense": macs[0], "pruned": macs[1]},
        "params": {"dense": params[0], "pruned": params[1]},
        "versions": {"timm": timm.__version__, "torch_pruning": tp.__version__, "torch": torch.__version__},
    }


def layer_report(plan: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per-layer widths and per-block heads, dense vs pruned (from ``result.plan`` or a saved plan)."""
    dense, pruned = plan["widths"]["dense"], plan["widths"]["pruned"]
    layers = [
        {
            "name": name,
            "dense_width": width,
            "pruned_width": pruned[name],
            "kept_fraction": round(pruned[name] / width, 4),
        }
        for name, width in dense.items()
    ]
    heads = [
        {
            "name": name,
            "dense_heads": counts["dense"],
            "pruned_heads": counts["pruned"],
            "kept_fraction": round(counts["pruned"] / counts["dense"], 4),
        }
        for name, counts in plan["heads"].items()
    ]
    return {"layers": layers, "heads": heads}
