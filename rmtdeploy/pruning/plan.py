"""The pruning plan (plain JSON), and saving / rebuilding a pruned model from it.

A pruned model is stored as ``plan.json`` + ``model.safetensors`` (+ the stage's ``report.json``) in one
output folder (:class:`rmtdeploy.io.OutputFolder`): no pickles. The plan records the sha256 of its
weights, so weights from another run with equal shapes are refused. ``load_pruned`` builds the dense
architecture with timm (random init), replays the plan's operations through the dependency graph with
the same adapter, repairs cached attributes, then loads the weights strictly.

Every plan is made here: :func:`build_plan` for one pruning pass, :func:`compose_plans` for a sequence.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import timm
import torch
import torch_pruning as tp
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from rmtdeploy.adapters import get_adapter
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.io import OutputFolder, verify_output_folder
from rmtdeploy.models import model_family, state_dict_mismatch
from rmtdeploy.pruning.graph import apply_operations, build_dependency_graph
from rmtdeploy.pruning.result import PruneResult

PLAN_FORMAT = "rmtdeploy-pruning-plan"
PLAN_VERSION = 2  # 2: the plan holds its weights' sha256; folders carry a manifest
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
PRUNED_FILES = (WEIGHTS_FILE, PLAN_FILE)
# Stages whose output folder holds a pruned model that ``load_pruned`` reads.
PRUNED_MODEL_STAGES = ("prune", "finetune")
_REQUIRED_FIELDS = (
    "model", "family", "create_kwargs", "input_size", "operations", "widths", "heads", "macs", "params",
    "weights_sha256",
)  # fmt: skip


def save_pruned(directory: str | os.PathLike, result: PruneResult, *, force: bool = False) -> Path:
    """Write ``model.safetensors`` and ``plan.json`` into ``directory`` as one unit; returns the dir."""
    with OutputFolder(directory, PRUNED_FILES, force=force, stage="prune") as folder:
        write_pruned(folder, result)
        folder.commit()
    return Path(directory)


def write_pruned(folder: OutputFolder, result: PruneResult) -> str:
    """Stage the weights and the plan (tied by the weights' sha256) in ``folder``; returns the hash."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in result.model.state_dict().items()}
    # One metadata key: safetensors writes its metadata map in hash order, so more keys would make two
    # identical runs differ byte-wise. What the weights are is in the plan, tied by the hash.
    weights = safetensors_bytes(state, metadata={"format": "pt"})
    digest = hashlib.sha256(weights).hexdigest()
    folder.write_bytes(WEIGHTS_FILE, weights)
    folder.write_text(PLAN_FILE, plan_to_json({**result.plan, "weights_sha256": digest}))
    return digest


def plan_to_json(plan: dict[str, Any]) -> str:
    """Indented JSON with every list of numbers on one line (channel indices would take a line each)."""
    text = json.dumps(plan, indent=2, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


_NUMBER_LIST = re.compile(r"\[\s+([-\d.,\s]+?)\s+\]")


def read_plan(directory: str | os.PathLike) -> dict[str, Any]:
    """The plan of a pruned-model folder, with its format, version and fields checked."""
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
    missing = [key for key in _REQUIRED_FIELDS if key not in plan]
    for key in ("macs", "params"):
        if isinstance(plan.get(key), dict):
            missing += [f"{key}.{side}" for side in ("dense", "pruned") if side not in plan[key]]
    if missing:
        raise RmtdeployError(f"{path} lacks the field(s) {', '.join(missing)}")
    return plan


def load_pruned(directory: str | os.PathLike) -> PruneResult:
    """Rebuild the pruned model saved by ``save_pruned`` (eval mode) with its plan and costs."""
    if not Path(directory).is_dir():
        raise RmtdeployError(f"pruned-model directory not found: {directory}")
    plan = read_plan(directory)
    manifest = verify_output_folder(directory, PRUNED_MODEL_STAGES)
    weights = Path(directory) / WEIGHTS_FILE
    if manifest["files"].get(WEIGHTS_FILE) != plan["weights_sha256"]:
        raise RmtdeployError(
            f"{weights} is not the file {PLAN_FILE} was written with (sha256 differs): weights from another run"
        )
    model = rebuild_pruned_architecture(plan)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors' own error types
        raise RmtdeployError(f"cannot read {weights}: {str(exc).splitlines()[0][:200]}") from exc
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


def dense_architecture(plan: dict[str, Any]) -> nn.Module:
    """The plan's dense model, random weights, at the plan's input size: the baseline a latency
    comparison needs when only the pruned folder is at hand (latency does not depend on the values)."""
    return rebuild_pruned_architecture({**plan, "operations": []})


def load_dense_and_pruned(pruned: str | os.PathLike) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The plan's dense architecture (random weights) and the pruned model, both in eval mode, and the plan:
    what a latency comparison or an on-device baseline needs from a pruned folder alone."""
    result = load_pruned(pruned)
    return dense_architecture(result.plan).eval(), result.model.eval(), result.plan


def rebuild_pruned_architecture(plan: dict[str, Any]) -> nn.Module:
    """timm's dense architecture (random init) with the plan's removals replayed: the pruned shapes."""
    try:
        model = timm.create_model(plan["model"], pretrained=False, **plan["create_kwargs"])
    except Exception as exc:  # unknown name or kwargs from another timm version
        raise RmtdeployError(
            f"cannot build '{plan['model']}' with timm: {str(exc).splitlines()[0][:200]}"
        ) from exc
    model.eval()
    # The size it was pruned at is the size its data loaders and exports use (timm's default otherwise).
    # The preprocessing it was trained with too (plans before it was recorded keep timm's default).
    preprocessing = {
        k: tuple(v) if isinstance(v, list) else v for k, v in plan.get("data_config", {}).items()
    }
    model.pretrained_cfg = {
        **getattr(model, "pretrained_cfg", {}),
        **preprocessing,
        "input_size": tuple(plan["input_size"]),
    }
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
    data_config: dict[str, Any] | None = None,
    operations: list[dict[str, Any]],
    dense_widths: dict[str, int],
    pruned_widths: dict[str, int],
    dense_heads: dict[str, int],
    pruned_heads: dict[str, int],
    macs: tuple[int, int],
    params: tuple[int, int],
    strategy: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The plan of one pruning pass. ``data_config``: the preprocessing the model takes besides its input
    size (mean, std, interpolation, crop_pct); ``strategy``: the strategy's record (name, knobs, steps);
    ``provenance``: facts of the run the pruner does not know (weights source, target, calibration)."""
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "model": model_name,
        "family": family,
        "create_kwargs": create_kwargs,
        "input_size": input_size,
        **({"data_config": data_config} if data_config else {}),
        **settings,
        "operations": operations,
        "widths": {"dense": dense_widths, "pruned": pruned_widths},
        "heads": {
            name: {"dense": heads, "pruned": pruned_heads[name]} for name, heads in dense_heads.items()
        },
        "macs": {"dense": macs[0], "pruned": macs[1]},
        "params": {"dense": params[0], "pruned": params[1]},
        "strategy": strategy,
        **(provenance or {}),
        "versions": {"timm": timm.__version__, "torch_pruning": tp.__version__, "torch": torch.__version__},
    }


def compose_plans(plans: list[dict[str, Any]], strategy: dict[str, Any]) -> dict[str, Any]:
    """One plan equivalent to applying ``plans`` in order (a progressive strategy's steps): operations
    concatenated, dense side from the first, pruned side from the last, ``strategy`` the whole run's."""
    first, last = plans[0], plans[-1]
    composed = copy.deepcopy(last)
    composed["operations"] = [op for plan in plans for op in plan["operations"]]
    composed["widths"]["dense"] = first["widths"]["dense"]
    for name, heads in composed["heads"].items():
        heads["dense"] = first["heads"][name]["dense"]
    composed["macs"]["dense"] = first["macs"]["dense"]
    composed["params"]["dense"] = first["params"]["dense"]
    composed["strategy"] = strategy
    return composed


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
