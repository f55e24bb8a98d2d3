"""A latency table: how long the whole model takes when its prunable units are narrowed, measured on a target.

HALP (Shen et al., NeurIPS 2022) prunes with a per-layer latency lookup table measured on the device. This
table keeps the same idea in a form whose whole-graph prediction can be checked on ONNX Runtime, where the
time between the big layers (norms, activations, softmax, reshapes, per-op overhead) is not negligible:

* per unit (an MLP's hidden width, a block's heads, a stage's residual width, a conv's channels; the
  pruner's channel groups, keyed by their root module): the whole graph's latency with that unit alone
  narrowed to each of a few widths, the rest dense. Everything the unit's width reaches is in it: its
  layers, the norms and activations on its channels, attention's products, fusions;
* per layer whose input and output widths belong to two different units (a conv between a block's own
  width and its stage's residual width, an MLP's fc1 between the residual and hidden width): its cost on
  a grid of (input, output) widths. Its cost is close to the product of the two widths, so narrowing both
  saves less than the two units' curves add up to; the grid's second difference puts that back. The
  grid is the layer's MACs priced at its two units' in-graph time per MAC
  (:mod:`rmtdeploy.benchmark.latency_table_plan` says why not timed alone).

The prediction for any widths is ``dense + scale × (Σ unit deltas + Σ layer interactions)`` (linear
interpolation between measured widths). ``scale`` is fitted on a few joint configurations (every unit cut at
once) measured with the table: how the units' separate savings add up on this target. The file is plain
JSON (what was measured, where, threads, runs, spread, the fit and its error), so a table measured on a
board is brought in the same way as one measured here. Measuring lies on a floor above pruning
(:mod:`rmtdeploy.benchmark.latency_table`); pruning reads the data.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmtdeploy.errors import RmtdeployError

FORMAT = "rmtdeploy-latency-table"
VERSION = 1
PARAM = "latency_table"


@dataclass(frozen=True)
class UnitCurve:
    """The whole graph's latency with one unit alone at each width (ascending; the last is dense)."""

    kind: str  # "channels" (per channel group) or "heads"
    full: int
    widths: tuple[int, ...]
    ms: tuple[float, ...]
    p10: tuple[float, ...]  # the spread of the per-round ratio to dense, in ms
    p90: tuple[float, ...]
    macs: tuple[int, ...]  # the whole graph's MACs at each width

    def at(self, kept: float) -> float:
        return interpolate(self.widths, self.smoothed, kept)

    @functools.cached_property
    def smoothed(self) -> tuple[float, ...]:
        """``ms`` made non-decreasing in width (pool-adjacent-violators): a narrower unit is never taken as
        slower, so the noise of one measured width cannot attract or repel the allocation."""
        return monotone(self.ms)

    def macs_per_element(self) -> float:
        """MACs one channel (or head) of this unit carries, the rest dense."""
        if len(self.widths) < 2:
            return 0.0
        return (self.macs[-1] - self.macs[0]) / (self.widths[-1] - self.widths[0])


@dataclass(frozen=True)
class LayerGrid:
    """One layer between two units, timed alone on a grid of (input unit's width, output unit's width)."""

    in_unit: str
    out_unit: str
    in_widths: tuple[int, ...]
    out_widths: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]  # ms[i][j]: input unit at in_widths[i], output unit at out_widths[j]
    graph: dict[str, Any] = field(default_factory=dict)  # what was timed: op, input shape, kernel

    def at(self, kept_in: float, kept_out: float) -> float:
        rows = [interpolate(self.out_widths, row, kept_out) for row in self.ms]
        return interpolate(self.in_widths, rows, kept_in)

    def interaction(self, kept_in: float, kept_out: float) -> float:
        """What narrowing both units costs beyond the two narrowed alone (the grid's second difference)."""
        full_in, full_out = self.in_widths[-1], self.out_widths[-1]
        return (
            self.at(kept_in, kept_out)
            - self.at(kept_in, full_out)
            - self.at(full_in, kept_out)
            + self.at(full_in, full_out)
        )


@dataclass
class LatencyTable:
    """A model's latency table (see the module docstring); ``to_dict`` is the JSON file."""

    model: str
    input_size: tuple[int, ...]
    round_to: int
    dense_ms: float
    dense_macs: int
    layer_widths: dict[str, int]  # every Linear / conv output width of the dense model, by name
    units: dict[str, UnitCurve]
    layers: dict[str, LayerGrid]
    measured: dict[str, Any]  # backend, device or CPU, threads, runs, warm-up, load average, spread
    # How the units' separate savings add up when all are cut at once, fitted on joint configurations
    # measured with the table (1: summed as measured); ``calibration`` is that fit's record.
    scale: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)

    def predict(self, widths: Mapping[str, float]) -> float:
        """Predicted whole-graph latency (ms) with each unit at ``widths[unit]`` (missing units: dense)."""
        saved = 0.0
        for name, curve in self.units.items():
            if name in widths:
                saved += curve.at(widths[name]) - curve.at(curve.full)
        for grid in self.layers.values():
            kept_in = widths.get(grid.in_unit, self.units[grid.in_unit].full)
            kept_out = widths.get(grid.out_unit, self.units[grid.out_unit].full)
            saved += grid.interaction(kept_in, kept_out)
        return self.dense_ms + self.scale * saved

    def widths_of(self, operations: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Each unit's kept count in a plan's ``operations`` (one-step plans; units not named stay dense)."""
        widths = {}
        for op in operations:
            curve = self.units.get(op["root"])
            if curve is None:
                raise RmtdeployError(
                    f"{{param}} has no unit {op['root']}, which the plan prunes", param=PARAM
                )
            kept = (
                len(op["kept_heads"])
                if op.get("kind") == "heads"
                else len(op["kept"]) * curve.full // op["width"]
            )
            widths[op["root"]] = kept
        return widths

    def layers_of(self, unit: str) -> list[LayerGrid]:
        """The layer grids whose input or output width ``unit`` sets."""
        return self._layers_by_unit.get(unit, [])

    @functools.cached_property
    def _layers_by_unit(self) -> dict[str, list[LayerGrid]]:
        found: dict[str, list[LayerGrid]] = {}
        for grid in self.layers.values():
            for unit in {grid.in_unit, grid.out_unit}:
                found.setdefault(unit, []).append(grid)
        return found

    def check_model(self, layer_widths: Mapping[str, int], model_name: str | None = None) -> None:
        """Refuse a model other than the one measured: a layer missing on either side, or another width."""
        here = model_name or "this model"
        for name, width in self.layer_widths.items():
            if name not in layer_widths:
                raise RmtdeployError(
                    f"{{param}} was measured on another model ({self.model}): it names layer {name}, which "
                    f"{here} does not have",
                    param=PARAM,
                )
            if layer_widths[name] != width:
                raise RmtdeployError(
                    f"{{param}} was measured on another model ({self.model}): dense widths differ, {name} is "
                    f"{width} wide there and {layer_widths[name]} in {here}",
                    param=PARAM,
                )
        extra = sorted(set(layer_widths) - set(self.layer_widths))
        if extra:
            raise RmtdeployError(
                f"{{param}} was measured on another model ({self.model}): {here} has layer {extra[0]}, which "
                "the table does not name",
                param=PARAM,
            )

    def check_units(self, units: Mapping[str, tuple[str, int]]) -> None:
        """Refuse units (root -> (kind, full width)) that the table does not describe alike."""
        for name, (kind, full) in units.items():
            curve = self.units.get(name)
            if curve is None:
                raise RmtdeployError(
                    f"{{param}} was measured on another model ({self.model}): it has no unit {name}",
                    param=PARAM,
                )
            if (curve.kind, curve.full) != (kind, full):
                raise RmtdeployError(
                    f"{{param}} was measured on another model ({self.model}): unit {name} has {curve.full} "
                    f"{curve.kind} there and {full} {kind} here",
                    param=PARAM,
                )
        missing = sorted(set(self.units) - set(units))
        if missing:
            raise RmtdeployError(
                f"{{param}} was measured on another model ({self.model}): its unit {missing[0]} is not "
                "prunable here",
                param=PARAM,
            )

    def summary(self) -> dict[str, Any]:
        """What a plan records about the table it was allocated with."""
        keys = ("backend", "device", "cpu", "threads", "runs")
        return {"model": self.model, "dense_ms": self.dense_ms, "scale": self.scale,
                **{k: self.measured[k] for k in keys if k in self.measured}}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "input_size": list(self.input_size),
            "round_to": self.round_to,
            "dense": {"ms": self.dense_ms, "macs": self.dense_macs},
            "measured": self.measured,
            "calibration": {**self.calibration, "scale": self.scale},
            "layer_widths": dict(self.layer_widths),
            "units": {
                name: {
                    "kind": c.kind,
                    "full": c.full,
                    "widths": list(c.widths),
                    "ms": list(c.ms),
                    "p10": list(c.p10),
                    "p90": list(c.p90),
                    "macs": list(c.macs),
                }
                for name, c in self.units.items()
            },  # fmt: skip
            "layers": {
                name: {
                    "in_unit": g.in_unit,
                    "out_unit": g.out_unit,
                    "in_widths": list(g.in_widths),
                    "out_widths": list(g.out_widths),
                    "ms": [list(row) for row in g.ms],
                    "graph": g.graph,
                }
                for name, g in self.layers.items()
            },  # fmt: skip
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "the table") -> LatencyTable:
        """Read and check a table's JSON data; a malformed one is refused in one line."""
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:160]
            raise RmtdeployError(
                f"{{param}} {where} is not a usable latency table: {detail}", param=PARAM
            ) from exc

    def save(self, path: str | os.PathLike) -> None:
        from rmtdeploy.io import atomic_write_json

        atomic_write_json(path, self.to_dict())


def load_latency_table(path: str | os.PathLike) -> LatencyTable:
    """A latency table from its JSON file (measured here or on a board); checked, or one clear error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RmtdeployError(f"{{param}} not found: {path}", param=PARAM)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RmtdeployError(
            f"{{param}} {path} is not JSON: {str(exc).splitlines()[0][:120]}", param=PARAM
        ) from exc
    return LatencyTable.from_dict(data, str(path))


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise linear through (xs, ys), xs ascending; extended linearly past both ends."""
    if len(xs) == 1:
        return float(ys[0])
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    x0, x1 = xs[i], xs[i + 1]
    return float(ys[i] + (ys[i + 1] - ys[i]) * (x - x0) / (x1 - x0))


def monotone(values: Sequence[float]) -> tuple[float, ...]:
    """The least-squares non-decreasing fit of ``values`` (pool-adjacent-violators, equal weights)."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([float(value), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2]
    return tuple(mean for mean, count in blocks for _ in range(int(count)))


def _parse(data: Any) -> LatencyTable:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"its format is not {FORMAT}")
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r}, this rmtdeploy reads version {VERSION}")
    units = {str(name): _unit(name, u) for name, u in data["units"].items()}
    layers = {str(name): _layer(name, g, units) for name, g in data["layers"].items()}
    dense_ms = _positive(data["dense"]["ms"], "dense ms")
    layer_widths = {str(k): int(v) for k, v in data["layer_widths"].items()}
    if not isinstance(data["measured"], dict):
        raise ValueError("measured must be a mapping")
    calibration = data.get("calibration", {"scale": 1.0})  # tables before the joint fit: summed as measured
    scale = _positive(calibration["scale"], "calibration scale")
    return LatencyTable(
        model=str(data["model"]), input_size=tuple(int(v) for v in data["input_size"]),
        round_to=int(data["round_to"]), dense_ms=dense_ms, dense_macs=int(data["dense"]["macs"]),
        layer_widths=layer_widths, units=units, layers=layers, measured=dict(data["measured"]),
        scale=scale, calibration=dict(calibration),
    )  # fmt: skip


def _unit(name: str, u: dict) -> UnitCurve:
    widths = _widths(u["widths"], f"unit {name}")
    series = {key: tuple(_positive(v, f"unit {name} {key}") for v in u[key]) for key in ("ms", "p10", "p90")}
    macs = tuple(int(v) for v in u["macs"])
    if any(len(s) != len(widths) for s in (*series.values(), macs)):
        raise ValueError(f"unit {name}: one value per width is needed")
    if u["kind"] not in ("channels", "heads") or widths[-1] != int(u["full"]):
        raise ValueError(f"unit {name}: kind channels or heads, and its last width the dense one")
    return UnitCurve(u["kind"], int(u["full"]), widths, series["ms"], series["p10"], series["p90"], macs)


def _layer(name: str, g: dict, units: dict[str, UnitCurve]) -> LayerGrid:
    in_widths, out_widths = (
        _widths(g["in_widths"], f"layer {name}"),
        _widths(g["out_widths"], f"layer {name}"),
    )
    for side, unit in (("in_unit", g["in_unit"]), ("out_unit", g["out_unit"])):
        if unit not in units:
            raise ValueError(f"layer {name}: its {side} {unit} is not among the units")
    ms = tuple(tuple(_positive(v, f"layer {name}") for v in row) for row in g["ms"])
    if len(ms) != len(in_widths) or any(len(row) != len(out_widths) for row in ms):
        raise ValueError(f"layer {name}: ms must be {len(in_widths)} rows of {len(out_widths)}")
    if (in_widths[-1], out_widths[-1]) != (units[g["in_unit"]].full, units[g["out_unit"]].full):
        raise ValueError(f"layer {name}: its grid must end at its units' dense widths")
    return LayerGrid(g["in_unit"], g["out_unit"], in_widths, out_widths, ms, dict(g.get("graph", {})))


def _widths(values: Sequence, what: str) -> tuple[int, ...]:
    widths = tuple(int(v) for v in values)
    if not widths or widths[0] < 1 or any(b <= a for a, b in zip(widths, widths[1:], strict=False)):
        raise ValueError(f"{what}: widths must be positive and ascending")
    return widths


def _positive(value: Any, what: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{what}: {value!r} is not a positive time")
    return number
