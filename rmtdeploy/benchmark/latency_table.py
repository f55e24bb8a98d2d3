"""Measuring a latency table on ONNX Runtime CPU (:mod:`rmtdeploy.pruning.latency_table` says what it holds).

For each prunable unit, the model is narrowed at that unit alone to a few of its allowed widths (multiples
of the channel multiple, whole heads), exported in ONNX Runtime's form and timed, interleaved with the
dense model on one shared pool: each width's latency is the dense median over the median per-round
ratio, with that ratio's p10–p90 as its spread. Each Linear / convolution whose input and output widths
belong to two different units is then timed alone (:mod:`rmtdeploy.benchmark.layer_graphs`) on the grid
of both units' widths. A layer whose input width more than one unit sets (a concatenation) is listed
under ``measured.unmodelled_layers``.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError
from rmtdeploy.pruning.latency_table import LatencyTable, LayerGrid, UnitCurve

Status = Callable[[str], None]


def measure_latency_table(
    model: nn.Module,
    *,
    model_name: str | None = None,
    example_inputs: torch.Tensor | None = None,
    round_to: int = 8,
    min_channels: int = 8,
    points: int = 5,
    threads: int = 2,
    runs: int = 50,
    warmup: int = 5,
    backend: str = "onnxruntime",
    status: Status | None = None,
) -> LatencyTable:
    """The latency table of ``model`` (eval mode, batch 1, at ``example_inputs``' size) on ONNX Runtime CPU.

    Each unit is timed at up to ``points`` widths spread evenly over what the width rules (``round_to``,
    ``min_channels``, one head) allow, dense included; ``runs`` interleaved rounds after ``warmup``.
    ``backend="macs"`` times nothing: every "time" is the graph's (or the layer's) MACs in millions, so the
    table's predictions must equal counted MACs, a check of its structure (which layers each unit sets, the
    interactions) free of timing noise.
    """
    from rmtdeploy.adapters import get_adapter
    from rmtdeploy.machine import loadavg
    from rmtdeploy.pruning.graph import layer_widths

    if backend not in ("onnxruntime", "macs"):
        raise RmtdeployError(f"{{param}} must be onnxruntime or macs, got {backend!r}", param="backend")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise RmtdeployError(f"{{param}} must be an integer >= 2, got {points!r}", param="points")
    load = loadavg()
    adapter = get_adapter(model)
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    dense = copy.deepcopy(model).eval()
    example = adapter.example_inputs(dense) if example_inputs is None else example_inputs[:1]
    units, grids = _units_and_grids(dense, adapter, example, round_to, min_channels, points)
    timing = {"threads": threads, "runs": runs, "warmup": warmup} if backend == "onnxruntime" else None
    with tempfile.TemporaryDirectory(prefix="rmtdeploy-latency-table-") as tmp:
        folder = Path(tmp) if timing else None
        variants = _variants(dense, adapter, example, units, grids, folder, status)
        plans, graphs, unmodelled = _layer_plans(dense, example, units, grids, variants.probes, folder)
        labels = {key: f"layer{i}" for i, key in enumerate(graphs)}
        report = _measure(variants, plans, graphs, labels, timing, status)
    measured = {**_conditions(report, timing, load), "points": points, "unmodelled_layers": unmodelled}
    return LatencyTable(
        model=model_name or architecture or type(model).__name__, input_size=tuple(example.shape[1:]),
        round_to=round_to, dense_ms=round(report.models["dense"].median_ms, 5), dense_macs=variants.dense_macs,
        layer_widths=layer_widths(dense), units=_unit_curves(report, variants, units, grids),
        layers=_layer_grids(report, plans, labels, grids), measured=measured,
    )  # fmt: skip


def _measure(variants, plans, graphs, labels, timing: dict[str, int] | None, status):
    """The dense model, the narrowed ones and the one-layer graphs timed in one interleaved run (or their
    MACs, without ``timing``)."""
    from rmtdeploy.benchmark.latency import measure_onnx_latency

    if timing is None:
        return _mac_report(variants, {labels[key]: key for key in graphs})
    _say(status, f"timing the dense model, {len(variants.paths) - 1} narrowed ones and {len(graphs)} one-layer "
         f"graphs of {len(plans)} layers between two units, interleaved")  # fmt: skip
    return measure_onnx_latency(
        {**variants.paths, **{labels[key]: path for key, path in graphs.items()}},
        pairs=[("dense", label) for label in variants.of],
        **timing,
    )


def _conditions(report, timing: dict[str, int] | None, load) -> dict[str, Any]:
    """How the table was measured (its ``measured`` record)."""
    from rmtdeploy.machine import cpu_model

    if timing is None:
        return {"backend": "macs (MMACs as ms: the structure check)"}
    dense = report.models["dense"]
    return {
        "backend": "onnxruntime-cpu", "cpu": cpu_model(), **timing, "batch": 1, "interleaved": True,
        "thread_pool": "shared", "onnxruntime": report.conditions.get("onnxruntime_version"),
        "load_average_at_start": load, "dense_spread_ms": [round(dense.p10_ms, 4), round(dense.p90_ms, 4)],
        "unit_timing": "whole graph with one unit narrowed: dense median / median per-round ratio (p10-p90 spread)",
        "layer_timing": "one-layer ONNX graphs at the layer's input shape, median",
    }  # fmt: skip


def grid_widths(lattice: list[int], points: int) -> tuple[int, ...]:
    """Up to ``points`` of a unit's allowed widths (``lattice``, widest first), evenly spread, both ends
    kept; ascending."""
    if len(lattice) <= points:
        return tuple(sorted(lattice))
    picks = {round(i * (len(lattice) - 1) / (points - 1)) for i in range(points)}
    return tuple(sorted(lattice[i] for i in picks))


def _units_and_grids(dense, adapter, example, round_to, min_channels, points):
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
    return units, {u.root: grid_widths(allocator.lattice(i), points) for i, u in enumerate(units)}


class _Variants:
    def __init__(self):
        self.paths: dict[str, str] = {}
        self.of: dict[str, tuple[str, int]] = {}  # label -> (unit, kept)
        self.macs: dict[tuple[str, int], int] = {}
        self.dense_macs = 0
        self.probes: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}  # unit -> (kept, layer dims)


def _variants(dense, adapter, example, units, grids, folder: Path, status) -> _Variants:
    """The dense model and each unit alone at each grid width, exported; the narrowest one per unit is the
    probe that says which layers' widths the unit sets."""
    from rmtdeploy.pruning.graph import apply_operations, build_dependency_graph, unit_operation
    from rmtdeploy.pruning.result import count_macs_params

    found = _Variants()
    found.paths["dense"] = _export(dense, example, folder / "dense.onnx") if folder else "dense"
    dense_macs = found.dense_macs = count_macs_params(dense, example)[0]
    for i, unit in enumerate(units):
        _say(
            status, f"narrowing unit {i + 1}/{len(units)} ({unit.root}) to {len(grids[unit.root]) - 1} widths"
        )
        found.macs[(unit.root, unit.full)] = dense_macs
        for kept in grids[unit.root][:-1]:
            narrowed = copy.deepcopy(dense)
            apply_operations(build_dependency_graph(narrowed, adapter, example), narrowed,
                             [unit_operation(unit, kept)])  # fmt: skip
            adapter.repair(narrowed)
            label = f"unit{i}-{kept}"
            found.paths[label] = _export(narrowed, example, folder / f"{label}.onnx") if folder else label
            found.of[label] = (unit.root, kept)
            found.macs[(unit.root, kept)] = count_macs_params(narrowed, example)[0]
            if kept == grids[unit.root][0]:
                found.probes[unit.root] = (kept, _layer_dims(narrowed))
    return found


def _unit_curves(report, variants: _Variants, units, grids) -> dict[str, UnitCurve]:
    """Each unit's whole-graph latency at its widths: the dense median over the median per-round ratio."""
    dense = report.models["dense"]
    ratio = {s.candidate: s for s in report.speedups}
    curves = {}
    for unit in units:
        widths = grids[unit.root]
        by_width = {kept: ratio[label] for label, (root, kept) in variants.of.items() if root == unit.root}
        ms, p10, p90 = [], [], []
        for kept in widths:
            s = by_width.get(kept)
            ms.append(round(dense.median_ms / s.median, 5) if s else round(dense.median_ms, 5))
            p10.append(round(dense.median_ms / s.p90, 5) if s else round(dense.median_ms, 5))
            p90.append(round(dense.median_ms / s.p10, 5) if s else round(dense.median_ms, 5))
        curves[unit.root] = UnitCurve(
            "heads" if unit.heads else "channels", unit.full, widths, tuple(ms), tuple(p10), tuple(p90),
            tuple(variants.macs[(unit.root, kept)] for kept in widths),
        )  # fmt: skip
    return curves


def _layer_grids(report, plans, labels, grids) -> dict[str, LayerGrid]:
    """Each planned layer's median time on the grid of its two units' widths (``labels``: graph key -> label)."""
    median = {key: report.models[label].median_ms for key, label in labels.items()}
    layers = {}
    for name, (shape, (a, dim_a), (b, dim_b)) in plans.items():
        ms = tuple(tuple(round(median[(shape, dim_a(i), dim_b(o))], 5) for o in grids[b]) for i in grids[a])
        layers[name] = LayerGrid(a, b, grids[a], grids[b], ms, shape.describe())
    return layers


def _layer_plans(dense, example, units, grids, probes, folder: Path):
    """Every layer between two units: {name: (shape, (input unit, its width -> the layer's input width),
    (output unit, likewise))}, its one-layer graphs on the grid of both units' widths written to
    ``folder`` ({(shape, input width, output width): path}), and the layers left unmodelled."""
    from rmtdeploy.benchmark.layer_graphs import layer_shape, write_layer_graph

    fulls = {u.root: u.full for u in units}
    inputs = _layer_inputs(dense, example)
    plans, unmodelled = {}, []
    for name, (dense_in, dense_out) in _layer_dims(dense).items():
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
        shape = layer_shape(dict(dense.named_modules())[name], inputs.get(name, ()))
        if len(sides) == 2 and sides["in"][0] != sides["out"][0] and name not in unmodelled:
            if shape is None:
                unmodelled.append(name)
                continue
            plans[name] = (shape, sides["in"], sides["out"])
    graphs: dict[tuple, str] = {}
    for shape, (a, dim_a), (b, dim_b) in plans.values():
        for kept_in in grids[a]:
            for kept_out in grids[b]:
                key = (shape, dim_a(kept_in), dim_b(kept_out))
                if key not in graphs:
                    graphs[key] = str(folder / f"layer{len(graphs)}.onnx") if folder else ""
                    if folder:
                        write_layer_graph(shape, key[1], key[2], graphs[key])
    return plans, graphs, sorted(set(unmodelled))


def _mac_report(variants: _Variants, layer_keys: dict[str, tuple]) -> SimpleNamespace:
    """What :func:`measure_onnx_latency` would report, with MACs (in millions) for milliseconds."""

    def stats(value: float) -> SimpleNamespace:
        return SimpleNamespace(median_ms=value, p10_ms=value, p90_ms=value)

    dense = variants.dense_macs / 1e6
    ratios = {label: variants.dense_macs / variants.macs[key] for label, key in variants.of.items()}
    speedups = [SimpleNamespace(candidate=label, median=r, p10=r, p90=r) for label, r in ratios.items()]
    models = {
        "dense": stats(dense),
        **{label: stats(key[0].macs(key[1], key[2]) / 1e6) for label, key in layer_keys.items()},
    }
    return SimpleNamespace(models=models, speedups=speedups, conditions={})


def _layer_dims(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(input width, output width) of every Linear and convolution."""
    dims = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            dims[name] = (module.in_features, module.out_features)
        elif isinstance(module, nn.modules.conv._ConvNd):
            dims[name] = (module.in_channels, module.out_channels)
    return dims


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


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    from rmtdeploy.exporting import export_onnx

    export_onnx(model, path, backend="onnxruntime", dynamic_batch=False, input_shape=tuple(example.shape[1:]),
                verify=False)  # fmt: skip
    return str(path)


def _say(status: Status | None, text: str) -> None:
    if status is not None:
        status(text)
