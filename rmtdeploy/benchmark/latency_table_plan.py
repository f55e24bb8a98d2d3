"""What a latency table times: the plan (graphs, groups, what each label means), written before any timing.

A table is measured in three steps, so that a board can do the middle one (:mod:`rmtdeploy.bundle`):

1. :func:`plan_latency_table` (here, with torch): every graph the table needs, as ONNX files in one folder,
   and ``plan.json`` saying what each is and how they are grouped;
2. timing the groups on the target (:func:`rmtdeploy.benchmark.latency_table.time_plan_onnxruntime` on ONNX
   Runtime CPU; ``bench_on_device.py`` with TensorRT on a board), each group alone and interleaved;
3. :func:`rmtdeploy.benchmark.latency_table.assemble_latency_table`: the table from the plan and the times.

The graphs: the dense model; each prunable unit alone narrowed to a few of its allowed widths (the rest
dense); and a few *joint* configurations, every unit narrowed at once to a drawn width, which calibrate how
the units' separate savings add up. A layer between two units (a conv between a block's own width and its
stage's residual width) saves less when both shrink than the two units' savings add up to; the plan
records its MACs on the grid of both units' widths, and assembling prices that interaction at the two
units' measured in-graph time per MAC. (Timed alone as one-layer graphs, such layers took a third of what
narrowing them saved inside the graph on ONNX Runtime CPU, where layout conversions and per-op costs scale
with the widths too: their second differences were far too small.)

The graphs are timed in small groups, each with the dense model as its reference: a per-round ratio to
dense cancels drift, and a small group keeps the cache and memory context close to a model timed on its
own (in one group of hundreds of sessions, the dense model ran 20–35 % slower than alone, and that offset
entered every unit's saving).
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError

FORMAT = "rmtdeploy-latency-table-plan"
VERSION = 1
PLAN_FILE = "plan.json"

Status = Callable[[str], None]


@dataclass
class TablePlan:
    """The plan's JSON data (see the module docstring) with accessors; ``data`` is what ``plan.json`` holds.
    Every group holds its ``reference`` (the graph its others are timed against) among its ``labels``."""

    data: dict[str, Any]

    @property
    def graphs(self) -> dict[str, str]:
        return self.data["graphs"]

    @property
    def groups(self) -> list[dict[str, Any]]:
        return self.data["groups"]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def save(self, path: str | os.PathLike) -> None:
        from rmtdeploy.io import atomic_write_json

        atomic_write_json(path, self.data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TablePlan:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RmtdeployError(f"{{param}} {path} is not a readable latency-table plan: {exc}",
                                 param="latency_table_plan") from exc  # fmt: skip
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "the plan") -> TablePlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise RmtdeployError(f"{{param}} {where} is not a latency-table plan ({FORMAT} version {VERSION})",
                                 param="latency_table_plan")  # fmt: skip
        groups = data.get("groups")
        for i, group in enumerate(groups if isinstance(groups, list) else ()):
            labels = group.get("labels") if isinstance(group, dict) else None
            if not isinstance(labels, list) or group.get("reference") not in labels:
                raise RmtdeployError(f"{{param}} {where}: group {i + 1} has no reference graph among its labels "
                                     "(every group is timed against one, the dense model)",
                                     param="latency_table_plan")  # fmt: skip
        return cls(data)


def plan_latency_table(
    model: nn.Module,
    folder: str | os.PathLike | None,
    *,
    model_name: str | None = None,
    example_inputs: torch.Tensor | None = None,
    round_to: int = 8,
    min_channels: int = 8,
    points: int = 5,
    calibration_points: int = 6,
    group_size: int = 9,
    seed: int = 0,
    status: Status | None = None,
) -> TablePlan:
    """The plan of ``model``'s latency table (eval mode, batch 1, at ``example_inputs``' size), its ONNX
    graphs written to ``folder`` (``None``: nothing written, e.g. for the MAC structure check).

    Each unit is narrowed to up to ``points`` widths spread evenly over what the width rules
    (``round_to``, ``min_channels``, one head) allow, dense included; ``calibration_points`` joint
    configurations are drawn with ``seed``; model graphs are timed ``group_size`` to a group, dense
    included.
    """
    from rmtdeploy.adapters import get_adapter
    from rmtdeploy.pruning.graph import layer_widths
    from rmtdeploy.pruning.result import count_macs_params

    for value, name, least in ((points, "points", 2), (calibration_points, "calibration_points", 0),
                               (group_size, "group_size", 2)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise RmtdeployError(f"{{param}} must be an integer >= {least}, got {value!r}", param=name)
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    adapter = get_adapter(model)
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    dense = copy.deepcopy(model).eval()
    example = adapter.example_inputs(dense) if example_inputs is None else example_inputs[:1]
    units, lattices = _units_and_lattices(dense, adapter, example, round_to, min_channels)
    grids = {u.root: grid_widths(lattices[u.root], points) for u in units}
    writer = _GraphWriter(Path(folder) if folder is not None else None, example)
    writer.model("dense", dense, count_macs_params(dense, example)[0])
    narrow = _Narrower(dense, adapter, example, units, writer)
    unit_records, probes = {}, {}
    for i, unit in enumerate(units):
        _say(
            status, f"narrowing unit {i + 1}/{len(units)} ({unit.root}) to {len(grids[unit.root]) - 1} widths"
        )
        labels = []
        for kept in grids[unit.root][:-1]:
            narrowed = narrow(f"unit{i}-{kept}", {unit.root: kept})
            labels.append(f"unit{i}-{kept}")
            if kept == grids[unit.root][0]:
                probes[unit.root] = (kept, layer_dims(narrowed))
        unit_records[unit.root] = {"kind": "heads" if unit.heads else "channels", "full": unit.full,
                                   "widths": list(grids[unit.root]), "labels": [*labels, "dense"]}  # fmt: skip
    calibration = []
    for j, widths in enumerate(_joint_widths(units, lattices, calibration_points, seed)):
        _say(status, f"joint configuration {j + 1}/{calibration_points}: every unit narrowed at once")
        narrow(f"joint{j}", widths)
        calibration.append({"label": f"joint{j}", "widths": widths})
    layers, unmodelled = _layer_grids(dense, example, units, grids, probes)
    return TablePlan({
        "format": FORMAT, "version": VERSION,
        "model": model_name or architecture or type(model).__name__, "input_size": list(example.shape[1:]),
        "round_to": round_to, "min_channels": min_channels, "points": points, "seed": seed,
        "dense_macs": writer.macs["dense"], "layer_widths": layer_widths(dense),
        "graphs": dict(writer.graphs), "macs": dict(writer.macs), "groups": _groups(writer.graphs, group_size),
        "units": unit_records, "layers": layers, "calibration": calibration, "unmodelled_layers": unmodelled,
    })  # fmt: skip


def _groups(graphs: dict[str, str], size: int) -> list[dict[str, Any]]:
    """The narrowed graphs in groups of ``size`` with the dense model, each group's reference."""
    narrowed = [label for label in graphs if label != "dense"]
    per = size - 1
    return [{"labels": ["dense", *narrowed[i : i + per]], "reference": "dense"}
            for i in range(0, len(narrowed), per)] or [{"labels": ["dense"], "reference": "dense"}]  # fmt: skip


def grid_widths(lattice: list[int], points: int) -> tuple[int, ...]:
    """Up to ``points`` of a unit's allowed widths (``lattice``, widest first), evenly spread, both ends
    kept; ascending."""
    if len(lattice) <= points:
        return tuple(sorted(lattice))
    picks = {round(i * (len(lattice) - 1) / (points - 1)) for i in range(points)}
    return tuple(sorted(lattice[i] for i in picks))


def layer_dims(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(input width, output width) of every Linear and convolution."""
    dims = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            dims[name] = (module.in_features, module.out_features)
        elif isinstance(module, nn.modules.conv._ConvNd):
            dims[name] = (module.in_channels, module.out_channels)
    return dims


class _GraphWriter:
    """Labels -> ONNX files (or nothing, without a folder), with each graph's MACs."""

    def __init__(self, folder: Path | None, example: torch.Tensor):
        self.folder, self.example = folder, example
        self.graphs: dict[str, str] = {}
        self.macs: dict[str, int] = {}

    def model(self, label: str, net: nn.Module, macs: int) -> None:
        from rmtdeploy.exporting import export_for_timing

        self.graphs[label], self.macs[label] = f"{label}.onnx", int(macs)
        if self.folder is not None:
            export_for_timing(net, self.folder / self.graphs[label], self.example.shape[1:])


class _Narrower:
    """Copies of the dense model with some units narrowed, written under a label."""

    def __init__(self, dense, adapter, example, units, writer: _GraphWriter):
        self.dense, self.adapter, self.example, self.writer = dense, adapter, example, writer
        self.units = {u.root: u for u in units}

    def __call__(self, label: str, widths: dict[str, int]) -> nn.Module:
        from rmtdeploy.pruning.graph import apply_operations, build_dependency_graph, unit_operation
        from rmtdeploy.pruning.result import count_macs_params

        narrowed = copy.deepcopy(self.dense)
        operations = [op for root, kept in widths.items() if (op := unit_operation(self.units[root], kept))]
        apply_operations(build_dependency_graph(narrowed, self.adapter, self.example), narrowed, operations)
        self.adapter.repair(narrowed)
        self.writer.model(label, narrowed, count_macs_params(narrowed, self.example)[0])
        return narrowed


def _units_and_lattices(dense, adapter, example, round_to, min_channels):
    import torch_pruning as tp

    from rmtdeploy.pruning.allocate import WidthAllocator, WidthRules
    from rmtdeploy.pruning.graph import build_dependency_graph, discover_units

    graph = build_dependency_graph(dense, adapter, example)
    # Which channels go does not change the time: any importance will do.
    units = discover_units(graph, dense, adapter, tp.importance.GroupMagnitudeImportance(p=2))
    if not units:
        raise RmtdeployError("found no prunable channels in this model: it has no latency table")
    rules = WidthRules(round_to=round_to, min_channels=min_channels, prune_heads=True, global_pruning=False)
    allocator = WidthAllocator(units, rules, [1.0] * len(units))
    return units, {u.root: allocator.lattice(i) for i, u in enumerate(units)}


def _joint_widths(units, lattices, count: int, seed: int) -> list[dict[str, int]]:
    """``count`` configurations with every unit narrowed at once: a drawn overall depth, each unit's
    position on its own lattice jittered around it (allocations are rarely uniform)."""
    rng = random.Random(seed)
    configurations = []
    for j in range(count):
        depth = 0.15 + 0.7 * (j + rng.random()) / count  # spread over light to deep cuts
        widths = {}
        for unit in units:
            lattice = lattices[unit.root]  # widest first
            position = min(max(depth + rng.gauss(0.0, 0.15), 0.0), 1.0)
            widths[unit.root] = lattice[round(position * (len(lattice) - 1))]
        configurations.append(widths)
    return configurations


def _layer_grids(dense, example, units, grids, probes):
    """Every layer between two units with its MACs on the grid of both units' widths: the plan's
    ``layers`` records, and the layers left unmodelled (a width set by more than one unit)."""
    from rmtdeploy.benchmark.layer_shapes import layer_shape

    fulls = {u.root: u.full for u in units}
    inputs = _layer_inputs(dense, example)
    layers, unmodelled = {}, []
    for name, (dense_in, dense_out) in layer_dims(dense).items():
        sides = {}
        for side, index, size in (("in", 0, dense_in), ("out", 1, dense_out)):
            setters = [(root, kept, dims[name][index]) for root, (kept, dims) in probes.items()
                       if dims[name][index] != size]  # fmt: skip
            if len(setters) > 1:
                unmodelled.append(name)
            if len(setters) == 1:
                root, kept, narrow = setters[0]
                per = (size - narrow) / (fulls[root] - kept)  # width of this dimension per kept element
                sides[side] = (
                    root,
                    lambda k, size=size, per=per, full=fulls[root]: round(size - per * (full - k)),
                )
        if len(sides) < 2 or sides["in"][0] == sides["out"][0] or name in unmodelled:
            continue
        shape = layer_shape(dict(dense.named_modules())[name], inputs.get(name, ()))
        if shape is None:
            unmodelled.append(name)
            continue
        (a, dim_a), (b, dim_b) = sides["in"], sides["out"]
        macs = [
            [shape.macs(dim_a(kept_in), dim_b(kept_out)) for kept_out in grids[b]] for kept_in in grids[a]
        ]
        layers[name] = {"in_unit": a, "out_unit": b, "in_widths": list(grids[a]), "out_widths": list(grids[b]),
                        "macs": macs, "graph": shape.describe()}  # fmt: skip
    return layers, sorted(set(unmodelled))


def _layer_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The input shape each Linear / convolution sees at ``example``."""
    shapes, hooks = {}, []

    def keep_shape(name: str):
        def hook(module, args, output) -> None:  # returns None: the output stays as it is
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            hooks.append(module.register_forward_hook(keep_shape(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _say(status: Status | None, text: str) -> None:
    if status is not None:
        status(text)
